"""The MIDI input callback: queue, wake the daemon's thread. Nothing else.

rtmidi calls the callback on its own thread, where blocking would delay every later
message (and, on JACK, the audio cycle); melodyd's JACK client calls it on its reader
thread. The driver stamps the arrival time; the callback only appends the message and its
time to a queue and writes one byte to a pipe that the daemon's ``zmq.Poller`` watches
alongside the engine socket (for MIDI clock ticks, one byte per sixteenth note).
"""

from __future__ import annotations

import contextlib
import os
import queue

import mido

# Clock ticks per wake-up of the daemon: a sixteenth note (24 ticks per beat).
CLOCK_WAKE_EVERY = 6


class InputQueue:
    """Timestamped MIDI messages from the callback thread to the daemon's thread.

    Attributes:
        wake_fd: the pipe's read end; readable whenever messages (or a wake-up) wait.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[float, mido.Message]] = queue.SimpleQueue()
        self._ticks_since_wake = 0  # clock ticks queued since the last wake-up
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_w, False)

    def callback(self, message: mido.Message, t: float) -> None:
        """The port callback (a ``bridge.drivers.base.InputCallback``): queue the message
        with its arrival time ``t`` and wake the daemon's thread (never blocks).

        A MIDI clock tick wakes the daemon only every ``CLOCK_WAKE_EVERY`` ticks: each
        tick carries its own arrival stamp, so fitting a few of them at once is as exact
        as one by one, and an idle melodyd following a DAW wakes 8 times a second at
        120 BPM instead of 48. Every other message wakes it at once.
        """
        self._queue.put((t, message))
        if message.type == "clock":
            self._ticks_since_wake += 1
            if self._ticks_since_wake < CLOCK_WAKE_EVERY:
                return
        self._ticks_since_wake = 0
        self.wake()

    def put(self, t: float, message: mido.Message) -> None:
        """Queue a message with a given arrival time (tests and replays)."""
        self._queue.put((t, message))
        self.wake()

    def wake(self) -> None:
        """Make ``wake_fd`` readable (safe from any thread and from signal handlers)."""
        # A full pipe already means "wake up", so a would-block write can be ignored.
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def drain(self) -> list[tuple[float, mido.Message]]:
        """Every queued ``(arrival time, message)``, oldest first; clears the wake-up."""
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self.wake_fd, 4096):
                pass
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def close(self) -> None:
        """Close the pipe."""
        for fd in (self.wake_fd, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
