"""The scheduler thread with a fake port: order, drops, tempo changes, never a stuck note."""

from __future__ import annotations

import time

import mido
import pytest
from bridge_fakes import FakeOutput, ManualClock, sounding_after

from bridge.clock import Mapping
from bridge.scheduler import Scheduler
from models.core.notes import Note


def wait_for(predicate, timeout: float = 10.0) -> bool:
    """Poll ``predicate`` (a safety net against hangs, not a timing assertion)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


@pytest.fixture
def rig():
    port = FakeOutput()
    clock = ManualClock(bpm=600.0)  # 0.1 s per beat keeps the tests short
    sent = []
    scheduler = Scheduler(port, clock, channel=2, late_drop_s=1.0,  # a loaded CI box is slow
                          on_sent=lambda r, n, late: sent.append((r, n.pitch)))
    scheduler.start()
    yield port, clock, scheduler, sent
    scheduler.stop()


def now_beat(clock) -> float:
    return clock.beat_at(time.monotonic())


def test_notes_play_in_order_with_their_offs(rig):
    port, clock, scheduler, sent = rig
    b = now_beat(clock) + 1.0
    notes = [Note(b + 0.5, 0.25, 64, 90), Note(b, 0.5, 60, 100), Note(b + 0.5, 0.5, 67, 80)]
    scheduler.schedule("r1", notes)
    assert wait_for(lambda: len(port.messages("note_off")) == 3)
    on = port.messages("note_on")
    assert [m.note for m in on] == [60, 64, 67]
    assert all(m.channel == 2 for m in port.messages())
    assert [p for _, p in sent] == [60, 64, 67]
    assert scheduler.stats.sent == 3 and scheduler.stats.dropped == 0
    assert sounding_after(port.messages()) == set()
    assert scheduler.pending() == 0


def test_onsets_follow_the_clock(rig):
    port, clock, scheduler, _ = rig
    b = now_beat(clock) + 1.0
    scheduler.schedule("r1", [Note(b, 0.2, 60, 100), Note(b + 2, 0.2, 62, 100)])
    assert wait_for(lambda: len(port.messages("note_off")) == 2)
    times = [t for t, m in port.sent if m.type == "note_on"]
    for t, beat in zip(times, (b, b + 2), strict=True):
        # Sent at (not before) the deadline; how late is an end-to-end measurement.
        assert t >= clock.time_at(beat) - 0.001


def test_late_notes_are_dropped_and_counted(rig):
    port, clock, scheduler, _ = rig
    b = now_beat(clock)
    scheduler.schedule("r1", [Note(b - 50.0, 1.0, 60, 100), Note(b + 0.5, 0.1, 62, 100)])
    assert wait_for(lambda: len(port.messages("note_off")) == 1)
    assert [m.note for m in port.messages("note_on")] == [62]
    assert scheduler.stats.dropped == 1


def test_tempo_change_moves_queued_notes(rig):
    port, clock, scheduler, _ = rig
    scheduler.schedule("r1", [Note(1000.0, 0.5, 60, 100)])  # 100 s away at 600 BPM
    time.sleep(0.05)
    assert port.messages("note_on") == []
    # The DAW jumps ahead: beat 1000 is now 50 ms away. The scheduler must wake and play.
    clock.set(Mapping(time.monotonic() + 0.05, 1000.0, 0.1))
    assert wait_for(lambda: len(port.messages("note_off")) == 1)


def test_same_pitch_overlap_is_retriggered(rig):
    port, clock, scheduler, _ = rig
    b = now_beat(clock) + 1.0
    scheduler.schedule("r1", [Note(b, 2.0, 60, 100), Note(b + 1.0, 0.5, 60, 90)])
    assert wait_for(lambda: scheduler.pending() == 0 and not scheduler.sounding()
                    and len(port.messages("note_on")) == 2)
    time.sleep(0.15)  # the first note's original note-off time has passed
    kinds = [(m.type, m.note) for m in port.messages() if m.type in ("note_on", "note_off")]
    assert kinds == [("note_on", 60), ("note_off", 60), ("note_on", 60), ("note_off", 60)]


def test_cancel_releases_only_that_response(rig):
    port, clock, scheduler, _ = rig
    b = now_beat(clock) + 0.5
    scheduler.schedule("a", [Note(b, 50.0, 60, 100), Note(b + 40, 1.0, 61, 100)])
    scheduler.schedule("b", [Note(b, 50.0, 72, 100)])
    assert wait_for(lambda: scheduler.sounding() == [60, 72])
    assert scheduler.cancel("a") == 1
    assert scheduler.sounding() == [72]
    assert scheduler.pending("a") == 0
    assert sounding_after(port.messages()) == {72}


def test_panic_releases_everything_with_cc(rig):
    port, clock, scheduler, _ = rig
    b = now_beat(clock) + 0.5
    scheduler.schedule("a", [Note(b, 50.0, 60, 100), Note(b, 50.0, 64, 100),
                             Note(b + 30, 1.0, 67, 100)])
    assert wait_for(lambda: scheduler.sounding() == [60, 64])
    scheduler.panic()
    messages = port.messages()
    assert sounding_after(messages) == set()
    offs = {m.note for m in messages if m.type == "note_off"}
    assert offs == {60, 64}  # explicit offs, not only CC 123
    ccs = [(m.control, m.value) for m in messages if m.type == "control_change"]
    assert (64, 0) in ccs and (123, 0) in ccs
    assert scheduler.pending() == 0


def test_stop_releases_sounding_notes(rig):
    port, clock, scheduler, _ = rig
    b = now_beat(clock) + 0.5
    scheduler.schedule("a", [Note(b, 100.0, 60, 100)])
    assert wait_for(lambda: scheduler.sounding() == [60])
    scheduler.stop()
    assert sounding_after(port.messages()) == set()
    assert any(m.type == "note_off" and m.note == 60 for m in port.messages())


def test_port_failure_does_not_kill_the_thread(rig):
    port, clock, scheduler, _ = rig
    b = now_beat(clock) + 0.5
    port.fail = True
    scheduler.schedule("a", [Note(b, 0.5, 60, 100)])
    time.sleep(0.15)
    port.fail = False
    scheduler.schedule("b", [Note(now_beat(clock) + 0.5, 0.2, 62, 100)])
    assert wait_for(lambda: any(m.type == "note_off" and m.note == 62 for m in port.messages()))
    assert sounding_after(port.messages()) == set()


def test_an_unexpected_error_releases_everything_with_sustain_off(rig):
    port, clock, scheduler, _ = rig
    b = now_beat(clock) + 0.5
    scheduler.schedule("a", [Note(b, 100.0, 60, 100)])
    assert wait_for(lambda: scheduler.sounding() == [60])
    real_step = scheduler._step

    def broken_once() -> None:
        scheduler._step = real_step
        raise RuntimeError("a bug in the scheduler")

    scheduler._step = broken_once
    scheduler.schedule("b", [Note(now_beat(clock) + 50.0, 1.0, 62, 100)])  # wakes the thread
    assert wait_for(lambda: scheduler.sounding() == [])
    messages = port.messages()
    assert sounding_after(messages) == set()
    assert any(m.type == "note_off" and m.note == 60 for m in messages)
    ccs = [(m.control, m.value) for m in messages if m.type == "control_change"]
    assert (64, 0) in ccs and (123, 0) in ccs
    assert scheduler.pending() == 0  # the queue went too: nothing plays after the error


def test_stopped_clock_holds_notes_until_it_runs(rig):
    port, clock, scheduler, _ = rig
    clock.set(None)
    scheduler.schedule("a", [Note(0.0, 0.2, 60, 100)])
    time.sleep(0.05)
    assert port.messages("note_on") == []
    clock.set(Mapping(time.monotonic() + 0.05, 0.0, 0.1))
    assert wait_for(lambda: len(port.messages("note_off")) == 1)


class TimedFakeOutput(FakeOutput):
    """A port that places messages at their time, like melodyd's JACK client."""

    def __init__(self) -> None:
        super().__init__(send_ahead_s=0.05)
        self.timed: list[tuple[float, float, mido.Message]] = []  # (handed over, when, msg)

    def _send_at(self, message: mido.Message, when: float) -> None:
        self.timed.append((time.monotonic(), when, message))
        self._send(message)


