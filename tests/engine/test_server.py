"""engine.server: the zmq service on a real tiny ONNX model, real sockets, real threads.

Every receive has a timeout and every socket lingers 0; each server runs in a thread on a
free loopback port and is stopped in teardown.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth

from engine import server_cli
from engine.decoder import StyleDecoder
from engine.keys import CurveKeys, choose_security, is_local_endpoint, make_keys
from engine.model import load_model
from engine.server import EngineServer
from models.core import protocol
from models.core.commands import load_commands
from models.core.exceptions import EngineError
from models.core.notes import Note
from models.core.protocol import GenerateRequest, parse_generate
from models.core.settings import EngineSettings

RECV_TIMEOUT_MS = 20_000  # generous: the machine is shared; a hang still fails
SEED = [{"onset": 0.0, "duration": 1.0, "pitch": 60, "velocity": 80},
        {"onset": 1.0, "duration": 1.0, "pitch": 64, "velocity": 80},
        {"onset": 2.0, "duration": 2.0, "pitch": 67, "velocity": 90}]


# --- helpers -----------------------------------------------------------------------------

class Client:
    """A DEALER with a timeout on every receive."""

    def __init__(self, context: zmq.Context, endpoint: str, *, curve: dict | None = None
                 ) -> None:
        self.sock = context.socket(zmq.DEALER)
        self.sock.linger = 0
        for option, value in (curve or {}).items():
            setattr(self.sock, option, value)
        self.sock.connect(endpoint)

    def send(self, message: Any) -> None:
        data = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.sock.send(data)

    def recv(self, timeout_ms: int = RECV_TIMEOUT_MS) -> dict[str, Any]:
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            raise TimeoutError(f"no reply within {timeout_ms} ms")
        return json.loads(self.sock.recv())

    def ask(self, message: Any) -> dict[str, Any]:
        self.send(message)
        return self.recv()

    def stream(self, request_id: str) -> tuple[list[Note], dict[str, Any]]:
        """Read one generate's notes until its ``done`` (other ids are not expected)."""
        notes: list[Note] = []
        while True:
            message = self.recv()
            assert message.get("id") == request_id, message
            if message["type"] == "done":
                return notes, message
            assert message["type"] == "notes", message
            notes.extend(Note(**n) for n in message["notes"])


def generate(request_id: str, style: str, **fields: Any) -> dict[str, Any]:
    message = {"v": 1, "type": "generate", "id": request_id, "session": "jam", "style": style,
               "seed": SEED, "start_beat": 4.0, "bars": 2}
    message.update(fields)
    return message


def alone(model_path: Path, style_request: dict[str, Any]) -> list[Note]:
    """The notes a fresh decoder produces for one request with nobody else running."""
    parsed = parse_generate(style_request)
    decoder = StyleDecoder(load_model(model_path), EngineSettings())
    generation = decoder.start(("solo", parsed.session), parsed.request, parsed.id)
    notes = list(generation.drain_notes())
    while not generation.done:
        decoder.step([generation])
        notes.extend(generation.drain_notes())
    return notes


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def start_server(tiny_onnx_model):
    """Start servers in threads on free loopback ports; stop them all in teardown."""
    started: list[tuple[EngineServer, threading.Thread]] = []

    def start(settings: EngineSettings | None = None, *, curve: CurveKeys | None = None,
              decoders: dict | None = None) -> EngineServer:
        settings = settings or EngineSettings()
        if decoders is None:
            model = load_model(tiny_onnx_model, settings)
            decoders = {model.style: StyleDecoder(model, settings)}
        server = EngineServer(decoders, settings, bind="tcp://127.0.0.1:*", curve=curve)
        thread = threading.Thread(target=server.serve, daemon=True)
        thread.start()
        assert server.ready.wait(30)
        if server.startup_error is not None:
            raise server.startup_error
        started.append((server, thread))
        return server

    yield start
    for server, thread in started:
        server.stop()
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop"


@pytest.fixture
def style(tiny_onnx_model) -> str:
    return load_model(tiny_onnx_model).style


# --- robustness --------------------------------------------------------------------------

