"""The python-rtmidi driver: ports on ALSA, JACK, CoreMIDI and Windows MIDI.

Virtual ports (or connections to existing ones) through python-rtmidi directly; mido only
parses and builds the messages. On JACK, rtmidi makes one JACK client per port and writes
output at the start of the next period, so it cannot place a message in time:
``send_at`` sends at once and the scheduler waits for the time itself.
"""

from __future__ import annotations

import logging
import time

import mido
import rtmidi

from bridge.drivers.base import (
    CLIENT_NAME,
    InputCallback,
    InputPort,
    OutputPort,
    Ports,
    find_port,
)
from models.core.exceptions import BridgeError

logger = logging.getLogger(__name__)

# Our names for MIDI systems -> python-rtmidi's API names (its ``API_*`` constants).
APIS = {"alsa": "LINUX_ALSA", "jack": "UNIX_JACK", "coremidi": "MACOSX_CORE",
        "windows": "WINDOWS_MM"}
CALLBACK_DRAIN_S = 0.02  # lets a callback already waiting for the GIL finish
# What python-rtmidi raises when the MIDI system refuses (its errors, and SystemError).
RTMIDI_ERRORS = (rtmidi.RtMidiError, RuntimeError, OSError)


def api_id(backend: str) -> int:
    """python-rtmidi's API constant for one of our MIDI system names."""
    return getattr(rtmidi, f"API_{APIS[backend]}")


def port_names(backend: str) -> tuple[list[str], list[str]]:
    """Names of the ports melodyd could read from and send to on ``backend``.

    Raises:
        BridgeError: the MIDI system cannot be asked.
    """
    try:
        listers = rtmidi.MidiIn(rtapi=api_id(backend)), rtmidi.MidiOut(rtapi=api_id(backend))
    except RTMIDI_ERRORS as err:
        raise BridgeError(f"cannot list {backend} MIDI ports: {err}") from err
    try:
        return listers[0].get_ports(), listers[1].get_ports()
    except RTMIDI_ERRORS as err:
        raise BridgeError(f"cannot list {backend} MIDI ports: {err}") from err
    finally:
        for lister in listers:
            lister.delete()


def _open(rt: rtmidi.MidiIn | rtmidi.MidiOut, name: str, virtual: bool) -> None:
    """Create the virtual port ``name``, or open the existing port called exactly so."""
    if virtual:
        rt.open_virtual_port(name)
        return
    names = rt.get_ports()
    if name not in names:
        raise BridgeError(f"the MIDI port {name!r} has gone (available: "
                          f"{', '.join(repr(n) for n in names) or 'none'})")
    rt.open_port(names.index(name))


def _client_name(virtual: bool) -> dict[str, str]:
    # rtmidi's own client name where melodyd connects to an existing port (what mido did).
    return {"name": CLIENT_NAME} if virtual else {}


class RtmidiInput(InputPort):
    """An rtmidi input: ``callback`` gets each message with the time rtmidi's thread saw it.

    Args:
        backend: one of ``APIS``.
        name: the virtual port to create, or the existing port to read from.
        callback: called on rtmidi's thread (on JACK: JACK's process thread).
        virtual: create ``name`` rather than open it.

    Raises:
        rtmidi.RtMidiError, BridgeError: the port cannot be opened.
    """

    def __init__(self, backend: str, name: str, callback: InputCallback, *,
                 virtual: bool) -> None:
        super().__init__(name)
        self._callback = callback
        self._rt = rtmidi.MidiIn(rtapi=api_id(backend), **_client_name(virtual))
        try:
            _open(self._rt, name, virtual)
            # Keep sysex and timing (MIDI clock); drop active sensing.
            self._rt.ignore_types(sysex=False, timing=False, active_sense=True)
            self._rt.set_callback(self._on_message)
        except BaseException:
            self._rt.delete()
            raise

    def _on_message(self, event: tuple[list[int], float], _data: object) -> None:
        t = time.monotonic()
        try:
            message = mido.Message.from_bytes(event[0])
        except ValueError:
            return  # not a MIDI message: nothing to hand on
        self._callback(message, t)

    def _close(self) -> None:
        """Close without deadlocking against the callback.

        python-rtmidi runs the callback on the MIDI system's thread (JACK's process
        thread), which must take the GIL. Closing a JACK client waits for that thread to
        finish its cycle, while the closing thread holds the GIL: a message arriving
        during the close (a DAW's clock arrives 48 times a second) deadlocks both. So
        cancel the callback first, give a callback in flight time to return, then close.
        """
        self._rt.cancel_callback()
        time.sleep(CALLBACK_DRAIN_S)  # releases the GIL
        self._rt.close_port()
        self._rt.delete()


