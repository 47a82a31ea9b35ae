"""Bots: the voice bot (its graph of stages and swappable speech services, the turn
manager, playback estimate, configuration, records, conversation events) and the parrot.
"""
