"""Bots: the voice bot (its graph of stages and swappable speech services, the turn
manager, playback estimate, configuration, records, conversation events) and the parrot.
"""

from pipeline.bot.config import BotConfig, ConversationConfig, load_config
from pipeline.bot.conversation import Conversation, TurnRecord
from pipeline.bot.events_socket import serve_events
from pipeline.bot.messages import (
    CallState,
    CallStateChange,
    ChatMessage,
    ConversationBus,
    ConversationEvent,
    MessageNew,
    SendResult,
    Subscription,
)
from pipeline.bot.parrot import ParrotBot
from pipeline.bot.recorder import CallRecorder
from pipeline.bot.sharing import BorrowingVoiceBot, share_models
from pipeline.bot.voicebot import SpeechServices, VoiceBot

__all__ = [
    "BorrowingVoiceBot",
    "BotConfig",
    "CallRecorder",
    "CallState",
    "CallStateChange",
    "ChatMessage",
    "Conversation",
    "ConversationBus",
    "ConversationConfig",
    "ConversationEvent",
    "MessageNew",
    "ParrotBot",
    "SendResult",
    "SpeechServices",
    "Subscription",
    "TurnRecord",
    "VoiceBot",
    "load_config",
    "serve_events",
    "share_models",
]
