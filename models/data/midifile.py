"""Read and write MIDI files as beat-timed ``Note``s (the offline tools' file format).

All tracks except drums are merged into one list, like the tokenizer's piano reduction,
so what ``melody plot`` draws and what the evaluation measures is what a model sees.

Torch-free: symusic only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import symusic

from models.core.exceptions import DataError
from models.core.meter import bar_length
from models.core.notes import Note

logger = logging.getLogger(__name__)

# File names read as MIDI, compared in lower case (".Midi" and ".MID" are MIDI too).
# ".kar" karaoke files are Standard MIDI Files with lyric events (read, lyrics ignored);
# ".rmi" files wrap one in a RIFF "RMID" container (unwrapped by ``smf_bytes``).
MIDI_SUFFIXES = (".mid", ".midi", ".kar", ".rmi")
# Ticks per quarter note of the files we write: divisible by 3 and 4 (triplets, sixteenths).
_TICKS_PER_QUARTER = 480
# Marker text that says where generated notes start after a prime (read by `melody plot`).
CONTINUATION_MARKER = "continuation"


@dataclass(frozen=True)
class MidiNotes:
    """The notes of a MIDI file on a beat timeline.

    Attributes:
        notes: every non-drum note, sorted by onset then pitch.
        time_signature: ``(numerator, denominator)`` of the first time signature (4/4 if none).
        tempo: quarter notes per minute of the first tempo event (120 if none).
        markers: ``(beat, text)`` of the file's marker events, e.g. where a continuation
            starts (``CONTINUATION_MARKER``).
    """

    notes: tuple[Note, ...]
    time_signature: tuple[int, int] = (4, 4)
    tempo: float = 120.0
    markers: tuple[tuple[float, str], ...] = ()

    @property
    def bar_length(self) -> float:
        """Length of one bar in quarter-note beats."""
        return bar_length(self.time_signature)


def is_midi_name(path: str | Path) -> bool:
    """Whether a file name has one of ``MIDI_SUFFIXES``, in any letter case."""
    return Path(path).suffix.lower() in MIDI_SUFFIXES


def smf_bytes(data: bytes) -> bytes | None:
    """The Standard MIDI File in ``data``, or ``None`` when ``data`` holds none.

    That is ``data`` itself when it starts with ``MThd``, or the ``data`` chunk of a RIFF
    ``RMID`` file (which symusic does not unwrap by itself).
    """
    if data.startswith(b"MThd"):
        return data
    if not (data.startswith(b"RIFF") and data[8:12] == b"RMID"):
        return None
    offset = 12
    while offset + 8 <= len(data):
        chunk, size = data[offset:offset + 4], int.from_bytes(data[offset + 4:offset + 8], "little")
        if chunk == b"data":
            inner = data[offset + 8:offset + 8 + size]
            return inner if inner.startswith(b"MThd") else None
        offset += 8 + size + (size & 1)  # RIFF chunks are padded to an even length
    return None


def score_from_bytes(data: bytes, source: str = "MIDI data") -> symusic.Score:
    """Parse MIDI bytes into a symusic score, whatever the file was called.

    symusic picks its parser from the file name's suffix and refuses ``.Midi`` or ``.kar``
    ("Unknown file format"), so files are always parsed from their bytes.

    Raises:
        DataError: not a MIDI file, a file symusic cannot parse, or a header whose time
            division is 0 ticks per quarter note (every beat position would divide by it).
    """
    smf = smf_bytes(data)
    if smf is None:
        raise DataError(f"{source} is not a MIDI file (starts with {data[:4]!r}, "
                        f"not MThd or RIFF RMID)")
    try:
        score = symusic.Score.from_midi(smf)
    except (RuntimeError, ValueError) as err:  # symusic's errors on malformed files
        raise DataError(f"cannot parse {source}: {err}"[:300]) from err
    if score.ticks_per_quarter <= 0:
        raise DataError(f"{source} has {score.ticks_per_quarter} ticks per quarter note "
                        f"in its header (must be at least 1)")
    return score


def load_score(path: str | Path) -> symusic.Score:
    """Read a MIDI file (any suffix, plain or RIFF RMID) into a symusic score.

    Raises:
        DataError: the file is missing or unreadable, or ``score_from_bytes`` refuses it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"MIDI file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read MIDI file {path}: {err}") from err
    return score_from_bytes(data, f"MIDI file {path}")


def read_midi(path: str | Path) -> MidiNotes:
    """Read a MIDI file into beat-timed notes.

    Raises:
        DataError: the file is missing or is not a readable MIDI file.
    """
    score = load_score(path)
    tpq = score.ticks_per_quarter
    notes = [Note(n.time / tpq, max(n.duration, 1) / tpq, n.pitch, max(1, n.velocity))
             for track in score.tracks if not track.is_drum for n in track.notes]
    notes.sort(key=lambda n: (n.onset, n.pitch))
    signature = (4, 4)
    if len(score.time_signatures):
        first = score.time_signatures[0]
        signature = (int(first.numerator), int(first.denominator))
    tempo = float(score.tempos[0].qpm) if len(score.tempos) else 120.0
    markers = tuple((m.time / tpq, str(m.text)) for m in score.markers)
    return MidiNotes(tuple(notes), signature, tempo, markers)


def continuation_beat(midi: MidiNotes) -> float | None:
    """Beat of the first ``CONTINUATION_MARKER`` of a file, or ``None``."""
    for beat, text in midi.markers:
        if text.strip().lower() == CONTINUATION_MARKER:
            return beat
    return None


def write_midi(path: str | Path, notes: Iterable[Note], *,
               time_signature: tuple[int, int] = (4, 4), tempo: float = 120.0,
               tracks: Iterable[tuple[str, Iterable[Note]]] = (),
               markers: Iterable[tuple[float, str]] = ()) -> Path:
    """Write notes (onset >= 0) as a piano MIDI file.

    Args:
        path: the file to write; parent folders are created.
        notes: notes of the first track (named "notes").
        time_signature: ``(numerator, denominator)`` written at tick 0.
        tempo: quarter notes per minute.
        tracks: further ``(name, notes)`` tracks, e.g. a prime and its continuation.
        markers: ``(beat, text)`` marker events, e.g. ``(12.0, CONTINUATION_MARKER)``.

    Raises:
        DataError: the file cannot be written.
    """
    path = Path(path)
    score = symusic.Score(_TICKS_PER_QUARTER)
    score.tempos.append(symusic.Tempo(0, qpm=float(tempo)))
    score.time_signatures.append(symusic.TimeSignature(0, *time_signature))
    for beat, text in markers:
        score.markers.append(symusic.TextMeta(max(0, round(beat * _TICKS_PER_QUARTER)), text))
    for name, track_notes in (("notes", notes), *tracks):
        track = symusic.Track(name=name, program=0, is_drum=False)
        for note in sorted(track_notes, key=lambda n: (n.onset, n.pitch)):
            start = max(0, round(note.onset * _TICKS_PER_QUARTER))
            length = max(1, round(note.duration * _TICKS_PER_QUARTER))
            track.notes.append(symusic.Note(start, length, int(note.pitch), int(note.velocity)))
        if len(track.notes):
            score.tracks.append(track)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        score.dump_midi(str(path))
    except (RuntimeError, OSError) as err:
        raise DataError(f"cannot write MIDI file {path}: {err}") from err
    return path
