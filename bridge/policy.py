"""When to answer: call-and-response and accompany, as pure logic on the beat timeline.

The daemon feeds the policy the player's activity (through the ``SeedWindow``) and the
current beat; the policy says when a response is due, where it starts and how long it
is, and whether the player just barged in. No clocks, ports or sockets here, so the
rules are unit-tested with plain numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bridge.seed import SeedWindow
from models.core.settings import InteractionSettings

EPS = 1e-6  # beats; keeps a phrase ending exactly on a bar line from skipping that bar
# A call's first note this close before a bar line counts as that bar's downbeat when
# trading bars: players (and MIDI timing) land a little early.
DOWNBEAT_SLACK_BEATS = 0.25


@dataclass(frozen=True)
class Trigger:
    """A response to request.

    Attributes:
        start_beat: where its first note may sound (a bar or beat line).
        bars: its length; it ends at the start of bar ``bar_of(start_beat) + bars``.
        own_until: include the daemon's own notes before this beat in the seed
            (accompany mode), or ``None`` for the player's notes only.
    """

    start_beat: float
    bars: int
    own_until: float | None = None


def next_line(beat: float, step: float) -> float:
    """The first multiple of ``step`` at or after ``beat``."""
    return math.ceil(beat / step - EPS) * step


class CallResponsePolicy:
    """Answer after ``silence_beats`` of silence, for ``bars`` bars, on the next bar or beat;
    or, trading bars, answer an ``trade_bars``-bar call on the very next bar line.

    Trading (``trade_bars`` > 0): the call's bars are counted from the bar of its first
    note; the request goes out ``trade_lead_beats`` (or the engine's lead, if longer)
    before the bar line that ends them, with the seed so far, and the answer plays
    ``trade_bars`` bars from that line. A call that stops sooner is answered after its
    silence as usual. Notes of the call's last moments (after the request, before the
    line) do not stop the answer; a note played into it does (barge-in).

    Asking ahead (``request_ahead_beats`` > 0): the engine needs time, and more time buys
    more candidates. When the silence would end less than ``request_ahead_beats`` before
    the line the answer starts on, the request goes out that far ahead of the line anyway
    (never before half the silence has passed), for the same start and the same seed: the
    silence only confirms that no note came. If one does come before the silence is
    complete, the phrase was not over: :meth:`on_player_note` says to stop the answer,
    which has not sounded yet, and the phrase is answered after its real end.

    Attributes:
        silence_beats: beats with nothing held and nothing pressed that end a phrase.
        bars: response length in bars (a live control may change it).
        start_on: ``"bar"`` or ``"beat"``: the grid the answer's start snaps to.
        bar_length: beats per bar.
        barge_in: whether playing during an answer stops it.
        trade_bars: the call's length when trading bars (0 = wait for silence).
        trade_lead_beats: how early the trading request goes out.
        request_ahead_beats: how far before its line an answer is asked for, at least,
            before its silence is complete (0 = only once it is).
    """

    def __init__(self, silence_beats: float, bars: int, start_on: str, bar_length: float,
                 barge_in: bool = True, *, trade_bars: int = 0,
                 trade_lead_beats: float = 0.5, request_ahead_beats: float = 0.0) -> None:
        self.silence_beats = silence_beats
        self.bars = bars
        self.start_on = start_on
        self.bar_length = bar_length
        self.barge_in = barge_in
        self.trade_bars = trade_bars
        self.trade_lead_beats = trade_lead_beats
        self.request_ahead_beats = request_ahead_beats
        self._armed = False  # the player played since the last answer was triggered
        self._answer_start: float | None = None  # beat where the running answer starts
        self._answer_end: float | None = None  # beat where the running answer ends
        self._call_bar: int | None = None  # trading: the bar of the call's first note
        # Asked ahead: the beat the phrase's silence completes (a note before it cancels
        # the answer) and the trading call's bar then, to go on counting from.
        self._asked_ahead: tuple[float, int | None] | None = None
        self._lead_beats = 0.0  # the engine's lead at the last ``due``, for ``next_check``

    @classmethod
    def from_settings(cls, interaction: InteractionSettings,
                      bar_length: float) -> CallResponsePolicy:
        """The policy ``[interaction]`` describes (the daemon's and the jam harness's)."""
        return cls(interaction.silence_beats, interaction.response_bars,
                   interaction.start_on, bar_length, interaction.barge_in,
                   trade_bars=interaction.trade_bars,
                   trade_lead_beats=interaction.trade_lead_beats,
                   request_ahead_beats=interaction.request_ahead_beats)

    @property
    def answering(self) -> bool:
        """Whether an answer is running (requested and not yet over)."""
        return self._answer_end is not None

    def on_player_note(self, beat: float | None = None) -> bool:
        """The player pressed a key (at ``beat``, if known). Returns whether the running
        answer must stop: a note before the answer's start (the call's tail, when trading)
        does not stop it, unless the answer was asked ahead and the note comes before the
        silence that ended the phrase was complete (the phrase goes on: ask again later)."""
        if (self._asked_ahead is not None and self._answer_end is not None
                and beat is not None and beat < self._asked_ahead[0] - EPS):
            call_bar = self._asked_ahead[1]
            self.cancel()
            self._armed = True
            self._call_bar = call_bar
            return True
        if (self._answer_end is not None and beat is not None
                and self._answer_start is not None and beat < self._answer_start - EPS):
            return False  # the end of the call, already answered
        self._armed = True
        if self._answer_end is None and self._call_bar is None and beat is not None:
            self._call_bar = math.floor((beat + DOWNBEAT_SLACK_BEATS) / self.bar_length)
        if self._answer_end is not None and self.barge_in:
            self._answer_end = None
            return True
        return False

    def due(self, now: float, window: SeedWindow, lead_beats: float) -> Trigger | None:
        """The response to request at beat ``now``, if the phrase just ended.

        Args:
            now: the current beat.
            window: the player's notes and last activity.
            lead_beats: the least time between now and the answer's first note.
        """
        if self._answer_end is not None and now >= self._answer_end - EPS:
            self._answer_end = None  # the answer has played out
        if self._answer_end is None and self.trade_bars and self._call_bar is not None:
            line = (self._call_bar + self.trade_bars) * self.bar_length
            if now >= line - max(lead_beats, self.trade_lead_beats) - EPS:
                start = line if now + lead_beats <= line + EPS else next_line(
                    now + lead_beats, self.bar_length)
                return self._trigger(start, self.trade_bars)
        if not self._armed or self._answer_end is not None or window.held_count:
            return None
        if window.last_activity is None:
            return None
        self._lead_beats = lead_beats
        silence_end = window.last_activity + self.silence_beats
        if now < self._ask_at(silence_end) - EPS:
            return None
        call_bar = self._call_bar
        trigger = self._trigger(next_line(max(now, silence_end) + lead_beats, self._step),
                                self.bars)
        if now < silence_end - EPS:
            self._asked_ahead = (silence_end, call_bar)
        return trigger

    @property
    def _step(self) -> float:
        """The grid an answer's start snaps to, in beats."""
        return self.bar_length if self.start_on == "bar" else 1.0

    def _ask_at(self, silence_end: float) -> float:
        """The beat to ask for the answer to a phrase whose silence completes at
        ``silence_end``: then, or ``request_ahead_beats`` before the line the answer will
        start on if that is sooner, but not before half the silence."""
        if self.request_ahead_beats <= 0:
            return silence_end
        line = next_line(silence_end + self._lead_beats, self._step)
        ahead = line - self.request_ahead_beats
        return max(silence_end - self.silence_beats / 2, min(silence_end, ahead))

    def _trigger(self, start: float, bars: int) -> Trigger:
        bar = math.floor(start / self.bar_length + EPS)
        self._answer_start = start
        self._answer_end = (bar + bars) * self.bar_length
        self._armed = False
        self._call_bar = None
        self._asked_ahead = None
        return Trigger(start, bars)

    def next_check(self, window: SeedWindow, now: float) -> float | None:
        """The beat at which ``due`` may next fire (``None``: only after new input)."""
        del now  # the silence is counted from the window's last activity
        if self._answer_end is not None:
            return self._answer_end
        trade = None
        if self.trade_bars and self._call_bar is not None:
            trade = (self._call_bar + self.trade_bars) * self.bar_length - self.trade_lead_beats
        if not self._armed or window.held_count or window.last_activity is None:
            return trade
        silence = self._ask_at(window.last_activity + self.silence_beats)
        return silence if trade is None else min(silence, trade)

    def cancel(self) -> None:
        """Forget the running answer (engine lost, panic, mode change)."""
        self._answer_end = None
        self._answer_start = None
        self._call_bar = None
        self._asked_ahead = None


