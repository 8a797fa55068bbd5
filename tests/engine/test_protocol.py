"""engine.protocol: every frame is size-checked, parsed and validated, or refused with a code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import protocol
from engine.requests import Constraints, SamplingParams
from models.exceptions import ProtocolError
from models.notes import Note


def frame(obj: object) -> bytes:
    return json.dumps(obj).encode()


def generate(**fields: object) -> dict:
    message = {"v": 1, "type": "generate", "id": "g1", "session": "jam", "style": "baroque",
               "start_beat": 8.0}
    message.update(fields)
    return message


def code_of(data: bytes, **limits: int) -> tuple[str, str]:
    with pytest.raises(ProtocolError) as info:
        protocol.parse_message(data, **limits)
    return info.value.code, str(info.value)


NOTE = {"onset": 0.5, "duration": 1.0, "pitch": 60, "velocity": 90}


def test_full_generate_parses_into_typed_request():
    message = generate(
        seed=[NOTE, {"onset": 1, "duration": 0.25, "pitch": 64, "velocity": 1}],
        time_signature=[3, 4], bars=4,
        sampling={"temperature": 0.8, "top_k": 20, "top_p": 0.9, "min_p": 0.05, "seed": 7},
        constraints={"pitch_min": 48, "pitch_max": 84, "scale": [11, 0, 2, 4, 5, 7, 9],
                     "max_polyphony": 3})
    parsed = protocol.parse_message(frame(message))
    assert isinstance(parsed, protocol.GenerateMessage)
    assert parsed.id == "g1" and parsed.session == "jam"
    request = parsed.request
    assert request.style == "baroque" and request.start_beat == 8.0 and request.bars == 4
    assert request.time_signature == (3, 4) and request.bar_length == 3.0
    assert request.seed == (Note(0.5, 1.0, 60, 90), Note(1.0, 0.25, 64, 1))
    assert request.sampling == SamplingParams(0.8, 20, 0.9, 0.05, 7, False)
    assert request.constraints == Constraints(48, 84, (0, 2, 4, 5, 7, 9, 11), 3)


def test_generate_defaults():
    request = protocol.parse_message(frame(generate())).request
    assert request.seed == () and request.bars == 2 and request.time_signature == (4, 4)
    assert request.sampling == SamplingParams() and request.constraints == Constraints()


@pytest.mark.parametrize("data, code", [
    (b"{not json", "bad_json"),
    (b"\xff\xfe{}", "bad_json"),
    (b"", "bad_json"),
    (b"[1, 2]", "bad_json"),
    (b'"hello"', "bad_json"),
    (b"42", "bad_json"),
    (b"null", "bad_json"),
    (b'{"v": 1, "type": "ping", "t": NaN}', "bad_json"),
    (b"[" * 50_000 + b"]" * 50_000, "bad_json"),
    (b'{"type": "ping"}', "bad_version"),
    (b'{"v": 2, "type": "ping"}', "bad_version"),
    (b'{"v": "1", "type": "ping"}', "bad_version"),
    (b'{"v": true, "type": "ping"}', "bad_version"),
    (b'{"v": 1}', "unknown_type"),
    (b'{"v": 1, "type": "generat"}', "unknown_type"),
    (b'{"v": 1, "type": 5}', "unknown_type"),
    (b'{"v": 1, "type": "cancel"}', "invalid"),
    (b'{"v": 1, "type": "cancel", "id": "c", "target": 3}', "invalid"),
    (b'{"v": 1, "type": "ping", "t": "now"}', "invalid"),
    (b'{"v": 1, "type": "ping", "id": ""}', "invalid"),
    (b'{"v": 1, "type": "hello", "extra": 1}', "invalid"),
], ids=["truncated", "not-utf8", "empty", "array", "string", "number", "null", "nan",
        "deep-nesting", "no-version", "version-2", "version-string", "version-bool",
        "no-type", "typo-type", "type-int", "cancel-no-fields", "cancel-target-int",
        "ping-t-string", "empty-id", "hello-unknown-field"])
def test_malformed_frames_are_refused_with_their_code(data, code):
    assert code_of(data)[0] == code


def test_size_is_checked_before_parsing():
    # Not JSON at all, but too large: the size check must answer first.
    code, message = code_of(b"x" * 2000, max_bytes=1024)
    assert code == "too_large" and "2000" in message and "1024" in message
    ok = frame(generate())
    assert protocol.parse_message(ok, max_bytes=len(ok)).id == "g1"
    assert code_of(ok, max_bytes=len(ok) - 1)[0] == "too_large"


def test_typo_in_type_suggests_the_right_one():
    assert "did you mean 'generate'" in code_of(b'{"v": 1, "type": "generat"}')[1]


@pytest.mark.parametrize("fields, needle", [
    ({"session": 5}, "received 5"),
    ({"session": "x" * 65}, "'session'"),
    ({"style": None}, "'style'"),
    ({"id": 7}, "'id'"),
    ({"start_beat": -1}, "received -1"),
    ({"start_beat": "8"}, "received '8'"),
    ({"start_beat": 1e12}, "at most"),
    ({"bars": 0}, "received 0"),
    ({"bars": 65}, "received 65"),
    ({"bars": 2.0}, "integer"),
    ({"bars": True}, "received True"),
    ({"time_signature": [4]}, "time_signature"),
    ({"time_signature": [4, 3]}, "received [4, 3]"),
    ({"time_signature": "4/4"}, "time_signature"),
    ({"seed": {"onset": 0}}, "seed must be a list"),
    ({"seed": [5]}, "seed[0] must be an object"),
    ({"seed": [NOTE, {**NOTE, "pitch": 128}]}, "seed[1].pitch must be within 0 and 127 "
                                              "(received 128)"),
    ({"seed": [{**NOTE, "pitch": 60.0}]}, "seed[0].pitch must be an integer"),
    ({"seed": [{**NOTE, "velocity": 0}]}, "seed[0].velocity"),
    ({"seed": [{**NOTE, "duration": 0}]}, "seed[0].duration must be above 0"),
    ({"seed": [{**NOTE, "onset": -0.5}]}, "seed[0].onset"),
    ({"seed": [{"onset": 0, "duration": 1, "pitch": 60}]}, "seed[0].velocity is required"),
    ({"seed": [{**NOTE, "chan": 1}]}, "seed[0].'chan'"),
    ({"sampling": {"temperature": 0}}, "sampling.temperature must be at least 0.05"),
    ({"sampling": {"temperature": 9}}, "received 9"),
    ({"sampling": {"temprature": 1}}, "did you mean 'temperature'"),
    ({"sampling": {"top_k": -1}}, "sampling.top_k"),
    ({"sampling": {"top_p": 0}}, "sampling.top_p must be above 0"),
    ({"sampling": {"min_p": 1.5}}, "sampling.min_p"),
    ({"sampling": {"seed": -3}}, "sampling.seed"),
    ({"sampling": {"seed": 1.5}}, "sampling.seed"),
    ({"sampling": {"greedy": 1}}, "sampling.greedy"),
    ({"sampling": []}, "sampling must be an object"),
    ({"constraints": {"pitch_min": 80, "pitch_max": 60}}, "is above"),
    ({"constraints": {"scale": [0, 12]}}, "constraints.scale[1]"),
    ({"constraints": {"scale": []}}, "constraints.scale"),
    ({"constraints": {"scale": [0, 0]}}, "repeats"),
    ({"constraints": {"max_polyphony": 0}}, "constraints.max_polyphony"),
    ({"constraints": {"key": "C"}}, "constraints.'key'"),
    ({"tempo": 120}, "unknown field 'tempo'"),
])
def test_generate_fields_are_checked_and_named(fields, needle):
    code, message = code_of(frame(generate(**fields)))
    assert code == "invalid"
    assert needle in message


@pytest.mark.parametrize("missing", ["id", "session", "style", "start_beat"])
def test_generate_required_fields(missing):
    message = generate()
    del message[missing]
    code, text = code_of(frame(message))
    assert code == "invalid" and missing in text


def test_seed_length_limit():
    seed = [{**NOTE, "onset": i * 0.5} for i in range(11)]
    code, message = code_of(frame(generate(seed=seed)), max_seed_notes=10)
    assert code == "invalid" and "11 notes" in message and "10" in message
    assert len(protocol.parse_message(frame(generate(seed=seed[:10])),
                                      max_seed_notes=10).request.seed) == 10


def test_small_requests_and_id_echo():
    assert protocol.parse_message(b'{"v":1,"type":"hello"}') == protocol.HelloRequest()
    assert protocol.parse_message(b'{"v":1,"type":"ping","t":1.5,"id":"p"}') == \
        protocol.PingRequest(id="p", t=1.5)
    assert protocol.parse_message(b'{"v":1,"type":"stats"}') == protocol.StatsRequest()
    assert protocol.parse_message(b'{"v":1,"type":"cancel","id":"c","target":"g1"}') == \
        protocol.CancelRequest(target="g1", id="c")
    assert protocol.request_id_of({"id": "abc"}) == "abc"
    assert protocol.request_id_of({"id": 3}) is None
    assert protocol.request_id_of({"id": "x" * 65}) is None


def test_replies_are_versioned_json():
    note = Note(4.0, 0.5, 62, 80)
    notes = protocol.notes_reply("g1", [note])
    assert notes == {"v": 1, "type": "notes", "id": "g1",
                     "notes": [{"onset": 4.0, "duration": 0.5, "pitch": 62, "velocity": 80}]}
    done = protocol.done_reply("g1", "complete", notes=3, tokens=40, prefill_tokens=20,
                               reused_tokens=10, elapsed_ms=12.34567)
    assert done["reason"] == "complete" and done["elapsed_ms"] == 12.346
    error = protocol.error_reply(None, "busy", "full")
    assert error == {"v": 1, "type": "error", "code": "busy", "message": "full"}
    assert protocol.pong_reply("p", None) == {"v": 1, "type": "pong", "id": "p", "t": None}
    hello = protocol.hello_reply(None, "0.1.0", {"baroque": {"arch": "gpt"}}, {"max_active": 2})
    assert hello["protocol"] == 1 and hello["styles"] == {"baroque": {"arch": "gpt"}}
    assert json.loads(protocol.encode_reply(done)) == done
    with pytest.raises(ValueError):
        protocol.error_reply(None, "nope", "x")
    with pytest.raises(ValueError):
        protocol.done_reply("g", "whatever", notes=0, tokens=0, prefill_tokens=0,
                            reused_tokens=0, elapsed_ms=0)


def test_error_codes_are_documented():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text("utf-8")
    for code in protocol.ERROR_CODES:
        assert f"`{code}`" in doc, code
    for reason in protocol.DONE_REASONS:
        assert f"`{reason}`" in doc, reason


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
_fields = st.sampled_from(["v", "type", "id", "session", "style", "seed", "time_signature",
                           "start_beat", "bars", "sampling", "constraints", "target", "t"])


@settings(max_examples=300, deadline=None)
@given(base=st.sampled_from(["generate", "ping", "cancel", "hello", "stats"]),
       changes=st.dictionaries(_fields, _json, max_size=4))
def test_any_json_is_parsed_or_refused_with_a_code(base, changes):
    message = generate() if base == "generate" else {"v": 1, "type": base, "id": "x",
                                                     "target": "g"}
    message.update(changes)
    try:
        protocol.parse_message(frame(message))
    except ProtocolError as err:
        assert err.code in protocol.ERROR_CODES and str(err)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_any_bytes_are_parsed_or_refused_with_a_code(data):
    try:
        protocol.parse_message(data)
    except ProtocolError as err:
        assert err.code in protocol.ERROR_CODES
