"""The bot server: one port for WebSocket calls and HTTP (webhooks), authentication,
the live :class:`Call` handed to a bot, structured logs. It knows bots only by the
:class:`Bot` protocol.
"""
