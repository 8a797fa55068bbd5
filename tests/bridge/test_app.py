"""The application object: its parts start in order and stop in reverse, and every way out
releases every note before the ports close.

The MIDI ports, the note guardian and the engine child are fakes that write what happens
to them into one log; the clock, the client, the scheduler and the daemon are the real
ones (the client talks to an address where no engine answers).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import mido
import pytest
from bridge_fakes import FakeOutput

from bridge import app
from bridge.drivers.base import InputPort, Ports
from bridge.scheduler import Scheduler
from models.core.exceptions import BridgeError
from models.core.notes import Note
from models.core.settings import Settings


class LoggedInput(InputPort):
    def __init__(self, log: list[str]) -> None:
        super().__init__("fake in")
        self.log = log
        self.gone = False  # the MIDI system went away

    def check(self) -> None:
        if self.gone:
            raise BridgeError("the fake MIDI system stopped")

    def _close(self) -> None:
        self.log.append("input closed")


class LoggedOutput(FakeOutput):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def _send(self, message: mido.Message) -> None:
        super()._send(message)
        if message.type == "control_change":
            self.log.append(f"CC {message.control}")
        else:
            self.log.append(f"{message.type} {message.note}")

    def _close(self) -> None:
        self.log.append("output closed")


class Rig:
    """Fakes for the parts melodyd cannot run here, all writing into ``log``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.log: list[str] = []
        self.input = LoggedInput(self.log)
        self.output = LoggedOutput(self.log)
        self.child_deaths = 0  # how many times the engine child will report it died
        self.schedulers: list[Scheduler] = []
        rig = self

        class FakeChild:
            def __init__(self, models: list[Path], verbose: bool = False) -> None:
                self.address = "tcp://127.0.0.1:9"  # nothing answers there

            def start(self) -> None:
                rig.log.append("engine started")

            def check(self) -> bool:
                if rig.child_deaths:
                    rig.child_deaths -= 1
                    return True
                return False

            def stop(self) -> None:
                rig.log.append("engine stopped")

        class FakeGuardian:
            def stop(self) -> None:
                rig.log.append("guardian told")

        class RecordingScheduler(Scheduler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, **kwargs)
                rig.schedulers.append(self)

        def open_ports(backend: str, **_kwargs: object) -> Ports:
            self.log.append("ports opened")
            return Ports(backend, self.input, self.output, driver="fake")

        def start_guardian(_ports: Ports) -> FakeGuardian:
            self.log.append("guardian started")
            return FakeGuardian()

        monkeypatch.setattr(app, "choose_backend", lambda name: "fake")
        monkeypatch.setattr(app, "open_ports", open_ports)
        monkeypatch.setattr(app, "start_guardian", start_guardian)
        monkeypatch.setattr(app, "EngineChild", FakeChild)
        monkeypatch.setattr(app, "Scheduler", RecordingScheduler)
        self.melodyd = app.Melodyd(Settings(), style=None, models=[Path("fake.onnx")])
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.melodyd.run()
        except BaseException as err:  # handed to the test
            self.error = err

    def start(self) -> Scheduler:
        """Run melodyd on a thread; returns its scheduler once it plays."""
        self._thread.start()
        assert wait_for(lambda: self.schedulers), self.log
        return self.schedulers[0]

    def join(self) -> None:
        if self._thread.ident is None:
            return  # never started
        self._thread.join(10)
        assert not self._thread.is_alive(), self.log


def wait_for(predicate, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def sound_a_note(scheduler: Scheduler) -> None:
    beat = scheduler.clock.beat_at(time.monotonic())
    scheduler.schedule("r1", [Note(beat + 0.1, 100.0, 60, 90)])
    assert wait_for(lambda: scheduler.sounding() == [60])


@pytest.fixture
def rig(monkeypatch):
    rig = Rig(monkeypatch)
    yield rig
    rig.melodyd.stop()  # a failed test must not leave melodyd running under the next one
    rig.join()


def test_parts_start_in_order_and_stop_in_reverse_releasing_every_note(rig):
    scheduler = rig.start()
    sound_a_note(scheduler)
    rig.melodyd.stop()
    rig.join()
    assert rig.error is None
    assert rig.log == ["engine started", "ports opened", "guardian started", "note_on 60",
                       # the scheduler's stop: the sounding note, sustain off, all notes off
                       "note_off 60", "CC 64", "CC 123",
                       "input closed", "output closed", "guardian told", "engine stopped"]


def test_the_midi_system_going_away_still_releases_and_stops_everything(rig):
    scheduler = rig.start()
    sound_a_note(scheduler)
    rig.input.gone = True
    rig.join()
    assert isinstance(rig.error, BridgeError) and "stopped" in str(rig.error)
    assert rig.log[-7:] == ["note_off 60", "CC 64", "CC 123", "input closed", "output closed",
                            "guardian told", "engine stopped"]


def test_a_dead_engine_child_releases_what_it_was_playing(rig, caplog):
    scheduler = rig.start()
    sound_a_note(scheduler)
    with caplog.at_level("INFO"):
        rig.child_deaths = 1
        # Logged on melodyd's thread once the releases have been sent.
        assert wait_for(lambda: "engine lost: all notes released" in caplog.text)
    assert rig.log[-3:] == ["note_off 60", "CC 64", "CC 123"]
    assert "lost (the engine child exited)" in caplog.text
    rig.melodyd.stop()
    rig.join()
    assert rig.error is None and rig.log[-1] == "engine stopped"
