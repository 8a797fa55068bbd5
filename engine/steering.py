"""Musical steering: soft biases that make an answer listen to the call.

The grammar says what may come next; steering leans the model's choice, never forbids a
note outright (except the floor below):
- **key**: every ``Pitch`` token gains the key profile's weight of its pitch class
  (``models.core.tonality.pitch_class_bias``), so the answer stays in the player's key
  while a chromatic passing note stays possible;
- **register**: pitches further than ``width`` semitones from the call's centre lose
  ``strength`` per octave beyond it, so the answer sits where the player plays;
- **density**: the ``Bar`` token (moving on to the next bar) is made less likely while the
  current bar has fewer notes than the call's notes per bar, and more likely once it has
  more, so the answer is about as busy as the call;
- **floor**: a bar may not end (``Bar``) before it holds ``min_notes`` notes, and the answer
  may not end early (``EOS``) at all, as long as the grammar leaves anything else to play:
  no near-silent answer to a real call (an answer of one note then ``EOS`` was one);
- **chords**: with chord hints, a pitch outside the chord hinted at the note's onset loses
  ``chord_strength`` (the model knows no chords; this leans it onto given changes).

All of it is written by hand: no library steers a token sampler this way. Costs one
vector add per step (the pitch bias is built once per request, a chord's once per hint).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from engine.grammar import VocabularyMasks
from models.core.protocol.messages import Steering
from models.core.tonality import pitch_class_bias


def pitch_bias(vocab: VocabularyMasks, steering: Steering) -> np.ndarray | None:
    """The per-token logit bias of the key and the register ([V], zero off ``Pitch``), or
    ``None`` when neither is asked for."""
    key_on = steering.key is not None and steering.key_strength > 0
    register_on = steering.register_center is not None and steering.register_strength > 0
    if not (key_on or register_on):
        return None
    is_pitch = vocab.pitch >= 0
    pitches = vocab.pitch[is_pitch]
    bias = np.zeros(len(vocab.pitch), dtype=np.float32)
    values = np.zeros(len(pitches), dtype=np.float64)
    if key_on:
        values += pitch_class_bias(steering.key, steering.key_strength)[pitches % 12]
    if register_on:
        beyond = np.maximum(0.0, np.abs(pitches - steering.register_center)
                            - steering.register_width)
        values -= steering.register_strength * beyond / 12.0
    bias[is_pitch] = values
    return bias


# Beats compare on the 1/12-beat grid; this absorbs float rounding.
_EPS = 1e-6


@dataclass(frozen=True)
class ChordBias:
    """The pitch bias of each chord hint, looked up by the beat of the next note.

    Attributes:
        beats: where each hint starts (ascending).
        biases: per hint, the logit bias per token ([V]: ``-strength`` on a ``Pitch``
            outside the chord, 0 elsewhere), or ``None`` for "no chord".
    """

    beats: tuple[float, ...]
    biases: tuple[np.ndarray | None, ...]

    @classmethod
    def of(cls, vocab: VocabularyMasks, steering: Steering) -> ChordBias | None:
        """The biases of a request's hints, or ``None`` when it gives none (or strength 0)."""
        if not steering.chords or steering.chord_strength <= 0:
            return None
        is_pitch = vocab.pitch >= 0
        classes = vocab.pitch[is_pitch] % 12
        biases = []
        for hint in steering.chords:
            if not hint.pitch_classes:
                biases.append(None)
                continue
            bias = np.zeros(len(vocab.pitch), dtype=np.float32)
            outside = ~np.isin(classes, hint.pitch_classes)
            bias[np.flatnonzero(is_pitch)[outside]] = -steering.chord_strength
            biases.append(bias)
        return cls(tuple(h.beat for h in steering.chords), tuple(biases))

    def at(self, beat: float) -> np.ndarray | None:
        """The bias of the hint sounding at ``beat`` (``None`` before the first one)."""
        index = bisect.bisect_right(self.beats, beat + _EPS) - 1
        return self.biases[index] if index >= 0 else None


@dataclass
class BarDensity:
    """Notes per bar so far, and the ``Bar`` logit bias and floor that follow from them.

    Attributes:
        target: the call's notes per bar (``None``: no density steering).
        strength: logit change per "bar's worth" of difference from the target.
        min_notes: the floor: notes a bar must hold before it may end (0 = none).
        count: notes of the current bar so far.
    """

    target: float | None
    strength: float
    min_notes: int
    count: int = 0

    @classmethod
    def of(cls, steering: Steering) -> BarDensity:
        """The density state of a fresh answer."""
        return cls(steering.notes_per_bar, steering.density_strength, steering.min_notes)

    def next_bar(self) -> None:
        """A ``Bar`` token was taken: count afresh."""
        self.count = 0

    def add_note(self) -> None:
        """A note of the current bar was completed."""
        self.count += 1

    def bar_bias(self) -> float:
        """Logit bias of the ``Bar`` token now: negative while the bar is thinner than the
        target, positive once it is fuller (relative to the target, clipped to ±strength)."""
        if self.target is None or self.strength <= 0:
            return 0.0
        gap = (self.count - self.target) / max(self.target, 1.0)
        return float(self.strength * np.clip(gap, -1.0, 1.0))

    def below_floor(self) -> bool:
        """True while the current bar holds fewer notes than the floor."""
        return self.count < self.min_notes


def steer(logits: np.ndarray, allowed: np.ndarray, *, bias: np.ndarray | None,
          density: BarDensity | None, bar_id: int, eos_id: int | None) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """Apply the biases and the floor to one step's logits and mask.

    Returns:
        The steered logits (a new array when anything changed) and the allowed mask (the
        floor removes ``EOS``, and ``Bar`` below the floor, when the grammar leaves
        something else).
    """
    if bias is not None:
        logits = logits + bias
    if density is None:
        return logits, allowed
    shift = density.bar_bias()
    if shift:
        logits = np.array(logits, copy=True) if bias is None else logits
        logits[bar_id] += shift
    if density.min_notes > 0:
        floor = np.array(allowed, copy=True)
        if density.below_floor():
            floor[bar_id] = False
        if eos_id is not None:
            floor[eos_id] = False  # it would leave every later bar empty
        if floor.any():
            allowed = floor
    return logits, allowed
