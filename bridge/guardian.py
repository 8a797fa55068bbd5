"""The note guardian: releases what a killed melodyd left sounding.

melodyd releases every note on every way out it controls (stop, panic, engine loss,
SIGTERM, Ctrl-C). A SIGKILL, an out-of-memory kill or a crash of the interpreter leaves
no way out: the JACK client vanishes with its ports and connections, and a synth that was
sent a note-on holds it for ever. Nothing inside the dying process can help, so a second,
tiny process does:

- it listens to melodyd's output through its own JACK input (a connection from "melodyd
  out"), keeping the set of notes sounding and the channels used;
- every ``POLL_S`` it records where melodyd's output is connected (the synth, the DAW
  track), because those connections are gone once melodyd's client is;
- it holds the read end of a pipe whose write end only melodyd has. A clean stop writes
  ``BYE`` first (melodyd has released everything itself); end of file without it means
  melodyd died, and the guardian connects its own output to the recorded destinations,
  sends a note-off for every sounding note, sustain-off and all-notes-off on every channel
  used, lets JACK take them, and exits.

It needs melodyd's own JACK client library (``bridge.drivers.jack``) and a JACK server;
it watches melodyd's own client or python-rtmidi's JACK ports alike. Elsewhere melodyd
runs without a guardian and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

import mido

from bridge.drivers import jack  # the JACK driver alone: the guardian never loads rtmidi
from bridge.drivers.base import Ports
from models.core.exceptions import BridgeError

logger = logging.getLogger(__name__)

BYE = b"B"  # melodyd stopped cleanly: nothing to release
POLL_S = 0.2  # how often the output's connections are recorded
PORT_GONE_WAIT_S = 1.0  # how long a vanished port waits for melodyd's BYE
CLIENT_NAME = "melodyd-guardian"
READY_LINE = b"ready\n"  # written to stdout once it listens, so melodyd can go on
READY_TIMEOUT_S = 10.0
CC_SUSTAIN = 64
CC_ALL_NOTES_OFF = 123


class NoteTracker:
    """The notes a MIDI stream leaves sounding, and the channels it used (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sounding: set[tuple[int, int]] = set()  # (channel, pitch)
        self.channels: set[int] = set()

    def __call__(self, message: mido.Message, _t: float = 0.0) -> None:
        """Follow one message (the JACK client's input callback)."""
        channel = getattr(message, "channel", None)
        if channel is None:
            return
        with self._lock:
            self.channels.add(channel)
            if message.type == "note_on" and message.velocity > 0:
                self._sounding.add((channel, message.note))
            elif message.type in ("note_on", "note_off"):
                self._sounding.discard((channel, message.note))
            elif message.type == "control_change" and message.control in (120, 123):
                self._sounding = {n for n in self._sounding if n[0] != channel}

    def releases(self) -> list[mido.Message]:
        """Note-offs for what sounds, then sustain-off and all-notes-off per channel."""
        with self._lock:
            sounding = sorted(self._sounding)
            channels = sorted(self.channels)
        messages = [mido.Message("note_off", channel=c, note=p, velocity=0)
                    for c, p in sounding]
        for channel in channels:
            messages.append(mido.Message("control_change", channel=channel,
                                         control=CC_SUSTAIN, value=0))
            messages.append(mido.Message("control_change", channel=channel,
                                         control=CC_ALL_NOTES_OFF, value=0))
        return messages


def guard(watch_fd: int, port: str, ready: int | None = None) -> int:
    """Guard ``port`` (melodyd's output) until ``watch_fd`` reports melodyd's end.

    Returns:
        0 after a clean stop (``BYE``), 3 after releasing for a dead melodyd.

    Raises:
        BridgeError: no JACK client could be opened or ``port`` does not exist.
    """
    tracker = NoteTracker()
    client = jack.JackClient(CLIENT_NAME, "in", "out", callback=tracker)
    try:
        client.connect(port, client.input_name)
        if ready is not None:
            os.write(ready, READY_LINE)
        destinations: list[str] = []
        while True:
            readable, _, _ = select.select([watch_fd], [], [], POLL_S)
            if readable:
                data = os.read(watch_fd, 64)
                if data.startswith(BYE):
                    return 0
                if not data:
                    break  # end of file: melodyd is gone
                continue
            connected = client.connections(port)
            if connected is None:
                # The port is gone. A clean stop closes melodyd's ports just before it says
                # BYE; a killed melodyd's pipe closes at about the same time as its port.
                if _said_bye(watch_fd, PORT_GONE_WAIT_S):
                    return 0
                break
            others = [n for n in connected if n != client.input_name]
            # A client being torn down loses its connections before its ports: never let
            # that moment erase where the notes went (a note-off to a synth that was once
            # connected is harmless).
            if others:
                destinations = others
        messages = tracker.releases()
        for destination in destinations:
            try:
                client.connect(client.output_name, destination)
            except BridgeError as err:
                logger.warning("guardian: %s", err)
        for message in messages:
            client.send(message)
        logger.warning("melodyd died; the guardian sent %d release messages to %s",
                       len(messages), ", ".join(destinations) or "no port")
        return 3
    finally:
        client.close()  # waits until JACK has taken the releases


def _said_bye(watch_fd: int, timeout: float) -> bool:
    """Whether melodyd writes BYE within ``timeout`` (False on end of file or silence)."""
    readable, _, _ = select.select([watch_fd], [], [], timeout)
    return bool(readable) and os.read(watch_fd, 64).startswith(BYE)


def jack_output_name(ports: Ports) -> str | None:
    """Full JACK name of melodyd's output port, or None where no guardian can watch it.

    Other MIDI systems have no guardian (it is a JACK client), nor does a JACK without
    melodyd's client library; the driver knows (or finds) its port's JACK name.
    """
    if not jack.available():
        return None
    return ports.output.jack_name()


def start_guardian(ports: Ports) -> Guardian | None:
    """The note guardian for melodyd's JACK output, started, or None.

    melodyd goes on without it where it cannot run: it only matters if melodyd is killed
    outright, and then only a separate process can release the notes.
    """
    port = jack_output_name(ports)
    if port is None:
        logger.info("no note guardian with %s ports on %s: a SIGKILL of melodyd can leave "
                    "notes sounding (README, 'If melodyd is killed')", ports.driver,
                    ports.backend)
        return None
    guardian = Guardian(port)
    try:
        guardian.start()
    except BridgeError as err:
        logger.warning("%s; going on without it", err)
        return None
    return guardian


class Guardian:
    """melodyd's side: start the guardian process, tell it about a clean stop.

    Args:
        port: full JACK name of melodyd's output port.
    """

    def __init__(self, port: str) -> None:
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._write_fd: int | None = None

    def start(self) -> None:
        """Launch it and wait until it listens to ``port``.

        Raises:
            BridgeError: it could not start or did not get ready in time.
        """
        read_fd, write_fd = os.pipe()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "bridge.guardian", "--watch-fd", str(read_fd),
                 "--port", self.port], pass_fds=(read_fd,), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE)
        except OSError as err:
            os.close(write_fd)
            raise BridgeError(f"cannot start the note guardian: {err}") from err
        finally:
            os.close(read_fd)  # only the guardian holds it now
        self._write_fd = write_fd
        stdout = self._process.stdout
        ready, _, _ = select.select([stdout], [], [], READY_TIMEOUT_S) if stdout else ([], 0, 0)
        if not ready or stdout is None or stdout.readline() != READY_LINE:
            self.stop()
            raise BridgeError("the note guardian did not start (see its log above)")
        logger.info("note guardian %d watches %r", self._process.pid, self.port)

    def stop(self) -> None:
        """melodyd released everything itself: the guardian can go (idempotent)."""
        if self._write_fd is not None:
            with contextlib.suppress(OSError):  # it has gone already
                os.write(self._write_fd, BYE)
            os.close(self._write_fd)
            self._write_fd = None
        process, self._process = self._process, None
        if process is not None:
            try:
                process.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bridge.guardian --watch-fd N --port NAME`` (started by melodyd)."""
    parser = argparse.ArgumentParser(prog="melodyd-guardian", description=__doc__.split("\n")[0])
    parser.add_argument("--watch-fd", type=int, required=True,
                        help="read end of the pipe only melodyd writes to")
    parser.add_argument("--port", required=True, help="melodyd's output port (full name)")
    args = parser.parse_args(argv)
    # A Ctrl-C in melodyd's terminal, a closed terminal or a service manager's SIGTERM
    # reach the whole process group: melodyd stops cleanly (and says BYE) or dies (end
    # of file), and either way the pipe, not a signal, tells the guardian when to go.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return guard(args.watch_fd, args.port, ready=sys.stdout.fileno())
    except BridgeError as err:
        print(f"error: note guardian: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
