"""POP909 chord labels, in beats, and how well an accompaniment agrees with them.

POP909 (``songs/NNN/``) labels each song's chords in ``chord_midi.txt``: one line per span,
``start_seconds<TAB>end_seconds<TAB>label``, with labels in Harte's syntax as POP909 uses
it: ``ROOT:QUALITY`` with an optional inversion ``/DEGREE`` (``B:maj``, ``F#:min7``,
``F#:maj7/5``, ``Bb:sus4(b7)``), and ``N`` for no chord. ``beat_midi.txt`` holds the time
of every beat in its first column. Both count seconds of the song's MIDI file, so its tempo
map turns them into the beats (quarter notes from the file's start) that melodyd's tokens
count (a dataset piece's note at tick ``t`` sits at beat ``t / ticks_per_quarter``).

The labels' pitch classes come from ``models.core.chords`` (one table of qualities for
these labels and for the chord symbols a musician types).

**Chord agreement**: at each beat of the song (``beat_midi.txt``), a little after the beat
(``SAMPLE_DELAY``, so that a note quantized onto the 1/12-beat grid just after it counts),
the distinct pitch classes of the accompaniment sounding there; the share of them that
are tones of the chord labelled there. Beats labelled ``N``, or with no chord label, or
with nothing sounding, are skipped.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from models.core.chords import chord_pitch_classes
from models.core.notes import Note

# How far after a beat the accompaniment is read (beats): more than half of the tokens'
# 1/12-beat grid, so a note the tokenizer moved just after the beat is still "on" it.
SAMPLE_DELAY = 1 / 12
_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class ChordSpan:
    """One labelled span: ``start`` to ``end`` (seconds or beats), its label and tones."""

    start: float
    end: float
    label: str
    pitch_classes: frozenset[int]

    @property
    def is_chord(self) -> bool:
        """False for ``N`` (no chord)."""
        return bool(self.pitch_classes)


def parse_chord_lines(lines: Iterable[str]) -> list[ChordSpan]:
    """Spans of ``start<TAB>end<TAB>label`` lines (blank lines ignored), sorted by start.

    Raises:
        ValueError: a malformed line or an unknown label (with its line number).
    """
    spans = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 3:
                raise ValueError(f"expected 3 fields, found {len(fields)}")
            start, end = float(fields[0]), float(fields[1])
            spans.append(ChordSpan(start, end, fields[2], chord_pitch_classes(fields[2])))
        except ValueError as err:
            raise ValueError(f"line {number}: {err}: {line.rstrip()!r}") from err
    return sorted(spans, key=lambda s: s.start)


def read_chord_file(path: str | Path) -> list[ChordSpan]:
    """The spans of a POP909 ``chord_midi.txt`` (in seconds)."""
    return parse_chord_lines(Path(path).read_text().splitlines())


def read_beat_times(path: str | Path) -> list[float]:
    """The beat times (seconds, first column) of a POP909 ``beat_midi.txt``."""
    return [float(line.split()[0]) for line in Path(path).read_text().splitlines()
            if line.strip()]


# A tempo map: (beat where a tempo starts, seconds per beat from there), sorted by beat.
TempoMap = list[tuple[float, float]]


def tempo_map(midi_path: str | Path) -> TempoMap:
    """The tempo map of a MIDI file, in beats (quarter notes) and seconds per beat.

    A file without tempo events plays at MIDI's default 120 BPM.
    """
    import symusic  # noqa: PLC0415 - symusic only where files are read

    score = symusic.Score(str(midi_path))
    tpq = score.ticks_per_quarter
    changes = [(t.time / tpq, t.mspq / 1e6) for t in score.tempos]
    if not changes or changes[0][0] > 0:
        changes.insert(0, (0.0, 0.5))
    merged: TempoMap = []
    for beat, seconds in changes:  # a later event at the same tick wins
        if merged and abs(merged[-1][0] - beat) < _EPS:
            merged[-1] = (beat, seconds)
        else:
            merged.append((beat, seconds))
    return merged


def seconds_to_beats(seconds: float, tempos: TempoMap) -> float:
    """The beat (quarter notes from the start) at a time in seconds, by a tempo map."""
    elapsed = 0.0
    beat, per_beat = tempos[0]
    for next_beat, next_per_beat in tempos[1:]:
        segment = (next_beat - beat) * per_beat
        if elapsed + segment > seconds:
            break
        elapsed += segment
        beat, per_beat = next_beat, next_per_beat
    return beat + (seconds - elapsed) / per_beat


@dataclasses.dataclass(frozen=True)
class SongChords:
    """A song's chord spans and beats, in beats from the start of its MIDI file."""

    spans: list[ChordSpan]
    beats: list[float]

    def window(self, first: float, end: float) -> SongChords:
        """The spans and beats between beats ``first`` and ``end``, moved to start at 0."""
        spans = [ChordSpan(max(s.start, first) - first, min(s.end, end) - first, s.label,
                           s.pitch_classes)
                 for s in self.spans if s.end > first and s.start < end]
        beats = [b - first for b in self.beats if first <= b < end]
        return SongChords(spans, beats)

    def chord_at(self, beat: float) -> ChordSpan | None:
        """The span sounding at ``beat`` (None outside every span)."""
        starts = [s.start for s in self.spans]
        index = bisect.bisect_right(starts, beat + _EPS) - 1
        if index >= 0 and self.spans[index].end > beat + _EPS:
            return self.spans[index]
        return None


