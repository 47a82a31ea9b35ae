"""``python -m pipeline`` is the ``voicegraph`` command."""

from pipeline.cli.main import main

raise SystemExit(main())
