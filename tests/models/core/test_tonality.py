"""models.core.tonality: key estimate, the key tracker's hysteresis and lock, the key bias."""

from __future__ import annotations

import numpy as np
import pytest

from models.core.notes import Note
from models.core.tonality import (
    Key,
    KeyTracker,
    estimate_key,
    parse_key,
    pitch_class_bias,
)


def _scale_run(tonic: int, steps: tuple[int, ...], octave: int = 60) -> list[Note]:
    return [Note(i * 0.5, 0.5, octave + tonic + s, 80) for i, s in enumerate(steps)]


C_MAJOR_TUNE = _scale_run(0, (0, 4, 7, 12, 7, 4, 5, 2, 0, 7, 4, 0))
A_MINOR_TUNE = _scale_run(9, (0, 3, 7, 12, 7, 3, 2, 0, -1, 0, 3, 0), octave=48)


def test_estimates_major_and_minor_keys() -> None:
    assert estimate_key(C_MAJOR_TUNE).name == "C major"
    assert estimate_key(A_MINOR_TUNE).name == "A minor"
    assert estimate_key([Note(0, 1, 60, 80)]) is None


@pytest.mark.parametrize(("text", "tonic", "mode"), [
    ("C major", 0, "major"), ("a minor", 9, "minor"), ("Eb major", 3, "major"),
    ("f# minor", 6, "minor")])
def test_parse_key(text: str, tonic: int, mode: str) -> None:
    assert parse_key(text).same_as(Key(tonic, mode))


@pytest.mark.parametrize("text", ["C", "H major", "C dorian", ""])
def test_parse_key_refuses_what_is_no_key(text: str) -> None:
    with pytest.raises(ValueError, match=r"key|pitch class"):
        parse_key(text)


# The C major tune, then a passage leaning to G major (F#) that tips the raw estimate.
LEANING = C_MAJOR_TUNE + _scale_run(7, (0, 4, 7, 11, 7, 11, 2, 6, 7, 11), octave=60)


def test_tracker_keeps_its_key_through_a_passing_lean() -> None:
    assert estimate_key(LEANING).name == "G major"  # the raw estimate flips...
    tracker = KeyTracker(margin=0.1)
    assert tracker.update(C_MAJOR_TUNE).name == "C major"
    assert tracker.update(LEANING).name == "C major"  # ...the tracker does not


def test_without_a_margin_the_tracker_flips_with_the_estimate() -> None:
    tracker = KeyTracker(margin=0.0)
    tracker.update(C_MAJOR_TUNE)
    assert tracker.update(LEANING).name == "G major"


def test_tracker_follows_a_clear_modulation_and_a_lock_holds() -> None:
    tracker = KeyTracker(margin=0.1)
    tracker.update(C_MAJOR_TUNE)
    e_major = _scale_run(4, (0, 4, 7, 12, 11, 9, 7, 5, 4, 2, 0, 7, 4, 0))
    assert tracker.update(e_major).name == "E major"
    tracker.lock(True)
    assert tracker.update(C_MAJOR_TUNE).name == "E major"
    tracker.lock(False)
    assert tracker.update(C_MAJOR_TUNE).name == "C major"
    tracker.reset()
    assert tracker.key is None and not tracker.locked


def test_bias_favours_the_scale_and_the_tonic() -> None:
    bias = pitch_class_bias(Key(2, "major"), strength=2.0)  # D major
    scale = set(Key(2, "major").scale)
    assert min(bias[pc] for pc in scale) > max(bias[pc] for pc in range(12) if pc not in scale)
    assert int(np.argmax(bias)) == 2
    assert np.allclose(pitch_class_bias(Key(2, "major"), 0.0), 0.0)
    assert abs(float(bias.mean())) < 1e-9
