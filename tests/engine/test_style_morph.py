"""Style morph: an answer drawn from two styles' blended next-token distributions of one
style-conditioned model (``request.morph``; the engine runs a twin row per answer)."""

from __future__ import annotations

import dataclasses

import pytest

from engine.decoder import StyleDecoder
from engine.model import load_model
from models.core import protocol
from models.core.notes import Note
from models.core.protocol.messages import GenerateRequest, Morph, SamplingParams
from models.core.settings import EngineSettings

SEED = tuple(Note(0.5 * i, 0.5, 60 + (0, 4, 7, 12)[i % 4], 80) for i in range(8))


@pytest.fixture(scope="module")
def decoder(tiny_conditioned_onnx):
    model = load_model(tiny_conditioned_onnx, EngineSettings(intra_op_threads=1))
    return StyleDecoder(model, EngineSettings(intra_op_threads=1), allow_eos=False)


@pytest.fixture(scope="module")
def styles(decoder) -> tuple[str, str]:
    names = [n for n in decoder.tokenizer.style_slots if n]
    return names[0], names[1]


def _answer(decoder: StyleDecoder, style: str, morph: Morph | None, seed: int,
            session: str = "m") -> tuple[list[Note], object]:
    request = GenerateRequest(seed=SEED, start_beat=4.0, bars=2, style=style,
                              sampling=SamplingParams(seed=seed), morph=morph)
    gen = decoder.start(session, request)
    return decoder.decode_until_done([gen])[0], gen


def test_a_full_morph_plays_the_other_style_and_none_plays_its_own(decoder, styles):
    first, second = styles
    for seed in range(4):
        own, _ = _answer(decoder, first, None, seed)
        other, _ = _answer(decoder, second, None, seed)
        assert own != other or seed, "the tiny model plays the two styles alike"
        # Amount 1: the other style's distribution alone (the same draws, token for token).
        full, _ = _answer(decoder, first, Morph(second, 1.0), seed)
        assert full == other
        # Amount 0: no twin at all, the request's own style.
        none, gen = _answer(decoder, first, Morph(second, 0.0), seed)
        assert none == own and gen.twin is None


def test_a_half_morph_runs_a_twin_row_and_frees_it(decoder, styles):
    first, second = styles
    free_before = len(decoder.pool._free)
    blends = []
    for seed in range(6):
        request = GenerateRequest(seed=SEED, start_beat=4.0, bars=2, style=first,
                                  sampling=SamplingParams(seed=seed), morph=Morph(second, 0.5))
        gen = decoder.start(f"half{seed}", request)
        assert gen.twin is not None and gen.twin.slot not in (None, gen.slot)
        (notes,) = decoder.decode_until_done([gen])
        assert gen.twin is None  # released with the answer
        blends.append(notes)
    assert len(decoder.pool._free) == free_before
    plain = [_answer(decoder, first, None, seed)[0] for seed in range(6)]
    other = [_answer(decoder, second, None, seed)[0] for seed in range(6)]
    assert blends not in (plain, other)


def test_the_twin_reads_the_same_tokens_as_its_owner(decoder, styles):
    first, second = styles
    request = GenerateRequest(seed=SEED, start_beat=4.0, bars=1, style=first,
                              sampling=SamplingParams(seed=3), morph=Morph(second, 0.5))
    gen = decoder.start("same", request)
    twin = gen.twin
    for _ in range(12):
        decoder.step([gen])
        if gen.done:
            break
        # Prompts differ only in the style token; every token after them is shared.
        assert len(twin.stream) == len(gen.stream)
        assert twin.stream[2:] == gen.stream[2:] and twin.stream[1] != gen.stream[1]
    decoder.cancel(gen)


def test_morph_crosses_the_wire_and_is_checked():
    request = dataclasses.replace(GenerateRequest(seed=(), start_beat=4.0, style="folk"),
                                  morph=Morph("romantic", 0.25))
    message = protocol.GenerateMessage(id="g", session="s", request=request)
    assert protocol.decode_request(protocol.encode(message)).request.morph == request.morph
    frame = message.to_json()
    for bad, needle in (({"style": "romantic", "amount": 1.5}, "morph.amount"),
                        ({"style": "", "amount": 0.5}, "morph.'style'"),
                        ({"style": "romantic"}, "morph.amount"),
                        ({"style": "romantic", "amount": 0.5, "x": 1}, "unknown field")):
        frame["morph"] = bad
        with pytest.raises(protocol.ProtocolError, match=needle):
            protocol.parse_request(frame)


def test_a_morph_prefilled_in_chunks_by_the_server_plays_the_same(decoder, styles):
    """The server starts without running a chunk (``prefill=False``) and the twin's
    prompt runs chunk by chunk with its owner's: the answer is the same."""
    first, second = styles
    request = GenerateRequest(seed=SEED, start_beat=4.0, bars=2, style=first,
                              sampling=SamplingParams(seed=11), morph=Morph(second, 0.4))
    at_once = decoder.decode_until_done([decoder.start("chunks-a", request)])[0]
    chunked_decoder = StyleDecoder(decoder.model, dataclasses.replace(
        decoder.settings, prefill_chunk=8), allow_eos=False)
    gen = chunked_decoder.start("chunks-b", request, prefill=False)
    assert gen.twin is not None and len(gen.twin.prefill_rest) > 8
    assert chunked_decoder.decode_until_done([gen])[0] == at_once


def test_best_of_n_forks_each_candidate_with_its_own_twin(decoder, styles):
    """Every candidate of a morphing answer reads its tokens into a twin row of its own;
    the winner's twin carries on, the others' rows come back."""
    first, second = styles
    free_before = len(decoder.pool._free)
    request = GenerateRequest(seed=SEED, start_beat=4.0, bars=2, style=first,
                              sampling=SamplingParams(seed=2), morph=Morph(second, 0.5),
                              candidates=protocol.Candidates(3))
    gen = decoder.start("forked", request)
    saw_fork = False
    while not gen.done:
        decoder.step([gen])
        if gen.branches is not None:
            saw_fork = True
            twins = [b.twin for b in gen.branches]
            assert all(t is not None for t in twins)
            assert len({t.slot for t in twins} | {b.slot for b in gen.branches}) == 6
            for branch in gen.branches:
                assert branch.twin.stream[2:] == branch.stream[2:]
    assert saw_fork and gen.choices
    assert len(decoder.pool._free) == free_before


def test_a_morph_runs_one_prompt_chunk_per_step(decoder, styles):
    """The server bounds the prompt tokens per step (other sessions wait for them): a
    morphing answer runs its own prompt's chunks, then its twin's, one a step."""
    first, second = styles
    chunked = StyleDecoder(decoder.model, dataclasses.replace(decoder.settings,
                                                              prefill_chunk=8),
                           allow_eos=False)
    request = GenerateRequest(seed=SEED, start_beat=4.0, bars=1, style=first,
                              sampling=SamplingParams(seed=1), morph=Morph(second, 0.5))
    gen = chunked.start("one-chunk", request, prefill=False)

    def left() -> int:
        return len(gen.prefill_rest) + len(gen.twin.prefill_rest)

    total, steps = left(), 0
    while left():
        before = left()
        chunked.step([gen])
        steps += 1
        assert 0 < before - left() <= 8
        assert gen.tokens == 0  # nothing is sampled before both prompts are in
    assert steps == -(-len(gen.stream) // 8) + -(-len(gen.twin.stream) // 8)
    assert total == len(gen.stream) + len(gen.twin.stream)
    chunked.cancel(gen)
