"""Every protocol message as a frozen dataclass, and its JSON form (``to_json``).

Requests go from a client (the bridge, a tool) to the engine; replies come back. Each
message has one JSON form, written by its ``to_json`` and read back by
``models.core.protocol.parse``; ``models.core.protocol.wire.encode`` turns either into a
frame, and refuses a request the engine's parser would refuse.

``GenerateRequest`` (with ``SamplingParams`` and ``Constraints``) is what a generation asks
for, however it arrived (zmq or an offline tool); ``engine.decoder`` consumes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from models.core.meter import TimeSignature, bar_length
from models.core.notes import Note
from models.core.protocol.limits import (
    DONE_REASONS,
    ERROR_CODES,
    MAX_ACTIVE,
    MAX_BARS,
    MAX_MESSAGE_BYTES,
    MAX_SEED_NOTES,
    MAX_SEED_SPAN_BEATS,
    MAX_START_DISTANCE_BEATS,
    PROTOCOL_VERSION,
    SESSION_IDLE_S,
)
from models.core.tonality import Key


def _envelope(kind: str, message_id: str | None, **fields: Any) -> dict[str, Any]:
    """``{"v": 1, "type": kind, "id": ...}`` (``id`` only when there is one) and ``fields``."""
    message: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": kind}
    if message_id is not None:
        message["id"] = message_id
    message.update(fields)
    return message


# --- what a generation asks for ----------------------------------------------------------

@dataclass(frozen=True)
class SamplingParams:
    """How the next token is drawn from the logits.

    Attributes:
        temperature: logits are divided by it before softmax (lower = more predictable).
        top_k: keep the k most likely tokens (0 = off).
        top_p: keep the smallest set whose probability reaches p (1.0 = off).
        min_p: drop tokens less likely than ``min_p`` times the most likely (0 = off).
        seed: seed of the sampler's random generator; ``None`` draws a fresh one.
        greedy: take the most likely token (ignores the other fields); for tests and parity.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    greedy: bool = False

    def to_json(self) -> dict[str, Any]:
        """The ``sampling`` object."""
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "min_p": self.min_p, "seed": self.seed, "greedy": self.greedy}


@dataclass(frozen=True)
class Constraints:
    """Musical limits the bridge can ask for; enforced by masking logits.

    Attributes:
        pitch_min: lowest pitch allowed.
        pitch_max: highest pitch allowed.
        scale: pitch classes (0 = C) allowed, or ``None`` for all twelve.
        max_polyphony: most notes sounding at once, or ``None`` for no limit.
        role: generate only notes of this role (``lead``, ``accompaniment``, ``any``), or
            ``None`` for any mix; needs a model whose vocabulary has role tokens.
    """

    pitch_min: int = 21
    pitch_max: int = 108
    scale: tuple[int, ...] | None = None
    max_polyphony: int | None = None
    role: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``constraints`` object (``role`` only when one is asked for, as a ``Note``
        names its role only when it has one)."""
        data: dict[str, Any] = {
            "pitch_min": self.pitch_min, "pitch_max": self.pitch_max,
            "scale": None if self.scale is None else list(self.scale),
            "max_polyphony": self.max_polyphony}
        if self.role is not None:
            data["role"] = self.role
        return data


@dataclass(frozen=True)
class ChordHint:
    """A chord the answer should sound from ``beat`` on (until the next hint).

    Attributes:
        beat: where the chord starts, on the request's timeline.
        pitch_classes: its tones (0 = C), sorted; empty: no chord (no bias from here).
    """

    beat: float
    pitch_classes: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        """The hint as an object of ``steering.chords``."""
        return {"beat": self.beat, "pitch_classes": list(self.pitch_classes)}


@dataclass(frozen=True)
class Steering:
    """Soft biases that make an answer follow the call (``engine.steering``); all off by
    default, so a request without them samples the model as it is.

    Attributes:
        key: lean pitches towards this key (``None``: no key bias).
        key_strength: logit weight of the key profile (0 = off).
        register_center: the call's mean pitch (``None``: no register bias).
        register_width: semitones around the centre without any penalty.
        register_strength: logit penalty per octave beyond the width (0 = off).
        notes_per_bar: the call's notes per bar (``None``: no density bias).
        density_strength: logit bias of moving on to the next bar, at full gap (0 = off).
        min_notes: a bar may not end before it holds this many notes (0 = no floor).
        chords: chord hints by beat (ascending): pitches outside the chord sounding at a
            note's onset lose ``chord_strength`` (none before the first hint).
        chord_strength: logit penalty of a pitch outside the hinted chord (0 = off).
    """

    key: Key | None = None
    key_strength: float = 0.0
    register_center: float | None = None
    register_width: float = 12.0
    register_strength: float = 0.0
    notes_per_bar: float | None = None
    density_strength: float = 0.0
    min_notes: int = 0
    chords: tuple[ChordHint, ...] = ()
    chord_strength: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The ``steering`` object."""
        return {"key": None if self.key is None else self.key.name,
                "key_strength": self.key_strength, "register_center": self.register_center,
                "register_width": self.register_width,
                "register_strength": self.register_strength,
                "notes_per_bar": self.notes_per_bar,
                "density_strength": self.density_strength, "min_notes": self.min_notes,
                "chords": [hint.to_json() for hint in self.chords],
                "chord_strength": self.chord_strength}


