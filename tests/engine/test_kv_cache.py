"""The in-place KV cache of the engine against independent references.

The references run the same model file through plain ``InferenceSession.run`` calls with
a compact cache that numpy concatenates and slides (the format-1 way), so the decoder's
pool, I/O binding, per-row lengths and in-place slide are checked against code that
shares none of them.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.cache import KVPool, window_feeds
from engine.decoder import StyleDecoder
from engine.generation import Generation
from engine.model import load_model
from models.core.notes import Note
from models.core.protocol.messages import GenerateRequest, SamplingParams
from models.core.settings import EngineSettings

FP32_ATOL = 1e-4
INT8_ATOL = 1e-3


@pytest.fixture(scope="module")
def model(tiny_onnx_model):
    return load_model(tiny_onnx_model)


def _decoder(model, **settings) -> StyleDecoder:
    return StyleDecoder(model, EngineSettings(**settings), allow_eos=False)


def _request(seed_notes: int, seed: int, bars: int = 8) -> GenerateRequest:
    notes = tuple(Note(0.5 * i, 0.5, 60 + (i * 5) % 12, 80) for i in range(seed_notes))
    return GenerateRequest(seed=notes, start_beat=float(seed_notes // 2 + 4), bars=bars,
                           sampling=SamplingParams(seed=seed, temperature=1.0))


def _record(decoder: StyleDecoder, gens: list[Generation], steps: int) -> list[list[np.ndarray]]:
    """The logits each generation had after its prefill and after each step."""
    seen = [[g.logits.copy()] for g in gens]
    for _ in range(steps):
        decoder.step(gens)
        for out, gen in zip(seen, gens, strict=True):
            if not gen.done:
                out.append(gen.logits.copy())
    return seen


class _Reference:
    """One row decoded with plain session.run and a compact, concatenated cache."""

    def __init__(self, model, sink: int, slide_fraction: float) -> None:
        self.model = model
        self.spec = model.card.cache
        self.context = model.context_length
        self.sink = min(sink, self.context // 4)
        self.drop = max(1, int(self.context * slide_fraction))
        self.cache = [np.zeros((1, self.spec.num_heads, 0, self.spec.head_dim), np.float32)
                      for _ in self.spec.inputs]
        self.position = 0

    def feed(self, tokens: list[int]) -> np.ndarray:
        """Logits after ``tokens`` (the last position)."""
        past = self.cache[0].shape[2]
        if past + len(tokens) > self.context:  # slide as the engine does
            drop = min(self.drop, past - self.sink)
            self.cache = [np.concatenate((c[:, :, :self.sink], c[:, :, self.sink + drop:]),
                                         axis=2) for c in self.cache]
            past -= drop
        seq = len(tokens)
        feeds = window_feeds(self.spec, np.asarray(tokens))
        feeds["position_ids"] = (self.position + np.arange(seq, dtype=np.int64))[None, :]
        feeds["seqlens_k"] = np.array([past + seq - 1], np.int32)
        feeds["total_sequence_length"] = np.array(past + seq, np.int32)
        buffers = [np.concatenate((c, np.zeros((1, c.shape[1], seq, c.shape[3]), np.float32)),
                                  axis=2) for c in self.cache]
        feeds.update(zip(self.spec.inputs, buffers, strict=True))
        outputs = self.model.session.run(None, feeds)
        self.cache = [o[:, :, :past + seq] for o in outputs[1:]]
        self.position += seq
        return outputs[0][0, -1]


def _replay(model, gen: Generation, prompt: int, sink: int = 4,
            slide_fraction: float = 0.25) -> list[np.ndarray]:
    ref = _Reference(model, sink, slide_fraction)
    out = [ref.feed(gen.stream[:prompt])]
    out += [ref.feed([token]) for token in gen.stream[prompt:]]
    return out


def test_in_place_cached_decoding_equals_the_full_pass(model) -> None:
    decoder = _decoder(model)
    gen = decoder.start("s", _request(8, seed=1))
    prompt = len(gen.stream)
    seen = _record(decoder, [gen], 60)[0]
    stream = np.asarray(gen.stream)
    (full,) = model.session.run(["logits"], window_feeds(model.card.cache, stream))
    for index, logits in enumerate(seen):
        np.testing.assert_allclose(logits, full[0, prompt - 1 + index], atol=FP32_ATOL, rtol=0)


def test_three_rows_of_different_lengths_each_get_their_solo_logits(model) -> None:
    requests = [_request(2, seed=3), _request(20, seed=4), _request(9, seed=5)]
    together = _decoder(model)
    gens = [together.start(f"s{i}", r) for i, r in enumerate(requests)]
    assert len({len(g.stream) for g in gens}) == 3  # different past lengths in one batch
    batched = _record(together, gens, 40)
    for index, request in enumerate(requests):
        alone = _decoder(model)
        solo_gen = alone.start("solo", request)
        solo = _record(alone, [solo_gen], 40)[0]
        assert solo_gen.stream == gens[index].stream
        for a, b in zip(batched[index], solo, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_a_row_left_out_of_a_step_keeps_its_cache(model) -> None:
    decoder = _decoder(model)
    gens = [decoder.start(f"s{i}", _request(6 + i, seed=i)) for i in range(3)]
    decoder.step(gens)
    decoder.step(gens[:2])  # the third rides along idle
    decoder.step(gens)
    for gen in gens:
        prompt = len(gen.stream) - gen.tokens
        replay = _replay(model, gen, prompt)
        np.testing.assert_allclose(gen.logits, replay[-1], atol=FP32_ATOL, rtol=0)


def test_sliding_past_the_context_matches_a_concatenating_reference(model) -> None:
    decoder = _decoder(model, sink_tokens=4, slide_fraction=0.25, max_tokens_per_bar=4096)
    gen = decoder.start("long", _request(6, seed=2, bars=64))
    prompt = len(gen.stream)
    steps = int(1.6 * model.context_length)
    seen = _record(decoder, [gen], steps)[0]
    assert gen.slid and gen.next_position > model.context_length
    replay = _replay(model, gen, prompt)
    assert len(replay) == len(seen)
    for index, (a, b) in enumerate(zip(seen, replay, strict=True)):
        np.testing.assert_allclose(a, b, atol=FP32_ATOL, rtol=0, err_msg=f"step {index}")


def test_prefix_reuse_copies_only_the_prefix_into_a_fresh_row(model) -> None:
    decoder = _decoder(model, max_tokens_per_bar=12)
    first = decoder.start("jam", _request(8, seed=1, bars=1))
    _record(decoder, [first], 30)
    assert first.done
    again = decoder.start("jam", _request(8, seed=1, bars=2))
    assert again.reused_tokens > 0
    fresh = _decoder(model).start("other", _request(8, seed=1, bars=2))
    np.testing.assert_allclose(again.logits, fresh.logits, atol=FP32_ATOL, rtol=0)


def test_pool_rows_grow_and_are_reused(model) -> None:
    pool = KVPool(model.card.cache, 32, rows=1)
    first = pool.acquire()
    pool.buffers[0][first, :, :3] = 1.0
    pool.lengths[first] = 3
    second = pool.acquire()  # grows to two rows, keeping the first row's entries
    assert (first, second) == (0, 1) and pool.rows == 2
    assert (pool.buffers[0][first, :, :3] == 1.0).all()
    pool.release(first)
    assert pool.acquire() == first and pool.used_rows() == 2
    saved = pool.save(second)
    assert saved[0].shape == (1, pool.spec.num_heads, 0, pool.spec.head_dim)


def test_int8_rows_are_the_same_alone_or_in_a_batch(tiny_onnx_int8_model) -> None:
    model = load_model(tiny_onnx_int8_model)
    assert model.card.quantization == "int8"
    requests = [_request(3, seed=7), _request(15, seed=8), _request(8, seed=9)]
    together = _decoder(model)
    gens = [together.start(f"s{i}", r) for i, r in enumerate(requests)]
    batched = _record(together, gens, 30)
    worst = 0.0
    for index, request in enumerate(requests):
        alone = _decoder(model)
        solo = _record(alone, [alone.start("solo", request)], 30)[0]
        for a, b in zip(batched[index], solo, strict=True):
            worst = max(worst, float(np.abs(a - b).max()))
    # Weight-only int8 computes in float32: no activation scale depends on the batch.
    assert worst <= 1e-5, worst


def test_int8_cached_decoding_equals_its_full_pass(tiny_onnx_int8_model) -> None:
    model = load_model(tiny_onnx_int8_model)
    decoder = _decoder(model)
    gen = decoder.start("s", _request(8, seed=1))
    prompt = len(gen.stream)
    seen = _record(decoder, [gen], 60)[0]
    (full,) = model.session.run(["logits"],
                                window_feeds(model.card.cache, np.asarray(gen.stream)))
    for index, logits in enumerate(seen):
        np.testing.assert_allclose(logits, full[0, prompt - 1 + index], atol=INT8_ATOL, rtol=0)