def test_bad_messages_get_errors_and_the_engine_keeps_answering(start_server, context, style):
    server = start_server(dataclasses.replace(EngineSettings(), max_message_bytes=4096))
    client = Client(context, server.endpoint)
    cases = [
        (b"{not json", "bad_json"),
        (b"\xff\xfe\x00", "bad_json"),
        (b"[1, 2, 3]", "bad_json"),
        (b"12", "bad_json"),
        (b"x" * 5000, "too_large"),
        (json.dumps({"v": 1, "type": "generate", "pad": "x" * 5000}).encode(), "too_large"),
        ({"type": "ping"}, "bad_version"),
        ({"v": 2, "type": "ping"}, "bad_version"),
        ({"v": 1.0, "type": "ping"}, "bad_version"),
        ({"v": 1, "type": "launch"}, "unknown_type"),
        ({"v": 1, "type": "generate", "id": "g", "session": 3, "style": style,
          "start_beat": 0}, "invalid"),
        (generate("g", style, bars="two"), "invalid"),
        (generate("g", style, seed=[{"onset": 0, "duration": 1, "pitch": 300,
                                     "velocity": 80}]), "invalid"),
        (generate("g", style, sampling={"temperature": "hot"}), "invalid"),
        (generate("g", "no-such-style"), "unknown_style"),
        (generate("g", style, time_signature=[7, 4]), "unsupported"),
        ({"v": 1, "type": "cancel", "id": "c", "target": "nothing"}, "not_found"),
    ]
    for message, code in cases:
        reply = client.ask(message)
        assert reply["type"] == "error" and reply["code"] == code, (message, reply)
        assert reply["message"]
        assert client.ask({"v": 1, "type": "ping", "t": 7})["t"] == 7
    # An error echoes the id when the request had a readable one.
    reply = client.ask(generate("g42", style, bars=0))
    assert reply["id"] == "g42" and "received 0" in reply["message"]
    # A request of two frames is refused, not half-read.
    client.sock.send_multipart([b'{"v":1,"type":"ping"}', b"extra"])
    assert client.recv()["code"] == "bad_json"
    stats = client.ask({"v": 1, "type": "stats"})
    assert stats["errors"] == len(cases) + 2 and stats["active"] == 0


def test_an_exception_in_handling_costs_one_request(start_server, context, style):
    server = start_server()
    decoder = server.decoders[style]
    real_start = decoder.start

    def flaky_start(session_key, request, request_id=None):
        if request_id == "boom":
            raise RuntimeError("simulated bug")
        return real_start(session_key, request, request_id)

    decoder.start = flaky_start
    client = Client(context, server.endpoint)
    reply = client.ask(generate("boom", style))
    assert reply == {"v": 1, "type": "error", "id": "boom", "code": "internal",
                     "message": "internal engine error; the request was dropped"}
    client.send(generate("fine", style, sampling={"greedy": True}))
    _, done = client.stream("fine")
    assert done["reason"] in ("complete", "eos", "max_tokens")


def test_a_failing_decoding_step_ends_its_batch_with_internal(start_server, context, style):
    server = start_server()
    decoder = server.decoders[style]
    real_step = decoder.step
    failures = [1]

    def failing_step(generations) -> None:
        if failures:
            failures.pop()
            raise RuntimeError("simulated ONNX failure")
        real_step(generations)

    decoder.step = failing_step
    client = Client(context, server.endpoint)
    client.send(generate("a", style, sampling={"greedy": True}))
    reply = _next_of_type(client, "error")
    assert reply["id"] == "a" and reply["code"] == "internal"
    assert client.ask({"v": 1, "type": "stats"})["active"] == 0
    client.send(generate("b", style, sampling={"greedy": True}))
    assert client.stream("b")[1]["reason"] in ("complete", "eos", "max_tokens")


def test_a_note_that_cannot_be_sent_ends_only_its_stream(start_server, context, style):
    server = start_server()
    decoder = server.decoders[style]
    real_start = decoder.start

    def start_with_a_broken_note(session_key, request, request_id=None):
        generation = real_start(session_key, request, request_id)
        if request_id == "broken":
            real_drain = generation.drain_notes
            generation.drain_notes = lambda: [Note(float("nan"), 1.0, 60, 80), *real_drain()]
        return generation

    decoder.start = start_with_a_broken_note
    client = Client(context, server.endpoint)
    client.send(generate("broken", style, session="a", sampling={"greedy": True}))
    reply = _next_of_type(client, "error")
    assert reply["id"] == "broken" and reply["code"] == "internal"
    client.send(generate("fine", style, session="b", sampling={"greedy": True}))
    assert client.stream("fine")[1]["type"] == "done"
    assert client.ask({"v": 1, "type": "stats"})["active"] == 0


