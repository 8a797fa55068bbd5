"""The REMI grammar: masks keep every sampled stream decodable and inside the constraints."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from engine.grammar import Grammar, VocabularyMasks
from engine.sampling import make_rng, sample
from models.core.exceptions import EngineError
from models.core.notes import Note
from models.core.protocol.messages import Constraints, SamplingParams
from models.core.tokenizer import MelodyTokenizer


@pytest.fixture(scope="module")
def tokenizer() -> MelodyTokenizer:
    return MelodyTokenizer()


@pytest.fixture(scope="module")
def vocab(tokenizer) -> VocabularyMasks:
    return VocabularyMasks.build(tokenizer)


def _kinds(tokenizer, mask) -> set[str]:
    return {tokenizer.tokens[i].split("_")[0] for i in np.flatnonzero(mask)}


def _feed(grammar, tokenizer, *texts):
    for text in texts:
        grammar.feed(tokenizer.vocab[text])


def test_note_tokens_come_in_order(tokenizer, vocab):
    grammar = Grammar(tokenizer, vocab)
    assert _kinds(tokenizer, grammar.allowed()) == {"Bar"}
    _feed(grammar, tokenizer, "BOS_None", "Bar_None")
    assert [tokenizer.tokens[i] for i in np.flatnonzero(grammar.allowed())] == ["TimeSig_4/4"]
    _feed(grammar, tokenizer, "TimeSig_4/4")
    # No Position yet in this bar: no Pitch.
    assert "Pitch" not in _kinds(tokenizer, grammar.allowed())
    _feed(grammar, tokenizer, "Position_12")
    assert _kinds(tokenizer, grammar.allowed()) == {"Pitch"}
    _feed(grammar, tokenizer, "Pitch_60")
    assert _kinds(tokenizer, grammar.allowed()) == {"Velocity"}
    _feed(grammar, tokenizer, "Velocity_79")
    assert _kinds(tokenizer, grammar.allowed()) == {"Duration"}
    _feed(grammar, tokenizer, "Duration_1.0.12")
    allowed = grammar.allowed()
    assert _kinds(tokenizer, allowed) == {"Bar", "Position", "Pitch", "EOS"}
    positions = [int(tokenizer.tokens[i].split("_")[1]) for i in np.flatnonzero(allowed)
                 if tokenizer.tokens[i].startswith("Position")]
    # Strictly after 12 and inside a 4/4 bar of 48 steps; never PAD/BOS.
    assert positions == list(range(13, 48))
    assert not allowed[tokenizer.pad_id] and not allowed[tokenizer.bos_id]


def test_time_signature_in_force_bounds_positions(tokenizer, vocab):
    grammar = Grammar(tokenizer, vocab, time_signature=(3, 4))
    _feed(grammar, tokenizer, "Bar_None")
    assert [tokenizer.tokens[i] for i in np.flatnonzero(grammar.allowed())] == ["TimeSig_3/4"]
    _feed(grammar, tokenizer, "TimeSig_3/4")
    positions = vocab.position[grammar.allowed() & vocab.kind["Position"]]
    assert positions.max() == 35


def test_eos_can_be_forbidden(tokenizer, vocab):
    grammar = Grammar(tokenizer, vocab, allow_eos=False)
    _feed(grammar, tokenizer, "Bar_None", "TimeSig_4/4")
    assert not grammar.allowed()[tokenizer.eos_id]


def test_unknown_time_signature_and_empty_pitch_set_are_errors(tokenizer, vocab):
    with pytest.raises(EngineError, match="7/8"):
        Grammar(tokenizer, vocab, time_signature=(7, 8))
    with pytest.raises(EngineError, match="no pitch"):
        Grammar(tokenizer, vocab, Constraints(pitch_min=61, pitch_max=61, scale=(0,)))


def test_polyphony_limit_masks_pitches_while_notes_sound(tokenizer, vocab):
    grammar = Grammar(tokenizer, vocab, Constraints(max_polyphony=2))
    _feed(grammar, tokenizer, "Bar_None", "TimeSig_4/4", "Position_0",
          "Pitch_60", "Velocity_79", "Duration_2.0.12",
          "Pitch_64", "Velocity_79", "Duration_2.0.12")
    assert grammar.sounding() == 2
    assert "Pitch" not in _kinds(tokenizer, grammar.allowed())
    _feed(grammar, tokenizer, "Position_12")  # beat 1: both notes still sound
    assert "Pitch" not in _kinds(tokenizer, grammar.allowed())
    _feed(grammar, tokenizer, "Position_24")  # beat 2: both have ended
    assert grammar.sounding() == 0
    assert _kinds(tokenizer, grammar.allowed()) == {"Pitch"}


def _max_sounding(notes: list[Note]) -> int:
    # Rounded: an end and an onset on the same grid line must compare equal.
    events = sorted([(round(n.onset, 6), 1) for n in notes]
                    + [(round(n.end, 6), -1) for n in notes])
    level = peak = 0
    for _, change in events:  # ends sort before onsets at the same time
        level += change
        peak = max(peak, level)
    return peak


@pytest.mark.parametrize("time_signature", [(4, 4), (6, 8), (3, 4)], ids=str)
def test_ten_thousand_random_tokens_always_decode_within_constraints(tokenizer, vocab,
                                                                     time_signature):
    """Whatever the logits, a stream sampled under the masks decodes without a skip."""
    constraints = Constraints(pitch_min=48, pitch_max=84, scale=(0, 2, 4, 5, 7, 9, 11),
                              max_polyphony=3)
    grammar = Grammar(tokenizer, vocab, constraints, time_signature, allow_eos=False)
    params = SamplingParams(temperature=1.5, seed=11)
    rng = make_rng(params)
    logit_rng = np.random.default_rng(5)
    notes = []
    grammar.feed(tokenizer.bos_id)
    for _ in range(10_000):
        logits = logit_rng.normal(0.0, 3.0, tokenizer.vocab_size)
        note = grammar.feed(sample(logits, params, rng, grammar.allowed()))
        if note is not None:
            notes.append(note)
    assert grammar.detok.skipped == 0, grammar.detok.problems
    assert len(notes) > 500
    assert all(48 <= n.pitch <= 84 for n in notes)
    assert {n.pitch % 12 for n in notes} <= {0, 2, 4, 5, 7, 9, 11}
    assert _max_sounding(notes) <= 3
    assert all(a.onset <= b.onset for a, b in itertools.pairwise(notes))


# ----------------------------------------------------------------- style and role tokens
@pytest.fixture(scope="module")
def conditioned() -> MelodyTokenizer:
    from models.core.settings import TokensSettings  # noqa: PLC0415

    return MelodyTokenizer(TokensSettings(style_slots=4, styles=("romantic",), roles=True))


@pytest.fixture(scope="module")
def conditioned_vocab(conditioned) -> VocabularyMasks:
    return VocabularyMasks.build(conditioned)


def test_style_only_after_bos_and_roles_before_pitches(conditioned, conditioned_vocab):
    tok = conditioned
    grammar = Grammar(tok, conditioned_vocab)
    grammar.feed(tok.bos_id)
    assert _kinds(tok, grammar.allowed()) == {"Style", "Bar"}
    _feed(grammar, tok, "Style_1")
    assert _kinds(tok, grammar.allowed()) == {"Bar"}
    _feed(grammar, tok, "Bar_None", "TimeSig_4/4", "Position_0")
    # The first note names its role: every Role, no bare Pitch.
    assert _kinds(tok, grammar.allowed()) == {"Role"}
    _feed(grammar, tok, "Role_lead")
    assert _kinds(tok, grammar.allowed()) == {"Pitch"}
    _feed(grammar, tok, "Pitch_72", "Velocity_79", "Duration_1.0.12")
    allowed = grammar.allowed()
    assert _kinds(tok, allowed) == {"Bar", "Position", "Pitch", "Role", "EOS"}
    # Never the role in force; never a Style after the first bar.
    assert not allowed[tok.vocab["Role_lead"]]
    assert allowed[tok.vocab["Role_accompaniment"]] and allowed[tok.vocab["Role_any"]]
    _feed(grammar, tok, "Bar_None", "TimeSig_4/4")
    assert "Style" not in _kinds(tok, grammar.allowed())


def test_role_constraint_leaves_only_that_role(conditioned, conditioned_vocab):
    tok = conditioned
    grammar = Grammar(tok, conditioned_vocab, Constraints(role="accompaniment"))
    _feed(grammar, tok, "BOS_None", "Style_0", "Bar_None", "TimeSig_4/4", "Position_0",
          "Role_lead", "Pitch_72", "Velocity_79", "Duration_1.0.12")
    allowed = grammar.allowed()
    # The lead is in force: no pitch until Role_accompaniment, and no other Role.
    assert _kinds(tok, allowed) == {"Bar", "Position", "Role", "EOS"}
    assert [tok.tokens[i] for i in np.flatnonzero(allowed & conditioned_vocab.kind["Role"])] == [
        "Role_accompaniment"]
    _feed(grammar, tok, "Role_accompaniment")
    assert _kinds(tok, grammar.allowed()) == {"Pitch"}
    _feed(grammar, tok, "Pitch_48", "Velocity_79", "Duration_1.0.12")
    assert _kinds(tok, grammar.allowed()) == {"Bar", "Position", "Pitch", "EOS"}


def test_role_constraint_needs_role_tokens(tokenizer, vocab):
    with pytest.raises(EngineError, match="role tokens"):
        Grammar(tokenizer, vocab, Constraints(role="lead"))


@pytest.mark.parametrize("role", [None, "accompaniment", "lead"], ids=str)
def test_random_conditioned_streams_decode_without_a_skip(conditioned, conditioned_vocab, role):
    """Whatever the logits, a stream with roles sampled under the masks never skips, and a
    role constraint yields notes of that role only."""
    tok = conditioned
    constraints = Constraints(pitch_min=40, pitch_max=84, max_polyphony=4, role=role)
    grammar = Grammar(tok, conditioned_vocab, constraints, (3, 4), allow_eos=False)
    params = SamplingParams(temperature=1.5, seed=3)
    rng = make_rng(params)
    logit_rng = np.random.default_rng(8)
    # A seed of the other roles first, as the engine's prompt feeds it.
    seed = tok.encode_notes([Note(0.0, 1.0, 76, 80, "lead"), Note(0.0, 2.0, 48, 70, "any")],
                            (3, 4), style="romantic")
    for token in seed:
        grammar.feed(token)
    notes, roles = [], 0
    for _ in range(10_000):
        logits = logit_rng.normal(0.0, 3.0, tok.vocab_size)
        token = sample(logits, params, rng, grammar.allowed())
        roles += conditioned_vocab.kind["Role"][token]
        note = grammar.feed(token)
        if note is not None:
            notes.append(note)
    assert grammar.detok.skipped == 0, grammar.detok.problems
    assert len(notes) > 500
    # The seed leaves the lead in force (MidiTok orders any before lead at one position).
    assert roles > 0 or role == "lead"
    assert all(40 <= n.pitch <= 84 for n in notes)
    assert _max_sounding(notes) <= 4
    if role is None:
        assert {n.role for n in notes} == {"any", "lead", "accompaniment"}
    else:
        assert {n.role for n in notes} == {role}
