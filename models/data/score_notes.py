"""A parsed music21 score as a symusic score, in one pass over its notes.

music21's own MIDI writer (``score.write("midi")``) deep-copies the score, expands its
repeats and strips its ties with a search that grows with the square of a part's notes: a
whole string quartet (12,000 notes a part, all movements in one file) takes it over five
minutes, against about 1 s to parse. Here each part is flattened once and tied notes are
joined as they come (an open tie per pitch), so the same quartet takes seconds. music21
has no linear tie joiner, hence this module.

What it keeps: every pitched note and chord note at sounding pitch (transposing
instruments and octave lines undone by music21's ``toSoundingPitch``), tied notes as one,
velocities from the dynamics marks before each note (or the note's own), the time
signatures and tempo marks of the first part, one track per part named as the part, in
score order (the order roles are read from). What it drops: grace notes (no duration),
unpitched percussion, and repeats (a score is played as notated, once through).

Imported only by the conversion workers, like music21 itself.
"""

from __future__ import annotations

from typing import Any

import symusic

TICKS_PER_QUARTER = 480
# Velocities as music21's writer makes them, so that every corpus speaks the same
# dynamics: 90 before any mark, and a mark's volume scalar over mf's (0.7) of 127.
DEFAULT_VELOCITY = 90
_FULL_SCALAR = 0.7
DEFAULT_QPM = 120.0
# Two tied halves must meet to within this many quarter notes (float offsets).
_TIE_TOLERANCE = 1e-3


class _Ties:
    """Notes of one part still open at a tie, by MIDI pitch."""

    def __init__(self, track: symusic.Track) -> None:
        self.track = track
        self.open: dict[int, Any] = {}

    def add(self, start: float, end: float, pitch: int, velocity: int, tie: str | None) -> None:
        """One written note (quarter-note times); a continuation extends its open note."""
        held = self.open.get(pitch)
        if tie in ("continue", "stop") and held is not None and \
                abs(held.end_q - start) <= _TIE_TOLERANCE:
            held.end_q = end
            held.note.duration = _ticks(end) - held.note.time
            if tie == "stop":
                del self.open[pitch]
            return
        note = symusic.Note(_ticks(start), max(1, _ticks(end) - _ticks(start)), pitch, velocity)
        self.track.notes.append(note)
        if tie in ("start", "continue"):
            # symusic hands back a copy on append: keep the one inside the track.
            self.open[pitch] = _Held(self.track.notes[-1], end)
        else:
            self.open.pop(pitch, None)


class _Held:
    __slots__ = ("end_q", "note")

    def __init__(self, note: Any, end_q: float) -> None:
        self.note = note
        self.end_q = end_q


def _ticks(quarters: float) -> int:
    return round(quarters * TICKS_PER_QUARTER)


def _velocity(volume_scalar: float | None) -> int:
    if volume_scalar is None:
        return DEFAULT_VELOCITY
    return max(1, min(127, round(127 * volume_scalar / _FULL_SCALAR)))


def _part_track(part: Any, index: int) -> symusic.Track:
    """One part's notes as a track (ties joined, dynamics applied)."""
    from music21 import chord, dynamics, note  # noqa: PLC0415 - heavy, only in workers

    name = str(part.partName or part.id or f"part {index + 1}")
    track = symusic.Track(name=name, program=0, is_drum=False)
    ties = _Ties(track)
    velocity = DEFAULT_VELOCITY
    for element in part.flatten():
        if isinstance(element, dynamics.Dynamic):
            velocity = _velocity(element.volumeScalar)
            continue
        if not isinstance(element, (note.Note, chord.Chord)):
            continue
        length = float(element.duration.quarterLength)
        if element.duration.isGrace or length <= 0:
            continue
        start = float(element.offset)
        own = element.volume.velocity if element.volume is not None else None
        members = [element] if isinstance(element, note.Note) else list(element.notes)
        for member in members:
            tie = member.tie or element.tie
            ties.add(start, start + length, max(0, min(127, int(member.pitch.midi))),
                     own if own is not None else velocity, tie.type if tie else None)
    track.notes.sort()
    return track


def score_to_symusic(score: Any) -> symusic.Score:
    """A music21 score (or a single part) as a symusic score at 480 ticks a quarter.

    The score is put at sounding pitch in place. Raises whatever music21 raises on a score
    it cannot read (the caller records it as the piece's error).
    """
    from music21 import meter, stream, tempo  # noqa: PLC0415 - heavy, only in workers

    score.toSoundingPitch(inPlace=True)
    parts = list(score.parts) if isinstance(score, stream.Score) else []
    parts = parts or [score]
    out = symusic.Score(TICKS_PER_QUARTER)
    for index, part in enumerate(parts):
        track = _part_track(part, index)
        if len(track.notes):
            out.tracks.append(track)
    first = parts[0].flatten()
    seen: set[int] = set()
    for mark in first.getElementsByClass(meter.TimeSignature):
        time = _ticks(float(mark.offset))
        if time not in seen:
            seen.add(time)
            out.time_signatures.append(symusic.TimeSignature(time, mark.numerator,
                                                             mark.denominator))
    tempos = [(float(m.offset), m.getQuarterBPM())
              for m in first.getElementsByClass(tempo.MetronomeMark)]
    tempos = [(offset, qpm) for offset, qpm in tempos if qpm and qpm > 0]
    if not tempos or tempos[0][0] > 0:
        tempos.insert(0, (0.0, DEFAULT_QPM))
    for offset, qpm in tempos:
        out.tempos.append(symusic.Tempo(_ticks(offset), qpm=float(qpm)))
    return out
