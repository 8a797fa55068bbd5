"""Helpers of the engine server tests: a DEALER with a timeout on every receive, request
builders, and the notes a decoder gives alone (what a served stream must equal).

The fixtures that start servers are in ``conftest.py``; the tests are split by subject:
``test_server_dispatch.py`` (requests, replies, errors, cancel and the end of streams),
``test_server_streams.py`` (batching and fairness between streams),
``test_server_hostile.py`` (far, huge and out-of-range requests) and
``test_server_security.py`` (CURVE, endpoints, the engine command).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import zmq

from engine.decoder import StyleDecoder
from engine.model import load_model
from models.core.notes import Note
from models.core.protocol import parse_generate
from models.core.settings import EngineSettings

RECV_TIMEOUT_MS = 20_000  # generous: the machine is shared; a hang still fails
SEED = [{"onset": 0.0, "duration": 1.0, "pitch": 60, "velocity": 80},
        {"onset": 1.0, "duration": 1.0, "pitch": 64, "velocity": 80},
        {"onset": 2.0, "duration": 2.0, "pitch": 67, "velocity": 90}]


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


def long_request(model_path: Path, style: str) -> dict[str, Any]:
    """A sampled request that runs long enough to be cancelled mid-stream."""
    for seed in range(20):
        request = generate("long", style, bars=64, sampling={"seed": seed})
        if len(alone(model_path, {**request, "bars": 8})) >= 40:
            return request
    pytest.fail("no seed gave a long stream on the tiny model")


def next_of_type(client: Client, kind: str) -> dict[str, Any]:
    while True:
        message = client.recv()
        if message["type"] == kind:
            return message
        assert message["type"] == "notes", message