def test_timed_port_gets_notes_ahead_with_their_deadlines():
    port = TimedFakeOutput()
    clock = ManualClock(bpm=600.0)
    scheduler = Scheduler(port, clock, late_drop_s=1.0, lead_s=0.01)
    assert scheduler._send_ahead_s == port.send_ahead_s
    scheduler.start()
    try:
        b = now_beat(clock) + 2.0
        scheduler.schedule("r1", [Note(b, 0.5, 60, 100), Note(b + 1, 0.5, 62, 100)])
        assert wait_for(lambda: len(port.timed) == 4)
    finally:
        scheduler.stop()
    ons = [(h, w) for h, w, m in port.timed if m.type == "note_on"]
    offs = [(h, w) for h, w, m in port.timed if m.type == "note_off"]
    # Every note-on and note-off carries its beat's wall time less the output lead...
    expected_on = [clock.time_at(b) - 0.01, clock.time_at(b + 1) - 0.01]
    expected_off = [clock.time_at(b + 0.5) - 0.01, clock.time_at(b + 1.5) - 0.01]
    assert [w for _, w in ons] == pytest.approx(expected_on, abs=1e-9)
    assert [w for _, w in offs] == pytest.approx(expected_off, abs=1e-9)
    # ...and is handed over before that time (about send_ahead_s early), not after it.
    assert all(h < w for h, w in ons + offs)
    # Cleanup messages (CC 123, CC 64) go out at once, untimed.
    assert sorted(m.control for m in port.messages("control_change")) == [64, 123]
