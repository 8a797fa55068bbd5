"""The stops part: kill melodyd (or its engine child, or its JACK server) while an answer
plays and count what the listener is left with: stuck notes, missing final panics,
children left running."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.live import children, launch, percentile
from bench.soak.common import (
    SETTLE_S,
    STOP_S,
    Progress,
    close_probe,
    has_panic,
    jack_server,
    keep_log,
    launch_args,
    log_failure,
    note_ons,
    open_probe,
    pid_alive,
    stuck_notes,
    wait_exit,
    wait_log,
    wait_until,
    wait_up,
)
from bridge.engine_child import stop_process
from bridge.jack_rig import JackServer
from models.core.exceptions import BridgeError

MAX_TRIES = 4  # a model may end its answer at once: play the phrase again
ANSWER_WAIT_S = 10.0
KILL_WINDOW_S = 0.3  # kills land this long (at most) after the answer's first note-on
CALL = [(0.0, 0.5, 60, 80), (1.0, 0.5, 64, 90), (2.0, 0.5, 67, 100), (3.0, 0.75, 72, 90)]
STOP_KINDS = ("sigterm", "sigint", "ctrl-c", "engine-kill", "sigkill", "jack-stop")
SIGNALS = {"sigterm": signal.SIGTERM, "sigint": signal.SIGINT, "sigkill": signal.SIGKILL}


@dataclass
class StopRun:
    """What one kill during an answer left behind."""

    kind: str
    client: str
    period: int
    answered: bool = False
    up: bool = True
    delay_ms: float = 0.0  # the answer's first note-on seen -> kill
    sounding_at_kill: int = 0  # notes of the answer on at the listener when it struck
    exit_code: int | None = None
    stop_s: float | None = None  # signal -> melodyd exited
    stuck: list[int] = field(default_factory=list)  # at the end
    final_panic: bool = True
    stuck_at_loss: list[int] = field(default_factory=list)  # engine-kill: before SIGTERM
    loss_panic: bool = True  # engine-kill: CC 64/123 after the child died
    loss_logged: bool = True  # engine-kill: "lost (the engine child exited)" in the log
    tracebacks: int = 0
    children_left: list[int] = field(default_factory=list)  # alive 3 s after melodyd
    error_line: str = ""  # jack-stop: melodyd's last error/warning line
    after_kill: list[str] = field(default_factory=list)  # what the listener got (failed runs)
    log: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Whether this run broke a promise (a run without an answer is not counted)."""
        if not self.up:
            return True
        if not self.answered:
            return False
        if self.kind == "jack-stop":
            return self.exit_code is None or bool(self.tracebacks) or bool(self.children_left)
        if self.kind == "sigkill" and self.client != "native":
            return bool(self.children_left)  # no guardian without the native client
        return (bool(self.stuck) or not self.final_panic or bool(self.children_left)
                or (self.kind != "sigkill" and self.exit_code != 0)
                or bool(self.stuck_at_loss) or not self.loss_panic or not self.loss_logged
                or bool(self.tracebacks))


def stop_once(args: argparse.Namespace, workdir: Path, *, kind: str, client: str,
              server: JackServer, rng: random.Random, index: int) -> StopRun:
    """One melodyd: play, wait for the answer's first note-on, kill it the ``kind`` way."""
    run = StopRun(kind, client, server.period)
    daemon, log = launch(launch_args(args, client, bars=8), workdir,
                         f"stop-{kind}-{client}-{index}", ["--bpm", str(args.bpm)])
    probe = None
    try:
        text = wait_up(log, daemon)
        if text is None:
            run.up = False
            run.notes.append("melodyd did not come up")
            return run
        origin = float(re.search(r"beat 0 at monotonic ([0-9.]+)", text).group(1))
        try:
            probe = open_probe(args)
        except BridgeError as err:
            run.up = False
            run.notes.append(f"the listener could not connect: {err}")
            return run
        spb = 60.0 / args.bpm
        for _ in range(MAX_TRIES):
            bar = math.ceil((time.monotonic() + 0.2 - origin) / (4 * spb))
            end = probe.play(CALL, origin + bar * 4 * spb, spb)
            if wait_until(lambda end=end: note_ons(probe, end), ANSWER_WAIT_S):
                run.answered = True
                break
        if not run.answered:
            return run
        # Land inside the answer: after its first note reached the listener, at a random
        # point of the next few hundred ms (notes sounding, others still queued).
        pause = rng.uniform(0.0, KILL_WINDOW_S)
        time.sleep(pause)
        before = probe.messages()
        run.delay_ms = pause * 1000
        run.sounding_at_kill = len(stuck_notes(before))
        mark = len(before)  # what arrives from here on answers the kill
        family = set(children(daemon.pid))  # engine child, note guardian
        engines = engine_pids(log)
        if kind in SIGNALS:
            daemon.send_signal(SIGNALS[kind])
        elif kind == "ctrl-c":
            # A terminal's Ctrl-C reaches the whole foreground process group: melodyd,
            # its engine child and its note guardian, all at once.
            for pid in [daemon.pid, *family]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGINT)
        elif kind == "engine-kill":
            os.kill(engines[-1], signal.SIGKILL)
            lost = wait_log(log, r"engine lost: all notes released", 5.0, process=daemon)
            time.sleep(SETTLE_S)
            received = probe.messages()
            run.stuck_at_loss = sorted(stuck_notes(received))
            run.loss_panic = has_panic(received[mark:])
            run.loss_logged = lost is not None and bool(
                re.search(r"lost \(the engine child exited\)", lost))
            mark = len(received)
            family |= set(children(daemon.pid))  # the engine's successor
            daemon.send_signal(signal.SIGTERM)
        else:  # jack-stop: the MIDI system goes away under melodyd
            server.stop()
        run.exit_code, run.stop_s = wait_exit(daemon, STOP_S)
        if run.exit_code is None:
            run.notes.append(f"still running {STOP_S:.0f} s after the {kind}")
        if kind != "jack-stop":  # with the server gone nothing can reach the listener
            # A clean stop queued its releases before exiting: they arrive within a few
            # periods. After a SIGKILL the guardian has to notice and connect first.
            settle = 3.0 if kind == "sigkill" else SETTLE_S
            wait_until(lambda: has_panic(probe.messages()[mark:]), settle, 0.02)
            time.sleep(SETTLE_S if kind == "sigkill" else 0.0)
            received = probe.messages()
            run.stuck = sorted(stuck_notes(received))
            run.final_panic = has_panic(received[mark:])
            if run.stuck or not run.final_panic:
                run.after_kill = [f"{'after' if i >= mark else 'before'} the kill: "
                                  f"{r.message}" for i, r in enumerate(received)][-16:]
        family |= set(engine_pids(log))
        if run.exit_code is not None:
            # Children stop with melodyd (a SIGKILLed one's watch takes a moment).
            wait_until(lambda: not any(pid_alive(p) for p in family), 3.0, 0.05)
            run.children_left = sorted(p for p in family if pid_alive(p))
            for pid in run.children_left:  # never leave them running into the next run
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return run
    finally:
        close_probe(probe)
        stop_process(daemon, STOP_S)
        text = log.read_text(errors="replace")
        run.tracebacks = text.count("Traceback")
        errors = [line for line in text.splitlines() if " ERROR " in line or "error:" in line
                  or " WARNING " in line]
        run.error_line = errors[-1][-200:] if errors else ""
        if run.failed:
            run.notes += log_failure(text)
        run.log = keep_log(log, run.failed)


