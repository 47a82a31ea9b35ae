"""bot.toml: every section optional, every mistake named."""

import re

import pytest

from pipeline.bot.config import BotConfig, ConfigError, load_config


def write(tmp_path, text: str):
    path = tmp_path / "bot.toml"
    path.write_text(text)
    return path


def test_no_file_means_the_defaults():
    assert load_config(None) == BotConfig()


def test_every_section_is_read(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
[bot]
system_prompt = "Be brief."
greeting = ""
barge_in = false
[llm]
backend = "openai"
url = "http://127.0.0.1:9000"
model = "qwen"
max_tokens = 50
threads = 2
[tts]
voice = "/voices/amy.onnx"
length_scale = 1.2
threads = 1
[stt]
model = "small.en"
[vad]
model = "/models/vad.onnx"
[turns]
mode = "hangover"
min_silence_ms = 500
early_silence_ms = 0
[jitter]
max_delay = 0.2
""",
        )
    )
    assert config.conversation.system_prompt == "Be brief."
    assert config.conversation.barge_in is False
    assert (config.llm.backend, config.llm.model, config.llm.max_tokens) == ("openai", "qwen", 50)
    assert config.tts.voice == "/voices/amy.onnx"
    assert config.tts.length_scale == 1.2
    assert (config.llm.threads, config.tts.threads) == (2, 1)
    assert config.stt.model == "small.en"
    assert config.vad.model == "/models/vad.onnx"
    assert config.turns.min_silence_ms == 500
    assert config.turns.early_silence_ms == 0
    assert config.turns.threshold == BotConfig().turns.threshold  # untouched keys keep defaults
    assert config.jitter.max_delay == 0.2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[bots]\nx = 1", "unknown section"),
        ("[bot]\nsystem_promt = 'x'", "unknown key.*system_promt"),
        ("[tts]\nmodle = 'x'", "unknown key.*modle.*\\[tts\\]"),
        ("[bot]\nbarge_in = 'yes'", "barge_in must be true or false"),
        ("[turns]\nmin_silence_ms = 'long'", "min_silence_ms must be a number"),
        ("[llm]\nmodel = 3", "model must be a string"),
        ("[turns]\nthreshold = 0.2\nrelease_threshold = 0.5", "release_threshold"),
        ("[bot\n", "not valid TOML"),
        ("bot = 3", "must be a table"),
    ],
)
def test_mistakes_are_named(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read bot config"):
        load_config(tmp_path / "nope.toml")


def test_command_line_overrides_the_file(tmp_path):
    config = load_config(write(tmp_path, '[llm]\nbackend = "openai"\nurl = "http://a"'))
    changed = config.with_overrides(llm={"backend": "echo", "url": None, "model": None})
    assert changed.llm.backend == "echo"
    assert changed.llm.url == "http://a"  # None means "not given on the command line"


def test_every_field_of_a_service_config_is_settable(tmp_path):
    """Each section is its configuration object: every SttConfig field from [stt], ..."""
    config = load_config(
        write(
            tmp_path,
            """
[stt]
beam_size = 3
window_pad_s = 1.5
short_window = false
phantom_phrases = ["thank you", "bye"]
[tts]
workers = 2
volume = 0.5
[vad]
max_batch_delay_s = 0.01
""",
        )
    )
    assert (config.stt.beam_size, config.stt.window_pad_s, config.stt.short_window) == (
        3,
        1.5,
        False,
    )
    assert config.stt.phantom_phrases == frozenset({"thank you", "bye"})
    assert (config.tts.workers, config.tts.volume) == (2, 0.5)
    assert config.vad.max_batch_delay_s == 0.01


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('[stt]\nbeam_size = "three"', "[stt] beam_size must be a number"),
        ('[stt]\nphantom_phrases = "bye"', "[stt] phantom_phrases must be a list of strings"),
        ('[tts]\nvoices = "x"', "unknown key(s) voices in [tts]"),
        ("[vad]\nmodel = 3", "[vad] model must be a string"),
    ],
)
def test_a_bad_key_is_named_with_its_section(tmp_path, text, names):
    with pytest.raises(ConfigError, match=re.escape(names)):
        load_config(write(tmp_path, text))
