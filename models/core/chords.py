"""Chords as pitch classes: POP909's Harte labels and lead-sheet symbols.

One table of chord qualities serves both spellings: the labels POP909 annotates its songs
with (``B:maj``, ``F#:min7``, ``C:maj/3``; ``models.analysis.chords`` reads its files) and
the symbols a musician types for a chord loop (``C G Am F``, ``Dm7 G7 Cmaj7``, ``F/A``;
``melodyd --chords``, ``melody harmonize --chords``). Written by hand: music21 reads
lead-sheet symbols but is not part of the live path's install (no torch, no music21),
and no installed library reads Harte's syntax; both grammars are a few lines.
"""

from __future__ import annotations

import math
import re

from models.core.protocol.messages import ChordHint

NO_CHORD = "N"

# Semitones above the root of each quality (Harte's shorthands as POP909 uses them, with
# their counts over the 909 songs: maj 60 k, min 38 k, sus2 5.7 k, min7 5.1 k, maj7 3.2 k,
# sus4 2.8 k, 7 1.6 k, sus4(b7) 1.2 k, maj6 723, dim 640, hdim7 207, aug 178, min6 58,
# dim7 56, minmaj7 36), and a few more.
QUALITIES: dict[str, tuple[int, ...]] = {
    "maj": (0, 4, 7),
    "min": (0, 3, 7),
    "dim": (0, 3, 6),
    "aug": (0, 4, 8),
    "sus2": (0, 2, 7),
    "sus4": (0, 5, 7),
    "sus4(b7)": (0, 5, 7, 10),
    "7": (0, 4, 7, 10),
    "maj7": (0, 4, 7, 11),
    "min7": (0, 3, 7, 10),
    "minmaj7": (0, 3, 7, 11),
    "dim7": (0, 3, 6, 9),
    "hdim7": (0, 3, 6, 10),
    "maj6": (0, 4, 7, 9),
    "min6": (0, 3, 7, 9),
    "9": (0, 4, 7, 10, 2),
    "maj9": (0, 4, 7, 11, 2),
    "min9": (0, 3, 7, 10, 2),
    "add9": (0, 4, 7, 2),
    "5": (0, 7),
    "1": (0,),
}

# Lead-sheet suffixes (after the root, before a slash bass) and the quality each names.
SYMBOL_SUFFIXES: dict[str, str] = {
    "": "maj", "M": "maj", "maj": "maj",
    "m": "min", "min": "min", "-": "min",
    "7": "7", "dom7": "7",
    "maj7": "maj7", "M7": "maj7", "ma7": "maj7",
    "m7": "min7", "min7": "min7", "-7": "min7",
    "mmaj7": "minmaj7", "mM7": "minmaj7", "m(maj7)": "minmaj7",
    "m7b5": "hdim7", "m7(b5)": "hdim7", "ø": "hdim7", "ø7": "hdim7",
    "dim": "dim", "o": "dim", "°": "dim",
    "dim7": "dim7", "o7": "dim7", "°7": "dim7",
    "aug": "aug", "+": "aug",
    "sus": "sus4", "sus4": "sus4", "sus2": "sus2", "7sus4": "sus4(b7)", "7sus": "sus4(b7)",
    "6": "maj6", "m6": "min6",
    "9": "9", "maj9": "maj9", "M9": "maj9", "m9": "min9",
    "add9": "add9", "5": "5",
}

# Harte's scale degrees (an inversion's bass, ``/3``, ``/b7``...): semitones above the root.
DEGREES = {"1": 0, "2": 2, "3": 4, "4": 5, "5": 7, "6": 9, "7": 11, "9": 2, "11": 5, "13": 9}

_NOTE_NAMES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_ROOT = re.compile(r"^([A-G])([#b]*)$")
_DEGREE = re.compile(r"^([#b]*)(\d+)$")
_SYMBOL = re.compile(r"^([A-G][#b]?)([^/]*)(?:/([A-G][#b]?))?$")


def _accidentals(text: str) -> int:
    return text.count("#") - text.count("b")


