"""Which token may come next: a per-stream grammar over the REMI vocabulary.

The model proposes logits over every token; this module says which ones keep the stream
decodable and inside the musical limits of a request, as a boolean mask. It follows the
same state machine as ``models.core.streaming.StreamingDetokenizer`` (which it drives), so a
stream sampled under these masks always decodes with ``skipped == 0``:

- after ``Pitch`` only ``Velocity``; after ``Velocity`` only ``Duration``;
- after ``Bar`` only the ``TimeSig`` in force (the request's);
- ``Position`` strictly increases within a bar and stays inside the bar;
- ``Pitch`` only after a ``Position`` of the current bar, inside the pitch range and
  scale, not a pitch already played at this position (a duplicate note is no music and
  lets a greedy model loop forever), and only while fewer than ``max_polyphony`` notes
  sound at the current time;
- never ``PAD``/``BOS``; ``EOS`` only when allowed;
- with Role tokens (``[tokens] roles``): a note starts with ``Role`` or ``Pitch`` after a
  ``Position`` (as MidiTok writes them, a ``Role`` only when the role changes: never the
  role in force, and the first note of a stream always names its role); after ``Role``
  only a ``Pitch``. A request's ``constraints.role`` leaves only that role: its pitches
  once it is in force, else only its ``Role`` token where a note may start;
- with Style tokens: a ``Style`` only as the stream's first token after ``BOS`` (before
  the first ``Bar``), where training puts it. A style switch at a bar line is not
  offered: no model is trained with one (the detokenizer would accept it).

The masks are built from per-kind arrays precomputed once per vocabulary
(:class:`VocabularyMasks`), and the few state-dependent masks are memoised per stream, so
a decoding step costs a dict lookup in the common case.
"""

from __future__ import annotations

import bisect
import copy
from dataclasses import dataclass

import numpy as np

from models.core.exceptions import EngineError
from models.core.notes import Note
from models.core.protocol.messages import Constraints
from models.core.streaming import Expect, StreamingDetokenizer, TokenInfo, parse_vocabulary
from models.core.tokenizer import MelodyTokenizer

# Onsets and ends are compared on the beat grid; this absorbs float rounding.
_EPS = 1e-6


@dataclass(frozen=True)
class VocabularyMasks:
    """Boolean masks per token kind, and values per id, for one vocabulary.

    Attributes:
        infos: the parsed meaning of every id.
        kind: kind name -> boolean mask [V] of the ids of that kind.
        position: [V] position step of each ``Position`` id, -1 elsewhere.
        pitch: [V] pitch of each ``Pitch`` id, -1 elsewhere.
        time_signature: ``(n, d)`` -> id of its ``TimeSig`` token.
        role: role -> id of its ``Role`` token (empty without roles).
    """

    infos: list[TokenInfo]
    kind: dict[str, np.ndarray]
    position: np.ndarray
    pitch: np.ndarray
    time_signature: dict[tuple[int, int], int]
    role: dict[str, int]

    @classmethod
    def build(cls, tokenizer: MelodyTokenizer) -> VocabularyMasks:
        """Parse the vocabulary once."""
        infos = parse_vocabulary(tokenizer)
        size = len(infos)
        kinds: dict[str, np.ndarray] = {}
        for index, info in enumerate(infos):
            kinds.setdefault(info.kind, np.zeros(size, dtype=bool))[index] = True
        for name in ("Bar", "TimeSig", "Position", "Pitch", "Velocity", "Duration", "EOS",
                     "Role", "Style"):
            kinds.setdefault(name, np.zeros(size, dtype=bool))
        position = np.full(size, -1, dtype=np.int64)
        pitch = np.full(size, -1, dtype=np.int64)
        signatures = {}
        roles = {}
        for index, info in enumerate(infos):
            if info.kind == "Position":
                position[index] = info.value
            elif info.kind == "Pitch":
                pitch[index] = info.value
            elif info.kind == "TimeSig":
                signatures[(info.numerator, info.denominator)] = index
            elif info.kind == "Role":
                roles[info.role] = index
        for array in (*kinds.values(), position, pitch):
            array.setflags(write=False)
        return cls(infos, kinds, position, pitch, signatures, roles)

    def pitch_mask(self, constraints: Constraints) -> np.ndarray:
        """The ``Pitch`` ids allowed by a request's range and scale.

        Raises:
            EngineError: the range and scale leave no pitch of the vocabulary.
        """
        allowed = self.kind["Pitch"] & (self.pitch >= constraints.pitch_min) & (
            self.pitch <= constraints.pitch_max)
        if constraints.scale is not None:
            classes = np.zeros(12, dtype=bool)
            classes[[int(pc) % 12 for pc in constraints.scale]] = True
            allowed &= classes[np.maximum(self.pitch, 0) % 12]
        if not allowed.any():
            raise EngineError(
                f"constraints leave no pitch to play (range {constraints.pitch_min}-"
                f"{constraints.pitch_max}, scale {constraints.scale})")
        return allowed


