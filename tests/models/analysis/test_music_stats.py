"""Key finding and the statistics of a passage."""

from __future__ import annotations

import numpy as np
import pytest

from models.analysis.music_stats import (
    NUM_FEATURES,
    histogram_distance,
    key_relative_histogram,
    note_density,
    polyphony,
    style_features,
)
from models.core.notes import Note
from models.core.tonality import estimate_key, pitch_class_histogram

C_MAJOR = [60, 62, 64, 65, 67, 69, 71, 72, 71, 69, 67, 65, 64, 62, 60]
A_MINOR = [57, 59, 60, 62, 64, 65, 67, 69, 67, 65, 64, 62, 60, 59, 57]
A_HARMONIC_MINOR = [57, 59, 60, 62, 64, 65, 68, 69, 68, 65, 64, 62, 60, 59, 57]


def _line(pitches: list[int], step: float = 0.5) -> list[Note]:
    return [Note(i * step, step, p, 80) for i, p in enumerate(pitches)]


@pytest.mark.parametrize(("pitches", "expected"), [
    (C_MAJOR, "C major"), (A_MINOR, "A minor"), (A_HARMONIC_MINOR, "A minor"),
    ([p + 7 for p in C_MAJOR], "G major"),
], ids=["c-major", "a-minor", "a-harmonic-minor", "g-major"])
def test_key_of_scales(pitches: list[int], expected: str) -> None:
    key = estimate_key(_line(pitches))
    assert key is not None
    assert key.name == expected


def test_no_key_for_a_single_pitch_class() -> None:
    assert estimate_key(_line([60, 72, 60])) is None


def test_key_relative_histogram_is_transposition_invariant() -> None:
    here = key_relative_histogram(_line(C_MAJOR))
    there = key_relative_histogram(_line([p + 5 for p in C_MAJOR]))
    np.testing.assert_allclose(here, there)
    assert histogram_distance(here, there) == pytest.approx(0.0)
    assert histogram_distance(pitch_class_histogram(_line(C_MAJOR)),
                              pitch_class_histogram(_line([p + 1 for p in C_MAJOR]))) > 0.5


def test_density_and_polyphony() -> None:
    melody = _line(C_MAJOR)  # one note every half beat, never two at once
    assert note_density(melody, length=7.5) == pytest.approx(2.0)
    assert polyphony(melody) == pytest.approx(1.0)
    chords = [Note(b, 1.0, p, 80) for b in range(4) for p in (60, 64, 67)]
    assert polyphony(chords) == pytest.approx(3.0)


def test_features_have_a_fixed_length_and_are_finite() -> None:
    for notes in (_line(C_MAJOR), [], [Note(0, 1, 60, 80)]):
        vector = style_features(notes, length=8.0)
        assert vector.shape == (NUM_FEATURES,)
        assert np.isfinite(vector).all()
