"""Incremental decoding of REMI tokens into notes, one token at a time.

MidiTok decodes whole sequences only; the engine needs each note the moment its last
token (Duration) is sampled, so this small state machine follows MidiTok's REMI
semantics over the same vocabulary:

- ``Bar`` starts the next bar (the first ``Bar`` starts bar 0 at beat 0);
- ``TimeSig_n/d`` sets the bar length to ``n`` beats of ``4/d`` quarter notes;
- ``Position_k`` moves to ``k`` grid steps after the bar start, a step being
  ``1/positions_per_beat`` of a time-signature beat;
- ``Pitch Velocity Duration`` makes one note at the current time;
- ``Role_r`` (vocabularies with roles) makes ``r`` the role of the following notes, until
  the next ``Role`` (before any, notes are ``any``: MidiTok's program 0);
- ``Style_k`` (vocabularies with style slots) sets the stream's style slot; it follows
  ``BOS`` in training data, and is accepted between any two events (a mid-stream switch
  changes no time and no note).

A token that does not fit (out of vocabulary, out of order, a position going backwards or
past the bar) is counted, logged at debug level and skipped: the decoder never raises.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from models.core.notes import ANY, Note
from models.core.tokenizer import MelodyTokenizer

logger = logging.getLogger(__name__)

# Keep only the most recent problems; a long jam must not grow memory.
_MAX_REPORTED = 32


class Expect(Enum):
    """What the stream needs next."""

    EVENT = "event"          # Bar, TimeSig, Position, Pitch, Role, Style or EOS
    VELOCITY = "velocity"    # after a Pitch
    DURATION = "duration"    # after a Velocity
    ENDED = "ended"          # after EOS


@dataclass(frozen=True)
class TokenInfo:
    """The parsed meaning of one token id."""

    kind: str            # "Bar", "TimeSig", "Position", "Pitch", "Velocity", "Duration",
                         # "Role", "Style", or a special token
    value: int = 0       # position step, pitch, velocity, style slot
    beats: float = 0.0   # duration in time-signature beats (Duration)
    numerator: int = 0   # TimeSig
    denominator: int = 0
    role: str = ""       # Role


def parse_vocabulary(tokenizer: MelodyTokenizer) -> list[TokenInfo]:
    """Parse every token string of the vocabulary once (indexed by id)."""
    infos = []
    for text in tokenizer.tokens:
        kind, _, raw = text.partition("_")
        if kind in ("Position", "Pitch", "Velocity", "Style"):
            infos.append(TokenInfo(kind, value=int(raw)))
        elif kind == "Duration":
            whole, ticks, res = (int(part) for part in raw.split("."))
            infos.append(TokenInfo(kind, beats=whole + ticks / res))
        elif kind == "TimeSig":
            num, den = (int(part) for part in raw.split("/"))
            infos.append(TokenInfo(kind, numerator=num, denominator=den))
        elif kind == "Role":
            infos.append(TokenInfo(kind, role=raw))
        else:
            infos.append(TokenInfo(kind))
    return infos


class StreamingDetokenizer:
    """Turns token ids into ``Note``s as soon as each note is complete.

    Attributes:
        bar: index of the current bar (-1 before the first ``Bar``).
        bar_start: beat at which the current bar starts.
        time_signature: ``(numerator, denominator)`` in force.
        position: grid step of the last ``Position`` in this bar (-1 if none yet).
        expect: what kind of token the stream needs next.
        skipped: number of tokens skipped as not fitting.
        problems: the most recent ``(token index, token string, reason)`` of skipped tokens.
        offset: beats added to every emitted onset (where bar 0 lies on the caller's timeline).
        role: the role of the next notes (``any`` until a ``Role`` token).
        style: the slot of the last ``Style`` token, ``None`` before one.
    """

    def __init__(self, tokenizer: MelodyTokenizer, offset: float = 0.0,
                 infos: list[TokenInfo] | None = None) -> None:
        self.tokenizer = tokenizer
        self.infos = infos if infos is not None else parse_vocabulary(tokenizer)
        self.positions_per_beat = tokenizer.settings.positions_per_beat
        self.offset = offset
        self.bar = -1
        self.bar_start = 0.0
        self.time_signature = (4, 4)
        self.position = -1
        self.time = 0.0
        self.expect = Expect.EVENT
        self.role = ANY
        self.style: int | None = None
        self.skipped = 0
        self.problems: list[tuple[int, str, str]] = []
        self._count = 0
        self._pitch = 0
        self._velocity = 0

    # Derived quantities of the time signature in force.
    @property
    def beat_length(self) -> float:
        """Length of one time-signature beat, in quarter notes."""
        return 4.0 / self.time_signature[1]

    @property
    def bar_length(self) -> float:
        """Length of the current bar, in quarter notes."""
        return self.time_signature[0] * self.beat_length

    @property
    def positions_per_bar(self) -> int:
        """Number of grid steps in the current bar."""
        return self.time_signature[0] * self.positions_per_beat

    def _skip(self, token: int, reason: str) -> None:
        text = self.infos[token].kind if 0 <= token < len(self.infos) else str(token)
        if 0 <= token < len(self.tokenizer.tokens):
            text = self.tokenizer.tokens[token]
        self.skipped += 1
        self.problems.append((self._count, text, reason))
        del self.problems[:-_MAX_REPORTED]
        logger.debug("skipped token %d (%s): %s", self._count, text, reason)

    def feed(self, token: int) -> Note | None:
        """Consume one token id; return the note it completes, if any."""
        token = int(token)
        try:
            return self._feed(token)
        finally:
            self._count += 1

    def feed_many(self, tokens: Iterable[int]) -> list[Note]:
        """Consume ids in order; return the notes they complete."""
        notes = []
        for token in tokens:
            note = self.feed(token)
            if note is not None:
                notes.append(note)
        return notes

    def _feed(self, token: int) -> Note | None:
        if not 0 <= token < len(self.infos):
            self._skip(token, "not in the vocabulary")
            return None
        info = self.infos[token]
        kind = info.kind
        if kind in ("PAD", "BOS"):
            return None
        if self.expect is Expect.ENDED:
            self._skip(token, "after the end of the piece")
            return None
        if self.expect is Expect.VELOCITY:
            if kind == "Velocity":
                self._velocity = info.value
                self.expect = Expect.DURATION
                return None
            self._skip(token, "a Velocity must follow a Pitch; the pitch is dropped")
            self.expect = Expect.EVENT
            return None
        if self.expect is Expect.DURATION:
            self.expect = Expect.EVENT
            if kind == "Duration":
                duration = info.beats * self.beat_length
                return Note(self.time + self.offset, duration, self._pitch, self._velocity,
                            self.role)
            self._skip(token, "a Duration must follow a Velocity; the note is dropped")
            return None
        return self._event(token, info)

    def _event(self, token: int, info: TokenInfo) -> Note | None:
        kind = info.kind
        if kind == "EOS":
            self.expect = Expect.ENDED
        elif kind == "Bar":
            self.bar += 1
            if self.bar > 0:
                self.bar_start += self.bar_length
            self.time = self.bar_start
            self.position = -1
        elif kind == "TimeSig":
            self.time_signature = (info.numerator, info.denominator)
            self.bar = max(self.bar, 0)
        elif kind == "Position":
            self.bar = max(self.bar, 0)
            if info.value <= self.position:
                self._skip(token, f"position {info.value} does not move forward from "
                                  f"{self.position} in this bar")
            elif info.value >= self.positions_per_bar:
                self._skip(token, f"position {info.value} is past the end of a "
                                  f"{self.time_signature[0]}/{self.time_signature[1]} bar")
            else:
                self.position = info.value
                self.time = self.bar_start + info.value * self.beat_length / self.positions_per_beat
        elif kind == "Pitch":
            self._pitch = info.value
            self.expect = Expect.VELOCITY
        elif kind == "Role":
            self.role = info.role
        elif kind == "Style":
            self.style = info.value
        else:  # a Velocity or Duration with no Pitch before it
            self._skip(token, f"a {kind} must follow a Pitch")
        return None
