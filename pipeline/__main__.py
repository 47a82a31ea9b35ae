"""``python -m pipeline`` is the ``voicegraph`` command."""

from .cli import main

raise SystemExit(main())
