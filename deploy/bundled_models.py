"""Put the bundled models where the model-server containers find them (run at image build).

``/models/whisper`` (faster-whisper tiny.en), ``/models/llm.gguf`` (SmolLM2) and
``/models/tts`` (local-tts-studio's data directory serving the joe voice, made by the very
function the tests use, ``benchmarks/model_servers.py``'s ``speech_command``), so that
``compose.yaml`` runs the tests' command lines with fixed paths. Replace them with bigger
models for production: see README, "Deployment".
"""

from __future__ import annotations

import sys
from pathlib import Path

from model_servers import speech_command  # copied next to this script in the image

from stages.llm_local import bundled_model_path as bundled_llm
from stages.stt import bundled_model_path as bundled_whisper


def main(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "whisper").symlink_to(bundled_whisper(), target_is_directory=True)
    (root / "llm.gguf").symlink_to(bundled_llm())
    speech_command(8000, root / "tts")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
