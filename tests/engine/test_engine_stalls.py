"""Nothing one request needs runs in one long piece on the engine's thread: the cache
pool never grows (copies) while serving, and the heap left by start-up is frozen so full
collections stay short.

No test here measures time: each checks the order or count of the work instead."""

from __future__ import annotations

import argparse
import gc

from engine import server_cli
from engine.decoder import StyleDecoder
from engine.model import load_model
from models.core.notes import Note
from models.core.protocol.messages import GenerateRequest
from models.core.settings import EngineSettings


def test_the_pool_holds_max_active_rows_without_moving(tiny_onnx_model):
    """Growing the pool copies every row on the engine's thread: it never grows while
    at most ``max_active`` generations run."""
    decoder = StyleDecoder(load_model(tiny_onnx_model), EngineSettings(max_active=9))
    moves = decoder.pool.generation
    request = GenerateRequest(seed=(Note(0.0, 1.0, 60, 80),), start_beat=4.0, bars=1)
    generations = [decoder.start(f"s{i}", request) for i in range(9)]
    assert decoder.pool.generation == moves
    assert sorted(g.slot for g in generations) == list(range(9))


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
