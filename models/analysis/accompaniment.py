"""How an accompaniment sits under its lead: consonance, clusters, doubling, density.

The figures of issue 17's evaluation, computed the same way for a generated
accompaniment and for the real one of the same melody (``engine.tools.accompany_eval``):

- **consonance**: at each strong beat (every bar line, and mid-bar in even meters), the
  share of accompaniment notes sounding there whose interval to the lead's top sounding
  note is consonant (unison/octave, thirds, fourth, fifth, sixths, mod 12);
- **polyphony** and **span** per beat: the most accompaniment notes sounding at once
  within a beat, and the distance from its lowest to its highest pitch (a stacked
  cluster shows as both high);
- **doubling**: the share of accompaniment notes starting with a lead note on the same
  pitch (and, looser, on the same pitch class);
- **density**: accompaniment notes per lead note.

Written by hand (a few lines of interval arithmetic no library packages as such).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from models.core.meter import bar_length
from models.core.notes import Note

# Intervals (semitones mod 12) heard as consonant between a melody and a note under it.
CONSONANT = frozenset({0, 3, 4, 5, 7, 8, 9})
_EPS = 1e-6


def _sounding(notes: Sequence[Note], time: float) -> list[Note]:
    return [n for n in notes if n.onset <= time + _EPS and n.end > time + _EPS]


def strong_beats(time_signature: tuple[int, int], end: float) -> list[float]:
    """Bar lines, and mid-bar lines when the numerator is even, up to ``end`` beats."""
    length = bar_length(time_signature)
    marks = [0.0] + ([length / 2] if time_signature[0] % 2 == 0 else [])
    return [bar * length + mark for bar in range(math.ceil(end / length))
            for mark in marks if bar * length + mark < end]


def consonance(lead: Sequence[Note], accompaniment: Sequence[Note],
               time_signature: tuple[int, int]) -> tuple[int, int]:
    """(consonant, counted) accompaniment notes against the lead's top note, strong beats."""
    end = max((n.end for n in (*lead, *accompaniment)), default=0.0)
    good = total = 0
    for time in strong_beats(time_signature, end):
        melody = _sounding(lead, time)
        if not melody:
            continue
        top = max(n.pitch for n in melody)
        for note in _sounding(accompaniment, time):
            total += 1
            good += (top - note.pitch) % 12 in CONSONANT
    return good, total


def per_beat_texture(notes: Sequence[Note], beat: float = 1.0) -> tuple[list[int], list[int]]:
    """Per beat with notes: the most notes sounding at once, and the pitch span."""
    if not notes:
        return [], []
    end = max(n.end for n in notes)
    poly, span = [], []
    for index in range(math.ceil(end / beat)):
        start, stop = index * beat, (index + 1) * beat
        inside = [n for n in notes if n.onset < stop - _EPS and n.end > start + _EPS]
        if not inside:
            continue
        moments = {max(start, n.onset) for n in inside}
        poly.append(max(len(_sounding(inside, t)) for t in moments))
        span.append(max(n.pitch for n in inside) - min(n.pitch for n in inside))
    return poly, span


def doubling(lead: Sequence[Note], accompaniment: Sequence[Note]) -> tuple[int, int]:
    """(same pitch, same pitch class) accompaniment notes starting with a lead note."""
    starts: dict[int, set[int]] = {}
    for note in lead:
        starts.setdefault(round(note.onset * 48), set()).add(note.pitch)
    same = same_class = 0
    for note in accompaniment:
        pitches = starts.get(round(note.onset * 48), set())
        same += note.pitch in pitches
        same_class += any((note.pitch - p) % 12 == 0 for p in pitches)
    return same, same_class


def accompaniment_figures(pairs: Sequence[tuple[Sequence[Note], Sequence[Note]]],
                          time_signature: tuple[int, int] = (4, 4), *,
                          signatures: Sequence[tuple[int, int]] | None = None,
                          ) -> dict[str, Any]:
    """The figures over (lead, accompaniment) pairs, pooled note by note and beat by beat.

    ``signatures``: each pair's own time signature (where its strong beats are); without
    it, every pair is in ``time_signature``.
    """
    if signatures is not None and len(signatures) != len(pairs):
        raise ValueError(f"one time signature per pair: {len(pairs)} pairs, "
                         f"{len(signatures)} signatures")
    meters = list(signatures) if signatures is not None else [time_signature] * len(pairs)
    good = counted = same = same_class = acc_notes = lead_notes = 0
    poly: list[int] = []
    span: list[int] = []
    for (lead, accompaniment), meter in zip(pairs, meters, strict=True):
        g, c = consonance(lead, accompaniment, meter)
        good, counted = good + g, counted + c
        p, s = per_beat_texture(accompaniment)
        poly += p
        span += s
        d, dc = doubling(lead, accompaniment)
        same, same_class = same + d, same_class + dc
        acc_notes += len(accompaniment)
        lead_notes += len(lead)
    return {
        "pieces": len(pairs),
        "consonance": good / counted if counted else None,
        "polyphony_p95": float(np.percentile(poly, 95)) if poly else None,
        "span_p95": float(np.percentile(span, 95)) if span else None,
        "doubling": same / acc_notes if acc_notes else None,
        "pc_doubling": same_class / acc_notes if acc_notes else None,
        "notes_per_lead_note": acc_notes / lead_notes if lead_notes else None,
    }
