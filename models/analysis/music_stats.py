"""Musical statistics of a passage: key-relative histograms, density, polyphony, and the
feature vector the style classifier reads (key finding itself is ``models.core.tonality``).

Every function takes beat-timed ``Note``s, so real music (decoded from a dataset's tokens)
and generated continuations are measured the same way.

Torch-free: numpy only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from models.core.notes import FEW_PITCHES_MIN_NOTES, Note, dwell_share, on_few_pitches
from models.core.tonality import Key, estimate_key, pitch_class_histogram

# Durations and inter-onset intervals are binned on a log2 scale in half-octave steps,
# from a 64th-ish (1/16 beat) to 8 beats: sixteenths, triplets and dotted values separate.
_LOG_BINS = np.arange(-4.0, 3.01, 0.5)
MAX_MELODIC_INTERVAL = 12  # larger leaps fall into the outermost bins


def key_relative_histogram(notes: Sequence[Note], key: Key | None = None) -> np.ndarray:
    """The pitch-class histogram rotated so that the key's tonic is index 0.

    Music in different keys then compares on scale degrees; with no key it is unrotated.
    """
    hist = pitch_class_histogram(notes)
    key = key or estimate_key(notes)
    return np.roll(hist, -key.tonic) if key is not None else hist


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Total-variation distance of two histograms (0 = equal, 1 = disjoint)."""
    return 0.5 * float(np.abs(np.asarray(a) - np.asarray(b)).sum())


def span_beats(notes: Sequence[Note], length: float | None = None) -> float:
    """The passage's length in beats: ``length`` if given, else first onset to last end."""
    if length is not None:
        return max(length, 1e-9)
    if not notes:
        return 1e-9
    return max(max(n.end for n in notes) - min(n.onset for n in notes), 1e-9)


def note_density(notes: Sequence[Note], length: float | None = None) -> float:
    """Notes per beat."""
    return len(notes) / span_beats(notes, length)


def polyphony(notes: Sequence[Note]) -> float:
    """Mean number of notes sounding while at least one sounds (1.0 = one line)."""
    if not notes:
        return 0.0
    events = sorted([(n.onset, 1) for n in notes] + [(n.end, -1) for n in notes])
    sounding, last, weighted, covered = 0, events[0][0], 0.0, 0.0
    for time, change in events:
        if sounding > 0:
            weighted += sounding * (time - last)
            covered += time - last
        sounding += change
        last = time
    return weighted / covered if covered > 0 else 1.0


def _log_hist(values: Sequence[float]) -> np.ndarray:
    hist = np.zeros(len(_LOG_BINS))
    for value in values:
        index = int(np.argmin(np.abs(_LOG_BINS - math.log2(max(value, 1e-3)))))
        hist[index] += 1
    total = hist.sum()
    return hist / total if total else hist


def _onset_groups(notes: Sequence[Note]) -> list[list[int]]:
    """Pitches of the notes starting together, one list per onset, in time order."""
    groups: dict[float, list[int]] = {}
    for note in notes:
        groups.setdefault(round(note.onset, 4), []).append(note.pitch)
    return [sorted(groups[t]) for t in sorted(groups)]


def _interval_hist(line: Sequence[int], signed: bool) -> np.ndarray:
    width = MAX_MELODIC_INTERVAL
    hist = np.zeros(2 * width + 1 if signed else width + 1)
    for a, b in itertools.pairwise(line):
        step = int(np.clip(b - a, -width, width))
        hist[step + width if signed else abs(step)] += 1
    total = hist.sum()
    return hist / total if total else hist


def _metric_hist(notes: Sequence[Note]) -> np.ndarray:
    """Where onsets fall in the beat: on it, on the half, quarters, thirds, elsewhere."""
    hist = np.zeros(5)
    for note in notes:
        frac = note.onset % 1.0
        if min(frac, 1 - frac) < 0.02:
            hist[0] += 1
        elif abs(frac - 0.5) < 0.02:
            hist[1] += 1
        elif min(abs(frac - 0.25), abs(frac - 0.75)) < 0.02:
            hist[2] += 1
        elif min(abs(frac - 1 / 3), abs(frac - 2 / 3)) < 0.02:
            hist[3] += 1
        else:
            hist[4] += 1
    total = hist.sum()
    return hist / total if total else hist


FEATURE_GROUPS = (
    ("scale-degree histogram", 12), ("major mode", 1),
    ("melody intervals", 2 * MAX_MELODIC_INTERVAL + 1),
    ("bass intervals", MAX_MELODIC_INTERVAL + 1),
    ("vertical intervals", 12), ("durations", len(_LOG_BINS)), ("inter-onset", len(_LOG_BINS)),
    ("beat positions", 5), ("scalars", 9),
)
NUM_FEATURES = sum(size for _, size in FEATURE_GROUPS)


