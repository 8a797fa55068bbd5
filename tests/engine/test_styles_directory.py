"""`melodyd engine --style` and `melody generate --style` find styles in `[styles]
directory` (where `melody add-style --out` and the daemon look), not only in the shipped
`models/pretrained`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import engine.model
from engine import server_cli
from engine.tools.generate_cli import model_and_style
from models.cli import main
from models.core.exceptions import EngineError
from models.core.settings import EngineSettings


@pytest.fixture
def styles_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_onnx_model: Path) -> Path:
    """A styles folder holding the tiny style; the shipped folder holds nothing."""
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setattr(engine.model, "PRETRAINED_DIR", shipped)
    folder = tmp_path / "styles"
    folder.mkdir()
    shutil.copy(tiny_onnx_model, folder / "tiny.onnx")
    return folder


def test_the_engine_serves_a_style_of_the_styles_directory(styles_dir: Path) -> None:
    decoders = server_cli.load_decoders(["tiny"], [], EngineSettings(), styles_dir)
    assert decoders["tiny"].model.path == styles_dir / "tiny.onnx"
    with pytest.raises(EngineError, match="none is installed in models/pretrained"):
        server_cli.load_decoders(["tiny"], [], EngineSettings())  # the shipped folder


def test_generate_finds_a_style_of_the_configured_directory(styles_dir: Path, tmp_path: Path,
                                                           capsys) -> None:
    model, style = model_and_style(None, "tiny", EngineSettings(), styles_dir)
    assert style == "tiny" and model.path == styles_dir / "tiny.onnx"
    config = tmp_path / "config.toml"
    config.write_text(f'[styles]\ndirectory = "{styles_dir}"\n')
    out = tmp_path / "out"
    code = main(["generate", "--style", "tiny", "--config", str(config), "--prime",
                 str(Path(__file__).resolve().parents[1] / "fixtures" / "fur_elise_opening.mid"),
                 "--bars", "2", "--seed", "1", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert list(out.glob("*.mid"))