def test_hello_lists_styles_facts_and_limits(start_server, context, style):
    server = start_server()
    reply = Client(context, server.endpoint).ask({"v": 1, "type": "hello", "id": "h"})
    assert reply["type"] == "hello" and reply["id"] == "h" and reply["protocol"] == 1
    assert list(reply["styles"]) == [style]
    facts = reply["styles"][style]
    assert facts["arch"] == "gpt" and facts["context_length"] > 0 and facts["vocab_size"] > 0
    assert (facts["pitch_min"], facts["pitch_max"]) == (21, 108)
    limits = reply["limits"]
    assert limits["max_message_bytes"] == EngineSettings().max_message_bytes
    assert limits["max_seed_span_beats"] == protocol.MAX_SEED_SPAN_BEATS
    assert limits["max_start_distance_beats"] == protocol.MAX_START_DISTANCE_BEATS


# --- hostile requests: refused at once, never a stall or an ``internal`` ------------------

PING_WITHIN_S = 0.1  # the bound on how long one request may hold other sessions


def _ping_latency(client: Client) -> float:
    """Seconds from sending a ping to its pong (fails if no pong within the bound x 50)."""
    sent = time.perf_counter()
    client.send({"v": 1, "type": "ping", "t": sent})
    reply = client.recv(int(PING_WITHIN_S * 50 * 1000))
    assert reply == {"v": 1, "type": "pong", "t": sent}, reply
    return time.perf_counter() - sent


@pytest.mark.parametrize("fields, needle", [
    # The requests: a few hundred bytes that held the engine for 15-37 s.
    ({"seed": [{"onset": 0, "duration": 1, "pitch": 60, "velocity": 80}],
      "start_beat": 1e7, "time_signature": [3, 8]}, "start_beat 10000000"),
    ({"seed": [{"onset": 0, "duration": 1, "pitch": 60, "velocity": 80},
               {"onset": 4e6, "duration": 1, "pitch": 62, "velocity": 80}],
      "start_beat": 4e6 + 2}, "seed spans 4000001 beats"),
    ({"seed": [{"onset": 0, "duration": 4.5e6, "pitch": 60, "velocity": 80}],
      "start_beat": 4}, "seed[0].duration"),
], ids=["far-start", "huge-span", "huge-duration"])
def test_a_far_away_request_is_refused_at_once_and_others_are_answered(
        start_server, context, style, fields, needle):
    server = start_server()
    hostile, other = Client(context, server.endpoint), Client(context, server.endpoint)
    _ping_latency(hostile)  # both connected before the clock starts
    _ping_latency(other)
    sent = time.perf_counter()
    hostile.send(generate("far", style, **fields))
    latency = _ping_latency(other)
    reply = hostile.recv(int(PING_WITHIN_S * 50 * 1000))
    refused_after = time.perf_counter() - sent
    assert reply["type"] == "error" and reply["code"] == "invalid" and reply["id"] == "far"
    limits = (protocol.MAX_SEED_SPAN_BEATS, protocol.MAX_START_DISTANCE_BEATS)
    assert needle in reply["message"], reply
    assert any(f"{limit:g}" in reply["message"] for limit in limits), reply  # the limit shown
    assert latency < PING_WITHIN_S, f"pong after {latency * 1000:.0f} ms"
    assert refused_after < PING_WITHIN_S * 2, f"refused after {refused_after * 1000:.0f} ms"


def test_a_far_start_that_passes_validation_costs_no_more_than_a_near_one(tiny_onnx_model):
    # Beyond the protocol (the offline tools build requests too): the prompt never encodes
    # bars that the model's budget would drop, so the distance costs nothing.
    decoder = StyleDecoder(load_model(tiny_onnx_model), EngineSettings())
    seed = (Note(0.0, 1.0, 60, 80),)
    started = time.perf_counter()
    request = GenerateRequest(seed=seed, start_beat=1e6, time_signature=(3, 8))
    generation = decoder.start(("far", "jam"), request, "far")
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"start took {elapsed:.2f} s"  # ~8 s before the fix
    assert generation.prefill_tokens < 16


