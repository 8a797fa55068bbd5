"""JSON objects into typed messages: requests as the engine reads them, replies as a
client reads them.

A request is read strictly: unknown fields are refused at every level, so a typo never
falls back to a default. A reply is read as a client of this version needs it: its fields
are checked, fields it does not know are ignored (docs/protocol.md: "clients ignore fields
they do not know"). Every refusal is a ``ProtocolError`` with the code an ``error`` reply
carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models.core.exceptions import ProtocolError
from models.core.protocol import fields
from models.core.protocol.fields import invalid, short
from models.core.protocol.limits import (
    DONE_REASONS,
    ERROR_CODES,
    MAX_BARS,
    MAX_BEAT,
    MAX_SEED_NOTES,
    PROTOCOL_VERSION,
    REPLY_TYPES,
    REQUEST_TYPES,
)
from models.core.protocol.messages import (
    CancelRequest,
    DoneReply,
    ErrorReply,
    GenerateMessage,
    GenerateRequest,
    HelloReply,
    HelloRequest,
    Limits,
    NotesReply,
    PingRequest,
    PongReply,
    Reply,
    Request,
    StatsReply,
    StatsRequest,
)

_ENVELOPE = ("v", "type", "id")
_GENERATE_FIELDS = ("session", "style", "seed", "time_signature", "start_beat", "bars",
                    "sampling", "constraints", "steering", "candidates", "morph")
# No counter is anywhere near this; it only keeps a reply's ints within reason.
_MAX_COUNT = 2**63 - 1


def _check_envelope(obj: Mapping[str, Any], known: tuple[str, ...], what: str) -> str:
    """Check ``v`` then ``type``; returns the type.

    Raises:
        ProtocolError: ``bad_version`` or ``unknown_type``.
    """
    version = obj.get("v")
    # Exactly an int: True == 1 and 1.0 == 1 in Python, yet neither is version 1.
    if type(version) is not int or version != PROTOCOL_VERSION:
        shown = "missing" if "v" not in obj else short(version)
        raise ProtocolError("bad_version",
                            f"protocol version must be {PROTOCOL_VERSION} (received {shown})")
    kind = obj.get("type")
    if kind not in known:
        shown = "missing" if "type" not in obj else short(kind)
        hint = fields.did_you_mean(kind, known) if isinstance(kind, str) else ""
        raise ProtocolError("unknown_type", f"unknown {what} type {shown}{hint}; "
                            f"known: {', '.join(known)}")
    return kind


# --- requests ----------------------------------------------------------------------------

def parse_generate(obj: Mapping[str, Any], max_seed_notes: int = MAX_SEED_NOTES
                   ) -> GenerateMessage:
    """The fields of a ``generate`` message (envelope already checked).

    Raises:
        ProtocolError: ``invalid``.
    """
    request_id = fields.string(obj, "id")
    fields.reject_unknown(obj, _ENVELOPE + _GENERATE_FIELDS, "")
    session = fields.string(obj, "session")
    style = fields.string(obj, "style")
    seed = obj.get("seed", [])
    if not isinstance(seed, list):
        raise invalid(f"seed must be a list of notes (received {short(seed)})")
    if len(seed) > max_seed_notes:
        raise invalid(f"seed holds {len(seed)} notes, the limit is {max_seed_notes}")
    notes = tuple(fields.note(n, f"seed[{i}]") for i, n in enumerate(seed))
    if "start_beat" not in obj:
        raise invalid("field 'start_beat' is required")
    start_beat = fields.number(obj["start_beat"], "start_beat", 0.0, MAX_BEAT)
    fields.check_window(notes, start_beat)
    bars = fields.integer(obj.get("bars", 2), "bars", 1, MAX_BARS)
    time_signature = fields.time_signature(obj.get("time_signature", [4, 4]))
    sampling = fields.sampling(obj.get("sampling", {}))
    constraints = fields.constraints(obj.get("constraints", {}))
    steering = fields.steering(obj.get("steering", {}))
    candidates = fields.candidates(obj.get("candidates", {}))
    morph = None if obj.get("morph") is None else fields.morph(obj["morph"])
    request = GenerateRequest(seed=notes, start_beat=start_beat, bars=bars,
                              time_signature=time_signature, style=style or "",
                              sampling=sampling, constraints=constraints, steering=steering,
                              candidates=candidates, morph=morph)
    return GenerateMessage(id=request_id or "", session=session or "", request=request)


def parse_request(obj: Mapping[str, Any], max_seed_notes: int = MAX_SEED_NOTES) -> Request:
    """Check the envelope (``v``, ``type``, ``id``) and the fields of one request.

    Raises:
        ProtocolError: ``bad_version``, ``unknown_type`` or ``invalid``.
    """
    kind = _check_envelope(obj, REQUEST_TYPES, "message")
    if kind == "generate":
        return parse_generate(obj, max_seed_notes)
    request_id = fields.string(obj, "id", required=kind == "cancel")
    if kind == "hello":
        fields.reject_unknown(obj, _ENVELOPE, "")
        return HelloRequest(id=request_id)
    if kind == "stats":
        fields.reject_unknown(obj, _ENVELOPE, "")
        return StatsRequest(id=request_id)
    if kind == "ping":
        fields.reject_unknown(obj, (*_ENVELOPE, "t"), "")
        t = obj.get("t")
        if t is not None:
            t = fields.number(t, "t")
        return PingRequest(id=request_id, t=t)
    fields.reject_unknown(obj, (*_ENVELOPE, "target"), "")
    target = fields.string(obj, "target")
    return CancelRequest(id=request_id, target=target or "")


# --- replies -----------------------------------------------------------------------------

def _required(obj: Mapping[str, Any], key: str) -> Any:
    if key not in obj:
        raise invalid(f"field {key!r} is required")
    return obj[key]


def _count(obj: Mapping[str, Any], key: str, where: str = "") -> int:
    return fields.integer(_required(obj, key), f"{where}{key}", 0, _MAX_COUNT)


def _text(obj: Mapping[str, Any], key: str) -> str:
    value = _required(obj, key)
    if not isinstance(value, str):
        raise invalid(f"{key} must be a string (received {short(value)})")
    return value


def _limits(value: Any) -> Limits:
    obj = fields.json_object(value, "limits")
    where = "limits."
    return Limits(
        max_message_bytes=_count(obj, "max_message_bytes", where),
        max_seed_notes=_count(obj, "max_seed_notes", where),
        max_active=_count(obj, "max_active", where),
        max_bars=_count(obj, "max_bars", where),
        max_seed_span_beats=fields.number(_required(obj, "max_seed_span_beats"),
                                          "limits.max_seed_span_beats", 0.0),
        max_start_distance_beats=fields.number(_required(obj, "max_start_distance_beats"),
                                               "limits.max_start_distance_beats", 0.0),
        session_idle_s=fields.number(_required(obj, "session_idle_s"),
                                     "limits.session_idle_s", 0.0))


def _objects(value: Any, name: str) -> dict[str, dict[str, Any]]:
    """An object whose values are objects (``styles``)."""
    obj = fields.json_object(value, name)
    for key, item in obj.items():
        fields.json_object(item, f"{name}.{key}")
    return {key: dict(item) for key, item in obj.items()}


def parse_reply(obj: Mapping[str, Any]) -> Reply:
    """Check the envelope and the fields of one reply.

    Raises:
        ProtocolError: ``bad_version``, ``unknown_type`` or ``invalid``.
    """
    kind = _check_envelope(obj, REPLY_TYPES, "reply")
    if kind in ("notes", "done"):
        reply_id = fields.string(obj, "id")
    else:
        reply_id = fields.string(obj, "id", required=False)
    if kind == "notes":
        notes = _required(obj, "notes")
        if not isinstance(notes, list):
            raise invalid(f"notes must be a list of notes (received {short(notes)})")
        return NotesReply(id=reply_id or "", notes=tuple(
            fields.note(n, f"notes[{i}]", strict=False) for i, n in enumerate(notes)))
    if kind == "done":
        reason = _required(obj, "reason")
        if reason not in DONE_REASONS:
            raise invalid(f"reason must be one of {', '.join(DONE_REASONS)} "
                          f"(received {short(reason)})")
        return DoneReply(id=reply_id or "", reason=reason, notes=_count(obj, "notes"),
                         tokens=_count(obj, "tokens"),
                         prefill_tokens=_count(obj, "prefill_tokens"),
                         reused_tokens=_count(obj, "reused_tokens"),
                         elapsed_ms=fields.number(_required(obj, "elapsed_ms"), "elapsed_ms",
                                                  0.0))
    if kind == "error":
        code = _required(obj, "code")
        if code not in ERROR_CODES:
            raise invalid(f"code must be one of {', '.join(ERROR_CODES)} "
                          f"(received {short(code)})")
        return ErrorReply(id=reply_id, code=code, message=_text(obj, "message"))
    if kind == "pong":
        t = obj.get("t")
        return PongReply(id=reply_id, t=None if t is None else fields.number(t, "t"))
    if kind == "hello":
        return HelloReply(id=reply_id, protocol=fields.integer(
            _required(obj, "protocol"), "protocol", PROTOCOL_VERSION, PROTOCOL_VERSION),
            engine=_text(obj, "engine"), styles=_objects(_required(obj, "styles"), "styles"),
            limits=_limits(_required(obj, "limits")))
    return StatsReply(
        id=reply_id, sessions=_count(obj, "sessions"), clients=_count(obj, "clients"),
        active=_count(obj, "active"), requests=_count(obj, "requests"),
        errors=_count(obj, "errors"), tokens_generated=_count(obj, "tokens_generated"),
        uptime_s=fields.number(_required(obj, "uptime_s"), "uptime_s", 0.0),
        styles=_objects(_required(obj, "styles"), "styles"))
