"""The engine client against a small real zmq ROUTER, and the CC control map."""

from __future__ import annotations

import json
import re
import time

import pytest
import zmq

from bridge.client import EngineClient
from bridge.controls import ControlMap
from models.core import protocol
from models.core.exceptions import ProtocolError
from models.core.notes import Note
from models.core.settings import MidiSettings


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def router():
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close()


def recv(sock: zmq.Socket, timeout_ms: int = 3000) -> tuple[bytes, dict]:
    assert sock.poll(timeout_ms), "no message within the timeout"
    identity, frame = sock.recv_multipart()
    return identity, json.loads(frame)


def pump(client: EngineClient, timeout: float = 3.0) -> list[protocol.Reply]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if client.socket.poll(50):
            return client.receive()
    return []


def test_ping_generate_cancel_and_replies(router):
    sock, address = router
    fake = FakeClock()
    client = EngineClient(address, now=fake)
    client.open()
    try:
        for _ in range(10):  # heartbeats until the connection is up
            client.service()
            if sock.poll(300):
                break
            fake.t += 1.0
        identity, ping = recv(sock)
        assert ping["v"] == 1 and ping["type"] == "ping" and ping["t"] >= 1000.0
        pong = {"v": 1, "type": "pong", "t": ping["t"]}
        sock.send_multipart([identity, json.dumps(pong).encode()])
        assert pump(client) == [protocol.PongReply(t=ping["t"])]
        assert client.state == "up"
        request = protocol.GenerateRequest(seed=(Note(0.0, 1.0, 60, 80),), start_beat=4,
                                           bars=1, style="x")
        request_id = client.generate("s", request)
        _, generate = recv(sock)
        assert generate["type"] == "generate" and generate["id"] == request_id
        assert generate["start_beat"] == 4 and generate["session"] == "s"
        assert protocol.parse_request(generate) == protocol.GenerateMessage(
            request_id, "s", request)
        client.cancel(request_id)
        _, cancel = recv(sock)
        assert cancel == {"v": 1, "type": "cancel", "id": cancel["id"], "target": request_id}
        # Malformed replies are skipped, not fatal.
        done = protocol.DoneReply(request_id, "cancelled", notes=0, tokens=3)
        sock.send_multipart([identity, b"not json"])
        sock.send_multipart([identity, json.dumps({"v": 2, "type": "pong"}).encode()])
        sock.send_multipart([identity, json.dumps({"v": 1, "type": "done", "id": request_id,
                                                   "reason": "tired"}).encode()])
        sock.send_multipart([identity, json.dumps({"v": 1, "type": "notes", "id": request_id,
                                                   "notes": [{"pitch": 300}]}).encode()])
        sock.send_multipart([identity, protocol.encode(done)])
        time.sleep(0.1)
        assert pump(client) == [done]
    finally:
        client.close()


def test_engine_loss_and_recovery(router):
    sock, address = router
    fake = FakeClock()
    client = EngineClient(address, now=fake)
    client.open()
    try:
        for _ in range(10):
            client.service()
            if sock.poll(300):
                break
            fake.t += 1.0
        identity, _ = recv(sock)
        sock.send_multipart([identity, json.dumps({"v": 1, "type": "pong"}).encode()])
        pump(client)
        assert client.state == "up"
        old_socket = client.socket
        fake.t += 1.5
        client.service()  # a ping, no loss yet
        recv(sock)
        fake.t += 2.0  # 3.5 s without a reply
        client.service()
        assert client.state == "lost"
        assert client.socket is not old_socket  # fresh socket: no stale requests
        # The new socket pings every second; the first may go before it has connected.
        for _ in range(10):
            if sock.poll(300):
                break
            fake.t += 1.0
            client.service()
        identity, ping = recv(sock)
        assert ping["type"] == "ping"
        sock.send_multipart([identity, json.dumps({"v": 1, "type": "pong"}).encode()])
        pump(client)
        assert client.state == "up"
    finally:
        client.close()


def test_requests_while_engine_absent_are_dropped():
    client = EngineClient("tcp://127.0.0.1:1")  # nothing listens there
    client.open()
    try:
        request = protocol.GenerateRequest(seed=(), start_beat=0, style="x")
        client.generate("s", request)  # must not block
        assert client.state == "connecting"
    finally:
        client.close()


def test_a_request_the_engine_would_refuse_is_never_sent(router):
    """The client encodes with the engine's own rules and the limits of its ``hello``."""
    sock, address = router
    fake = FakeClock()
    client = EngineClient(address, now=fake)
    client.open()
    try:
        for _ in range(10):  # heartbeats until one arrives (IMMEDIATE drops the early ones)
            client.service()
            if sock.poll(300):
                break
            fake.t += 1.0
        identity, _ = recv(sock)
        hello = protocol.HelloReply(None, "test", {"x": {}}, protocol.Limits(max_seed_notes=2))
        sock.send_multipart([identity, protocol.encode(hello)])
        assert pump(client) == [hello] and client.limits.max_seed_notes == 2
        seed = tuple(Note(i, 0.5, 60, 80) for i in range(3))
        for request, needle in [
                (protocol.GenerateRequest(seed=seed, start_beat=4.0, style="x"),
                 "3 notes, the limit is 2"),
                (protocol.GenerateRequest(seed=(), start_beat=4.0, style="x",
                                          time_signature=(4, 32)), "time_signature"),
                (protocol.GenerateRequest(seed=(Note(0, 0.0, 60, 80),), start_beat=4.0,
                                          style="x"), "seed[0].duration")]:
            with pytest.raises(ProtocolError, match=re.escape(needle)) as info:
                client.generate("s", request)
            assert info.value.code == "invalid"
        client.generate("s", protocol.GenerateRequest(seed=seed[:2], start_beat=4.0,
                                                      style="x"))
        _, sent = recv(sock)
        assert sent["type"] == "generate" and len(sent["seed"]) == 2  # the only one sent
        assert not sock.poll(100)
    finally:
        client.close()


@pytest.mark.parametrize(("cc", "value", "kind", "expected"), [
    (21, 0, "temperature", 0.2), (21, 127, "temperature", 2.0), (22, 0, "length", 1),
    (22, 127, "length", 8), (23, 10, "mode", "call"), (23, 100, "mode", "accompany"),
    (24, 127, "style", 2), (24, 0, "style", 0), (25, 64, "key_lock", True),
    (25, 63, "key_lock", False), (26, 100, "follow", 100), (120, 0, "panic", None),
    (27, 64, "accompany_density", 1.0), (27, 0, "accompany_density", 0.25),
    (27, 96, "accompany_density", 2.0), (28, 64, "accompany_key_strength", 1.0),
    (28, 0, "accompany_key_strength", 0.0), (28, 127, "accompany_key_strength", 1.984),
    (29, 0, "morph", 0.0), (29, 127, "morph", 1.0), (29, 64, "morph", 0.504),
], ids=str)
def test_control_map(cc, value, kind, expected):
    control = ControlMap(MidiSettings()).interpret(cc, value, n_styles=3)
    assert control is not None and control.kind == kind and control.value == expected


def test_unmapped_and_disabled_controls():
    controls = ControlMap(MidiSettings(cc_panic=-1))
    assert controls.interpret(1, 64) is None
    assert controls.interpret(120, 0) is None