def test_huge_numbers_are_invalid_without_a_logged_traceback(start_server, context, style,
                                                             caplog):
    caplog.set_level(logging.DEBUG)
    server = start_server()
    client = Client(context, server.endpoint)
    base = json.dumps(generate("huge", style))[:-1]
    frames = [
        (base + ', "constraints": {"pitch_max": 1' + "0" * 400 + "}}").encode(),
        (base.replace('"start_beat": 4.0', '"start_beat": 1' + "0" * 320) + "}").encode(),
        (base.replace('"start_beat": 4.0', '"start_beat": ' + "9" * 5000) + "}").encode(),
        (base.replace('"start_beat": 4.0', '"start_beat": 1e400') + "}").encode(),
        b'{"v": 1, "type": "ping", "id": "p", "t": ' + b"1" * 400 + b"}",
        b'{"v": 1, "type": "ping", "id": "p", "t": ' + b"1" * 5000 + b"}",
    ]
    for data in frames:
        reply = client.ask(data)
        assert reply["type"] == "error" and reply["code"] == "invalid", reply
        assert reply["id"] in ("huge", "p") and len(reply["message"]) < 300, reply
        assert _ping_latency(client) < 5.0
    assert client.ask({"v": 1, "type": "stats"})["errors"] == len(frames)
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not loud, [r.getMessage() for r in loud]


@pytest.mark.parametrize("constraints, needle", [
    ({"pitch_min": 109, "pitch_max": 127}, "constraints.pitch_min must be within 21 and 108"),
    ({"pitch_max": 109}, "constraints.pitch_max must be within 21 and 108"),
    ({"pitch_min": 0, "pitch_max": 60}, "(received 0)"),
])
def test_a_pitch_range_outside_the_vocabulary_is_refused(start_server, context, style,
                                                           constraints, needle):
    server = start_server()
    reply = Client(context, server.endpoint).ask(generate("p", style, constraints=constraints))
    assert reply["type"] == "error" and reply["code"] == "invalid" and reply["id"] == "p"
    assert needle in reply["message"] and repr(style) in reply["message"], reply


def test_the_top_of_the_pitch_range_is_honoured(start_server, context, style):
    server = start_server()
    client = Client(context, server.endpoint)
    client.send(generate("top", style, bars=4, constraints={"pitch_min": 100, "pitch_max": 108},
                         sampling={"seed": 3}))
    notes, done = client.stream("top")
    assert done["type"] == "done" and notes
    assert all(100 <= note.pitch <= 108 for note in notes), notes


def test_a_request_at_a_large_song_position_is_answered(start_server, context, style):
    # Bar 2000 of a song: the same musical request as at bar 0, shifted by 8000 beats, gets
    # the same (greedy) answer shifted by 8000 beats.
    server = start_server()
    client = Client(context, server.endpoint)
    shift = 8000.0
    far_seed = [{**note, "onset": note["onset"] + shift} for note in SEED]
    client.send(generate("late", style, session="late", seed=far_seed, start_beat=shift + 8,
                         sampling={"greedy": True}))
    late, done = client.stream("late")
    assert done["reason"] in ("complete", "eos", "max_tokens") and late
    assert all(shift + 8 <= note.onset < shift + 16 for note in late), late
    client.send(generate("early", style, session="early", start_beat=8.0,
                         sampling={"greedy": True}))
    early, _ = client.stream("early")
    assert [dataclasses.replace(n, onset=n.onset + shift) for n in early] == late


# --- generation --------------------------------------------------------------------------

def test_stream_equals_the_decoder_alone(start_server, context, style, tiny_onnx_model):
    request = generate("g1", style, sampling={"greedy": True})
    expected = alone(tiny_onnx_model, request)
    server = start_server()
    client = Client(context, server.endpoint)
    client.send(request)
    notes, done = client.stream("g1")
    assert notes == expected
    assert done["notes"] == len(notes) and done["tokens"] > 0
    assert done["prefill_tokens"] > 0 and done["reused_tokens"] == 0
    assert all(note.onset >= 4.0 - 1e-9 for note in notes)


