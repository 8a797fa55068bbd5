"""The checks of every protocol field: a JSON value in, a typed value out, or ``invalid``.

Each check raises ``ProtocolError("invalid", message)`` whose message names the field and
shows the value received (cut to a readable length). ``models.core.protocol.parse`` builds
messages from them; ``models.core.settings`` runs the ``sampling`` and ``constraints``
checks on ``[sampling]``, so a config the engine would refuse is refused at start.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any

from models.core.exceptions import ProtocolError
from models.core.meter import DENOMINATORS, MAX_NUMERATOR, TimeSignature, is_valid_time_signature
from models.core.notes import ANY, ROLES, Note
from models.core.protocol.limits import (
    BPM_RANGE,
    MAX_BEAT,
    MAX_CANDIDATES,
    MAX_CHORD_HINTS,
    MAX_ID_CHARS,
    MAX_POLYPHONY,
    MAX_READY_MS,
    MAX_SAMPLING_SEED,
    MAX_SEED_SPAN_BEATS,
    MAX_START_DISTANCE_BEATS,
    MAX_TOP_K,
    MORPH_AMOUNT_RANGE,
    TEMPERATURE_RANGE,
)
from models.core.protocol.messages import (
    Candidates,
    ChordHint,
    Constraints,
    Morph,
    SamplingParams,
    Steering,
)
from models.core.tonality import parse_key

SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "seed", "greedy")
CONSTRAINT_FIELDS = ("pitch_min", "pitch_max", "scale", "max_polyphony", "role")
STEERING_FIELDS = ("key", "key_strength", "register_center", "register_width",
                   "register_strength", "notes_per_bar", "density_strength", "min_notes",
                   "chords", "chord_strength")
CHORD_FIELDS = ("beat", "pitch_classes")
CANDIDATE_FIELDS = ("n", "bpm", "ready_ms")
MORPH_FIELDS = ("style", "amount")
MAX_STEERING_STRENGTH = 20.0
MAX_MIN_NOTES = 32
NOTE_FIELDS = ("onset", "duration", "pitch", "velocity")
# Optional in a note: its role (a style with role tokens encodes it; others ignore it).
NOTE_OPTIONAL = ("role",)


class HugeInteger:
    """An integer literal of more than ``MAX_INT_DIGITS`` digits, kept unconverted.

    ``wire.decode_frame`` puts one in place of such a literal, so the message still parses
    (its ``id`` can be echoed) and the field that holds it is refused by name: it is neither
    an ``int`` nor a ``float``, so every type check refuses it as ``invalid``.
    """

    __slots__ = ("digits", "text")

    def __init__(self, text: str) -> None:
        self.text = text[:24]
        self.digits = len(text.lstrip("-"))

    def __repr__(self) -> str:
        return f"{self.text}... (an integer of {self.digits} digits)"


def invalid(message: str) -> ProtocolError:
    """The error of a field that is missing, unknown, of the wrong type or out of range."""
    return ProtocolError("invalid", message)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for a near miss of one of ``known``, else ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def reject_unknown(obj: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    """Refuse a field not in ``known``; ``where`` prefixes its name (``"sampling."``).

    Unknown fields are refused rather than ignored: a typo such as ``temprature`` would
    otherwise silently fall back to the default.
    """
    for key in obj:
        if key not in known:
            raise invalid(f"unknown field {where}{key!r}{did_you_mean(key, known)}")


def short(value: Any) -> str:
    """``repr`` of a received value, cut so an error reply stays one readable line."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**40:
        # Shown by magnitude: a 300-digit pitch is not worth 300 characters.
        return f"{str(value)[:24]}... (an integer of {len(str(abs(value)))} digits)"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _beats(value: float) -> str:
    """A time in beats for a message: ``10000000``, ``4.5``, ``0.333333``."""
    return f"{value:.10g}"


def message_id(obj: Mapping[str, Any]) -> str | None:
    """The message's ``id`` when it is a valid one, so even an error reply can echo it."""
    value = obj.get("id")
    if isinstance(value, str) and 1 <= len(value) <= MAX_ID_CHARS:
        return value
    return None


