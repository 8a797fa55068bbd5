"""The beat timeline: internal tempo and MIDI beat clock following."""

from __future__ import annotations

import pytest

from bridge.clock import InternalClock, Mapping, MidiClock
from models.core.meter import bar_length


@pytest.mark.parametrize(("signature", "beats"), [((4, 4), 4.0), ((3, 4), 3.0), ((6, 8), 3.0),
                                                  ((2, 2), 4.0)], ids=str)
def test_bar_length(signature, beats):
    assert bar_length(signature) == beats


def test_mapping_round_trip():
    m = Mapping(t0=10.0, beat0=4.0, spb=0.5)
    assert m.beat_at(11.0) == pytest.approx(6.0)
    assert m.time_at(m.beat_at(12.345)) == pytest.approx(12.345)


def test_internal_clock_tempo_change_keeps_position():
    clock = InternalClock(120.0)
    assert not clock.running and clock.beat_at(0.0) is None
    clock.start(100.0)
    assert clock.beat_at(102.0) == pytest.approx(4.0)
    clock.set_bpm(60.0, 102.0)
    assert clock.beat_at(102.0) == pytest.approx(4.0)  # no jump
    assert clock.beat_at(103.0) == pytest.approx(5.0)
    assert clock.time_at(6.0) == pytest.approx(104.0)
    assert clock.bpm == pytest.approx(60.0)
    assert clock.bar_of(3.999) == 0 and clock.bar_of(4.0) == 1


def feed(clock: MidiClock, start_t: float, bpm: float, n: int, jitter: list[float] | None = None
         ) -> float:
    """Send ``n`` ticks at ``bpm`` from ``start_t``; returns the time of the next tick."""
    spt = 60.0 / bpm / 24
    for i in range(n):
        clock.tick(start_t + i * spt + (jitter[i % len(jitter)] if jitter else 0.0))
    return start_t + n * spt


def test_midi_clock_start_and_tempo():
    clock = MidiClock(initial_bpm=120.0)
    clock.tick(0.5)  # ticks before Start only keep the transport stopped
    assert not clock.running
    clock.start()
    feed(clock, 1.0, 100.0, 48)
    assert clock.bpm == pytest.approx(100.0, rel=1e-6)
    # The first tick after Start is beat 0.
    assert clock.time_at(0.0) == pytest.approx(1.0)
    assert clock.beat_at(1.0 + 0.6 * 3) == pytest.approx(3.0)


def test_midi_clock_smooths_jitter():
    clock = MidiClock()
    clock.start()
    jitter = [0.0, 0.0012, -0.0009, 0.0015, -0.0013, 0.0004]
    feed(clock, 0.0, 120.0, 96, jitter)
    assert clock.bpm == pytest.approx(120.0, rel=0.01)
    # The grid stays within a fraction of the jitter of the true one.
    assert clock.time_at(8.0) == pytest.approx(4.0, abs=0.001)


def test_midi_clock_follows_tempo_change_within_a_beat():
    clock = MidiClock()
    clock.start()
    t = feed(clock, 0.0, 100.0, 96)
    changes = []
    clock.add_listener(lambda: changes.append(clock.bpm))
    t = feed(clock, t, 140.0, 24)  # one beat at the new tempo
    assert clock.bpm == pytest.approx(140.0, rel=0.01)
    assert changes  # the scheduler is told
    # Beat position after 4 beats at 100 and 1 at 140: the next tick sounds beat 5.
    assert clock.beat_at(t) == pytest.approx(5.0, abs=0.01)


def test_midi_clock_stop_continue_and_song_position():
    clock = MidiClock()
    clock.start()
    t = feed(clock, 0.0, 120.0, 30)
    clock.stop()
    assert not clock.running and clock.time_at(1.0) is None
    assert clock.position_beats == pytest.approx(30 / 24)
    clock.song_position(16)  # 16 sixteenths = bar 2 in 4/4 = beat 4
    assert clock.position_beats == pytest.approx(4.0)
    clock.resume()
    clock.song_position(64)  # ignored while playing
    assert clock.position_beats == pytest.approx(4.0)
    clock.stop()
    clock.resume()
    feed(clock, t + 5.0, 120.0, 24)
    assert clock.time_at(4.0) == pytest.approx(t + 5.0, abs=1e-6)
    clock.start()  # Start goes back to the top
    assert clock.position_beats == 0.0


def test_midi_clock_places_notes_before_the_first_tick_on_it():
    clock = MidiClock()
    assert clock.input_beat(0.9) is None  # stopped: no timeline
    clock.start()
    # Played between Start and the first tick: it belongs to the beat that tick sounds.
    assert clock.input_beat(0.95) == 0.0
    feed(clock, 1.0, 120.0, 1)
    # Same time as the first tick (one JACK frame): exactly beat 0.
    assert clock.input_beat(1.0) == 0.0
    # A hair before it (stamping jitter) is clamped to the origin, never negative.
    assert clock.input_beat(1.0 - 1e-6) == 0.0
    assert clock.input_beat(1.25) == pytest.approx(0.5)


def test_midi_clock_continue_starts_a_new_origin():
    clock = MidiClock()
    clock.start()
    t = feed(clock, 0.0, 120.0, 48)  # two beats
    clock.stop()
    assert clock.input_beat(t + 0.1) is None
    clock.resume()
    # The old tempo line is gone: a note before the first tick sounds at the position.
    assert clock.beat_at(t + 1.0) is None
    assert clock.input_beat(t + 1.0) == pytest.approx(2.0)
    feed(clock, t + 2.0, 120.0, 2)
    assert clock.input_beat(t + 2.0 - 0.01) == pytest.approx(2.0)
    assert clock.input_beat(t + 2.5) == pytest.approx(3.0)
