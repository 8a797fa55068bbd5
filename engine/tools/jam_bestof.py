"""What N of best-of-N a machine sustains: decode time of a bar with N candidates against
the bar's length at a tempo.

``python -m engine.tools.jam_bestof --model models/pretrained/any.onnx --bpm 120`` decodes
answers to the jam harness's synthetic calls with N candidates per bar and no deadline
(so every bar gets all N), times each bar from the first step of its candidates to the
critic's choice, and prints per N the bar time as a share of the bar's length (median,
95th percentile, worst) and the measured cost of a step per batch size. A share under 1
means the bars are decided faster than they are played; the first bar of an answer must
also fit in the time between the request and its bar line (less the lead), which is what
the engine's own shrinking of N checks at run time.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np


def time_bars(decoder: Any, request: Any, session: str) -> list[float]:
    """Seconds each bar of one answer took to decide (from the previous bar line to the
    next, or to the end)."""
    gen = decoder.start(session, request)
    bars: list[float] = []
    began = time.perf_counter()
    while not gen.done:
        decoder.step([gen])
        # A bar is decided when the generation stands at the next bar line (or ended):
        # with N > 1 after the critic's choice, with one candidate after its Bar token.
        if gen.done or (gen.branches is None and gen.at_bar_start):
            now = time.perf_counter()
            bars.append(now - began)
            began = now
    return bars


def main(argv: Sequence[str] | None = None) -> int:
    """Time bars for each N; print a Markdown table."""
    from engine.decoder import StyleDecoder  # noqa: PLC0415
    from engine.model import load_model, resolve_model_path  # noqa: PLC0415
    from engine.tools.jam import SESSION, JamConfig, request_for, simulate, synthetic_calls  # noqa: PLC0415
    from models.core.protocol.messages import Candidates  # noqa: PLC0415
    from models.core.settings import load_settings  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="jam_bestof", description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--style", default="classical")
    parser.add_argument("--bpm", type=float, default=120.0)
    parser.add_argument("--n", default="1,2,4,8", help="comma-separated N to time")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    settings = load_settings()
    model = load_model(resolve_model_path(model=args.model), settings.engine)
    decoder = StyleDecoder(model, settings.engine)
    decoder.warm_up()
    calls = [c for c in synthetic_calls() if c.family in ("c_major", "keys", "texture")]
    print("| N | bars | bar time / bar length: median | p95 | max | step ms by rows |")
    print("|---|---|---|---|---|---|")
    for n in (int(x) for x in args.n.split(",")):
        shares: list[float] = []
        for repeat in range(args.repeats):
            for call in calls:
                config = JamConfig(seed=repeat, settings=settings)
                made = simulate(call, config.settings)
                if not made:
                    continue
                request = request_for(made[-1], call, settings, style=args.style, facts={},
                                      request_id="t")
                # No deadline: every bar gets all N, so each N is timed as asked.
                request = dataclasses.replace(
                    request, candidates=Candidates(n),
                    sampling=dataclasses.replace(request.sampling, seed=repeat))
                length_s = call.bar_length * 60.0 / args.bpm
                shares += [t / length_s for t in
                           time_bars(decoder, request, f"{SESSION}/{n}/{call.name}/{repeat}")]
        costs = ", ".join(f"{rows}: {1000 * s:.1f}"
                          for rows, s in sorted(decoder.best_of_n.step_seconds.items()))
        print(f"| {n} | {len(shares)} | {np.median(shares):.3f} | "
              f"{np.percentile(shares, 95):.3f} | {max(shares):.3f} | {costs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
