"""Batches of token windows for training and evaluation.

Training draws random windows of ``context_length + 1`` tokens from a split's concatenated
stream (every piece is ``BOS ... EOS``, so the model also learns where pieces end). The
window starts of a step are a pure function of (seed, rank, step): the data position of a
resumed run is just its step, and every DDP rank sees different windows without any
shared state. Evaluation walks fixed, non-overlapping windows from the start of the
split, so every evaluation of a run sees exactly the same tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.dataset import TokenDataset
from models.exceptions import DataError

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
# Mixes the rank into the per-step seed; any large odd constant keeps streams apart.
_RANK_STRIDE = 1_000_003


def open_split(data_dir: str | Path, split: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The token stream (uint16 memmap) of a split and the dataset manifest.

    Raises:
        DataError: an unknown split, or missing or malformed dataset files.
    """
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)} (received {split!r})")
    dataset = TokenDataset(data_dir, split)  # validates manifest and arrays
    return dataset.tokens, dataset.manifest


def manifest_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The part of a manifest a checkpoint keeps: source, hash, pieces and tokens per split."""
    splits = manifest.get("splits") or {}
    return {
        "source": manifest.get("source"),
        "hash": manifest.get("content_hash", manifest.get("hash")),
        "built_at": manifest.get("built_at"),
        "splits": {name: {"pieces": info.get("num_pieces"), "tokens": info.get("tokens")}
                   for name, info in splits.items() if isinstance(info, dict)},
    }


def tokenizer_dict(manifest: dict[str, Any], data_dir: str | Path) -> dict[str, Any]:
    """The tokenizer configuration recorded in a dataset manifest.

    Raises:
        DataError: the manifest holds no tokenizer configuration.
    """
    tokenizer = manifest.get("tokenizer")
    if not isinstance(tokenizer, dict) or "vocab_size" not in tokenizer:
        raise DataError(f"{Path(data_dir) / 'manifest.json'} has no tokenizer configuration")
    return tokenizer


class WindowBatches:
    """Random training windows and fixed evaluation windows of one token stream.

    Attributes:
        tokens: the split's token stream (any integer array, usually a uint16 memmap).
        window: input length S of one example; targets are the same window shifted by one.
    """

    def __init__(self, tokens: np.ndarray, context_length: int) -> None:
        if len(tokens) < 2:
            raise DataError(f"a split needs at least 2 tokens (received {len(tokens)})")
        self.tokens = tokens
        # A split shorter than the context still trains, on shorter windows.
        self.window = min(context_length, len(tokens) - 1)

    def _gather(self, starts: Tensor) -> tuple[Tensor, Tensor]:
        offsets = np.arange(self.window + 1)
        rows = np.asarray(self.tokens[starts.numpy()[:, None] + offsets], dtype=np.int64)
        chunk = torch.from_numpy(rows)  # (B, S + 1)
        return chunk[:, :-1], chunk[:, 1:]

    def train_batch(self, step: int, batch_size: int, seed: int,
                    rank: int = 0) -> tuple[Tensor, Tensor]:
        """Inputs and targets [B, S] (int64) of one training step, fixed by its arguments."""
        generator = torch.Generator().manual_seed(seed * 7919 + rank * _RANK_STRIDE + step)
        high = len(self.tokens) - self.window  # last valid start + 1
        starts = torch.randint(0, high, (batch_size,), generator=generator)
        return self._gather(starts)

    def eval_batches(self, batch_size: int, max_batches: int | None = None, rank: int = 0,
                     world_size: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
        """Consecutive windows from the start of the stream (each token predicted once).

        Windows are dealt round-robin to DDP ranks; ``max_batches`` caps the total number
        of batches over all ranks so evaluation stays short on a large split.
        """
        count = (len(self.tokens) - 1) // self.window
        if max_batches is not None:
            count = min(count, max_batches * batch_size)
        starts = torch.arange(count) * self.window
        mine = starts[rank::world_size]
        for first in range(0, len(mine), batch_size):
            yield self._gather(mine[first:first + batch_size])
