"""A stage between STT and the LLM: questions the bot knows are answered at once.

    python -m examples.faq_answerer          # a call to a bakery bot that knows its hours

:class:`stages.FaqAnswerer` reads what the caller said (a :class:`CallerText`). When it
matches one of the bot's facts, the stage answers itself with a :class:`BotText`, and
the LLM step passes that through instead of asking the model: the answer is the
configured one, word for word, in the bot's voice. Anything else goes on to the LLM.
``[faq]`` in ``bot.toml`` puts it in the graph; from Python it is one edit of the reply
path, which is how any stage of your own goes in::

    bot = VoiceBot(config, reply_edits=[with_faq(FAQ)])

(README's "Swap a service, insert a stage" writes such a stage from scratch.)
"""

from __future__ import annotations

from collections.abc import Mapping

import trio

from pipeline import BotConfig, StageEdit, VoiceBot, insert_after
from pipeline.bot import ConversationConfig
from stages import FaqAnswerer, FaqConfig, FaqEntry, Transcriber

FAQ = {
    "When are you open?": "We are open Monday to Saturday from 7 am to 6 pm.",
    "How much is a loaf of bread?": "A loaf of bread costs 4 dollars.",
}


def faq_config(faq: Mapping[str, str]) -> FaqConfig:
    """Question → answer pairs as the FAQ stage's facts (one phrasing each)."""
    return FaqConfig(facts=tuple(FaqEntry((question,), answer) for question, answer in faq.items()))


def with_faq(faq: Mapping[str, str]) -> StageEdit:
    """The reply-path edit that puts a fresh FAQ stage right after STT."""
    config = faq_config(faq)
    return lambda stages: insert_after(stages, Transcriber, FaqAnswerer(config))


def make_bot(config: BotConfig) -> VoiceBot:
    """The ``--pipeline`` factory for ``voicegraph bench``: the default bot, with the FAQ."""
    return VoiceBot(config, reply_edits=[with_faq(FAQ)])


async def call_the_bakery() -> list[tuple[str, str, str]]:
    """Dial a bakery bot with the FAQ on loopback; (caller, heard, bot) per turn."""
    from benchmarks.speech_corpus import speech
    from pipeline import ServerConfig, VoiceStreamServer, converse, open_call

    config = BotConfig(conversation=ConversationConfig(greeting=""))
    bot = make_bot(config)
    server = VoiceStreamServer(ServerConfig(port=0), bot)
    lines = ["When are you open?", "Do you sell cakes?"]
    async with trio.open_nursery() as nursery:
        listener = await nursery.start(server.serve)
        async with open_call(f"ws://127.0.0.1:{listener.port}/") as call:
            await converse(call, [(line, speech(line)) for line in lines], pause=0.3)
        server.shutdown()
    ((_, turns),) = bot.finished
    return [(line, t.caller_text, t.reply_text) for line, t in zip(lines, turns, strict=False)]


if __name__ == "__main__":
    for said, heard, answer in trio.run(call_the_bakery):
        print(f"caller: {said}\n  heard: {heard}\n  bot:   {answer}")
