"""The engine's zmq protocol, version 1: frames in, typed requests out; reply dicts back.

Pure functions, no zmq and no onnxruntime, so every rule is unit-testable and
``docs/protocol.md`` can be checked against one place. Every check raises
``ProtocolError(code, message)`` whose message names the field and the value received;
the server turns it into an ``error`` reply and keeps serving.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from models.core.exceptions import ProtocolError
from models.core.meter import DENOMINATORS, MAX_NUMERATOR, is_valid_time_signature
from models.core.notes import ANY, ROLES, Note
from models.core.protocol.messages import Constraints, GenerateRequest, SamplingParams

PROTOCOL_VERSION = 1
# Defaults of the limits; the server passes the [engine] settings.
MAX_MESSAGE_BYTES = 256 * 1024
MAX_SEED_NOTES = 2048
MAX_ID_CHARS = 64
MAX_BARS = 64
# Beats beyond this are no real timeline (about 58 days at 120 BPM); it keeps bar
# arithmetic far away from float precision trouble. Absolute positions this large are
# fine: the engine encodes the seed relative to its first bar, so only distances cost.
MAX_BEAT = 1e7
# What a request may span, in beats. A bridge's seed window is a few bars (``[interaction]
# seed_bars``, at most 64: 384 beats of 12/8), and it asks for the bar after the player's
# phrase. Both limits are far above that, and far below the tokenizer's int32 ticks (~4.47
# million beats). The engine's prompt no longer encodes bars its budget would drop, so
# a longer request would not stall it either; the limits make such a request a clear
# refusal, naming what was sent, instead of an answer that silently ignores the seed.
# From the seed's first onset to the latest end (onset + duration) of its notes; also the
# longest note.
MAX_SEED_SPAN_BEATS = 1024.0
# From that end of the seed to ``start_beat`` (a start before it is fine: seed notes at or
# after the start are ignored).
MAX_START_DISTANCE_BEATS = 1024.0
# Integer literals longer than this are never parsed into ints: no field holds one (the
# largest, ``sampling.seed``, has 19 digits), and Python refuses to convert more than
# ``sys.get_int_max_str_digits()`` digits, which can be set as low as 640.
MAX_INT_DIGITS = 600
MAX_SAMPLING_SEED = 2**63 - 1

REQUEST_TYPES = ("hello", "ping", "stats", "generate", "cancel")
DONE_REASONS = ("complete", "eos", "cancelled", "superseded", "max_tokens")
ERROR_CODES = {
    "bad_json": "the frame is not UTF-8 JSON, or not a JSON object",
    "too_large": "the frame exceeds the size limit",
    "bad_version": "`v` is missing or not 1",
    "unknown_type": "`type` is not a known request",
    "invalid": "a field is missing, unknown, of the wrong type or out of range",
    "unknown_style": "`style` is not loaded by this engine",
    "unsupported": "the loaded model cannot serve the request as asked",
    "duplicate_id": "a `generate` with this `id` is already running for this client",
    "not_found": "`cancel` names no running request",
    "busy": "the engine holds its maximum of active requests",
    "internal": "a bug in the engine; the request is dropped, the engine keeps serving",
}

_ENVELOPE = ("v", "type", "id")
_GENERATE_FIELDS = ("session", "style", "seed", "time_signature", "start_beat", "bars",
                    "sampling", "constraints")
_SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "seed", "greedy")
_CONSTRAINT_FIELDS = ("pitch_min", "pitch_max", "scale", "max_polyphony", "role")
_NOTE_FIELDS = ("onset", "duration", "pitch", "velocity")
# Optional in a note: its role (a style with role tokens encodes it; others ignore it).
_NOTE_OPTIONAL = ("role",)


@dataclass(frozen=True)
class HelloRequest:
    """Ask which styles the engine serves."""

    id: str | None = None


@dataclass(frozen=True)
class PingRequest:
    """Liveness check; ``t`` is echoed untouched."""

    id: str | None = None
    t: float | None = None


@dataclass(frozen=True)
class StatsRequest:
    """Ask for the engine's counters."""

    id: str | None = None


@dataclass(frozen=True)
class GenerateMessage:
    """A ``generate`` request: who asks (session, id) and what (``request``)."""

    id: str
    session: str
    request: GenerateRequest


