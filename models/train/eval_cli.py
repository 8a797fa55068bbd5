"""``melody eval``: loss, next-token accuracy and perplexity of a checkpoint on a split."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

HELP = "evaluate a checkpoint on a dataset split: loss, accuracy, perplexity (JSON too)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``melody eval``."""
    parser.add_argument("checkpoint", type=Path, help="a .pt file written by train/fine-tune")
    parser.add_argument("--data", required=True, type=Path, help="dataset folder")
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"),
                        help="which split (default test)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per batch")
    parser.add_argument("--max-batches", type=int, help="evaluate at most this many batches")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="PyTorch CPU threads")
    parser.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16", "fp16"),
                        help="arithmetic of the evaluation (default fp32, the exact one)")
    parser.add_argument("--json", type=Path, dest="json_out",
                        help="where to write the metrics (default CHECKPOINT-eval-SPLIT.json)")


def run(args: argparse.Namespace) -> int:
    """Evaluate and print one line of metrics.

    Raises:
        ModelError: the checkpoint is missing or corrupt, or its vocabulary is not the
            dataset's.
        DataError: the dataset is missing or malformed.
    """
    from tqdm import tqdm  # noqa: PLC0415

    from models.core.exceptions import ModelError  # noqa: PLC0415
    from models.train.batches import WindowBatches, open_split, tokenizer_dict  # noqa: PLC0415
    from models.train.build import autocast_for, setup_runtime  # noqa: PLC0415 - torch only here
    from models.train.checkpoint import load_checkpoint  # noqa: PLC0415
    from models.train.evaluation import evaluate  # noqa: PLC0415

    runtime = setup_runtime(args.device, args.threads)
    loaded = load_checkpoint(args.checkpoint, map_location=runtime.device)
    tokens, manifest = open_split(args.data, args.split)
    data_tokenizer = tokenizer_dict(manifest, args.data)
    if loaded.tokenizer.get("fingerprint") != data_tokenizer.get("fingerprint"):
        raise ModelError(f"{args.checkpoint} was trained with another vocabulary than "
                         f"{args.data}")
    windows = WindowBatches(tokens, int(loaded.model_config["context_length"]))
    batches = tqdm(windows.eval_batches(args.batch_size, args.max_batches),
                   desc=f"eval {args.split}", unit="batch", leave=False)
    autocast, _ = autocast_for(runtime.device, args.precision)
    metrics = evaluate(loaded.model, batches, runtime.device, autocast)
    result = {"checkpoint": str(args.checkpoint), "data": str(args.data), "split": args.split,
              "arch": loaded.arch, "step": loaded.step, **metrics}
    out = args.json_out or args.checkpoint.with_name(
        f"{args.checkpoint.stem}-eval-{args.split}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{args.split}: loss {metrics['loss']:.4f}, accuracy {metrics['accuracy']:.3f}, "
          f"perplexity {metrics['perplexity']:.2f} over {metrics['tokens']} tokens "
          f"(written to {out})")
    return 0