def string(obj: Mapping[str, Any], key: str, where: str = "", *, required: bool = True,
           max_chars: int = MAX_ID_CHARS) -> str | None:
    """A string field of 1 to ``max_chars`` characters (``None`` when absent and optional)."""
    if key not in obj:
        if required:
            raise invalid(f"field {where}{key!r} is required")
        return None
    value = obj[key]
    if not isinstance(value, str) or not 1 <= len(value) <= max_chars:
        raise invalid(f"field {where}{key!r} must be a string of 1 to {max_chars} characters "
                      f"(received {short(value)})")
    return value


def number(value: Any, name: str, low: float | None = None, high: float | None = None, *,
           low_open: bool = False) -> float:
    """A finite JSON number within ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(f"{name} must be a number (received {short(value)})")
    # A float literal beyond 1.8e308 parses as infinity; NaN/Infinity themselves are
    # refused as bad_json when the frame is decoded.
    if isinstance(value, float) and not math.isfinite(value):
        raise invalid(f"{name} must be a finite number (received {short(value)})")
    # Bounds before float(): comparing an int with a float is exact in Python, while
    # float() of an int over 309 digits raises OverflowError.
    if low is not None and (value <= low if low_open else value < low):
        bound = f"above {low}" if low_open else f"at least {low}"
        raise invalid(f"{name} must be {bound} (received {short(value)})")
    if high is not None and value > high:
        raise invalid(f"{name} must be at most {high} (received {short(value)})")
    try:
        return float(value)
    except OverflowError:
        raise invalid(f"{name} must be a number a float can hold, at most about 1.8e308 "
                      f"(received {short(value)})") from None


def integer(value: Any, name: str, low: int, high: int) -> int:
    """A JSON integer within ``[low, high]``; floats (``60.0``) and booleans are refused."""
    # 60.0 is refused: a float pitch is a client bug worth reporting, not rounding.
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{name} must be an integer (received {short(value)})")
    if not low <= value <= high:
        raise invalid(f"{name} must be within {low} and {high} (received {short(value)})")
    return value


def json_object(value: Any, name: str) -> Mapping[str, Any]:
    """A JSON object."""
    if not isinstance(value, dict):
        raise invalid(f"{name} must be an object (received {short(value)})")
    return value


def role(value: Any, name: str) -> str:
    """One of ``ROLES``."""
    if not isinstance(value, str) or value not in ROLES:
        raise invalid(f"{name} must be one of {', '.join(ROLES)} (received {short(value)})")
    return value


def note(value: Any, where: str, *, strict: bool = True) -> Note:
    """One note ``{onset, duration, pitch, velocity}`` and an optional ``role``.

    Args:
        value: the JSON value.
        where: its name in messages (``seed[3]``).
        strict: a request's note (the engine's rules: unknown fields refused, onset and
            duration within the seed limits). A reply's note (``strict=False``) may carry
            fields this client does not know, and its times only need to be finite.

    Raises:
        ProtocolError: ``invalid``, naming ``where`` and the bad field.
    """
    obj = json_object(value, where)
    if strict:
        reject_unknown(obj, NOTE_FIELDS + NOTE_OPTIONAL, f"{where}.")
    for key in NOTE_FIELDS:
        if key not in obj:
            raise invalid(f"field {where}.{key} is required")
    return Note(
        onset=number(obj["onset"], f"{where}.onset", 0.0, MAX_BEAT if strict else None),
        duration=number(obj["duration"], f"{where}.duration", 0.0,
                        MAX_SEED_SPAN_BEATS if strict else None, low_open=True),
        pitch=integer(obj["pitch"], f"{where}.pitch", 0, 127),
        velocity=integer(obj["velocity"], f"{where}.velocity", 1, 127),
        role=role(obj.get("role", ANY), f"{where}.role"),
    )


def sampling(value: Any) -> SamplingParams:
    """The ``sampling`` object into ``SamplingParams`` (missing fields keep their defaults).

    Raises:
        ProtocolError: ``invalid``.
    """
    obj = json_object(value, "sampling")
    reject_unknown(obj, SAMPLING_FIELDS, "sampling.")
    defaults = SamplingParams()
    seed = obj.get("seed")
    if seed is not None:
        seed = integer(seed, "sampling.seed", 0, MAX_SAMPLING_SEED)
    greedy = obj.get("greedy", defaults.greedy)
    if not isinstance(greedy, bool):
        raise invalid(f"sampling.greedy must be true or false (received {short(greedy)})")
    return SamplingParams(
        temperature=number(obj.get("temperature", defaults.temperature),
                           "sampling.temperature", *TEMPERATURE_RANGE),
        top_k=integer(obj.get("top_k", defaults.top_k), "sampling.top_k", 0, MAX_TOP_K),
        top_p=number(obj.get("top_p", defaults.top_p), "sampling.top_p", 0.0, 1.0,
                     low_open=True),
        min_p=number(obj.get("min_p", defaults.min_p), "sampling.min_p", 0.0, 1.0),
        seed=seed,
        greedy=greedy,
    )


def constraints(value: Any) -> Constraints:
    """The ``constraints`` object into ``Constraints``.

    Raises:
        ProtocolError: ``invalid``.
    """
    obj = json_object(value, "constraints")
    reject_unknown(obj, CONSTRAINT_FIELDS, "constraints.")
    defaults = Constraints()
    pitch_min = integer(obj.get("pitch_min", defaults.pitch_min), "constraints.pitch_min", 0, 127)
    pitch_max = integer(obj.get("pitch_max", defaults.pitch_max), "constraints.pitch_max", 0, 127)
    if pitch_min > pitch_max:
        raise invalid(f"constraints.pitch_min ({pitch_min}) is above "
                      f"constraints.pitch_max ({pitch_max})")
    scale = obj.get("scale")
    if scale is not None:
        if not isinstance(scale, list) or not 1 <= len(scale) <= 12:
            raise invalid("constraints.scale must be null or a list of 1 to 12 pitch classes "
                          f"(received {short(scale)})")
        classes = [integer(pc, f"constraints.scale[{i}]", 0, 11) for i, pc in enumerate(scale)]
        if len(set(classes)) != len(classes):
            raise invalid(f"constraints.scale repeats a pitch class (received {short(scale)})")
        scale = tuple(sorted(classes))
    polyphony = obj.get("max_polyphony")
    if polyphony is not None:
        polyphony = integer(polyphony, "constraints.max_polyphony", 1, MAX_POLYPHONY)
    wanted = obj.get("role")
    if wanted is not None:
        wanted = role(wanted, "constraints.role")
    return Constraints(pitch_min=pitch_min, pitch_max=pitch_max, scale=scale,
                       max_polyphony=polyphony, role=wanted)


def steering(value: Any) -> Steering:
    """The ``steering`` object into ``Steering`` (missing fields keep their defaults: off).

    Raises:
        ProtocolError: ``invalid``.
    """
    obj = json_object(value, "steering")
    reject_unknown(obj, STEERING_FIELDS, "steering.")
    defaults = Steering()
    key = obj.get("key")
    if key is not None:
        if not isinstance(key, str):
            raise invalid(f"steering.key must be a key such as 'A minor' or null "
                          f"(received {short(key)})")
        try:
            key = parse_key(key)
        except ValueError as err:
            raise invalid(f"steering.key: {err}") from None

    def strength(name: str) -> float:
        return number(obj.get(name, getattr(defaults, name)), f"steering.{name}", 0.0,
                      MAX_STEERING_STRENGTH)

    center = obj.get("register_center")
    if center is not None:
        center = number(center, "steering.register_center", 0.0, 127.0)
    per_bar = obj.get("notes_per_bar")
    if per_bar is not None:
        per_bar = number(per_bar, "steering.notes_per_bar", 0.0, 256.0)
    return Steering(
        chords=chord_hints(obj.get("chords", [])), chord_strength=strength("chord_strength"),
        key=key, key_strength=strength("key_strength"), register_center=center,
        register_width=number(obj.get("register_width", defaults.register_width),
                              "steering.register_width", 0.0, 127.0),
        register_strength=strength("register_strength"), notes_per_bar=per_bar,
        density_strength=strength("density_strength"),
        min_notes=integer(obj.get("min_notes", defaults.min_notes), "steering.min_notes", 0,
                          MAX_MIN_NOTES))


def chord_hints(value: Any) -> tuple[ChordHint, ...]:
    """``steering.chords``: a list of ``{beat, pitch_classes}`` by ascending beat.

    Raises:
        ProtocolError: ``invalid``.
    """
    if not isinstance(value, list):
        raise invalid(f"steering.chords must be a list of {{beat, pitch_classes}} "
                      f"(received {short(value)})")
    if len(value) > MAX_CHORD_HINTS:
        raise invalid(f"steering.chords holds at most {MAX_CHORD_HINTS} hints "
                      f"(received {len(value)})")
    hints = []
    for index, item in enumerate(value):
        where = f"steering.chords[{index}]"
        obj = json_object(item, where)
        reject_unknown(obj, CHORD_FIELDS, f"{where}.")
        if "beat" not in obj or "pitch_classes" not in obj:
            raise invalid(f"{where} needs beat and pitch_classes")
        beat = number(obj["beat"], f"{where}.beat", 0.0, MAX_BEAT)
        if hints and beat <= hints[-1].beat:
            raise invalid(f"{where}.beat must be after the previous hint's "
                          f"({_beats(hints[-1].beat)}; received {_beats(beat)})")
        classes = obj["pitch_classes"]
        if not isinstance(classes, list) or len(classes) > 12:
            raise invalid(f"{where}.pitch_classes must be a list of at most 12 pitch "
                          f"classes 0-11 (received {short(classes)})")
        values = sorted({integer(c, f"{where}.pitch_classes", 0, 11) for c in classes})
        hints.append(ChordHint(beat, tuple(values)))
    return tuple(hints)


def morph(value: Any) -> Morph:
    """The ``morph`` object into ``Morph``.

    Raises:
        ProtocolError: ``invalid``.
    """
    obj = json_object(value, "morph")
    reject_unknown(obj, MORPH_FIELDS, "morph.")
    name = string(obj, "style", "morph.")
    if not name:
        raise invalid("morph.style must name a style")
    return Morph(name, number(obj.get("amount"), "morph.amount", MORPH_AMOUNT_RANGE[0],
                              MORPH_AMOUNT_RANGE[1]))


def candidates(value: Any) -> Candidates:
    """The ``candidates`` object into ``Candidates`` (missing fields: one candidate, no
    deadline).

    Raises:
        ProtocolError: ``invalid`` (e.g. ``n`` above ``MAX_CANDIDATES``).
    """
    obj = json_object(value, "candidates")
    reject_unknown(obj, CANDIDATE_FIELDS, "candidates.")
    bpm = obj.get("bpm")
    if bpm is not None:
        bpm = number(bpm, "candidates.bpm", *BPM_RANGE)
    ready = obj.get("ready_ms")
    if ready is not None:
        ready = number(ready, "candidates.ready_ms", 0.0, MAX_READY_MS)
    return Candidates(n=integer(obj.get("n", 1), "candidates.n", 1, MAX_CANDIDATES),
                      bpm=bpm, ready_ms=ready)


def time_signature(value: Any) -> TimeSignature:
    """``[numerator, denominator]``, by ``models.core.meter``'s rule.

    Raises:
        ProtocolError: ``invalid``.
    """
    if (not isinstance(value, list) or len(value) != 2
            or not is_valid_time_signature(value[0], value[1])):
        denominators = "/".join(str(d) for d in DENOMINATORS)
        raise invalid(f"time_signature must be [numerator 1-{MAX_NUMERATOR}, denominator "
                      f"{denominators}] (received {short(value)})")
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
    first = min(n.onset for n in seed)
    end = max(n.onset + n.duration for n in seed)
    span = end - first
    if span > MAX_SEED_SPAN_BEATS:
        raise invalid(f"seed spans {_beats(span)} beats (from its first onset at beat "
                      f"{_beats(first)} to its last note's end at beat {_beats(end)}); "
                      f"the limit is {_beats(MAX_SEED_SPAN_BEATS)} beats")
    distance = start_beat - end
    if distance > MAX_START_DISTANCE_BEATS:
        raise invalid(f"start_beat {_beats(start_beat)} lies {_beats(distance)} beats after "
                      f"the seed's end at beat {_beats(end)}; the limit is "
                      f"{_beats(MAX_START_DISTANCE_BEATS)} beats")
