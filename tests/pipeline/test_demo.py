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
    greeting, *turns = report["turns"]
    assert greeting["turn"] == 0
    assert greeting["bot"]  # the voice bot greets the caller first
    assert [turn["turn"] for turn in turns] == [1, 2, 3, 4]
    for turn in turns:
        assert turn["bot_messages"] >= 1
        assert turn["voice_to_voice_ms"] is not None
        assert turn["bot_heard"]  # the bot transcribed something for every caller turn
        assert turn["bot"]  # and answered it with words
    caller = soundfile.info(str(out / "caller.wav"))
    bot = soundfile.info(str(out / "bot.wav"))
    assert caller.samplerate == bot.samplerate == 8000
    assert bot.duration > 4.0
    saved = json.loads((out / "report.json").read_text())["turns"]
    assert [turn["voice_to_voice_ms"] for turn in saved] == [t["voice_to_voice_ms"] for t in turns]
