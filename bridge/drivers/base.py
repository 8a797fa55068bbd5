"""The port interface every MIDI driver implements, and what the drivers share.

A driver opens an input port with a callback and an output port. The public methods
live here (they check state and lock); a driver overrides only ``_send``, ``_close`` and,
where it can place a message at its time, ``_send_at`` and ``send_ahead_s``. Nothing
outside ``bridge.drivers`` needs to know which driver it holds.

This module loads neither python-rtmidi nor the JACK library, so the note guardian
(``bridge.guardian``) can use the JACK driver without rtmidi.
"""

from __future__ import annotations

import abc
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

import mido

from models.core.exceptions import BridgeError

CLIENT_NAME = "melodyd"  # the MIDI system's name for melodyd's client (JACK, ALSA)

# The input callback: each incoming message and the ``time.monotonic()`` of its arrival
# (the time of its JACK frame where the driver knows it, else when the driver's thread
# saw it). It runs on the driver's thread, so it only stamps and queues (bridge.listener).
InputCallback = Callable[[mido.Message, float], None]


class InputPort(abc.ABC):
    """A port that hands every incoming message to the callback it was opened with.

    Attributes:
        name: the port's name as the MIDI system shows it.
        closed: whether ``close`` has run.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def check(self) -> None:  # noqa: B027 - most MIDI systems cannot tell; a no-op is right
        """Raise if the MIDI system has gone under the port.

        Raises:
            BridgeError: the MIDI system shut the port down; the message says what to do.
        """

    def close(self) -> None:
        """Stop the callbacks and close the port (idempotent; no callback runs after it)."""
        if not self.closed:
            self.closed = True
            self._close()

    @abc.abstractmethod
    def _close(self) -> None:
        """Close the driver's port."""


class OutputPort(abc.ABC):
    """A port that sends messages now (``send``) or at a time (``send_at``).

    Attributes:
        name: the port's name as the MIDI system shows it.
        send_ahead_s: how long before its time ``send_at`` must be given a message. Zero
            for a driver that cannot place messages in time: its ``send_at`` sends at
            once, so the caller waits until the time itself.
        closed: whether ``close`` has run.
    """

    def __init__(self, name: str, send_ahead_s: float = 0.0) -> None:
        self.name = name
        self.send_ahead_s = send_ahead_s
        self.closed = False
        self._lock = threading.Lock()  # one message at a time, whichever thread sends

    def send(self, message: mido.Message) -> None:
        """Send ``message`` now.

        Raises:
            BridgeError: the port is closed, or the MIDI system refused the message.
        """
        with self._lock:
            self._check_open()
            self._send(message)

    def send_at(self, message: mido.Message, when: float) -> None:
        """Send ``message`` at ``time.monotonic()`` time ``when``; call it ``send_ahead_s``
        before then. Messages leave in the order they are given, so give them in time order.

        Raises:
            BridgeError: the port is closed, or the MIDI system refused the message.
        """
        with self._lock:
            self._check_open()
            self._send_at(message, when)

    def check(self) -> None:  # noqa: B027 - most MIDI systems cannot tell; a no-op is right
        """Raise if the MIDI system has gone under the port.

        Raises:
            BridgeError: the MIDI system shut the port down; the message says what to do.
        """

    def jack_name(self) -> str | None:
        """The port's full JACK name, for the note guardian; None off JACK or if unknown."""
        return None

    def close(self) -> None:
        """Close the port (idempotent)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        self._close()

    def _check_open(self) -> None:
        if self.closed:
            raise BridgeError(f"the MIDI port {self.name!r} is closed")

    @abc.abstractmethod
    def _send(self, message: mido.Message) -> None:
        """Send one message now (called with the lock held)."""

    def _send_at(self, message: mido.Message, when: float) -> None:
        """Send one message at ``when``; a driver that cannot place it sends it now."""
        self._send(message)

    @abc.abstractmethod
    def _close(self) -> None:
        """Close the driver's port."""


@dataclass
class Ports:
    """The daemon's two ports, the MIDI system they live on and the driver behind them.

    Attributes:
        backend: the MIDI system (``alsa``, ``jack``, ``coremidi``, ``windows``).
        driver: ``rtmidi`` (python-rtmidi, ``bridge.drivers.rtmidi``) or ``native``
            (melodyd's own JACK client, ``bridge.drivers.jack``); for messages only.
    """

    backend: str
    input: InputPort
    output: OutputPort
    driver: str

    def check(self) -> None:
        """Raise if the MIDI system has gone (melodyd's JACK client sees the server quit).

        Raises:
            BridgeError: the MIDI system shut the ports down.
        """
        self.input.check()
        self.output.check()

    def close(self) -> None:
        """Close both ports (the input first, so no callback runs on a closed output)."""
        with contextlib.suppress(Exception):  # closing at exit: nothing left to save
            self.input.close()
        with contextlib.suppress(Exception):
            self.output.close()


def find_port(wanted: str, names: list[str], kind: str) -> str:
    """The port called ``wanted``, or the only one whose name contains it.

    Raises:
        BridgeError: no port or several ports match; the message lists what exists.
    """
    if wanted in names:
        return wanted
    matches = [n for n in names if wanted.lower() in n.lower()]
    if len(matches) == 1:
        return matches[0]
    listing = ", ".join(repr(n) for n in names) or "none"
    what = "several" if matches else "no"
    raise BridgeError(f"{what} {kind} ports match {wanted!r} (available: {listing})")
