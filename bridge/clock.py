"""The beat timeline: wall time (``time.monotonic``) <-> quarter-note beats.

Two clocks share one small interface. ``InternalClock`` keeps its own tempo (``--bpm``);
``MidiClock`` follows a DAW's MIDI beat clock (24 ticks per quarter note, Start / Stop /
Continue, Song Position Pointer), fitting tempo and phase over the last ticks so that tick
jitter is averaged out while a tempo change is followed within a beat.

Both publish their mapping as one immutable ``Mapping`` swapped in a single assignment, so
the scheduler thread reads it without a lock while the listening thread updates it.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from models.core.meter import bar_length

logger = logging.getLogger(__name__)

TICKS_PER_BEAT = 24  # MIDI beat clock: 24 pulses per quarter note
TICKS_PER_SPP_UNIT = 6  # Song Position Pointer counts sixteenth notes


@dataclass(frozen=True)
class Mapping:
    """A straight line between wall time and beats: ``beat = beat0 + (t - t0) / spb``.

    Attributes:
        t0: a wall time (seconds, ``time.monotonic``) on the line.
        beat0: the beat at ``t0``.
        spb: seconds per beat (60 / BPM).
    """

    t0: float
    beat0: float
    spb: float

    def beat_at(self, t: float) -> float:
        """Beat at wall time ``t``."""
        return self.beat0 + (t - self.t0) / self.spb

    def time_at(self, beat: float) -> float:
        """Wall time of ``beat``."""
        return self.t0 + (beat - self.beat0) * self.spb


class Clock:
    """Base of both clocks: a published ``Mapping`` (or ``None`` while stopped).

    Attributes:
        time_signature: bars are ``bar_length`` beats long, counted from beat 0.
        bar_length: beats per bar.
    """

    def __init__(self, time_signature: tuple[int, int]) -> None:
        self.time_signature = time_signature
        self.bar_length = bar_length(time_signature)
        # Replaced whole (never mutated) so readers on other threads see a consistent line.
        self._mapping: Mapping | None = None
        self._listeners: list[Callable[[], None]] = []

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (on the updating thread) whenever the mapping changes."""
        self._listeners.append(callback)

    def _publish(self, mapping: Mapping | None, notify: bool = True) -> None:
        self._mapping = mapping
        if notify:
            for callback in self._listeners:
                callback()

    @property
    def mapping(self) -> Mapping | None:
        """The current line, or ``None`` while the clock is stopped or not yet started."""
        return self._mapping

    @property
    def running(self) -> bool:
        """Whether beats advance with wall time."""
        return self._mapping is not None

    @property
    def bpm(self) -> float | None:
        """Current tempo, or ``None`` while stopped."""
        mapping = self._mapping
        return None if mapping is None else 60.0 / mapping.spb

    def beat_at(self, t: float) -> float | None:
        """Beat at wall time ``t``, or ``None`` while stopped."""
        mapping = self._mapping
        return None if mapping is None else mapping.beat_at(t)

    def time_at(self, beat: float) -> float | None:
        """Wall time of ``beat``, or ``None`` while stopped."""
        mapping = self._mapping
        return None if mapping is None else mapping.time_at(beat)

    def input_beat(self, t: float) -> float | None:
        """Beat a player's event at wall time ``t`` belongs to, or ``None`` if it has none.

        The same as ``beat_at`` here; ``MidiClock`` also places notes played between Start
        and the first tick, and never before the point the transport started from.
        """
        return self.beat_at(t)

    def bar_of(self, beat: float) -> int:
        """Index of the bar holding ``beat``."""
        return math.floor(beat / self.bar_length + 1e-9)


class InternalClock(Clock):
    """A steady tempo that starts at beat 0 on ``start(t)``."""

    def __init__(self, bpm: float, time_signature: tuple[int, int] = (4, 4)) -> None:
        super().__init__(time_signature)
        self._bpm = bpm

    def start(self, t: float) -> None:
        """Put beat 0 at wall time ``t``."""
        self._publish(Mapping(t, 0.0, 60.0 / self._bpm))

    def set_bpm(self, bpm: float, t: float) -> None:
        """Change tempo at wall time ``t`` without a jump in beat position."""
        self._bpm = bpm
        mapping = self._mapping
        if mapping is not None:
            self._publish(Mapping(t, mapping.beat_at(t), 60.0 / bpm))


