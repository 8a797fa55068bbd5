"""Fixtures of the engine tests: zmq contexts and engine servers on free loopback ports."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from engine.decoder import StyleDecoder
from engine.keys import CurveKeys
from engine.model import load_model
from engine.server import EngineServer
from models.core.settings import EngineSettings

# Test helpers (server_rig) live beside the tests; importlib mode does not put this folder
# on the path.
sys.path.insert(0, str(Path(__file__).parent))


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

