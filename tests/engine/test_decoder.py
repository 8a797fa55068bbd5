"""The decoder on a tiny exported model: cache reuse, sliding, batching, starts and ends."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from engine.decoder import StyleDecoder
from engine.generation import Generation
from engine.model import load_model
from models.core.exceptions import EngineError
from models.core.notes import Note
from models.core.protocol.messages import Constraints, GenerateRequest, SamplingParams
from models.core.settings import EngineSettings

SCALE = (0, 2, 4, 5, 7, 9, 11)


@pytest.fixture(scope="module")
def model(tiny_onnx_model):
    return load_model(tiny_onnx_model)


def _decoder(model, **settings) -> StyleDecoder:
    return StyleDecoder(model, EngineSettings(**settings), allow_eos=False)


def _seed(count: int = 10, start: float = 4.0) -> tuple[Note, ...]:
    return tuple(Note(start + 0.5 * i, 0.5, 60 + (i * 3) % 12, 80) for i in range(count))


def _run(decoder: StyleDecoder, gens: list[Generation]) -> list[list[Note]]:
    return decoder.decode_until_done(gens)


def _request(notes=None, start=8.0, bars=2, **sampling) -> GenerateRequest:
    return GenerateRequest(seed=_seed() if notes is None else notes, start_beat=start, bars=bars,
                           sampling=SamplingParams(**{"seed": 1, **sampling}))


def test_prefix_reuse_gives_the_same_tokens_as_a_fresh_prefill(model):
    # Short responses (a token bound) so that no cache slides in this test.
    warm = _decoder(model, max_tokens_per_bar=12)
    first = warm.start("jam", _request(notes=_seed(8), start=8.0, bars=1, greedy=True))
    _run(warm, [first])
    assert not first.slid
    # The player kept playing: the seed grew, so the cached prompt is a prefix.
    grown = _request(notes=_seed(14), start=12.0, greedy=True)
    reused = warm.start("jam", grown)
    assert reused.reused_tokens > 10
    assert reused.prefill_tokens < len(reused.stream)
    fresh_decoder = _decoder(model, max_tokens_per_bar=12)
    fresh = fresh_decoder.start("other", grown)
    assert fresh.reused_tokens == 0
    np.testing.assert_allclose(reused.logits, fresh.logits, atol=1e-4)
    notes_reused = _run(warm, [reused])[0]
    notes_fresh = _run(fresh_decoder, [fresh])[0]
    assert reused.stream == fresh.stream
    assert notes_reused == notes_fresh


def test_batched_decoding_equals_one_by_one(model):
    requests = [_request(notes=_seed(4), start=6.0, bars=2, seed=3, temperature=0.9),
                _request(notes=_seed(12), start=10.0, bars=3, seed=4),
                _request(notes=(), start=0.0, bars=1, seed=5, top_k=20)]
    alone = []
    for index, request in enumerate(requests):
        decoder = _decoder(model)
        gen = decoder.start(f"s{index}", request)
        alone.append((_run(decoder, [gen])[0], gen.stream, gen.reason))
    decoder = _decoder(model)
    gens = [decoder.start(f"s{i}", r) for i, r in enumerate(requests)]
    together = _run(decoder, gens)
    for (notes, stream, reason), gen, batched_notes in zip(alone, gens, together, strict=True):
        assert gen.stream == stream
        assert batched_notes == notes
        assert gen.reason == reason
    # The generations ended at different steps: the batch shrank while decoding.
    assert len({len(g.stream) for g in gens}) == 3


@pytest.mark.parametrize(("time_signature", "start", "bars", "end"),
                         [((4, 4), 9.5, 2, 16.0), ((3, 4), 7.5, 2, 12.0),
                          ((6, 8), 3.0, 1, 6.0)], ids=["4/4", "3/4", "6/8"])
def test_a_response_starts_on_the_requested_beat_and_stops_after_its_bars(
        model, time_signature, start, bars, end):
    request = GenerateRequest(seed=_seed(6, start=1.0), start_beat=start, bars=bars,
                              time_signature=time_signature, sampling=SamplingParams(seed=9))
    # A random model crowds its bars; a loose token bound lets it reach the end.
    decoder = _decoder(model, max_tokens_per_bar=2048)
    gen = decoder.start("s", request)
    notes = _run(decoder, [gen])[0]
    assert gen.reason == "complete"
    assert notes, "the forced start position is followed by a note"
    assert notes[0].onset == pytest.approx(start)
    assert all(start - 1e-9 <= n.onset < end for n in notes)
    assert gen.grammar.detok.skipped == 0


def test_the_window_slides_past_the_context_and_keeps_decoding(model):
    context = model.context_length
    decoder = _decoder(model, sink_tokens=4, slide_fraction=0.25)
    request = _request(notes=_seed(6), start=4.0, bars=64, seed=2)
    gen = decoder.start("long", request)
    notes: list[Note] = []
    while not gen.done and gen.tokens < 3 * context:
        decoder.step([gen])
        notes.extend(gen.drain_notes())
    assert gen.tokens >= 3 * context or gen.reason == "complete"
    assert gen.slid
    assert gen.cache_len <= context
    assert gen.next_position > context  # absolute positions kept counting
    late = [n for n in notes if n.onset > notes[len(notes) // 2].onset]
    assert late, "notes keep coming after the slides"
    assert gen.grammar.detok.skipped == 0
    assert all(a.onset <= b.onset for a, b in itertools.pairwise(notes))


def test_ten_thousand_model_tokens_under_constraints_decode_and_honour_them(model):
    constraints = Constraints(pitch_min=55, pitch_max=79, scale=SCALE, max_polyphony=2)
    decoder = _decoder(model)
    total, notes, gens = 0, [], []
    for round_ in range(100):
        if total >= 10_000:
            break
        gens = [decoder.start(f"s{i}", GenerateRequest(
            seed=_seed(8), start_beat=8.0 + round_, bars=16, constraints=constraints,
            sampling=SamplingParams(seed=round_ * 10 + i, temperature=1.3)))
            for i in range(4)]
        for out in _run(decoder, gens):
            notes.extend(out)
        total += sum(g.tokens for g in gens)
        assert all(g.grammar.detok.skipped == 0 for g in gens)
    assert total >= 10_000
    assert all(55 <= n.pitch <= 79 for n in notes)
    assert {n.pitch % 12 for n in notes} <= set(SCALE)


def test_cancel_ends_a_generation_and_keeps_its_cache(model):
    decoder = _decoder(model)
    gen = decoder.start("s", _request(bars=8))
    for _ in range(5):
        decoder.step([gen])
    decoder.cancel(gen)
    tokens = gen.tokens
    decoder.step([gen])
    assert gen.done and gen.reason == "cancelled" and gen.tokens == tokens
    assert decoder.cached_sessions == 1


def test_max_tokens_bounds_a_response(model):
    decoder = _decoder(model, max_tokens_per_bar=8)
    gen = decoder.start("s", _request(bars=2))
    _run(decoder, [gen])
    assert gen.reason == "max_tokens"
    assert gen.tokens == 16


def test_a_long_seed_is_trimmed_to_whole_bars_and_still_starts_on_time(model):
    seed = tuple(Note(0.25 * i, 0.25, 50 + i % 20, 70) for i in range(400))  # 100 beats
    decoder = _decoder(model)
    gen = decoder.start("s", GenerateRequest(seed=seed, start_beat=100.0, bars=1,
                                             sampling=SamplingParams(seed=0)))
    assert len(gen.stream) <= model.context_length
    notes = _run(decoder, [gen])[0]
    assert notes[0].onset == pytest.approx(100.0)
    assert all(100.0 <= n.onset < 104.0 for n in notes)


@pytest.mark.torch
def test_greedy_output_equals_greedy_pytorch(model, tiny_checkpoint):
    """Every greedy token through the engine is the argmax of PyTorch's logits (same mask)."""
    torch = pytest.importorskip("torch")
    from models.train.checkpoint import load_checkpoint  # noqa: PLC0415 - needs torch

    torch_model = load_checkpoint(tiny_checkpoint).model
    decoder = _decoder(model, max_tokens_per_bar=40)
    request = _request(notes=_seed(10), start=10.0, bars=2, greedy=True)
    gen = decoder.start("s", request)
    prompt = len(gen.stream)
    _run(decoder, [gen])
    assert gen.tokens > 20 and not gen.slid
    stream = gen.stream
    with torch.no_grad():  # the whole stream at once: no cache on the PyTorch side
        logits, _ = torch_model(torch.tensor([stream], dtype=torch.long))
    replay = decoder.start("replay", request)  # a fresh grammar fed with the same prompt
    assert replay.stream == stream[:prompt]
    grammar = replay.grammar
    for index in range(prompt, len(stream)):
        masked = np.where(grammar.allowed(), logits[0, index - 1].numpy(), -np.inf)
        assert stream[index] == int(np.argmax(masked)), f"token {index}"
        grammar.feed(stream[index])


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_recurrent_models_decode_and_reuse_their_state(tiny_onnx_factory, arch):
    model = load_model(tiny_onnx_factory(arch))
    assert model.cache_kind == "rnn"
    decoder = _decoder(model, max_tokens_per_bar=16)
    first = decoder.start("jam", _request(notes=_seed(8), start=8.0, bars=1, greedy=True))
    notes = _run(decoder, [first])[0]
    assert first.done and first.grammar.detok.skipped == 0
    assert notes, first.stream  # an answer with no note would prove nothing below
    assert notes[0].onset == pytest.approx(8.0)
    assert all(8.0 <= n.onset < 12.0 for n in notes)
    # The same request again extends nothing: the state is only reusable for a longer stream.
    again = decoder.start("jam", _request(notes=_seed(8), start=8.0, bars=1, greedy=True))
    _run(decoder, [again])
    assert again.stream == first.stream
    batch = [decoder.start(f"b{i}", _request(notes=_seed(4 + i), start=8.0, seed=i))
             for i in range(3)]
    _run(decoder, batch)
    alone = _decoder(model, max_tokens_per_bar=16)
    single = alone.start("x", _request(notes=_seed(5), start=8.0, seed=1))
    _run(alone, [single])
    assert single.stream == batch[1].stream


