"""``[stt] vocabulary``: the bot's words reach the decoder on every path, never from silence."""

import numpy as np
import pytest

from benchmarks.speech_corpus import VOICES, click, noise, padded, silence, speech, telephony
from pipeline.bot.config import ConfigError, load_config
from stages.stt import SttConfig, SttService, trim_loop, vocabulary_prompt

BAKERY = ("Rosie's Bakery", "Rosie", "sourdough", "baguette", "focaccia", "rye", "pick-up")


def words(text: str) -> list[str]:
    return "".join(c for c in text.lower() if c.isalnum() or c.isspace()).split()


def service(**options) -> SttService:
    stt = SttService(SttConfig(cpu_threads=2, **options))
    stt.load()
    return stt


@pytest.fixture(scope="module")
def plain() -> SttService:
    return service()


@pytest.fixture(scope="module")
def bakery() -> SttService:
    return service(vocabulary=BAKERY)


def caller(text: str, voice=VOICES[0]) -> np.ndarray:
    return telephony(padded(speech(text, voice), 0.2, 0.2))


@pytest.mark.parametrize(
    ("text", "voice"),
    [("Sourdough.", VOICES[0]), ("Can I speak to Rosie?", VOICES[3])],
    ids=["single-word", "name"],
)
def test_vocabulary_is_heard_on_the_fast_path(plain, bakery, text, voice):
    audio = caller(text, voice)
    without, with_ = plain.transcribe_sync(audio), bakery.transcribe_sync(audio)
    assert words(without.text) != words(text)  # tiny.en mishears it on its own
    assert words(with_.text) == words(text)
    assert with_.path == "short"


@pytest.mark.parametrize(
    ("text", "voice"),
    [("Focaccia.", VOICES[1]), ("Hello, is this Rosie's Bakery?", VOICES[0])],
    ids=["product", "place"],
)
def test_vocabulary_reaches_the_full_window_fallback(text, voice):
    audio = caller(text, voice)
    without = service(short_window=False).transcribe_sync(audio)
    with_ = service(short_window=False, vocabulary=BAKERY).transcribe_sync(audio)
    assert with_.path == without.path == "full"
    assert without.text.strip(" .?") != text.strip(" .?")  # misspelt or misheard
    assert with_.text.strip(" .?").lower() == text.strip(" .?").lower()
    assert "Rosie's Bakery" in with_.text or "Rosie" not in text


def test_general_speech_is_unchanged_by_the_vocabulary(bakery):
    text = "I want to cancel my subscription."
    assert words(bakery.transcribe_sync(caller(text)).text) == words(text)


@pytest.mark.parametrize(
    "audio",
    [
        silence(1.5),
        noise(1.5, level_dbfs=-60, seed=4),
        noise(1.5, level_dbfs=-40, seed=5),
        noise(2.0, level_dbfs=-35, seed=6, pink=False),
        np.concatenate([silence(0.3), click(), silence(0.5)]),
    ],
    ids=["digital-silence", "line-hiss", "room-noise", "white-noise", "click"],
)
def test_silence_and_noise_stay_silent_with_a_vocabulary(bakery, audio):
    assert bakery.transcribe_sync(telephony(audio)).text == ""


def test_vocabulary_loads_from_bot_toml_in_order(tmp_path):
    path = tmp_path / "bot.toml"
    path.write_text('[stt]\nvocabulary = ["Rosie\'s Bakery", " sourdough ", "", "rye"]\n')
    config = load_config(path)
    assert config.stt.vocabulary == ("Rosie's Bakery", "sourdough", "rye")
    assert vocabulary_prompt(config.stt.vocabulary) == "Rosie's Bakery, sourdough, rye."
    assert load_config(None).stt.vocabulary == ()


@pytest.mark.parametrize("value", ['"sourdough"', "[1, 2]"], ids=["string", "numbers"])
def test_vocabulary_of_the_wrong_type_is_a_config_error(tmp_path, value):
    path = tmp_path / "bot.toml"
    path.write_text(f"[stt]\nvocabulary = {value}\n")
    with pytest.raises(ConfigError, match=r"\[stt\].*vocabulary must be a list of strings"):
        load_config(path)


def test_a_list_loop_cut_mid_word_is_trimmed():
    # the vocabulary's comma list invites "sourdough, sourdough, sour" at the token budget
    assert trim_loop("sourdough, sourdough, sour") == "sourdough"
    assert trim_loop("Five five five two one") == "Five five five two one"
