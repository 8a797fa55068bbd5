"""``melody export``: a checkpoint to a verified, self-describing ONNX model.

Heavy imports (torch, onnx, onnxruntime) happen inside ``run`` so ``melody --help`` stays
fast and works without the train extra.
"""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)

# Kept in step with export.onnx_graph / export.quantize, which cannot be imported here
# without torch and onnxruntime; a test checks they agree.
DEFAULT_OPSET = 17
MIN_AGREEMENT = 0.95
MAX_KL = 0.05

HELP = "export a checkpoint to an ONNX model with KV-cache inputs/outputs, verified"


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0 and 1 (received {text})")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0 (received {text})")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's arguments."""
    parser.description = (
        "Export a melodyd checkpoint to ONNX. The GPT graph takes input_ids, position_ids, "
        "seqlens_k, query_seqlens, total_sequence_length and past_key_values.{i}.key/.value "
        "(a buffer shared with present.{i}.key/.value that each call updates in place) and "
        "returns logits and present.{i}.key/.value (LSTM/GRU: past_state.* -> "
        "present_state.*); its "
        "'melodyd' metadata describes the model, tokenizer, style and cache. The file is "
        "written only after ONNX Runtime matched PyTorch within 1e-4 on a prefill and 16 "
        "decode steps at batch 1 and batch > 1.")
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint (.pt) to export")
    parser.add_argument("-o", "--output", required=True, metavar="MODEL.onnx",
                        help="ONNX file to write (its directory must exist)")
    parser.add_argument("--int8", action="store_true",
                        help="write weight-only int8 (MatMul weights, one scale per output "
                             "channel, float arithmetic) instead of fp32; refused unless its "
                             "cached decoding equals its full pass within 1e-3, its top-1 "
                             "agreement with fp32 "
                             f"is >= --min-agreement ({MIN_AGREEMENT}) and its mean KL is "
                             f"<= --max-kl ({MAX_KL} nats)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N",
                        help=f"ONNX opset version, 14-20 (default {DEFAULT_OPSET})")
    parser.add_argument("--style", metavar="NAME",
                        help="style name served by the engine (default: from the checkpoint, "
                             "else the output file name)")
    parser.add_argument("--max-batch", type=int, default=4, metavar="B",
                        help="batch of the parity check with mixed history lengths, checked "
                             "besides batch 1 (default 4); the graph itself takes any batch")
    parser.add_argument("--data", metavar="DIR",
                        help="dataset (melody data build) whose validation split checks --int8; "
                             "default: the checkpoint's training dataset if it still exists, "
                             "else a few Bach chorales from music21")
    parser.add_argument("--min-agreement", type=_probability, default=MIN_AGREEMENT,
                        metavar="P", help=f"lowest int8 top-1 agreement accepted "
                                          f"(default {MIN_AGREEMENT})")
    parser.add_argument("--max-kl", type=_non_negative, default=MAX_KL, metavar="NATS",
                        help=f"highest int8 mean KL accepted (default {MAX_KL})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the parity inputs")


def _mib(size: int) -> str:
    return f"{size / 2**20:.2f} MiB"


def run(args: argparse.Namespace) -> int:
    """Export, verify and print a summary; errors raise MelodyError subclasses.

    Raises:
        ModelError: a missing or corrupt checkpoint, or an unknown architecture.
        ExportError: a bad output path or argument, a failed export or parity check, or
            a refused int8 model.
        DataError: ``--data`` is unusable.
    """
    from export.pipeline import check_output_path, export_checkpoint  # noqa: PLC0415

    # Check the cheap things before paying for the torch import of a checkpoint load.
    check_output_path(args.output)
    result = export_checkpoint(
        args.checkpoint, args.output, int8=args.int8, opset=args.opset, style=args.style,
        max_batch=args.max_batch, data_dir=args.data, min_agreement=args.min_agreement,
        max_kl=args.max_kl, seed=args.seed, show_progress=sys.stderr.isatty())
    card = result.card
    lines = [
        f"wrote {result.path}",
        f"  model      {card.arch} {card.model_config}",
        f"  style      {card.style}, context {card.context_length} tokens, "
        f"vocabulary {card.tokenizer.get('vocab_size')}",
        f"  size       {_mib(result.size_bytes)} ({card.quantization}); "
        f"fp32 graph {_mib(result.fp32_size_bytes)}",
        f"  parity     {result.parity.summary()}",
    ]
    if result.quant is not None:
        lines.append(f"  int8       {result.quant.summary()}")
    print("\n".join(lines))
    return 0
