"""The voice-stream protocol, sans-IO: typed events, media payloads, the bot's side and
the platform's side as state machines. No Trio and no sockets inside.
"""

from pipeline.protocol.bot_side import (
    LocalProtocolError,
    MessageTooBig,
    PayloadFormat,
    ProtocolStatistics,
    ServerProtocol,
    ServerState,
)
from pipeline.protocol.events import (
    MAX_MESSAGE_SIZE,
    CallClosed,
    CloseCode,
    CloseConnection,
    Connected,
    ConnectedAck,
    Event,
    Greeting,
    Interrupt,
    Media,
    MessageSkipped,
    ProtocolViolation,
    SkipReason,
    SpeechChunk,
)
from pipeline.protocol.identifiers import (
    MAX_CALL_ID_CHARS,
    MAX_MOBILE_NO_CHARS,
    call_id_problem,
    mobile_no_problem,
)
from pipeline.protocol.payload import (
    BufferJsonCache,
    PayloadError,
    decode_payload,
    encode_base64,
    encode_buffer_json,
    encode_buffer_object,
    encode_byte_list_json,
)
from pipeline.protocol.platform_side import ClientProtocol, ClientState

__all__ = [
    "MAX_CALL_ID_CHARS",
    "MAX_MESSAGE_SIZE",
    "MAX_MOBILE_NO_CHARS",
    "BufferJsonCache",
    "CallClosed",
    "ClientProtocol",
    "ClientState",
    "CloseCode",
    "CloseConnection",
    "Connected",
    "ConnectedAck",
    "Event",
    "Greeting",
    "Interrupt",
    "LocalProtocolError",
    "Media",
    "MessageSkipped",
    "MessageTooBig",
    "PayloadError",
    "PayloadFormat",
    "ProtocolStatistics",
    "ProtocolViolation",
    "ServerProtocol",
    "ServerState",
    "SkipReason",
    "SpeechChunk",
    "call_id_problem",
    "decode_payload",
    "encode_base64",
    "encode_buffer_json",
    "encode_buffer_object",
    "encode_byte_list_json",
    "mobile_no_problem",
]
