"""The ``voicegraph`` command line: one module per sub-command, nothing else imports it."""

from pipeline.cli.main import main

__all__ = ["main"]
