"""``melody generate`` continues a prime MIDI file into valid MIDI files."""

from __future__ import annotations

from pathlib import Path

import pytest
import symusic

from models.cli import main
from models.data.midifile import read_midi

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def test_generate_continues_a_prime_into_midi_files(tiny_onnx_model, tmp_path, capsys):
    prime = FIXTURES / "fur_elise_opening.mid"
    code = main(["generate", "--model", str(tiny_onnx_model), "--prime", str(prime),
                 "--bars", "2", "--num-files", "2", "--temperature", "0.9", "--seed", "5",
                 "--program", "40", "-o", str(tmp_path / "out")])
    assert code == 0
    files = sorted((tmp_path / "out").glob("*.mid"))
    assert len(files) == 2
    assert [Path(line) for line in capsys.readouterr().out.split()] == files
    original = read_midi(prime)
    for path in files:
        score = symusic.Score(str(path))
        assert [t.name for t in score.tracks] == ["prime", "continuation"]
        assert all(t.program == 40 for t in score.tracks)
        written = read_midi(path)
        (start, text), = written.markers
        assert text == "continuation"
        prime_track, continuation = score.tracks
        assert len(prime_track.notes) == len([n for n in original.notes if n.onset < start])
        tpq = score.ticks_per_quarter
        onsets = [n.time / tpq for n in continuation.notes]
        bar = written.bar_length
        end = (start // bar + 2) * bar
        assert onsets and min(onsets) == pytest.approx(start)
        assert max(onsets) < end
    # Different seeds give different continuations.
    first, second = (symusic.Score(str(p)).tracks[1].notes for p in files)
    assert [(n.time, n.pitch) for n in first] != [(n.time, n.pitch) for n in second]


def test_generate_without_a_prime_or_data_is_one_clear_error(tiny_onnx_model, tmp_path, capsys):
    code = main(["generate", "--model", str(tiny_onnx_model), "-o", str(tmp_path)])
    assert code == 2
    assert "--prime" in capsys.readouterr().err


def test_generate_takes_a_random_prime_from_a_validation_split(tiny_onnx_model, tmp_path):
    from models.core.settings import DataSettings  # noqa: PLC0415
    from models.data.dataset import build_dataset  # noqa: PLC0415

    source = tmp_path / "midi"
    source.mkdir()
    for index in range(10):
        score = symusic.Score(480)
        score.time_signatures.append(symusic.TimeSignature(0, 3, 4))
        track = symusic.Track(name="tune", program=0, is_drum=False)
        for step in range(24):
            track.notes.append(symusic.Note(step * 480, 480, 55 + (step * (index + 2)) % 24, 80))
        score.tracks.append(track)
        score.dump_midi(str(source / f"tune{index}.mid"))
    data = tmp_path / "data"
    build_dataset(str(source), data, DataSettings(jobs=1, val_fraction=0.2, test_fraction=0.1),
                  progress=False)
    out = tmp_path / "out"
    code = main(["generate", "--model", str(tiny_onnx_model), "--data", str(data),
                 "--prime-bars", "2", "--bars", "1", "--seed", "1", "-o", str(out)])
    assert code == 0
    (path,) = out.glob("validation_*.mid")
    written = read_midi(path)
    assert written.time_signature == (3, 4)
    score = symusic.Score(str(path))
    prime, continuation = score.tracks
    tpq = score.ticks_per_quarter
    assert 0 < len(prime.notes) <= 6  # two 3/4 bars of quarter notes
    assert max(n.time for n in prime.notes) / tpq < 6.0
    (start, _), = written.markers
    assert start == 6.0
    assert all(6.0 <= n.time / tpq < 9.0 for n in continuation.notes)


def test_generate_needs_no_torch(tiny_onnx_model, tmp_path):
    """The offline path of a fresh install (no train extra): torch made unimportable."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = ("import sys; sys.modules['torch'] = None\n"
            "from models.cli import main\n"
            f"sys.exit(main(['generate', '--model', {str(tiny_onnx_model)!r}, '--prime', "
            f"{str(FIXTURES / 'fur_elise_opening.mid')!r}, '--bars', '1', '--seed', '2', "
            f"'-o', {str(tmp_path)!r}]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.glob("*.mid"))) == 1
