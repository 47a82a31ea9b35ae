"""The platform's REST side: a client that places outgoing calls, and a local emulator
of the platform that dials bots and posts webhooks.
"""

from pipeline.platform.emulator import EmulatorConfig, PlatformCall, PlatformEmulator
from pipeline.platform.rest import (
    DEFAULT_BASE_URL,
    CallRejected,
    CallRequest,
    CallStarted,
    InvalidCallRequest,
    PlatformClient,
    PlatformError,
    PlatformTimeout,
    PlatformUnreachable,
    RestError,
    UnexpectedResponse,
    WebhookDetails,
    place_call,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "CallRejected",
    "CallRequest",
    "CallStarted",
    "EmulatorConfig",
    "InvalidCallRequest",
    "PlatformCall",
    "PlatformClient",
    "PlatformEmulator",
    "PlatformError",
    "PlatformTimeout",
    "PlatformUnreachable",
    "RestError",
    "UnexpectedResponse",
    "WebhookDetails",
    "place_call",
]
