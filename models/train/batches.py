"""Batches of token windows for training and evaluation.

Training draws random windows of ``context_length + 1`` tokens from a split's concatenated
stream (every piece is ``BOS ... EOS``, so the model also learns where pieces end). The
window starts of a step are a pure function of (seed, rank, step): the data position of a
resumed run is just its step, and every DDP rank sees different windows without any
shared state. Evaluation walks fixed, non-overlapping windows from the start of the
split, so every evaluation of a run sees exactly the same tokens.

For a style-conditioned vocabulary, training windows can also be drawn **balanced across
styles** (a piece's chance is inverse to its style's share of the split's tokens, so a
large corpus does not drown a small one) and with **style dropout** (a ``Style`` token in
a training window becomes slot 0, "any style", with a probability), both still a pure
function of (seed, rank, step). Evaluation windows are never altered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.core.exceptions import DataError
from models.data.manifest import TokenDataset

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


def corpus_licences(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each corpus of a dataset with its licence and kept pieces (what a model card names).

    A corpus whose pieces carry several licences lists them joined by "; ".
    """
    corpora: dict[str, dict[str, Any]] = {}
    for piece in (manifest.get("pieces") or {}).values():
        name = str(piece.get("corpus") or piece.get("source") or "unknown")
        entry = corpora.setdefault(name, {"licences": set(), "pieces": 0})
        entry["pieces"] += 1
        if piece.get("licence"):
            entry["licences"].add(str(piece["licence"]))
    return {name: {"licence": "; ".join(sorted(entry["licences"])) or "unknown",
                   "pieces": entry["pieces"]}
            for name, entry in sorted(corpora.items())}


def manifest_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The part of a manifest a checkpoint keeps: source, hash, pieces and tokens per split,
    and the corpora with their licences (shipped models name them in their card)."""
    splits = manifest.get("splits") or {}
    return {
        "source": manifest.get("source"),
        "licences": list(manifest.get("licences") or []),
        "corpora": corpus_licences(manifest),
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


def style_weights(tokens: np.ndarray, offsets: np.ndarray,
                  style_ids: Sequence[int], power: float = 0.0) -> np.ndarray:
    """Per sequence, the chance of drawing it so that styles share the steps fairly.

    A sequence's style is the ``Style`` token after its ``BOS`` (none: a style of its own).
    Within a style, sequences are drawn in proportion to their length (every token as
    likely as any other). Across styles, a style's share of the draws is proportional to
    its tokens to the ``power``: 0 gives every style the same share, 1 the natural one, and
    in between a small style is lifted without being repeated until it is memorised (a
    style of a few pieces would otherwise take a full 1/n of all steps).

    Raises:
        DataError: ``offsets`` does not describe ``tokens``.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != len(tokens):
        raise DataError(f"offsets must run from 0 to the {len(tokens)} tokens "
                        f"(received {len(offsets)} offsets)")
    lengths = np.diff(offsets).astype(np.float64)
    heads = np.minimum(offsets[:-1] + 1, len(tokens) - 1)
    second = np.asarray(tokens[heads], dtype=np.int64)
    styles = np.where(np.isin(second, np.asarray(style_ids, dtype=np.int64)), second, -1)
    share = {int(s): lengths[styles == s].sum() for s in np.unique(styles)}
    per_style = np.array([share[int(s)] for s in styles])
    weights = lengths / per_style * per_style ** power
    return weights / weights.sum()


