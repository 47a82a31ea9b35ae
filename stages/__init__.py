"""The stages of a voice bot's graph, one module per family, and the speech services.

Inbound (the caller's packets to turns): :class:`RtpDepacketizer` → :class:`JitterStage`
→ :class:`MulawDecoder` → :class:`VadStage` → :class:`TurnStage`.
Reply path (a turn to the bot's speech): :class:`Transcriber` → [:class:`FaqAnswerer`]
→ :class:`Responder` → :class:`SpeechSplitter` → :class:`Synthesizer`.
Services behind them, each a small interface with an offline default:
:class:`VoiceActivityDetector` (:class:`VadService`, Silero), :class:`SpeechToText`
(:class:`SttService`, faster-whisper), :class:`LlmBackend` (:class:`LlamaCppLlm`,
:class:`OpenAiCompatibleLlm`, and the test fake :class:`EchoLlm`), :class:`TextToSpeech`
(:class:`PiperTts`). :class:`RemoteStt` and :class:`RemoteTts` (and
:class:`OpenAiCompatibleLlm`) are the same interfaces over OpenAI-compatible servers,
sharing :class:`RemoteOptions` (deadline, retries, :class:`CircuitBreaker`).

Modules import the stage runtime (:mod:`pipeline.runtime`) and each other, nothing
else of the project. Import from the submodules inside the project; this package's
names are for users.
"""

from stages.end_of_turn import EndOfTurnPolicy, TurnCompletionModel
from stages.energy import EnergyGateConfig, EnergySegmenter, level_dbfs
from stages.faq import FaqAnswerer, FaqConfig, FaqEntry, FaqMatcher
from stages.guards import ReplyConfig
from stages.jitter import JitterBuffer, JitterConfig
from stages.llm import EchoLlm, LlmBackend, LlmConfig, LlmError, Responder, create_llm
from stages.llm_local import LlamaCppLlm
from stages.llm_openai import OpenAiCompatibleLlm
from stages.mulaw import MulawDecoder, MulawEncoder, mulaw_from_wav
from stages.playout import JitterStage
from stages.remote import CircuitBreaker, RemoteOptions
from stages.resample import ResampleStage, StreamResampler, resample
from stages.rtp import RtpDepacketizer, RtpError, RtpFrame, RtpPacket
from stages.sentences import SentenceSplitter, SpeechSplitter, speakable
from stages.smart_turn import SmartTurnModel, SmartTurnService, TurnModelError
from stages.stt import (
    SpeechToText,
    SttConfig,
    SttError,
    SttService,
    SttStage,
    Transcriber,
    Transcript,
)
from stages.stt_remote import RemoteStt, create_stt
from stages.tts import PiperTts, Synthesizer, TextToSpeech, TtsConfig, TtsError
from stages.tts_remote import RemoteTts, create_tts
from stages.turns import (
    BargeIn,
    SpeechPaused,
    SpeechResumed,
    SpeechSegment,
    SpeechStarted,
    TurnConfig,
    TurnStage,
)
from stages.vad import VadConfig, VadError, VadService, VadStage, VoiceActivityDetector
from stages.voicing import VoicingConfig, VoicingGate
from stages.wav import WavError, decode_wav, encode_mulaw_wav

__all__ = [
    "BargeIn",
    "CircuitBreaker",
    "EchoLlm",
    "EndOfTurnPolicy",
    "EnergyGateConfig",
    "EnergySegmenter",
    "FaqAnswerer",
    "FaqConfig",
    "FaqEntry",
    "FaqMatcher",
    "JitterBuffer",
    "JitterConfig",
    "JitterStage",
    "LlamaCppLlm",
    "LlmBackend",
    "LlmConfig",
    "LlmError",
    "MulawDecoder",
    "MulawEncoder",
    "OpenAiCompatibleLlm",
    "PiperTts",
    "RemoteOptions",
    "RemoteStt",
    "RemoteTts",
    "ReplyConfig",
    "ResampleStage",
    "Responder",
    "RtpDepacketizer",
    "RtpError",
    "RtpFrame",
    "RtpPacket",
    "SentenceSplitter",
    "SmartTurnModel",
    "SmartTurnService",
    "SpeechPaused",
    "SpeechResumed",
    "SpeechSegment",
    "SpeechSplitter",
    "SpeechStarted",
    "SpeechToText",
    "StreamResampler",
    "SttConfig",
    "SttError",
    "SttService",
    "SttStage",
    "Synthesizer",
    "TextToSpeech",
    "Transcriber",
    "Transcript",
    "TtsConfig",
    "TtsError",
    "TurnCompletionModel",
    "TurnConfig",
    "TurnModelError",
    "TurnStage",
    "VadConfig",
    "VadError",
    "VadService",
    "VadStage",
    "VoiceActivityDetector",
    "VoicingConfig",
    "VoicingGate",
    "WavError",
    "create_llm",
    "create_stt",
    "create_tts",
    "decode_wav",
    "encode_mulaw_wav",
    "level_dbfs",
    "mulaw_from_wav",
    "resample",
    "speakable",
]
