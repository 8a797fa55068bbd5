"""Seed window and interaction policies, on plain beat numbers."""

from __future__ import annotations

import pytest

from bridge.policy import AccompanyPolicy, CallResponsePolicy, next_line
from bridge.seed import SeedWindow
from models.core.notes import Note


def play(window: SeedWindow, notes: list[tuple[float, float, int]], velocity: int = 80) -> None:
    events = []
    for onset, duration, pitch in notes:
        events.append((onset, 1, pitch))
        events.append((onset + duration, 0, pitch))
    for beat, on, pitch in sorted(events):
        if on:
            window.note_on(beat, pitch, velocity)
        else:
            window.note_off(beat, pitch)


def test_seed_keeps_last_bars_and_held_notes():
    window = SeedWindow(bars=2, bar_length=4.0)
    play(window, [(0.0, 1.0, 60), (5.0, 0.5, 62), (9.0, 1.0, 64)])
    window.note_on(10.5, 67, 100)  # still held
    notes = window.notes(now=11.0)
    # Window = beats 3..11: the note at beat 0 is gone; the held one lasts until now.
    assert notes == [Note(5.0, 0.5, 62, 80), Note(9.0, 1.0, 64, 80), Note(10.5, 0.5, 67, 100)]
    assert window.held_count == 1
    assert window.last_activity == 10.5
    assert window.recent_velocity() == pytest.approx((3 * 80 + 100) / 4)


def test_seed_repress_and_unmatched_release():
    window = SeedWindow(bars=4, bar_length=4.0)
    window.note_off(0.5, 60)  # released before we saw it pressed: ignored
    window.note_on(1.0, 60, 90)
    window.note_on(2.0, 60, 70)  # re-press ends the first
    window.note_off(3.0, 60)
    assert window.notes(4.0) == [Note(1.0, 1.0, 60, 90), Note(2.0, 1.0, 60, 70)]


def test_seed_own_notes_only_when_asked():
    window = SeedWindow(bars=1, bar_length=4.0)
    play(window, [(1.0, 1.0, 60)])
    window.add_own([Note(2.0, 1.0, 72, 64), Note(4.5, 1.0, 74, 64), Note(9.0, 1.0, 76, 64)])
    assert [n.pitch for n in window.notes(4.0)] == [60]
    assert [n.pitch for n in window.notes(4.0, own_until=8.0)] == [60, 72, 74]


