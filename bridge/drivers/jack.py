"""The native JACK driver: melodyd's own JACK MIDI client (``bridge/native/jackmidi.c``),
loaded with ctypes, and the two ports of the port interface on it.

One JACK client owns both ports, its real-time callback never runs Python, and output
events land on the frame of their deadline instead of at the start of the next cycle
(see the C file for why python-rtmidi and JACK-Client do not do this). The library is
built when melodyd is installed (``hatch_build.py``); where it could not be built or
libjack is missing, ``available()`` is false and ``bridge.drivers.system`` uses
python-rtmidi.

Incoming events wait in the C ring until a reader thread, woken through a pipe, turns
them into ``mido.Message`` objects and hands each to the callback with its arrival time
on ``time.monotonic()`` (the time of its frame, not of the wake-up).

The note guardian uses ``JackClient`` on its own; this module never loads python-rtmidi.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mido

from bridge.drivers.base import CLIENT_NAME, InputCallback, InputPort, OutputPort, Ports, find_port
from models.core.exceptions import BridgeError

logger = logging.getLogger(__name__)

LIBRARY = Path(__file__).parent.parent / "native" / "libmelodyd_jack.so"
LIBJACK_NAMES = ("libjack.so.0", "libjack.so")
ERROR_BYTES = 256
# Hand events to the client this much before their deadline, on top of one period: the
# process callback of the cycle holding the deadline must find them queued. Covers a
# late wake-up of the scheduler thread on a busy machine.
SEND_AHEAD_MARGIN_S = 0.002
READER_JOIN_S = 2.0
# Closing waits for queued output (a stop's note-offs and all-notes-off) to leave, for at
# most this long on top of the send-ahead and a few periods: a stuck server must not hold
# melodyd's exit, but a clean stop must never drop its releases.
DRAIN_MARGIN_S = 0.25
DRAIN_PERIODS = 4


class _Api:
    """The C functions with their signatures."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        c = ctypes
        self.open = _fn(lib.mm_open, c.c_void_p, [c.c_char_p, c.c_char_p, c.c_char_p, c.c_int,
                                                  c.c_uint32, c.c_char_p, c.c_size_t])
        self.close = _fn(lib.mm_close, c.c_int, [c.c_void_p])
        self.drain = _fn(lib.mm_drain, c.c_int, [c.c_void_p, c.c_double])
        self.port_name = _fn(lib.mm_port_name, c.c_char_p, [c.c_void_p, c.c_int])
        self.connect = _fn(lib.mm_connect, c.c_int, [c.c_void_p, c.c_char_p, c.c_char_p])
        self.list_ports = _fn(lib.mm_list_ports, c.c_size_t,
                              [c.c_void_p, c.c_int, c.c_char_p, c.c_size_t])
        self.connections = _fn(lib.mm_connections, c.c_size_t,
                               [c.c_void_p, c.c_char_p, c.c_char_p, c.c_size_t])
        self.send = _fn(lib.mm_send, c.c_int, [c.c_void_p, c.c_char_p, c.c_uint32, c.c_double])
        self.receive = _fn(lib.mm_receive, c.c_uint32,
                           [c.c_void_p, c.c_char_p, c.POINTER(c.c_double)])
        self.shut_down = _fn(lib.mm_shut_down, c.c_int, [c.c_void_p])
        self.dropped = _fn(lib.mm_dropped, c.c_uint64, [c.c_void_p, c.c_int])
        self.sample_rate = _fn(lib.mm_sample_rate, c.c_uint32, [c.c_void_p])
        self.period_frames = _fn(lib.mm_period_frames, c.c_uint32, [c.c_void_p])
        self.event_bytes = lib.mm_event_bytes()


def _fn(function: Any, restype: Any, argtypes: list[Any]) -> Any:
    """Give a C function its ctypes signature."""
    function.restype = restype
    function.argtypes = argtypes
    return function


