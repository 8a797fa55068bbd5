"""The critic of best-of-N prefers the candidate bar that fits the call."""

from __future__ import annotations

import dataclasses

import pytest

from engine.critic import BarCandidate, CallProfile, CriticWeights, best, terms
from models.core.notes import Note
from models.core.protocol.messages import GenerateRequest, Steering
from models.core.tonality import parse_key

C_MAJOR_CALL = tuple(Note(float(i), 0.9, (60, 64, 67, 72, 67, 65, 62, 60)[i], 80)
                     for i in range(8))  # two bars of quarters


def _call(**steering) -> CallProfile:
    return CallProfile.of(GenerateRequest(seed=C_MAJOR_CALL, start_beat=8.0,
                                          steering=Steering(**steering)))


def _bar(pitches, onsets=None, log_prob=-4.0, tokens=4) -> BarCandidate:
    onsets = onsets if onsets is not None else [8.0 + i for i in range(len(pitches))]
    return BarCandidate([Note(o, 0.9, p, 80) for o, p in zip(onsets, pitches, strict=True)],
                        log_prob, tokens, 4.0)


def test_the_critic_prefers_the_bar_in_the_calls_key():
    call = _call(key=parse_key("C major"))
    in_key = _bar([60, 64, 67, 65])
    out_of_key = _bar([61, 63, 66, 68])
    index, scores = best([out_of_key, in_key], call, CriticWeights())
    assert index == 1
    assert scores[1] > scores[0]
    assert terms(in_key, call)["key"] == pytest.approx(0.0)


def test_without_a_steered_key_the_seeds_key_is_used():
    call = _call()
    assert call.key is not None and call.key.name == "C major"


def test_the_critic_prefers_the_bar_as_busy_as_the_call():
    call = _call(notes_per_bar=4.0)
    empty = BarCandidate([], -1.0, 2, 4.0)  # likelier per token, but no answer
    sparse = _bar([64])
    like_the_call = _bar([60, 62, 64, 65])
    crowded = _bar([60, 62, 64, 65, 67, 69, 71, 72, 74, 76, 77, 79, 81, 83, 84, 86],
                   onsets=[8.0 + i / 4 for i in range(16)])
    index, scores = best([empty, sparse, crowded, like_the_call], call, CriticWeights())
    assert index == 3
    assert scores[0] < scores[1]  # silence is the worst answer


def test_the_critic_prefers_the_register_and_rhythm_of_the_call():
    call = _call(register_center=63.0, register_width=7.0)
    high = _bar([84, 88, 91, 89])
    near = _bar([60, 64, 67, 65])
    assert best([high, near], call, CriticWeights())[0] == 1
    off_beat = _bar([60, 64, 67, 65], onsets=[8.25, 9.25, 10.75, 11.75])
    on_beat = _bar([60, 64, 67, 65])
    assert terms(on_beat, call)["rhythm"] > terms(off_beat, call)["rhythm"]


def test_the_likelihood_decides_between_equal_fits():
    call = _call()
    unlikely = _bar([60, 64, 67, 65], log_prob=-20.0, tokens=10)
    likely = _bar([60, 64, 67, 65], log_prob=-5.0, tokens=10)
    assert best([unlikely, likely], call, CriticWeights())[0] == 1


def test_the_critic_prefers_a_moving_bar_to_the_tonic_four_times_though_it_is_likelier():
    """The pedal keeps the key and the rhythm as well and the model finds it likelier per
    token (repeating is easy to predict); the variety term still keeps the tune."""
    call = _call(key=parse_key("C major"))
    pedal = _bar([60, 60, 60, 60], log_prob=-2.0)
    tune = _bar([64, 62, 60, 62], log_prob=-3.0)
    # Twice the share over half on one pitch, and 1 for a line of one pitch to a call of six.
    assert terms(pedal, call)["variety"] == pytest.approx(-2.0)
    assert terms(tune, call)["variety"] == 0.0
    assert best([pedal, tune], call, CriticWeights())[0] == 1
    assert best([pedal, tune], call, CriticWeights(variety=0.0, tonal=0.0))[0] == 0


