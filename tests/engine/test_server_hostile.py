"""engine.server against hostile requests: far starts, huge seeds, numbers of thousands
of digits and pitch ranges outside the vocabulary are refused at once, never a stall of
other sessions nor an ``internal`` error; large but real song positions are served.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import pytest
from server_rig import SEED, Client, generate

from engine.decoder import StyleDecoder
from engine.model import load_model
from models.core import protocol
from models.core.notes import Note
from models.core.protocol import GenerateRequest
from models.core.settings import EngineSettings

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

