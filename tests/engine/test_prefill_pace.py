"""Prompt chunks sized to a time budget (``engine.pace``): a slower token makes a smaller
chunk, never below the minimum, and the decoder and the server's turn-taking use it.

No test measures time: the pace is fed the durations, or told a budget no call can meet.
"""

from __future__ import annotations

import pytest

from engine.decoder import StyleDecoder
from engine.model import load_model
from engine.pace import MIN_CHUNK_TOKENS, PrefillPace
from models.core.notes import Note
from models.core.protocol.messages import GenerateRequest, SamplingParams
from models.core.settings import EngineSettings


def test_a_chunk_is_the_most_tokens_until_a_call_was_measured():
    pace = PrefillPace(64, 0.015)
    assert pace.chunk(500) == 64 and pace.chunk(10) == 10 and pace.step_tokens == 64


def test_a_chunk_fits_the_budget_at_the_measured_cost_of_a_token():
    pace = PrefillPace(64, 0.015)
    pace.record(64, 0.030)  # 0.47 ms a token: 32 tokens fit 15 ms
    assert pace.chunk(500) == 32 and pace.step_tokens == 32
    for _ in range(30):
        pace.record(32, 0.003)  # the machine got faster: back to the most
    assert pace.chunk(500) == 64


def test_a_slow_machine_still_gets_the_minimum_chunk():
    pace = PrefillPace(64, 0.015)
    pace.record(64, 6.4)  # 100 ms a token
    assert pace.chunk(500) == MIN_CHUNK_TOKENS
    assert pace.chunk(3) == 3


def test_one_slow_call_does_not_take_the_whole_measurement():
    pace = PrefillPace(64, 0.015)
    pace.record(32, 0.008)
    pace.record(32, 0.080)  # one preempted call, ten times slower
    assert MIN_CHUNK_TOKENS < pace.chunk(500) < 32


def test_short_calls_do_not_count():
    """A 2-token tail is mostly the call's fixed cost: it must not shrink the next chunk."""
    pace = PrefillPace(64, 0.015)
    pace.record(2, 0.050)
    assert pace.seconds_per_token is None and pace.chunk(500) == 64


@pytest.mark.parametrize(("max_tokens", "budget", "expected"), [(0, 0.015, 500), (64, 0.0, 64)])
def test_no_chunking_or_no_time_budget(max_tokens, budget, expected):
    pace = PrefillPace(max_tokens, budget)
    pace.record(64, 6.4)
    assert pace.chunk(500) == expected


def _long_request() -> GenerateRequest:
    seed = tuple(Note(0.5 * i, 0.5, 50 + i % 24, 80) for i in range(96))
    return GenerateRequest(seed=seed, start_beat=48.0, bars=1,
                           sampling=SamplingParams(greedy=True))


def test_the_decoder_shrinks_its_chunks_to_a_budget_no_call_meets(tiny_onnx_model):
    """With a budget of a microsecond, the first chunk (nothing measured yet) is the most
    tokens and every later one the minimum; the notes are those of an unchunked prompt."""
    settings = EngineSettings(prefill_chunk=32, prefill_chunk_ms=0.001)
    decoder = StyleDecoder(load_model(tiny_onnx_model), settings)
    sizes: list[int] = []
    real_prefill = decoder.prefill
    decoder.prefill = lambda gen, tokens, past: sizes.append(len(tokens)) or real_prefill(
        gen, tokens, past)
    gen = decoder.start("s", _long_request(), prefill=False)
    notes = decoder.decode_until_done([gen])[0]
    assert sizes[0] == 32 and len(sizes) > 3
    assert all(size == MIN_CHUNK_TOKENS for size in sizes[1:-1]), sizes
    assert sum(sizes) == gen.prefill_tokens
    whole = StyleDecoder(load_model(tiny_onnx_model), EngineSettings(prefill_chunk=0))
    assert notes == whole.decode_until_done([whole.start("s", _long_request())])[0]


def test_prompts_take_turns_within_the_time_budget(start_server, context, style):
    """Two long prompts at once: while the budget fits only the minimum chunk, one of them
    runs a chunk per step (each step's prompt tokens within the budget)."""
    from server_rig import Client, generate  # noqa: PLC0415

    server = start_server(EngineSettings(prefill_chunk=64, prefill_chunk_ms=0.001))
    decoder = server.decoders[style]
    real_step = decoder.step
    per_step: list[tuple[int, int]] = []  # (prompts chunked, their tokens)

    def step(generations):
        chunked = [g for g in generations if g.prefill_rest]
        per_step.append((len(chunked),
                         sum(decoder.pace.chunk(len(g.prefill_rest)) for g in chunked)))
        real_step(generations)

    decoder.step = step
    seed = [{"onset": 0.5 * i, "duration": 0.5, "pitch": 50 + i % 24, "velocity": 80}
            for i in range(96)]
    client = Client(context, server.endpoint)
    for name in ("a", "b"):
        client.send(generate(name, style, session=name, seed=seed, start_beat=48.0, bars=1,
                             sampling={"greedy": True}))
    done = 0
    while done < 2:
        done += client.recv()["type"] == "done"
    later = per_step[1:]  # the first step runs before anything was measured
    assert any(count for count, _ in later)
    assert all(count <= 1 and tokens <= MIN_CHUNK_TOKENS for count, tokens in later), per_step