@functools.cache
def _api() -> _Api | None:
    """The loaded library, or None (logged once) where it is not built or libjack absent."""
    if not LIBRARY.exists():
        logger.debug("native JACK client not built (%s missing)", LIBRARY)
        return None
    names = [n for n in (ctypes.util.find_library("jack"), *LIBJACK_NAMES) if n]
    for name in names:
        try:
            # RTLD_GLOBAL: the client library finds libjack's symbols at load time.
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
            break
        except OSError:
            continue
    else:
        logger.debug("libjack not found (%s)", ", ".join(names))
        return None
    try:
        return _Api(ctypes.CDLL(str(LIBRARY)))
    except (OSError, AttributeError) as err:
        logger.warning("cannot load the native JACK client %s: %s", LIBRARY, err)
        return None


def available() -> bool:
    """Whether melodyd's own JACK client can be used (built, and libjack present)."""
    return _api() is not None


class JackClient:
    """One JACK client with one MIDI input and one MIDI output port.

    Args:
        client_name: the JACK client's name (JACK adds a suffix if it is taken).
        in_name, out_name: the ports' short names.
        callback: called on the reader thread with each incoming message and the
            ``time.monotonic()`` of its frame; None ignores input.
        clock_batch: MIDI clock ticks reach the callback in batches of this many (each
            with its own time); every other message at once.

    Raises:
        BridgeError: the library is not available, no server runs, or JACK refused.
    """

    def __init__(self, client_name: str, in_name: str, out_name: str,
                 callback: InputCallback | None = None, clock_batch: int = 1) -> None:
        api = _api()
        if api is None:
            raise BridgeError("melodyd's JACK client is not built; reinstall melodyd with a "
                              "C compiler present, or use python-rtmidi's JACK ports")
        self._api = api
        self._callback = callback
        # Held by every call that passes the C handle (and so by the output ring's single
        # producer): close() sets _closed under it before the handle is freed, so no call
        # can use freed memory; the reader thread is joined instead.
        self._send_lock = threading.Lock()
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        error = ctypes.create_string_buffer(ERROR_BYTES)
        handle = api.open(client_name.encode(), in_name.encode(), out_name.encode(),
                          self._wake_w, clock_batch, error, ERROR_BYTES)
        if not handle:
            self._close_pipe()
            raise BridgeError(f"cannot open a JACK client: {error.value.decode()}")
        self._handle = ctypes.c_void_p(handle)
        self.input_name = api.port_name(self._handle, 0).decode()
        self.output_name = api.port_name(self._handle, 1).decode()
        self.sample_rate = api.sample_rate(self._handle)
        self.period_s = api.period_frames(self._handle) / self.sample_rate
        self.send_ahead_s = self.period_s + SEND_AHEAD_MARGIN_S
        self.drain_timeout_s = (self.send_ahead_s + DRAIN_PERIODS * self.period_s
                                + DRAIN_MARGIN_S)
        self._reader = threading.Thread(target=self._read, name="jack-midi-in", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------------ ports
    def list_ports(self, *, readable: bool) -> list[str]:
        """Full names of the MIDI ports we can read from (``readable``) or write to.

        Raises:
            BridgeError: the client is closed.
        """
        return self._names(lambda handle, buffer, size: self._api.list_ports(
            handle, int(readable), buffer, size)) or []

    def connections(self, port: str) -> list[str] | None:
        """Full names of the ports connected to ``port`` (any client's); None if it is gone.

        Raises:
            BridgeError: the client is closed.
        """
        return self._names(lambda handle, buffer, size: self._api.connections(
            handle, port.encode(), buffer, size))

    def _names(self, fill: Callable[[Any, Any, int], int]) -> list[str] | None:
        """Call a C lister with a growing buffer; its lines, or None if it returned 0."""
        size = 4096
        while True:
            buffer = ctypes.create_string_buffer(size)
            with self._send_lock:
                needed = fill(self._open_handle(), buffer, size)
            if needed == 0:
                return None
            if needed <= size:
                return [n for n in buffer.value.decode(errors="replace").split("\n") if n]
            size = needed

    def connect(self, source: str, destination: str) -> None:
        """Connect two ports by full name.

        Raises:
            BridgeError: JACK refused (a name is wrong, or the types differ), or the
                client is closed.
        """
        with self._send_lock:
            result = self._api.connect(self._open_handle(), source.encode(),
                                       destination.encode())
        if result != 0:
            raise BridgeError(f"JACK could not connect {source!r} to {destination!r}")

    def _open_handle(self) -> ctypes.c_void_p:
        """The C handle, for a caller holding ``_send_lock``.

        Raises:
            BridgeError: the client is closed (its handle is freed memory).
        """
        if self._closed:
            raise BridgeError("the JACK client is closed")
        return self._handle

    # ------------------------------------------------------------------ output
    def send(self, message: mido.Message, when: float = 0.0) -> None:
        """Queue ``message`` for the output at ``time.monotonic()`` time ``when``.

        ``when`` 0 (or past) sends it in the next cycle. Messages leave in the order they
        are queued, each not before its time, so queue them in time order.

        Raises:
            BridgeError: the client is closed, the server went away, or the queue is full.
        """
        data = bytes(message.bytes())
        with self._send_lock:
            result = self._api.send(self._open_handle(), data, len(data), when)
        if result == -3:
            raise BridgeError("the JACK server has gone")
        if result == -2:
            raise BridgeError(f"message of {len(data)} bytes is longer than the client "
                              f"carries ({self._api.event_bytes})")
        if result != 0:
            raise BridgeError("the JACK output queue is full")

    # ------------------------------------------------------------------ state
    @property
    def shut_down(self) -> bool:
        """True once the JACK server has shut the client down (False once closed)."""
        with self._send_lock:  # another thread's close() must not free the handle mid-call
            return not self._closed and bool(self._api.shut_down(self._handle))

    def dropped(self) -> tuple[int, int]:
        """Messages lost so far: (input, output); (0, 0) once closed."""
        with self._send_lock:
            if self._closed:
                return (0, 0)
            return (self._api.dropped(self._handle, 0), self._api.dropped(self._handle, 1))

    def close(self) -> None:
        """Let queued output leave, deactivate and close the client, then stop the reader
        (idempotent).

        Messages queued before ``close`` (a stop's note-offs, CC 123, CC 64) reach the
        connected ports: the client stays active until JACK has taken them, within a bound
        (``drain_timeout_s``) so a stalled server cannot hold melodyd's exit.
        """
        with self._send_lock:
            if self._closed:
                return
            self._closed = True
            drained = self._api.drain(self._handle, self.drain_timeout_s)
        if drained == -1:
            logger.warning("JACK did not take melodyd's last %s of output; closing anyway",
                           f"{self.drain_timeout_s:.2f} s")
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")  # wakes the reader, which sees _closed
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=READER_JOIN_S)
        if self._reader.is_alive():
            # Freeing the client under a reader still inside it would crash: leak instead.
            logger.warning("MIDI input callback still busy; leaving the JACK client open")
            return
        # No Python runs in JACK's thread, so closing cannot deadlock against a callback.
        if self._api.close(self._handle) != 0:
            # A libjack thread is still inside the shutdown callback, which writes to the
            # pipe: the C side kept its memory, and the pipe stays open (a closed fd number
            # can be reused by any file, which would get the byte).
            logger.warning("the JACK shutdown callback is still running; leaving the "
                           "client's memory and wake-up pipe allocated")
            return
        self._close_pipe()

    def _close_pipe(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # ------------------------------------------------------------------ input thread
    def _read(self) -> None:
        """Wait on the pipe; turn every queued event into a message for the callback."""
        data = ctypes.create_string_buffer(self._api.event_bytes)
        when = ctypes.c_double()
        parser = mido.Parser()
        while True:
            try:
                os.read(self._wake_r, 4096)  # blocks without the GIL until input arrives
            except OSError:
                return
            with self._send_lock:
                if self._closed:
                    return
                handle = self._handle
            while size := self._api.receive(handle, data, ctypes.byref(when)):
                parser.feed(data.raw[:size])
                while (message := parser.get_message()) is not None:
                    if self._callback is not None:
                        self._callback_safely(message, when.value)
            if self._api.shut_down(handle):
                logger.warning("the JACK server shut melodyd's client down")
                return

    def _callback_safely(self, message: mido.Message, when: float) -> None:
        try:
            self._callback(message, when)
        except Exception:  # one bad message must not end input for good
            logger.exception("MIDI input callback failed on %s", message)


# ---------------------------------------------------------------------- the port interface
class JackInput(InputPort):
    """The input side of a ``JackClient`` (closing it closes the client)."""

    def __init__(self, client: JackClient) -> None:
        super().__init__(client.input_name)
        self.client = client

    def check(self) -> None:
        """Raise once the JACK server has shut the client down.

        Raises:
            BridgeError: the server stopped.
        """
        _check_server(self.client)

    def _close(self) -> None:
        # No Python runs in JACK's thread, so closing cannot deadlock against a callback.
        self.client.close()


class JackOutput(OutputPort):
    """The output side of a ``JackClient``: ``send_at`` places a message on the frame of
    its time when it is handed over one period (plus a margin) ahead."""

    def __init__(self, client: JackClient) -> None:
        super().__init__(client.output_name, send_ahead_s=client.send_ahead_s)
        self.client = client

    def check(self) -> None:
        """Raise once the JACK server has shut the client down.

        Raises:
            BridgeError: the server stopped.
        """
        _check_server(self.client)

    def jack_name(self) -> str:
        """The full JACK name: the client knows it."""
        return self.name

    def _send(self, message: mido.Message) -> None:
        self.client.send(message)  # in the next JACK cycle

    def _send_at(self, message: mido.Message, when: float) -> None:
        self.client.send(message, when)  # on the frame of ``when``

    def _close(self) -> None:
        self.client.close()  # waits (bounded) until JACK has taken what is queued


def _check_server(client: JackClient) -> None:
    if client.shut_down:
        raise BridgeError("the JACK server stopped; start it again, then melodyd")


def open_jack_ports(*, in_name: str, out_name: str, connect_in: str, connect_out: str,
                    callback: InputCallback, clock_batch: int = 1) -> Ports:
    """Both ports on one ``JackClient``; connected to existing ports if named.

    The ports always exist under their own names; ``connect_in``/``connect_out`` add a
    JACK connection from/to the named port (which is what rtmidi does on JACK, too).

    Args:
        clock_batch: MIDI clock ticks reach ``callback`` in batches of this many.

    Raises:
        BridgeError: the library is not available, no server runs, or a named port does
            not exist.
    """
    client = JackClient(CLIENT_NAME, in_name, out_name, callback=callback,
                        clock_batch=clock_batch)
    try:
        # Output first: when the DAW both feeds and records melodyd, JACK delays the
        # connection that closes that loop by one period, and it should not be ours.
        if connect_out:
            own = {client.input_name}
            names = [n for n in client.list_ports(readable=False) if n not in own]
            client.connect(client.output_name, find_port(connect_out, names, "output"))
        if connect_in:
            own = {client.output_name}
            names = [n for n in client.list_ports(readable=True) if n not in own]
            client.connect(find_port(connect_in, names, "input"), client.input_name)
    except BridgeError:
        client.close()
        raise
    logger.info("listening on %r, playing on %r (jack, melodyd's own client, %.2f ms period)",
                client.input_name, client.output_name, client.period_s * 1000)
    return Ports("jack", JackInput(client), JackOutput(client), driver="native")