class WindowBatches:
    """Random training windows and fixed evaluation windows of one token stream.

    Attributes:
        tokens: the split's token stream (any integer array, usually a uint16 memmap).
        window: input length S of one example; targets are the same window shifted by one.
        offsets: start of each sequence and the total (for balanced draws), or ``None``.
        style_ids: ids of the vocabulary's ``Style`` tokens, slot 0 first (may be empty).
        style_dropout: chance that a ``Style`` token of a training window becomes slot 0.
        weights: per-sequence draw probabilities when balanced, else ``None``.
        keep_heads: a training window that starts inside a piece begins with that piece's
            ``BOS Style`` instead of its first two tokens.
    """

    def __init__(self, tokens: np.ndarray, context_length: int, *,
                 offsets: np.ndarray | None = None, style_ids: Sequence[int] = (),
                 style_dropout: float = 0.0, balance: bool = False,
                 balance_power: float = 0.0, keep_heads: bool = False) -> None:
        """Windows over ``tokens``; the keyword arguments are for conditioned vocabularies.

        Raises:
            DataError: fewer than 2 tokens, a dropout outside 0-1 or without style ids,
                or balanced draws without offsets.
        """
        if len(tokens) < 2:
            raise DataError(f"a split needs at least 2 tokens (received {len(tokens)})")
        if not 0.0 <= style_dropout <= 1.0:
            raise DataError(f"style_dropout must be within 0 and 1 (received {style_dropout})")
        if style_dropout and not style_ids:
            raise DataError("style dropout needs a vocabulary with style tokens")
        if (balance or keep_heads) and offsets is None:
            raise DataError("balanced draws and kept heads need the split's sequence offsets")
        self.tokens = tokens
        # A split shorter than the context still trains, on shorter windows.
        self.window = min(context_length, len(tokens) - 1)
        self.offsets = None if offsets is None else np.asarray(offsets, dtype=np.int64)
        self.style_ids = np.asarray(style_ids, dtype=np.int64)
        self.style_dropout = float(style_dropout)
        self.weights = (torch.from_numpy(style_weights(tokens, self.offsets, style_ids,
                                                       balance_power))
                        if balance and self.offsets is not None else None)
        # Why: the engine always starts a prompt with BOS Style and keeps those first
        # tokens when its cache slides, so mid-piece text always follows a style token
        # there. A window cut from the middle of a piece would teach the model to play
        # with no style in sight, which it never meets live.
        self.keep_heads = keep_heads

    def _gather(self, starts: Tensor) -> tuple[Tensor, Tensor]:
        offsets = np.arange(self.window + 1)
        rows = np.asarray(self.tokens[starts.numpy()[:, None] + offsets], dtype=np.int64)
        chunk = torch.from_numpy(rows)  # (B, S + 1)
        return chunk[:, :-1], chunk[:, 1:]

    def _starts(self, batch_size: int, generator: torch.Generator) -> Tensor:
        high = len(self.tokens) - self.window  # last valid start + 1
        if self.weights is None:
            return torch.randint(0, high, (batch_size,), generator=generator)
        assert self.offsets is not None  # balance needs offsets (checked in __init__)
        sequences = torch.multinomial(self.weights, batch_size, replacement=True,
                                      generator=generator)
        first = torch.from_numpy(self.offsets[sequences.numpy()])
        length = torch.from_numpy(self.offsets[sequences.numpy() + 1]) - first
        # A start anywhere in the piece; a window may run on into the next piece, as the
        # uniform draw's windows do.
        within = (torch.rand(batch_size, generator=generator) * length).long()
        return torch.clamp(first + within, max=high - 1)

    def train_batch(self, step: int, batch_size: int, seed: int,
                    rank: int = 0) -> tuple[Tensor, Tensor]:
        """Inputs and targets [B, S] (int64) of one training step, fixed by its arguments."""
        generator = torch.Generator().manual_seed(seed * 7919 + rank * _RANK_STRIDE + step)
        starts = self._starts(batch_size, generator)
        inputs, targets = self._gather(starts)
        if self.keep_heads:
            self._put_heads(starts, inputs, targets)
        if self.style_dropout:
            # One draw per window: its Style token (input and target alike) becomes slot 0.
            drop = torch.rand(batch_size, generator=generator) < self.style_dropout
            styles = torch.from_numpy(self.style_ids)
            for tensor in (inputs, targets):
                mask = torch.isin(tensor, styles) & drop[:, None]
                tensor[mask] = int(self.style_ids[0])
        return inputs, targets

    def _put_heads(self, starts: Tensor, inputs: Tensor, targets: Tensor) -> None:
        """Begin each window that starts past its piece's first two tokens with them.

        Inputs 0-1 become ``BOS Style``; target 0 (the token after input 0) becomes the
        Style, and every later target is untouched: after ``BOS Style`` the model predicts
        the piece's text from the window's third token on, as after a slide.
        """
        assert self.offsets is not None  # keep_heads needs offsets (checked in __init__)
        first = starts.numpy()
        piece = np.searchsorted(self.offsets, first, side="right") - 1
        begins, ends = self.offsets[piece], self.offsets[np.minimum(piece + 1,
                                                                    len(self.offsets) - 1)]
        # Past the piece's head, and its EOS not among the window's first three tokens (a
        # window that reaches the next piece that soon is left as it is).
        inside = torch.from_numpy((first > begins + 1) & (ends - 1 > first + 2))
        if not bool(inside.any()):
            return
        heads = torch.from_numpy(np.asarray(
            self.tokens[np.stack([begins, begins + 1], axis=1)], dtype=np.int64))
        inputs[inside, :2] = heads[inside]
        targets[inside, 0] = heads[inside, 1]

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
