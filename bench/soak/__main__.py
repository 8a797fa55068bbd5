"""The soak's command line: ``python -m bench.soak [--quick] [--parts ...]``."""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import bench.soak
from bench.soak.common import DEFAULT_MODEL, PARTS
from bench.soak.dataset import run_dataset
from bench.soak.downbeat import run_downbeat
from bench.soak.fuzz import run_fuzz
from bench.soak.report import print_table, verdict, write_json
from bench.soak.stops import STOP_KINDS, run_stops
from bridge.drivers import jack


def tiny_model(workdir: Path) -> Path:
    """A random tiny GPT exported to ONNX (needs torch, the train extra)."""
    from export.tiny import export_tiny_model  # noqa: PLC0415 - torch is optional

    return export_tiny_model(workdir / "tiny.onnx", style="tiny")


def _list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of some of ``choices``."""
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad} (choose from {', '.join(choices)})")
        return items
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The soak's flags; their defaults are the issue's targets."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=(bench.soak.__doc__ or "").split("\n\n")[0].replace("\n", " "),
        epilog="Defaults are the issue's targets (an hour or more on 2 cores); --quick runs "
               "a few of each in a few minutes.")
    parser.add_argument("--parts", type=_list(PARTS), default=list(PARTS),
                        help=f"comma-separated parts to run ({','.join(PARTS)})")
    parser.add_argument("--model", default=str(DEFAULT_MODEL),
                        help="an ONNX model, or 'tiny' for a random tiny one built with torch "
                             "(default: the shipped romantic style)")
    parser.add_argument("--stops", type=int, default=130,
                        help="runs per kill kind (sigterm, sigint, ctrl-c, engine-kill) per "
                             "JACK client (130 x 4 = 520 >= the issue's 500)")
    parser.add_argument("--sigkills", type=int, default=50,
                        help="SIGKILLs of melodyd per JACK client (the note guardian's "
                             "releases; none without the native client)")
    parser.add_argument("--jack-stops", type=int, default=50,
                        help="JACK server stops per JACK client (each starts a server)")
    parser.add_argument("--kinds", type=_list(STOP_KINDS), default=list(STOP_KINDS),
                        help="kill kinds of the stops part")
    parser.add_argument("--clients", type=_list(("native", "rtmidi")),
                        default=["native", "rtmidi"], help="melodyd's [midi] jack_client(s)")
    parser.add_argument("--downbeats", type=int, default=100,
                        help="starts per case (3 byte orders with a phrase, a single note) "
                             "per JACK client")
    parser.add_argument("--fuzz", type=int, default=100_000, help="fuzzed messages")
    parser.add_argument("--ping-interval-ms", type=float, default=10.0,
                        help="the second client's pause between pings")
    parser.add_argument("--max-tokens", type=int, default=4000,
                        help="[data] max_tokens of the hostile dataset build (low, so that "
                             "a 1500-note file is over it)")
    parser.add_argument("--data-timeout", type=float, default=300.0,
                        help="seconds melody data build may take on the hostile folder")
    parser.add_argument("--periods", type=lambda t: [int(x) for x in t.split(",") if x],
                        default=[64, 256], help="JACK periods in frames; the runs cycle "
                                                "through them (the first one for downbeat)")
    parser.add_argument("--bpm", type=float, default=120.0)
    parser.add_argument("--probe", choices=("native", "rtmidi"),
                        default="native" if jack.available() else "rtmidi",
                        help="the listener's JACK client for the stops part")
    parser.add_argument("--seed", type=int, default=0, help="seed of kill delays and fuzz")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: 5 stops per kind, 2 SIGKILLs, 2 JACK stops, 5 "
                             "downbeats per case, 2000 fuzz messages (overrides those flags)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder (logs of every run, the hostile folder)")
    parser.add_argument("--json", type=Path, default=Path("bench/results/soak.json"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen parts, print the table, write the JSON; 1 when a target is missed,
    2 when the soak cannot run (no model, no jackd)."""
    args = build_parser().parse_args(argv)
    if args.quick:
        args.stops, args.sigkills, args.jack_stops, args.downbeats, args.fuzz = 5, 2, 2, 5, 2000
    workdir = Path(tempfile.mkdtemp(prefix="melodyd-soak-"))
    if args.model == "tiny":
        args.model = tiny_model(workdir)
    args.model = Path(args.model)
    if not args.model.is_file():
        print(f"error: model file not found: {args.model}", file=sys.stderr)
        return 2
    live = {"stops", "downbeat"} & set(args.parts)
    if live and shutil.which("jackd") is None:
        print("error: the stops and downbeat parts need jackd (Debian: apt-get install "
              "jackd2)", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    started = time.monotonic()
    result: dict[str, Any] = {
        "model": str(args.model), "bpm": args.bpm, "periods": args.periods,
        "probe": args.probe, "seed": args.seed, "workdir": str(workdir),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if "stops" in args.parts:
        result["stops"] = run_stops(args, workdir, rng)
    if "downbeat" in args.parts:
        result["downbeat"] = run_downbeat(args, workdir)
    if "fuzz" in args.parts:
        result["fuzz"] = run_fuzz(args, workdir, rng)
    if "dataset" in args.parts:
        result["dataset"] = run_dataset(args, workdir)
    result["seconds"] = round(time.monotonic() - started, 1)
    result["missed_targets"] = verdict(result)
    print_table(result)
    for line in result["missed_targets"]:
        print(f"MISSED: {line}")
    write_json(result, args.json)
    if args.keep or result["missed_targets"]:
        print(f"logs (failed runs, melodyd under --clock midi, the engine): {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if result["missed_targets"] else 0


if __name__ == "__main__":
    sys.exit(main())
