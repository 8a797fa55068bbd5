"""MIDI ports through mido and python-rtmidi: pick the MIDI system, open or find ports.

The input callback given to ``open_ports`` runs on rtmidi's thread; the daemon's callback
only timestamps and queues (see ``bridge.listener``). Errors from the MIDI system become
``BridgeError`` with one line that says what to do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import mido
import rtmidi

from bridge import jack_native
from bridge.listener import CLOCK_WAKE_EVERY
from models.core.exceptions import BridgeError

logger = logging.getLogger(__name__)

# Our names for MIDI systems -> python-rtmidi's API names (mido's backend suffixes).
APIS = {"alsa": "LINUX_ALSA", "jack": "UNIX_JACK", "coremidi": "MACOSX_CORE",
        "windows": "WINDOWS_MM"}
CLIENT_NAME = "melodyd"
NO_MIDI_SYSTEM = ("no MIDI system available: the ALSA sequencer is missing (load it with "
                  "`sudo modprobe snd-seq`) and no JACK server is running (start one, e.g. "
                  "with QjackCtl or `jackd -d alsa`, then run melodyd --backend jack)")
# The fix differs by platform (keyed by sys.platform's first three letters).
NO_MIDI_SYSTEM_ON = {
    "dar": ("no MIDI system available: CoreMIDI did not answer; open Audio MIDI Setup "
            "(Applications > Utilities) and check that the MIDI server runs"),
    "win": ("no MIDI system available: Windows MIDI did not answer; install a loopMIDI "
            "port pair (see the README) and check the device manager"),
}
WINDOWS_NO_VIRTUAL = ("Windows has no virtual MIDI ports: create two loopMIDI ports (e.g. "
                      "'melodyd in' and 'melodyd out') and run melodyd --connect-in "
                      "'melodyd in' --connect-out 'melodyd out'")


# The input callback: a message and, where the MIDI system knows it, the
# ``time.monotonic()`` of its arrival (None: the callback stamps it itself).
InputCallback = Callable[..., None]


@dataclass
class Ports:
    """The daemon's two ports, the MIDI system they live on and the driver behind them.

    Attributes:
        driver: ``rtmidi`` (python-rtmidi through mido) or ``native`` (melodyd's JACK
            client, ``bridge.jack_native``).
    """

    backend: str
    input: mido.ports.BaseInput | NativeInput
    output: mido.ports.BaseOutput | NativeOutput
    driver: str = "rtmidi"

    def check(self) -> None:
        """Raise if the MIDI system has gone (melodyd's JACK client sees the server quit).

        Raises:
            BridgeError: the JACK server shut the client down.
        """
        if isinstance(self.input, NativeInput) and self.input.client.shut_down:
            raise BridgeError("the JACK server stopped; start it again, then melodyd")

    def close(self) -> None:
        """Close both ports (the input first, so no callback runs on a closed output)."""
        with contextlib.suppress(Exception):  # closing at exit: nothing left to save
            close_input(self.input)
        with contextlib.suppress(Exception):
            self.output.close()


class NativeInput:
    """The input side of a ``jack_native.JackClient`` (closing it closes the client)."""

    def __init__(self, client: jack_native.JackClient) -> None:
        self.client = client
        self.name = client.input_name
        self.closed = False

    def close(self) -> None:
        self.client.close()
        self.closed = True


class NativeOutput:
    """The output side of a ``jack_native.JackClient``; a ``bridge.scheduler.TimedOutput``."""

    def __init__(self, client: jack_native.JackClient) -> None:
        self.client = client
        self.name = client.output_name
        self.send_ahead_s = client.send_ahead_s
        self.closed = False

    def send(self, message: mido.Message) -> None:
        """Send in the next JACK cycle."""
        self.client.send(message)

    def send_at(self, message: mido.Message, when: float) -> None:
        """Send at ``time.monotonic()`` time ``when`` (to the frame)."""
        self.client.send(message, when)

    def close(self) -> None:
        self.client.close()
        self.closed = True


CALLBACK_DRAIN_S = 0.02  # lets a callback already waiting for the GIL finish


def close_input(port: mido.ports.BaseInput | NativeInput) -> None:
    """Close an input port without deadlocking against its own callback.

    python-rtmidi runs the callback on the MIDI system's thread (JACK's process thread),
    which must take the GIL. Closing a JACK client waits for that thread to finish its
    cycle, while the closing thread holds the GIL: a message arriving during the close
    (a DAW's clock arrives 48 times a second) deadlocks both. mido's own close re-installs
    its callback wrapper, so cancel rtmidi's callback directly, give a callback in flight
    time to return, then close.
    """
    rt = getattr(port, "_rt", None)  # None for NativeInput: no Python in JACK's thread
    if rt is None or port.closed:
        port.close()
        return
    rt.cancel_callback()
    time.sleep(CALLBACK_DRAIN_S)  # releases the GIL
    rt.close_port()
    rt.delete()
    port.closed = True


@contextlib.contextmanager
def _quiet_c_stderr() -> Iterator[None]:
    """Silence the C libraries (ALSA, JACK) while probing: their warnings are ours to word."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _api_works(api: str) -> bool:
    """Whether a client of ``api`` can be created (ALSA sequencer present, JACK running)."""
    try:
        with _quiet_c_stderr():
            probe = rtmidi.MidiIn(rtapi=getattr(rtmidi, f"API_{api}"))
            probe.delete()
    except (rtmidi.RtMidiError, RuntimeError, AttributeError):
        return False
    return True


def choose_backend(name: str) -> str:
    """Our name of a working MIDI system for ``name`` (``auto`` picks the platform's).

    Raises:
        BridgeError: the system is not compiled into python-rtmidi or not running.
    """
    # Never let libjack launch a server behind the musician's back.
    os.environ.setdefault("JACK_NO_START_SERVER", "1")
    compiled_ids = rtmidi.get_compiled_api()
    compiled = {api for api in APIS.values() if getattr(rtmidi, f"API_{api}", -1) in compiled_ids}
    if name != "auto":
        api = APIS[name]
        if api not in compiled:
            raise BridgeError(f"python-rtmidi here has no {name} support "
                              f"(compiled in: {', '.join(sorted(compiled)) or 'none'})")
        if not _api_works(api):
            fix = ("start a JACK server first" if name == "jack"
                   else "load the ALSA sequencer: `sudo modprobe snd-seq`" if name == "alsa"
                   else "check the system's MIDI setup")
            raise BridgeError(f"the {name} MIDI system is not available: {fix}")
        return name
    if sys.platform == "darwin":
        order = ["coremidi"]
    elif sys.platform.startswith("win"):
        order = ["windows"]
    else:
        order = ["alsa", "jack"]
    for candidate in order:
        if APIS[candidate] in compiled and _api_works(APIS[candidate]):
            return candidate
    raise BridgeError(NO_MIDI_SYSTEM_ON.get(sys.platform[:3], NO_MIDI_SYSTEM))


def open_backend(name: str) -> mido.Backend:
    """The mido backend for one of our MIDI system names (no probing)."""
    return mido.Backend(f"mido.backends.rtmidi/{APIS[name]}", load=True)


def list_ports(backend: str) -> tuple[list[str], list[str]]:
    """Names of the ports melodyd could read from and send to on ``backend``."""
    mido_backend = open_backend(backend)
    try:
        return mido_backend.get_input_names(), mido_backend.get_output_names()
    except (rtmidi.RtMidiError, OSError) as err:
        raise BridgeError(f"cannot list {backend} MIDI ports: {err}") from err


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


def open_ports(backend: str, *, in_name: str, out_name: str, connect_in: str, connect_out: str,
               callback: InputCallback, jack_client: str = "native") -> Ports:
    """Open the daemon's input (with ``callback``) and output port.

    Args:
        backend: one of ``APIS``.
        in_name, out_name: names of the virtual ports to create.
        connect_in, connect_out: existing ports to connect to instead (non-empty wins).
        callback: called on the MIDI system's thread (rtmidi) or the client's reader
            thread (native) with each incoming message; the native client also passes
            the message's arrival time.
        jack_client: on JACK, ``native`` uses melodyd's own client where it is built
            (falling back to python-rtmidi), ``rtmidi`` always uses python-rtmidi.

    Raises:
        BridgeError: a port cannot be found or opened, or virtual ports are asked for
            where the system has none (Windows).
    """
    if backend == "windows" and not (connect_in and connect_out):
        raise BridgeError(WINDOWS_NO_VIRTUAL)
    if backend == "jack" and jack_client == "native":
        if jack_native.available():
            return open_native_jack_ports(in_name=in_name, out_name=out_name,
                                          connect_in=connect_in, connect_out=connect_out,
                                          callback=callback)
        logger.info("melodyd's JACK client is not built here; using python-rtmidi's "
                    "(one JACK client per port, output on period boundaries)")
    mido_backend = open_backend(backend)
    inp = out = None
    try:
        if connect_in:
            name = find_port(connect_in, mido_backend.get_input_names(), "input")
            inp = mido_backend.open_input(name, callback=callback)
        else:
            inp = mido_backend.open_input(in_name, virtual=True, client_name=CLIENT_NAME,
                                          callback=callback)
        if connect_out:
            name = find_port(connect_out, mido_backend.get_output_names(), "output")
            out = mido_backend.open_output(name)
        else:
            out = mido_backend.open_output(out_name, virtual=True, client_name=CLIENT_NAME)
    except (OSError, rtmidi.RtMidiError, BridgeError) as err:
        for port in (inp, out):
            if port is not None:
                port.close()
        if isinstance(err, BridgeError):
            raise
        raise BridgeError(f"cannot open {backend} MIDI ports: {err}") from err
    logger.info("listening on %r, playing on %r (%s)", inp.name, out.name, backend)
    return Ports(backend, inp, out)


def open_native_jack_ports(*, in_name: str, out_name: str, connect_in: str, connect_out: str,
                           callback: InputCallback) -> Ports:
    """Both ports on one ``jack_native.JackClient``; connected to existing ports if named.

    The ports always exist under their own names; ``connect_in``/``connect_out`` add a
    JACK connection from/to the named port (which is what rtmidi does on JACK, too).
    """
    # Clock ticks in the batches the daemon takes them in anyway (see bridge.listener).
    client = jack_native.JackClient(CLIENT_NAME, in_name, out_name, callback=callback,
                                    clock_batch=CLOCK_WAKE_EVERY)
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
    return Ports("jack", NativeInput(client), NativeOutput(client), driver="native")
