"""``melody bench engine``: the engine benchmark from the command line.

The engine's own figures are ``engine/tools/bench.py`` (torch-free); the comparisons that
need torch, onnx or another environment (PyTorch eager, onnxruntime-genai, ``--size``) are
``export/compare.py``, which imports those only when asked. The command lives here, in
``export``, because only ``export`` may reach both; on an install without torch it still
gives the engine's figures (``--no-torch`` is then implied: the PyTorch column is empty).
Both are imported inside ``run`` so ``melody --help`` stays fast.

``python -m export.bench_cli [flags]`` (and the checkout's ``python -m bench.engine``)
runs it without the ``melody`` dispatcher.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from models.core.commands import configure_logging, run_command
from models.core.exceptions import EngineError
from models.core.settings import EngineSettings

if TYPE_CHECKING:  # the benchmark is imported only when it runs
    from engine.tools.bench import BenchConfig, Comparison

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


def _comparisons(args: argparse.Namespace) -> list[Comparison]:
    """What runs beside the engine's own figures: PyTorch eager, onnxruntime-genai."""
    from export import compare  # noqa: PLC0415 - imports neither torch nor onnx itself

    comparisons = [compare.torch_eager(enabled=not args.no_torch)]
    if args.genai_python:
        comparisons.append(compare.genai(args.genai_python))
    return comparisons


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print its table and write its JSON.

    Raises:
        EngineError: the model cannot be loaded, or ``--size`` cannot build its models.
    """
    from engine.model import resolve_model_path  # noqa: PLC0415 - onnxruntime loads here
    from engine.tools.bench import (  # noqa: PLC0415
        BenchConfig,
        format_table,
        run_benchmark,
        write_json,
    )
    from models.core.settings import load_settings  # noqa: PLC0415

    overrides = {"engine": {"intra_op_threads": args.threads}}
    settings = load_settings(args.config, overrides).engine
    path = resolve_model_path(args.model, args.style)
    config = BenchConfig(pasts=args.pasts, prefills=args.prefills, batches=args.batches,
                         batch_past=args.batch_past, steps=args.steps)
    if args.size:
        return _run_sizes(args, path, settings, config)
    results = run_benchmark(path, settings, config,
                            progress=lambda what: logger.info("measuring %s", what),
                            comparisons=_comparisons(args))
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

    from engine.tools.bench import (  # noqa: PLC0415
        format_sizes,
        format_table,
        run_benchmark,
        write_json,
    )
    from export.compare import write_random_model  # noqa: PLC0415

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
                                       comparisons=_comparisons(args))
            print(format_table(runs[size]) + "\n")
    print(format_sizes(runs))
    written = write_json({"sizes": runs}, args.json)
    print(f"\nwrote {written}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m export.bench_cli [flags]``: the same as ``melody bench engine [flags]``."""
    parser = argparse.ArgumentParser(prog="melody bench", description=HELP)
    add_arguments(parser)
    args = parser.parse_args(["engine", *(sys.argv[1:] if argv is None else argv)])
    configure_logging(verbose=False)
    return run_command(sys.modules[__name__], args)


if __name__ == "__main__":
    sys.exit(main())
