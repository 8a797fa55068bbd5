"""``melody export`` end to end: a summary on success, one clear line on bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="export needs torch (the train extra)")

from export import cli as export_cli
from export import onnx_graph, quantize
from export.metadata import read_card
from export.tiny import tiny_checkpoint_state
from models.cli import main
from models.train.checkpoint import save_checkpoint

pytestmark = pytest.mark.torch
ROOT = Path(__file__).resolve().parents[2]


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    return lines[0]


def test_export_writes_a_verified_model_and_prints_a_summary(
        tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "baroque.onnx"
    assert main(["export", str(tiny_checkpoint), "-o", str(out), "--opset", "18"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed
    assert "parity     max |onnx - torch|" in printed
    assert "MiB" in printed
    card = read_card(out)
    assert card.style == "baroque"  # from the file name when neither flag nor checkpoint says
    assert card.cache.max_batch == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baroque.onnx"]  # no leftovers


def test_style_flag_and_bad_style(tiny_checkpoint: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    assert main(["export", str(tiny_checkpoint), "-o", str(out), "--style", "romantic"]) == 0
    assert read_card(out).style == "romantic"
    capsys.readouterr()
    assert main(["export", str(tiny_checkpoint), "-o", str(out), "--style", "two words"]) == 2
    assert "style must be a plain name" in _error_line(capsys)


def test_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["export", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "m.onnx")])
    assert code == 2
    assert "checkpoint not found" in _error_line(capsys)
    assert not (tmp_path / "m.onnx").exists()


def test_corrupt_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint" * 40)
    assert main(["export", str(bad), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "cannot read checkpoint" in _error_line(capsys)


def test_truncated_checkpoint(tiny_checkpoint: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    cut = tmp_path / "cut.pt"
    cut.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    assert main(["export", str(cut), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "cannot read checkpoint" in _error_line(capsys)


def test_unknown_architecture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tiny_checkpoint_state("gpt") | {"arch": "transformer-xl"}
    path = save_checkpoint(tmp_path / "odd.pt", state)
    assert main(["export", str(path), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "unknown architecture 'transformer-xl'" in _error_line(capsys)


def test_output_in_a_missing_directory(tiny_checkpoint: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "no" / "such" / "m.onnx"
    assert main(["export", str(tiny_checkpoint), "-o", str(out)]) == 2
    assert "output directory does not exist" in _error_line(capsys)
    assert not out.parent.exists()


def test_output_is_a_directory(tiny_checkpoint: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tiny_checkpoint), "-o", str(tmp_path)]) == 2
    assert "is a directory" in _error_line(capsys)


def test_bad_opset(tiny_checkpoint: Path, tmp_path: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tiny_checkpoint), "-o", str(tmp_path / "m.onnx"),
                 "--opset", "9"]) == 2
    assert "opset must be within 14 and 20" in _error_line(capsys)


def test_errors_reach_the_shell_as_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "models.cli", "export", str(tmp_path / "nope.pt"), "-o",
         str(tmp_path / "m.onnx")], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: checkpoint not found: {tmp_path / 'nope.pt'}"]


def test_cli_defaults_match_the_modules() -> None:
    # export.cli keeps copies so `melody --help` needs no torch/onnxruntime import.
    assert export_cli.DEFAULT_OPSET == onnx_graph.DEFAULT_OPSET
    assert export_cli.MIN_AGREEMENT == quantize.MIN_AGREEMENT
    assert export_cli.MAX_KL == quantize.MAX_KL


@pytest.mark.slow
def test_int8_reports_agreement_and_refuses_below_threshold(
        tiny_checkpoint: Path, tiny_onnx_model: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("music21", reason="the default int8 check tokenizes music21 pieces")
    out = tmp_path / "q.onnx"
    assert main(["export", str(tiny_checkpoint), "-o", str(out), "--int8"]) == 0
    printed = capsys.readouterr().out
    assert "int8       top-1 agreement" in printed
    card = read_card(out)
    assert card.quantization == "int8"
    assert out.stat().st_size < 0.7 * tiny_onnx_model.stat().st_size  # fp32 of the same
    refused = tmp_path / "refused.onnx"
    code = main(["export", str(tiny_checkpoint), "-o", str(refused), "--int8",
                 "--max-kl", "0", "--min-agreement", "1"])
    assert code == 2
    line = _error_line(capsys)
    assert "int8 model refused" in line
    assert re.search(r"mean KL \S+ > 0\.0", line)
    assert not refused.exists()


def _tiny_dataset(tmp_path: Path, tokenizer) -> Path:
    """A real dataset folder (melody data build's format) of five random melodies."""
    import numpy as np  # noqa: PLC0415 - only this test needs it

    from models.core.notes import Note  # noqa: PLC0415
    from models.core.settings import DataSettings  # noqa: PLC0415
    from models.data.dataset import build_dataset  # noqa: PLC0415

    source = tmp_path / "midi"
    source.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(5):
        notes = [Note(onset=k * 0.5, duration=0.5, pitch=int(rng.integers(48, 80)), velocity=80)
                 for k in range(32)]
        tokenizer.notes_to_score(notes).dump_midi(str(source / f"piece{index}.mid"))
    out = tmp_path / "data"
    build_dataset(str(source), out, DataSettings(val_fraction=0.2, test_fraction=0.2, jobs=1),
                  tokenizer, progress=False)
    return out


@pytest.mark.slow
def test_int8_checks_against_a_datasets_validation_split(
        tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from models.core.settings import TokensSettings  # noqa: PLC0415
    from models.core.tokenizer import MelodyTokenizer  # noqa: PLC0415

    data = _tiny_dataset(tmp_path, MelodyTokenizer())
    out = tmp_path / "q.onnx"
    assert main(["export", str(tiny_checkpoint), "-o", str(out), "--int8",
                 "--data", str(data)]) == 0
    assert f"of {data} validation" in capsys.readouterr().out
    # A dataset of another vocabulary cannot judge this model.
    other = _tiny_dataset(tmp_path / "other", MelodyTokenizer(TokensSettings(pitch_min=40)))
    assert main(["export", str(tiny_checkpoint), "-o", str(out), "--int8",
                 "--data", str(other)]) == 2
    assert "different vocabulary" in _error_line(capsys)


@pytest.mark.slow
def test_int8_checks_on_the_training_datasets_validation_split_by_default(
        tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from models.core.tokenizer import MelodyTokenizer  # noqa: PLC0415
    from models.train.checkpoint import read_checkpoint, save_checkpoint  # noqa: PLC0415

    data = _tiny_dataset(tmp_path, MelodyTokenizer())
    state = read_checkpoint(tiny_checkpoint)
    state["train_config"] = {**(state.get("train_config") or {}), "data_dir": str(data)}
    trained = save_checkpoint(tmp_path / "trained.pt", state)
    assert main(["export", str(trained), "-o", str(tmp_path / "q.onnx"), "--int8"]) == 0
    assert f"of {data} validation" in capsys.readouterr().out


def test_parity_failure_exits_non_zero_naming_outputs(
        tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from export import pipeline  # noqa: PLC0415

    real = pipeline.check_parity

    def too_strict(*args, **kwargs):
        # float32 kernels never agree to 1e-12: every output must be reported.
        return real(*args, **{**kwargs, "atol": 1e-12})

    monkeypatch.setattr(pipeline, "check_parity", too_strict)
    out = tmp_path / "m.onnx"
    assert main(["export", str(tiny_checkpoint), "-o", str(out)]) == 2
    line = _error_line(capsys)
    assert "ONNX Runtime disagrees with PyTorch" in line
    assert re.search(r"logits \d\.\d{3}e-\d\d", line)
    assert "present.1.value" in line
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
