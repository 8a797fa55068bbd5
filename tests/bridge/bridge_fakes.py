"""Test doubles for the bridge: a recording output port and a hand-driven clock."""

from __future__ import annotations

import threading
import time

import mido

from bridge.clock import Clock, Mapping
from bridge.drivers.base import OutputPort

# Sampling for the end-to-end tests: a random tiny model, at most 4 notes at once (its
# raw output piles up 20-note clusters; tighter limits make it end its piece sooner).
E2E_CONFIG = """
[sampling]
temperature = 1.0
max_polyphony = 4
[interaction]
status_interval_s = 0.5
response_bars = 2
"""


class FakeOutput(OutputPort):
    """An output port that records ``(time.monotonic(), message)`` instead of sending."""

    def __init__(self, send_ahead_s: float = 0.0) -> None:
        super().__init__("fake out", send_ahead_s)
        self.sent: list[tuple[float, mido.Message]] = []
        self.lock = threading.Lock()
        self.fail = False

    def _close(self) -> None:
        pass

    def _send(self, message: mido.Message) -> None:
        if self.fail:
            raise OSError("port went away")
        with self.lock:
            self.sent.append((time.monotonic(), message))

    def messages(self, kind: str | None = None) -> list[mido.Message]:
        """Sent messages, optionally of one type."""
        with self.lock:
            return [m for _, m in self.sent if kind is None or m.type == kind]


class ManualClock(Clock):
    """A clock whose mapping the test sets directly."""

    def __init__(self, bpm: float = 120.0, origin: float | None = None,
                 time_signature: tuple[int, int] = (4, 4)) -> None:
        super().__init__(time_signature)
        self._publish(Mapping(time.monotonic() if origin is None else origin, 0.0, 60.0 / bpm))

    def set(self, mapping: Mapping | None) -> None:
        """Replace the mapping and notify listeners (like a tempo change)."""
        self._publish(mapping)


def sounding_after(messages: list[mido.Message]) -> set[int]:
    """Pitches left sounding by a message sequence (CC 123 silences everything)."""
    sounding: set[int] = set()
    for m in messages:
        if m.type == "note_on" and m.velocity > 0:
            sounding.add(m.note)
        elif m.type == "note_off" or (m.type == "note_on" and m.velocity == 0):
            sounding.discard(m.note)
        elif m.type == "control_change" and m.control == 123:
            sounding.clear()
    return sounding


class Inbox:
    """A callback that keeps ``(arrival time, message)``."""

    def __init__(self) -> None:
        self.items: list[tuple[float, mido.Message]] = []

    def __call__(self, message: mido.Message, t: float) -> None:
        self.items.append((t, message))

    def wait(self, count: int, timeout: float = 5.0) -> list[tuple[float, mido.Message]]:
        end = time.monotonic() + timeout
        while len(self.items) < count and time.monotonic() < end:
            time.sleep(0.01)
        return list(self.items)
