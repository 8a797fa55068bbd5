"""Validation metrics, the JSONL metrics log of a run, and its loss-curve plot.

Loss is the mean next-token cross-entropy in nats, accuracy the share of next tokens
whose argmax is right, perplexity ``exp(loss)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 - the conventional alias

logger = logging.getLogger(__name__)


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of logits [B, S, V] against targets [B, S]."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device,
             autocast: contextlib.AbstractContextManager | None = None,
             distributed: bool = False) -> dict[str, float]:
    """Loss, accuracy and perplexity of a model over batches of (inputs, targets).

    With ``distributed`` the sums of every process are added up, so each process may
    evaluate its own share of the windows and all get the same result.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, tokens
    for inputs, targets in batches:
        with autocast or contextlib.nullcontext():
            logits, _ = model(inputs.to(device))
        flat = logits.float().reshape(-1, logits.shape[-1])
        expected = targets.to(device).reshape(-1)
        sums[0] += F.cross_entropy(flat, expected, reduction="sum").double()
        sums[1] += (flat.argmax(-1) == expected).sum().double()
        sums[2] += expected.numel()
    if distributed:
        torch.distributed.all_reduce(sums)
    model.train(was_training)
    tokens = max(float(sums[2]), 1.0)
    loss = float(sums[0]) / tokens
    return {"loss": loss, "accuracy": float(sums[1]) / tokens,
            "perplexity": math.exp(min(loss, 50.0)), "tokens": int(sums[2])}


class MetricsLog:
    """Append-only JSONL records of a run (``RUN/metrics.jsonl``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step``: a resumed run rewrites what it repeats."""
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append one record."""
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        """All records."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_loss_curve(records: list[dict[str, Any]], path: str | Path) -> None:
    """Training and validation loss against step, as a PNG."""
    import matplotlib  # noqa: PLC0415 - plotting only when a run writes its curve

    matplotlib.use("Agg")  # no display on training machines
    from matplotlib import pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(figsize=(7, 4))
    for split, style in (("train", "-"), ("val", "o-")):
        points = [(r["step"], r["loss"]) for r in records if r.get("split") == split]
        if points:
            steps, losses = zip(*points, strict=True)
            axes.plot(steps, losses, style, label=split, markersize=3)
    axes.set_xlabel("step")
    axes.set_ylabel("loss (nats/token)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
