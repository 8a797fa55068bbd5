"""Tiny random models for tests: a checkpoint and its verified ONNX export.

The engine and bridge tests need real ONNX models with the real vocabulary but cannot
train one; these helpers build a randomly initialized ``tiny`` model, save it in the
checkpoint format and run it through the same export as ``melody export``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from export.pipeline import export_checkpoint
from models.core.tokenizer import MelodyTokenizer
from models.train.checkpoint import model_arch, save_checkpoint
from models.train.gpt import GPT, gpt_config
from models.train.rnn import RecurrentLM, rnn_config

logger = logging.getLogger(__name__)


def tiny_checkpoint_state(arch: str = "gpt", seed: int = 0, size: str = "tiny",
                          tokens: dict[str, Any] | None = None,
                          width: dict[str, int] | None = None) -> dict[str, Any]:
    """A checkpoint dict of a randomly initialized model.

    Args:
        arch: ``gpt``, ``lstm`` or ``gru``.
        seed: seeds the random weights (the same seed gives the same model).
        size: the named size the model starts from.
        tokens: ``TokensSettings`` fields of the vocabulary (default: the default one).
        width: overrides of the size's widths (e.g. ``{"n_embd": 32}``).
    """
    from models.core.settings import TokensSettings  # noqa: PLC0415 - keeps the import light

    tokenizer = MelodyTokenizer(TokensSettings(**tokens) if tokens else None)
    torch.manual_seed(seed)
    if arch == "gpt":
        model: torch.nn.Module = GPT(gpt_config(size, tokenizer.vocab_size, **(width or {})))
    else:
        model = RecurrentLM(rnn_config(size, tokenizer.vocab_size, arch, **(width or {})))
    return {
        "arch": model_arch(model),
        "model_config": dict(vars(model.config)),
        "tokenizer": tokenizer.to_dict(),
        "data": {"source": "random", "hash": None,
                 "splits": {"train": {"pieces": 0, "tokens": 0}}},
        "model": model.state_dict(),
        "step": 0,
        "metrics": {},
        "train_config": {"seed": seed},
    }


def write_tiny_checkpoint(path: str | Path, arch: str = "gpt", seed: int = 0,
                          size: str = "tiny") -> Path:
    """Save a random ``size`` model of ``arch`` as a melodyd checkpoint at ``path``."""
    return save_checkpoint(path, tiny_checkpoint_state(arch, seed, size))


def export_tiny_model(path: str | Path, arch: str = "gpt", seed: int = 0,
                      style: str = "tiny", int8: bool = False) -> Path:
    """Build, export and verify a tiny random model; returns the ONNX path.

    The checkpoint is written beside it as ``<stem>.pt``.
    """
    path = Path(path)
    checkpoint = write_tiny_checkpoint(path.with_suffix(".pt"), arch, seed)
    return export_checkpoint(checkpoint, path, style=style, int8=int8, max_batch=3).path
