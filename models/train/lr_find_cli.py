"""``melody lr-find``: a learning-rate range test with a plot and a suggested rate.

The rate grows exponentially from ``--start`` to ``--end`` over ``--steps`` steps on a
fresh copy of the model (or of ``--from`` with its lower blocks frozen, to pick a
fine-tuning rate). The suggestion is the rate where the smoothed loss falls fastest,
before it reaches its minimum: large enough to learn quickly, below where it diverges.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any

from models.core.settings import MODEL_SIZES

logger = logging.getLogger(__name__)

HELP = "learning-rate range test: plot loss against rate and suggest one"

# The test stops once the smoothed loss exceeds its best by this factor (diverged).
_DIVERGENCE = 4.0
# Weight of the newest loss in the exponential smoothing of the curve.
_SMOOTHING = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``melody lr-find``."""
    parser.add_argument("--data", required=True, type=Path, help="dataset folder")
    parser.add_argument("--out", required=True, type=Path, help="folder for the plot and JSON")
    parser.add_argument("--arch", choices=("gpt", "lstm", "gru"), help="model architecture")
    parser.add_argument("--size", choices=MODEL_SIZES, help="named size")
    parser.add_argument("--from", dest="init_from", type=Path,
                        help="start from a checkpoint (with --freeze) to find a fine-tuning rate")
    parser.add_argument("--freeze", type=int, metavar="K", help="with --from: freeze K blocks")
    parser.add_argument("--config", type=Path, help="a config.toml merged over the defaults")
    parser.add_argument("--start", type=float, default=1e-6, help="first learning rate")
    parser.add_argument("--end", type=float, default=1.0, help="last learning rate")
    parser.add_argument("--steps", type=int, default=100, help="steps of the test")
    parser.add_argument("--batch-size", type=int, help="sequences per step")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to run")
    parser.add_argument("--threads", type=int, help="PyTorch CPU threads (0 = default)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                        help="mixed precision, as in training")


def suggest(rates: list[float], smoothed: list[float]) -> float:
    """The rate of steepest descent of the smoothed loss, before its minimum."""
    import numpy as np  # noqa: PLC0415

    lowest = int(np.argmin(smoothed))
    if lowest < 2:
        return rates[lowest]
    slopes = np.gradient(np.asarray(smoothed[:lowest + 1]), np.log(rates[:lowest + 1]))
    return float(rates[int(np.argmin(slopes))])


def plot(rates: list[float], losses: list[float], smoothed: list[float], best: float,
         path: Path) -> None:
    """Loss against learning rate (log scale), the suggestion marked."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(rates, losses, alpha=0.3, label="loss")
    axes.plot(rates, smoothed, label="smoothed")
    axes.axvline(best, color="red", linestyle="--", label=f"suggested {best:.2e}")
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def range_test(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    """Run the test; returns rates, raw and smoothed losses, and the suggestion."""
    import torch  # noqa: PLC0415

    from models.train.build import (  # noqa: PLC0415
        autocast_for,
        freeze_lower,
        load_run_data,
        make_optimizer,
        model_from_checkpoint,
        new_model,
        setup_runtime,
    )
    from models.train.checkpoint import read_checkpoint  # noqa: PLC0415
    from models.train.evaluation import lm_loss  # noqa: PLC0415
    from models.train.gpt import SIZES as GPT_SIZES  # noqa: PLC0415
    from models.train.rnn import SIZES as RNN_SIZES  # noqa: PLC0415

    runtime = setup_runtime(settings.device, settings.threads)
    torch.manual_seed(settings.seed)
    if args.init_from is not None:
        context = read_checkpoint(args.init_from)["model_config"]["context_length"]
    else:
        sizes = GPT_SIZES if settings.arch == "gpt" else RNN_SIZES
        context = sizes[settings.size]["context_length"]
    data = load_run_data(args.data, context)
    if args.init_from is not None:
        _, _, model = model_from_checkpoint(args.init_from, settings.dropout, data.tokenizer)
        freeze_lower(model, args.freeze if args.freeze is not None else settings.freeze)
    else:
        _, _, model = new_model(settings, data.tokenizer["vocab_size"])
    model.to(runtime.device).train()
    optimizer = make_optimizer(model, settings, args.start)
    autocast, _ = autocast_for(runtime.device, settings.precision)
    growth = (args.end / args.start) ** (1.0 / max(1, args.steps - 1))
    rates: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, best_smoothed = 0.0, math.inf
    from tqdm import tqdm  # noqa: PLC0415

    for step in tqdm(range(args.steps), desc="lr-find", unit="step"):
        rate = args.start * growth**step
        for group in optimizer.param_groups:
            group["lr"] = rate
        inputs, targets = data.train.train_batch(step, settings.batch_size, settings.seed)
        with autocast if autocast is not None else contextlib.nullcontext():
            logits, _ = model(inputs.to(runtime.device))
            loss = lm_loss(logits, targets.to(runtime.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip > 0:  # as in training, so the suggested rate carries over
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            break
        average = (1 - _SMOOTHING) * average + _SMOOTHING * value
        corrected = average / (1 - (1 - _SMOOTHING) ** (step + 1))  # bias of a zero start
        rates.append(rate)
        losses.append(value)
        smoothed.append(corrected)
        best_smoothed = min(best_smoothed, corrected)
        if corrected > _DIVERGENCE * best_smoothed:
            break
    return {"rates": rates, "losses": losses, "smoothed": smoothed,
            "suggested_lr": suggest(rates, smoothed) if rates else args.start}


def run(args: argparse.Namespace) -> int:
    """Run the range test, write ``lr_find.png`` and ``lr_find.json``, print the rate.

    Raises:
        ConfigError: a bad flag or config value.
        ModelError: an unreadable --from checkpoint.
    """
    from models.core.exceptions import ConfigError  # noqa: PLC0415
    from models.core.settings import load_settings  # noqa: PLC0415

    if not 0 < args.start < args.end:
        raise ConfigError(f"--start must be positive and below --end "
                          f"(received {args.start} and {args.end})")
    if args.steps < 5:
        raise ConfigError(f"--steps must be at least 5 (received {args.steps})")
    flags = {"arch": args.arch, "size": args.size, "batch_size": args.batch_size,
             "seed": args.seed, "device": args.device, "threads": args.threads,
             "precision": args.precision}
    settings = load_settings(args.config, {"train": flags}).train
    result = range_test(args, settings)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(result["rates"], result["losses"], result["smoothed"], result["suggested_lr"],
         args.out / "lr_find.png")
    (args.out / "lr_find.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"suggested learning rate {result['suggested_lr']:.2e} "
          f"(plot in {args.out / 'lr_find.png'})")
    return 0
