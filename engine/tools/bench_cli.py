"""``melody bench engine``: the engine benchmark (``bench/engine.py``) from the command line.

The benchmark lives in the source checkout's ``bench/`` folder; this command imports it
inside ``run`` so ``melody --help`` stays fast and never needs torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from models.core.exceptions import EngineError
from models.core.settings import EngineSettings

if TYPE_CHECKING:  # the benchmark is imported only when it runs
    from bench.engine import BenchConfig

logger = logging.getLogger(__name__)

HELP = "benchmark the engine: decode latency, prefill, recompute/PyTorch ratios, batching"


def _counts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected numbers like 64,256 (received {text!r})") from err
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers (received {text!r})")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``melody bench``."""
    parser.add_argument("target", choices=["engine"], help="what to benchmark")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="M.onnx", help="a melodyd ONNX model file (gpt)")
    source.add_argument("--style", metavar="S", help="an installed style")
    parser.add_argument("--steps", type=int, default=200,
                        help="timed decode steps per measurement (default 200)")
    parser.add_argument("--pasts", type=_counts, default=(64, 256, 512, 1000),
                        help="cache lengths of the decode latency (default 64,256,512,1000)")
    parser.add_argument("--prefills", type=_counts, default=(256, 512),
                        help="prompt lengths of the prefill timing (default 256,512)")
    parser.add_argument("--batches", type=_counts, default=(1, 8, 20, 32, 64),
                        help="session counts of the batched timing (default 1,8,20,32,64; 64 "
                             "is the real-time target)")
    parser.add_argument("--batch-past", type=int, default=256,
                        help="cache length of each batched session (default 256)")
    parser.add_argument("--threads", type=int, default=None,
                        help="ONNX Runtime intra-op threads (default: [engine] setting)")
    parser.add_argument("--size", metavar="LxC[hD],...", default=None,
                        help="instead of the model itself, time GPTs of these sizes (layers x "
                             "width, optional head size, e.g. 4x256,8x384h48) with random "
                             "weights and the model's vocabulary and context; needs torch (the "
                             "exporter builds them)")
    parser.add_argument("--head-size", type=int, default=None,
                        help="head size of the --size models (default 64 where the width "
                             "allows, else 48, 32 or 16)")
    parser.add_argument("--genai-python", metavar="PYTHON", default=None,
                        help="also time onnxruntime-genai's loop on the same weights, run by "
                             "this Python (one that imports onnxruntime_genai, e.g. a venv's)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--config", metavar="FILE", help="a config.toml merged over defaults")
    parser.add_argument("--json", metavar="PATH", default="engine_bench.json",
                        help="where to write the results (default engine_bench.json)")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print its table and write its JSON.

    Raises:
        EngineError: the benchmark is not in this install, or the model cannot be loaded.
    """
    try:
        from bench.engine import BenchConfig, format_table, run_benchmark, write_json  # noqa: PLC0415
    except ImportError as err:
        raise EngineError("the benchmark lives in the source checkout's bench/ folder; run "
                          "this command from a checkout of melodyd") from err
    from engine.model import resolve_model_path  # noqa: PLC0415
    from models.core.settings import load_settings  # noqa: PLC0415

    overrides = {"engine": {"intra_op_threads": args.threads}}
    settings = load_settings(args.config, overrides).engine
    path = resolve_model_path(args.model, args.style)
    config = BenchConfig(pasts=args.pasts, prefills=args.prefills, batches=args.batches,
                         batch_past=args.batch_past, steps=args.steps,
                         torch=not args.no_torch)
    if args.size:
        return _run_sizes(args, path, settings, config)
    results = run_benchmark(path, settings, config,
                            progress=lambda what: logger.info("measuring %s", what),
                            genai_python=args.genai_python)
    print(format_table(results))
    written = write_json(results, args.json)
    print(f"\nwrote {written}", file=sys.stderr)
    return 0


def _run_sizes(args: argparse.Namespace, like: Path, settings: EngineSettings,
               config: BenchConfig) -> int:
    """``--size``: the benchmark of random-weight GPTs of each size, then one summary table.

    Raises:
        EngineError: a malformed size, or torch/onnx (the exporter) are not installed.
    """
    import tempfile  # noqa: PLC0415

    from bench.engine import (  # noqa: PLC0415
        format_sizes,
        format_table,
        run_benchmark,
        write_json,
        write_random_model,
    )

    runs = {}
    with tempfile.TemporaryDirectory(prefix="melodyd-bench-") as tmp:
        for size in args.size.split(","):
            try:
                path = write_random_model(like, size, tmp, head_size=args.head_size)
            except ImportError as err:
                raise EngineError(f"--size builds models with the exporter, which needs "
                                  f"torch and onnx ({err})") from err
            except ValueError as err:
                raise EngineError(f"--size: {err}") from err
            logger.info("measuring a random %s model (%s)", size, path.name)
            runs[size] = run_benchmark(path, settings, config,
                                       progress=lambda what: logger.info("measuring %s", what),
                                       genai_python=args.genai_python)
            print(format_table(runs[size]) + "\n")
    print(format_sizes(runs))
    written = write_json({"sizes": runs}, args.json)
    print(f"\nwrote {written}", file=sys.stderr)
    return 0
