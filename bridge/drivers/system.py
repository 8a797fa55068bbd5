"""The MIDI system and the driver: pick the system, list its ports, open the daemon's two.

On JACK melodyd's own client (``bridge.drivers.jack``) drives the ports where it is
built; everywhere else, and on JACK when asked, python-rtmidi (``bridge.drivers.rtmidi``).
Errors from the MIDI system become ``BridgeError`` with one line that says what to do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

import rtmidi

from bridge.drivers import jack
from bridge.drivers.base import InputCallback, Ports
from bridge.drivers.rtmidi import APIS, open_rtmidi_ports, port_names
from models.core.exceptions import BridgeError

logger = logging.getLogger(__name__)

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


def list_ports(backend: str) -> tuple[list[str], list[str]]:
    """Names of the ports melodyd could read from and send to on ``backend`` (python-rtmidi
    sees every MIDI system's ports, the native client's included).

    Raises:
        BridgeError: the MIDI system cannot be asked.
    """
    return port_names(backend)


def open_ports(backend: str, *, in_name: str, out_name: str, connect_in: str, connect_out: str,
               callback: InputCallback, jack_client: str = "native",
               clock_batch: int = 1) -> Ports:
    """Open the daemon's input (with ``callback``) and output port.

    Args:
        backend: one of ``bridge.drivers.rtmidi.APIS``.
        in_name, out_name: names of the virtual ports to create.
        connect_in, connect_out: existing ports to connect to instead (non-empty wins).
        callback: called with each incoming message and its arrival time, on the MIDI
            system's thread (rtmidi) or the client's reader thread (native).
        jack_client: on JACK, ``native`` uses melodyd's own client where it is built
            (falling back to python-rtmidi), ``rtmidi`` always uses python-rtmidi.
        clock_batch: the native client hands MIDI clock ticks over in batches of this
            many (each with its own time); the daemon takes them so anyway.

    Raises:
        BridgeError: a port cannot be found or opened, or virtual ports are asked for
            where the system has none (Windows).
    """
    if backend == "windows" and not (connect_in and connect_out):
        raise BridgeError(WINDOWS_NO_VIRTUAL)
    if backend == "jack" and jack_client == "native":
        if jack.available():
            return jack.open_jack_ports(in_name=in_name, out_name=out_name,
                                        connect_in=connect_in, connect_out=connect_out,
                                        callback=callback, clock_batch=clock_batch)
        logger.info("melodyd's JACK client is not built here; using python-rtmidi's "
                    "(one JACK client per port, output on period boundaries)")
    return open_rtmidi_ports(backend, in_name=in_name, out_name=out_name,
                             connect_in=connect_in, connect_out=connect_out, callback=callback)