@dataclass(frozen=True)
class CancelRequest:
    """Stop the running ``generate`` whose id is ``target``."""

    target: str
    id: str | None = None


Request = HelloRequest | PingRequest | StatsRequest | GenerateMessage | CancelRequest


class HugeInteger:
    """An integer literal of more than ``MAX_INT_DIGITS`` digits, kept unconverted.

    ``decode_frame`` puts one in place of such a literal, so the message still parses (its
    ``id`` can be echoed) and the field that holds it is refused by name: it is neither an
    ``int`` nor a ``float``, so every type check refuses it as ``invalid``.
    """

    __slots__ = ("digits", "text")

    def __init__(self, text: str) -> None:
        self.text = text[:24]
        self.digits = len(text.lstrip("-"))

    def __repr__(self) -> str:
        return f"{self.text}... (an integer of {self.digits} digits)"


def _parse_int(text: str) -> int | HugeInteger:
    # Called by json for every integer literal; Python's own int() would raise ValueError
    # past its digit limit (and takes quadratic time below it).
    if len(text) > MAX_INT_DIGITS:
        return HugeInteger(text)
    return int(text)


def _invalid(message: str) -> ProtocolError:
    return ProtocolError("invalid", message)


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _reject_unknown(obj: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    # Unknown fields are refused rather than ignored: a typo such as "temprature" would
    # otherwise silently fall back to the default.
    for key in obj:
        if key not in known:
            raise _invalid(f"unknown field {where}{key!r}{_did_you_mean(key, known)}")


def _short(value: Any) -> str:
    """``repr`` of a received value, cut so an error reply stays one readable line."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**40:
        # Shown by magnitude: a 300-digit pitch is not worth 300 characters.
        return f"{str(value)[:24]}... (an integer of {len(str(abs(value)))} digits)"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _beats(value: float) -> str:
    """A time in beats for a message: ``10000000``, ``4.5``, ``0.333333``."""
    return f"{value:.10g}"


def _reject_constant(name: str) -> float:
    # json.loads accepts NaN and Infinity by default; they are not JSON and not beats.
    raise ProtocolError("bad_json", f"{name} is not valid JSON")


def decode_frame(frame: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Check the size, then parse one frame as a UTF-8 JSON object.

    Raises:
        ProtocolError: ``too_large`` (checked before any parsing) or ``bad_json``.
    """
    if len(frame) > max_bytes:
        raise ProtocolError("too_large",
                            f"message is {len(frame)} bytes, the limit is {max_bytes}")
    try:
        text = frame.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ProtocolError("bad_json", f"message is not UTF-8: {err.reason}") from err
    try:
        obj = json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int)
    except json.JSONDecodeError as err:
        raise ProtocolError("bad_json", f"message is not JSON: {err.msg} at char {err.pos}") \
            from err
    except RecursionError as err:  # absurdly nested arrays, still under the size limit
        raise ProtocolError("bad_json", "message is nested too deeply") from err
    if not isinstance(obj, dict):
        raise ProtocolError("bad_json",
                            f"message must be a JSON object (received {type(obj).__name__})")
    return obj


def request_id_of(obj: Mapping[str, Any]) -> str | None:
    """The message's ``id`` when it is a valid one, so even an error reply can echo it."""
    value = obj.get("id")
    if isinstance(value, str) and 1 <= len(value) <= MAX_ID_CHARS:
        return value
    return None


def _string(obj: Mapping[str, Any], key: str, where: str = "", *, required: bool = True,
            max_chars: int = MAX_ID_CHARS) -> str | None:
    if key not in obj:
        if required:
            raise _invalid(f"field {where}{key!r} is required")
        return None
    value = obj[key]
    if not isinstance(value, str) or not 1 <= len(value) <= max_chars:
        raise _invalid(f"field {where}{key!r} must be a string of 1 to {max_chars} characters "
                       f"(received {_short(value)})")
    return value


