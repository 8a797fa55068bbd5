"""models.core.settings: config.toml into frozen sections; every bad key or value is
refused naming it and the value received, unknown ones with a "did you mean"."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from models.core import protocol
from models.core.exceptions import ConfigError
from models.core.paths import default_config_path
from models.core.settings import (
    EngineSettings,
    SamplingSettings,
    Settings,
    load_settings,
    read_toml,
    settings_from_dict,
)


def load_text(tmp_path: Path, text: str) -> Settings:
    config = tmp_path / "mine.toml"
    config.write_text(text)
    return load_settings(config)


def refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return str(info.value)


# ----------------------------------------------------------------- defaults
def test_the_packaged_config_holds_every_default():
    """config.toml names every setting of every section, with the dataclasses' values."""
    raw = read_toml(default_config_path())
    for section in dataclasses.fields(Settings):
        names = {f.name for f in dataclasses.fields(section.default_factory())}
        assert set(raw[section.name]) == names, section.name
    assert load_settings() == Settings()


def test_sections_are_frozen():
    settings = load_settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.clock.bpm = 90.0  # type: ignore[misc]


def test_a_user_file_and_flags_override_the_defaults(tmp_path):
    config = tmp_path / "mine.toml"
    config.write_text("[clock]\nbpm = 90\ntime_signature = '6/8'\n[interaction]\nseed_bars = 8\n")
    settings = load_settings(config, overrides={"clock": {"bpm": 133.0, "source": None}})
    assert settings.clock.bpm == 133.0  # the flag wins over the file
    assert settings.clock.source == "internal"  # an unset flag (None) keeps the file's
    assert settings.clock.time_signature == "6/8" and settings.interaction.seed_bars == 8
    assert isinstance(load_text(tmp_path, "[clock]\nbpm = 90\n").clock.bpm, float)
    assert settings.sampling == Settings().sampling  # sections not named keep defaults


def test_engine_limits_default_to_the_protocols():
    engine = EngineSettings()
    assert protocol.Limits(max_message_bytes=engine.max_message_bytes,
                           max_seed_notes=engine.max_seed_notes,
                           max_active=engine.max_active,
                           session_idle_s=engine.session_idle_s) == protocol.Limits()


# ----------------------------------------------------------------- unknown names
@pytest.mark.parametrize(("text", "pieces"), [
    ("[clock]\nbmp = 90\n", ["unknown setting [clock] bmp", "did you mean 'bpm'"]),
    ("[sampling]\ntemprature = 0.5\n", ["[sampling] temprature", "did you mean 'temperature'"]),
    ("[midi]\nout_prot = 'x'\n", ["[midi] out_prot", "did you mean 'out_port'"]),
    ("[interaction]\nzzz = 1\n", ["unknown setting [interaction] zzz"]),
    ("[clok]\nbpm = 90\n", ["unknown section [clok]", "did you mean 'clock'"]),
    ("[sampling]\n[nonsense]\n", ["unknown section [nonsense]"]),
    ("clock = 3\n", ["[clock] must be a table", "received 3"]),
], ids=["key", "key-typo", "port", "no-near-miss", "section", "section-no-near-miss",
        "not-a-table"])
def test_unknown_names_are_refused_with_a_did_you_mean(tmp_path, text, pieces):
    message = refusal(tmp_path, text)
    for piece in pieces:
        assert piece in message, message


def test_no_did_you_mean_without_a_near_miss(tmp_path):
    assert "did you mean" not in refusal(tmp_path, "[interaction]\nzzz = 1\n")


# ----------------------------------------------------------------- bad values
@pytest.mark.parametrize(("text", "pieces"), [
    ("[clock]\nbpm = 'fast'\n", ["[clock] bpm must be a number", "'fast'"]),
    ("[clock]\nbpm = 1000\n", ["[clock] bpm must be within 20.0 and 400.0", "1000"]),
    ("[clock]\nbpm = true\n", ["[clock] bpm must be a number", "True"]),
    ("[clock]\nsource = 'daw'\n", ["[clock] source must be one of 'internal', 'midi'",
                                   "'daw'"]),
    ("[interaction]\nseed_bars = 2.5\n", ["[interaction] seed_bars must be an integer",
                                          "2.5"]),
    ("[interaction]\nbarge_in = 1\n", ["[interaction] barge_in must be true or false"]),
    ("[midi]\nout_port = 5\n", ["[midi] out_port must be a string", "5"]),
    ("[midi]\noutput_channel = 0\n", ["[midi] output_channel", "(received 0)"]),
    ("[sampling]\nscale = 5\n", ["[sampling] scale must be a list", "5"]),
    ("[sampling]\nscale = [0, 12]\n", ["[sampling] scale holds pitch classes 0-11", "[12]"]),
    ("[sampling]\npitch_min = 90\npitch_max = 60\n", ["pitch_min must be <= pitch_max",
                                                      "90 > 60"]),
    ("[engine]\nmax_message_bytes = 10\n", ["[engine] max_message_bytes", "10"]),
    ("[interaction]\nchords = 'C G Hm'\n", ["[interaction] chords", "not a chord symbol",
                                            "'Hm'"]),
], ids=["type", "range", "bool-for-number", "choice", "float-for-int", "int-for-bool",
        "int-for-string", "channel-zero", "not-a-list", "pitch-class", "pitch-order",
        "message-bytes", "chord-loop"])
