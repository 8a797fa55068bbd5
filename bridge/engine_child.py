"""The private engine: ``python -m engine`` as a child process on a free loopback port.

The bridge never imports the engine (it may run on another machine); by default it still
wants one nearby, so it starts the engine as a separate process, restarts it if it dies,
and stops it on exit.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from models.core.exceptions import BridgeError

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 3.0  # SIGTERM first (the engine cancels its streams), then SIGKILL
RESTART_BACKOFF_S = 5.0  # a model that crashes at load must not spin the CPU


def stop_process(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL: how every child of ours is stopped
    (the engine, the test and bench JACK servers, melodyd under the benchmark)."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EngineChild:
    """One engine process serving ``models``.

    Attributes:
        models: ONNX files to serve (one style each).
        address: where it listens, ``tcp://127.0.0.1:<free port>``.
        verbose: pass ``--verbose`` to the engine.
    """

    def __init__(self, models: list[Path], verbose: bool = False) -> None:
        self.models = models
        self.address = f"tcp://127.0.0.1:{free_loopback_port()}"
        self.verbose = verbose
        self._process: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._reported_exit: subprocess.Popen[bytes] | None = None  # its death was reported

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Launch the engine (it loads its models in the background of our startup).

        Raises:
            BridgeError: the Python interpreter cannot be started.
        """
        # --exit-with-parent: if melodyd is killed outright (no finally runs), the engine
        # notices it lost its parent and stops instead of holding models and a port.
        command = [sys.executable, "-m", "engine", "--bind", self.address,
                   "--exit-with-parent", str(os.getpid())]
        for model in self.models:
            command += ["--model", str(model)]
        if self.verbose:
            command.append("--verbose")
        try:
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        except OSError as err:
            raise BridgeError(f"cannot start the engine ({' '.join(command)}): {err}") from err
        self._started_at = time.monotonic()
        logger.info("engine child %d on %s", self._process.pid, self.address)

    def check(self) -> bool:
        """Restart the engine if it died (at most once per ``RESTART_BACKOFF_S``).

        Returns:
            Whether it had died: whatever it was generating is lost, even if its successor
            answers before the bridge notices any silence.
        """
        process = self._process
        if process is None or process.poll() is None:
            return False
        if self._reported_exit is not process:
            self._reported_exit = process
            logger.warning("engine child exited with code %s", process.returncode)
            died = True
        else:
            died = False
        if time.monotonic() - self._started_at >= RESTART_BACKOFF_S:
            logger.warning("restarting the engine child")
            self.start()
        return died

    def stop(self) -> None:
        """Stop the engine: SIGTERM, then SIGKILL if it does not exit in time."""
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, STOP_TIMEOUT_S)
