"""The seed window: the player's recent notes on the beat timeline.

Note-on and note-off events (already converted to beats) become ``Note``s with onset,
duration, pitch and velocity. Notes still held count too, with their duration so far,
because a held chord is part of the phrase the engine should continue. In accompany mode
the daemon's own notes join the window so the engine is conditioned on both parts.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from models.core.notes import Note

MIN_DURATION = 1.0 / 48.0  # the engine requires duration > 0; a tap is still a note
RECENT_VELOCITIES = 8  # note-ons averaged for "the player's recent dynamics"
EPS = 1e-9


@dataclass
class _Held:
    onset: float
    velocity: int


class SeedWindow:
    """The last ``bars`` bars of notes, held ones included.

    Attributes:
        bars: how many bars of history the seed holds.
        bar_length: beats per bar.
        last_activity: beat of the player's latest note-on or note-off (``None`` before
            the first note), which is where a phrase's silence is counted from.
    """

    def __init__(self, bars: int, bar_length: float) -> None:
        self.bars = bars
        self.bar_length = bar_length
        self.last_activity: float | None = None
        self._held: dict[int, _Held] = {}  # pitch -> the note sounding on it
        self._done: deque[Note] = deque()  # finished player notes, by onset
        self._own: deque[Note] = deque()  # the daemon's notes (accompany mode)
        self._velocities: deque[int] = deque(maxlen=RECENT_VELOCITIES)

    @property
    def held_count(self) -> int:
        """How many of the player's notes are sounding."""
        return len(self._held)

    def note_on(self, beat: float, pitch: int, velocity: int) -> None:
        """The player pressed ``pitch``; a re-press first ends the previous one."""
        if pitch in self._held:
            self.note_off(beat, pitch)
        self._held[pitch] = _Held(beat, velocity)
        self._velocities.append(velocity)
        self.last_activity = beat

    def note_off(self, beat: float, pitch: int) -> None:
        """The player released ``pitch`` (an unmatched release is ignored)."""
        held = self._held.pop(pitch, None)
        if held is None:
            return
        self._done.append(Note(held.onset, max(beat - held.onset, MIN_DURATION), pitch,
                               held.velocity))
        self.last_activity = beat

    def add_own(self, notes: list[Note]) -> None:
        """Remember notes the daemon plays, for accompany mode's seed."""
        self._own.extend(notes)

    def clear_own(self) -> None:
        """Forget the daemon's notes (e.g. after a mode change)."""
        self._own.clear()

    def recent_velocity(self) -> float | None:
        """Mean velocity of the player's last few note-ons, or ``None`` before any."""
        if not self._velocities:
            return None
        return sum(self._velocities) / len(self._velocities)

    def anchored_start(self, now: float) -> float:
        """The start of a window that moves in steps of ``bars`` whole bars.

        It holds between ``bars`` and ``2 * bars - 1`` whole bars before the bar of
        ``now``, and stays put while it can: requests made bar after bar (accompany mode)
        then begin with the same notes, so the engine reuses its cache of them and runs
        only what changed since the previous request (the bars the player added), where a
        window sliding by a bar every bar would change the first token of every prompt.
        """
        bar = math.floor(now / self.bar_length + EPS)
        return (bar - self.bars) // self.bars * self.bars * self.bar_length

    def notes(self, now: float, own_until: float | None = None,
              start: float | None = None) -> list[Note]:
        """The seed at beat ``now``: notes that started within the window, by onset.

        Args:
            now: the current beat; held notes last until it.
            own_until: add the daemon's own notes that start before this beat (accompany
                mode asks for the bar after the one already queued, so its context runs
                past ``now``); ``None`` leaves them out.
            start: where the window starts (at or after :meth:`anchored_start`);
                ``None``: ``bars`` bars before ``now``.
        """
        start = self._start(now, start)
        seed = [n for n in self._done if n.onset >= start]
        seed += [Note(h.onset, max(now - h.onset, MIN_DURATION), p, h.velocity)
                 for p, h in self._held.items() if h.onset >= start]
        if own_until is not None:
            seed += [n for n in self._own if start <= n.onset < own_until]
        seed.sort(key=lambda n: (n.onset, n.pitch))
        return seed

    def own_notes(self, now: float, until: float, start: float | None = None) -> list[Note]:
        """The daemon's own notes of the window that start before ``until`` (accompany
        mode's part, apart from the player's); ``start`` as for :meth:`notes`."""
        start = self._start(now, start)
        return sorted((n for n in self._own if start <= n.onset < until),
                      key=lambda n: (n.onset, n.pitch))

    def _start(self, now: float, start: float | None) -> float:
        # Keep what the longest window asked for may still hold: the anchored one.
        self._prune(self.anchored_start(now))
        return now - self.bars * self.bar_length if start is None else start

    def player_active_since(self, beat: float) -> bool:
        """Whether the player touched a key at or after ``beat`` or holds one now."""
        return bool(self._held) or (self.last_activity is not None
                                    and self.last_activity >= beat)

    def _prune(self, start: float) -> None:
        # Onset order holds for appended finished notes only approximately (a long note
        # ends after later short ones), so prune conservatively by end time.
        while self._done and self._done[0].end < start:
            self._done.popleft()
        while self._own and self._own[0].end < start:
            self._own.popleft()