def test_two_clients_get_independent_correct_streams(start_server, context, style,
                                                     tiny_onnx_model):
    request_a = generate("same-id", style, sampling={"greedy": True})
    request_b = generate("same-id", style, seed=SEED[:1], start_beat=8.0, bars=3,
                         sampling={"seed": 11, "temperature": 1.2})
    expected_a = alone(tiny_onnx_model, request_a)
    expected_b = alone(tiny_onnx_model, request_b)
    assert expected_a != expected_b
    server = start_server()
    a = Client(context, server.endpoint)
    b = Client(context, server.endpoint)
    # Same id and same session name on both clients: they must not collide.
    a.send(request_a)
    b.send(request_b)
    results: dict[str, list[Note]] = {}

    def read(name: str, client: Client) -> None:
        results[name] = client.stream("same-id")[0]

    readers = [threading.Thread(target=read, args=(n, c), daemon=True)
               for n, c in (("a", a), ("b", b))]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(60)
    assert not any(reader.is_alive() for reader in readers), "a stream never ended"
    assert results["a"] == expected_a
    assert results["b"] == expected_b
    stats = a.ask({"v": 1, "type": "stats"})
    assert stats["clients"] == 2 and stats["sessions"] == 2 and stats["requests"] == 2


def test_sessions_of_one_style_share_one_step_per_iteration(start_server, context, style,
                                                            tiny_onnx_model):
    server = start_server()
    decoder = server.decoders[style]
    real_step, real_iterate = decoder.step, server._iterate
    iteration = [0]
    calls: list[tuple[int, int, int]] = []  # (iteration, batch size, generations running)

    def counting_iterate() -> None:
        iteration[0] += 1
        real_iterate()

    def counting_step(generations) -> None:
        calls.append((iteration[0], len(generations), len(server.streams.running)))
        real_step(generations)

    server._iterate, decoder.step = counting_iterate, counting_step
    client = Client(context, server.endpoint)
    requests = [generate(f"r{i}", style, session=f"s{i}", sampling={"seed": i})
                for i in range(4)]
    for request in requests:
        client.send(request)
    streams: dict[str, list[Note]] = {r["id"]: [] for r in requests}
    finished = 0
    while finished < len(requests):
        message = client.recv()
        if message["type"] == "notes":
            streams[message["id"]].extend(Note(**n) for n in message["notes"])
        else:
            assert message["type"] == "done", message
            finished += 1
    iterations = [it for it, _, _ in calls]
    assert len(iterations) == len(set(iterations)), "two steps in one loop iteration"
    assert all(batch == running for _, batch, running in calls), "a generation was left out"
    assert max(batch for _, batch, _ in calls) >= 2, "no two sessions were ever batched"
    stats = client.ask({"v": 1, "type": "stats"})["styles"][style]
    assert stats["steps"] == len(calls) and stats["rows"] == sum(b for _, b, _ in calls)
    # Batched decoding gives what each request gives alone.
    for request in requests:
        assert streams[request["id"]] == alone(tiny_onnx_model, request), request["id"]


def test_a_burst_of_requests_starts_a_few_per_iteration(start_server, context, style):
    server = start_server()
    decoder = server.decoders[style]
    real_start, real_iterate = decoder.start, server._iterate
    iteration = [0]
    starts: list[tuple[int, int]] = []  # (iteration, streams running before this start)

    def counting_iterate() -> None:
        iteration[0] += 1
        real_iterate()

    def counting_start(session_key, request, request_id=None):
        starts.append((iteration[0], len(server.streams.running)))
        return real_start(session_key, request, request_id)

    server._iterate, decoder.start = counting_iterate, counting_start
    client = Client(context, server.endpoint)
    for i in range(12):
        client.send(generate(f"r{i}", style, session=f"s{i}", sampling={"seed": i}))
    finished = 0
    while finished < 12:
        finished += client.recv()["type"] == "done"
    per_iteration: dict[int, int] = {}
    for it, running in starts:
        if running:  # the cap applies while other streams are running
            per_iteration[it] = per_iteration.get(it, 0) + 1
    assert len(starts) == 12
    assert max(per_iteration.values()) <= 4


