"""Bots: the voice bot (its graph of stages and swappable speech services, the turn
manager, playback estimate, configuration, records, conversation events) and the parrot;
the fleet's shared event bus and call directory on Redis/Valkey (``serve --bus``).
"""

from pipeline.bot.call_directory import CallDirectory, Holder
from pipeline.bot.config import BotConfig, ConversationConfig, load_config
from pipeline.bot.conversation import Conversation, TurnRecord
from pipeline.bot.event_codec import event_from_json, message_from_json, result_from_json
from pipeline.bot.events_socket import serve_events
from pipeline.bot.messages import (
    CallState,
    CallStateChange,
    ChatMessage,
    ConversationBus,
    ConversationEvent,
    FleetLink,
    MessageNew,
    SendResult,
    Subscription,
)
from pipeline.bot.parrot import ParrotBot
from pipeline.bot.recorder import CallRecorder
from pipeline.bot.redis_bus import (
    BusAddress,
    BusUnavailable,
    RedisBus,
    fleet_health_route,
    open_redis_bus,
    serve_on_bus,
)
from pipeline.bot.send_routing import SendRouter
from pipeline.bot.sharing import BorrowingVoiceBot, share_models
from pipeline.bot.turn_metrics import TurnMetrics
from pipeline.bot.voicebot import SpeechServices, VoiceBot

__all__ = [
    "BorrowingVoiceBot",
    "BotConfig",
    "BusAddress",
    "BusUnavailable",
    "CallDirectory",
    "CallRecorder",
    "CallState",
    "CallStateChange",
    "ChatMessage",
    "Conversation",
    "ConversationBus",
    "ConversationConfig",
    "ConversationEvent",
    "FleetLink",
    "Holder",
    "MessageNew",
    "ParrotBot",
    "RedisBus",
    "SendResult",
    "SendRouter",
    "SpeechServices",
    "Subscription",
    "TurnMetrics",
    "TurnRecord",
    "VoiceBot",
    "event_from_json",
    "fleet_health_route",
    "load_config",
    "message_from_json",
    "open_redis_bus",
    "result_from_json",
    "serve_events",
    "serve_on_bus",
    "share_models",
]
