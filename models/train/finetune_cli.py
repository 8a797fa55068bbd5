"""``melody fine-tune``: adapt a trained model to one style, lower layers frozen.

The method of the thesis melodyd grew from: one base model, fine-tuned separately per
style with the embeddings and the lower blocks frozen, so a small style corpus adjusts
the upper layers without washing out what the base model learned.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from models.train.train_cli import add_common_arguments, load_train_settings, report

logger = logging.getLogger(__name__)

HELP = "fine-tune a checkpoint on a style's dataset with the lower blocks frozen"


def freeze_value(text: str) -> int | str:
    """A ``--freeze`` value: a number of lower blocks, or ``all`` (``freeze_lower``'s).

    Raises:
        argparse.ArgumentTypeError: neither a non-negative integer nor ``all``.
    """
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of blocks or 'all' "
                                         f"(received {text!r})")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``melody fine-tune`` (those of train, plus --from and --freeze)."""
    parser.add_argument("--from", dest="init_from", type=Path,
                        help="checkpoint to start from (e.g. RUN/best.pt); not needed "
                             "with --resume")
    parser.add_argument("--freeze", type=freeze_value, metavar="K",
                        help="freeze the embeddings and the lower K blocks, or 'all' (only "
                             "the token of a style new to the model learns) "
                             "(default [train] freeze)")
    parser.add_argument("--no-freeze", action="store_true",
                        help="train every weight: continue a model on new or more data "
                             "(e.g. the conditioned base on a larger build) instead of "
                             "adapting it to one style")
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Fine-tune, then print the final validation metrics.

    Raises:
        ModelError: no --from checkpoint (or an unreadable one), or K above the depth.
    """
    from models.core.exceptions import ModelError  # noqa: PLC0415
    from models.train.training import RunRequest, train  # noqa: PLC0415 - torch only here

    if args.init_from is None and not args.resume:
        raise ModelError("fine-tune needs --from CHECKPOINT (or --resume)")
    # Fine-tuning defaults: fewer steps at a lower rate than training from scratch.
    defaults = load_train_settings(argparse.Namespace(**{**vars(args), "resume": False}))
    extra = {} if args.resume else {"steps": defaults.finetune_steps,
                                    "lr": defaults.finetune_lr}
    settings = load_train_settings(args, extra)
    if args.no_freeze and args.freeze is not None:
        raise ModelError("--freeze K and --no-freeze contradict each other; pass one")
    freeze = None if args.no_freeze else (
        args.freeze if args.freeze is not None else settings.freeze)
    request = RunRequest(data_dir=args.data, out_dir=args.out, resume=args.resume,
                         init_from=args.init_from, freeze=freeze, stop_at=args.stop_at,
                         progress=not args.no_progress)
    summary = train(settings, request)
    if summary["rank"] != 0:
        return 0
    if summary["freeze"] is None:
        print("trained every weight (--no-freeze)")
    else:
        lower = ("every block" if summary["freeze"] == "all"
                 else f"{summary['freeze']} lower blocks")
        print(f"froze {summary['frozen']} parameter tensors (embeddings and {lower})")
    for name, token in summary["new_styles"].items():
        print(f"style {name!r} is new to the model: its token (id {token}) learned from "
              f"\"any style\"")
    if summary["start_val"] is not None:
        print(f"val loss before fine-tuning {summary['start_val']['loss']:.4f} (perplexity "
              f"{summary['start_val']['perplexity']:.2f})")
    return report(summary, args.out)
