"""engine.server, one request at a time: every request gets its reply or its ``error``,
a bug costs one request, cancel and supersede end streams, a client that leaves and a
stopping engine end theirs; all on a real tiny ONNX model, real sockets, real threads.

Every receive has a timeout and every socket lingers 0; each server runs in a thread on a
free loopback port and is stopped in teardown (``conftest.py``).
"""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
from server_rig import Client, generate, long_request, next_of_type

from models.core import protocol
from models.core.notes import Note
from models.core.settings import EngineSettings


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
        # The tiny model has no style tokens: nothing to morph towards.
        (generate("g", style, morph={"style": style, "amount": 0.5}), "unsupported"),
        (generate("g", style, morph={"style": style, "amount": 2}), "invalid"),
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

    def flaky_start(session_key, request, request_id=None, **options):
        if request_id == "boom":
            raise RuntimeError("simulated bug")
        return real_start(session_key, request, request_id, **options)

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
    reply = next_of_type(client, "error")
    assert reply["id"] == "a" and reply["code"] == "internal"
    assert client.ask({"v": 1, "type": "stats"})["active"] == 0
    client.send(generate("b", style, sampling={"greedy": True}))
    assert client.stream("b")[1]["reason"] in ("complete", "eos", "max_tokens")


def test_a_note_that_cannot_be_sent_ends_only_its_stream(start_server, context, style):
    server = start_server()
    decoder = server.decoders[style]
    real_start = decoder.start

    def start_with_a_broken_note(session_key, request, request_id=None, **options):
        generation = real_start(session_key, request, request_id, **options)
        if request_id == "broken":
            real_drain = generation.drain_notes
            generation.drain_notes = lambda: [Note(float("nan"), 1.0, 60, 80), *real_drain()]
        return generation

    decoder.start = start_with_a_broken_note
    client = Client(context, server.endpoint)
    client.send(generate("broken", style, session="a", sampling={"greedy": True}))
    reply = next_of_type(client, "error")
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


def test_cancel_stops_a_stream(start_server, context, style, tiny_onnx_model):
    request = long_request(tiny_onnx_model, style)
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
    request = long_request(tiny_onnx_model, style)
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
    request = long_request(tiny_onnx_model, style)
    server = start_server(dataclasses.replace(EngineSettings(), max_active=1))
    client = Client(context, server.endpoint)
    client.send(request)
    assert client.recv()["id"] == "long"
    client.send({**request, "session": "other"})
    duplicate = next_of_type(client, "error")
    assert duplicate["code"] == "duplicate_id"
    client.send(generate("second", style, session="other"))
    busy = next_of_type(client, "error")
    assert busy["code"] == "busy" and busy["id"] == "second"
    client.send({"v": 1, "type": "cancel", "id": "c", "target": "long"})
    assert next_of_type(client, "done")["reason"] == "cancelled"
    client.send(generate("third", style, session="other", sampling={"greedy": True}))
    assert client.stream("third")[1]["type"] == "done"


def test_vanished_client_stops_its_generation(start_server, context, style, tiny_onnx_model):
    request = long_request(tiny_onnx_model, style)
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
    request = long_request(tiny_onnx_model, style)
    server = start_server()
    client = Client(context, server.endpoint)
    client.send(request)
    assert client.recv()["id"] == "long"
    server.stop()
    assert next_of_type(client, "done")["reason"] == "cancelled"


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

