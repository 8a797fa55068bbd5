"""models.core.protocol: every request frame is size-checked, parsed and validated, or
refused with a code; every message has one JSON form that its parser reads back; a
request the engine would refuse cannot be encoded; replies are parsed for the bridge."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.core import protocol
from models.core.exceptions import ProtocolError
from models.core.notes import Note
from models.core.protocol import Constraints, GenerateRequest, SamplingParams
from models.core.protocol.fields import message_id


def frame(obj: object) -> bytes:
    return json.dumps(obj).encode()


def generate(**fields: object) -> dict:
    message = {"v": 1, "type": "generate", "id": "g1", "session": "jam", "style": "baroque",
               "start_beat": 8.0}
    message.update(fields)
    return message


def code_of(data: bytes, **limits: int) -> tuple[str, str]:
    with pytest.raises(ProtocolError) as info:
        protocol.decode_request(data, **limits)
    return info.value.code, str(info.value)


NOTE = {"onset": 0.5, "duration": 1.0, "pitch": 60, "velocity": 90}


def test_full_generate_parses_into_typed_request():
    message = generate(
        seed=[NOTE, {"onset": 1, "duration": 0.25, "pitch": 64, "velocity": 1}],
        time_signature=[3, 4], bars=4,
        sampling={"temperature": 0.8, "top_k": 20, "top_p": 0.9, "min_p": 0.05, "seed": 7},
        constraints={"pitch_min": 48, "pitch_max": 84, "scale": [11, 0, 2, 4, 5, 7, 9],
                     "max_polyphony": 3})
    parsed = protocol.decode_request(frame(message))
    assert isinstance(parsed, protocol.GenerateMessage)
    assert parsed.id == "g1" and parsed.session == "jam"
    request = parsed.request
    assert request.style == "baroque" and request.start_beat == 8.0 and request.bars == 4
    assert request.time_signature == (3, 4) and request.bar_length == 3.0
    assert request.seed == (Note(0.5, 1.0, 60, 90), Note(1.0, 0.25, 64, 1))
    assert request.sampling == SamplingParams(0.8, 20, 0.9, 0.05, 7, False)
    assert request.constraints == Constraints(48, 84, (0, 2, 4, 5, 7, 9, 11), 3)


def test_generate_defaults():
    request = protocol.decode_request(frame(generate())).request
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
    (b'{"v": 1.0, "type": "ping"}', "bad_version"),
    (b'{"v": 1e0, "type": "ping"}', "bad_version"),
    (b'{"v": 1, "type": "ping", "t": Infinity}', "bad_json"),
    (b'{"v": 1, "type": "ping", "t": -Infinity}', "bad_json"),
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
        "version-float", "version-exponent", "infinity", "minus-infinity",
        "no-type", "typo-type", "type-int", "cancel-no-fields", "cancel-target-int",
        "ping-t-string", "empty-id", "hello-unknown-field"])
def test_malformed_frames_are_refused_with_their_code(data, code):
    assert code_of(data)[0] == code


def test_size_is_checked_before_parsing():
    # Not JSON at all, but too large: the size check must answer first.
    code, message = code_of(b"x" * 2000, max_bytes=1024)
    assert code == "too_large" and "2000" in message and "1024" in message
    ok = frame(generate())
    assert protocol.decode_request(ok, max_bytes=len(ok)).id == "g1"
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
    assert len(protocol.decode_request(frame(generate(seed=seed[:10])),
                                      max_seed_notes=10).request.seed) == 10


def test_small_requests_and_id_echo():
    assert protocol.decode_request(b'{"v":1,"type":"hello"}') == protocol.HelloRequest()
    assert protocol.decode_request(b'{"v":1,"type":"ping","t":1.5,"id":"p"}') == \
        protocol.PingRequest(id="p", t=1.5)
    assert protocol.decode_request(b'{"v":1,"type":"stats"}') == protocol.StatsRequest()
    assert protocol.decode_request(b'{"v":1,"type":"cancel","id":"c","target":"g1"}') == \
        protocol.CancelRequest(target="g1", id="c")
    assert message_id({"id": "abc"}) == "abc"
    assert message_id({"id": 3}) is None
    assert message_id({"id": "x" * 65}) is None


def test_replies_are_versioned_json():
    note = Note(4.0, 0.5, 62, 80)
    notes = protocol.NotesReply("g1", (note,)).to_json()
    assert notes == {"v": 1, "type": "notes", "id": "g1",
                     "notes": [{"onset": 4.0, "duration": 0.5, "pitch": 62, "velocity": 80}]}
    done = protocol.DoneReply("g1", "complete", notes=3, tokens=40, prefill_tokens=20,
                              reused_tokens=10, elapsed_ms=12.34567).to_json()
    assert done["reason"] == "complete" and done["elapsed_ms"] == 12.346
    error = protocol.ErrorReply(None, "busy", "full").to_json()
    assert error == {"v": 1, "type": "error", "code": "busy", "message": "full"}
    assert protocol.PongReply("p", None).to_json() == {"v": 1, "type": "pong", "id": "p",
                                                       "t": None}
    hello = protocol.HelloReply(None, "0.1.0", {"baroque": {"arch": "gpt"}},
                                protocol.Limits(max_active=2)).to_json()
    assert hello["protocol"] == 1 and hello["styles"] == {"baroque": {"arch": "gpt"}}
    assert hello["limits"] == {"max_message_bytes": 262144, "max_seed_notes": 2048,
                               "max_active": 2, "max_bars": 64, "max_seed_span_beats": 1024.0,
                               "max_start_distance_beats": 1024.0, "session_idle_s": 600.0}
    assert json.loads(protocol.encode(protocol.DoneReply(
        "g1", "complete", notes=3, tokens=40, prefill_tokens=20, reused_tokens=10,
        elapsed_ms=12.34567))) == done
    with pytest.raises(ValueError):
        protocol.ErrorReply(None, "nope", "x")
    with pytest.raises(ValueError):
        protocol.DoneReply("g", "whatever")


def test_error_codes_are_documented():
    doc = (Path(__file__).resolve().parents[3] / "docs" / "protocol.md").read_text("utf-8")
    for code in protocol.ERROR_CODES:
        assert f"`{code}`" in doc, code
    for reason in protocol.DONE_REASONS:
        assert f"`{reason}`" in doc, reason


def test_window_limits_are_documented_with_their_values():
    doc = (Path(__file__).resolve().parents[3] / "docs" / "protocol.md").read_text("utf-8")
    for name, value in (("max_seed_span_beats", protocol.MAX_SEED_SPAN_BEATS),
                        ("max_start_distance_beats", protocol.MAX_START_DISTANCE_BEATS)):
        assert f"| `{name}` | {value:g} beats |" in doc, name
    assert f"more than {protocol.MAX_INT_DIGITS} digits" in doc


def raw_generate(**literals: str) -> bytes:
    """A generate frame whose fields are spliced in as raw JSON text (huge number literals)."""
    text = json.dumps(generate())[:-1]
    for key, literal in literals.items():
        text += f', "{key}": {literal}'
    return (text + "}").encode()


@pytest.mark.parametrize("data, needle", [
    # 400 digits: more than a float can hold (float() would raise OverflowError).
    (raw_generate(start_beat="1" + "0" * 400), "start_beat must be at most"),
    (raw_generate(start_beat="-" + "9" * 400), "start_beat must be at least"),
    (raw_generate(bars="7" * 400), "bars must be within 1 and 64"),
    (raw_generate(sampling='{"temperature": 1%s}' % ("0" * 330)), "sampling.temperature"),
    (raw_generate(sampling='{"seed": 1%s}' % ("0" * 330)), "sampling.seed"),
    (raw_generate(constraints='{"pitch_max": 6%s}' % ("0" * 400)), "constraints.pitch_max"),
    (raw_generate(seed='[{"onset": 1%s, "duration": 1, "pitch": 60, "velocity": 80}]'
                  % ("0" * 320)), "seed[0].onset"),
    (b'{"v": 1, "type": "ping", "t": 1' + b"0" * 400 + b"}", "t must be a number"),
    # 5000 digits: beyond Python's int-string conversion limit (4300 by default).
    (raw_generate(start_beat="1" * 5000), "start_beat must be a number"),
    (raw_generate(bars="1" * 5000), "bars must be an integer"),
    (raw_generate(seed='[{"onset": 0, "duration": 1, "pitch": %s, "velocity": 80}]'
                  % ("6" * 5000)), "seed[0].pitch must be an integer"),
    (b'{"v": 1, "type": "ping", "t": ' + b"1" * 5000 + b"}", "t must be a number"),
    (b'{"v": 1, "type": "hello", "x": ' + b"1" * 5000 + b"}", "unknown field 'x'"),
    # Float literals that overflow to infinity are no beats either.
    (raw_generate(start_beat="1e400"), "start_beat must be a finite number (received inf)"),
    (b'{"v": 1, "type": "ping", "t": -1e400}', "t must be a finite number (received -inf)"),
], ids=["int-400-start", "int-400-negative", "int-400-bars", "int-330-temperature",
        "int-330-sampling-seed", "int-400-pitch-max", "int-320-onset", "int-400-ping",
        "digits-5000-start", "digits-5000-bars", "digits-5000-pitch", "digits-5000-ping",
        "digits-5000-unknown", "float-overflow-start", "float-overflow-ping"])
def test_huge_numbers_are_invalid_and_named(data, needle):
    code, message = code_of(data)
    assert code == "invalid", message
    assert needle in message
    assert len(message) < 300  # the value is shown cut, never thousands of digits


def test_huge_version_number_is_a_bad_version():
    code, message = code_of(b'{"v": ' + b"1" * 5000 + b', "type": "ping"}')
    assert code == "bad_version" and "5000 digits" in message


def test_huge_digits_still_echo_the_id():
    data = raw_generate(start_beat="1" * 5000)
    obj = protocol.decode_frame(data)
    assert message_id(obj) == "g1"
    with pytest.raises(ProtocolError) as info:
        protocol.decode_request(data)
    assert info.value.request_id == "g1"


def note_at(onset: float, duration: float = 1.0) -> dict:
    return {"onset": onset, "duration": duration, "pitch": 60, "velocity": 80}


@pytest.mark.parametrize("fields, needles", [
    # A note at beat 0 and a response ten million beats later (the stall).
    ({"seed": [note_at(0)], "start_beat": 1e7, "time_signature": [3, 8]},
     ["start_beat", "10000000", "beat 1", f"{protocol.MAX_START_DISTANCE_BEATS:g}"]),
    # A seed spanning four million beats.
    ({"seed": [note_at(0), note_at(4e6)], "start_beat": 4e6 + 2},
     ["seed spans 4000001 beats", f"{protocol.MAX_SEED_SPAN_BEATS:g}"]),
    # Seed notes after the start are still part of the seed's span.
    ({"seed": [note_at(0), note_at(9e6)], "start_beat": 4},
     ["seed spans 9000001 beats"]),
    ({"seed": [note_at(0, 1e7)], "start_beat": 4},
     ["seed[0].duration must be at most", "received 10000000"]),
    ({"seed": [note_at(0, 4.5e6)], "start_beat": 4}, ["seed[0].duration"]),
], ids=["far-start", "huge-span", "span-past-start", "huge-duration", "overflowing-duration"])
def test_seed_window_limits_are_checked_before_encoding(fields, needles):
    code, message = code_of(frame(generate(**fields)))
    assert code == "invalid", message
    for needle in needles:
        assert needle in message, (needle, message)


def test_window_limits_are_generous_and_inclusive():
    span, gap = protocol.MAX_SEED_SPAN_BEATS, protocol.MAX_START_DISTANCE_BEATS
    # Far more than the few bars a seed window holds (64 bars of 12/8 is 384 beats).
    assert span >= 384 and gap >= 384
    seed = [note_at(100), note_at(100 + span - 1, 1.0)]
    request = protocol.decode_request(frame(generate(seed=seed, start_beat=100 + span + gap)))
    assert len(request.request.seed) == 2
    code, _ = code_of(frame(generate(seed=seed, start_beat=100 + span + gap + 0.5)))
    assert code == "invalid"
    code, _ = code_of(frame(generate(seed=[note_at(100), note_at(100 + span, 0.25)])))
    assert code == "invalid"


@pytest.mark.parametrize("seed_beat, start_beat", [(8000, 8008), (9_999_000, 9_999_004),
                                                   (0, 0), (1e7 - 4, 1e7)])
def test_large_song_positions_are_accepted(seed_beat, start_beat):
    # A DAW at bar 2000 (or much later) is a real song position: only the distances count.
    seed = [note_at(seed_beat), note_at(seed_beat + 1.5, 0.5)]
    request = protocol.decode_request(frame(generate(seed=seed, start_beat=start_beat))).request
    assert request.start_beat == start_beat and request.seed[0].onset == seed_beat


def test_start_before_the_seed_is_accepted():
    # Seed notes at or after the start are ignored by the engine, not refused.
    request = protocol.decode_request(frame(generate(seed=[note_at(50)], start_beat=8))).request
    assert request.start_beat == 8


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.integers(-10**400, 10**400)
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
        protocol.decode_request(frame(message))
    except ProtocolError as err:
        assert err.code in protocol.ERROR_CODES and str(err)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_any_bytes_are_parsed_or_refused_with_a_code(data):
    try:
        protocol.decode_request(data)
    except ProtocolError as err:
        assert err.code in protocol.ERROR_CODES


# ----------------------------------------------------------------- roles
def test_roles_are_optional_in_seed_notes_and_constraints():
    message = generate(seed=[NOTE, {**NOTE, "pitch": 48, "role": "accompaniment"},
                             {**NOTE, "pitch": 72, "role": "lead"}],
                       constraints={"role": "accompaniment"})
    request = protocol.decode_request(frame(message)).request
    assert [n.role for n in request.seed] == ["any", "accompaniment", "lead"]
    assert request.constraints.role == "accompaniment"
    assert protocol.decode_request(frame(generate())).request.constraints.role is None


@pytest.mark.parametrize(("fields", "needle"), [
    ({"seed": [{**NOTE, "role": "bass"}]}, "seed[0].role must be one of any, lead, "
                                            "accompaniment (received 'bass')"),
    ({"seed": [{**NOTE, "role": 1}]}, "seed[0].role"),
    ({"constraints": {"role": "melody"}}, "constraints.role must be one of"),
    ({"constraints": {"role": ["lead"]}}, "constraints.role"),
], ids=["unknown-role", "not-a-string", "unknown-constraint-role", "list"])
def test_bad_roles_are_invalid(fields, needle):
    code, message = code_of(frame(generate(**fields)))
    assert code == "invalid" and needle in message


def test_notes_reply_names_a_role_only_when_there_is_one():
    reply = protocol.NotesReply("g1", (Note(0.0, 1.0, 60, 80),
                                       Note(0.0, 1.0, 48, 80, "accompaniment"))).to_json()
    assert "role" not in reply["notes"][0]
    assert reply["notes"][1]["role"] == "accompaniment"


# ----------------------------------------------------------------- one JSON form per message
JAM_REQUEST = GenerateRequest(
    seed=(Note(0.5, 1.0, 60, 90), Note(1.0, 0.25, 64, 1, "lead")), start_beat=8.0, bars=4,
    time_signature=(6, 8), style="baroque",
    sampling=SamplingParams(0.8, 20, 0.9, 0.05, 7, False),
    constraints=Constraints(48, 84, (0, 2, 4, 5, 7, 9, 11), 3, "accompaniment"))

REQUESTS = [
    protocol.HelloRequest(), protocol.HelloRequest(id="h1"), protocol.PingRequest(),
    protocol.PingRequest(id="p2", t=12.5), protocol.StatsRequest(id="s"),
    protocol.CancelRequest(target="g1", id="c3"),
    protocol.GenerateMessage("g1", "jam", JAM_REQUEST),
    protocol.GenerateMessage("g2", "jam", GenerateRequest(seed=(), start_beat=0.0, style="x")),
]


@pytest.mark.parametrize("message", REQUESTS, ids=lambda m: f"{m.TYPE}-{m.id}")
def test_every_request_reads_back_as_itself(message):
    """``to_json`` and the engine's parser agree: what a client encodes is what the engine
    decodes, field for field."""
    frame = protocol.encode(message)
    assert protocol.decode_request(frame) == message
    assert json.loads(frame) == message.to_json()


REPLIES = [
    protocol.HelloReply("h1", "0.1.0", {"baroque": {"arch": "gpt", "pitch_min": 21}},
                        protocol.Limits(max_active=3)),
    protocol.HelloReply(None, "0.1.0"),
    protocol.PongReply(), protocol.PongReply("p", 3.25),
    protocol.StatsReply("s", sessions=1, clients=1, active=0, requests=4, errors=2,
                        tokens_generated=90, uptime_s=1.5,
                        styles={"baroque": {"steps": 3, "rows": 5, "max_batch": 2,
                                            "active": 0}}),
    protocol.NotesReply("g1", (Note(4.0, 0.5, 62, 80), Note(4.5, 1.0, 48, 70, "lead"))),
    protocol.NotesReply("g1", ()),
    protocol.DoneReply("g1", "superseded", notes=3, tokens=40, prefill_tokens=20,
                       reused_tokens=10, elapsed_ms=12.345),
    protocol.ErrorReply("g1", "invalid", "bars must be within 1 and 64 (received 0)"),
    protocol.ErrorReply(None, "bad_json", "message is not JSON"),
]


@pytest.mark.parametrize("message", REPLIES, ids=lambda m: f"{m.TYPE}-{m.id}")
def test_every_reply_reads_back_as_itself(message):
    assert protocol.decode_reply(protocol.encode(message)) == message


def test_request_and_reply_types_are_documented():
    doc = (Path(__file__).resolve().parents[3] / "docs" / "protocol.md").read_text("utf-8")
    for kind in (*protocol.REQUEST_TYPES, *protocol.REPLY_TYPES):
        assert f"### `{kind}`" in doc, kind
    assert {m.TYPE for m in REQUESTS} == set(protocol.REQUEST_TYPES)
    assert {m.TYPE for m in REPLIES} == set(protocol.REPLY_TYPES)


@pytest.mark.parametrize(("request_", "code", "needle"), [
    (dataclasses.replace(JAM_REQUEST, time_signature=(4, 32)), "invalid", "received [4, 32]"),
    (dataclasses.replace(JAM_REQUEST, seed=(Note(0.0, 1.0, 128, 80),)), "invalid",
     "seed[0].pitch must be within 0 and 127 (received 128)"),
    (dataclasses.replace(JAM_REQUEST, seed=(Note(0.0, 0.0, 60, 80),)), "invalid",
     "seed[0].duration must be above 0"),
    (dataclasses.replace(JAM_REQUEST, seed=(Note(-1.0, 1.0, 60, 80),)), "invalid",
     "seed[0].onset"),
    (dataclasses.replace(JAM_REQUEST, start_beat=float("nan")), "invalid", "finite"),
    (dataclasses.replace(JAM_REQUEST, start_beat=5000.0), "invalid", "start_beat 5000"),
    (dataclasses.replace(JAM_REQUEST, bars=0), "invalid", "bars"),
    (dataclasses.replace(JAM_REQUEST, style=""), "invalid", "'style'"),
    (dataclasses.replace(JAM_REQUEST, sampling=SamplingParams(top_p=0.0)), "invalid",
     "sampling.top_p must be above 0"),
    (dataclasses.replace(JAM_REQUEST, sampling=SamplingParams(temperature=9.0)), "invalid",
     "sampling.temperature"),
    (dataclasses.replace(JAM_REQUEST, constraints=Constraints(scale=(0, 0))), "invalid",
     "repeats"),
    (dataclasses.replace(JAM_REQUEST, constraints=Constraints(role="melody")), "invalid",
     "constraints.role"),
], ids=["time-signature-32", "pitch", "duration", "onset", "nan-start", "far-start", "bars",
        "no-style", "top-p", "temperature", "scale", "role"])
def test_a_request_the_engine_would_refuse_cannot_be_encoded(request_, code, needle):
    """The bridge's encode runs the engine's own checks: the same code, the same message."""
    message = protocol.GenerateMessage("g1", "jam", request_)
    with pytest.raises(ProtocolError) as info:
        protocol.encode(message)
    assert info.value.code == code and needle in str(info.value), str(info.value)
    # The engine, handed the same JSON, says exactly the same.
    with pytest.raises(ProtocolError) as engine_side:
        protocol.parse_request(message.to_json())
    assert (engine_side.value.code, str(engine_side.value)) == (code, str(info.value))


def test_encoding_uses_the_limits_the_engine_reported():
    seed = tuple(Note(i * 0.25, 0.25, 60, 80) for i in range(20))
    message = protocol.GenerateMessage("g1", "jam", GenerateRequest(seed=seed, start_beat=8.0,
                                                                  style="x"))
    assert protocol.decode_request(protocol.encode(message)) == message
    with pytest.raises(ProtocolError, match="20 notes, the limit is 10") as info:
        protocol.encode(message, protocol.Limits(max_seed_notes=10))
    assert info.value.code == "invalid"
    with pytest.raises(ProtocolError) as info:
        protocol.encode(message, protocol.Limits(max_message_bytes=300))
    assert info.value.code == "too_large"
    assert protocol.encode(protocol.PingRequest(t=1.0), protocol.Limits(max_message_bytes=300))


@pytest.mark.parametrize(("reply", "needle"), [
    ({"type": "notes", "id": "g1", "notes": [{**NOTE, "pitch": 128}]}, "notes[0].pitch"),
    ({"type": "notes", "id": "g1", "notes": [{**NOTE, "duration": 0}]}, "notes[0].duration"),
    ({"type": "notes", "id": "g1", "notes": [{"onset": 1}]}, "notes[0].duration is required"),
    ({"type": "notes", "notes": []}, "'id' is required"),
    ({"type": "notes", "id": "g1", "notes": {}}, "notes must be a list"),
    ({"type": "done", "id": "g1", "reason": "tired", "notes": 0, "tokens": 0,
      "prefill_tokens": 0, "reused_tokens": 0, "elapsed_ms": 1}, "reason must be one of"),
    ({"type": "done", "id": "g1", "reason": "eos"}, "'notes' is required"),
    ({"type": "error", "code": "oops", "message": "x"}, "code must be one of"),
    ({"type": "error", "code": "busy"}, "'message' is required"),
    ({"type": "pong", "t": "now"}, "t must be a number"),
    ({"type": "hello", "protocol": 1, "engine": "x", "styles": {"a": 3},
      "limits": protocol.Limits().to_json()}, "styles.a must be an object"),
    ({"type": "hello", "protocol": 2, "engine": "x", "styles": {},
      "limits": protocol.Limits().to_json()}, "protocol must be within 1 and 1"),
], ids=["pitch", "duration", "missing-field", "notes-no-id", "notes-not-list", "done-reason",
        "done-counters", "error-code", "error-message", "pong-t", "hello-styles",
        "hello-protocol"])
def test_malformed_replies_are_refused_naming_the_field(reply, needle):
    with pytest.raises(ProtocolError) as info:
        protocol.decode_reply(frame({"v": 1, **reply}))
    assert info.value.code == "invalid" and needle in str(info.value), str(info.value)


@pytest.mark.parametrize(("data", "code"), [
    (b'{"v": 2, "type": "pong"}', "bad_version"),
    (b'{"type": "pong"}', "bad_version"),
    (b'{"v": 1, "type": "generate"}', "unknown_type"),
    (b"not json", "bad_json"),
    (b"[]", "bad_json"),
], ids=["version-2", "no-version", "a-request", "not-json", "not-an-object"])
def test_replies_of_another_protocol_are_refused(data, code):
    with pytest.raises(ProtocolError) as info:
        protocol.decode_reply(data)
    assert info.value.code == code


def test_replies_may_carry_fields_this_client_does_not_know():
    """docs/protocol.md: clients ignore fields they do not know (a newer engine may add
    some); the fields they use are still checked."""
    reply = protocol.decode_reply(frame({
        "v": 1, "type": "notes", "id": "g1", "extra": True,
        "notes": [{**NOTE, "channel": 3}, {**NOTE, "role": "lead"}]}))
    assert reply == protocol.NotesReply("g1", (Note(0.5, 1.0, 60, 90),
                                               Note(0.5, 1.0, 60, 90, "lead")))
    hello = protocol.decode_reply(frame({
        "v": 1, "type": "hello", "protocol": 1, "engine": "9.9", "styles": {},
        "limits": {**protocol.Limits().to_json(), "max_tempo": 3}, "motd": "hi"}))
    assert hello.limits == protocol.Limits()


_note = st.builds(
    Note, onset=st.floats(0, 1000, allow_nan=False), duration=st.floats(0.01, 16),
    pitch=st.integers(0, 127), velocity=st.integers(1, 127),
    role=st.sampled_from(["any", "lead", "accompaniment"]))
_request = st.builds(
    GenerateRequest, seed=st.lists(_note, max_size=6).map(tuple),
    start_beat=st.floats(0, 2000, allow_nan=False), bars=st.integers(1, 64),
    time_signature=st.tuples(st.integers(1, 32), st.sampled_from([1, 2, 4, 8, 16])),
    style=st.text(min_size=1, max_size=64),
    sampling=st.builds(SamplingParams, temperature=st.floats(0.05, 5.0),
                       top_k=st.integers(0, 1000), top_p=st.floats(0.01, 1.0),
                       min_p=st.floats(0.0, 1.0),
                       seed=st.none() | st.integers(0, 2**63 - 1), greedy=st.booleans()),
    constraints=st.builds(
        Constraints, pitch_min=st.integers(0, 60), pitch_max=st.integers(60, 127),
        scale=st.none() | st.sets(st.integers(0, 11), min_size=1).map(
            lambda s: tuple(sorted(s))),
        max_polyphony=st.none() | st.integers(1, 16),
        role=st.none() | st.sampled_from(["any", "lead", "accompaniment"])))


@settings(max_examples=200, deadline=None)
@given(request=_request)
def test_any_request_is_encoded_and_read_back_or_refused_by_the_same_rule(request):
    """Encoding never lets through what the engine refuses, and what it lets through
    arrives unchanged."""
    message = protocol.GenerateMessage("g1", "jam", request)
    try:
        expected = protocol.parse_request(message.to_json())
    except ProtocolError:
        with pytest.raises(ProtocolError):
            protocol.encode(message)
        return
    assert protocol.decode_request(protocol.encode(message)) == expected == message


def test_the_protocol_version_is_defined_once():
    """The engine and the bridge both take it from models.core.protocol.limits."""
    root = Path(__file__).resolve().parents[3]
    owners = [path.relative_to(root).as_posix()
              for folder in ("models", "engine", "bridge")
              for path in (root / folder).rglob("*.py")
              if "PROTOCOL_VERSION =" in path.read_text("utf-8")]
    assert owners == ["models/core/protocol/limits.py"]


# --- best-of-N -----------------------------------------------------------------------------

def test_candidates_round_trip_and_default_to_one():
    plain = protocol.decode_request(json.dumps(generate()).encode())
    assert plain.request.candidates == protocol.Candidates()
    assert "candidates" not in json.loads(protocol.encode(plain))  # as before the field
    asked = dataclasses.replace(JAM_REQUEST, candidates=protocol.Candidates(4, 120.0, 250.0))
    frame = protocol.encode(protocol.GenerateMessage("g", "jam", asked))
    assert protocol.decode_request(frame).request.candidates == protocol.Candidates(
        4, 120.0, 250.0)


@pytest.mark.parametrize(("candidates", "needle"), [
    ({"n": protocol.MAX_CANDIDATES + 1}, "candidates.n must be within 1 and 8"),
    ({"n": 0}, "candidates.n"),
    ({"n": 2.0}, "candidates.n"),
    ({"n": 2, "bpm": 0}, "candidates.bpm"),
    ({"n": 2, "ready_ms": -1}, "candidates.ready_ms"),
    ({"n": 2, "deadline": 5}, "unknown field candidates.'deadline'"),
    (3, "candidates must be an object"),
])
def test_candidates_beyond_the_limit_are_refused_as_invalid(candidates, needle):
    code, message = code_of(json.dumps(generate(candidates=candidates)).encode())
    assert code == "invalid"
    assert needle in message
    # The client's encoder refuses what the engine would refuse.
    with pytest.raises(ProtocolError):
        protocol.encode(protocol.GenerateMessage("g", "jam", dataclasses.replace(
            JAM_REQUEST, candidates=protocol.Candidates(protocol.MAX_CANDIDATES + 1))))