def _long_request(model_path: Path, style: str) -> dict[str, Any]:
    """A sampled request that runs long enough to be cancelled mid-stream."""
    for seed in range(20):
        request = generate("long", style, bars=64, sampling={"seed": seed})
        if len(alone(model_path, {**request, "bars": 8})) >= 40:
            return request
    pytest.fail("no seed gave a long stream on the tiny model")


def test_cancel_stops_a_stream(start_server, context, style, tiny_onnx_model):
    request = _long_request(tiny_onnx_model, style)
    server = start_server()
    client = Client(context, server.endpoint)
    client.send(request)
    first = client.recv()
    assert first["type"] == "notes" and first["id"] == "long"
    # Another client cannot cancel it.
    other = Client(context, server.endpoint)
    assert other.ask({"v": 1, "type": "cancel", "id": "x", "target": "long"})["code"] == \
        "not_found"
    client.send({"v": 1, "type": "cancel", "id": "c1", "target": "long"})
    while True:
        message = client.recv()
        assert message["id"] == "long", message
        if message["type"] == "done":
            break
    assert message["reason"] == "cancelled"
    # Replies are ordered: a note sent after `done` would arrive before this pong.
    assert client.ask({"v": 1, "type": "ping", "id": "p"})["type"] == "pong"
    assert client.ask({"v": 1, "type": "cancel", "id": "c2", "target": "long"}) == {
        "v": 1, "type": "error", "id": "c2", "code": "not_found",
        "message": "no running generate with id 'long'"}
    assert client.ask({"v": 1, "type": "stats"})["active"] == 0


def test_new_request_supersedes_the_running_one_of_its_session(start_server, context, style,
                                                               tiny_onnx_model):
    request = _long_request(tiny_onnx_model, style)
    server = start_server()
    client = Client(context, server.endpoint)
    client.send(request)
    assert client.recv()["id"] == "long"
    client.send(generate("next", style, sampling={"greedy": True}))
    reasons = {}
    while len(reasons) < 2:
        message = client.recv()
        if message["type"] == "done":
            reasons[message["id"]] = message
    assert reasons["long"]["reason"] == "superseded"
    assert reasons["next"]["reason"] in ("complete", "eos", "max_tokens")
    # The superseded generation's cache served the new request's shared prefix.
    assert reasons["next"]["reused_tokens"] > 0


def test_busy_and_duplicate_id(start_server, context, style, tiny_onnx_model):
    request = _long_request(tiny_onnx_model, style)
    server = start_server(dataclasses.replace(EngineSettings(), max_active=1))
    client = Client(context, server.endpoint)
    client.send(request)
    assert client.recv()["id"] == "long"
    client.send({**request, "session": "other"})
    duplicate = _next_of_type(client, "error")
    assert duplicate["code"] == "duplicate_id"
    client.send(generate("second", style, session="other"))
    busy = _next_of_type(client, "error")
    assert busy["code"] == "busy" and busy["id"] == "second"
    client.send({"v": 1, "type": "cancel", "id": "c", "target": "long"})
    assert _next_of_type(client, "done")["reason"] == "cancelled"
    client.send(generate("third", style, session="other", sampling={"greedy": True}))
    assert client.stream("third")[1]["type"] == "done"


def _next_of_type(client: Client, kind: str) -> dict[str, Any]:
    while True:
        message = client.recv()
        if message["type"] == kind:
            return message
        assert message["type"] == "notes", message


def test_vanished_client_stops_its_generation(start_server, context, style, tiny_onnx_model):
    request = _long_request(tiny_onnx_model, style)
    server = start_server()
    leaving = Client(context, server.endpoint)
    leaving.send(request)
    assert leaving.recv()["id"] == "long"
    leaving.sock.close(linger=0)
    watcher = Client(context, server.endpoint)
    for _ in range(2000):
        if watcher.ask({"v": 1, "type": "stats"})["active"] == 0:
            break
        time.sleep(0.01)
    else:
        pytest.fail("the engine kept decoding for a client that left")


def test_stopping_the_engine_ends_running_streams(start_server, context, style,
                                                   tiny_onnx_model):
    request = _long_request(tiny_onnx_model, style)
    server = start_server()
    client = Client(context, server.endpoint)
    client.send(request)
    assert client.recv()["id"] == "long"
    server.stop()
    assert _next_of_type(client, "done")["reason"] == "cancelled"