def _number(value: Any, name: str, low: float | None = None, high: float | None = None, *,
            low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid(f"{name} must be a number (received {_short(value)})")
    # A float literal beyond 1.8e308 parses as infinity; NaN/Infinity themselves are
    # refused as bad_json when the frame is decoded.
    if isinstance(value, float) and not math.isfinite(value):
        raise _invalid(f"{name} must be a finite number (received {_short(value)})")
    # Bounds before float(): comparing an int with a float is exact in Python, while
    # float() of an int over 309 digits raises OverflowError.
    if low is not None and (value <= low if low_open else value < low):
        bound = f"above {low}" if low_open else f"at least {low}"
        raise _invalid(f"{name} must be {bound} (received {_short(value)})")
    if high is not None and value > high:
        raise _invalid(f"{name} must be at most {high} (received {_short(value)})")
    try:
        return float(value)
    except OverflowError:
        raise _invalid(f"{name} must be a number a float can hold, at most about 1.8e308 "
                       f"(received {_short(value)})") from None


def _integer(value: Any, name: str, low: int, high: int) -> int:
    # 60.0 is refused: a float pitch is a client bug worth reporting, not rounding.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"{name} must be an integer (received {_short(value)})")
    if not low <= value <= high:
        raise _invalid(f"{name} must be within {low} and {high} (received {_short(value)})")
    return value


def _object(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{name} must be an object (received {_short(value)})")
    return value


def parse_note(value: Any, index: int) -> Note:
    """One seed note ``{onset, duration, pitch, velocity}`` and an optional ``role``.

    Raises:
        ProtocolError: ``invalid``, naming ``seed[index]`` and the bad field.
    """
    where = f"seed[{index}]"
    note = _object(value, where)
    _reject_unknown(note, _NOTE_FIELDS + _NOTE_OPTIONAL, f"{where}.")
    for key in _NOTE_FIELDS:
        if key not in note:
            raise _invalid(f"field {where}.{key} is required")
    return Note(
        onset=_number(note["onset"], f"{where}.onset", 0.0, MAX_BEAT),
        duration=_number(note["duration"], f"{where}.duration", 0.0, MAX_SEED_SPAN_BEATS,
                         low_open=True),
        pitch=_integer(note["pitch"], f"{where}.pitch", 0, 127),
        velocity=_integer(note["velocity"], f"{where}.velocity", 1, 127),
        role=_role(note.get("role", ANY), f"{where}.role"),
    )


def _role(value: Any, name: str) -> str:
    if not isinstance(value, str) or value not in ROLES:
        raise _invalid(f"{name} must be one of {', '.join(ROLES)} (received {_short(value)})")
    return value


def parse_sampling(value: Any) -> SamplingParams:
    """The ``sampling`` object into ``SamplingParams`` (missing fields keep their defaults).

    Raises:
        ProtocolError: ``invalid``.
    """
    obj = _object(value, "sampling")
    _reject_unknown(obj, _SAMPLING_FIELDS, "sampling.")
    defaults = SamplingParams()
    seed = obj.get("seed")
    if seed is not None:
        seed = _integer(seed, "sampling.seed", 0, MAX_SAMPLING_SEED)
    greedy = obj.get("greedy", defaults.greedy)
    if not isinstance(greedy, bool):
        raise _invalid(f"sampling.greedy must be true or false (received {_short(greedy)})")
    return SamplingParams(
        temperature=_number(obj.get("temperature", defaults.temperature),
                            "sampling.temperature", 0.05, 5.0),
        top_k=_integer(obj.get("top_k", defaults.top_k), "sampling.top_k", 0, 1_000_000),
        top_p=_number(obj.get("top_p", defaults.top_p), "sampling.top_p", 0.0, 1.0,
                      low_open=True),
        min_p=_number(obj.get("min_p", defaults.min_p), "sampling.min_p", 0.0, 1.0),
        seed=seed,
        greedy=greedy,
    )


def parse_constraints(value: Any) -> Constraints:
    """The ``constraints`` object into ``Constraints``.

    Raises:
        ProtocolError: ``invalid``.
    """
    obj = _object(value, "constraints")
    _reject_unknown(obj, _CONSTRAINT_FIELDS, "constraints.")
    defaults = Constraints()
    pitch_min = _integer(obj.get("pitch_min", defaults.pitch_min), "constraints.pitch_min", 0, 127)
    pitch_max = _integer(obj.get("pitch_max", defaults.pitch_max), "constraints.pitch_max", 0, 127)
    if pitch_min > pitch_max:
        raise _invalid(f"constraints.pitch_min ({pitch_min}) is above "
                       f"constraints.pitch_max ({pitch_max})")
    scale = obj.get("scale")
    if scale is not None:
        if not isinstance(scale, list) or not 1 <= len(scale) <= 12:
            raise _invalid("constraints.scale must be null or a list of 1 to 12 pitch classes "
                           f"(received {_short(scale)})")
        classes = [_integer(pc, f"constraints.scale[{i}]", 0, 11) for i, pc in enumerate(scale)]
        if len(set(classes)) != len(classes):
            raise _invalid(f"constraints.scale repeats a pitch class (received {_short(scale)})")
        scale = tuple(sorted(classes))
    polyphony = obj.get("max_polyphony")
    if polyphony is not None:
        polyphony = _integer(polyphony, "constraints.max_polyphony", 1, 16)
    role = obj.get("role")
    if role is not None:
        role = _role(role, "constraints.role")
    return Constraints(pitch_min=pitch_min, pitch_max=pitch_max, scale=scale,
                       max_polyphony=polyphony, role=role)


def parse_time_signature(value: Any) -> tuple[int, int]:
    """``[numerator, denominator]``, by ``models.core.meter``'s rule.

    Raises:
        ProtocolError: ``invalid``.
    """
    if (not isinstance(value, list) or len(value) != 2
            or not is_valid_time_signature(value[0], value[1])):
        denominators = "/".join(str(d) for d in DENOMINATORS)
        raise _invalid(f"time_signature must be [numerator 1-{MAX_NUMERATOR}, denominator "
                       f"{denominators}] (received {_short(value)})")
    return value[0], value[1]


def check_window(seed: tuple[Note, ...], start_beat: float) -> None:
    """Refuse a seed spanning too many beats, or a start too far after the seed.

    Checked before anything is encoded, so a request of a few hundred bytes cannot make
    the engine encode millions of bars. Only distances are limited: a seed and start
    near beat 8000 (bar 2000 of 4/4) are as cheap as near beat 0.

    Raises:
        ProtocolError: ``invalid``, with the span or distance received and the limit.
    """
    if not seed:
        return
    first = min(note.onset for note in seed)
    end = max(note.onset + note.duration for note in seed)
    span = end - first
    if span > MAX_SEED_SPAN_BEATS:
        raise _invalid(f"seed spans {_beats(span)} beats (from its first onset at beat "
                       f"{_beats(first)} to its last note's end at beat {_beats(end)}); "
                       f"the limit is {_beats(MAX_SEED_SPAN_BEATS)} beats")
    distance = start_beat - end
    if distance > MAX_START_DISTANCE_BEATS:
        raise _invalid(f"start_beat {_beats(start_beat)} lies {_beats(distance)} beats after "
                       f"the seed's end at beat {_beats(end)}; the limit is "
                       f"{_beats(MAX_START_DISTANCE_BEATS)} beats")


def parse_generate(obj: Mapping[str, Any], max_seed_notes: int = MAX_SEED_NOTES
                   ) -> GenerateMessage:
    """The fields of a ``generate`` message (envelope already checked).

    Raises:
        ProtocolError: ``invalid``.
    """
    request_id = _string(obj, "id")
    _reject_unknown(obj, _ENVELOPE + _GENERATE_FIELDS, "")
    session = _string(obj, "session")
    style = _string(obj, "style")
    seed = obj.get("seed", [])
    if not isinstance(seed, list):
        raise _invalid(f"seed must be a list of notes (received {_short(seed)})")
    if len(seed) > max_seed_notes:
        raise _invalid(f"seed holds {len(seed)} notes, the limit is {max_seed_notes}")
    notes = tuple(parse_note(n, i) for i, n in enumerate(seed))
    if "start_beat" not in obj:
        raise _invalid("field 'start_beat' is required")
    start_beat = _number(obj["start_beat"], "start_beat", 0.0, MAX_BEAT)
    check_window(notes, start_beat)
    bars = _integer(obj.get("bars", 2), "bars", 1, MAX_BARS)
    time_signature = parse_time_signature(obj.get("time_signature", [4, 4]))
    sampling = parse_sampling(obj.get("sampling", {}))
    constraints = parse_constraints(obj.get("constraints", {}))
    request = GenerateRequest(seed=notes, start_beat=start_beat, bars=bars,
                              time_signature=time_signature, style=style or "",
                              sampling=sampling, constraints=constraints)
    return GenerateMessage(id=request_id or "", session=session or "", request=request)


def parse_request(obj: Mapping[str, Any], max_seed_notes: int = MAX_SEED_NOTES) -> Request:
    """Check the envelope (``v``, ``type``, ``id``) and the fields of one request.

    Raises:
        ProtocolError: ``bad_version``, ``unknown_type`` or ``invalid``.
    """
    version = obj.get("v")
    # Exactly an int: True == 1 and 1.0 == 1 in Python, yet neither is version 1.
    if type(version) is not int or version != PROTOCOL_VERSION:
        shown = "missing" if "v" not in obj else _short(version)
        raise ProtocolError("bad_version",
                            f"protocol version must be {PROTOCOL_VERSION} (received {shown})")
    kind = obj.get("type")
    if kind not in REQUEST_TYPES:
        shown = "missing" if "type" not in obj else _short(kind)
        hint = _did_you_mean(kind, REQUEST_TYPES) if isinstance(kind, str) else ""
        raise ProtocolError("unknown_type", f"unknown message type {shown}{hint}; "
                            f"known: {', '.join(REQUEST_TYPES)}")
    if kind == "generate":
        return parse_generate(obj, max_seed_notes)
    request_id = _string(obj, "id", required=kind == "cancel")
    if kind == "hello":
        _reject_unknown(obj, _ENVELOPE, "")
        return HelloRequest(id=request_id)
    if kind == "stats":
        _reject_unknown(obj, _ENVELOPE, "")
        return StatsRequest(id=request_id)
    if kind == "ping":
        _reject_unknown(obj, (*_ENVELOPE, "t"), "")
        t = obj.get("t")
        if t is not None:
            t = _number(t, "t")
        return PingRequest(id=request_id, t=t)
    _reject_unknown(obj, (*_ENVELOPE, "target"), "")
    target = _string(obj, "target")
    return CancelRequest(id=request_id, target=target or "")


def parse_message(frame: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES,
                  max_seed_notes: int = MAX_SEED_NOTES) -> Request:
    """Size-check, parse and validate one frame into a typed request.

    Raises:
        ProtocolError: with the code the ``error`` reply carries.
    """
    return parse_request(decode_frame(frame, max_bytes), max_seed_notes)


# --- replies -----------------------------------------------------------------------------

def _reply(kind: str, request_id: str | None, **fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": kind}
    if request_id is not None:
        message["id"] = request_id
    message.update(fields)
    return message


def hello_reply(request_id: str | None, engine_version: str,
                styles: Mapping[str, Mapping[str, Any]], limits: Mapping[str, Any]
                ) -> dict[str, Any]:
    """``hello``: the protocol, the engine's version, the loaded styles and the limits."""
    return _reply("hello", request_id, protocol=PROTOCOL_VERSION, engine=engine_version,
                  styles={name: dict(facts) for name, facts in styles.items()},
                  limits=dict(limits))


def pong_reply(request_id: str | None, t: float | None) -> dict[str, Any]:
    """``pong``: ``t`` echoed (``null`` when the ping had none)."""
    return _reply("pong", request_id, t=t)


def stats_reply(request_id: str | None, stats: Mapping[str, Any]) -> dict[str, Any]:
    """``stats``: the engine's counters."""
    return _reply("stats", request_id, **stats)


def notes_reply(request_id: str, notes: Iterable[Note]) -> dict[str, Any]:
    """``notes``: completed notes of a running ``generate``."""
    return _reply("notes", request_id, notes=[note.to_json() for note in notes])


def done_reply(request_id: str, reason: str, *, notes: int, tokens: int, prefill_tokens: int,
               reused_tokens: int, elapsed_ms: float) -> dict[str, Any]:
    """``done``: the end of a ``generate`` stream, with its counters."""
    if reason not in DONE_REASONS:
        raise ValueError(f"unknown done reason {reason!r}")
    return _reply("done", request_id, reason=reason, notes=notes, tokens=tokens,
                  prefill_tokens=prefill_tokens, reused_tokens=reused_tokens,
                  elapsed_ms=round(elapsed_ms, 3))


def error_reply(request_id: str | None, code: str, message: str) -> dict[str, Any]:
    """``error``: a machine code and one human line."""
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}")
    return _reply("error", request_id, code=code, message=message)


def encode_reply(message: Mapping[str, Any]) -> bytes:
    """One reply as a compact UTF-8 JSON frame."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode("utf-8")
