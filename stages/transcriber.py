"""The reply path's STT step, and what a failed transcription becomes.

A call must outlive one bad transcription: the STT service raising its error
(:class:`~pipeline.runtime.errors.SttError`) or giving no transcript within
``timeout_s`` costs that turn only. The failure is counted, noted on the reply
(``error``, which reaches the turn's log line) and, when the bot has a
``fallback_line``, the caller hears it instead of silence. Any other exception is a
bug, not a service failure: it ends that call (1011) and no other.

A turn's transcription is urgent (:func:`stages.priority.urgent`) once the turn is
committed: a shared STT serves the turns whose callers wait before the speculative
ones started at a pause.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from pipeline.runtime.dialogue import CallerText, CallerTurn, SpeakableText
from pipeline.runtime.errors import SttError
from pipeline.runtime.stage import Outbox, Stage
from stages.priority import urgent

if TYPE_CHECKING:
    from stages.stt import SpeechToText

__all__ = ["Transcriber"]


class Transcriber(Stage[Any, Any]):
    """A :class:`~pipeline.runtime.dialogue.CallerTurn` in, what the caller said
    (:class:`~pipeline.runtime.dialogue.CallerText`) out.

    Nothing comes out for a turn with no words (noise, a cough): there is nothing to
    answer. A failed transcription is said as ``fallback_line`` (if any). Every other
    frame passes through.
    """

    def __init__(
        self,
        service: SpeechToText,
        *,
        timeout_s: float = 10.0,
        fallback_line: str = "",
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.service = service
        self.timeout_s = timeout_s
        self.fallback_line = fallback_line
        self.turns = 0
        self.empty = 0
        self.failures = 0

    async def run(self, inbox: trio.MemoryReceiveChannel[Any], outbox: Outbox[Any]) -> None:
        async for frame in inbox:
            if not isinstance(frame, CallerTurn):
                await outbox.send(frame)
                continue
            reply = frame.reply
            started = trio.current_time()
            try:
                # a committed turn's caller is waiting: it goes before speculative turns
                # (started at a pause), and a speculative one moves up once committed
                with trio.fail_after(self.timeout_s), urgent(reply.committed.is_set):
                    transcript = await self.service.transcribe(frame.samples, frame.sample_rate)
            except (SttError, trio.TooSlowError) as exc:
                reply.transcribed.set()
                await self._failed(frame, exc, outbox)
                continue
            reply.mark("stt")
            reply.timings_ms["stt_compute"] = round((trio.current_time() - started) * 1000, 1)
            self.turns += 1
            text = transcript.text.strip()
            if not text:
                self.empty += 1
                reply.transcribed.set()
                continue
            reply.caller_text = text
            reply.confidence = round(transcript.confidence, 3)
            reply.transcribed.set()
            heard = CallerText(
                reply=reply,
                text=text,
                confidence=transcript.confidence,
                captured_at=frame.captured_at,
            )
            heard.inherit_timing(frame)
            await outbox.send(heard)

    async def _failed(self, frame: CallerTurn, exc: Exception, outbox: Outbox[Any]) -> None:
        self.failures += 1
        reply = frame.reply
        reason = str(exc) if isinstance(exc, SttError) else f"no transcript in {self.timeout_s:g} s"
        reply.note_failure("stt", reason)
        if self.fallback_line:
            reply.text, reply.answered_by = self.fallback_line, "fallback"
            line = self.fallback_line
            await outbox.send(SpeakableText(reply=reply, text=line, captured_at=frame.captured_at))

    def statistics(self) -> dict[str, Any]:
        return {"turns": self.turns, "empty": self.empty, "failures": self.failures}
