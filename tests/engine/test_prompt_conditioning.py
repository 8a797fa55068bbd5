"""The prompt and decoding of a style- and role-conditioned model (and of an old one)."""

from __future__ import annotations

import pytest

from engine.grammar import VocabularyMasks
from engine.prompt import build_prompt
from models.core.notes import Note
from models.core.protocol.messages import Constraints, GenerateRequest, SamplingParams
from models.core.protocol.parse import parse_generate
from models.core.settings import TokensSettings
from models.core.streaming import StreamingDetokenizer
from models.core.tokenizer import MelodyTokenizer

SEED = (Note(0.0, 1.0, 72, 80, "lead"), Note(0.0, 2.0, 48, 70, "accompaniment"),
        Note(1.0, 1.0, 74, 80, "lead"), Note(2.0, 2.0, 53, 70, "accompaniment"))


@pytest.fixture(scope="module")
def conditioned() -> MelodyTokenizer:
    return MelodyTokenizer(TokensSettings(style_slots=8, styles=("baroque", "romantic"),
                                          roles=True))


def _prompt(tokenizer: MelodyTokenizer, style: str, seed=SEED, **constraints):
    request = GenerateRequest(seed=seed, start_beat=4.0, bars=1, style=style,
                              constraints=Constraints(**constraints))
    return build_prompt(tokenizer, VocabularyMasks.build(tokenizer), request, max_tokens=512)


@pytest.mark.parametrize(("style", "slot"), [("romantic", 2), ("baroque", 1), ("any", 0),
                                              ("tiny-conditioned", 0)])
def test_the_prompt_starts_with_the_style_token(conditioned, style, slot):
    prompt = _prompt(conditioned, style)
    assert prompt.tokens[0] == conditioned.bos_id
    assert conditioned.tokens[prompt.tokens[1]] == f"Style_{slot}"
    assert prompt.tokens[2] == conditioned.bar_id
    assert prompt.grammar.detok.style == slot
    assert prompt.grammar.detok.skipped == 0


def test_the_prompt_keeps_the_seed_s_roles(conditioned):
    prompt = _prompt(conditioned, "romantic")
    notes = StreamingDetokenizer(conditioned).feed_many(prompt.tokens)
    assert sorted((n.onset, n.pitch, n.role) for n in notes) == sorted(
        (n.onset, n.pitch, n.role) for n in SEED)


def test_an_old_vocabulary_gets_the_old_prompt():
    tokenizer = MelodyTokenizer()
    prompt = _prompt(tokenizer, "romantic")
    assert prompt.tokens[:2] == [tokenizer.bos_id, tokenizer.bar_id]
    plain = tuple(Note(n.onset, n.duration, n.pitch, n.velocity) for n in SEED)
    # Roles make no difference to a vocabulary without them.
    assert _prompt(tokenizer, "romantic", seed=plain).tokens == prompt.tokens
    assert not any(tokenizer.tokens[t].startswith(("Style", "Role")) for t in prompt.tokens)


def test_roles_travel_in_requests_to_the_prompt(conditioned):
    message = parse_generate({
        "v": 1, "type": "generate", "id": "g1", "session": "s", "style": "romantic",
        "seed": [{"onset": 0.0, "duration": 1.0, "pitch": 72, "velocity": 80, "role": "lead"},
                 {"onset": 0.0, "duration": 2.0, "pitch": 48, "velocity": 70}],
        "start_beat": 4.0, "bars": 1, "constraints": {"role": "accompaniment"}})
    request = message.request
    assert [n.role for n in request.seed] == ["lead", "any"]
    assert request.constraints.role == "accompaniment"
    prompt = build_prompt(conditioned, VocabularyMasks.build(conditioned), request, 512)
    texts = [conditioned.tokens[t] for t in prompt.tokens]
    assert texts[:2] == ["BOS_None", "Style_2"]
    assert "Role_lead" in texts and "Role_any" in texts


# ----------------------------------------------------------------- a tiny conditioned model
@pytest.fixture(scope="module")
def conditioned_model(tiny_conditioned_onnx):
    from engine.model import load_model  # noqa: PLC0415

    return load_model(tiny_conditioned_onnx)


def _generate(model, request: GenerateRequest) -> tuple[list[Note], list[int]]:
    from engine.decoder import StyleDecoder  # noqa: PLC0415
    from models.core.settings import EngineSettings  # noqa: PLC0415

    decoder = StyleDecoder(model, EngineSettings(), allow_eos=False)
    gen = decoder.start("jam", request)
    notes: list[Note] = []
    for _ in range(10_000):
        if gen.done:
            break
        decoder.step([gen])
        notes.extend(gen.drain_notes())
    assert gen.done
    return notes, gen.stream


@pytest.mark.parametrize("role", ["accompaniment", "lead"])
def test_a_role_constrained_generation_yields_only_that_role(conditioned_model, role):
    tokenizer = conditioned_model.tokenizer
    assert tokenizer.style_slots["romantic"] == 2
    request = GenerateRequest(seed=SEED, start_beat=4.0, bars=4, style="romantic",
                              sampling=SamplingParams(temperature=1.3, seed=5),
                              constraints=Constraints(role=role, max_polyphony=6))
    notes, stream = _generate(conditioned_model, request)
    assert stream[:2] == [tokenizer.bos_id, tokenizer.style_id("romantic")]
    assert len(notes) >= 4
    assert {n.role for n in notes} == {role}
    assert all(4.0 <= n.onset < 20.0 for n in notes)
    # The whole stream (seed and answer) decodes without a skip, roles and all.
    detok = StreamingDetokenizer(tokenizer)
    replayed = detok.feed_many(stream)
    assert detok.skipped == 0, detok.problems
    assert {n.role for n in replayed if n.onset >= 4.0} == {role}


def test_an_unconstrained_conditioned_generation_may_mix_roles(conditioned_model):
    request = GenerateRequest(seed=SEED, start_beat=4.0, bars=4, style="baroque",
                              sampling=SamplingParams(temperature=1.5, seed=2))
    notes, stream = _generate(conditioned_model, request)
    assert conditioned_model.tokenizer.tokens[stream[1]] == "Style_1"
    assert notes and {n.role for n in notes} <= {"any", "lead", "accompaniment"}


def test_the_card_records_the_style_slots(conditioned_model):
    assert conditioned_model.card.style_slots == {"any": 0, "baroque": 1, "romantic": 2,
                                                  "pop": 3}
    assert conditioned_model.card.style_slots == conditioned_model.tokenizer.style_slots
