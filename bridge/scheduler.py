"""The scheduler thread: note-on and note-off at absolute deadlines, never a stuck note.

Notes arrive in beats; each deadline is computed from the clock's current mapping just
before it is waited for, so a tempo change moves every queued note. The thread sleeps on a
condition variable until the next deadline (or until new notes, a cancel or a clock change
wake it), so an idle daemon costs nothing. A note-on later than ``late_drop_s`` is dropped
and counted rather than played out of time; note-offs are always sent.

Every sounding note is tracked, so ``cancel``, ``panic`` and ``stop`` release exactly what
sounds, then send all-notes-off (CC 123) and sustain-off (CC 64 = 0) for good measure.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import mido

from bridge.clock import Clock
from bridge.drivers.base import OutputPort
from models.core.exceptions import BridgeError
from models.core.notes import Note
from models.core.settings import MidiSettings

logger = logging.getLogger(__name__)

EARLY_S = 0.0002  # send when this close: waking for the last fraction of a ms costs more
CC_SUSTAIN = 64
CC_ALL_NOTES_OFF = 123


@dataclass(eq=False)
class _Voice:
    """One scheduled note and where it is in its life."""

    response: str
    note: Note
    state: str = "pending"  # pending -> sounding -> done, or pending -> dropped/cancelled


@dataclass(order=True)
class _Event:
    beat: float
    off_first: int  # 0 for note-off: at the same beat a release goes before a press
    seq: int
    voice: _Voice = field(compare=False)


@dataclass
class SchedulerStats:
    """Counters for the status line and the benchmark.

    Attributes:
        sent: note-ons sent.
        dropped: note-ons dropped for being later than the bound (a panic, a stop or a
            cancel clears queued notes without counting them).
        max_late_ms: the latest note-on sent, in milliseconds after its deadline.
    """

    sent: int = 0
    dropped: int = 0
    max_late_ms: float = 0.0


SentCallback = Callable[[str, Note, float], None]


class Scheduler:
    """Plays notes on ``port`` at the clock's wall time of their beats.

    Args:
        port: the output; each message is handed to its ``send_at`` the port's
            ``send_ahead_s`` before its time (zero for a port that cannot place it).
        clock: the beat timeline.
        channel: MIDI channel 0-15 of every message sent.
        late_drop_s: a note-on this late (seconds) is dropped and counted.
        lead_s: send every message this much before its beat's wall time, to cancel a
            fixed output delay of the MIDI system.
        on_sent: called as ``on_sent(response, note, lateness_s)`` on the scheduler thread
            after each note-on is sent; keep it cheap.
    """

    def __init__(self, port: OutputPort, clock: Clock, *, channel: int = 0,
                 late_drop_s: float = 0.025, on_sent: SentCallback | None = None,
                 lead_s: float = 0.0) -> None:
        self.port = port
        self.clock = clock
        self.channel = channel
        self.late_drop_s = late_drop_s
        self.on_sent = on_sent
        self.lead_s = lead_s
        # A port that places messages at their deadline (melodyd's JACK client) gets each
        # one this early; any other port gets it at its time.
        self._send_ahead_s = port.send_ahead_s
        self.stats = SchedulerStats()
        self._cond = threading.Condition()
        self._heap: list[_Event] = []
        self._seq = itertools.count()
        self._sounding: dict[int, _Voice] = {}  # pitch -> the voice sounding on it
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="melodyd-scheduler", daemon=True)
        clock.add_listener(self.wake)

    @classmethod
    def for_settings(cls, port: OutputPort, clock: Clock, midi: MidiSettings) -> Scheduler:
        """A scheduler with the ``[midi]`` settings: channel, late-drop bound, output lead."""
        return cls(port, clock, channel=midi.output_channel - 1,
                   late_drop_s=midi.late_drop_ms / 1000.0,
                   lead_s=midi.output_latency_ms / 1000.0)

    # ----------------------------------------------------------------- public, any thread
    def start(self) -> None:
        """Start the scheduler thread."""
        self._thread.start()

    def wake(self) -> None:
        """Recompute the next deadline now (the clock changed).

        With nothing queued there is no deadline to move, so the thread sleeps on: under a
        DAW's MIDI clock this runs 48 times a second at 120 BPM, and an idle melodyd must
        not wake a second thread for each tick.
        """
        with self._cond:
            if self._heap:
                self._cond.notify()

    def schedule(self, response: str, notes: Iterable[Note]) -> None:
        """Queue ``notes`` (beats on the clock's timeline) under the id ``response``."""
        with self._cond:
            for note in notes:
                voice = _Voice(response, note)
                heapq.heappush(self._heap, _Event(note.onset, 1, next(self._seq), voice))
                heapq.heappush(self._heap, _Event(note.end, 0, next(self._seq), voice))
            self._cond.notify()

    def pending(self, response: str | None = None) -> int:
        """Note-ons not yet sent (of one response, or all)."""
        with self._cond:
            return sum(1 for e in self._heap if e.off_first and e.voice.state == "pending"
                       and (response is None or e.voice.response == response))

    def sounding(self) -> list[int]:
        """Pitches sounding now."""
        with self._cond:
            return sorted(self._sounding)

    def cancel(self, response: str) -> int:
        """Drop the unsent notes of ``response`` and release its sounding ones.

        Returns:
            How many sounding notes were released.
        """
        with self._cond:
            self._heap = [e for e in self._heap if e.voice.response != response]
            heapq.heapify(self._heap)
            released = [p for p, v in self._sounding.items() if v.response == response]
            for pitch in released:
                self._release(pitch)
            self._cond.notify()
        return len(released)

    def panic(self, reason: str = "panic") -> None:
        """Drop every queued note, release every sounding one, all-notes-off, sustain-off."""
        with self._cond:
            count = self._release_everything()
            self._cond.notify()
        logger.debug("%s: released %d sounding notes", reason, count)

    def _release_everything(self) -> int:
        """Drop the queue, note-off every sounding note, then sustain-off and all-notes-off
        (lock held). Returns how many notes were sounding."""
        self._heap.clear()
        count = len(self._sounding)
        for pitch in list(self._sounding):
            self._release(pitch)
        self._send_safely(mido.Message("control_change", channel=self.channel,
                                       control=CC_SUSTAIN, value=0))
        self._send_safely(mido.Message("control_change", channel=self.channel,
                                       control=CC_ALL_NOTES_OFF, value=0))
        return count

    def stop(self) -> None:
        """Release everything and end the thread (idempotent)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self.panic("stop")

    # ----------------------------------------------------------------- the thread
    def _run(self) -> None:
        with self._cond:
            while not self._stopping:
                try:
                    self._step()
                except BridgeError as err:  # the MIDI system said why: one line is enough
                    logger.warning("cannot play (%s); releasing all notes", err)
                    self._release_everything()
                except Exception:  # a send failure must not leave notes hanging
                    logger.exception("scheduler error; releasing all notes")
                    self._release_everything()

    def _step(self) -> None:
        """Wait for the next deadline (lock held) and send what is due."""
        if not self._heap:
            self._cond.wait()
            return
        event = self._heap[0]
        deadline = self.clock.time_at(event.beat)
        if deadline is None:
            # The transport stopped: nothing can be timed. The daemon panics on Stop; this
            # only covers the gap, so wait for the clock to come back.
            self._cond.wait()
            return
        due = deadline - self.lead_s  # when the message should leave the port
        wait = due - self._send_ahead_s - time.monotonic()
        if wait > EARLY_S:
            self._cond.wait(wait)
            return
        heapq.heappop(self._heap)
        voice = event.voice
        if event.off_first == 0:
            if voice.state == "sounding" and self._sounding.get(voice.note.pitch) is voice:
                self._release(voice.note.pitch, due)
            voice.state = "done" if voice.state == "sounding" else voice.state
            return
        if voice.state != "pending":
            return
        late = time.monotonic() - due
        if late > self.late_drop_s:
            voice.state = "dropped"
            self.stats.dropped += 1
            logger.debug("dropped pitch %d, %.1f ms late", voice.note.pitch, late * 1e3)
            return
        pitch = voice.note.pitch
        if pitch in self._sounding:  # same pitch again: end the old one first
            self._release(pitch)
        self._send(mido.Message("note_on", channel=self.channel, note=pitch,
                                velocity=voice.note.velocity), due)
        voice.state = "sounding"
        self._sounding[pitch] = voice
        self.stats.sent += 1
        self.stats.max_late_ms = max(self.stats.max_late_ms, late * 1e3)
        if self.on_sent is not None:
            self.on_sent(voice.response, voice.note, late)

    # ----------------------------------------------------------------- helpers (lock held)
    def _release(self, pitch: int, when: float | None = None) -> None:
        voice = self._sounding.pop(pitch)
        voice.state = "done"
        self._send_safely(mido.Message("note_off", channel=self.channel, note=pitch,
                                       velocity=0), when)

    def _send(self, message: mido.Message, when: float | None = None) -> None:
        """Send now, or at ``when`` (a port that cannot place messages sends it now)."""
        if when is None:
            self.port.send(message)
        else:
            self.port.send_at(message, when)

    def _send_safely(self, message: mido.Message, when: float | None = None) -> None:
        """Send on the way out; a failing port is logged, never raised from cleanup."""
        try:
            self._send(message, when)
        except Exception as err:  # any backend failure: cleanup must go on to the next note
            logger.warning("could not send %s: %s", message.type, err)