def style_features(notes: Sequence[Note], length: float | None = None) -> np.ndarray:
    """The style classifier's view of a passage: a fixed-length vector of statistics.

    Pitch content is measured relative to the estimated key, so a style is recognised by
    how it uses a key, not by which keys its corpus happens to prefer. Absolute register
    is kept (a choir and a fiddle tune differ there).

    Args:
        notes: the passage, onsets relative to any origin.
        length: the passage's length in beats (a segment's nominal length), for densities.
    """
    notes = sorted(notes, key=lambda n: (n.onset, n.pitch))
    key = estimate_key(notes)
    groups = _onset_groups(notes)
    melody = [g[-1] for g in groups]  # the skyline: top note of each onset
    bass = [g[0] for g in groups]
    vertical = np.zeros(12)
    for group in groups:
        for pitch in group[1:]:
            vertical[(pitch - group[0]) % 12] += 1
    chord_share = sum(len(g) > 1 for g in groups) / max(len(groups), 1)
    vertical = vertical / vertical.sum() if vertical.sum() else vertical
    onsets = sorted({round(n.onset, 4) for n in notes})
    iois = [b - a for a, b in itertools.pairwise(onsets)]
    pitches = np.array([n.pitch for n in notes], dtype=float) if notes else np.array([60.0])
    in_scale = (sum(n.pitch % 12 in key.scale for n in notes) / len(notes)
                if key is not None and notes else 1.0)
    beats = span_beats(notes, length)
    scalars = np.array([
        math.log1p(len(notes) / beats),     # note density
        math.log1p(len(onsets) / beats),    # onset density
        polyphony(notes) / 4.0,
        chord_share,
        pitches.mean() / 127.0,
        pitches.std() / 12.0,
        (pitches.max() - pitches.min()) / 48.0,
        in_scale,
        key.correlation if key is not None else 0.0,
    ])
    vector = np.concatenate([
        key_relative_histogram(notes, key),
        [1.0 if key is not None and key.mode == "major" else 0.0],
        _interval_hist(melody, signed=True),
        _interval_hist(bass, signed=False),
        vertical,
        _log_hist([n.duration for n in notes]),
        _log_hist(iois),
        _metric_hist(notes),
        scalars,
    ])
    assert len(vector) == NUM_FEATURES  # the groups above document the layout
    return vector


# ----------------------------------------------------------------- call and answer
ONSET_STEPS_PER_BEAT = 4  # the rhythm grid: sixteenths (triplets fall to the nearest)


def onset_histogram(notes: Sequence[Note], bar_length: float,
                    steps_per_beat: int = ONSET_STEPS_PER_BEAT) -> np.ndarray:
    """Share of onsets at each grid position of the bar (sums to 1; zeros without notes).

    Onsets of the same position in different bars add up, so the histogram is the
    passage's rhythmic pattern within a bar, whatever its length or where it starts
    (onsets are taken relative to bar lines at multiples of ``bar_length``).
    """
    slots = max(1, round(bar_length * steps_per_beat))
    hist = np.zeros(slots)
    for note in notes:
        hist[round((note.onset % bar_length) * steps_per_beat) % slots] += 1
    total = hist.sum()
    return hist / total if total else hist


def rhythmic_similarity(call: Sequence[Note], answer: Sequence[Note],
                        bar_length: float) -> float | None:
    """How much an answer's rhythm echoes the call's: overlap of their onset histograms.

    1 when the onsets fall on the same positions of the bar in the same proportions, 0
    when no position is shared (``1 - histogram_distance``). ``None`` when either passage
    has no notes.
    """
    if not call or not answer:
        return None
    return 1.0 - histogram_distance(onset_histogram(call, bar_length),
                                    onset_histogram(answer, bar_length))


def mean_pitch(notes: Sequence[Note]) -> float | None:
    """The passage's register: its mean MIDI pitch (``None`` without notes)."""
    return float(np.mean([n.pitch for n in notes])) if notes else None


MONOTONE_SHARE = 0.6  # one pitch carrying this share of a passage's notes is a pedal


def is_monotone(notes: Sequence[Note]) -> bool:
    """Whether a passage dwells on one pitch: at most two distinct pitches
    (``models.core.notes.on_few_pitches``), or one pitch carrying at least
    ``MONOTONE_SHARE`` of its notes (an answer of the tonic eight times is no melody,
    however well it keeps the key and the call's rhythm). Passages of fewer than
    ``FEW_PITCHES_MIN_NOTES`` notes are not judged (``False``)."""
    if len(notes) < FEW_PITCHES_MIN_NOTES:
        return False
    return on_few_pitches(notes) or dwell_share(notes) >= MONOTONE_SHARE
