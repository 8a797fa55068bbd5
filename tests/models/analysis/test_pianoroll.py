"""`melody plot`: a PNG of the asked size, prime and continuation told apart."""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

import pytest

from models.analysis import plot_cli
from models.analysis.pianoroll import CONTINUATION_COLOUR, PRIME_COLOUR, draw_piano_roll
from models.core.commands import run_command
from models.core.notes import Note
from models.data.midifile import CONTINUATION_MARKER, continuation_beat, read_midi, write_midi

pytest.importorskip("matplotlib", reason="matplotlib (the train extra) draws piano rolls")

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "fur_elise_opening.mid"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _args(midi: Path, output: Path, **extra: object) -> argparse.Namespace:
    values = {"midi": midi, "output": output, "prime_bars": None, "split_beat": None,
              "title": None, "width": 1200, "height": 500}
    values.update(extra)
    return argparse.Namespace(**values)


def test_plot_writes_png_of_the_asked_size(tmp_path: Path) -> None:
    out = tmp_path / "roll.png"
    assert run_command(plot_cli, _args(FIXTURE, out, prime_bars=5, width=900, height=400)) == 0
    assert _png_size(out) == (900, 400)


def test_plot_reads_the_continuation_marker(tmp_path: Path) -> None:
    notes = [Note(i * 0.5, 0.5, 60 + i, 80) for i in range(16)]
    midi = write_midi(tmp_path / "gen.mid", notes, markers=[(4.0, CONTINUATION_MARKER)])
    assert continuation_beat(read_midi(midi)) == 4.0
    out = tmp_path / "gen.png"
    assert run_command(plot_cli, _args(midi, out)) == 0
    assert _png_size(out) == (1200, 500)


def test_plot_colours_prime_and_continuation_differently(tmp_path: Path) -> None:
    notes = [Note(0.0, 4.0, 60, 127), Note(4.0, 4.0, 72, 127)]
    plain = draw_piano_roll(notes, tmp_path / "plain.png", split_beat=None)
    split = draw_piano_roll(notes, tmp_path / "split.png", split_beat=4.0)
    assert plain.read_bytes() != split.read_bytes()
    assert PRIME_COLOUR != CONTINUATION_COLOUR


def test_plot_of_a_missing_file_is_one_clear_error(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command(plot_cli, _args(tmp_path / "nope.mid", tmp_path / "x.png")) == 2
    assert "MIDI file not found" in capsys.readouterr().err


def test_plot_rejects_absurd_sizes(tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command(plot_cli, _args(FIXTURE, tmp_path / "x.png", width=10)) == 2
    assert "received 10x500" in capsys.readouterr().err
