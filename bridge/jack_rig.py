"""A private JACK server and a probe client: the real MIDI rig of the end-to-end tests
and ``bench/live.py``.

``JackServer`` starts ``jackd`` with the dummy backend (no sound card) under a unique
name, in sync mode (async mode dropped or duplicated MIDI under load). ``Probe`` is a
second JACK client that plays into ``melodyd in``, drives a MIDI beat clock, and records
what comes out of ``melodyd out`` with arrival times on ``time.monotonic``, which every
process on the machine shares, so onsets can be checked against the wall clock.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

import mido

from bridge.clock import TICKS_PER_BEAT
from bridge.drivers.base import find_port
from bridge.drivers.jack import JackClient
from bridge.drivers.rtmidi import RtmidiInput, RtmidiOutput, port_names
from bridge.engine_child import stop_process
from models.core.exceptions import BridgeError

# A native probe queues each clock tick this long before it is due, on a client of its
# own: like a DAW's, its ticks then land on their frames however late (up to this) a
# loaded machine wakes the thread that queues them (the notes' client would hold a note
# behind a tick queued for later, so the ticks cannot share it). Ticks queued past a
# Stop arrive after it, where a MIDI clock follower ignores them.
CLOCK_QUEUE_AHEAD_S = 0.2

logger = logging.getLogger(__name__)


def sleep_until(deadline: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``deadline`` (to within ~0.1 ms)."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(left)


class JackServer:
    """``jackd -n NAME -R -S -d dummy -r RATE -p PERIOD`` for as long as the object lives.

    Attributes:
        name: the server's unique name (clients find it through ``JACK_DEFAULT_SERVER``).
        rate: sample rate.
        period: frames per cycle; MIDI output is written once per cycle, so one period is
            the output's timing resolution.
    """

    def __init__(self, rate: int = 48000, period: int = 64, name: str | None = None) -> None:
        self.name = name or f"melodyd-{uuid.uuid4().hex[:10]}"
        self.rate = rate
        self.period = period
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def period_s(self) -> float:
        """One cycle in seconds."""
        return self.period / self.rate

    def env(self) -> dict[str, str]:
        """Environment variables that make JACK clients join this server and no other."""
        return {"JACK_NO_START_SERVER": "1", "JACK_DEFAULT_SERVER": self.name}

    def start(self, timeout: float = 15.0) -> None:
        """Start jackd and wait until ``jack_lsp`` answers.

        Raises:
            BridgeError: jackd is not installed or did not come up.
        """
        if shutil.which("jackd") is None or shutil.which("jack_lsp") is None:
            raise BridgeError("jackd is not installed (Debian: apt-get install jackd2)")
        env = {**os.environ, **self.env()}
        # jackd reports every xrun on stderr; a pipe nobody drains fills up and then jackd
        # blocks in write() and the whole graph stops. A file never blocks.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            ["jackd", "-n", self.name, "-R", "-S", "-d", "dummy", "-r", str(self.rate),
             "-p", str(self.period)], env=env, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._process.poll() is not None:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace")[-500:]
                raise BridgeError(f"jackd exited at start: {err}")
            check = subprocess.run(["jack_lsp"], env=env, capture_output=True, check=False)
            if check.returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise BridgeError(f"jackd {self.name} did not answer within {timeout:.0f} s")

    def xruns(self) -> int:
        """How many xruns jackd has reported so far (the dummy driver loses time on each)."""
        if self._log is None:
            return 0
        self._log.flush()
        self._log.seek(0)
        count = self._log.read().count(b"XRun")
        self._log.seek(0, os.SEEK_END)
        return count

    def stop(self) -> None:
        """Stop the server."""
        process, self._process = self._process, None
        if process is None:
            return
        stop_process(process, 5.0)
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass(frozen=True)
class Received:
    """A message from ``melodyd out`` and its arrival time (``time.monotonic``)."""

    t: float
    message: mido.Message


class Probe:
    """A JACK client wired to melodyd: plays notes and clock, records the answers.

    Args:
        daemon_in: a unique part of melodyd's input port name.
        daemon_out: a unique part of melodyd's output port name.
        timeout: how long to wait for melodyd's ports to appear.

    Raises:
        BridgeError: melodyd's ports did not appear in time.
    """

    def __init__(self, daemon_in: str = "melodyd in", daemon_out: str = "melodyd out",
                 timeout: float = 30.0, native: bool = False) -> None:
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._client: JackClient | None = None
        if native:
            self._client = JackClient("melodyd-probe", "in", "out", callback=self._record)
        end = time.monotonic() + timeout
        while True:
            try:
                readable, writable = self._list_ports()
                out_name = find_port(daemon_in, writable, "output")
                in_name = find_port(daemon_out, readable, "input")
                break
            except BridgeError:
                if time.monotonic() > end:
                    self._close_ports()
                    raise
                time.sleep(0.1)
        # Probe and melodyd form a loop (each feeds the other); JACK delays the connection
        # that closes a loop by one period. Connect the listening side first, so melodyd's
        # notes arrive in the cycle that sent them; the probe's notes then reach melodyd
        # one period late, like a keyboard's through a DAW.
        self._clock_client: JackClient | None = None
        if self._client is not None:
            self._client.connect(in_name, self._client.input_name)
            self._client.connect(self._client.output_name, out_name)
            self._clock_client = JackClient("melodyd-probe-clock", "unused", "clock")
            self._clock_client.connect(self._clock_client.output_name, out_name)
        else:
            self.input = RtmidiInput("jack", in_name, self._record, virtual=False)
            self.output = RtmidiOutput("jack", out_name, virtual=False)
        self._clock_thread: threading.Thread | None = None
        self._clock_stop = threading.Event()
        self._clock_lock = threading.Lock()
        self._clock_anchor = (0.0, 0, 0.5 / TICKS_PER_BEAT)  # (t, tick, seconds per tick)
        self._clock_next = 0  # the next tick the clock thread queues
        self._clock_last_at = 0.0  # when the last queued tick is due
        self.clock_start: float | None = None  # wall time of tick 0 after Start

    def _list_ports(self) -> tuple[list[str], list[str]]:
        """Full names of the JACK ports it can read from and those it can write to."""
        if self._client is not None:
            return (self._client.list_ports(readable=True),
                    self._client.list_ports(readable=False))
        return port_names("jack")

    def _record(self, message: mido.Message, t: float) -> None:
        # The native client stamps the frame's time, rtmidi the time its callback ran.
        with self._lock:
            self.received.append(Received(t, message))

    def messages(self, since: float = 0.0) -> list[Received]:
        """Everything received at or after ``since``."""
        with self._lock:
            return [r for r in self.received if r.t >= since]

    def clear(self) -> None:
        """Forget what was received."""
        with self._lock:
            self.received.clear()

    def send(self, message: mido.Message, at: float | None = None) -> float:
        """Send now, or at wall time ``at``; returns the send time.

        Without the native client ``at`` is reached by sleeping, so the message leaves at
        the start of the JACK period after it; the native client places it on the frame.
        """
        if self._client is not None:
            if at is not None:
                sleep_until(at - self._client.send_ahead_s)
            self._client.send(message, at or 0.0)
            return time.monotonic() if at is None else at
        if at is not None:
            sleep_until(at)
        t = time.monotonic()
        self.output.send(message)
        return t

    def play(self, notes: Sequence[tuple[float, float, int, int]], origin: float,
             seconds_per_beat: float) -> float:
        """Play ``(onset beat, duration beats, pitch, velocity)`` notes; block until done.

        Returns:
            The wall time the last note-off was sent (the phrase's end).
        """
        events = []
        for onset, duration, pitch, velocity in notes:
            events.append((origin + onset * seconds_per_beat, 1, pitch, velocity))
            events.append((origin + (onset + duration) * seconds_per_beat, 0, pitch, 0))
        last = origin
        for t, on, pitch, velocity in sorted(events):
            kind = "note_on" if on else "note_off"
            last = self.send(mido.Message(kind, note=pitch, velocity=velocity), at=t)
        return last

    # ------------------------------------------------------------------ MIDI beat clock
    def start_clock(self, bpm: float, lead: float = 0.2, *,
                    downbeat: Sequence[mido.Message] = (), order: str = "note-tick") -> float:
        """Send Start, then 24 ticks per beat from ``lead`` seconds on (a thread).

        Args:
            bpm: the tempo of the ticks.
            lead: seconds from Start to the first tick.
            downbeat: messages a player sends on "one" as the transport starts.
            order: where ``downbeat`` goes: ``"note-tick"`` (in the first tick's frame,
                before the tick), ``"tick-note"`` (same frame, after it) or
                ``"pre-tick"`` (between Start and the first tick).

        Returns:
            The wall time of tick 0 (beat 0 of the daemon's timeline).
        """
        if order not in ("note-tick", "tick-note", "pre-tick"):
            raise ValueError(f"order must be note-tick, tick-note or pre-tick (received "
                             f"{order!r})")
        t0 = time.monotonic() + lead
        with self._clock_lock:
            self._clock_anchor = (t0, 0, 60.0 / bpm / TICKS_PER_BEAT)
            self._clock_next = 0
        self.clock_start = t0
        self.send(mido.Message("start"))
        first_tick = 0
        if downbeat:
            # The first tick goes out here, with the downbeat in the chosen order: queued
            # for the same time, the native client writes them into one frame.
            pre = order == "pre-tick"
            batch = [*downbeat, mido.Message("clock")] if order != "tick-note" else [
                mido.Message("clock"), *downbeat]
            for message in batch:
                at = t0 - lead / 2 if pre and message.type != "clock" else t0
                self.send(message, at=at)
            first_tick = 1
        self._clock_stop.clear()
        self._clock_thread = threading.Thread(target=self._run_clock, args=(first_tick,),
                                              name="probe-clock", daemon=True)
        self._clock_thread.start()
        return t0

    def set_tempo(self, bpm: float) -> None:
        """Change the clock's tempo from the next tick not yet queued on."""
        with self._clock_lock:
            t, tick, spt = self._clock_anchor
            now_tick = max(tick, int((time.monotonic() - t) / spt) + 1, self._clock_next)
            self._clock_anchor = (t + (now_tick - tick) * spt, now_tick,
                                  60.0 / bpm / TICKS_PER_BEAT)

    def tick_time(self, tick: float) -> float:
        """Wall time of (fractional) ``tick`` under the current tempo anchor."""
        with self._clock_lock:
            t, k, spt = self._clock_anchor
        return t + (tick - k) * spt

    def beat_time(self, beat: float) -> float:
        """Wall time of ``beat`` on the clock's timeline (current tempo segment)."""
        return self.tick_time(beat * TICKS_PER_BEAT)

    def beat_at(self, t: float) -> float:
        """Beat at wall time ``t`` (current tempo segment)."""
        with self._clock_lock:
            t0, k, spt = self._clock_anchor
        return (k + (t - t0) / spt) / TICKS_PER_BEAT

    def stop_clock(self) -> None:
        """Stop sending ticks and send Stop (after the ticks already queued, so none of
        them can reach the next Start's timeline)."""
        self._clock_stop.set()
        if self._clock_thread is not None:
            self._clock_thread.join(2.0)
            self._clock_thread = None
        with self._clock_lock:
            last = self._clock_last_at
        self.send(mido.Message("stop"), at=max(last + 0.001, time.monotonic()))

    def _run_clock(self, tick: int = 0) -> None:
        clock = self._clock_client
        while not self._clock_stop.is_set():
            with self._clock_lock:
                t, k, spt = self._clock_anchor
                at = t + (tick - k) * spt
                self._clock_next = tick + 1
                self._clock_last_at = at
            if clock is None:
                self.send(mido.Message("clock"), at=at)
            else:
                sleep_until(at - CLOCK_QUEUE_AHEAD_S)
                clock.send(mido.Message("clock"), at)
            tick += 1

    def close(self) -> None:
        """Stop the clock and close both ports."""
        if self._clock_thread is not None:
            self._clock_stop.set()
            self._clock_thread.join(2.0)
        self._close_ports()

    def _close_ports(self) -> None:
        if self._client is not None:
            self._client.close()
            if getattr(self, "_clock_client", None) is not None:
                self._clock_client.close()
            return
        if hasattr(self, "input"):
            self.input.close()
        if hasattr(self, "output"):
            self.output.close()