def test_a_call_that_dwells_on_one_pitch_may_be_answered_in_kind():
    drone = tuple(Note(float(i), 0.9, (67, 67, 67, 72)[i % 4], 80) for i in range(8))
    call = CallProfile.of(GenerateRequest(seed=drone, start_beat=8.0))
    assert call.pitch_dwell == 0.75
    assert terms(_bar([67, 67, 67, 65]), call)["variety"] == 0.0  # as much as the call
    assert terms(_bar([67, 67, 67, 67]), call)["variety"] == pytest.approx(-0.5)
    assert terms(_bar([67, 67]), call)["variety"] == 0.0  # too few notes to judge


def test_a_sparse_answer_is_judged_on_its_bars_so_far():
    """Two notes a bar say nothing of dwelling on their own: the tonic twice after the
    tonic twice is a pedal all the same, seen over the answer so far."""
    call = _call(key=parse_key("C major"))
    first_bar = [Note(8.0, 0.9, 60, 80), Note(10.0, 0.9, 60, 80)]
    again = BarCandidate([Note(12.0, 0.9, 60, 80), Note(14.0, 0.9, 60, 80)], -1.0, 4, 4.0,
                         first_bar)
    onwards = BarCandidate([Note(12.0, 0.9, 64, 80), Note(14.0, 0.9, 62, 80)], -3.0, 4, 4.0,
                           first_bar)
    assert terms(dataclasses.replace(again, before=()), call)["variety"] == 0.0
    assert terms(again, call)["variety"] == pytest.approx(-2.0)
    assert terms(onwards, call)["variety"] == 0.0
    assert best([again, onwards], call, CriticWeights())[0] == 1


def test_two_pitches_in_turn_answer_only_a_call_of_two():
    fifths = _bar([65, 72, 72, 65])  # no pitch over half of the bar, but no line either
    assert terms(fifths, _call(key=parse_key("C major")))["variety"] == pytest.approx(-1.0)
    swing = tuple(Note(float(i), 0.9, (67, 72)[i % 2], 80) for i in range(8))
    call = CallProfile.of(GenerateRequest(seed=swing, start_beat=8.0))
    assert call.pitches == 2
    assert terms(_bar([67, 72, 72, 67]), call)["variety"] == 0.0


def test_between_two_bars_in_the_scale_the_critic_prefers_the_one_centred_on_the_key():
    """Both bars use only C major's notes; the one leaning on D and F reads as D minor,
    the one on C, E and G as C major: the tonal term tells them apart (the key term
    cannot), and the choice is the critic's, with no pull on every token."""
    call = _call(key=parse_key("C major"))
    d_minor = _bar([62, 65, 69, 62], log_prob=-3.0)
    c_major = _bar([64, 67, 72, 60], log_prob=-3.0)
    assert terms(d_minor, call)["key"] == terms(c_major, call)["key"] == 0.0
    assert terms(c_major, call)["tonal"] > terms(d_minor, call)["tonal"]
    assert best([d_minor, c_major], call, CriticWeights())[0] == 1
    assert best([d_minor, c_major], call, CriticWeights(tonal=0.0))[0] == 0  # a tie: first
    assert terms(_bar([60, 60, 60]), call)["tonal"] == 0.0  # one pitch class: not judged


def test_accompaniment_bars_are_not_scored_on_the_tonal_centre():
    """Under a melody the harmony follows its chords: the tonal term is the answers'."""
    from models.core.protocol.messages import Constraints  # noqa: PLC0415

    request = GenerateRequest(seed=C_MAJOR_CALL, start_beat=8.0,
                              steering=Steering(key=parse_key("C major")),
                              constraints=Constraints(role="accompaniment"))
    call = CallProfile.of(request)
    assert call.key is not None and call.centre is None
    assert terms(_bar([62, 65, 69, 62]), call)["tonal"] == 0.0
    assert terms(_bar([62, 65, 69, 62]), _call(key=parse_key("C major")))["tonal"] < 0.0
    # A bass on root and fifth is accompaniment's idiom, not an answer's pedal.
    root_fifth = _bar([48, 55, 48, 55])
    assert terms(root_fifth, call)["variety"] == 0.0
    assert terms(root_fifth, _call(key=parse_key("C major")))["variety"] == pytest.approx(-1.0)
