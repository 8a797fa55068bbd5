"""Nothing one request needs runs in one long piece on the engine's thread: prompts are
prefilled in chunks that take turns with other sessions and their pings, the cache pool
never grows (copies) while serving, the read loop stops once its budget is spent whatever
it reads, and the heap left by start-up is frozen so full collections stay short.

No test here measures time: each checks the order or count of the work instead."""

from __future__ import annotations

import argparse
import gc
import json

import zmq
from server_rig import Client, generate

import engine.server as server_module
from engine import server_cli
from engine.decoder import StyleDecoder
from engine.model import load_model
from models.core import protocol
from models.core.notes import Note
from models.core.protocol.messages import GenerateRequest, SamplingParams
from models.core.settings import EngineSettings

# 96 notes, one per eighth over 12 bars: a prompt of several 8-token chunks.
LONG_SEED = [{"onset": 0.5 * i, "duration": 0.5, "pitch": 50 + i % 24, "velocity": 80}
             for i in range(96)]


def _long(request_id: str, style: str, session: str) -> dict:
    return generate(request_id, style, session=session, seed=LONG_SEED, start_beat=48.0,
                    bars=1, sampling={"greedy": True})


def _log_work(server, style: str) -> list[str]:
    """Record, in order, each prompt chunk run, each decoding step and each ping answered."""
    events: list[str] = []
    decoder = server.decoders[style]
    real_prefill, real_step, real_dispatch = decoder.prefill, decoder.step, server._dispatch

    def prefill(gen, tokens, past):
        events.append(f"chunk {gen.id}")
        return real_prefill(gen, tokens, past)

    def step(generations):
        events.append("step")
        return real_step(generations)

    def dispatch(identity, request):
        if isinstance(request, protocol.PingRequest):
            events.append("ping")
        return real_dispatch(identity, request)

    decoder.prefill, decoder.step, server._dispatch = prefill, step, dispatch
    return events


def test_long_prompts_take_turns_one_chunk_per_step_between_pings(start_server, context,
                                                                   style):
    server = start_server(EngineSettings(prefill_chunk=8))
    events = _log_work(server, style)
    player = Client(context, server.endpoint)
    other = Client(context, server.endpoint)
    for name in ("a", "b", "c"):
        player.send(_long(name, style, session=name))
    # The other session pings each time it hears from the engine, until all three ended.
    done = 0
    other.send({"v": 1, "type": "ping", "t": 0})
    poller = zmq.Poller()
    poller.register(player.sock, zmq.POLLIN)
    poller.register(other.sock, zmq.POLLIN)
    while done < 3:
        ready = dict(poller.poll(20_000))
        assert ready, "the engine went silent"
        if other.sock in ready:
            assert json.loads(other.sock.recv())["type"] == "pong"
            other.send({"v": 1, "type": "ping", "t": 0})
        if player.sock in ready:
            done += json.loads(player.sock.recv())["type"] == "done"
    # Starting a generate runs no prompt chunk: every chunk runs in a step of its own.
    steps = [i for i, e in enumerate(events) if e == "step"]
    chunks = [i for i, e in enumerate(events) if e.startswith("chunk")]
    assert len(chunks) >= 3 * 5, "the prompts were not prefilled in chunks"
    assert all(any(s == c - 1 for s in steps) for c in chunks), "a chunk ran outside a step"
    # The prompts take turns: first a's chunks, then b's, then c's, one per step.
    owners = [events[i].split()[1] for i in chunks]
    assert owners == sorted(owners), owners
    # The other session's pings were answered between the chunks, not after them all.
    pings = [i for i, e in enumerate(events) if e == "ping"]
    between = [p for p in pings if chunks[0] < p < chunks[-1]]
    assert len(between) >= 3, events