def test_idle_engine_sleeps_and_expires_sessions(start_server, context, style):
    settings = dataclasses.replace(EngineSettings(), session_idle_s=1.0)
    server = start_server(settings)
    client = Client(context, server.endpoint)
    client.send(generate("g", style, sampling={"greedy": True}))
    client.stream("g")
    assert server.decoders[style].cached_sessions == 1
    # Idle: the loop blocks in poll; a spinning loop would burn ~1 s of CPU here.
    before = time.process_time()
    time.sleep(1.0)
    assert time.process_time() - before < 0.3
    for _ in range(1000):
        if client.ask({"v": 1, "type": "stats"})["sessions"] == 0:
            break
        time.sleep(0.01)
    else:
        pytest.fail("an idle session never expired")
    assert server.decoders[style].cached_sessions == 0


# --- security ----------------------------------------------------------------------------

def _curve_options(keys_dir: Path, client_secret: Path) -> dict[str, bytes]:
    server_public, _ = zmq.auth.load_certificate(keys_dir / "server.key")
    public, secret = zmq.auth.load_certificate(client_secret)
    return {"curve_serverkey": server_public, "curve_publickey": public,
            "curve_secretkey": secret}


def test_curve_lets_only_authorized_clients_in(start_server, context, tmp_path):
    keys = tmp_path / "keys"
    make_keys(keys)
    server = start_server(curve=CurveKeys.from_dir(keys))
    good = Client(context, server.endpoint,
                  curve=_curve_options(keys, keys / "client.key_secret"))
    assert good.ask({"v": 1, "type": "ping", "t": 1})["type"] == "pong"
    # A well-formed key pair the engine never authorized.
    stranger_dir = tmp_path / "stranger"
    stranger_dir.mkdir()
    _, stranger_secret = zmq.auth.create_certificates(stranger_dir, "stranger")
    stranger = Client(context, server.endpoint,
                      curve=_curve_options(keys, Path(stranger_secret)))
    stranger.send({"v": 1, "type": "ping", "t": 2})
    with pytest.raises(TimeoutError):
        stranger.recv(timeout_ms=1500)
    plain = Client(context, server.endpoint)
    plain.send({"v": 1, "type": "hello"})
    with pytest.raises(TimeoutError):
        plain.recv(timeout_ms=1500)
    # The authorized client is still served.
    assert good.ask({"v": 1, "type": "ping", "t": 3})["t"] == 3


@pytest.mark.parametrize("endpoint, local", [
    ("tcp://127.0.0.1:5757", True), ("tcp://127.1.2.3:1", True), ("tcp://[::1]:5", True),
    ("tcp://localhost:5", True), ("ipc:///tmp/melodyd.sock", True),
    ("tcp://0.0.0.0:5757", False), ("tcp://*:5757", False), ("tcp://192.168.1.2:5", False),
    ("tcp://example.org:5", False), ("tcp://eth0:5", False), ("udp://127.0.0.1:5", False),
])
def test_local_endpoints(endpoint, local):
    assert is_local_endpoint(endpoint) is local


