"""The opening of Beethoven's "Für Elise" (WoO 59), written from the score as notes.

The style evaluation continues this prime in every style, after the study melodyd grew
from. The piece is in the public domain; the note list below is our own transcription of
the upbeat and bars 1-8 (first ending, which closes with the upbeat of the repeat) in
3/8, right-hand melody and left-hand arpeggios, at score durations (no pedal).

Bar 0 is the incomplete upbeat bar, so that bar lines fall where the score has them:
the first sounding note is at beat 1.0 and bar 1 starts at beat 1.5.

Regenerate the committed fixture with::

    python -m models.analysis.fur_elise tests/fixtures/fur_elise_opening.mid
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from models.core.notes import Note
from models.core.pitch_names import parse_pitch
from models.data.midifile import write_midi

TIME_SIGNATURE = (3, 8)
# "Poco moto": a calm quarter note of about 72 per minute (a bar lasts 1.25 s).
TEMPO = 72.0
SIXTEENTH = 0.25  # beats
BAR = 1.5  # beats in a 3/8 bar
RIGHT_VELOCITY = 72
LEFT_VELOCITY = 56

_MOTIF = ((0, 1, "E5"), (1, 1, "D#5"), (2, 1, "E5"), (3, 1, "B4"), (4, 1, "D5"), (5, 1, "C5"))

# (bar, sixteenth in the bar, length in sixteenths, pitch name); bar 0 is the upbeat.
RIGHT_HAND: tuple[tuple[int, int, int, str], ...] = (
    (0, 4, 1, "E5"), (0, 5, 1, "D#5"),
    *((1, s, n, p) for s, n, p in _MOTIF),
    (2, 0, 2, "A4"), (2, 3, 1, "C4"), (2, 4, 1, "E4"), (2, 5, 1, "A4"),
    (3, 0, 2, "B4"), (3, 3, 1, "E4"), (3, 4, 1, "G#4"), (3, 5, 1, "B4"),
    (4, 0, 2, "C5"), (4, 3, 1, "E4"), (4, 4, 1, "E5"), (4, 5, 1, "D#5"),
    *((5, s, n, p) for s, n, p in _MOTIF),
    (6, 0, 2, "A4"), (6, 3, 1, "C4"), (6, 4, 1, "E4"), (6, 5, 1, "A4"),
    (7, 0, 2, "B4"), (7, 3, 1, "E4"), (7, 4, 1, "C5"), (7, 5, 1, "B4"),
    # First ending: the cadence on A, then the upbeat that leads back into bar 1.
    (8, 0, 2, "A4"), (8, 4, 1, "E5"), (8, 5, 1, "D#5"),
)

_TONIC = ("A2", "E3", "A3")
_DOMINANT = ("E2", "E3", "G#3")
LEFT_HAND: tuple[tuple[int, int, int, str], ...] = tuple(
    (bar, step, 1, pitch)
    for bar, chord in ((2, _TONIC), (3, _DOMINANT), (4, _TONIC),
                       (6, _TONIC), (7, _DOMINANT), (8, _TONIC))
    for step, pitch in enumerate(chord))

# Bars 0-8: the upbeat bar and eight full bars.
NUM_BARS = 9


def _to_notes(events: Sequence[tuple[int, int, int, str]], velocity: int) -> list[Note]:
    return [Note(bar * BAR + step * SIXTEENTH, length * SIXTEENTH, parse_pitch(name), velocity)
            for bar, step, length, name in events]


def fur_elise_notes() -> list[Note]:
    """Both hands of the opening, sorted by onset then pitch."""
    notes = _to_notes(RIGHT_HAND, RIGHT_VELOCITY) + _to_notes(LEFT_HAND, LEFT_VELOCITY)
    return sorted(notes, key=lambda n: (n.onset, n.pitch))


def write_fur_elise(path: str | Path) -> Path:
    """Write the opening as a one-track piano MIDI file in 3/8.

    Raises:
        DataError: the file cannot be written.
    """
    return write_midi(path, fur_elise_notes(), time_signature=TIME_SIGNATURE, tempo=TEMPO)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m models.analysis.fur_elise OUT.mid``: (re)write the fixture."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="MIDI file to write")
    args = parser.parse_args(argv)
    write_fur_elise(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