def test_a_ping_is_answered_between_the_chunks_of_one_long_prompt(start_server, context,
                                                                  style):
    """The ping is sent when the first chunk runs, so it must be answered before the last
    one (were the prompt run in one piece, it would wait for all of it)."""
    server = start_server(EngineSettings(prefill_chunk=8))
    events = _log_work(server, style)
    decoder = server.decoders[style]
    other = Client(context, server.endpoint)
    logged_prefill = decoder.prefill

    def prefill(gen, tokens, past):
        if not any(e.startswith("chunk") for e in events):
            # Sent from the engine's thread while the test thread only waits below.
            other.send({"v": 1, "type": "ping", "t": 1})
        return logged_prefill(gen, tokens, past)

    decoder.prefill = prefill
    player = Client(context, server.endpoint)
    player.send(_long("long", style, session="p"))
    _, done = player.stream("long")
    assert other.recv()["type"] == "pong"
    chunks = [i for i, e in enumerate(events) if e.startswith("chunk")]
    assert len(chunks) >= 5 and done["prefill_tokens"] > 8 * 4
    assert chunks[0] < events.index("ping") < chunks[-1], events


def test_a_start_runs_no_model_call_when_the_server_asks(tiny_onnx_model):
    decoder = StyleDecoder(load_model(tiny_onnx_model), EngineSettings(prefill_chunk=8))
    calls = []
    real_prefill = decoder.prefill
    decoder.prefill = lambda *a: calls.append(a) or real_prefill(*a)
    request = GenerateRequest(seed=tuple(Note(0.5 * i, 0.5, 60 + i % 12, 80)
                                         for i in range(40)), start_beat=24.0, bars=1,
                              sampling=SamplingParams(greedy=True))
    deferred = decoder.start("s", request, prefill=False)
    assert calls == [] and deferred.logits is None
    assert deferred.stream == [] and len(deferred.prefill_rest) == deferred.prefill_tokens
    eager = decoder.start("t", request)
    assert len(calls) == 1 and eager.logits is not None
    # The same prompt in the same chunks: the same greedy notes.
    notes = decoder.decode_until_done([deferred])[0]
    assert notes and notes == decoder.decode_until_done([eager])[0]


def test_the_pool_holds_max_active_rows_without_moving(tiny_onnx_model):
    """Growing the pool copies every row on the engine's thread: it never grows while
    at most ``max_active`` generations run."""
    decoder = StyleDecoder(load_model(tiny_onnx_model), EngineSettings(max_active=9))
    moves = decoder.pool.generation
    request = GenerateRequest(seed=(Note(0.0, 1.0, 60, 80),), start_beat=4.0, bars=1)
    generations = [decoder.start(f"s{i}", request) for i in range(9)]
    assert decoder.pool.generation == moves
    assert sorted(g.slot for g in generations) == list(range(9))


def test_a_spent_budget_stops_reading_whatever_the_requests(start_server, context,
                                                            monkeypatch):
    """Invalid requests cost their parsing too: once the budget is spent, the rest wait
    for the next iteration (a ping behind a flood waits one iteration, not all)."""
    monkeypatch.setattr(server_module, "_START_BUDGET_S", 0.0)
    server = start_server()
    real_handle, real_iterate = server._handle, server._iterate
    iteration = [0]
    handled: list[int] = []

    def counting_iterate() -> None:
        iteration[0] += 1
        real_iterate()

    def counting_handle(identity, frame):
        handled.append(iteration[0])
        return real_handle(identity, frame)

    server._iterate, server._handle = counting_iterate, counting_handle
    client = Client(context, server.endpoint)
    for _ in range(3):
        client.send(b"{not json")
    for _ in range(3):
        assert client.recv()["code"] == "bad_json"
    assert len(set(handled)) == 3, "two requests read in one iteration past the budget"


def test_the_engine_command_freezes_the_start_up_heap(monkeypatch):
    frozen: list[int] = []

    class Server:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def serve(self) -> None:
            frozen.append(gc.get_freeze_count())

        def stop(self) -> None:
            pass

    monkeypatch.setattr(server_cli, "load_decoders", lambda *a: {"x": object()})
    monkeypatch.setattr(server_cli, "EngineServer", Server)
    parser = argparse.ArgumentParser()
    server_cli.add_arguments(parser)
    gc.unfreeze()
    try:
        assert server_cli.run(parser.parse_args(["--bind", "tcp://127.0.0.1:5999"])) == 0
    finally:
        gc.unfreeze()
    assert frozen and frozen[0] > 0
