"""Fixtures shared by every test package: tiny random models, real ONNX exports.

The models are built once per test session (a few seconds) with random weights and the
default vocabulary, exported through the same code as ``melody export`` and verified
against PyTorch on the way. They need torch (the train extra): without it the tests that
use them are skipped with a reason. The engine and bridge tests only read the resulting
files, so their own code still never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


def _require_torch() -> None:
    pytest.importorskip("torch", reason="tiny models are built with torch (the train extra)")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide folder holding the tiny checkpoints and ONNX files."""
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model_dir: Path) -> Path:
    """A melodyd checkpoint of a random ``tiny`` GPT (2 layers, 2 heads, width 64)."""
    _require_torch()
    from export.tiny import write_tiny_checkpoint  # noqa: PLC0415 - torch is optional

    return write_tiny_checkpoint(tiny_model_dir / "tiny_gpt.pt", arch="gpt", seed=0)


@pytest.fixture(scope="session")
def tiny_onnx_factory(tiny_model_dir: Path) -> Callable[[str], Path]:
    """``make(arch)`` -> a verified fp32 ONNX file of a random tiny ``gpt``/``lstm``/``gru``.

    Each architecture is exported once per session; its style name is ``tiny-<arch>``
    and its checkpoint lies beside it as ``tiny-<arch>.pt``.
    """
    _require_torch()
    from export.tiny import export_tiny_model  # noqa: PLC0415 - torch is optional

    made: dict[str, Path] = {}

    def make(arch: str = "gpt") -> Path:
        if arch not in made:
            made[arch] = export_tiny_model(tiny_model_dir / f"tiny-{arch}.onnx", arch=arch,
                                           style=f"tiny-{arch}")
        return made[arch]

    return make


@pytest.fixture(scope="session")
def tiny_onnx_model(tiny_checkpoint: Path, tiny_model_dir: Path) -> Path:
    """The fp32 ONNX export of ``tiny_checkpoint`` (style ``tiny``), with its metadata."""
    from export.pipeline import export_checkpoint  # noqa: PLC0415 - torch is optional

    return export_checkpoint(tiny_checkpoint, tiny_model_dir / "tiny.onnx", style="tiny",
                             max_batch=3).path


@pytest.fixture(scope="session")
def tiny_onnx_int8_model(tiny_checkpoint: Path, tiny_model_dir: Path) -> Path:
    """The weight-only int8 export of ``tiny_checkpoint`` (style ``tiny-int8``).

    Its agreement check tokenizes a few music21 chorales, so it needs music21 too.
    """
    pytest.importorskip("music21", reason="the int8 check tokenizes music21 pieces")
    from export.pipeline import export_checkpoint  # noqa: PLC0415 - torch is optional

    return export_checkpoint(tiny_checkpoint, tiny_model_dir / "tiny-int8.onnx",
                             style="tiny-int8", int8=True, max_batch=3).path


# The conditioned vocabulary of the tiny style- and role-aware model (see models.tokenizer).
CONDITIONED_STYLES = ("baroque", "romantic", "pop")


@pytest.fixture(scope="session")
def tiny_conditioned_onnx(tiny_model_dir: Path) -> Path:
    """A verified fp32 ONNX file of a random tiny GPT over a vocabulary with 8 style slots
    (``CONDITIONED_STYLES`` named) and role tokens; its style name is ``tiny-conditioned``."""
    _require_torch()
    import torch  # noqa: PLC0415 - torch is optional

    from export.pipeline import export_checkpoint  # noqa: PLC0415
    from models.checkpoint import model_arch, save_checkpoint  # noqa: PLC0415
    from models.gpt import GPT, gpt_config  # noqa: PLC0415
    from models.settings import TokensSettings  # noqa: PLC0415
    from models.tokenizer import MelodyTokenizer  # noqa: PLC0415

    tokenizer = MelodyTokenizer(TokensSettings(style_slots=8, styles=CONDITIONED_STYLES,
                                               roles=True))
    torch.manual_seed(3)
    model = GPT(gpt_config("tiny", tokenizer.vocab_size))
    checkpoint = save_checkpoint(tiny_model_dir / "tiny-conditioned.pt", {
        "arch": model_arch(model),
        "model_config": dict(vars(model.config)),
        "tokenizer": tokenizer.to_dict(),
        "data": {"source": "random", "hash": None,
                 "splits": {"train": {"pieces": 0, "tokens": 0}}},
        "model": model.state_dict(),
        "step": 0,
        "metrics": {},
        "train_config": {"seed": 3},
    })
    return export_checkpoint(checkpoint, tiny_model_dir / "tiny-conditioned.onnx",
                             style="tiny-conditioned", max_batch=3).path
