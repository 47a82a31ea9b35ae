"""README's first command, as a user runs it."""

import json
import subprocess
import sys

import soundfile


def test_demo_runs_a_whole_conversation_and_writes_both_sides(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "demo", "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["turns"]) == 4
    for turn in report["turns"]:
        assert turn["bot_messages"] >= 1
        assert turn["voice_to_voice_ms"] is not None
    caller = soundfile.info(str(out / "caller.wav"))
    bot = soundfile.info(str(out / "bot.wav"))
    assert caller.samplerate == bot.samplerate == 8000
    assert bot.duration > 4.0
    assert json.loads((out / "report.json").read_text())["turns"] == report["turns"]