class AccompanyPolicy:
    """Keep one bar queued ahead, conditioned on the player and the daemon's own notes.

    Each bar line requests the bar after the coming one, so the engine always has a bar
    of time, as long as that bar starts within ``listen_bars`` bars of the bar line that
    follows the player's last note: the accompaniment stops that many bars after the
    player, whatever melodyd itself played meanwhile (its own notes never count).

    Attributes:
        bar_length: beats per bar.
        listen_bars: bars of accompaniment after the player's last bar.
    """

    def __init__(self, bar_length: float, listen_bars: int) -> None:
        self.bar_length = bar_length
        self.listen_bars = listen_bars
        self._requested_bar = -1  # the last bar already requested

    def on_player_note(self, beat: float | None = None) -> bool:
        """Accompaniment never stops for the player; returns ``False``."""
        del beat
        return False

    def _accompanies(self, window: SeedWindow, start: float) -> bool:
        """Whether a bar starting at ``start`` is within ``listen_bars`` of the player."""
        if window.held_count:
            return True
        if window.last_activity is None:
            return False
        last_line = math.ceil(window.last_activity / self.bar_length - EPS) * self.bar_length
        return start < last_line + self.listen_bars * self.bar_length - EPS

    def due(self, now: float, window: SeedWindow, lead_beats: float) -> Trigger | None:
        """The next bar to request at beat ``now``, if one is due."""
        target = math.floor((now + lead_beats) / self.bar_length + EPS) + 1
        if target <= self._requested_bar:
            return None
        start = target * self.bar_length
        if not self._accompanies(window, start):
            return None
        self._requested_bar = target
        return Trigger(start, 1, own_until=start)

    def next_check(self, window: SeedWindow, now: float) -> float | None:
        """The next bar line, while the player is active (``None`` otherwise)."""
        line = (math.floor(now / self.bar_length + EPS) + 1) * self.bar_length
        return line if self._accompanies(window, line) else None

    def cancel(self) -> None:
        """Forget what was requested, so the next bar line requests again."""
        self._requested_bar = -1
