"""Pitch names in scientific notation (middle C = C4 = MIDI 60), both ways."""

from __future__ import annotations

import re

from models.core.exceptions import DataError

PITCH_CLASS_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_STEPS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_NAME = re.compile(r"^([A-Ga-g])([#b]*)(-?\d+)$")


def pitch_name(pitch: int) -> str:
    """``60`` -> ``"C4"`` (sharps, never flats)."""
    return f"{PITCH_CLASS_NAMES[pitch % 12]}{pitch // 12 - 1}"


def parse_pitch(name: str) -> int:
    """``"D#5"`` or ``"Eb5"`` -> MIDI pitch.

    Raises:
        DataError: the name is not a letter, optional accidentals and an octave, or the
            pitch is outside 0-127.
    """
    match = _NAME.match(name.strip())
    if match is None:
        raise DataError(f"pitch must look like 'C4' or 'D#5' (received {name!r})")
    letter, accidentals, octave = match.groups()
    pitch = (int(octave) + 1) * 12 + _STEPS[letter.upper()]
    pitch += accidentals.count("#") - accidentals.count("b")
    if not 0 <= pitch <= 127:
        raise DataError(f"pitch {name!r} is outside MIDI's 0-127 (received {pitch})")
    return pitch
