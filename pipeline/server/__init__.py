"""The bot server: one port for WebSocket calls and HTTP (webhooks), authentication,
the live :class:`Call` handed to a bot, structured logs. It knows bots only by the
:class:`Bot` protocol; :func:`with_stages` edits any bot's per-call chain from outside.
"""

from pipeline.server.call import Bot, Call, CallStatistics
from pipeline.server.drain import Drain
from pipeline.server.editing import EditedBot, with_stages
from pipeline.server.http_front import (
    HttpHandler,
    HttpRequest,
    HttpResponse,
    Listening,
    WebSocketHandler,
)
from pipeline.server.limits import ConnectionLimits, RateLimitedLog, raise_fd_limit
from pipeline.server.logs import configure_logging, redact_number
from pipeline.server.prometheus import Metrics, ServerMetrics, serve_metrics
from pipeline.server.recordings import call_folder
from pipeline.server.voice_stream import ServerConfig, VoiceStreamServer
from pipeline.server.webhooks import PlatformEvent, WebhookReceiver

__all__ = [
    "Bot",
    "Call",
    "CallStatistics",
    "ConnectionLimits",
    "Drain",
    "EditedBot",
    "HttpHandler",
    "HttpRequest",
    "HttpResponse",
    "Listening",
    "Metrics",
    "PlatformEvent",
    "RateLimitedLog",
    "ServerConfig",
    "ServerMetrics",
    "VoiceStreamServer",
    "WebSocketHandler",
    "WebhookReceiver",
    "call_folder",
    "configure_logging",
    "raise_fd_limit",
    "redact_number",
    "serve_metrics",
    "with_stages",
]
