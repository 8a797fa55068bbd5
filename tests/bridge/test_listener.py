"""The input callback: every message stamped and queued in order; clock ticks batched."""

from __future__ import annotations

import select
import time

import mido

from bridge.listener import CLOCK_WAKE_EVERY, InputQueue


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_clock_ticks_wake_once_a_sixteenth_other_messages_at_once() -> None:
    inputs = InputQueue()
    try:
        for _ in range(CLOCK_WAKE_EVERY - 1):
            inputs.callback(mido.Message("clock"), time.monotonic())
        assert not readable(inputs.wake_fd)  # ticks wait for the next batch...
        inputs.callback(mido.Message("clock"), time.monotonic())
        assert readable(inputs.wake_fd)  # ...which a sixteenth note's worth completes
        drained = inputs.drain()
        assert [m.type for _, m in drained] == ["clock"] * CLOCK_WAKE_EVERY
        stamps = [t for t, _ in drained]
        assert stamps == sorted(stamps)  # each tick keeps its own arrival time
        assert not readable(inputs.wake_fd)
        inputs.callback(mido.Message("clock"), time.monotonic())
        inputs.callback(mido.Message("note_on", note=60, velocity=90), time.monotonic())
        assert readable(inputs.wake_fd)  # a note never waits
        assert [m.type for _, m in inputs.drain()] == ["clock", "note_on"]
        inputs.callback(mido.Message("stop"), time.monotonic())
        assert readable(inputs.wake_fd)  # nor does the transport
    finally:
        inputs.close()