def test_a_generation_left_out_of_a_step_keeps_its_logits(model):
    # The step's logits land in one bound buffer; a generation the caller leaves out of
    # a step must keep the logits of its own last step, not an idle row's.
    decoder = _decoder(model)
    a = decoder.start("a", _request(seed=5))
    b = decoder.start("b", _request(notes=_seed(6), seed=6))
    decoder.step([a, b])
    kept = a.logits.copy()
    binding = decoder._step_binding
    for _ in range(3):
        decoder.step([b])
    np.testing.assert_array_equal(a.logits, kept)
    assert decoder._step_binding is binding  # bound once, not per step
    alone = _decoder(model)
    a2 = alone.start("a", _request(seed=5))
    alone.step([a2])
    np.testing.assert_allclose(a.logits, a2.logits, atol=1e-4)


def test_a_long_prompt_in_chunks_plays_what_it_plays_in_one_go(model):
    request = _request(notes=_seed(60, start=0.0), start=32.0, bars=2, seed=7)
    whole = _decoder(model, prefill_chunk=0)
    chunked = _decoder(model, prefill_chunk=16)
    one = whole.start("jam", request)
    many = chunked.start("jam", request)
    assert one.prefill_tokens == many.prefill_tokens > 64
    assert many.prefill_rest and len(many.stream) == 16
    # Meanwhile another session keeps getting a token on every step.
    other = chunked.start("other", _request(notes=_seed(4), start=4.0, bars=2, seed=2))
    steps = 0
    while many.prefill_rest:
        before = other.tokens
        chunked.step([many, other])
        steps += 1
        assert many.tokens == 0
        assert other.tokens == before + 1 or other.done
    assert steps == -(-(one.prefill_tokens - 16) // 16)
    np.testing.assert_allclose(many.logits, one.logits, atol=1e-4)
    assert _run(chunked, [many])[0] == _run(whole, [one])[0]
    assert many.stream == one.stream


def test_a_generation_cancelled_mid_prompt_leaves_a_consistent_cache(model):
    request = _request(notes=_seed(60, start=0.0), start=32.0, bars=1, seed=9, greedy=True)
    decoder = _decoder(model, prefill_chunk=16, max_tokens_per_bar=12)
    first = decoder.start("jam", request)
    decoder.step([first])
    decoder.cancel(first)
    # The session's cache holds only what was run: the next request reuses that part.
    again = decoder.start("jam", request)
    assert 16 <= again.reused_tokens < again.prefill_tokens + again.reused_tokens
    fresh = _decoder(model, prefill_chunk=0, max_tokens_per_bar=12).start("x", request)
    while again.prefill_rest:
        decoder.step([again])
    np.testing.assert_allclose(again.logits, fresh.logits, atol=1e-4)


def test_warm_up_leaves_nothing_behind(model):
    warm = _decoder(model)
    warm.warm_up()
    assert warm.cached_sessions == 0
    assert warm.pool.used_rows() == 0
    request = _request(seed=11)
    fresh = _decoder(model)
    assert _run(warm, [warm.start("jam", request)]) == _run(fresh, [fresh.start("jam", request)])


def test_decode_until_done_collects_what_a_step_loop_collects(model):
    request = _request(seed=12)
    by_hand = _decoder(model)
    gen = by_hand.start("a", request)
    notes: list[Note] = []
    steps = 0
    while not gen.done:
        by_hand.step([gen])
        notes.extend(gen.drain_notes())
        steps += 1
    helper = _decoder(model)
    calls: list[int] = []
    again = helper.start("a", request)
    assert helper.decode_until_done([again], on_step=lambda: calls.append(1)) == [notes]
    assert len(calls) == steps
    assert again.stream == gen.stream


def test_a_row_call_gives_the_logits_of_a_whole_window(model):
    decoder = _decoder(model)
    gen = decoder.start("a", _request(seed=13))
    ids = [int(t) for t in gen.stream[:40]]
    full = model.forward(ids)
    assert full.shape == (len(ids), model.tokenizer.vocab_size)
    # The whole window into the row from position 0, as a full recompute.
    np.testing.assert_allclose(decoder.prefill(gen, ids, 0), full[-1], atol=1e-4)
    assert decoder.pool.lengths[gen.slot] == len(ids)
    # The last token alone after the others: a bound call that runs again and again.
    decoder.prefill(gen, ids[:-1], 0)
    call = decoder.bind_row(gen, ids[-1:], len(ids) - 1)
    for _ in range(2):
        np.testing.assert_allclose(call.run()[0, -1], full[-1], atol=1e-4)
    assert decoder.pool.lengths[gen.slot] == len(ids) - 1  # a bound call leaves it alone


def test_seek_sets_the_cache_length_the_next_step_attends_to(model):
    decoder = _decoder(model)
    gen = decoder.start("a", _request(seed=14))
    decoder.seek(gen, 100)
    decoder.step([gen])
    assert decoder.pool.lengths[gen.slot] == 101
    assert gen.next_position == gen.cache_len == 101
    decoder.seek(gen, model.context_length)  # a full row: the next step slides it
    decoder.step([gen])
    assert gen.slid
    with pytest.raises(EngineError, match=f"received {model.context_length + 1}"):
        decoder.seek(gen, model.context_length + 1)
