"""bridge.ear: the call's key (followed with hysteresis and a lock), register and density
become the request's steering, scaled by the follow knob."""

from __future__ import annotations

import dataclasses

import pytest

from bridge.ear import Ear, notes_per_bar
from models.core import protocol
from models.core.notes import Note
from models.core.protocol.messages import GenerateMessage, GenerateRequest
from models.core.settings import InteractionSettings

C_MAJOR_CALL = [Note(0.5 * i, 0.5, p, 80) for i, p in enumerate((60, 64, 67, 72, 67, 64, 65,
                                                                  62, 60, 67, 64, 60))]
E_MAJOR_CALL = [Note(0.5 * i, 0.5, p, 80) for i, p in enumerate((64, 68, 71, 76, 75, 73, 71,
                                                                  69, 68, 66, 64, 71, 68, 64))]


def test_notes_per_bar_counts_the_bars_the_call_spans() -> None:
    assert notes_per_bar(C_MAJOR_CALL, 4.0) == pytest.approx(12 / 2)  # beats 0-5.5
    assert notes_per_bar([], 4.0) == 0.0
    assert notes_per_bar([Note(9.0, 1.0, 60, 80)], 4.0) == 1.0


def test_the_steering_names_the_calls_key_register_and_density() -> None:
    steering = Ear(InteractionSettings()).steering(C_MAJOR_CALL, 4.0)
    assert steering.key is not None and steering.key.name == "C major"
    assert steering.key_strength == InteractionSettings().key_strength
    assert steering.register_center == pytest.approx(sum(n.pitch for n in C_MAJOR_CALL) / 12)
    assert steering.notes_per_bar == pytest.approx(6.0)
    assert steering.min_notes == InteractionSettings().min_notes_per_bar


def test_a_sparse_call_gets_no_floor_and_an_empty_one_no_steering() -> None:
    sparse = [Note(0.0, 2.0, 60, 80), Note(8.0, 2.0, 64, 80)]  # 2 notes in 3 bars
    assert Ear(InteractionSettings()).steering(sparse, 4.0).min_notes == 0
    assert Ear(InteractionSettings()).steering([], 4.0) == protocol.Steering()


def test_each_part_can_be_switched_off() -> None:
    off = InteractionSettings(key_follow=False, register_follow=False, density_follow=False)
    steering = Ear(off).steering(C_MAJOR_CALL, 4.0)
    assert steering.key is None and steering.key_strength == 0
    assert steering.register_strength == 0 and steering.density_strength == 0
    assert steering.min_notes == 0


def test_the_key_is_followed_across_phrases_and_held_by_the_lock() -> None:
    ear = Ear(InteractionSettings())
    assert ear.steering(C_MAJOR_CALL, 4.0).key.name == "C major"
    ear.lock_key(True)
    assert ear.steering(E_MAJOR_CALL, 4.0).key.name == "C major"
    ear.lock_key(False)
    assert ear.steering(E_MAJOR_CALL, 4.0).key.name == "E major"


def test_the_follow_knob_scales_every_strength_within_the_protocols_limit() -> None:
    ear = Ear(InteractionSettings(key_strength=12.0))
    ear.set_follow(0)
    assert ear.steering(C_MAJOR_CALL, 4.0).key_strength == 0.0
    ear.set_follow(127)
    loud = ear.steering(C_MAJOR_CALL, 4.0)
    assert loud.key_strength == 20.0  # 12 x ~2 capped at the protocol's maximum
    assert loud.density_strength == pytest.approx(2.0 * 127 / 64)
    request = dataclasses.replace(GenerateRequest(seed=tuple(C_MAJOR_CALL), start_beat=8.0,
                                                  style="s"), steering=loud)
    protocol.encode(GenerateMessage("g", "s", request))  # the engine would take it
