"""The end-of-turn judgement of one paused turn: ask the audio model, read the words.

The turn manager calls :meth:`TurnJudge.judge` when the endpointer says the caller
paused (:class:`~stages.turns.SpeechPaused`, semantic mode), beside the speculative
reply that is already transcribing the turn. Both inputs are awaited side by side:
the audio model's probability (:class:`~stages.end_of_turn.TurnCompletionModel`, one
batched inference) and the transcript (:attr:`~pipeline.runtime.dialogue.Reply.transcribed`,
set by the reply path's Transcriber). Waiting for the words costs no answer time: the
reply cannot say anything before its LLM has the words anyway. The decision itself is
:class:`~stages.end_of_turn.EndOfTurnPolicy`'s.

A model that fails (its service error) does not fail the call: that turn is judged on
the words alone, and the failure is counted and logged. When the words settle the
verdict whatever the model could say (a plain question, "my name is"), the model's
request is withdrawn (``model_skipped``): still queued behind other calls' requests,
it costs nothing, so a loaded server spends its inferences on the turns that need
them; the verdict is the one the model would have given. So is a model that has not
answered ``turn_model_deadline_ms`` after the pause (a hang, a busy machine): the
words judge alone (``model_late`` on the judgement, counted), so the model never adds
more than its deadline to the answer. The STT's confidence in the words is passed on
(:attr:`~pipeline.runtime.dialogue.Reply.confidence`), and, with ``use_pitch``, the
turn's terminal pitch is measured here (a few milliseconds of YIN).

What the turn manager (:class:`~pipeline.bot.conversation.Conversation`) does with the
verdict: complete, the reply is committed at once; unsure, after the judgement's
``wait_ms`` of silence (from the end of the voice; at most ``unsure_wait_ms``, less the
surer it is); incomplete, not at all: the endpointer's own
segment at ``max_wait_ms`` commits it. The transcript is thus ready at the commit:
the turn is decoded at each pause, and a committed reply keeps the words decoded at
its pause (the audio is the same). A turn the caller resumes is decoded again whole at
the next pause, not stitched from pieces: Whisper's words for a fragment are not a
prefix of its words for the whole (a period, a split word).

If the caller goes on after such an early commit, within ``continuation_ms`` of
silence, the endpointer's turn is still open (its segment had not come): a reply that
has sent nothing is dropped, one that is playing is stopped as soon as the barge-in
gate hears a voice (``interrupt``, about 160 ms; a cough does not stop it; not in half
duplex), and the whole sentence, audio from the original onset, is
answered at the next pause. Speech after a longer silence is taken as a reply to the
bot, not more of the sentence: the barge-in gate decides whether it stops the bot, and
the new words are a turn of their own, cut from where they began. The withdrawn
reply's record stays (``end_of_turn="withdrawn"``, interrupted if it was heard) but
the history keeps nothing of it: its words answered half a sentence, and the whole
one follows. A reply already heard in full stands; what the caller says next is a turn
of its own, cut from where they resumed. The endpointer's late segment for a turn
already committed is ignored.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import trio

from pipeline.runtime.dialogue import Reply
from pipeline.runtime.errors import ServiceError
from pipeline.runtime.frames import TELEPHONE_RATE
from stages.end_of_turn import MODEL_FLOOR, EndOfTurnPolicy, Judgement, TurnCompletionModel
from stages.turns import TurnConfig
from stages.voicing import terminal_pitch

__all__ = ["TurnJudge"]

logger = logging.getLogger("voicegraph.bot")


class TurnJudge:
    """Judges paused turns for one call (semantic mode)."""

    def __init__(self, config: TurnConfig, model: TurnCompletionModel | None) -> None:
        self.config = config
        self.model = model if config.turn_model != "none" else None
        self.policy = EndOfTurnPolicy.of(config)
        self.counts: dict[str, int] = {
            "judged": 0,
            "complete": 0,
            "unsure": 0,
            "incomplete": 0,
            "model_failures": 0,
            "model_late": 0,
            "model_skipped": 0,
        }

    async def judge(self, audio: np.ndarray, reply: Reply) -> Judgement:
        """The verdict on ``audio`` (the turn so far, from its onset) and the words the
        reply path heard in it. With ``use_words`` it waits for the transcript; a reply
        path without a Transcriber never sets it, and then the endpointer's
        ``max_wait_ms`` commits the turn. The model gets ``turn_model_deadline_ms`` from
        now: a model that hangs or lags (a busy machine) costs a cue, not the wait."""
        deadline = trio.current_time() + self.config.turn_model_deadline_ms / 1000
        turn_ms = len(audio) * 1000 / TELEPHONE_RATE
        probability: float | None = None
        answered = trio.Event()

        async def ask_model() -> None:
            nonlocal probability
            assert self.model is not None
            try:
                probability = await self.model.completion(audio, TELEPHONE_RATE)
            except ServiceError as exc:
                self.counts["model_failures"] += 1
                logger.warning("turn model failed", extra={"error": str(exc)})
            answered.set()

        late = False
        async with trio.open_nursery() as nursery:
            if self.model is not None:
                nursery.start_soon(ask_model)
            else:
                answered.set()
            pitch = terminal_pitch(audio, TELEPHONE_RATE) if self.config.use_pitch else None
            skipped = False
            if self.config.use_words:
                await reply.transcribed.wait()
                skipped = not answered.is_set() and self._words_decide(reply, pitch, turn_ms)
            if skipped:
                self.counts["model_skipped"] += 1
            else:
                with trio.move_on_at(deadline):
                    await answered.wait()
                if not answered.is_set():
                    late = True
                    self.counts["model_late"] += 1
                    logger.warning("turn model missed its deadline; judged on the words")
            nursery.cancel_scope.cancel()  # a request still queued leaves the queue
        text = reply.caller_text if reply.transcribed.is_set() else None
        confidence = reply.confidence if text else None
        judgement = self.policy.judge(
            probability, text, stt_confidence=confidence, pitch=pitch, turn_ms=turn_ms
        )
        if late or skipped:
            judgement = dataclasses.replace(judgement, model_late=late, model_skipped=skipped)
        self.counts["judged"] += 1
        self.counts[judgement.verdict.value] += 1
        return judgement

    def _words_decide(self, reply: Reply, pitch: Any, turn_ms: float) -> bool:
        """Whether the model's answer cannot change the judgement: the verdict and wait
        are the same at both ends of the range its probability is clipped to."""
        text = reply.caller_text
        confidence = reply.confidence if text else None

        def at(p: float) -> tuple[Any, float | None]:
            judged = self.policy.judge(
                p, text, stt_confidence=confidence, pitch=pitch, turn_ms=turn_ms
            )
            return judged.verdict, judged.wait_ms

        return at(MODEL_FLOOR) == at(1.0 - MODEL_FLOOR)

    def statistics(self) -> dict[str, Any]:
        return dict(self.counts)
