"""Fixtures of the bridge tests; the JACK ones start a private JACK server."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.jack_rig import JackServer, Probe

# Test helpers (bridge_fakes) live beside the tests; importlib mode does not put this
# folder on the path.
sys.path.insert(0, str(Path(__file__).parent))

from bridge_fakes import E2E_CONFIG  # after the path above


@pytest.fixture(scope="session")
def jack_server() -> Iterator[JackServer]:
    """A private JACK server (dummy backend, 48 kHz, 64-frame periods) for the session."""
    if shutil.which("jackd") is None:
        pytest.skip("jackd is not installed (Debian: apt-get install jackd2)")
    server = JackServer(rate=48000, period=64)
    server.start()
    saved = {key: os.environ.get(key) for key in server.env()}
    os.environ.update(server.env())
    yield server
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


class DaemonProcess:
    """``melodyd`` running as a subprocess, its log in a file."""

    def __init__(self, args: list[str], log_path, config_text: str = E2E_CONFIG) -> None:
        config = log_path.with_suffix(".toml")
        config.write_text(config_text)
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        exe = shutil.which("melodyd")
        command = [exe] if exe else ["python", "-m", "bridge.cli"]
        self.process = subprocess.Popen(
            [*command, "--backend", "jack", "--config", str(config), "--verbose", *args],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 60.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            text = self.log()
            if len(re.findall(pattern, text)) >= count:
                return text
            if self.process.poll() is not None:
                raise AssertionError(f"melodyd exited ({self.process.returncode}):\n{text}")
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the log within {timeout} s:\n{self.log()}")

    @property
    def origin(self) -> float:
        """Wall time of beat 0 of the internal clock (from the log)."""
        match = re.search(r"beat 0 at monotonic ([0-9.]+)", self.log())
        assert match, self.log()
        return float(match.group(1))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@pytest.fixture
def start_melodyd(jack_server, tmp_path):
    """``start(args, config_text=...)`` -> a running ``DaemonProcess``; stopped at teardown."""
    started: list[DaemonProcess] = []

    def start(args: list[str], config_text: str = E2E_CONFIG, name: str = "melodyd"
              ) -> DaemonProcess:
        daemon = DaemonProcess(args, tmp_path / f"{name}{len(started)}.log", config_text)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def probe_for(jack_server):
    """``probe_for(native=False)`` -> a ``Probe`` wired to melodyd's ports; closed at
    teardown. A native probe stamps each message with its frame's time; the default
    (python-rtmidi) one with its callback's, up to a period before a frame-placed note."""
    probes: list[Probe] = []

    def make(native: bool = False) -> Probe:
        probe = Probe(timeout=60.0, native=native)
        probes.append(probe)
        return probe

    yield make
    for probe in probes:
        probe.close()
