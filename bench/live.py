"""Live benchmark of melodyd through real JACK ports.

Starts a private JACK server (dummy backend), runs ``melodyd --backend jack`` with a
model (its engine as a child process), and a probe client that plays phrases at a tempo
and records the answers. Measures:

- output onset error against the 1/12-beat grid of melodyd's timeline (p50/p99/max),
  on the wall clock at the probe's input;
- phrase end -> first answer note out, and trigger -> first note from the engine;
- notes dropped for lateness (melodyd's own count);
- idle CPU of melodyd and its engine child (% of one core over ``--idle`` seconds with
  nobody playing, from /proc), with the internal clock and again with ``--clock midi``
  while the probe sends MIDI clock, and their resident memory;
- with ``--idle-periods 64,128,256``, idle CPU at each JACK period next to a bare process
  that holds nothing but the same two ports (what JACK's per-period wake-ups cost).

The probe is melodyd's own JACK client by default (``--probe native``), which stamps each
note with the time of its frame; ``--probe rtmidi`` stamps on arrival in the callback.

Prints a table and writes JSON. Run: ``python bench/live.py --model models/pretrained/X.onnx``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bridge.engine_child import stop_process
from bridge.jack_rig import JackServer, Probe
from models.core.settings import Settings

POSITIONS_PER_BEAT = 12
STOP_S = 15.0  # melodyd's grace to stop after SIGTERM
PHRASES = [
    [(0.0, 0.5, 60, 80), (1.0, 0.5, 64, 90), (2.0, 0.5, 67, 100), (3.0, 0.75, 72, 90)],
    [(0.0, 0.25, 69, 70), (0.5, 0.25, 67, 80), (1.0, 1.0, 65, 90), (2.5, 1.0, 64, 80)],
]
# Accompany mode (--mode accompany): a four-bar melody per try, above C5 so the
# accompaniment goes under it; melodyd plays along, a bar ahead, and stops
# ACCOMPANY_STOP_BARS bars after it.
MELODY = [(float(beat), 0.9, pitch, 90) for beat, pitch in enumerate(
    (72, 74, 76, 77, 79, 77, 76, 74, 72, 76, 79, 84, 83, 79, 74, 72))]
ACCOMPANY_STOP_BARS = 2
CONFIG = """
[midi]
output_latency_ms = {output_latency_ms}
jack_client = "{jack_client}"
[interaction]
status_interval_s = 1.0
response_bars = {bars}
accompany_stop_bars = {stop_bars}
[sampling]
max_polyphony = {polyphony}
candidates = {candidates}
"""


def clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / clock_ticks()


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def private_rss_mb(pid: int) -> float:
    """Resident memory without JACK's shared segments (/dev/shm/jack-*), in MB.

    Every JACK client maps the server's shared memory (about 100 MB at 64-frame periods);
    it is the server's, counted once on the machine, not the client's own.
    """
    total = 0
    shared = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            parts = line.split()
            shared = len(parts) > 5 and parts[5].startswith("/dev/shm/jack")
        elif line.startswith("Rss:") and not shared:
            total += int(line.split()[1])
    return total / 1024


def children(pid: int) -> list[int]:
    """Direct children of a process (from /proc/PID/task/*/children)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(x) for x in text]
    return found


def child_pids(pid: int) -> dict[str, int]:
    """melodyd's children by what they are: ``engine[PID]`` or ``guardian[PID]``."""
    named = {}
    for child in children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # it has just exited
        kind = "guardian" if b"bridge.guardian" in command else "engine"
        named[f"{kind}[{child}]"] = child
    return named


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest-rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def wait_for_log(path: Path, pattern: str, timeout: float, count: int = 1) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = path.read_text(errors="replace")
        if len(re.findall(pattern, text)) >= count:
            return text
        time.sleep(0.05)
    raise SystemExit(f"melodyd did not log {pattern!r} within {timeout} s:\n"
                     f"{path.read_text(errors='replace')[-3000:]}")


def launch(args: argparse.Namespace, workdir: Path, name: str,
           clock: list[str]) -> tuple[subprocess.Popen, Path]:
    """Start melodyd on the bench's JACK server; its log goes to ``workdir/name.log``."""
    config = workdir / "bench.toml"
    config.write_text(CONFIG.format(bars=args.bars, polyphony=args.polyphony,
                                    candidates=args.candidates,
                                    stop_bars=ACCOMPANY_STOP_BARS,
                                    output_latency_ms=args.output_latency_ms,
                                    jack_client=args.jack_client))
    log_path = workdir / f"{name}.log"
    exe = shutil.which("melodyd")
    command = [exe] if exe else [sys.executable, "-m", "bridge.cli"]
    command += ["--backend", "jack", "--model", str(args.model), *clock,
                "--config", str(config), "--verbose", "--mode", args.mode]
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
    return daemon, log_path


def idle_cpu_percent(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU of each process over ``seconds`` of nobody playing, in % of one core."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    return {name: 100.0 * (cpu_seconds(pid) - before[name]) / elapsed
            for name, pid in pids.items()}


def idle_under_midi_clock(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    """Idle CPU of ``melodyd --clock midi`` while the probe sends MIDI clock at the tempo
    (a DAW's transport running, nobody playing): every tick wakes melodyd."""
    daemon, log_path = launch(args, workdir, "melodyd-midi-clock", ["--clock", "midi"])
    probe = None
    try:
        wait_for_log(log_path, r"engine at .* is up", 120)
        probe = Probe(timeout=60, native=args.probe == "native")
        probe.start_clock(args.bpm)
        time.sleep(2.0)
        pids = {"melodyd": daemon.pid, **child_pids(daemon.pid)}
        return idle_cpu_percent(pids, args.idle)
    finally:
        if probe is not None:
            probe.stop_clock()
            probe.close()
        stop_process(daemon, STOP_S)


BARE_CLIENT = """
import sys, time
from bridge.drivers.system import open_ports
from bridge.listener import CLOCK_WAKE_EVERY
open_ports("jack", in_name="bare in", out_name="bare out", connect_in="", connect_out="",
           callback=lambda *a: None, jack_client=sys.argv[1], clock_batch=CLOCK_WAKE_EVERY)
time.sleep(3600)
"""


def idle_sweep(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """Idle CPU at each of ``--idle-periods`` (fresh JACK server each): melodyd with the
    internal clock, melodyd following MIDI clock, and a bare process holding nothing but
    the same two ports (the MIDI system's own cost: JACK wakes every client each period)."""
    rows = []
    saved = dict(os.environ)
    for period in args.idle_periods:
        server = JackServer(period=period)
        server.start()
        os.environ.update(server.env())
        try:
            row = {"period_frames": period, "period_ms": server.period_s * 1000}
            bare = subprocess.Popen([sys.executable, "-c", BARE_CLIENT, args.jack_client])
            try:
                time.sleep(2.0)
                row["bare_ports"] = idle_cpu_percent({"bare": bare.pid}, args.idle)["bare"]
            finally:
                stop_process(bare, STOP_S)
            daemon, log_path = launch(args, workdir, f"melodyd-idle-{period}",
                                      ["--bpm", str(args.bpm)])
            try:
                wait_for_log(log_path, r"engine at .* is up", 120)
                time.sleep(2.0)
                row["melodyd"] = idle_cpu_percent({"m": daemon.pid}, args.idle)["m"]
            finally:
                stop_process(daemon, STOP_S)
            row["melodyd_midi_clock"] = idle_under_midi_clock(args, workdir)["melodyd"]
        finally:
            server.stop()
            os.environ.clear()
            os.environ.update(saved)
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> dict:
    server = JackServer(period=args.period)
    server.start()
    os.environ.update(server.env())
    workdir = Path(tempfile.mkdtemp(prefix="melodyd-bench-"))
    daemon, log_path = launch(args, workdir, "melodyd", ["--bpm", str(args.bpm)])
    probe = None
    try:
        probe = Probe(timeout=60, native=args.probe == "native")
        text = wait_for_log(log_path, r"engine at .* is up", 120)
        origin = float(re.search(r"beat 0 at monotonic ([0-9.]+)", text).group(1))
        spb = 60.0 / args.bpm
        helpers = child_pids(daemon.pid)

        # Idle: nobody plays. Let start-up settle first.
        time.sleep(2.0)
        pids = {"melodyd": daemon.pid, **helpers}
        idle_cpu = idle_cpu_percent(pids, args.idle)

        xruns_before = server.xruns()
        errors_ms: list[float] = []
        signed_ms: list[float] = []
        reaction_ms: list[float] = []
        answered = 0
        for i in range(args.phrases):
            bar = math.ceil((time.monotonic() + 0.3 - origin) / (4 * spb))
            start = origin + bar * 4 * spb
            probe.clear()
            if args.mode == "accompany":
                # melodyd plays under the melody from its second bar on: measure from
                # the melody's start until its accompaniment has stopped.
                end = probe.play(MELODY, start, spb)
                answer_end = start + (4 + ACCOMPANY_STOP_BARS + 1) * 4 * spb
                since = start
            else:
                end = probe.play(PHRASES[i % len(PHRASES)], start, spb)
                answer_bar = math.ceil(((end - origin) / spb + 1.0 + 0.1) / 4)
                answer_end = origin + (answer_bar + args.bars) * 4 * spb
                since = end
            time.sleep(max(0.0, answer_end - time.monotonic()) + 0.3)
            ons = [r for r in probe.messages(since) if r.message.type == "note_on"
                   and r.message.velocity > 0 and r.t > since]
            if not ons:
                continue
            answered += 1
            reaction_ms.append((ons[0].t - since) * 1000)
            for r in ons:
                beat = (r.t - origin) / spb
                line = round(beat * POSITIONS_PER_BEAT) / POSITIONS_PER_BEAT
                error = (r.t - (origin + line * spb)) * 1000
                signed_ms.append(error)
                errors_ms.append(abs(error))
        xruns = server.xruns() - xruns_before
        rss = {name: rss_mb(pid) for name, pid in pids.items()}
        own_rss = {name: private_rss_mb(pid) for name, pid in pids.items()}
        if probe is not None:
            probe.close()
            probe = None
        stop_process(daemon, STOP_S)
        # melodyd's own final count, logged as it stops (not a status line up to 1 s old).
        text = log_path.read_text(errors="replace")
        final = re.findall(r"stopped: notes sent (\d+) dropped (\d+)", text)
        sent, dropped = (int(final[-1][0]), int(final[-1][1])) if final else (0, 0)
        engine_latency = [float(x) for x in re.findall(r"first note (\d+) ms after trigger", text)]
        idle_midi = idle_under_midi_clock(args, workdir) if args.midi_clock_idle else {}
    finally:
        if probe is not None:
            probe.close()
        stop_process(daemon, STOP_S)
        server.stop()
    sweep = idle_sweep(args, workdir)
    return {
        "model": str(args.model), "mode": args.mode, "bpm": args.bpm,
        "jack_client": args.jack_client,
        "probe": args.probe, "jack_period_frames": args.period,
        "jack_period_ms": server.period_s * 1000, "phrases": args.phrases,
        "answered": answered, "onsets": len(errors_ms),
        "onset_error_ms": {"p50": percentile(errors_ms, 50), "p99": percentile(errors_ms, 99),
                           "max": max(errors_ms, default=float("nan")),
                           "mean_signed": statistics.fmean(signed_ms) if signed_ms else None,
                           "within_target": (sum(e <= server.period_s * 1000 + 0.5
                                                 for e in errors_ms) / len(errors_ms)
                                             if errors_ms else None),
                           "signed_all": [round(e, 3) for e in signed_ms]},
        "phrase_end_to_first_note_ms": {"p50": percentile(reaction_ms, 50),
                                        "max": max(reaction_ms, default=float("nan"))},
        "trigger_to_first_engine_note_ms": {"p50": percentile(engine_latency, 50),
                                            "max": max(engine_latency, default=float("nan"))},
        "notes_sent": sent, "notes_dropped": dropped, "jack_xruns_while_playing": xruns,
        "idle_cpu_percent_of_core": idle_cpu, "idle_seconds": args.idle,
        "idle_cpu_under_midi_clock_percent_of_core": idle_midi,
        "idle_cpu_by_period": sweep,
        "rss_mb": rss, "rss_mb_total": sum(rss.values()),
        "rss_without_jack_shm_mb": own_rss,
        "rss_without_jack_shm_mb_total": sum(own_rss.values()),
        "output_latency_ms": args.output_latency_ms,
        "target_p99_ms": server.period_s * 1000 + 0.5,
    }


def print_table(result: dict) -> None:
    e = result["onset_error_ms"]
    rows = [
        ("model / mode", f"{Path(result['model']).name} / {result.get('mode', 'call')}"),
        ("melodyd's JACK client / probe's", f"{result['jack_client']} / {result['probe']}"),
        ("output latency compensation", f"{result['output_latency_ms']:g} ms"),
        ("tempo / JACK period", f"{result['bpm']:g} BPM / {result['jack_period_frames']} "
                                f"frames = {result['jack_period_ms']:.2f} ms"),
        ("phrases answered", f"{result['answered']} / {result['phrases']}"),
        ("onsets measured", str(result["onsets"])),
        ("onset error p50 / p99 / max", f"{e['p50']:.2f} / {e['p99']:.2f} / {e['max']:.2f} ms "
                                        f"(target p99 <= {result['target_p99_ms']:.2f} ms)"),
        ("onsets within target", f"{100 * e['within_target']:.1f} %" if e["within_target"]
         is not None else "-"),
        ("onset error mean (signed)", f"{e['mean_signed']:+.2f} ms" if e["mean_signed"]
         is not None else "-"),
        ("phrase end (accompany: melody start) -> first note p50 / max",
         "{p50:.0f} / {max:.0f} ms".format(**result["phrase_end_to_first_note_ms"])),
        ("trigger -> first engine note p50 / max",
         "{p50:.0f} / {max:.0f} ms".format(**result["trigger_to_first_engine_note_ms"])),
        ("notes sent / dropped", f"{result['notes_sent']} / {result['notes_dropped']}"),
        ("JACK xruns while playing", str(result["jack_xruns_while_playing"])),
    ]
    rows += [(f"idle CPU {name}", f"{pct:.2f} % of a core over {result['idle_seconds']:g} s")
             for name, pct in result["idle_cpu_percent_of_core"].items()]
    rows += [(f"idle CPU {name}, MIDI clock running", f"{pct:.2f} % of a core")
             for name, pct in result["idle_cpu_under_midi_clock_percent_of_core"].items()]
    own = result["rss_without_jack_shm_mb"]
    rows += [(f"RSS {name}", f"{mb:.0f} MB ({own[name]:.0f} MB without JACK's shared memory)")
             for name, mb in result["rss_mb"].items()]
    rows.append(("RSS total", f"{result['rss_mb_total']:.0f} MB "
                              f"({result['rss_without_jack_shm_mb_total']:.0f} MB without "
                              "JACK's shared memory)"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if result["idle_cpu_by_period"]:
        print(f"\nidle CPU, % of a core over {result['idle_seconds']:g} s "
              f"(JACK client: {result['jack_client']})")
        print(f"{'JACK period':>18}  {'melodyd':>8}  {'+MIDI clock':>11}  {'bare ports':>10}")
        for row in result["idle_cpu_by_period"]:
            period = f"{row['period_frames']} ({row['period_ms']:.2f} ms)"
            print(f"{period:>18}  {row['melodyd']:>8.2f}  {row['melodyd_midi_clock']:>11.2f}  "
                  f"{row['bare_ports']:>10.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="an exported ONNX model")
    parser.add_argument("--bpm", type=float, default=120.0)
    parser.add_argument("--mode", choices=("call", "accompany"), default="call",
                        help="answer phrases, or accompany a 4-bar melody (a model with "
                             "role tokens) per try")
    parser.add_argument("--phrases", type=int, default=8)
    parser.add_argument("--bars", type=int, default=2, help="answer length in bars")
    parser.add_argument("--polyphony", type=int, default=4, help="[sampling] max_polyphony")
    parser.add_argument("--candidates", type=int, default=Settings().sampling.candidates,
                        help="[sampling] candidates (best-of-N) for melodyd (default: "
                             "melodyd's built-in default, as in config.toml)")
    parser.add_argument("--period", type=int, default=64, help="JACK period in frames")
    parser.add_argument("--output-latency-ms", type=float, default=0.0,
                        help="[midi] output_latency_ms for melodyd (send this much early)")
    parser.add_argument("--jack-client", choices=("native", "rtmidi"), default="native",
                        help="[midi] jack_client for melodyd")
    parser.add_argument("--probe", choices=("native", "rtmidi"), default="native",
                        help="the probe's JACK client: native stamps each note with its "
                             "frame's time, rtmidi with its callback's (period resolution)")
    parser.add_argument("--idle", type=float, default=10.0, help="idle CPU window, seconds")
    parser.add_argument("--idle-periods", type=lambda text: [int(x) for x in text.split(",")
                                                             if x.strip()],
                        default=[], metavar="N,N,...",
                        help="also measure idle CPU at these JACK periods (e.g. 64,128,256), "
                             "next to a bare process holding the same two ports")
    parser.add_argument("--no-midi-clock-idle", dest="midi_clock_idle", action="store_false",
                        help="skip the idle CPU run under --clock midi (a DAW's clock running)")
    parser.add_argument("--json", type=Path, default=Path("bench/results/live.json"))
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"model file not found: {args.model}")
    result = run(args)
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
