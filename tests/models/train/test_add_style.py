"""``melody add-style``: the one-command recipe for a style from the user's own MIDI folder.

The folder is a handful of Bach chorales written as MIDI files (with a corrupt file among
them, as a real folder may have); the base is the tiny random checkpoint of the test
session, standing in for the shipped ``models/pretrained/base.pt``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="fine-tuning needs torch (the train extra)")

from engine.decoder import StyleDecoder
from engine.model import installed_styles, load_model
from models.cli import main as melody
from models.core.protocol.messages import GenerateRequest, SamplingParams

pytestmark = [pytest.mark.torch, pytest.mark.slow]


@pytest.fixture(scope="module")
def midi_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    music21 = pytest.importorskip("music21")
    folder = tmp_path_factory.mktemp("my_midi")
    (folder / "nested").mkdir()
    paths = sorted(p for p in music21.corpus.getComposer("bach") if str(p).endswith(".mxl"))
    for index, path in enumerate(paths[:8]):
        target = folder / ("nested" if index % 2 else ".") / f"{Path(path).stem}.mid"
        music21.corpus.parse(path).write("midi", fp=str(target))
    (folder / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage")
    return folder


def test_add_style_fine_tunes_exports_and_installs_a_playable_style(
        midi_folder: Path, tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    styles = tmp_path / "styles"
    argv = ["add-style", "avantgarde", "--source", str(midi_folder), "--base",
            str(tiny_checkpoint), "--work", str(tmp_path / "work"), "--out", str(styles),
            "--steps", "6", "--batch-size", "2", "--threads", "1"]
    assert melody(argv) == 0
    out = capsys.readouterr().out
    assert "melodyd --style avantgarde" in out
    assert set(installed_styles(styles)) == {"avantgarde"}
    manifest = (tmp_path / "work" / "data" / "manifest.json").read_text()
    assert "broken.mid" in manifest  # skipped and reported, not fatal

    model = load_model(styles / "avantgarde.onnx")
    assert model.style == "avantgarde"
    assert model.card.training["step"] == 6
    decoder = StyleDecoder(model, allow_eos=False)
    generation = decoder.start("s", GenerateRequest(seed=(), start_beat=0.0, bars=2,
                                                    sampling=SamplingParams(seed=1)))
    notes = []
    while not generation.done:
        decoder.step([generation])
        notes.extend(generation.drain_notes())
    assert generation.reason in ("complete", "max_tokens")
    assert all(0.0 <= n.onset < 8.0 and 0 <= n.pitch <= 127 for n in notes)

    # Run again: every step is found done and skipped, the model stays.
    before = (styles / "avantgarde.onnx").stat().st_mtime_ns
    assert melody(argv) == 0
    assert (styles / "avantgarde.onnx").stat().st_mtime_ns == before


def test_add_style_without_a_base_names_the_path_and_the_remedy(tmp_path: Path,
                                                                capsys) -> None:
    missing = tmp_path / "nope.pt"
    assert melody(["add-style", "mine", "--source", str(tmp_path), "--base",
                   str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err
    assert "melody train-styles" in err


def test_add_style_refuses_any_which_names_the_shipped_model(tiny_checkpoint: Path,
                                                             tmp_path: Path, capsys) -> None:
    assert melody(["add-style", "any", "--source", str(tmp_path), "--base",
                   str(tiny_checkpoint), "--out", str(tmp_path / "styles")]) == 2
    assert "style name 'any' means \"no style\"" in capsys.readouterr().err
    assert not (tmp_path / "styles").exists()


def test_add_style_refuses_a_name_that_is_not_a_file_name(tmp_path: Path, capsys) -> None:
    assert melody(["add-style", "../evil", "--source", str(tmp_path)]) == 2
    assert "received '../evil'" in capsys.readouterr().err


def test_the_shipped_base_form_keeps_the_model_and_drops_the_resume_state(
        tiny_checkpoint: Path, tmp_path: Path) -> None:
    import torch  # noqa: PLC0415

    from models.train.checkpoint import load_checkpoint, read_checkpoint, write_weights_only  # noqa: PLC0415

    slim = write_weights_only(tiny_checkpoint, tmp_path / "base.pt")
    state = read_checkpoint(slim)
    assert "optimizer" not in state
    assert "rng" not in state
    assert all(t.dtype == torch.float16 for t in state["model"].values() if t.is_floating_point())
    full, half = load_checkpoint(tiny_checkpoint).model, load_checkpoint(slim).model
    ids = torch.randint(0, 300, (1, 32))
    with torch.no_grad():
        difference = (full(ids)[0] - half(ids)[0]).abs().max().item()
    assert 0 < difference < 1e-2  # rounded to half precision, not changed
