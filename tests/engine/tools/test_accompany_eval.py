"""``melody accompany-eval``'s chord agreement on a tiny POP909-shaped song folder."""

from __future__ import annotations

from pathlib import Path

import symusic

from engine.tools.accompany_eval import (
    Segment,
    chord_figures,
    format_chord_rows,
    held_out_names,
    pop909_root,
)
from models.core.notes import ACCOMPANIMENT, LEAD, Note

# C for the first bar of 4/4, then G: a triad per bar, played from beat 4 of the file
# (the segment starts there), at 60 BPM so a second is a beat.
C_TRIAD, G_TRIAD = (48, 52, 55), (43, 47, 50)


def _song(root: Path) -> Path:
    song = root / "songs" / "007"
    song.mkdir(parents=True)
    score = symusic.Score(480)
    score.tempos.append(symusic.Tempo(0, 60.0))
    melody, piano = symusic.Track("MELODY"), symusic.Track("PIANO")
    for beat, triad in ((4, C_TRIAD), (8, G_TRIAD)):
        piano.notes.extend(symusic.Note(beat * 480, 4 * 480, p, 70) for p in triad)
        melody.notes.append(symusic.Note(beat * 480, 4 * 480, triad[0] + 24, 90))
    score.tracks.extend([melody, piano])
    score.dump_midi(str(song / "007.mid"))
    (song / "chord_midi.txt").write_text("0\t4\tN\n4\t8\tC:maj\n8\t12\tG:maj\n")
    (song / "beat_midi.txt").write_text("".join(f"{b}.0 0 0\n" for b in range(12)))
    return song


def _segment(accompaniment: list[Note], piece: str = "pop909:pop909/007/007.mid") -> Segment:
    lead = [Note(0.0, 4.0, 72, 90, LEAD), Note(4.0, 4.0, 67, 90, LEAD)]
    return Segment(lead, accompaniment, (4, 4), piece, 4.0)


def test_chord_figures_score_the_real_piano_high_and_its_control_low(tmp_path: Path) -> None:
    _song(tmp_path)
    real = [Note(0.0, 4.0, p, 70, ACCOMPANIMENT) for p in C_TRIAD] + [
        Note(4.0, 4.0, p, 70, ACCOMPANIMENT) for p in G_TRIAD]
    wrong = [Note(0.0, 8.0, 61, 70, ACCOMPANIMENT)]  # C-sharp under C and G: no chord tone
    figures = chord_figures([_segment(real)], [wrong], tmp_path, bars=2)
    assert figures is not None
    assert figures["pieces"] == 1 and figures["beats"] == 8
    assert figures["real"] == 1.0 and figures["real_piano"] == 1.0
    assert figures["melodyd"] == 0.0
    assert figures["piano_transposed"] < 0.3
    assert "chord agreement (POP909 labels)" in format_chord_rows([{"style": "pop",
                                                                    **figures}])


def test_chord_figures_skip_pieces_without_labels(tmp_path: Path) -> None:
    _song(tmp_path)
    other = _segment([Note(0.0, 1.0, 60, 70)], piece="lieder:lieder/lc1.mid")
    assert chord_figures([other], [[]], tmp_path, bars=2) is None
    assert chord_figures([_segment([])], [[]], None, bars=2) is None


def test_held_out_names_follow_the_transposed_copies() -> None:
    manifest = {"splits": {"test": {"pieces": ["a", "b"], "transpositions": [[0], [0, 2]]}}}
    assert held_out_names(manifest) == [("a", 0), ("b", 0), ("b", 2)]


def test_the_pop909_folder_is_the_option_else_the_data_root(tmp_path: Path) -> None:
    (tmp_path / "pop909").mkdir()
    assert pop909_root(tmp_path / "pop909", "") == tmp_path / "pop909"
    assert pop909_root(None, str(tmp_path)) == tmp_path / "pop909"
    assert pop909_root(tmp_path / "missing", "") is None