@pytest.mark.parametrize(("now", "expected"), [
    (16.0, 0.0), (19.9, 0.0), (20.0, 0.0), (31.9, 0.0), (32.0, 16.0), (47.5, 16.0),
    (48.0, 32.0), (2.0, -16.0),
])
def test_the_anchored_window_starts_on_a_bar_and_moves_in_steps_of_its_bars(now, expected):
    window = SeedWindow(bars=4, bar_length=4.0)
    start = window.anchored_start(now)
    assert start == expected
    # Between `bars` and 2 * bars - 1 whole bars before the bar of `now`.
    whole_bars = (now // 4.0 * 4.0 - start) / 4.0
    assert 4 <= whole_bars <= 7


def test_the_anchored_window_keeps_notes_the_sliding_one_has_dropped():
    window = SeedWindow(bars=2, bar_length=4.0)
    play(window, [(0.5, 1.0, 60), (5.0, 1.0, 62), (13.0, 1.0, 64)])
    window.add_own([Note(1.0, 1.0, 48, 64), Note(14.0, 1.0, 50, 64)])
    # At beat 15 the sliding window (beats 7-15) has only the last note; the anchored one
    # (bars 0-3, steps of 2 bars) still starts at bar 0, even after the sliding call.
    assert [n.pitch for n in window.notes(15.0)] == [64]
    start = window.anchored_start(15.0)
    assert start == 0.0
    assert [n.pitch for n in window.notes(15.0, start=start)] == [60, 62, 64]
    assert [n.pitch for n in window.own_notes(15.0, until=16.0, start=start)] == [48, 50]
    # From bar 4 on it starts at bar 2: the notes before it are gone for good.
    assert window.anchored_start(16.0) == 8.0
    assert [n.pitch for n in window.notes(16.0, start=0.0)] == [64]


@pytest.mark.parametrize(("beat", "step", "expected"), [
    (7.2, 4.0, 8.0), (8.0, 4.0, 8.0), (8.0000001, 4.0, 8.0), (8.01, 4.0, 12.0), (5.5, 1.0, 6.0),
])
def test_next_line(beat, step, expected):
    assert next_line(beat, step) == pytest.approx(expected)


def test_call_answers_after_silence_on_next_bar():
    window = SeedWindow(4, 4.0)
    policy = CallResponsePolicy(silence_beats=1.0, bars=2, start_on="bar", bar_length=4.0)
    assert policy.due(0.5, window, 0.1) is None  # nothing played yet
    play(window, [(0.0, 0.5, 60), (1.0, 0.5, 62), (2.0, 0.9, 64)])
    for _ in range(3):
        policy.on_player_note()
    assert policy.next_check(window, 3.0) == pytest.approx(3.9)
    assert policy.due(3.5, window, 0.1) is None  # only 0.6 beats of silence
    trigger = policy.due(3.95, window, 0.1)
    # 3.95 + 0.1 lead passes the bar line at 4, so the answer starts on the next bar.
    assert trigger is not None and trigger.start_beat == 8.0 and trigger.bars == 2
    assert policy.answering
    assert policy.due(5.0, window, 0.1) is None  # one answer per phrase
    assert policy.due(16.0, window, 0.1) is None  # the answer played out; no new phrase
    assert not policy.answering


def test_call_start_on_beat_and_held_notes_block():
    window = SeedWindow(4, 4.0)
    policy = CallResponsePolicy(1.0, 1, "beat", 4.0)
    window.note_on(0.0, 60, 80)
    policy.on_player_note()
    assert policy.due(3.0, window, 0.0) is None  # a held note is not silence
    window.note_off(3.0, 60)
    trigger = policy.due(4.2, window, 0.05)
    assert trigger is not None and trigger.start_beat == 5.0


def test_call_barge_in():
    window = SeedWindow(4, 4.0)
    policy = CallResponsePolicy(1.0, 2, "bar", 4.0, barge_in=True)
    play(window, [(0.0, 1.0, 60)])
    policy.on_player_note()
    assert policy.due(2.5, window, 0.0) is not None
    assert policy.on_player_note() is True  # the player plays over the answer
    assert not policy.answering
    patient = CallResponsePolicy(1.0, 2, "bar", 4.0, barge_in=False)
    patient.on_player_note()
    assert patient.due(2.5, window, 0.0) is not None
    assert patient.on_player_note() is False and patient.answering


def test_an_answer_is_asked_for_ahead_only_when_its_line_is_near():
    window = SeedWindow(4, 4.0)
    policy = CallResponsePolicy(1.0, 2, "bar", 4.0, request_ahead_beats=1.5)
    play(window, [(0.0, 1.0, 60), (1.0, 1.0, 62), (2.0, 1.0, 64)])  # silence complete at 4
    for _ in range(3):
        policy.on_player_note()
    assert policy.due(3.0, window, 0.1) is None
    # The answer starts on the line at 8 (4 + the lead passes 4): the silence completes
    # 4 beats before it, more than 1.5, so the request waits for the silence.
    assert policy.next_check(window, 3.0) == pytest.approx(4.0)
    assert policy.due(3.9, window, 0.1) is None
    trigger = policy.due(4.0, window, 0.1)
    assert trigger is not None and trigger.start_beat == 8.0


def test_a_silence_ending_a_beat_before_the_line_is_answered_a_beat_and_a_half_ahead():
    window = SeedWindow(4, 4.0)
    policy = CallResponsePolicy(1.0, 2, "bar", 4.0, request_ahead_beats=1.5)
    play(window, [(0.0, 1.0, 60), (1.0, 1.0, 62)])  # silence complete at 3, a beat before 4
    policy.on_player_note()
    # Without asking ahead the request goes out at 3, one beat (less the engine's time)
    # before the answer's line at 4; asked ahead, at 2.5 (half the silence).
    assert policy.next_check(window, 2.0) == pytest.approx(2.5)
    assert policy.due(2.4, window, 0.1) is None
    trigger = policy.due(2.5, window, 0.1)
    assert trigger is not None and trigger.start_beat == 4.0
    patient = CallResponsePolicy(1.0, 2, "bar", 4.0)
    patient.on_player_note()
    assert patient.next_check(window, 2.0) == pytest.approx(3.0)
    assert patient.due(2.5, window, 0.1) is None
    trigger = patient.due(3.0, window, 0.1)
    assert trigger is not None and trigger.start_beat == 4.0


def _asked_ahead() -> tuple[SeedWindow, CallResponsePolicy]:
    """A phrase whose silence completes at 3, answered without barge-in and asked for
    ahead at 2.5, for the bar line at 4."""
    window = SeedWindow(4, 4.0)
    policy = CallResponsePolicy(1.0, 2, "bar", 4.0, barge_in=False, request_ahead_beats=1.5)
    play(window, [(0.0, 2.0, 60)])
    policy.on_player_note(0.0)
    assert policy.due(2.5, window, 0.1) is not None
    return window, policy


def test_a_note_before_the_silence_is_complete_drops_the_answer_asked_ahead():
    window, policy = _asked_ahead()
    # The phrase goes on at 2.8: the answer is dropped before it sounds, even without
    # barge-in, and the phrase is answered after its real end.
    play(window, [(2.8, 0.5, 62)])
    assert policy.on_player_note(2.8) is True
    assert not policy.answering
    # Its silence completes at 4.3, 3.7 beats before the line at 8: no need to ask ahead.
    assert policy.due(4.2, window, 0.1) is None
    trigger = policy.due(4.3, window, 0.1)
    assert trigger is not None and trigger.start_beat == 8.0


def test_a_note_after_the_silence_is_complete_keeps_the_answer_asked_ahead():
    _window, policy = _asked_ahead()
    # 3.5: the silence was complete at 3; the note is a pick-up before the answer's line.
    assert policy.on_player_note(3.5) is False and policy.answering


def test_a_trading_call_that_goes_on_after_an_early_ask_keeps_counting_its_bars():
    window = SeedWindow(4, 4.0)
    policy = CallResponsePolicy(1.0, 4, "bar", 4.0, trade_bars=2, trade_lead_beats=0.5,
                                request_ahead_beats=1.5)
    play(window, [(0.0, 2.0, 60)])
    policy.on_player_note(0.0)  # the call starts in bar 0
    assert policy.due(2.5, window, 0.1) is not None  # it seemed to stop: asked ahead
    play(window, [(2.8, 4.0, 62)])
    assert policy.on_player_note(2.8) is True
    # Still the call of bar 0: answered on the line after its two bars.
    trigger = policy.due(7.5, window, 0.1)
    assert trigger is not None and trigger.start_beat == 8.0 and trigger.bars == 2


def _trader() -> CallResponsePolicy:
    return CallResponsePolicy(1.0, 4, "bar", 4.0, trade_bars=2, trade_lead_beats=0.5)


def test_trading_answers_a_two_bar_call_on_the_next_bar_line_without_silence():
    window = SeedWindow(4, 4.0)
    policy = _trader()
    for onset in (0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5):  # two bars of call, still playing
        window.note_on(onset, 60, 80)
        policy.on_player_note(onset)
        window.note_off(onset + 0.5, 60)
    window.note_on(7.25, 64, 80)  # held across the moment the request goes out
    policy.on_player_note(7.25)
    assert policy.next_check(window, 7.0) == pytest.approx(7.5)
    assert policy.due(7.4, window, 0.1) is None
    trigger = policy.due(7.5, window, 0.1)
    assert trigger is not None and trigger.start_beat == 8.0 and trigger.bars == 2
    # The call's last notes before the line do not stop the answer; one inside it does.
    assert policy.on_player_note(7.8) is False and policy.answering
    assert policy.on_player_note(8.5) is True and not policy.answering


def test_trading_counts_the_next_call_from_its_own_first_note():
    window = SeedWindow(4, 4.0)
    policy = _trader()
    policy.on_player_note(0.0)
    assert policy.due(7.6, window, 0.1).start_beat == 8.0
    assert policy.due(15.9, window, 0.1) is None  # the answer plays bars 2-3
    assert policy.due(16.0, window, 0.1) is None and not policy.answering
    policy.on_player_note(17.0)  # the next call starts in bar 4
    assert policy.due(23.4, window, 0.1) is None
    assert policy.due(23.5, window, 0.1).start_beat == 24.0


def test_a_trading_call_played_a_little_early_counts_from_the_coming_bar():
    window = SeedWindow(4, 4.0)
    policy = _trader()
    policy.on_player_note(3.9)  # meant for the bar line at 4
    assert policy.due(3.95, window, 0.1) is None
    assert policy.due(11.5, window, 0.1).start_beat == 12.0


def test_a_trading_call_that_stops_early_is_answered_after_its_silence():
    window = SeedWindow(4, 4.0)
    policy = _trader()
    play(window, [(0.0, 0.5, 60), (1.0, 0.5, 62)])
    policy.on_player_note(0.0)
    policy.on_player_note(1.0)
    trigger = policy.due(2.6, window, 0.1)
    assert trigger is not None and trigger.start_beat == 4.0 and trigger.bars == 4


def test_without_trading_a_held_note_at_the_bar_line_gets_no_answer():
    window = SeedWindow(4, 4.0)
    policy = CallResponsePolicy(1.0, 2, "bar", 4.0)
    window.note_on(0.5, 60, 80)
    policy.on_player_note(0.5)
    assert policy.due(7.5, window, 0.1) is None


def test_accompany_requests_each_next_bar_while_player_active():
    window = SeedWindow(2, 4.0)
    policy = AccompanyPolicy(bar_length=4.0, listen_bars=2)
    assert policy.due(1.0, window, 0.1) is None
    play(window, [(1.0, 0.5, 60)])
    first = policy.due(1.6, window, 0.1)
    assert first is not None and first.start_beat == 4.0 and first.bars == 1
    assert first.own_until == 4.0
    assert policy.due(2.0, window, 0.1) is None  # bar 1 already asked for
    assert policy.next_check(window, 2.0) == 4.0
    second = policy.due(4.0, window, 0.1)
    assert second is not None and second.start_beat == 8.0
    assert policy.due(12.0, window, 0.1) is None  # player silent for 2 bars: stop


def test_accompaniment_stops_within_n_bars_of_the_player_in_100_sessions():
    """No self-fed runaway: melodyd's own notes join the window (as the daemon adds them)
    but never keep the accompaniment going; the last bar it asks for starts at most
    ``listen_bars`` bars after the bar line that follows the player's last note, so the
    last one ends there."""
    import random  # noqa: PLC0415

    rng = random.Random(17)
    bar, stop_bars = 4.0, 2
    for _session in range(100):
        window = SeedWindow(4, bar)
        policy = AccompanyPolicy(bar_length=bar, listen_bars=stop_bars)
        played_until = rng.uniform(2.0, 40.0)
        notes = []
        beat = 0.0
        while beat < played_until:
            notes.append((beat, rng.choice((0.25, 0.5, 1.0)), rng.randint(55, 80)))
            beat += rng.choice((0.25, 0.5, 1.0, 2.0))
        last_end = max(onset + length for onset, length, _pitch in notes)
        requested = []
        now, pending = 0.0, sorted(notes)
        while now < last_end + 20 * bar:
            while pending and pending[0][0] <= now:
                onset, length, pitch = pending.pop(0)
                window.note_on(onset, pitch, 80)
                window.note_off(onset + length, pitch)
            trigger = policy.due(now, window, 0.1)
            if trigger is not None:
                requested.append(trigger.start_beat)
                # The daemon's own answer: a busy bar of accompaniment joins the window.
                window.add_own([Note(trigger.start_beat + i * 0.5, 0.5, 48 + i, 70)
                                for i in range(8)])
            now += 0.25
        assert requested, "an active player gets accompaniment"
        last_line = -(-last_end // bar) * bar
        assert max(requested) < last_line + stop_bars * bar, (max(requested), last_end)