def test_bad_values_name_the_key_and_the_value(tmp_path, text, pieces):
    message = refusal(tmp_path, text)
    for piece in pieces:
        assert piece in message, message


def test_missing_and_malformed_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.toml")
    config = tmp_path / "bad.toml"
    config.write_text("[clock\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_settings(config)
    assert str(config) in str(info.value)


# ----------------------------------------------------------------- time signatures
@pytest.mark.parametrize("text", ["4/4", "3/4", "6/8", "12/8", "7/16", "5/4", "2/2"])
def test_time_signatures_the_engine_takes_are_accepted(tmp_path, text):
    assert load_text(tmp_path, f"[clock]\ntime_signature = '{text}'\n").clock.time_signature \
        == text


@pytest.mark.parametrize(("text", "needle"), [
    ("4/32", "denominator must be 1, 2, 4, 8 or 16"),
    ("4/5", "denominator"),
    ("0/4", "numerator must be within 1 and 32"),
    ("40/4", "numerator"),
    ("4-4", "looks like 4/4"),
], ids=["32nd", "not-a-power-of-two", "zero", "numerator-40", "no-slash"])
def test_a_time_signature_the_engine_would_refuse_is_refused_at_start(tmp_path, text, needle):
    """--time-signature 4/32 used to pass the config and fail every request."""
    for message in (refusal(tmp_path, f"[clock]\ntime_signature = '{text}'\n"),
                    refusal(tmp_path, f"[tokens]\ntime_signatures = ['4/4', '{text}']\n")):
        assert needle in message and repr(text) in message, message
    with pytest.raises(ConfigError, match=r"^\[clock\] time_signature: "):
        load_settings(overrides={"clock": {"time_signature": text}})


# ----------------------------------------------------------------- [sampling] -> protocol
def test_sampling_becomes_the_protocols_sampling_and_constraints():
    sampling = SamplingSettings(temperature=0.7, top_k=5, top_p=0.9, min_p=0.1, seed=-1,
                                pitch_min=40, pitch_max=90, scale=(0, 4, 7),
                                max_polyphony=0)
    assert sampling.sampling_params() == protocol.SamplingParams(0.7, 5, 0.9, 0.1, None)
    assert sampling.sampling_params(1.5).temperature == 1.5
    assert dataclasses.replace(sampling, seed=9).sampling_params().seed == 9
    assert sampling.constraints() == protocol.Constraints(40, 90, (0, 4, 7), None)
    assert sampling.constraints((50, 60)) == protocol.Constraints(50, 60, (0, 4, 7), None)
    assert SamplingSettings(max_polyphony=3).constraints().max_polyphony == 3
    assert SamplingSettings().constraints().scale is None


def test_candidates_carry_the_deadline_of_the_answer():
    one = SamplingSettings(candidates=1)
    assert one.candidates_for(now_beat=3.0, start_beat=8.0, bpm=120.0) == \
        protocol.Candidates()  # one candidate: the field is left out of the request
    four = SamplingSettings(candidates=4, candidates_lead_beats=1.0)
    # Asked at beat 3 for beat 8 at 120 BPM: 5 beats away, wanted one beat early: 2 s.
    assert four.candidates_for(now_beat=3.0, start_beat=8.0, bpm=120.0) == \
        protocol.Candidates(4, 120.0, 2000.0)
    # Too near for the lead: wanted at once, never before now.
    assert four.candidates_for(now_beat=7.8, start_beat=8.0, bpm=120.0).ready_ms == 0.0
    assert four.candidates_for(now_beat=None, start_beat=8.0, bpm=None) == \
        protocol.Candidates(4)


@pytest.mark.parametrize(("text", "needle"), [
    ("[sampling]\ntop_p = 0.0\n", "[sampling] top_p must be above 0.0"),
    ("[sampling]\nscale = [0, 4, 4]\n", "[sampling] scale repeats a pitch class"),
    ("[sampling]\nseed = 9223372036854775807\n", None),
], ids=["top-p-zero", "repeated-pitch-class", "largest-seed"])
def test_sampling_the_engine_would_refuse_is_refused_at_start(tmp_path, text, needle):
    if needle is None:
        load_text(tmp_path, text)
        return
    message = refusal(tmp_path, text)
    assert message.startswith(needle) and "the engine would refuse it" in message, message


def test_settings_from_a_dict_are_checked_the_same_way():
    assert settings_from_dict({}) == Settings()
    with pytest.raises(ConfigError, match="did you mean 'bpm'"):
        settings_from_dict({"clock": {"bpn": 90}})
