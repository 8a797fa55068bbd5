"""models.core.meter: one time-signature rule, the same for the settings, the bridge's
flag, the tokenizer and the engine protocol."""

from __future__ import annotations

import pytest

from models.core import protocol
from models.core.exceptions import ConfigError, ProtocolError, TokenizerError
from models.core.meter import (
    DENOMINATORS,
    MAX_NUMERATOR,
    bar_length,
    check_time_signature,
    format_time_signature,
    is_valid_time_signature,
    parse_time_signature,
)
from models.core.settings import ClockSettings, TokensSettings, load_settings
from models.core.tokenizer import _miditok_config


@pytest.mark.parametrize(("text", "expected"), [
    ("4/4", (4, 4)), ("6/8", (6, 8)), ("12/8", (12, 8)), ("7/16", (7, 16)), ("1/1", (1, 1)),
    ("32/2", (32, 2)), (" 3 / 4 ", (3, 4)),
])
def test_parse_accepts_what_the_vocabulary_can_hold(text, expected):
    assert parse_time_signature(text) == expected
    assert format_time_signature(expected) == text.replace(" ", "")
    assert check_time_signature(*expected) == expected


@pytest.mark.parametrize(("text", "needle"), [
    ("4/32", "denominator must be 1, 2, 4, 8 or 16"),
    ("4/3", "denominator"),
    ("4/0", "denominator"),
    ("0/4", "numerator must be within 1 and 32"),
    ("33/4", "numerator"),
    ("4", "looks like 4/4"),
    ("four/four", "looks like 4/4"),
    ("4/4/4", "looks like 4/4"),
    ("-3/4", "looks like 4/4"),
    ("3.0/4", "looks like 4/4"),
    ("", "looks like 4/4"),
], ids=["32nd", "not-a-power-of-two", "zero-denominator", "zero-numerator", "numerator-33",
        "no-slash", "words", "three-parts", "negative", "float", "empty"])
def test_parse_refuses_with_the_text_received(text, needle):
    with pytest.raises(ValueError) as info:
        parse_time_signature(text)
    assert needle in str(info.value) and repr(text) in str(info.value)


@pytest.mark.parametrize("pair", [(4, 32), (0, 4), (33, 4), (4, 3), (True, 4), (4.0, 4),
                                  ("4", 4)], ids=str)
def test_check_refuses_what_parse_refuses(pair):
    assert not is_valid_time_signature(*pair)
    with pytest.raises(ValueError):
        check_time_signature(*pair)


def test_bar_length_in_quarter_notes():
    assert bar_length((4, 4)) == 4.0 and bar_length((6, 8)) == 3.0
    assert bar_length((7, 16)) == 1.75 and bar_length((3, 2)) == 6.0


# Every pair near the rule's edges, so a signature one part takes and another refuses
# shows up here.
GRID = [(n, d) for n in (0, 1, 2, 3, 7, 12, 31, 32, 33) for d in (0, 1, 2, 3, 4, 8, 16, 32, 64)]


@pytest.mark.parametrize(("numerator", "denominator"), GRID, ids=[f"{n}-{d}" for n, d in GRID])
def test_settings_protocol_and_tokenizer_agree(numerator, denominator):
    """The audit's finding: ``--time-signature 4/32`` passed the config and failed in
    the engine. Now the config, the protocol and the tokenizer take the same signatures."""
    text = f"{numerator}/{denominator}"
    valid = 1 <= numerator <= MAX_NUMERATOR and denominator in DENOMINATORS
    assert is_valid_time_signature(numerator, denominator) is valid
    verdicts = {}
    try:
        ClockSettings(time_signature=text).check()
        verdicts["clock"] = True
    except ConfigError:
        verdicts["clock"] = False
    try:
        TokensSettings(time_signatures=(text,)).check()
        verdicts["tokens"] = True
    except ConfigError:
        verdicts["tokens"] = False
    try:
        protocol.fields.time_signature([numerator, denominator])
        verdicts["protocol"] = True
    except ProtocolError:
        verdicts["protocol"] = False
    try:  # the tokenizer without the settings' check (a config read from a model file)
        _miditok_config(TokensSettings(time_signatures=(text,)))
        verdicts["tokenizer"] = True
    except TokenizerError:
        verdicts["tokenizer"] = False
    assert verdicts == dict.fromkeys(("clock", "tokens", "protocol", "tokenizer"), valid)


def test_a_32nd_denominator_is_refused_when_the_config_loads():
    with pytest.raises(ConfigError) as info:
        load_settings(overrides={"clock": {"time_signature": "4/32"}})
    message = str(info.value)
    assert message.startswith("[clock] time_signature: ")
    assert "'4/32'" in message and "1, 2, 4, 8 or 16" in message