def run_stops(args: argparse.Namespace, workdir: Path, rng: random.Random) -> list[dict]:
    """Every kind of kill, ``--stops`` (``--jack-stops``) times per JACK client."""
    plan = [(client, kind) for client in args.clients for kind in args.kinds]
    counts = {kind: {"jack-stop": args.jack_stops, "sigkill": args.sigkills}.get(kind, args.stops)
              for kind in args.kinds}
    progress = Progress("stops", sum(counts[kind] for _, kind in plan))
    rows = []
    for client, kind in plan:
        runs: list[StopRun] = []
        n = counts[kind]
        index = 0
        # The runs of a block cycle through the JACK periods; one server per period is
        # reused, except that a jack-stop run stops its server (a fresh one each).
        for period in args.periods:
            share = n // len(args.periods) + (1 if args.periods.index(period)
                                              < n % len(args.periods) else 0)
            done = 0
            while done < share:
                with jack_server(period) as server:
                    while done < share:
                        run = stop_once(args, workdir, kind=kind, client=client,
                                        server=server, rng=rng, index=index)
                        runs.append(run)
                        index += 1
                        done += 1
                        failures = sum(r.failed for r in runs)
                        progress.step(f"{kind} ({client}) failed {failures}")
                        if kind == "jack-stop":
                            break
        rows.append(summarize_stops(kind, client, runs))
    return rows


def summarize_stops(kind: str, client: str, runs: list[StopRun]) -> dict:
    """The JSON row of one kill kind on one JACK client (runs without an answer count
    only as runs, and as not up when melodyd never came up)."""
    answered = [r for r in runs if r.answered]
    stop_times = [r.stop_s for r in answered if r.stop_s is not None]
    row = {
        "kind": kind, "client": client, "runs": len(runs), "answered": len(answered),
        "not_up": sum(not r.up for r in runs),
        "failed_runs": sum(r.failed for r in runs),
        "stuck_runs": sum(bool(r.stuck) for r in answered),
        "stuck_notes": sum(len(r.stuck) for r in answered),
        "missing_final_panics": sum(not r.final_panic for r in answered),
        "stuck_runs_at_loss": sum(bool(r.stuck_at_loss) for r in answered),
        "missing_loss_panics": sum(not r.loss_panic for r in answered),
        "loss_not_logged": sum(not r.loss_logged for r in answered),
        "exit_codes": dict(Counter(str(r.exit_code) for r in answered)),
        "hung": sum(r.exit_code is None for r in answered),
        "stop_s_p50": percentile(stop_times, 50) if stop_times else None,
        "stop_s_max": max(stop_times, default=None),
        "tracebacks": sum(r.tracebacks for r in runs),
        "children_left": sum(len(r.children_left) for r in answered),
        "kill_delay_ms_max": max((r.delay_ms for r in answered), default=None),
        "kills_with_notes_sounding": sum(r.sounding_at_kill > 0 for r in answered),
        "failures": [vars(r) for r in runs if r.failed][:20],
    }
    if kind == "jack-stop":
        row["last_lines"] = dict(Counter(re.sub(r"\d+", "N", r.error_line.split(":", 3)[-1])
                                         for r in answered).most_common(3))
    return row



def engine_pids(log: Path) -> list[int]:
    """Every engine child melodyd has started so far, oldest first (from its log)."""
    return [int(p) for p in re.findall(r"engine child (\d+) on", log.read_text())]
