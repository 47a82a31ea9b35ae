"""Runnable examples of composing and measuring pipelines (not part of the installed package)."""
