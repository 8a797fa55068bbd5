"""The downbeat part: under ``melodyd --clock midi`` the probe presses Start and plays on
"one" in each byte order (note before or after the first tick in its frame, or between
Start and the tick); a start that never gets an answer requested is a miss."""

from __future__ import annotations

import argparse
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mido

from bench.live import launch
from bench.soak.common import (
    STOP_S,
    Progress,
    close_probe,
    jack_server,
    launch_args,
    log_failure,
    stuck_notes,
    wait_until,
    wait_up,
)
from bridge.drivers import jack
from bridge.engine_child import stop_process
from bridge.jack_rig import Probe
from models.core.exceptions import BridgeError

DOWNBEAT_PHRASE = [(0.0, 0.5, 64, 90), (0.5, 0.5, 67, 90), (1.0, 0.5, 71, 90)]
ORDERS = ("note-tick", "tick-note", "pre-tick")
REQUEST = r"seed of (\d+) notes"  # melodyd asked its engine for an answer
ENGINE_ERROR = r"engine error"


@dataclass
class Start:
    """One press of Start with a phrase on "one"."""

    case: str
    order: str
    played: int
    requested: bool = False
    seed_notes: int | None = None
    engine_errors: list[str] = field(default_factory=list)
    stuck_after_stop: list[int] = field(default_factory=list)
    probe_error: str = ""  # the probe could not play it (not counted as a miss)

    @property
    def miss(self) -> bool:
        """melodyd's miss: no request, or an engine error (a probe failure is not one)."""
        return not self.probe_error and (not self.requested or bool(self.engine_errors))


def start_once(probe: Probe, log: Path, *, bpm: float, case: str, order: str,
               notes: Sequence[tuple[float, float, int, int]]) -> Start:
    """Start the transport with ``notes`` beginning on beat 0; wait for the request."""
    spb = 60.0 / bpm
    before = log.read_text(errors="replace")
    requests = len(re.findall(REQUEST, before))
    errors = len(re.findall(ENGINE_ERROR, before))
    start = Start(case, order, len(notes))
    probe.clear()
    onset, duration, pitch, velocity = notes[0]
    t0 = probe.start_clock(bpm, downbeat=[mido.Message("note_on", note=pitch,
                                                       velocity=velocity)], order=order)
    # The first note's note-off, then the rest of the phrase (both in time order).
    probe.send(mido.Message("note_off", note=pitch, velocity=0),
               at=t0 + (onset + duration) * spb)
    if len(notes) > 1:
        probe.play(notes[1:], t0, spb)
    # The trigger comes after a beat of silence; allow a few more on a busy machine.
    text = wait_until(lambda: _new_request(log, requests, errors), 4 * spb + 3.0, 0.02)
    if text:
        found = re.findall(REQUEST, text)[requests:]
        start.requested = bool(found)
        start.seed_notes = int(found[0]) if found else None
        start.engine_errors = [line for line in text.splitlines()
                               if "engine error" in line][errors:]
    probe.stop_clock()  # the DAW stops: melodyd releases what it played
    time.sleep(0.3)
    start.stuck_after_stop = sorted(stuck_notes(probe.messages()))
    return start


def _new_request(log: Path, requests: int, errors: int) -> str | None:
    """The log once it holds more requests or engine errors than the counts given."""
    text = log.read_text(errors="replace")
    if (len(re.findall(REQUEST, text)) > requests
            or len(re.findall(ENGINE_ERROR, text)) > errors):
        return text
    return None


def run_downbeat(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """``--downbeats`` starts per case (3 orders with a phrase, a single note) per client."""
    if not jack.available():
        return [{"skipped": "placing a note in the first tick's frame needs the native "
                            "JACK client (bridge/native), which is not built"}]
    cases = [(f"phrase {order}", order) for order in ORDERS] + [("single note", "")]
    progress = Progress("downbeat", len(args.clients) * len(cases) * args.downbeats)
    rows = []
    for client in args.clients:
        with jack_server(args.periods[0]):
            daemon, log = launch(launch_args(args, client, bars=2), workdir,
                                 f"downbeat-{client}", ["--clock", "midi"])
            probe = None
            try:
                if wait_up(log, daemon) is None:
                    rows.append({"client": client, "error": "melodyd did not come up",
                                 "log": log_failure(log.read_text(errors="replace"))})
                    continue
                probe = Probe(timeout=30.0, native=True)  # frame placement of the downbeat
                for case, order in cases:
                    starts = []
                    for i in range(args.downbeats):
                        this_order = order or ORDERS[i % len(ORDERS)]
                        notes = DOWNBEAT_PHRASE if order else DOWNBEAT_PHRASE[:1]
                        try:
                            starts.append(start_once(probe, log, bpm=args.bpm, case=case,
                                                     order=this_order, notes=notes))
                        except BridgeError as err:  # the probe's side: not melodyd's miss
                            starts.append(Start(case, this_order, len(notes),
                                                probe_error=str(err)))
                        progress.step(f"{case} ({client}) misses "
                                      f"{sum(s.miss for s in starts)}")
                    rows.append(summarize_starts(case, client, starts))
            finally:
                close_probe(probe)
                stop_process(daemon, STOP_S)
                tracebacks = log.read_text(errors="replace").count("Traceback")
                for row in rows:
                    if row.get("client") == client:
                        row["tracebacks"] = tracebacks
                        row["log"] = str(log)
    return rows


def summarize_starts(case: str, client: str, starts: list[Start]) -> dict:
    """The JSON row of one case on one JACK client."""
    seeds = Counter(str(s.seed_notes) for s in starts)
    return {
        "case": case, "client": client, "starts": len(starts),
        "probe_errors": sum(bool(s.probe_error) for s in starts),
        "misses": sum(s.miss for s in starts),
        "no_request": sum(not s.requested for s in starts),
        "engine_errors": sum(bool(s.engine_errors) for s in starts),
        "seed_short": sum(s.seed_notes is not None and s.seed_notes < s.played
                          for s in starts),
        "seed_sizes": dict(seeds),
        "stuck_after_stop": sum(bool(s.stuck_after_stop) for s in starts),
        "misses_by_order": dict(Counter(s.order for s in starts if s.miss)),
        "error_lines": sorted({e.split("engine error", 1)[1][:200] for s in starts
                               for e in s.engine_errors})[:5],
    }

