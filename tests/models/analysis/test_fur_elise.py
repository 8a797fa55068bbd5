"""The Für Elise fixture: parses, starts as the score does, and is reproducible."""

from __future__ import annotations

from pathlib import Path

from models.analysis.fur_elise import fur_elise_notes, write_fur_elise
from models.core.pitch_names import parse_pitch, pitch_name
from models.core.tonality import estimate_key
from models.data.midifile import read_midi

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "fur_elise_opening.mid"


def _right_hand(notes: list) -> list:
    return [n for n in notes if n.pitch >= parse_pitch("C4")]


def test_fixture_parses_with_the_expected_opening() -> None:
    midi = read_midi(FIXTURE)
    assert midi.time_signature == (3, 8)
    melody = [pitch_name(n.pitch) for n in _right_hand(list(midi.notes))[:9]]
    assert melody == ["E5", "D#5", "E5", "D#5", "E5", "B4", "D5", "C5", "A4"]
    first = midi.notes[0]
    assert (first.onset, first.duration) == (1.0, 0.25)  # the upbeat: last two 16ths of bar 0
    # Bar 2 starts with the left hand's A2 under the melody's A4.
    assert [pitch_name(n.pitch) for n in midi.notes if n.onset == 3.0] == ["A2", "A4"]


def test_fixture_is_in_a_minor_and_nine_bars_long() -> None:
    midi = read_midi(FIXTURE)
    key = estimate_key(midi.notes)
    assert key is not None and key.name == "A minor"
    assert max(n.end for n in midi.notes) == 9 * midi.bar_length


def test_fixture_matches_its_generator(tmp_path: Path) -> None:
    again = read_midi(write_fur_elise(tmp_path / "again.mid"))
    assert again.notes == read_midi(FIXTURE).notes
    assert len(again.notes) == len(fur_elise_notes())