@dataclass(frozen=True)
class Candidates:
    """Best-of-N (``engine.critic``): decode ``n`` candidates of each bar in one batch and
    keep the one the critic prefers; fewer when the bar's deadline is near.

    Attributes:
        n: candidates per bar (1 = plain sampling, token for token as without this field).
        bpm: the tempo the answer plays at; with ``ready_ms`` it gives each bar's deadline.
        ready_ms: milliseconds after the request arrives by which the notes from
            ``start_beat`` on are wanted (the client's time to ``start_beat`` less the lead
            it wants, e.g. one beat); bar ``k``'s deadline is later by the time from
            ``start_beat`` to that bar at ``bpm``. ``None`` (or no ``bpm``): no deadline,
            ``n`` never shrinks (offline tools).
    """

    n: int = 1
    bpm: float | None = None
    ready_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``candidates`` object."""
        return {"n": self.n, "bpm": self.bpm, "ready_ms": self.ready_ms}


@dataclass(frozen=True)
class Morph:
    """A second style whose next-token distribution is blended with the request's.

    The engine runs the answer's tokens under both style prompts (one more row of the
    batch) and samples from the weighted geometric mean of the two distributions:
    ``(1 - amount) * log p(style) + amount * log p(morph style)``.

    Attributes:
        style: the other style (a style token of the same model).
        amount: 0 = the request's style only, 1 = the other style only; below 0 the
            distribution moves away from the other style (with the model's unconditioned
            style, "any": classifier-free guidance, the request's style made stronger).
    """

    style: str
    amount: float

    def to_json(self) -> dict[str, Any]:
        """The ``morph`` object."""
        return {"style": self.style, "amount": self.amount}


@dataclass(frozen=True)
class GenerateRequest:
    """One response to generate.

    Attributes:
        seed: the player's recent notes on the caller's beat timeline.
        start_beat: where the response starts on that timeline.
        bars: the response ends at the start of bar ``bar_of(start_beat) + bars``.
        time_signature: ``(numerator, denominator)``; bar ``k`` starts at ``k * bar_length``.
        style: which loaded model answers.
        sampling: how tokens are drawn.
        constraints: musical limits.
        steering: soft biases towards the call's key, register and density.
        candidates: best-of-N per bar and the deadlines that bound N.
        morph: a second style blended in (``None``: the request's style alone).
    """

    seed: tuple[Note, ...]
    start_beat: float
    bars: int = 2
    time_signature: TimeSignature = (4, 4)
    style: str = ""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    constraints: Constraints = field(default_factory=Constraints)
    steering: Steering = field(default_factory=Steering)
    candidates: Candidates = field(default_factory=Candidates)
    morph: Morph | None = None

    @property
    def bar_length(self) -> float:
        """Length of one bar in quarter-note beats."""
        return bar_length(self.time_signature)


# --- requests (client -> engine) ---------------------------------------------------------

@dataclass(frozen=True)
class HelloRequest:
    """Ask which styles the engine serves and its limits."""

    TYPE: ClassVar[str] = "hello"
    id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The message as a JSON object."""
        return _envelope(self.TYPE, self.id)


@dataclass(frozen=True)
class PingRequest:
    """Liveness check; ``t`` is echoed untouched in the ``pong``."""

    TYPE: ClassVar[str] = "ping"
    id: str | None = None
    t: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The message as a JSON object."""
        return _envelope(self.TYPE, self.id, t=self.t)


@dataclass(frozen=True)
class StatsRequest:
    """Ask for the engine's counters."""

    TYPE: ClassVar[str] = "stats"
    id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The message as a JSON object."""
        return _envelope(self.TYPE, self.id)


@dataclass(frozen=True)
class GenerateMessage:
    """A ``generate`` request: who asks (``id`` names the stream, ``session`` the jam whose
    cache it uses) and what (``request``)."""

    TYPE: ClassVar[str] = "generate"
    id: str
    session: str
    request: GenerateRequest

    def to_json(self) -> dict[str, Any]:
        """The message as a JSON object."""
        request = self.request
        return _envelope(
            self.TYPE, self.id, session=self.session, style=request.style,
            seed=[note.to_json() for note in request.seed],
            time_signature=list(request.time_signature), start_beat=request.start_beat,
            bars=request.bars, sampling=request.sampling.to_json(),
            constraints=request.constraints.to_json(),
            **({} if request.steering == Steering() else
               {"steering": request.steering.to_json()}),
            **({} if request.candidates == Candidates() else
               {"candidates": request.candidates.to_json()}),
            **({} if request.morph is None else {"morph": request.morph.to_json()}))


@dataclass(frozen=True)
class CancelRequest:
    """Stop the running ``generate`` whose id is ``target``."""

    TYPE: ClassVar[str] = "cancel"
    target: str
    id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The message as a JSON object."""
        return _envelope(self.TYPE, self.id, target=self.target)


Request = HelloRequest | PingRequest | StatsRequest | GenerateMessage | CancelRequest
REQUEST_CLASSES: tuple[type, ...] = (HelloRequest, PingRequest, StatsRequest, GenerateMessage,
                                     CancelRequest)


# --- replies (engine -> client) ----------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """The limits an engine enforces, as its ``hello`` reports them.

    Attributes:
        max_message_bytes: largest request frame (``too_large`` above it).
        max_seed_notes: most notes in a seed.
        max_active: most generations running at once over all clients (``busy`` above).
        max_bars: most bars one ``generate`` asks for.
        max_seed_span_beats: from a seed's first onset to its last note's end.
        max_start_distance_beats: from the seed's end to ``start_beat``.
        session_idle_s: a session unused this long loses its cache.
    """

    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_seed_notes: int = MAX_SEED_NOTES
    max_active: int = MAX_ACTIVE
    max_bars: int = MAX_BARS
    max_seed_span_beats: float = MAX_SEED_SPAN_BEATS
    max_start_distance_beats: float = MAX_START_DISTANCE_BEATS
    session_idle_s: float = SESSION_IDLE_S

    def to_json(self) -> dict[str, Any]:
        """The ``limits`` object of ``hello``."""
        return {"max_message_bytes": self.max_message_bytes,
                "max_seed_notes": self.max_seed_notes, "max_active": self.max_active,
                "max_bars": self.max_bars, "max_seed_span_beats": self.max_seed_span_beats,
                "max_start_distance_beats": self.max_start_distance_beats,
                "session_idle_s": self.session_idle_s}


@dataclass(frozen=True)
class HelloReply:
    """The engine's protocol and version, the styles it serves and its limits.

    Attributes:
        engine: the melodyd version.
        styles: style name -> facts about its model (``arch``, ``context_length``, ...,
            ``pitch_min``/``pitch_max``: the range ``constraints`` may ask for).
        limits: the limits in force.
        protocol: the protocol version the engine speaks.
    """

    TYPE: ClassVar[str] = "hello"
    id: str | None
    engine: str
    styles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    protocol: int = PROTOCOL_VERSION

    def to_json(self) -> dict[str, Any]:
        """The message as a JSON object."""
        return _envelope(self.TYPE, self.id, protocol=self.protocol, engine=self.engine,
                         styles={name: dict(facts) for name, facts in self.styles.items()},
                         limits=self.limits.to_json())


@dataclass(frozen=True)
class PongReply:
    """The answer to a ``ping``: its ``t``, or ``None``."""

    TYPE: ClassVar[str] = "pong"
    id: str | None = None
    t: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The message as a JSON object."""
        return _envelope(self.TYPE, self.id, t=self.t)


@dataclass(frozen=True)
class StatsReply:
    """The engine's counters (docs/protocol.md, ``stats``).

    Attributes:
        sessions: sessions the engine remembers.
        clients: distinct client identities among them.
        active: generates running now.
        requests: generates started since the engine started.
        errors: ``error`` replies sent.
        tokens_generated: tokens decoded.
        uptime_s: seconds since the engine was created.
        styles: style -> ``{steps, rows, max_batch, active}``.
    """

    TYPE: ClassVar[str] = "stats"
    id: str | None
    sessions: int
    clients: int
    active: int
    requests: int
    errors: int
    tokens_generated: int
    uptime_s: float
    styles: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The message as a JSON object."""
        return _envelope(self.TYPE, self.id, sessions=self.sessions, clients=self.clients,
                         active=self.active, requests=self.requests, errors=self.errors,
                         tokens_generated=self.tokens_generated, uptime_s=self.uptime_s,
                         styles={name: dict(c) for name, c in self.styles.items()})


@dataclass(frozen=True)
class NotesReply:
    """Notes of a running ``generate``, in the order they completed."""

    TYPE: ClassVar[str] = "notes"
    id: str
    notes: tuple[Note, ...]

    def to_json(self) -> dict[str, Any]:
        """The message as a JSON object."""
        return _envelope(self.TYPE, self.id, notes=[note.to_json() for note in self.notes])


@dataclass(frozen=True)
class DoneReply:
    """The end of a ``generate`` stream, with its counters.

    Attributes:
        id: the generate's id.
        reason: one of ``DONE_REASONS``.
        notes: notes sent in this stream's ``notes`` messages.
        tokens: tokens generated.
        prefill_tokens: seed tokens run through the model before generating.
        reused_tokens: seed tokens taken from the session's cache instead.
        elapsed_ms: time from start to end of the generation (sent to the microsecond).

    Raises:
        ValueError: an unknown ``reason`` (a bug in the engine, not the client's fault).
    """

    TYPE: ClassVar[str] = "done"
    id: str
    reason: str
    notes: int = 0
    tokens: int = 0
    prefill_tokens: int = 0
    reused_tokens: int = 0
    elapsed_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.reason not in DONE_REASONS:
            raise ValueError(f"unknown done reason {self.reason!r}")

    def to_json(self) -> dict[str, Any]:
        """The message as a JSON object."""
        return _envelope(self.TYPE, self.id, reason=self.reason, notes=self.notes,
                         tokens=self.tokens, prefill_tokens=self.prefill_tokens,
                         reused_tokens=self.reused_tokens,
                         elapsed_ms=round(self.elapsed_ms, 3))


@dataclass(frozen=True)
class ErrorReply:
    """A refused request (or a stream ended by a bug): a code and one human line.

    Raises:
        ValueError: a code that is not one of ``ERROR_CODES``.
    """

    TYPE: ClassVar[str] = "error"
    id: str | None
    code: str
    message: str

    def __post_init__(self) -> None:
        if self.code not in ERROR_CODES:
            raise ValueError(f"unknown error code {self.code!r}")

    def to_json(self) -> dict[str, Any]:
        """The message as a JSON object."""
        return _envelope(self.TYPE, self.id, code=self.code, message=self.message)


Reply = HelloReply | PongReply | StatsReply | NotesReply | DoneReply | ErrorReply
Message = Request | Reply