def pitch_class(name: str) -> int:
    """The pitch class (0 = C) of a note name such as ``C``, ``F#``, ``Bb``.

    Raises:
        ValueError: not a note name.
    """
    match = _ROOT.match(name)
    if not match:
        raise ValueError(f"not a note name: {name!r}")
    return (_NOTE_NAMES[match.group(1)] + _accidentals(match.group(2))) % 12


def degree_interval(degree: str) -> int:
    """Semitones above the root of a Harte degree such as ``3``, ``b7``, ``#5``.

    Raises:
        ValueError: not a degree.
    """
    match = _DEGREE.match(degree)
    if not match or match.group(2) not in DEGREES:
        raise ValueError(f"not a scale degree: {degree!r}")
    return (DEGREES[match.group(2)] + _accidentals(match.group(1))) % 12


def chord_pitch_classes(label: str) -> frozenset[int]:
    """The pitch classes of a Harte label: root plus its quality's intervals, plus the bass.

    ``B:maj`` -> {11, 3, 6}; ``C:maj/7`` -> {0, 4, 7, 11} (the bass B is a tone of what
    sounds); ``N`` (no chord) -> the empty set. A root without a quality is a major triad.

    Raises:
        ValueError: an unknown root, quality or degree.
    """
    label = label.strip()
    if label in (NO_CHORD, "X", ""):
        return frozenset()
    root_text, _, rest = label.partition(":")
    quality, _, bass = (rest or "maj").partition("/")
    if quality not in QUALITIES:
        raise ValueError(f"unknown chord quality {quality!r} in {label!r}")
    root = pitch_class(root_text)
    tones = {(root + step) % 12 for step in QUALITIES[quality]}
    if bass:
        tones.add((root + degree_interval(bass)) % 12)
    return frozenset(tones)


def symbol_pitch_classes(symbol: str) -> frozenset[int]:
    """The pitch classes of a lead-sheet symbol such as ``Am``, ``G7``, ``Fmaj7``,
    ``Bbm7b5``, ``Dsus4``, ``C/E`` (the slash bass is a tone too); ``N`` -> no chord.

    Raises:
        ValueError: not a chord symbol (the message lists the suffixes known).
    """
    symbol = symbol.strip()
    if symbol == NO_CHORD:
        return frozenset()
    match = _SYMBOL.match(symbol)
    if not match or match.group(2) not in SYMBOL_SUFFIXES:
        known = " ".join(repr(s) for s in SYMBOL_SUFFIXES if s)
        raise ValueError(f"not a chord symbol: {symbol!r} (a root A-G with an optional # "
                         f"or b, then one of {known} or nothing, then an optional /bass; "
                         f"N for no chord)")
    root = pitch_class(match.group(1))
    tones = {(root + step) % 12 for step in QUALITIES[SYMBOL_SUFFIXES[match.group(2)]]}
    if match.group(3):
        tones.add(pitch_class(match.group(3)))
    return frozenset(tones)


def parse_chord_loop(text: str) -> tuple[frozenset[int], ...]:
    """A loop of chords, one per bar: symbols separated by spaces (bar lines ``|`` are
    allowed and ignored), e.g. ``"C G Am F"`` or ``"| Dm7 | G7 | Cmaj7 | N |"``.

    Raises:
        ValueError: an empty loop or a symbol that is not a chord.
    """
    symbols = text.replace("|", " ").split()
    if not symbols:
        raise ValueError("a chord loop needs at least one chord, e.g. \"C G Am F\"")
    return tuple(symbol_pitch_classes(s) for s in symbols)


def loop_hints(loop: tuple[frozenset[int], ...], *, start_beat: float, bars: int,
               bar_length: float) -> tuple[ChordHint, ...]:
    """The hints of a chord loop (one chord a bar, bar ``b`` of the timeline taking chord
    ``b`` modulo the loop's length) for ``bars`` bars from the bar holding ``start_beat``."""
    if not loop:
        return ()
    first = math.floor(start_beat / bar_length + 1e-9)
    return tuple(ChordHint(bar * bar_length, tuple(sorted(loop[bar % len(loop)])))
                 for bar in range(max(first, 0), first + bars))
