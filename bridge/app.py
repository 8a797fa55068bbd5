"""One running melodyd: its parts started in order and stopped in reverse.

``Melodyd.run`` starts, each part on top of the ones before it:

1. the engine child (``bridge.engine_child``), unless a running engine is named; it loads
   its models while the rest starts;
2. the MIDI ports (``bridge.drivers``), and the note guardian watching the output;
3. the clock (internal tempo, or following the DAW's MIDI clock);
4. the engine client (``bridge.client``);
5. the scheduler thread (``bridge.scheduler``);
6. the daemon (``bridge.daemon``), whose turns run here until ``stop`` (SIGINT, SIGTERM),
   the MIDI system going away or an error.

and stops them in reverse in ``finally`` (an ``ExitStack``), whatever the way out: the
scheduler's stop releases every sounding note (note-offs, then CC 64 = 0 and CC 123)
before the ports close, the ports close (letting the releases leave) before the guardian
is told all is well, and the engine child goes last.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bridge.client import CurveClientKeys, EngineClient
from bridge.clock import Clock, InternalClock, MidiClock
from bridge.daemon import Daemon
from bridge.drivers.base import Ports
from bridge.drivers.system import choose_backend, open_ports
from bridge.engine_child import EngineChild
from bridge.guardian import Guardian, start_guardian
from bridge.listener import CLOCK_WAKE_EVERY, InputQueue
from bridge.scheduler import Scheduler
from models.core.settings import Settings, parse_time_signature

logger = logging.getLogger(__name__)

# rtmidi's callback (on JACK's thread) and the scheduler both need the GIL to stamp a
# tick or send a note; with Python's default 5 ms switch interval a busy thread can hold
# them back that long. The daemon is I/O-bound, so a 1 ms interval costs little.
GIL_SWITCH_INTERVAL_S = 0.001
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Melodyd:
    """The jam daemon: engine child, MIDI ports, clock, engine client, scheduler, daemon.

    Args:
        settings: every section of the config (flags already applied).
        style: the style to ask for; ``None`` takes the engine's first.
        models: ONNX files for a private engine child; ``None`` connects to the running
            engine at ``[engine] connect``.
        curve: CURVE keys for an engine on another machine.
        verbose: the engine child logs debug details too.

    Raises:
        ConfigError: the time signature is not one melodyd can count.
        ValueError: neither ``models`` nor ``[engine] connect`` says where the engine is.
    """

    def __init__(self, settings: Settings, *, style: str | None,
                 models: list[Path] | None = None, curve: CurveClientKeys | None = None,
                 verbose: bool = False) -> None:
        if models is None and not settings.engine.connect:
            raise ValueError("Melodyd needs models for its own engine or [engine] connect")
        self.settings = settings
        self.time_signature = parse_time_signature(settings.clock.time_signature)
        self.style = style
        self.models = models
        self.curve = curve
        self.verbose = verbose
        self._stopping = threading.Event()
        self._inputs: InputQueue | None = None  # while running: the input port's queue
        self._guardian: Guardian | None = None

    def stop(self) -> None:
        """Ask ``run`` to return (safe from signal handlers and other threads)."""
        self._stopping.set()
        if self._inputs is not None:
            self._inputs.wake()

    def run(self) -> None:
        """Start the parts in order, serve until ``stop``, stop them in reverse.

        Raises:
            MelodyError: no MIDI system, a port or the engine cannot be reached, the MIDI
                system went away while playing.
        """
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        settings = self.settings
        backend = choose_backend(settings.midi.backend)
        with contextlib.ExitStack() as stack:
            inputs = self._inputs = InputQueue()
            stack.callback(self._close_inputs)
            child = None
            address = settings.engine.connect
            if self.models is not None:
                child = EngineChild(self.models, verbose=self.verbose)
                child.start()  # loads while we open ports
                stack.callback(child.stop)
                address = child.address
            ports = self._open_ports(stack, backend, inputs)
            clock = self._start_clock(ports)
            client = EngineClient(address, curve=self.curve)
            client.open()
            stack.callback(client.close)
            scheduler = Scheduler.for_settings(ports.output, clock, settings.midi)
            scheduler.start()
            stack.callback(self._stop_scheduler, scheduler)
            daemon = Daemon(settings, clock, scheduler=scheduler, client=client,
                            style=self.style, inputs=inputs)
            stack.callback(daemon.close)
            stack.enter_context(self._signals_stop())
            self._serve(daemon, ports, child)

    # ----------------------------------------------------------------- the parts
    def _close_inputs(self) -> None:
        inputs, self._inputs = self._inputs, None  # a later stop() must not wake a closed pipe
        if inputs is not None:
            inputs.close()

    def _open_ports(self, stack: contextlib.ExitStack, backend: str,
                    inputs: InputQueue) -> Ports:
        """The MIDI ports, and the note guardian watching the output."""
        midi = self.settings.midi
        ports = open_ports(backend, in_name=midi.in_port, out_name=midi.out_port,
                           connect_in=midi.connect_in, connect_out=midi.connect_out,
                           callback=inputs.callback, jack_client=midi.jack_client,
                           clock_batch=CLOCK_WAKE_EVERY)
        stack.callback(self._close_ports, ports)
        self._guardian = start_guardian(ports)
        return ports

    def _close_ports(self, ports: Ports) -> None:
        ports.close()  # the releases have left: the guardian has nothing to do
        if self._guardian is not None:
            self._guardian.stop()
            self._guardian = None

    def _start_clock(self, ports: Ports) -> Clock:
        clock_settings = self.settings.clock
        signature = self.time_signature
        if clock_settings.source == "internal":
            clock = InternalClock(clock_settings.bpm, signature)
            origin = time.monotonic()
            clock.start(origin)
            logger.info("clock: internal, %.1f BPM, %d/%d, beat 0 at monotonic %.6f",
                        clock_settings.bpm, *signature, origin)
            return clock
        logger.info("clock: following MIDI clock on %r (%d/%d); start the DAW's transport",
                    ports.input.name, *signature)
        return MidiClock(signature, clock_settings.smoothing_ticks, clock_settings.bpm)

    @staticmethod
    def _stop_scheduler(scheduler: Scheduler) -> None:
        scheduler.stop()  # note-offs, CC 64 = 0, CC 123
        stats = scheduler.stats
        # The last word on what was played (bench/live.py reads it after stopping us).
        logger.info("stopped: notes sent %d dropped %d", stats.sent, stats.dropped)

    @contextlib.contextmanager
    def _signals_stop(self) -> Iterator[None]:
        """SIGINT and SIGTERM stop the loop (cleanly) while it runs."""
        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread may set handlers; its caller stops us
            return

        def on_signal(signum: int, _frame: Any) -> None:
            logger.info("received %s, stopping", signal.Signals(signum).name)
            self.stop()

        previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # ----------------------------------------------------------------- the loop
    def _serve(self, daemon: Daemon, ports: Ports, child: EngineChild | None) -> None:
        """Run the daemon's turns until ``stop``; between turns, watch the MIDI system
        and the engine child."""
        while not self._stopping.is_set():
            daemon.turn()
            ports.check()  # the MIDI system went away: stop with a clear error
            if child is not None and child.check():  # it died (and is restarted)
                daemon.engine_replaced("the engine child exited")
