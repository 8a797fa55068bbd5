"""The python-rtmidi driver on a real JACK server (its ports on ALSA, CoreMIDI and Windows
behave the same through python-rtmidi, but this machine has only JACK)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import mido
import pytest
from bridge_fakes import Inbox

from bridge.drivers.rtmidi import RtmidiOutput, open_rtmidi_ports, port_names

pytestmark = pytest.mark.jack


@pytest.fixture
def ports(jack_server):
    inbox = Inbox()
    opened = open_rtmidi_ports("jack", in_name="rt in", out_name="rt out", connect_in="",
                               connect_out="", callback=inbox)
    yield opened, inbox
    opened.close()


def test_messages_arrive_with_their_time_and_the_output_knows_its_jack_name(ports):
    opened, inbox = ports
    assert opened.driver == "rtmidi" and opened.output.send_ahead_s == 0.0
    writable = port_names("jack")[1]
    (target,) = [n for n in writable if n.endswith(":rt in")]
    player = RtmidiOutput("jack", target, virtual=False)
    try:
        before = time.monotonic()
        player.send(mido.Message("note_on", note=60, velocity=90))
        player.send(mido.Message("clock"))  # timing messages are kept
        got = inbox.wait(2)
        assert [m.type for _, m in got] == ["note_on", "clock"]
        assert all(before <= t <= time.monotonic() for t, _ in got)
    finally:
        player.close()
    name = opened.output.jack_name()
    assert name is not None and name.endswith(":rt out") and name.startswith("melodyd-")


# Run in a child process: closing an rtmidi JACK input while JACK's thread delivers to it
# is the riskiest thing python-rtmidi does with memory, and the torch-free CI job crashed
# (segfault, abort) a few tests after this one; a child's crash fails this test only.
_FLOOD_THEN_CLOSE = """
import json, threading, time
import mido
from bridge.drivers.rtmidi import RtmidiOutput, open_rtmidi_ports, port_names

got = threading.Event()
opened = open_rtmidi_ports("jack", in_name="rt in", out_name="rt out", connect_in="",
                           connect_out="", callback=lambda *_: got.set())
(target,) = [n for n in port_names("jack")[1] if n.endswith(":rt in")]
player = RtmidiOutput("jack", target, virtual=False)
stop = threading.Event()


def flood():
    while not stop.is_set():
        player.send(mido.Message("clock"))
        time.sleep(0.0005)


flooding = threading.Thread(target=flood, daemon=True)
flooding.start()
arrived = got.wait(20)
closing = threading.Thread(target=opened.close, daemon=True)
closing.start()
closing.join(5.0)
report = {"arrived": arrived, "deadlocked": closing.is_alive(),
          "closed": opened.input.closed}
stop.set()
flooding.join(2.0)
player.close()
print(json.dumps(report), flush=True)
"""


def test_closing_while_messages_pour_in_does_not_deadlock(jack_server):
    """rtmidi's callback needs the GIL on JACK's thread while closing waits for that
    thread: the driver cancels the callback first."""
    result = subprocess.run([sys.executable, "-c", _FLOOD_THEN_CLOSE], capture_output=True,
                            text=True, timeout=90, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["arrived"], "no message reached the input"
    assert not report["deadlocked"], "closing the input deadlocked"
    assert report["closed"]