class MidiClock(Clock):
    """Follows MIDI beat clock messages, fed with their arrival times by one thread.

    The position is counted in ticks from the song start; Start resets it to 0, Song
    Position Pointer sets it, Continue resumes from it, and Stop freezes it. The first
    tick after Start or Continue sounds the current position (MIDI 1.0 spec).
    Tempo and phase come from a least-squares line through the last ``window`` ticks, so
    one late tick barely moves the grid and a new tempo is fully followed after one beat.
    """

    def __init__(self, time_signature: tuple[int, int] = (4, 4), window: int = TICKS_PER_BEAT,
                 initial_bpm: float = 120.0) -> None:
        super().__init__(time_signature)
        self._window = max(2, window)
        # (arrival time, tick position) of recent ticks while running.
        self._ticks: deque[tuple[float, int]] = deque(maxlen=self._window)
        self._position = 0  # tick index the next clock message sounds
        self._playing = False
        # Beat the transport last started or continued from: a player's note is never
        # placed before it (it belongs to the timeline that starts there).
        self._origin = 0.0
        self._spb = 60.0 / initial_bpm  # kept across stops: the last tempo seen
        self._lock = threading.Lock()  # one writer normally; tests may feed from two

    @property
    def position_beats(self) -> float:
        """Song position in beats (the beat the next tick sounds)."""
        return self._position / TICKS_PER_BEAT

    def start(self) -> None:
        """MIDI Start: play from the song's beginning at the next tick."""
        with self._lock:
            self._position = 0
            self._resume()

    def resume(self) -> None:
        """MIDI Continue: play from the current song position at the next tick."""
        with self._lock:
            self._resume()

    def _resume(self) -> None:
        self._playing = True
        self._ticks.clear()
        self._origin = self._position / TICKS_PER_BEAT
        # The old line no longer holds: until the first tick there is no tempo line,
        # only the position that tick will sound (see input_beat).
        self._publish(None, notify=False)

    def input_beat(self, t: float) -> float | None:
        """Beat of a player's event at wall time ``t``.

        Between Start (or Continue) and the first tick the event belongs to the beat that
        tick sounds: a player who starts on "one" as the DAW starts plays slightly before
        the tick that carries it, or in the same JACK frame. After the first tick, an
        event timed a hair before the origin (stamping jitter) is clamped to it.
        Stopped: ``None``.
        """
        with self._lock:
            if not self._playing:
                return None
            origin = self._origin
            mapping = self._mapping if self._ticks else None
        # No line yet (before the first tick, or while that tick is being published).
        return origin if mapping is None else max(mapping.beat_at(t), origin)

    def stop(self) -> None:
        """MIDI Stop: freeze the position; the timeline has no wall time until it plays."""
        with self._lock:
            self._playing = False
            self._ticks.clear()
        self._publish(None)

    def song_position(self, sixteenths: int) -> None:
        """Song Position Pointer: move to ``sixteenths`` (ignored while playing)."""
        with self._lock:
            if self._playing:  # the MIDI spec: a moving transport ignores SPP
                return
            self._position = sixteenths * TICKS_PER_SPP_UNIT
            self._ticks.clear()

    def tick(self, t: float) -> None:
        """A Timing Clock message arrived at wall time ``t``."""
        with self._lock:
            if not self._playing:
                return
            self._ticks.append((t, self._position))
            self._position += 1
            mapping = self._fit()
        self._publish(mapping)

    def _fit(self) -> Mapping:
        ticks = self._ticks
        last_t, last_k = ticks[-1]
        if len(ticks) >= 3:
            n = len(ticks)
            mean_t = sum(t for t, _ in ticks) / n
            mean_k = sum(k for _, k in ticks) / n
            cov = sum((k - mean_k) * (t - mean_t) for t, k in ticks)
            var = sum((k - mean_k) ** 2 for _, k in ticks)
            spt = cov / var
            if spt > 0:
                self._spb = spt * TICKS_PER_BEAT
                # Phase from the fitted line at the last tick, not the raw tick time, so
                # one jittered tick does not shift every deadline.
                last_t = mean_t + (last_k - mean_k) * spt
        elif len(ticks) == 2:
            spt = ticks[1][0] - ticks[0][0]
            if spt > 0:
                self._spb = spt * TICKS_PER_BEAT
        return Mapping(last_t, last_k / TICKS_PER_BEAT, self._spb)
