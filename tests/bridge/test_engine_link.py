"""The bridge's engine client against the real engine process, with CURVE keys."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bridge.client import CurveClientKeys, EngineClient
from bridge.engine_child import free_loopback_port, stop_process
from models.core import protocol
from models.core.exceptions import BridgeError
from models.core.notes import Note


def pump_until(client: EngineClient, predicate, timeout: float = 60.0
               ) -> list[protocol.Reply]:
    """Heartbeats and receives until ``predicate(replies)``; every wait is bounded."""
    replies: list[protocol.Reply] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end and not predicate(replies):
        wait = client.service()
        if client.socket.poll(int(min(wait, 0.2) * 1000) + 1):
            replies += client.receive()
    return replies


@pytest.fixture
def curve_engine(tiny_onnx_model, tmp_path):
    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "engine", "--make-keys", str(keys)], check=True,
                   capture_output=True)
    address = f"tcp://127.0.0.1:{free_loopback_port()}"
    engine = subprocess.Popen([sys.executable, "-m", "engine", "--bind", address, "--model",
                               str(tiny_onnx_model), "--curve-keys", str(keys), "--curve"],
                              stdin=subprocess.DEVNULL)
    yield address, keys
    stop_process(engine, 10)


def test_curve_client_talks_and_generates(curve_engine):
    address, keys = curve_engine
    client = EngineClient(address, curve=CurveClientKeys.from_dir(keys))
    client.open()
    try:
        replies = pump_until(client, lambda r: client.state == "up")
        assert client.state == "up", replies
        client.hello()
        replies = pump_until(client, lambda r: any(m.TYPE == "hello" for m in r))
        hello = next(m for m in replies if isinstance(m, protocol.HelloReply))
        assert "tiny" in hello.styles
        assert client.limits == hello.limits == protocol.Limits()  # the engine's defaults
        # The bridge's generate passes the engine's validation and comes back on our grid.
        seed = (Note(0.0, 0.5, 60, 90), Note(1.0, 0.5, 64, 90))
        request = protocol.GenerateRequest(
            seed=seed, start_beat=8.0, bars=1, time_signature=(4, 4), style="tiny",
            sampling=protocol.SamplingParams(temperature=1.0, seed=7),
            constraints=protocol.Constraints(max_polyphony=2))
        request_id = client.generate("t", request)
        replies = pump_until(client, lambda r: any(m.TYPE in ("done", "error") for m in r))
        assert [m.TYPE for m in replies if m.id == request_id][-1] == "done", replies
        notes = [n for m in replies if isinstance(m, protocol.NotesReply) for n in m.notes]
        assert all(8.0 <= n.onset < 12.0 for n in notes)
        assert all(abs(n.onset * 12 - round(n.onset * 12)) < 1e-6 for n in notes)
    finally:
        client.close()


def test_client_without_keys_is_refused(curve_engine):
    address, _ = curve_engine
    client = EngineClient(address)
    client.open()
    try:
        pump_until(client, bool, timeout=4.0)
        assert client.state == "connecting"
    finally:
        client.close()


def test_missing_keys_are_a_clear_error(tmp_path):
    with pytest.raises(BridgeError, match="make-keys"):
        CurveClientKeys.from_dir(tmp_path)
