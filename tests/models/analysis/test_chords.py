"""POP909 chord labels: parsing, seconds to beats, and chord agreement."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from models.analysis.chords import (
    SongChords,
    chord_agreement,
    parse_chord_lines,
    pop909_song_dir,
    read_song_chords,
    seconds_to_beats,
    transposed,
)
from models.core.chords import chord_pitch_classes
from models.core.notes import Note

# POP909 as this project's machines hold it (../shared/corpora from the project's root).
POP909 = Path(__file__).resolve().parents[3].parent / "shared" / "corpora" / "pop909"
needs_pop909 = pytest.mark.skipif(not (POP909 / "songs" / "001" / "chord_midi.txt").is_file(),
                                  reason=f"POP909 is not at {POP909}")


@pytest.mark.parametrize(("label", "tones"), [
    ("C:maj", {0, 4, 7}),
    ("B:maj", {11, 3, 6}),
    ("F#:min7", {6, 9, 1, 4}),
    ("Bb:sus4(b7)", {10, 3, 5, 8}),
    ("Eb:hdim7", {3, 6, 9, 1}),
    ("A:dim7", {9, 0, 3, 6}),
    ("G:aug", {7, 11, 3}),
    ("D:sus2", {2, 4, 9}),
    ("F:maj6", {5, 9, 0, 2}),
    ("F#:maj7/5", {6, 10, 1, 5}),   # the bass (the fifth) is a chord tone already
    ("C:maj/7", {0, 4, 7, 11}),      # a bass outside the triad joins the set
    ("A:min/b7", {9, 0, 4, 7}),
    ("N", set()),
])
def test_a_label_gives_its_pitch_classes(label: str, tones: set[int]) -> None:
    assert chord_pitch_classes(label) == frozenset(tones)


@pytest.mark.parametrize("label", ["H:maj", "C:weird", "C:maj/12"])
def test_an_unknown_label_is_refused(label: str) -> None:
    with pytest.raises(ValueError, match=r"not|unknown"):
        chord_pitch_classes(label)


def test_a_chord_file_parses_into_sorted_spans_and_names_a_bad_line() -> None:
    spans = parse_chord_lines(["2.0\t4.0\tG:7", "0.0\t2.0\tN", ""])
    assert [(s.start, s.end, s.label, s.is_chord) for s in spans] == [
        (0.0, 2.0, "N", False), (2.0, 4.0, "G:7", True)]
    with pytest.raises(ValueError, match="line 2"):
        parse_chord_lines(["0.0\t1.0\tC:maj", "1.0\tC:maj"])


def test_seconds_follow_the_tempo_map_across_a_change() -> None:
    tempos = [(0.0, 0.5), (4.0, 1.0)]  # 120 BPM for 4 beats (2 s), then 60 BPM
    assert seconds_to_beats(1.0, tempos) == pytest.approx(2.0)
    assert seconds_to_beats(2.0, tempos) == pytest.approx(4.0)
    assert seconds_to_beats(5.0, tempos) == pytest.approx(7.0)


# A tiny song: C for two beats, G for two, N for two, then F for two (beats 0..7).
CHORDS = SongChords(
    spans=parse_chord_lines(["0\t2\tC:maj", "2\t4\tG:maj", "4\t6\tN", "6\t8\tF:maj"]),
    beats=[float(b) for b in range(8)])
# The song's own accompaniment: a root-position triad per chord, held (and a stray
# clash on the N beats, which must not count).
FITTING = ([Note(0.0, 2.0, p, 70) for p in (48, 64, 67)]
           + [Note(2.0, 2.0, p, 70) for p in (43, 59, 62)]
           + [Note(4.0, 2.0, 61, 70)]
           + [Note(6.0, 2.0, p, 70) for p in (41, 57, 60)])


def test_the_fitting_accompaniment_agrees_and_a_transposed_one_does_not() -> None:
    good, total = chord_agreement(FITTING, CHORDS)
    assert (good, total) == (18, 18)  # 6 chord beats x 3 pitch classes; N beats skipped
    good, total = chord_agreement(transposed(FITTING, 6), CHORDS)
    assert total == 18 and good / total < 0.3  # a tritone away: (almost) nothing fits
    good, total = chord_agreement(transposed(FITTING, 1), CHORDS)
    assert good / total < 0.3


def test_random_notes_agree_about_as_often_as_chance() -> None:
    rng = random.Random(3)
    notes = [Note(i * 0.5, 0.5, rng.randrange(36, 84), 70) for i in range(16)]
    good, total = chord_agreement(notes, CHORDS)
    assert total > 0 and good / total < 0.6  # chance is 3 of 12 pitch classes


def test_a_note_on_the_quantized_grid_just_after_the_beat_counts_on_that_beat() -> None:
    late_g = [Note(2.0 + 1 / 24, 1.9, 55, 70)]  # G, moved 1/24 beat late by quantization
    assert chord_agreement(late_g, CHORDS) == (2, 2)  # beats 2 and 3, both under G


def test_a_window_moves_spans_and_beats_to_its_start() -> None:
    window = CHORDS.window(2.0, 6.0)
    assert [(s.start, s.end, s.label) for s in window.spans] == [(0.0, 2.0, "G:maj"),
                                                                (2.0, 4.0, "N")]
    assert window.beats == [0.0, 1.0, 2.0, 3.0]
    assert window.chord_at(1.5) is not None and window.chord_at(1.5).label == "G:maj"


def test_a_dataset_piece_name_finds_its_song_folder(tmp_path: Path) -> None:
    song = tmp_path / "songs" / "042"
    song.mkdir(parents=True)
    (song / "chord_midi.txt").write_text("0\t1\tC:maj\n")
    assert pop909_song_dir("pop909:pop909/042/042.mid", tmp_path) == song
    assert pop909_song_dir("pop909:pop909/043/043.mid", tmp_path) is None
    assert pop909_song_dir("lieder:lieder/lc1.mid", tmp_path) is None


@needs_pop909
def test_a_real_pop909_piano_part_agrees_with_its_labels_and_transposed_it_does_not() -> None:
    import symusic  # noqa: PLC0415

    song = POP909 / "songs" / "001"
    chords = read_song_chords(song)
    # The labels change on the song's beats: the tempo map puts both on the same grid.
    starts = [s.start for s in chords.spans]
    assert all(min(abs(s - b) for b in chords.beats) < 0.01 for s in starts)
    score = symusic.Score(str(song / "001.mid"))
    tpq = score.ticks_per_quarter
    piano = next(t for t in score.tracks if t.name.strip().upper() == "PIANO")
    notes = [Note(n.time / tpq, n.duration / tpq, n.pitch, n.velocity) for n in piano.notes]
    good, total = chord_agreement(notes, chords)
    assert total > 200 and good / total > 0.7
    good, total = chord_agreement(transposed(notes, 6), chords)
    assert good / total < 0.3
