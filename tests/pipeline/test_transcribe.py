"""`voicegraph transcribe`: files through the call's speech path, one line per file."""

import json

import numpy as np
import soundfile

from benchmarks.speech_corpus import VOICES, silence, speech
from pipeline.cli import transcribe
from pipeline.cli.main import build_parser, main


def words(text: str) -> list[str]:
    return "".join(c for c in text.lower() if c.isalnum() or c.isspace()).split()


def write_two_turns(path, rate: int) -> None:
    first = speech("I want to cancel my subscription.", VOICES[0], rate=rate)
    second = speech("Yes, please.", VOICES[3], rate=rate)
    mono = np.concatenate(
        [silence(0.5, rate), first, silence(1.0, rate), second, silence(0.8, rate)]
    )
    stereo = np.stack([mono, mono], axis=1).astype(np.float32) / 32768.0
    soundfile.write(str(path), stereo, rate)


def test_files_in_any_format_give_one_json_line_each(tmp_path, capsys):
    flac, wav = tmp_path / "call.flac", tmp_path / "call.wav"
    write_two_turns(flac, 44100)
    soundfile.write(str(wav), speech("Maria Garcia.", rate=16000), 16000, subtype="PCM_16")
    assert main(["transcribe", str(flac), str(wav), "--telephony", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [set(line) for line in lines] == [{"file", "text", "ms"}] * 2
    assert [line["file"] for line in lines] == [str(flac), str(wav)]
    assert words(lines[0]["text"]) == words("I want to cancel my subscription. Yes, please.")
    assert words(lines[1]["text"]) == ["maria", "garcia"]
    assert all(isinstance(line["ms"], int) and line["ms"] >= 0 for line in lines)


def test_missing_file_is_refused_before_loading_models(tmp_path, capsys):
    assert main(["transcribe", str(tmp_path / "nope.wav")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_bad_model_path_is_a_start_up_error(tmp_path, capsys):
    wav = tmp_path / "a.wav"
    soundfile.write(str(wav), silence(0.5), 8000)
    assert main(["transcribe", str(wav), "--model", str(tmp_path / "no-model")]) == 2
    captured = capsys.readouterr()
    assert "STT model directory not found" in captured.err
    assert captured.out == ""


def test_command_is_registered_with_its_docstring_as_help():
    parser = build_parser()
    args = parser.parse_args(["transcribe", "x.wav", "--telephony"])
    assert args._main is transcribe.main
    assert args.telephony
    assert not args.json
    help_text = parser.format_help()
    assert transcribe.__doc__.strip().splitlines()[0][:40] in " ".join(help_text.split())
