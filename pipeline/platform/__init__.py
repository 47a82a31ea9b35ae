"""The platform's REST side: a client that places outgoing calls, and a local emulator
of the platform that dials bots and posts webhooks.
"""
