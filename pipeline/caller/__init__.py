"""The caller's side of a call: the emulator that dials a bot as the platform does, the
call client built on it, and where its audio comes from and goes (devices, files).
"""
