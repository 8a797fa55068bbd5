"""The dataset part: ``melody data build`` on ``bench/hostile_folder.py``'s hostile folder
plus a few entries of its own; every entry must be kept or skipped with its expected
reason, and no kept piece may exceed ``max_tokens``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.hostile_folder import check_build, make_hostile_folder, melody, smf
from models.core.settings import DataSettings
from models.data.sources import (
    SKIP_EMPTY,
    SKIP_PARSE,
    SKIP_TOO_LARGE,
    SKIP_TOO_MANY_TOKENS,
    printable_name,
)

# Entries whose names alone are hostile: a file system allows any bytes but "/" and NUL.
NAME_HAZARDS = (b"bad\xffname.mid",)


def add_extra_entries(root: Path, max_tokens: int) -> dict[str, str | None]:
    """Entries beside ``bench.hostile_folder``'s: names that are not UTF-8 or hold a
    newline, a 30-folder-deep file, a folder named like a MIDI file, a file over
    max_file_bytes, a piece over ``max_tokens``, broken chunk lengths. Returns each
    entry's expected fate as ``make_hostile_folder`` does (None = kept, else the reason)."""
    good = smf(melody(16, first=58))
    expected: dict[str, str | None] = {}

    def write(rel: str, data: bytes, outcome: str | None) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[rel] = outcome

    for name in NAME_HAZARDS:
        write(os.fsdecode(name), good, None)
        # The manifest names the file with its odd bytes as \xNN (JSON holds text only).
        expected[printable_name(os.fsdecode(name))] = expected.pop(os.fsdecode(name))
    write("new\nline.mid", good, None)
    write("folder.mid/inside.mid", good, None)
    write("/".join(f"d{i}" for i in range(30)) + "/deep.mid", good, None)
    # At least 4 tokens a note (position, pitch, velocity, duration): over the limit.
    write("dense.mid", smf(melody(max_tokens // 3 + 50, gap=120, length=60)),
          SKIP_TOO_MANY_TOKENS)
    write("one_note.mid", smf(melody(1)), SKIP_EMPTY)
    write("header_only.mid", good[:14], SKIP_EMPTY)
    write("sysex.mid", smf([(0, b"\xf0\xff\xff\xff\x7f\x01\x02"), *melody(12)]), SKIP_PARSE)
    write("chunk_length.mid", good[:18] + b"\xff\xff\xff\xff" + good[22:], SKIP_PARSE)
    write("big.mid", good, SKIP_TOO_LARGE)
    os.truncate(root / "big.mid", DataSettings().max_file_bytes + 1)  # sparse: no disk cost
    return expected


def build_once(args: argparse.Namespace, source: Path, out: Path, config: Path) -> dict:
    """``melody data build`` on ``source``: exit code, time, peak memory, output tail."""
    exe = shutil.which("melody")
    command = [exe] if exe else [sys.executable, "-m", "models.cli"]
    command += ["data", "build", "--source", str(source), "--out", str(out), "--jobs", "2",
                "--no-progress", "--config", str(config)]
    log = out.with_suffix(".log")
    started = time.monotonic()
    with open(log, "w") as fh:
        process = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    timer = threading.Timer(args.data_timeout, process.kill)
    timer.start()
    try:
        # wait4, not wait: its usage is this build's own (workers included), where
        # RUSAGE_CHILDREN would also hold every melodyd and engine run before it.
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    output = log.read_text(errors="replace")
    last = [line for line in output.splitlines() if line.strip()]
    result = {"exit_code": process.returncode, "seconds": round(seconds, 2),
              "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
              "last_line": last[-1][-300:] if last else "", "output_tail": output[-1500:]}
    if seconds >= args.data_timeout:
        result["error"] = f"took more than {args.data_timeout:g} s"
    return result


def run_dataset(args: argparse.Namespace, workdir: Path) -> dict:
    """``melody data build`` on the hostile folder; every entry kept or skipped as expected
    (``bench.hostile_folder.check_build``), no piece above ``max_tokens``.

    A build that fails outright is reported, then retried without the entries whose
    names alone are hostile, so that the other checks still run.
    """
    source, out = workdir / "hostile", workdir / "hostile-dataset"
    expected = make_hostile_folder(source)
    expected.update(add_extra_entries(source, args.max_tokens))
    config = workdir / "data.toml"
    config.write_text(f"[data]\nmax_tokens = {args.max_tokens}\n")
    result: dict[str, Any] = {"max_tokens": args.max_tokens}
    build = build_once(args, source, out, config)
    if build["exit_code"] != 0:
        result["first_build_failed"] = build.get("error") or build["last_line"]
        result["first_build_output"] = build.get("output_tail", "")
        for name in map(os.fsdecode, NAME_HAZARDS):
            (source / name).unlink()
            expected.pop(printable_name(name))
        result["retried_without"] = [os.fsdecode(n) for n in NAME_HAZARDS]
        build = build_once(args, source, out, config)
    result.update(build, entries=len(expected))
    if build["exit_code"] != 0 or not (out / "manifest.json").is_file():
        result["error"] = f"melody data build failed: {build.get('error') or build['last_line']}"
        return result
    manifest = json.loads((out / "manifest.json").read_text())
    check = check_build(out, manifest, expected, DataSettings(max_tokens=args.max_tokens))
    result.update(check)
    result["skipped_total"] = sum(check["skipped"].values())
    result["above_max_tokens"] = int(check["longest_piece_tokens"] > args.max_tokens)
    return result

