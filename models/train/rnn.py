"""LSTM and GRU baselines with the same interface as the GPT.

The recurrent state plays the role of the transformer's key/value cache: feeding tokens
one at a time and carrying the state gives the same logits as the whole sequence at once.
State shapes: ``(h,)`` for a GRU and ``(h, c)`` for an LSTM, each [L, B, hidden].
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

CELLS = ("lstm", "gru")


@dataclasses.dataclass(frozen=True)
class RNNConfig:
    """Model arguments; stored in every checkpoint so loading rebuilds the same model."""

    vocab_size: int = 512        # token ids (the tokenizer's vocab_size)
    cell: str = "lstm"           # "lstm" or "gru"
    context_length: int = 512    # tokens per training window (truncated back-propagation)
    n_layer: int = 2             # stacked recurrent layers L
    n_embd: int = 256            # token embedding size
    hidden: int = 512            # recurrent state size
    dropout: float = 0.0         # between layers and before the head

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)} (received {self.cell!r})")


SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"n_layer": 2, "n_embd": 64, "hidden": 64, "context_length": 256},
    "small": {"n_layer": 2, "n_embd": 256, "hidden": 512, "context_length": 512},
    "medium": {"n_layer": 3, "n_embd": 512, "hidden": 1024, "context_length": 1024},
}


def rnn_config(size: str, vocab_size: int, cell: str, **overrides: Any) -> RNNConfig:
    """The config of a named size for a vocabulary and cell, with field overrides.

    Raises:
        ValueError: an unknown size name or cell.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r} (choose from {', '.join(SIZES)})")
    return RNNConfig(vocab_size=vocab_size, cell=cell, **{**SIZES[size], **overrides})


class RecurrentLM(nn.Module):
    """Embedding -> stacked LSTM or GRU -> linear head."""

    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        rnn_class = nn.LSTM if config.cell == "lstm" else nn.GRU
        self.rnn = rnn_class(config.n_embd, config.hidden, num_layers=config.n_layer,
                             batch_first=True,
                             dropout=config.dropout if config.n_layer > 1 else 0.0)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, config.vocab_size)

    def num_parameters(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> tuple[Tensor, ...]:
        """An all-zero state: ``(h,)`` or ``(h, c)``, each [L, B, hidden]."""
        shape = (self.config.n_layer, batch, self.config.hidden)
        count = 2 if self.config.cell == "lstm" else 1
        return tuple(torch.zeros(shape, device=device) for _ in range(count))

    def forward(self, input_ids: Tensor,
                past: tuple[Tensor, ...] | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Logits of the next token at every position, and the state after the last token.

        Args:
            input_ids: [B, S] token ids.
            past: the state returned by the previous call, or None for zeros.

        Returns:
            logits [B, S, V] and the new state (each tensor [L, B, hidden]).
        """
        x = self.embed(input_ids)  # (B, S, n_embd)
        if past is None:
            past = self.initial_state(input_ids.shape[0], input_ids.device)
        if self.config.cell == "lstm":
            y, (h, c) = self.rnn(x, (past[0], past[1]))  # y (B, S, hidden)
            state: tuple[Tensor, ...] = (h, c)
        else:
            y, h = self.rnn(x, past[0])
            state = (h,)
        return self.head(self.drop(y)), state  # (B, S, V)