def read_song_chords(song_dir: str | Path) -> SongChords:
    """A POP909 song folder's chords and beats, in the beats of its ``NNN.mid``.

    Raises:
        FileNotFoundError: the folder lacks ``NNN.mid``, ``chord_midi.txt`` or
            ``beat_midi.txt``.
    """
    folder = Path(song_dir)
    tempos = tempo_map(folder / f"{folder.name}.mid")
    spans = [ChordSpan(seconds_to_beats(s.start, tempos), seconds_to_beats(s.end, tempos),
                       s.label, s.pitch_classes)
             for s in read_chord_file(folder / "chord_midi.txt")]
    beats = [seconds_to_beats(t, tempos) for t in read_beat_times(folder / "beat_midi.txt")]
    return SongChords(spans, beats)


def pop909_song_dir(piece: str, pop909_root: str | Path) -> Path | None:
    """The POP909 song folder of a dataset piece name such as ``pop909:pop909/001/001.mid``.

    ``pop909_root`` is the folder holding ``songs/`` (or the ``songs`` folder itself).
    None when the name has no three-digit song number or the folder has no chord file.
    """
    match = re.search(r"(?:^|[/:])(\d{3})/\1\.mid$", piece)
    if not match:
        return None
    root = Path(pop909_root)
    for folder in (root / "songs" / match.group(1), root / match.group(1)):
        if (folder / "chord_midi.txt").is_file():
            return folder
    return None


def sounding_pitch_classes(notes: Sequence[Note], time: float) -> set[int]:
    """The distinct pitch classes of the notes sounding at ``time`` (beats)."""
    return {n.pitch % 12 for n in notes if n.onset <= time + _EPS and n.end > time + _EPS}


def chord_agreement(notes: Sequence[Note], chords: SongChords,
                    delay: float = SAMPLE_DELAY) -> tuple[int, int]:
    """(chord tones, pitch classes counted) over the beats of ``chords``.

    At each beat, ``delay`` beats after it, the distinct pitch classes of ``notes``
    sounding there are counted against the chord labelled there; beats without a chord
    (``N`` or unlabelled) or without a sounding note are skipped.
    """
    good = total = 0
    for beat in chords.beats:
        time = beat + delay
        span = chords.chord_at(time)
        if span is None or not span.is_chord:
            continue
        classes = sounding_pitch_classes(notes, time)
        good += len(classes & span.pitch_classes)
        total += len(classes)
    return good, total


def transposed(notes: Sequence[Note], semitones: int) -> list[Note]:
    """The notes moved by ``semitones`` (a control: a transposed part should agree less)."""
    return [dataclasses.replace(n, pitch=n.pitch + semitones) for n in notes]
