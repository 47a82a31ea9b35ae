"""The voice-stream protocol, sans-IO: typed events, media payloads, the bot's side and
the platform's side as state machines. No Trio and no sockets inside.
"""
