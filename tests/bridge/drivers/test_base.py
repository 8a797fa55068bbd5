"""The port interface: what every driver's ports do the same way, on fake ports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mido
import pytest
from bridge_fakes import FakeOutput

from bridge.drivers.base import InputPort, Ports, find_port
from models.core.exceptions import BridgeError

ROOT = Path(__file__).resolve().parents[3]


class FakeInput(InputPort):
    """An input that records when it was closed and can report its MIDI system gone."""

    def __init__(self, log: list[str]) -> None:
        super().__init__("fake in")
        self.log = log
        self.gone = False

    def check(self) -> None:
        if self.gone:
            raise BridgeError("the fake MIDI system stopped")

    def _close(self) -> None:
        self.log.append("input closed")


class LoggedOutput(FakeOutput):
    def __init__(self, log: list[str], fail_close: bool = False) -> None:
        super().__init__()
        self.log = log
        self.fail_close = fail_close

    def _close(self) -> None:
        self.log.append("output closed")
        if self.fail_close:
            raise OSError("already gone")


def test_a_port_that_cannot_place_messages_sends_them_at_once():
    port = FakeOutput()
    assert port.send_ahead_s == 0.0
    port.send_at(mido.Message("note_on", note=60, velocity=90), when=1e9)
    assert [m.note for m in port.messages("note_on")] == [60]


def test_a_closed_output_refuses_to_send_and_closes_once():
    log: list[str] = []
    port = LoggedOutput(log)
    port.close()
    port.close()
    assert log == ["output closed"]
    with pytest.raises(BridgeError, match="'fake out' is closed"):
        port.send(mido.Message("clock"))
    with pytest.raises(BridgeError, match="closed"):
        port.send_at(mido.Message("clock"), 0.0)


def test_ports_close_the_input_first_and_survive_a_failing_close():
    log: list[str] = []
    ports = Ports("fake", FakeInput(log), LoggedOutput(log, fail_close=True), driver="fake")
    ports.close()
    ports.close()  # idempotent
    assert log == ["input closed", "output closed"]
    assert ports.input.closed and ports.output.closed


def test_ports_check_reports_a_vanished_midi_system():
    ports = Ports("fake", FakeInput([]), FakeOutput(), driver="fake")
    ports.check()
    ports.input.gone = True
    with pytest.raises(BridgeError, match="stopped"):
        ports.check()


def test_only_a_jack_driver_names_its_jack_port():
    assert FakeOutput().jack_name() is None


@pytest.mark.parametrize(("wanted", "expected"), [
    ("melodyd in", "melodyd:melodyd in"), ("MELODYD IN", "melodyd:melodyd in"),
    ("loopMIDI Port 1", "loopMIDI Port 1"),
])
def test_find_port(wanted, expected):
    names = ["melodyd:melodyd in", "loopMIDI Port 1", "loopMIDI Port 12"]
    assert find_port(wanted, names, "output") == expected


def test_find_port_errors_list_what_exists():
    with pytest.raises(BridgeError, match="several output ports match 'loopMIDI'"):
        find_port("loopMIDI", ["loopMIDI A", "loopMIDI B"], "output")
    with pytest.raises(BridgeError, match="available: 'x'"):
        find_port("melodyd", ["x"], "input")


def test_the_guardian_loads_the_jack_driver_without_rtmidi():
    """The guardian process (bridge.guardian) imports the JACK driver only: a package
    ``__init__`` or a base module that pulled in python-rtmidi would start a MIDI system
    probe in a process that must stay tiny."""
    code = "import sys, bridge.guardian; print('rtmidi' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    assert result.stdout.strip() == "False"
