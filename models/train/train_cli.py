"""``melody train``: train a GPT, LSTM or GRU on a built dataset.

Defaults come from ``[train]`` in ``config.toml``; flags override them. Under
``torchrun --nproc_per_node N -m models.cli train ...`` the same command trains with
DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from models.core.settings import MODEL_SIZES

logger = logging.getLogger(__name__)

HELP = "train a GPT, LSTM or GRU on a dataset built by `melody data build`"

# Flags that map one to one onto [train] settings (dest -> settings field).
_OVERRIDES = ("arch", "size", "steps", "batch_size", "lr", "warmup_steps", "eval_every",
              "eval_batches", "seed", "device", "threads", "time_budget", "dropout",
              "weight_decay", "grad_clip", "log_every", "precision")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by train and fine-tune."""
    parser.add_argument("--data", required=True, type=Path, help="dataset folder")
    parser.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, logs)")
    parser.add_argument("--config", type=Path, help="a config.toml merged over the defaults")
    parser.add_argument("--steps", type=int, help="optimizer steps in total")
    parser.add_argument("--batch-size", type=int, help="sequences per step and process")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--warmup-steps", type=int, help="linear warm-up steps")
    parser.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    parser.add_argument("--grad-clip", type=float, help="gradient norm clip (0 = off)")
    parser.add_argument("--dropout", type=float, help="dropout while training")
    parser.add_argument("--eval-every", type=int, help="validate and checkpoint every N steps")
    parser.add_argument("--eval-batches", type=int, help="most batches per validation")
    parser.add_argument("--log-every", type=int, help="log training loss every N steps")
    parser.add_argument("--seed", type=int, help="random seed (same seed, same run)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to train")
    parser.add_argument("--threads", type=int, help="PyTorch CPU threads (0 = default)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                        help="mixed precision (auto: bf16 where the hardware has it)")
    parser.add_argument("--time-budget", type=float, metavar="MIN",
                        help="stop gracefully after this many minutes (checkpoints saved)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out exactly where it stopped")
    parser.add_argument("--stop-at", type=int, metavar="STEP",
                        help="stop at this step as if interrupted (continue with --resume)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``melody train``."""
    parser.add_argument("--arch", choices=("gpt", "lstm", "gru"), help="model architecture")
    parser.add_argument("--size", choices=MODEL_SIZES, help="named model size")
    add_common_arguments(parser)


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """The [train] fields given on the command line."""
    return {name: getattr(args, name) for name in _OVERRIDES
            if getattr(args, name, None) is not None}


def load_train_settings(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Any:
    """[train] settings: defaults, ``--config`` file, then flags (or the resumed run's).

    Raises:
        ConfigError: a bad config file or flag value.
        ModelError: ``--resume`` without a readable ``last.pt``.
    """
    from models.core.settings import load_settings  # noqa: PLC0415
    from models.train.training import resume_settings  # noqa: PLC0415

    overrides = {**(extra or {}), **overrides_from(args)}
    if args.resume:
        return resume_settings(args.out, overrides)
    return load_settings(args.config, {"train": overrides}).train


def report(summary: dict[str, Any], out: Path) -> int:
    """Print the outcome of a run; exit code 130 when interrupted."""
    val = summary["val"]
    print(f"stopped at step {summary['step']} ({summary['stopped']}); "
          f"val loss {val['loss']:.4f}, accuracy {val['accuracy']:.3f}, "
          f"perplexity {val['perplexity']:.2f}; best val loss {summary['best_val_loss']:.4f}")
    print(f"parameters {summary['parameters']:,}; last training speed "
          f"{summary['tokens_per_s']:.0f} tokens/s; checkpoints in {out}")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 130 if summary["stopped"] == "interrupted" else 0


def run(args: argparse.Namespace) -> int:
    """Train, then print the final validation metrics."""
    from models.train.training import RunRequest, train  # noqa: PLC0415 - torch only here

    settings = load_train_settings(args)
    request = RunRequest(data_dir=args.data, out_dir=args.out, resume=args.resume,
                         stop_at=args.stop_at, progress=not args.no_progress)
    summary = train(settings, request)
    if summary["rank"] != 0:  # under torchrun only the first process reports
        return 0
    return report(summary, args.out)
