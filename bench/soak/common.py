"""Helpers every part of the soak shares: its constants, the progress line, waiting on
logs and processes, the private JACK server and the listener (probe) on melodyd's ports,
what the listener heard (stuck notes, panics) and which logs to keep."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bridge.jack_rig import JackServer, Probe
from models.core.exceptions import BridgeError
from tests.bridge.bridge_fakes import sounding_after

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO / "models" / "pretrained" / "any.onnx"
STOP_S = 15.0  # melodyd's grace to stop after a signal before it counts as hung
UP_TIMEOUT_S = 120.0  # engine start-up (model load) on a busy 2-core box
SETTLE_S = 0.2  # the last JACK cycles reach the listener
PARTS = ("stops", "downbeat", "fuzz", "dataset")
UP_PATTERN = r"engine at .* is up"  # melodyd's log line once its engine answers


class Progress:
    """One status line on stderr, rewritten in place on a terminal, else every 10 %."""

    def __init__(self, title: str, total: int) -> None:
        self.title, self.total, self.done = title, max(total, 1), 0
        self._tty = sys.stderr.isatty()
        self._last_tenth = -1
        self._started = time.monotonic()

    def step(self, note: str = "") -> None:
        """Count one unit of work and show ``note`` (the failures so far)."""
        self.done += 1
        elapsed = time.monotonic() - self._started
        eta = elapsed / self.done * (self.total - self.done)
        line = (f"[{self.title} {self.done}/{self.total}, {elapsed:.0f} s, "
                f"~{eta:.0f} s left] {note}")
        if self._tty:
            print(f"\r\033[K{line}", end="" if self.done < self.total else "\n",
                  file=sys.stderr, flush=True)
        elif self.done * 10 // self.total != self._last_tenth or self.done == self.total:
            self._last_tenth = self.done * 10 // self.total
            print(line, file=sys.stderr, flush=True)


def wait_log(path: Path, pattern: str, timeout: float, count: int = 1,
             process: subprocess.Popen | None = None) -> str | None:
    """The log once ``pattern`` occurs ``count`` times; None on timeout or if ``process``
    exited first (a soak counts failures instead of stopping at the first one)."""
    end = time.monotonic() + timeout
    while True:
        text = path.read_text(errors="replace")
        if len(re.findall(pattern, text)) >= count:
            return text
        if time.monotonic() > end or (process is not None and process.poll() is not None):
            return None
        time.sleep(0.02)


def wait_up(log: Path, daemon: subprocess.Popen) -> str | None:
    """melodyd's log once its engine is up; None if it exited or took too long."""
    return wait_log(log, UP_PATTERN, UP_TIMEOUT_S, process=daemon)


def wait_until(predicate: Callable[[], Any], timeout: float, step: float = 0.01) -> Any:
    """Poll ``predicate`` until it is truthy or ``timeout`` passes; its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def wait_exit(process: subprocess.Popen, timeout: float) -> tuple[int | None, float]:
    """(exit code or None if still running, seconds waited)."""
    started = time.monotonic()
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        code = None
    return code, time.monotonic() - started


def pid_alive(pid: int) -> bool:
    """Running (a zombie nobody has reaped yet counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def note_ons(probe: Probe, since: float) -> list[Any]:
    """Note-ons (velocity > 0) the probe received at or after ``since``."""
    return [r for r in probe.messages(since) if r.message.type == "note_on"
            and r.message.velocity > 0]


def stuck_notes(received: Sequence[Any]) -> set[int]:
    """Pitches left sounding among the probe's ``received`` records without an explicit
    note-off (CC 123 alone is not trusted: a synth that ignores it, or a DAW that records
    it as a plain CC, keeps them on)."""
    return sounding_after([r.message for r in received
                           if r.message.type != "control_change"])


def has_panic(received: Sequence[Any]) -> bool:
    """Whether CC 64 = 0 and CC 123 are among ``received``.

    Callers pass what arrived after a kill by position in the probe's list, not by time
    stamp: the probe stamps each message with its JACK frame's time, which the dummy
    backend lets drift tens of ms from ``time.monotonic`` on a busy machine.
    """
    controls = {(r.message.control, r.message.value) for r in received
                if r.message.type == "control_change"}
    return {(64, 0), (123, 0)} <= controls


def log_failure(text: str, patterns: Sequence[str] = ("Traceback", "ERROR", "WARNING")
                ) -> list[str]:
    """The log lines worth reading when a run failed (warnings, errors, tracebacks)."""
    return [line for line in text.splitlines() if any(p in line for p in patterns)][:20]


@contextlib.contextmanager
def jack_server(period: int) -> Iterator[JackServer]:
    """A private JACK server that every client started meanwhile joins (environment)."""
    server = JackServer(period=period)
    server.start()
    saved = {key: os.environ.get(key) for key in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def launch_args(args: argparse.Namespace, client: str, bars: int) -> argparse.Namespace:
    """The settings ``bench.live.launch`` writes into melodyd's config file."""
    return argparse.Namespace(bars=bars, polyphony=4, output_latency_ms=0.0,
                              jack_client=client, model=args.model)


def open_probe(args: argparse.Namespace) -> Probe:
    """The listener on melodyd's ports (call once they exist, never a previous run's)."""
    return Probe(timeout=30.0, native=args.probe == "native")


def close_probe(probe: Probe | None) -> None:
    """Close a probe whose server may be gone (then closing is best effort)."""
    if probe is None:
        return
    with contextlib.suppress(BridgeError, OSError):
        probe.close()


def keep_log(log: Path, failed: bool) -> str | None:
    """Keep a failed run's log (its path goes into the JSON); drop the others."""
    if failed:
        return str(log)
    with contextlib.suppress(OSError):
        log.unlink()
    return None

