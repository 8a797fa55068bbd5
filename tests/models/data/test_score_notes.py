"""The one-pass score writer (``models.data.score_notes``) on a tiny quartet written for the
tests: ties joined, grace notes dropped, dynamics as velocities, meters and tempo kept,
repeats as notated; and the string quartets corpus uses it."""

from __future__ import annotations

from pathlib import Path

import pytest
import symusic

from models.data.corpus import Collection, _header
from models.data.data_root import NAMED_CORPORA
from models.data.roles import ACCOMPANIMENT, LEAD, RULE_FIRST_PART
from models.data.scores import SCORE_WRITER_MUSIC21, SCORE_WRITER_NOTES, convert_unit

music21 = pytest.importorskip("music21", reason="scores are parsed by music21 (train extra)")

from models.data.score_notes import TICKS_PER_QUARTER, score_to_symusic  # noqa: E402

QUARTET = Path(__file__).resolve().parents[2] / "fixtures" / "scores" / "quartet.musicxml"
Q = TICKS_PER_QUARTER


@pytest.fixture(scope="module")
def quartet() -> symusic.Score:
    return score_to_symusic(music21.converter.parse(str(QUARTET)))


def _notes(track: symusic.Track) -> list[tuple[int, int, int]]:
    return [(n.time, n.duration, n.pitch) for n in track.notes]


def test_one_track_per_part_in_score_order(quartet):
    assert [t.name for t in quartet.tracks] == ["Violin I", "Violin II", "Viola", "Violoncello"]


def test_a_tie_over_the_bar_line_is_one_note_and_a_grace_note_is_dropped(quartet):
    # G4 A4 (the grace B4 between them has no duration), C5 half tied to a quarter, E5 D5;
    # the repeated first bar is played once, as notated.
    assert _notes(quartet.tracks[0]) == [(0, Q, 67), (Q, Q, 69), (2 * Q, 3 * Q, 72),
                                         (5 * Q, Q, 76), (6 * Q, Q, 74)]


def test_only_the_tied_member_of_a_chord_is_held(quartet):
    # E4-G4 half chord, E4 tied into a dotted half: G4 stops at the bar line.
    assert sorted(_notes(quartet.tracks[1])) == [(0, 2 * Q, 64), (2 * Q, 2 * Q, 67),
                                                 (2 * Q, 5 * Q, 64)]


def test_dynamics_become_velocities_like_music21s(quartet):
    first = [n.velocity for n in quartet.tracks[0].notes]
    assert first[:3] == [64, 64, 64] and first[3:] == [127, 127]  # p, then f
    assert {n.velocity for n in quartet.tracks[2].notes} == {90}  # no mark: music21's 90


def test_meters_and_tempo_are_kept(quartet):
    assert [(t.time, t.numerator, t.denominator) for t in quartet.time_signatures] == [
        (0, 4, 4), (4 * Q, 3, 4)]
    assert len(quartet.tempos) == 1 and round(quartet.tempos[0].qpm) == 90


def test_a_quartet_converts_with_the_first_violin_leading(tmp_path: Path):
    unit = {"source": "quartet.musicxml", "path": str(QUARTET), "kind": "score",
            "out_root": str(tmp_path), "midi": "quartet", "rule": RULE_FIRST_PART,
            "style": "classical", "score_writer": SCORE_WRITER_NOTES}
    [record] = convert_unit(unit)
    assert record["error"] is None and record["roles"] == [LEAD, ACCOMPANIMENT]
    assert record["notes"] == 5 + 3 + 2 + 2
    written = symusic.Score(str(tmp_path / record["midi"]))
    lead = next(t for t in written.tracks if t.name == LEAD)
    assert [n.pitch for n in lead.notes] == [67, 69, 72, 76, 74]


def test_the_quartets_corpus_uses_the_one_pass_writer_and_its_cache_says_so():
    quartets = NAMED_CORPORA["quartets"].collection()
    assert quartets.score_writer == SCORE_WRITER_NOTES
    assert _header(quartets, {})["score_writer"] == SCORE_WRITER_NOTES
    # Collections on music21's writer keep the header their caches were written with.
    assert "score_writer" not in _header(Collection("x", "y"), {})
    assert Collection("x", "y").score_writer == SCORE_WRITER_MUSIC21
