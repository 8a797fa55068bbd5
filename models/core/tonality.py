"""Key finding for the live path and for evaluation: one estimate, used everywhere.

The Krumhansl-Schmuckler method: correlate the passage's duration-weighted pitch-class
histogram with the 24 rotated Krumhansl-Kessler key profiles and take the best. The bridge
follows the player's key with ``KeyTracker`` (hysteresis, so the key does not flip with
every bar), the engine turns the key into a soft bias on pitches (``pitch_class_bias``),
and the evaluation measures "key kept" with the same ``estimate_key``.

numpy only (torch-free, onnxruntime-free).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.core.notes import Note
from models.core.pitch_names import PITCH_CLASS_NAMES

MODES = ("major", "minor")
# Krumhansl & Kessler's key profiles (probe-tone ratings, 1982), tonic first.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
PROFILES = {"major": MAJOR_PROFILE, "minor": MINOR_PROFILE}
# Scale degrees (semitones above the tonic) of the major and harmonic+natural minor scales.
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10, 11)}


@dataclass(frozen=True)
class Key:
    """A key estimate.

    Attributes:
        tonic: pitch class of the tonic (0 = C).
        mode: ``"major"`` or ``"minor"``.
        correlation: Pearson correlation of the passage with the key's profile (1.0 for a
            key that was set, not estimated).
    """

    tonic: int
    mode: str
    correlation: float = 1.0

    @property
    def name(self) -> str:
        """``"A minor"``."""
        return f"{PITCH_CLASS_NAMES[self.tonic]} {self.mode}"

    @property
    def scale(self) -> tuple[int, ...]:
        """Pitch classes of the key's scale."""
        return tuple((self.tonic + d) % 12 for d in SCALES[self.mode])

    def same_as(self, other: Key | None) -> bool:
        """Same tonic and mode (the correlation does not matter)."""
        return other is not None and (self.tonic, self.mode) == (other.tonic, other.mode)


def parse_key(text: str) -> Key:
    """``"A minor"``, ``"Eb major"``, ``"f# minor"`` -> ``Key``.

    Raises:
        ValueError: not a tonic name followed by major or minor.
    """
    parts = text.split()
    if len(parts) != 2 or parts[1].lower() not in MODES:
        raise ValueError(f"{text!r} is not a key such as 'C major' or 'A minor'")
    name = parts[0][:1].upper() + parts[0][1:].lower()
    flats = {"Db": "C#", "Eb": "D#", "Gb": "F#", "Ab": "G#", "Bb": "A#", "Cb": "B",
             "Fb": "E", "E#": "F", "B#": "C"}
    name = flats.get(name, name)
    if name not in PITCH_CLASS_NAMES:
        raise ValueError(f"{text!r}: {parts[0]!r} is not a pitch class name")
    return Key(PITCH_CLASS_NAMES.index(name), parts[1].lower())


def pitch_class_histogram(notes: Sequence[Note], weighted: bool = True) -> np.ndarray:
    """Share of each pitch class (12 values summing to 1; zeros when there are no notes).

    Args:
        notes: the passage.
        weighted: weight each note by its duration (how long a pitch class sounds), as
            key finding does; else count notes.
    """
    hist = np.zeros(12)
    for note in notes:
        hist[note.pitch % 12] += note.duration if weighted else 1.0
    total = hist.sum()
    return hist / total if total > 0 else hist


def key_correlations(notes: Sequence[Note]) -> dict[tuple[int, str], float] | None:
    """Correlation of the passage with each of the 24 keys, or ``None`` when fewer than two
    distinct pitch classes sound (no key can be told)."""
    hist = pitch_class_histogram(notes)
    if np.count_nonzero(hist) < 2:
        return None
    return {(tonic, mode): _correlation(hist, tonic, mode)
            for mode in PROFILES for tonic in range(12)}


def key_correlation(notes: Sequence[Note], key: Key) -> float | None:
    """Correlation of the passage with ``key`` alone (``key_correlations``' entry for it,
    without the other 23), or ``None`` when fewer than two pitch classes sound."""
    hist = pitch_class_histogram(notes)
    if np.count_nonzero(hist) < 2:
        return None
    return _correlation(hist, key.tonic, key.mode)


def _correlation(hist: np.ndarray, tonic: int, mode: str) -> float:
    return float(np.corrcoef(hist, np.roll(PROFILES[mode], tonic))[0, 1])


def estimate_key(notes: Sequence[Note]) -> Key | None:
    """The Krumhansl-Schmuckler key estimate: the best-correlated of the 24 key profiles.

    Returns:
        The key, or ``None`` when the passage has fewer than two distinct pitch classes.
    """
    scores = key_correlations(notes)
    if scores is None:
        return None
    (tonic, mode), corr = max(scores.items(), key=lambda item: item[1])
    return Key(tonic, mode, corr)


def scale_share(notes: Sequence[Note], key: Key) -> float | None:
    """Duration share of ``notes`` whose pitch class is in ``key``'s scale (``None``: no
    notes). Unlike comparing key estimates, it does not count an answer in the call's
    scale as a change of key when it dwells on the relative minor or a mode of it."""
    total = sum(n.duration for n in notes)
    if total <= 0:
        return None
    scale = set(key.scale)
    return sum(n.duration for n in notes if n.pitch % 12 in scale) / total


class KeyTracker:
    """The player's key as it goes, with hysteresis and a lock.

    A new key replaces the current one only when it fits the latest window better by
    ``margin`` (in correlation), so a passing chromatic bar does not flip the key; a locked
    tracker keeps its key until unlocked.
    """

    def __init__(self, margin: float = 0.1) -> None:
        self.margin = margin
        self.key: Key | None = None
        self.locked = False

    def update(self, notes: Sequence[Note]) -> Key | None:
        """Take the latest window of notes; return the key now followed (``None``: none yet)."""
        if self.locked:
            return self.key
        scores = key_correlations(notes)
        if scores is None:
            return self.key
        (tonic, mode), best = max(scores.items(), key=lambda item: item[1])
        current = None if self.key is None else scores[(self.key.tonic, self.key.mode)]
        if current is None or best > current + self.margin:
            self.key = Key(tonic, mode, best)
        else:
            self.key = Key(self.key.tonic, self.key.mode, current)
        return self.key

    def lock(self, locked: bool) -> None:
        """Hold the current key (``True``) or follow the player again (``False``)."""
        self.locked = locked

    def reset(self) -> None:
        """Forget the key (and unlock): the next window decides afresh."""
        self.key = None
        self.locked = False


def pitch_class_bias(key: Key, strength: float) -> np.ndarray:
    """Logit bias per pitch class that leans generation towards ``key``.

    The key's profile standardised (mean 0, spread 1) times ``strength``: in-scale pitch
    classes gain, the tonic and fifth most, out-of-scale ones lose. Soft by design: a
    chromatic passing note stays possible; the hard scale constraint is separate.

    The tonic gains about 2 x ``strength`` over the second degree, so the strength must
    stay low: at 1.5 (the answers' default until the jam harness counted it) half the
    answers were the tonic over and over. A flat scale penalty with a small tonic-triad
    gain avoids that too, but under a melody it made the accompaniment less consonant
    (pop 0.75-0.79 against 0.82): docs/jam.md, "The tonic pull".
    """
    profile = np.roll(PROFILES[key.mode], key.tonic)
    return strength * (profile - profile.mean()) / profile.std()
