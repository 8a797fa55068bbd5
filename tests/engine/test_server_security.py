"""engine.server's security and command: CURVE lets only authorized clients in, which
endpoints are local, a public address needs keys (or ``--insecure``), ``--make-keys``,
and ``melodyd engine`` itself as a process (SIGTERM ends it cleanly).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
import zmq.auth
from server_rig import Client

from engine import server_cli
from engine.keys import CurveKeys, choose_security, is_local_endpoint, make_keys
from models.core.commands import load_commands
from models.core.exceptions import EngineError


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

