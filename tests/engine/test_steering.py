"""engine.steering: key, register and density biases and the floor, alone and in decoding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.decoder import StyleDecoder
from engine.grammar import VocabularyMasks
from engine.model import load_model
from engine.steering import BarDensity, ChordBias, pitch_bias, steer
from models.core import protocol
from models.core.notes import Note
from models.core.protocol.messages import (
    ChordHint,
    GenerateRequest,
    SamplingParams,
    Steering,
)
from models.core.settings import EngineSettings
from models.core.tonality import Key, parse_key

D_MAJOR = Key(2, "major")


@pytest.fixture(scope="module")
def model(tiny_onnx_model):
    return load_model(tiny_onnx_model)


@pytest.fixture(scope="module")
def vocab(model) -> VocabularyMasks:
    return VocabularyMasks.build(model.tokenizer)


def test_no_steering_builds_no_bias(vocab):
    assert pitch_bias(vocab, Steering()) is None
    assert pitch_bias(vocab, Steering(key=D_MAJOR)) is None  # strength 0 is off


def test_key_bias_lifts_the_scale_and_touches_only_pitches(vocab):
    bias = pitch_bias(vocab, Steering(key=D_MAJOR, key_strength=3.0))
    is_pitch = vocab.pitch >= 0
    assert np.all(bias[~is_pitch] == 0)
    in_scale = np.isin(vocab.pitch % 12, D_MAJOR.scale) & is_pitch
    assert bias[in_scale].min() > bias[is_pitch & ~in_scale].max()


def test_register_bias_penalises_pitches_far_from_the_centre(vocab):
    bias = pitch_bias(vocab, Steering(register_center=60, register_width=7,
                                      register_strength=2.0))
    by_pitch = {int(p): float(b) for p, b in zip(vocab.pitch, bias, strict=True) if p >= 0}
    assert by_pitch[60] == by_pitch[67] == 0.0
    assert by_pitch[79] == pytest.approx(-2.0)  # one octave beyond the width
    assert by_pitch[41] < by_pitch[48] < 0.0


def test_bar_bias_holds_a_thin_bar_back_and_pushes_a_full_one_on():
    density = BarDensity(target=4.0, strength=2.0, min_notes=0)
    assert density.bar_bias() == pytest.approx(-2.0)
    for _ in range(4):
        density.add_note()
    assert density.bar_bias() == 0.0
    for _ in range(8):
        density.add_note()
    assert density.bar_bias() == pytest.approx(2.0)  # clipped
    density.next_bar()
    assert density.count == 0


def test_the_floor_takes_bar_and_eos_away_unless_nothing_else_is_left():
    logits = np.zeros(6)
    allowed = np.array([True, True, False, True, False, False])
    density = BarDensity(target=None, strength=0.0, min_notes=2)
    _, floor = steer(logits, allowed, bias=None, density=density, bar_id=0, eos_id=1)
    assert floor.tolist() == [False, False, False, True, False, False]
    only_bar = np.array([True, False, False, False, False, False])
    _, kept = steer(logits, only_bar, bias=None, density=density, bar_id=0, eos_id=1)
    assert kept.tolist() == only_bar.tolist()
    density.add_note()
    density.add_note()
    _, full = steer(logits, allowed, bias=None, density=density, bar_id=0, eos_id=1)
    assert full.tolist() == [True, False, False, True, False, False]  # never EOS early
    no_floor = BarDensity(target=None, strength=0.0, min_notes=0)
    _, free = steer(logits, allowed, bias=None, density=no_floor, bar_id=0, eos_id=1)
    assert free.tolist() == allowed.tolist()


def _answers(model, steering: Steering, seeds: range, bars: int = 2) -> list[list[Note]]:
    decoder = StyleDecoder(model, EngineSettings(), allow_eos=True)
    seed = tuple(Note(0.5 * i, 0.5, 62 + (0, 2, 4, 7)[i % 4], 80) for i in range(8))
    answers = []
    for s in seeds:
        request = GenerateRequest(seed=seed, start_beat=8.0, bars=bars,
                                  sampling=SamplingParams(seed=s), steering=steering)
        gen = decoder.start(("steer", s), request)
        answers.append(decoder.decode_until_done([gen])[0])
    return answers


def test_a_strong_key_bias_keeps_the_random_model_in_the_key(model):
    def in_key_share(steering: Steering) -> float:
        notes = [n for answer in _answers(model, steering, range(6)) for n in answer]
        assert notes
        return float(np.mean([n.pitch % 12 in D_MAJOR.scale for n in notes]))

    free = in_key_share(Steering())
    steered = in_key_share(Steering(key=D_MAJOR, key_strength=8.0))
    assert steered > 0.95 > free


def _notes_per_bar(answer: list[Note], bars: int) -> list[int]:
    return [sum(1 for n in answer if 8.0 + 4 * b <= n.onset < 12.0 + 4 * b) for b in range(bars)]


def test_density_steering_sets_how_busy_each_bar_is_and_the_floor_fills_every_bar(model):
    # A strong push to the next bar after one note leaves bars thin...
    thin = Steering(notes_per_bar=1.0, density_strength=12.0)
    thin_bars = [c for a in _answers(model, thin, range(6), bars=3) for c in _notes_per_bar(a, 3)]
    assert min(thin_bars) < 3
    assert np.mean(thin_bars) < 3
    # ...and the floor still fills every bar with at least its notes.
    floored = dataclasses.replace(thin, min_notes=3)
    for answer in _answers(model, floored, range(6), bars=3):
        assert min(_notes_per_bar(answer, 3)) >= 3


def test_steering_crosses_the_wire_and_back():
    steering = Steering(key=parse_key("Bb minor"), key_strength=2.5, register_center=64.5,
                        register_width=9, register_strength=1.0, notes_per_bar=6.0,
                        density_strength=1.5, min_notes=2, chord_strength=4.0,
                        chords=(ChordHint(8.0, (0, 4, 7)), ChordHint(10.5, ())))
    request = dataclasses.replace(
        GenerateRequest(seed=(), start_beat=4.0, style="s"), steering=steering)
    message = protocol.GenerateMessage(id="g", session="s", request=request)
    back = protocol.decode_request(protocol.encode(message))
    assert back.request.steering == steering
    plain = protocol.GenerateMessage(id="g", session="s",
                                     request=GenerateRequest(seed=(), start_beat=4.0, style="s"))
    assert "steering" not in plain.to_json()


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("key", "H major", "steering.key"), ("key", 5, "steering.key"),
    ("key_strength", -1, "steering.key_strength"), ("min_notes", 99, "steering.min_notes"),
    ("keystrength", 1, "did you mean"),
    ("chords", {"beat": 0}, "steering.chords must be a list"),
    ("chords", [{"beat": 4, "pitch_classes": [0, 12]}], r"steering.chords\[0\].pitch_classes"),
    ("chords", [{"beat": 4, "pitch_classes": [0]}, {"beat": 4, "pitch_classes": [2]}],
     r"steering.chords\[1\].beat must be after"),
    ("chords", [{"beat": -1, "pitch_classes": [0]}], r"steering.chords\[0\].beat"),
    ("chords", [{"beat": 4}], r"steering.chords\[0\] needs beat and pitch_classes"),
    ("chords", [{"beat": 4, "pitch_classes": [0], "root": 0}], "unknown field"),
    ("chords", [{"beat": float(b), "pitch_classes": [0]} for b in range(257)], "at most 256"),
    ("chord_strength", 21, "steering.chord_strength")])
def test_bad_steering_is_refused_with_the_field_named(field, value, needle):
    frame = protocol.GenerateMessage(id="g", session="s", request=GenerateRequest(
        seed=(), start_beat=4.0, style="s")).to_json()
    frame["steering"] = {field: value}
    with pytest.raises(protocol.ProtocolError, match=needle):
        protocol.parse_request(frame)


def test_a_chord_hint_biases_only_pitches_outside_it_from_its_beat(vocab):
    steering = Steering(chord_strength=5.0,
                        chords=(ChordHint(4.0, (0, 4, 7)), ChordHint(8.0, ())))
    chords = ChordBias.of(vocab, steering)
    assert chords is not None and chords.at(3.9) is None and chords.at(8.0) is None
    bias = chords.at(4.0)
    is_pitch = vocab.pitch >= 0
    outside = is_pitch & ~np.isin(vocab.pitch % 12, (0, 4, 7))
    assert np.all(bias[outside] == -5.0)
    assert np.all(bias[~outside] == 0.0)  # chord tones and every other token untouched
    assert chords.at(7.99) is bias
    assert ChordBias.of(vocab, dataclasses.replace(steering, chord_strength=0.0)) is None
    assert ChordBias.of(vocab, Steering()) is None


def test_strong_chord_hints_put_each_bar_on_its_chord(model):
    """C major for the answer's first bar, F# major for its second: the random model
    plays each bar's chord tones (a note takes the chord of its onset)."""
    c_major, f_sharp = (0, 4, 7), (1, 6, 10)
    hints = (ChordHint(8.0, c_major), ChordHint(12.0, f_sharp))

    def on_chord(steering: Steering) -> float:
        notes = [n for answer in _answers(model, steering, range(6)) for n in answer]
        assert notes
        return float(np.mean([n.pitch % 12 in (c_major if n.onset < 12.0 else f_sharp)
                              for n in notes]))

    free = on_chord(Steering(chords=hints))  # strength 0: hints given, no bias
    steered = on_chord(Steering(chords=hints, chord_strength=12.0))
    assert steered > 0.95 > free