def test_choose_security(tmp_path):
    keys = CurveKeys.from_dir(tmp_path)
    assert choose_security("tcp://127.0.0.1:1", None) is None
    assert choose_security("tcp://127.0.0.1:1", keys) is keys
    assert choose_security("tcp://0.0.0.0:1", keys) is keys
    assert choose_security("tcp://0.0.0.0:1", None, insecure=True) is None
    with pytest.raises(EngineError, match="needs CURVE"):
        choose_security("tcp://0.0.0.0:1", None)
    with pytest.raises(EngineError, match="--curve needs keys"):
        choose_security("tcp://127.0.0.1:1", None, force_curve=True)
    with pytest.raises(EngineError, match="not found"):
        keys.load()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _engine(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "engine", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_public_address_without_keys_refuses_to_start(tiny_onnx_model):
    process = _engine("--bind", f"tcp://0.0.0.0:{_free_port()}", "--model", str(tiny_onnx_model))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2
    assert stderr.startswith("error: ") and "needs CURVE" in stderr and "--insecure" in stderr
    assert "Traceback" not in stderr


def test_insecure_public_address_serves_and_stops_on_sigterm(tiny_onnx_model, context):
    port = _free_port()
    process = _engine("--bind", f"tcp://0.0.0.0:{port}", "--insecure",
                      "--model", str(tiny_onnx_model))
    try:
        client = Client(context, f"tcp://127.0.0.1:{port}")
        reply = client.ask({"v": 1, "type": "hello"})  # waits out the model loading
        assert reply["type"] == "hello"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert "WITHOUT authentication" in stderr and "engine stopped" in stderr


def test_make_keys_writes_a_usable_layout(tmp_path):
    paths = make_keys(tmp_path / "k")
    assert (paths["authorized_clients"] / "client.key").is_file()
    assert paths["server_secret"].stat().st_mode & 0o077 == 0
    public, secret = CurveKeys.from_dir(tmp_path / "k").load()
    assert len(public) == 40 and len(secret) == 40
    with pytest.raises(EngineError, match="already holds keys"):
        make_keys(tmp_path / "k")



def test_engine_command_is_registered_for_melodyd(tmp_path, capsys):
    assert load_commands("melodyd.commands")["engine"] is server_cli
    parser = argparse.ArgumentParser()
    server_cli.add_arguments(parser)
    assert server_cli.run(parser.parse_args(["--make-keys", str(tmp_path / "keys")])) == 0
    assert "server_secret" in capsys.readouterr().out
    assert (tmp_path / "keys" / "authorized_clients" / "client.key").is_file()


def test_a_conditioned_model_serves_each_of_its_styles_in_one_batch(start_server, context,
                                                                    tiny_conditioned_onnx):
    """A style is a token of a conditioned model: every style it names is served by the
    same decoder, and sessions in different styles share its steps."""
    decoders = server_cli.load_decoders([], [str(tiny_conditioned_onnx)], EngineSettings())
    named = {"tiny-conditioned", "any", "baroque", "romantic", "pop"}
    assert set(decoders) == named
    assert len({id(d) for d in decoders.values()}) == 1
    server = start_server(decoders=decoders)
    decoder = decoders["pop"]
    real_step, real_iterate = decoder.step, server._iterate
    iteration = [0]
    calls: list[tuple[int, int]] = []

    def counting_iterate() -> None:
        iteration[0] += 1
        real_iterate()

    def counting_step(generations) -> None:
        calls.append((iteration[0], len(generations)))
        real_step(generations)

    server._iterate, decoder.step = counting_iterate, counting_step
    client = Client(context, server.endpoint)
    hello = client.ask({"v": 1, "type": "hello", "id": "h"})
    assert named <= set(hello["styles"])
    requests = [generate(f"r{i}", style, session=f"s{i}", sampling={"seed": i}, bars=4)
                for i, style in enumerate(("baroque", "pop"))]
    for request in requests:
        client.send(request)
    done = 0
    while done < len(requests):
        message = client.recv()
        assert message["type"] in ("notes", "done"), message
        done += message["type"] == "done"
    iterations = [it for it, _ in calls]
    assert len(iterations) == len(set(iterations)), "two steps of one model in an iteration"
    assert max(batch for _, batch in calls) == 2, "the two styles never shared a step"


def test_start_work_in_one_iteration_is_bounded(start_server, context, style, monkeypatch):
    """A burst of generates is started within a time budget per iteration, so a ping
    queued behind heavy starts waits one iteration, not all of them."""
    import engine.server as server_module  # noqa: PLC0415

    monkeypatch.setattr(server_module, "_START_BUDGET_S", 0.0)
    server = start_server()
    decoder = server.decoders[style]
    real_start, real_iterate = decoder.start, server._iterate
    iteration = [0]
    started: list[int] = []

    def counting_iterate() -> None:
        iteration[0] += 1
        real_iterate()

    def counting_start(*args, **kwargs):
        started.append(iteration[0])
        return real_start(*args, **kwargs)

    server._iterate, decoder.start = counting_iterate, counting_start
    client = Client(context, server.endpoint)
    requests = [generate(f"r{i}", style, session=f"s{i}", bars=1) for i in range(3)]
    for request in requests:
        client.send(request)
    done = 0
    while done < len(requests):
        done += client.recv()["type"] == "done"
    assert len(started) == 3
    assert len(set(started)) == 3, "two starts in one iteration despite a spent budget"
