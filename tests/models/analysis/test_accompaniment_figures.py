"""Accompaniment figures: consonance on strong beats, clusters, doubling."""

from __future__ import annotations

import pytest

from models.analysis.accompaniment import (
    accompaniment_figures,
    consonance,
    doubling,
    per_beat_texture,
    strong_beats,
)
from models.core.notes import Note

LEAD = [Note(0.0, 2.0, 76, 90), Note(2.0, 2.0, 74, 90)]  # E5 then D5


def test_strong_beats_are_bar_and_mid_bar_lines_in_even_meters() -> None:
    assert strong_beats((4, 4), 8.0) == [0.0, 2.0, 4.0, 6.0]
    assert strong_beats((3, 4), 6.0) == [0.0, 3.0]


def test_a_triad_under_the_melody_is_consonant_and_a_second_is_not() -> None:
    c_major = [Note(0.0, 2.0, p, 70) for p in (48, 55, 64)]  # C3 G3 E4 under E5
    assert consonance(LEAD, c_major, (4, 4)) == (3, 3)
    clash = [Note(2.0, 2.0, 63, 70)]  # E-flat 4 under D5: a minor ninth (11 mod 12)
    assert consonance(LEAD, clash, (4, 4)) == (0, 1)


def test_a_stacked_cluster_shows_in_polyphony_and_span() -> None:
    cluster = [Note(0.0, 1.0, p, 70) for p in (60, 67, 76, 77, 78, 81)]
    poly, span = per_beat_texture(cluster)
    assert poly == [6] and span == [21]
    arpeggio = [Note(i * 0.25, 0.25, p, 70) for i, p in enumerate((48, 52, 55, 60))]
    assert per_beat_texture(arpeggio) == ([1], [12])


def test_doubling_counts_the_same_pitch_at_the_same_onset() -> None:
    accompaniment = [Note(0.0, 1.0, 76, 70), Note(0.0, 1.0, 64, 70), Note(1.0, 1.0, 76, 70)]
    assert doubling(LEAD, accompaniment) == (1, 2)
    figures = accompaniment_figures([(LEAD, accompaniment)])
    assert figures["doubling"] == 1 / 3 and figures["notes_per_lead_note"] == 1.5


def test_each_pair_s_strong_beats_follow_its_own_metre() -> None:
    lead = [Note(0.0, 6.0, 74, 90)]
    clash = [Note(2.0, 1.0, 63, 70)]  # a minor ninth under D5, on beat 3 of the bar
    # 4/4: beat 3 (beat 2.0 from 0) is the mid-bar strong beat; 3/4 has none there.
    assert accompaniment_figures([(lead, clash)])["consonance"] == 0.0
    assert accompaniment_figures([(lead, clash)], signatures=[(3, 4)])["consonance"] is None
    with pytest.raises(ValueError, match="one time signature per pair"):
        accompaniment_figures([(lead, clash)], signatures=[])