class RtmidiOutput(OutputPort):
    """An rtmidi output; messages leave when the MIDI system next runs.

    Args:
        backend: one of ``APIS``.
        name: the virtual port to create, or the existing port to play into.
        virtual: create ``name`` rather than open it.

    Raises:
        rtmidi.RtMidiError, BridgeError: the port cannot be opened.
    """

    def __init__(self, backend: str, name: str, *, virtual: bool) -> None:
        super().__init__(name)
        self.backend = backend
        self._rt = rtmidi.MidiOut(rtapi=api_id(backend), **_client_name(virtual))
        try:
            _open(self._rt, name, virtual)
        except BaseException:
            self._rt.delete()
            raise

    def jack_name(self) -> str | None:
        """The full JACK name, found among the ports: rtmidi does not tell its client's.

        python-rtmidi's JACK ports each live in a client of their own ("melodyd-01", ...):
        the port is the one of a "melodyd-" client with the output's name.
        """
        if self.backend != "jack":
            return None
        try:
            names, _ = port_names("jack")  # rtmidi's inputs list the ports it can read
        except BridgeError as err:
            logger.info("%s", err)
            return None
        ours = [n for n in names if n.endswith(f":{self.name}")
                and n.split(":", 1)[0].startswith(f"{CLIENT_NAME}-")]
        if len(ours) != 1:
            logger.info("cannot tell melodyd's output among %s", ", ".join(ours) or "no port")
            return None
        return ours[0]

    def _send(self, message: mido.Message) -> None:
        try:
            self._rt.send_message(message.bytes())
        except RTMIDI_ERRORS as err:
            raise BridgeError(f"cannot send on {self.name!r}: {err}") from err

    def _close(self) -> None:
        self._rt.close_port()
        self._rt.delete()


def open_rtmidi_ports(backend: str, *, in_name: str, out_name: str, connect_in: str,
                      connect_out: str, callback: InputCallback) -> Ports:
    """The daemon's input (with ``callback``) and output through python-rtmidi.

    Raises:
        BridgeError: a named port does not exist, or the MIDI system refused.
    """
    inp: RtmidiInput | None = None
    out: RtmidiOutput | None = None
    try:
        inputs, outputs = port_names(backend) if (connect_in or connect_out) else ([], [])
        if connect_in:
            inp = RtmidiInput(backend, find_port(connect_in, inputs, "input"), callback,
                              virtual=False)
        else:
            inp = RtmidiInput(backend, in_name, callback, virtual=True)
        if connect_out:
            out = RtmidiOutput(backend, find_port(connect_out, outputs, "output"),
                               virtual=False)
        else:
            out = RtmidiOutput(backend, out_name, virtual=True)
    except (*RTMIDI_ERRORS, BridgeError) as err:
        for port in (inp, out):
            if port is not None:
                port.close()
        if isinstance(err, BridgeError):
            raise
        raise BridgeError(f"cannot open {backend} MIDI ports: {err}") from err
    logger.info("listening on %r, playing on %r (%s)", inp.name, out.name, backend)
    return Ports(backend, inp, out, driver="rtmidi")