class Grammar:
    """The state of one token stream and the mask of its allowed next tokens.

    Feed every token of the stream (seed, forced and sampled) through :meth:`feed`; ask
    :meth:`allowed` before sampling.

    Attributes:
        vocab: the shared per-vocabulary masks.
        detok: the streaming detokenizer that follows the stream (its notes are returned
            by :meth:`feed`).
        time_signature: the one ``TimeSig`` allowed after a ``Bar``.
        allow_eos: whether the model may end the piece.
        max_polyphony: most notes sounding at once, or ``None``.
        role: the only role notes may take (``constraints.role``), or ``None``.
    """

    def __init__(self, tokenizer: MelodyTokenizer, vocab: VocabularyMasks,
                 constraints: Constraints | None = None,
                 time_signature: tuple[int, int] = (4, 4), *, offset: float = 0.0,
                 allow_eos: bool = True) -> None:
        """Start a stream before its first token.

        Raises:
            EngineError: the time signature is not in the vocabulary, the constraints
                leave no pitch, or ask for a role the vocabulary cannot express.
        """
        constraints = constraints or Constraints()
        if constraints.role is not None and constraints.role not in vocab.role:
            raise EngineError(
                f"constraints.role {constraints.role!r} needs a model with role tokens "
                f"(this one has {', '.join(sorted(vocab.role)) or 'none'})")
        if tuple(time_signature) not in vocab.time_signature:
            known = ", ".join(f"{n}/{d}" for n, d in sorted(vocab.time_signature))
            raise EngineError(f"time signature {time_signature[0]}/{time_signature[1]} is "
                              f"not in this model's vocabulary ({known})")
        self.vocab = vocab
        self.detok = StreamingDetokenizer(tokenizer, offset=offset, infos=vocab.infos)
        self.time_signature = (int(time_signature[0]), int(time_signature[1]))
        self.allow_eos = allow_eos
        self.max_polyphony = constraints.max_polyphony
        self.role = constraints.role
        self._pitches = vocab.pitch_mask(constraints)
        self._last_kind = ""
        # Whether a Role token has been fed (MidiTok names the role of a stream's first note).
        self._role_named = False
        # Pitch ids already played at the current position.
        self._here: list[int] = []
        # Ends (beats, detokenizer timeline) of notes that may still sound, kept sorted.
        self._ends: list[float] = []
        self._cache: dict[tuple, np.ndarray] = {}
        self._only = {name: vocab.kind[name] for name in ("Velocity", "Duration")}
        self._only["TimeSig"] = np.zeros_like(vocab.kind["Bar"])
        self._only["TimeSig"][vocab.time_signature[self.time_signature]] = True
        self._only["Bar"] = vocab.kind["Bar"].copy()
        self._nothing = np.zeros_like(vocab.kind["Bar"])
        self._nothing.setflags(write=False)

    def fork(self) -> Grammar:
        """An independent copy of the stream's state (best-of-N decodes one per candidate).

        The vocabulary masks and the memo of state masks are shared: they are read-only,
        and a memoised mask depends only on its key and on settings every copy shares.
        """
        twin = copy.copy(self)
        twin.detok = copy.copy(self.detok)
        twin.detok.problems = list(self.detok.problems)
        twin._here = list(self._here)
        twin._ends = list(self._ends)
        return twin

    # ----------------------------------------------------------------- state
    @property
    def bar(self) -> int:
        """Index of the current bar (-1 before the first ``Bar``)."""
        return self.detok.bar

    @property
    def position(self) -> int:
        """Grid step of the last ``Position`` in the current bar (-1 if none)."""
        return self.detok.position

    @property
    def ended(self) -> bool:
        """Whether the stream has seen ``EOS``."""
        return self.detok.expect is Expect.ENDED

    def sounding(self) -> int:
        """Number of fed notes still sounding at the current time."""
        now = self.detok.time + self.detok.offset + _EPS
        # _ends is sorted: every end after ``now`` sounds (onsets are never in the future).
        return len(self._ends) - bisect.bisect_right(self._ends, now)

    def feed(self, token: int) -> Note | None:
        """Advance the stream by one token; return the note it completes, if any."""
        kind = self.vocab.infos[token].kind if 0 <= token < len(self.vocab.infos) else ""
        note = self.detok.feed(token)
        if kind not in ("PAD", "BOS"):
            self._last_kind = kind
        if kind == "Role":
            self._role_named = True
        if kind == "Pitch":
            self._here.append(token)
        elif kind in ("Position", "Bar"):
            self._here.clear()
        if note is not None and self.max_polyphony is not None:
            bisect.insort(self._ends, note.end)
            # Forget notes long over so the list stays short during a long jam.
            now = self.detok.time + self.detok.offset
            if self._ends and self._ends[0] < now - _EPS:
                del self._ends[:bisect.bisect_left(self._ends, now - _EPS)]
        return note

    # ----------------------------------------------------------------- masks
    def allowed(self) -> np.ndarray:
        """Boolean mask [V] of the tokens that may come next (read-only, do not modify)."""
        expect = self.detok.expect
        if expect is Expect.VELOCITY:
            return self._only["Velocity"]
        if expect is Expect.DURATION:
            return self._only["Duration"]
        if expect is Expect.ENDED:
            return self._nothing
        if self.detok.bar < 0:
            return self._start_mask()
        if self._last_kind == "Bar":
            return self._only["TimeSig"]
        if self._last_kind == "Role":
            # A Role token only appears where a pitch may follow (see _note_start).
            return self._without_here(self._pitches)
        pitches = self.detok.position >= 0 and (
            self.max_polyphony is None or self.sounding() < self.max_polyphony)
        role_state = self.detok.role if self._role_named else None
        key = (self.detok.position, self.detok.positions_per_bar, pitches,
               self._last_kind == "Position", role_state)
        mask = self._cache.get(key)
        if mask is None:
            mask = self._event_mask(*key)
            self._cache[key] = mask
        if pitches and self._here:
            mask = self._without_here(mask)
            if self.vocab.role and not self._without_here(self._pitches).any():
                # Every allowed pitch was played here already: a Role would lead nowhere.
                mask[list(self.vocab.role.values())] = False
        return mask

    def _without_here(self, mask: np.ndarray) -> np.ndarray:
        """A copy of ``mask`` without the pitches already played at this position."""
        if not self._here:
            return mask
        mask = mask.copy()
        mask[self._here] = False
        return mask

    def _start_mask(self) -> np.ndarray:
        """Before the first ``Bar``: the ``Bar``, or a ``Style`` if none was given yet."""
        if self.detok.style is None and self.vocab.kind["Style"].any():
            return self.vocab.kind["Style"] | self.vocab.kind["Bar"]
        return self._only["Bar"]

    def _note_start(self, role_state: str | None) -> np.ndarray:
        """The tokens that may start a note, given the role in force (``None``: unnamed)."""
        vocab = self.vocab
        if not vocab.role:
            return self._pitches
        mask = np.zeros_like(self._pitches)
        if self.role is not None:
            # Constrained: the role's pitches once it is in force, else its Role token.
            if role_state == self.role:
                mask |= self._pitches
            else:
                mask[vocab.role[self.role]] = True
            return mask
        # A Role only when it changes the role; the first note of a stream names its role.
        for role, index in vocab.role.items():
            if role != role_state:
                mask[index] = True
        if role_state is not None:
            mask |= self._pitches
        return mask

    def _event_mask(self, position: int, positions_per_bar: int, pitches: bool,
                    after_position: bool, role_state: str | None) -> np.ndarray:
        """Mask of an event slot: later positions, Bar, EOS and (maybe) note starts."""
        vocab = self.vocab
        if after_position and pitches:
            # A Position is followed by at least one note (REMI never writes empty ones).
            mask = self._note_start(role_state).copy()
        else:
            mask = vocab.kind["Bar"] | (
                vocab.kind["Position"] & (vocab.position > position)
                & (vocab.position < positions_per_bar))
            if self.allow_eos:
                mask = mask | vocab.kind["EOS"]
            if pitches:
                mask = mask | self._note_start(role_state)
        mask.setflags(write=False)
        return mask
