"""Two plain primes of the style evaluation, written as notes: a C-major phrase and a folk tune.

With Für Elise (``models.analysis.fur_elise``) they are the **neutral** primes: passages of
no particular style of the model's data, which every style is asked to continue, so that
what the continuation sounds like comes from the style token and not from a prime of
that style.

- ``c_major_notes``: two bars of 4/4 in C major, quarter notes up a scale and back to the
  tonic; the same phrase as the jam harness's ``c_major`` call
  (``engine.tools.jam.synthetic_calls``), so the two evaluations hear the same thing.
- ``folk_tune_notes``: "Greensleeves" (English, 16th century, public domain), the upbeat
  and its first four bars in 6/8, E minor as it is usually sung ("What Child Is This"),
  one unaccompanied line, our own transcription. It ends on the dominant (a half
  cadence), so it asks to be continued.

Bar 0 of the folk tune is its upbeat bar, as Für Elise's is, so that bar lines fall where
the score has them.
"""

from __future__ import annotations

from models.core.notes import Note
from models.core.pitch_names import parse_pitch

C_MAJOR_SIGNATURE = (4, 4)
C_MAJOR_BARS = 2
# The jam harness's phrase: its velocity, and notes held for 0.9 of their beat.
C_MAJOR_VELOCITY = 90
_C_MAJOR_PITCHES = ("C4", "D4", "E4", "F4", "G4", "E4", "F4", "C4")

FOLK_TUNE_SIGNATURE = (6, 8)
FOLK_TUNE_BARS = 5  # the upbeat bar and four full bars
FOLK_TUNE_VELOCITY = 80
_EIGHTH = 0.5  # beats (a beat is a quarter note)
_BAR = 3.0  # beats in a 6/8 bar

# (bar, onset in eighths within the bar, length in eighths, pitch name); bar 0 is the upbeat.
_GREENSLEEVES: tuple[tuple[int, float, float, str], ...] = (
    (0, 5, 1, "E4"),
    (1, 0, 2, "G4"), (1, 2, 1, "A4"), (1, 3, 1.5, "B4"), (1, 4.5, 0.5, "C5"), (1, 5, 1, "B4"),
    (2, 0, 2, "A4"), (2, 2, 1, "F#4"), (2, 3, 1.5, "D4"), (2, 4.5, 0.5, "E4"), (2, 5, 1, "F#4"),
    (3, 0, 2, "G4"), (3, 2, 1, "E4"), (3, 3, 1.5, "E4"), (3, 4.5, 0.5, "D#4"), (3, 5, 1, "E4"),
    (4, 0, 2, "F#4"), (4, 2, 1, "D#4"), (4, 3, 3, "B3"),
)


def c_major_notes() -> list[Note]:
    """The plain C-major phrase: two bars of quarter notes, C D E F | G E F C."""
    return [Note(float(beat), 0.9, parse_pitch(name), C_MAJOR_VELOCITY)
            for beat, name in enumerate(_C_MAJOR_PITCHES)]


def folk_tune_notes() -> list[Note]:
    """Greensleeves: the upbeat and bars 1-4, in 6/8 (see the module docstring)."""
    return [Note(bar * _BAR + onset * _EIGHTH, length * _EIGHTH, parse_pitch(name),
                 FOLK_TUNE_VELOCITY) for bar, onset, length, name in _GREENSLEEVES]
