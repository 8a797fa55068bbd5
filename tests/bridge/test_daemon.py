"""The daemon's wiring with a fake output port and a small real zmq ROUTER as the engine.

The ROUTER answers per docs/protocol.md (hello, pong, notes + done, cancel) with the
protocol's own typed replies, and reads every request with the engine's own parser, so
the daemon's decisions (when to ask, what to cancel, when to release) are tested without
a MIDI system or a model, and a request the engine would refuse fails the test. The
application around it is in test_app.py; the real engine and JACK are in
test_jack_e2e.py.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable

import mido
import pytest
import zmq
from bridge_fakes import FakeOutput, sounding_after

from bridge.client import EngineClient
from bridge.clock import InternalClock
from bridge.daemon import Daemon, follow_dynamics
from bridge.listener import InputQueue
from bridge.scheduler import Scheduler
from models.core import protocol
from models.core.notes import Note
from models.core.protocol.messages import Steering
from models.core.settings import Settings
from models.core.tonality import parse_key

BPM = 600.0  # 0.1 s per beat, 0.4 s per bar: the tests stay short


class FakeEngine:
    """A ROUTER thread answering like the engine; records what it was asked."""

    def __init__(self, facts: dict | None = None) -> None:
        self.facts = {"pitch_min": 21, "pitch_max": 108, **(facts or {})}
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.address = f"tcp://127.0.0.1:{self.sock.bind_to_random_port('tcp://127.0.0.1')}"
        self.requests: list[dict] = []
        self.refused: list[str] = []  # what the engine's parser said of a bad request
        self.mute = False  # stop answering anything (engine lost)
        self.hold_done = False  # stream the notes but never finish (still generating)
        self.answer_notes = [(0.0, 0.5, 60, 64), (1.0, 30.0, 62, 64), (20.0, 0.5, 64, 64)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _send(self, identity: bytes, message: protocol.Reply) -> None:
        self.sock.send_multipart([identity, protocol.encode(message)])

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(20):
                continue
            identity, frame = self.sock.recv_multipart()
            self.requests.append(json.loads(frame))
            try:
                request = protocol.decode_request(frame)
            except protocol.ProtocolError as err:
                self.refused.append(f"{err.code}: {err}")
                continue
            if self.mute:
                continue
            if isinstance(request, protocol.PingRequest):
                self._send(identity, protocol.PongReply(request.id, request.t))
            elif isinstance(request, protocol.HelloRequest):
                self._send(identity, protocol.HelloReply(
                    request.id, "fake", {"fake": dict(self.facts)}))
            elif isinstance(request, protocol.GenerateMessage):
                start = request.request.start_beat
                notes = tuple(Note(start + o, d, p, v) for o, d, p, v in self.answer_notes)
                self._send(identity, protocol.NotesReply(request.id, notes))
                if not self.hold_done:
                    self._send(identity, protocol.DoneReply(request.id, "complete",
                                                            notes=len(notes)))

    def of_type(self, kind: str) -> list[dict]:
        return [r for r in list(self.requests) if r["type"] == kind]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def wait_for(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def between_turns() -> list[Callable[[], None]]:
    """Jobs the rig runs on the daemon's thread after each turn (as bridge.app checks the
    MIDI system and the engine child)."""
    return []


@pytest.fixture
def rig(request, between_turns):
    """The daemon against the fake engine; ``indirect`` parametrization gives the facts the
    fake's hello tells about its style (e.g. ``{"roles": True}``)."""
    engine = FakeEngine(getattr(request, "param", None))
    settings = Settings()
    settings = dataclasses.replace(
        settings,
        interaction=dataclasses.replace(settings.interaction, silence_beats=1.0,
                                        response_bars=2, min_lead_ms=0.0,
                                        follow_dynamics=0.0, status_interval_s=0.0),
        midi=dataclasses.replace(settings.midi, late_drop_ms=1000.0))
    clock = InternalClock(BPM)
    clock.start(time.monotonic())
    port = FakeOutput()
    inputs = InputQueue()
    client = EngineClient(engine.address, ping_interval=0.1, loss_timeout=0.6)
    scheduler = Scheduler.for_settings(port, clock, settings.midi)
    daemon = Daemon(settings, clock, scheduler=scheduler, client=client, style=None,
                    inputs=inputs)
    stop = threading.Event()

    def serve() -> None:  # what bridge.app.Melodyd does, without the ports and the child
        while not stop.is_set():
            daemon.turn()
            for job in list(between_turns):
                job()

    client.open()
    scheduler.start()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert wait_for(lambda: daemon.style == "fake")
    yield daemon, engine, port, inputs, clock
    stop.set()
    inputs.wake()
    thread.join(5)
    scheduler.stop()
    client.close()
    engine.close()
    inputs.close()
    assert engine.refused == []  # every request the daemon sent, the engine would take


def play_phrase(inputs: InputQueue, clock, pitches=(60, 64)) -> float:
    """Press and release notes a quarter beat apart now; returns the last release beat."""
    t = time.monotonic()
    for i, pitch in enumerate(pitches):
        inputs.put(t + i * 0.025, mido.Message("note_on", note=pitch, velocity=100))
        inputs.put(t + i * 0.025 + 0.02, mido.Message("note_off", note=pitch))
    return clock.beat_at(t + (len(pitches) - 1) * 0.025 + 0.02)


def test_phrase_gets_an_answer_on_the_next_bar(rig):
    daemon, engine, port, inputs, clock = rig
    end = play_phrase(inputs, clock)
    assert wait_for(lambda: engine.of_type("generate"))
    request = engine.of_type("generate")[0]
    assert request["style"] == "fake" and request["session"] == daemon.session
    assert request["bars"] == 2 and request["time_signature"] == [4, 4]
    assert request["start_beat"] % 4 == 0 and request["start_beat"] >= end + 1.0
    # The next bar after the 1-beat silence, not a later one (a beat of slack: at 600 BPM
    # a beat is 0.1 s of thread wake-ups on a loaded box).
    assert request["start_beat"] <= end + 1.0 + 4 + 1.0, (request["start_beat"], end)
    assert [n["pitch"] for n in request["seed"]] == [60, 64]
    assert wait_for(lambda: len(port.messages("note_on")) >= 2)
    assert [m.note for m in port.messages("note_on")][:2] == [60, 62]


def test_pitch_range_is_kept_within_the_styles(rig):
    """A configured 0-127 must not make the engine refuse every request: the bridge asks
    for the part of it the style's vocabulary can play (from the engine's hello)."""
    daemon, engine, _port, inputs, clock = rig
    daemon.settings = dataclasses.replace(daemon.settings, sampling=dataclasses.replace(
        daemon.settings.sampling, pitch_min=0, pitch_max=100))
    play_phrase(inputs, clock)
    assert wait_for(lambda: engine.of_type("generate"))
    constraints = engine.of_type("generate")[0]["constraints"]
    assert (constraints["pitch_min"], constraints["pitch_max"]) == (21, 100)


def test_a_request_the_engine_would_refuse_is_not_sent(rig, caplog):
    """The client checks a request by the engine's own rules and the limits of its hello:
    the daemon logs why it does not ask instead of earning an error reply."""
    daemon, engine, _port, inputs, clock = rig
    daemon.client.limits = protocol.Limits(max_seed_notes=1)  # as if the hello said so
    with caplog.at_level("WARNING"):
        play_phrase(inputs, clock)  # two notes
        assert wait_for(lambda: any("not asking the engine" in r.getMessage()
                                    for r in caplog.records))
    assert any("2 notes, the limit is 1" in r.getMessage() for r in caplog.records)
    assert engine.of_type("generate") == [] and daemon.scheduler.pending() == 0
    daemon.client.limits = protocol.Limits()
    play_phrase(inputs, clock, (65, 67))
    assert wait_for(lambda: engine.of_type("generate"))


@pytest.mark.parametrize("engine_running", [False, True], ids=["finished", "running"])
def test_barge_in_cancels_and_releases(rig, engine_running):
    daemon, engine, port, inputs, clock = rig
    engine.hold_done = engine_running
    play_phrase(inputs, clock)
    assert wait_for(lambda: 62 in daemon.scheduler.sounding())  # the 30-beat note
    request_id = engine.of_type("generate")[0]["id"]
    inputs.put(time.monotonic(), mido.Message("note_on", note=70, velocity=90))
    assert wait_for(lambda: not daemon.scheduler.sounding())
    assert sounding_after(port.messages()) == set()
    assert daemon.scheduler.pending() == 0  # the note at +20 beats never plays
    # A finished engine needs no cancel; a running one gets exactly one, for this answer.
    if engine_running:
        assert wait_for(lambda: engine.of_type("cancel"))
        assert [c["target"] for c in engine.of_type("cancel")] == [request_id]
    else:
        time.sleep(0.2)  # a cancel would have reached the fake engine by now
        assert engine.of_type("cancel") == []


def test_an_answer_asked_ahead_is_dropped_unheard_when_the_phrase_goes_on(rig, caplog):
    """Asked for before the phrase's silence is complete, the answer is cancelled when the
    player plays on within that silence: none of it sounds, and the longer phrase gets
    the answer."""
    daemon, engine, port, inputs, clock = rig
    engine.hold_done = True  # the engine is still generating when the player plays on
    # 8 beats of silence (0.8 s), asked for as early as may be: after half of it.
    daemon.call.silence_beats = 8.0
    daemon.call.request_ahead_beats = 8.0
    with caplog.at_level("INFO"):
        end = play_phrase(inputs, clock)
        assert wait_for(lambda: engine.of_type("generate"))
        first = engine.of_type("generate")[0]
        now = time.monotonic()
        assert clock.beat_at(now) < end + 8.0, "asked only after the silence"
        inputs.put(now, mido.Message("note_on", note=67, velocity=90))
        inputs.put(now + 0.02, mido.Message("note_off", note=67))
        assert wait_for(lambda: engine.of_type("cancel"))
    assert [c["target"] for c in engine.of_type("cancel")] == [first["id"]]
    assert any("the phrase goes on" in r.getMessage() for r in caplog.records)
    assert port.messages("note_on") == [] and daemon.scheduler.pending() == 0
    assert wait_for(lambda: len(engine.of_type("generate")) == 2, 5.0)
    second = engine.of_type("generate")[1]
    assert [n["pitch"] for n in second["seed"]] == [60, 64, 67]
    assert second["start_beat"] >= first["start_beat"]
    assert wait_for(lambda: port.messages("note_on"), 5.0)


def test_engine_loss_releases_and_recovers(rig):
    daemon, engine, port, inputs, clock = rig
    play_phrase(inputs, clock)
    assert wait_for(lambda: 62 in daemon.scheduler.sounding())
    engine.mute = True
    assert wait_for(lambda: daemon.client.state == "lost")
    assert wait_for(lambda: not daemon.scheduler.sounding())
    controls = [(m.control, m.value) for m in port.messages("control_change")]
    assert (123, 0) in controls and (64, 0) in controls
    assert daemon.scheduler.pending() == 0
    engine.mute = False
    assert wait_for(lambda: daemon.client.state == "up")
    before = len(engine.of_type("generate"))
    play_phrase(inputs, clock, (65, 67))
    assert wait_for(lambda: len(engine.of_type("generate")) > before)


def test_engine_replaced_mid_answer_is_reported_at_once(rig, between_turns, caplog):
    """A private engine that dies and is restarted answers pings again before any silence
    shows: the application declares the loss, and the abandoned answer is logged."""
    daemon, engine, port, inputs, clock = rig
    engine.hold_done = True
    play_phrase(inputs, clock)
    assert wait_for(lambda: 62 in daemon.scheduler.sounding())
    declared = []

    def replaced() -> None:  # on the daemon's thread, as bridge.app checks its child
        if not declared:
            declared.append(True)
            daemon.engine_replaced("the engine child exited")

    with caplog.at_level("WARNING"):
        between_turns.append(replaced)
        assert wait_for(lambda: not daemon.scheduler.sounding())
    assert sounding_after(port.messages()) == set()
    lines = [r.getMessage() for r in caplog.records]
    assert any("lost (the engine child exited)" in line for line in lines), lines
    assert any("abandoned: engine lost" in line for line in lines), lines
    assert wait_for(lambda: daemon.client.state == "up")


def test_panic_control_releases_everything(rig):
    daemon, _engine, port, inputs, clock = rig
    play_phrase(inputs, clock)
    assert wait_for(lambda: 62 in daemon.scheduler.sounding())
    inputs.put(time.monotonic(), mido.Message("control_change", control=120, value=127))
    assert wait_for(lambda: not daemon.scheduler.sounding())
    assert sounding_after(port.messages()) == set()


def test_controls_change_temperature_length_and_mode(rig):
    daemon, engine, _port, inputs, clock = rig
    t = time.monotonic()
    inputs.put(t, mido.Message("control_change", control=21, value=127))
    inputs.put(t, mido.Message("control_change", control=22, value=0))
    inputs.put(t, mido.Message("control_change", control=23, value=127))
    assert wait_for(lambda: daemon.mode == "accompany")
    assert daemon.temperature == 2.0 and daemon.call.bars == 1
    play_phrase(inputs, clock)
    assert wait_for(lambda: engine.of_type("generate"))
    request = engine.of_type("generate")[0]
    assert request["bars"] == 1 and request["sampling"]["temperature"] == 2.0


def test_requests_carry_the_calls_key_and_the_key_lock_holds_it(rig):
    daemon, engine, _port, inputs, clock = rig
    play_phrase(inputs, clock, pitches=(60, 64, 67, 72, 67, 64, 60))  # C major
    assert wait_for(lambda: engine.of_type("generate"))
    first = engine.of_type("generate")[0]["steering"]
    assert first["key"] == "C major" and first["key_strength"] > 0
    assert first["register_center"] == pytest.approx((60 + 64 + 67 + 72 + 67 + 64 + 60) / 7)
    inputs.put(time.monotonic(), mido.Message("control_change", control=25, value=127))
    assert wait_for(lambda: daemon.ear.keys.locked)
    time.sleep(2.0)  # past the first answer and out of the 4-bar seed window (1.6 s)
    play_phrase(inputs, clock, pitches=(66, 70, 73, 78, 73, 70, 66))  # F# major
    assert wait_for(lambda: len(engine.of_type("generate")) >= 2)
    assert engine.of_type("generate")[-1]["steering"]["key"] == "C major"


def test_midi_messages_on_other_channels_are_ignored(rig):
    daemon, _engine, _port, inputs, _clock = rig
    daemon.settings = dataclasses.replace(
        daemon.settings, midi=dataclasses.replace(daemon.settings.midi, input_channel=2))
    t = time.monotonic()
    inputs.put(t, mido.Message("note_on", channel=0, note=60, velocity=100))
    inputs.put(t + 0.01, mido.Message("note_on", channel=1, note=62, velocity=100))
    assert wait_for(lambda: daemon.seed.held_count == 1)
    time.sleep(0.05)
    assert daemon.seed.held_count == 1


@pytest.mark.parametrize(("velocity", "player", "amount", "expected"), [
    (64, None, 1.0, 64), (64, 100.0, 0.0, 64), (64, 100.0, 1.0, 100), (40, 100.0, 0.5, 70),
    (127, 127.0, 0.5, 127),
])
def test_follow_dynamics(velocity, player, amount, expected):
    assert follow_dynamics(velocity, player, amount) == expected


def test_song_position_elsewhere_starts_a_fresh_seed_window():
    """After Stop, a locate (SPP) and Continue, notes of the old timeline must not seed."""
    from bridge.clock import MidiClock  # noqa: PLC0415

    clock = MidiClock()
    inputs = InputQueue()
    client = EngineClient("tcp://127.0.0.1:9", ping_interval=0.1, loss_timeout=0.6)
    daemon = Daemon(Settings(), clock, scheduler=Scheduler(FakeOutput(), clock), client=client,
                    style=None, inputs=inputs)
    t = time.monotonic()
    daemon._on_clock(t, mido.Message("start"))
    for k in range(4 * 24):  # one bar at 120 BPM
        daemon._on_clock(t + k / 48, mido.Message("clock"))
    old = daemon.seed
    daemon._on_clock(t + 2.0, mido.Message("stop"))
    daemon._on_clock(t + 2.1, mido.Message("songpos", pos=int(clock.position_beats * 4)))
    assert daemon.seed is old  # the same position: nothing to forget
    daemon._on_clock(t + 2.2, mido.Message("songpos", pos=0))
    assert daemon.seed is not old and clock.position_beats == 0.0
    inputs.close()


def _accompany(daemon, inputs) -> None:
    inputs.put(time.monotonic(), mido.Message("control_change", control=23, value=127))
    assert wait_for(lambda: daemon.mode == "accompany")


@pytest.mark.parametrize("rig", [{"roles": True}], indirect=True)
def test_accompany_with_a_role_model_asks_for_accompaniment_under_the_lead(rig):
    """The player is the lead, melodyd's notes are accompaniment, and only accompaniment
    below the lead's lowest recent note is asked for (models.core.accompaniment)."""
    daemon, engine, _port, inputs, clock = rig
    _accompany(daemon, inputs)
    play_phrase(inputs, clock, pitches=(72, 76, 79))
    assert wait_for(lambda: len(engine.of_type("generate")) >= 2)
    request = engine.of_type("generate")[-1]
    assert request["constraints"]["role"] == "accompaniment"
    assert request["constraints"]["pitch_max"] == 71
    polyphony = daemon.settings.interaction.accompany_polyphony
    assert request["constraints"]["max_polyphony"] == polyphony
    roles = {(n["pitch"], n.get("role")) for n in request["seed"]}
    assert {(72, "lead"), (76, "lead"), (79, "lead")} <= roles
    # The fake's answer notes came back as melodyd's own: they are the accompaniment now.
    assert any(role == "accompaniment" for _pitch, role in roles)
    # Each bar has its deadline, as an answer has: best-of-N fits its candidates to it.
    wanted = request["candidates"]
    assert wanted["n"] == daemon.settings.sampling.candidates
    assert wanted["bpm"] == pytest.approx(clock.bpm)
    assert wanted["ready_ms"] is not None and wanted["ready_ms"] >= 0


@pytest.mark.parametrize("rig", [{"roles": True}], indirect=True)
def test_accompany_knobs_scale_busyness_and_key_strength_within_the_settings_range(rig):
    """CC 27 scales the accompaniment's notes per bar, CC 28 its key strength; the centre
    is the settings, and no turn goes past what the config file could say."""
    daemon, engine, _port, inputs, clock = rig
    _accompany(daemon, inputs)
    inter = daemon.settings.interaction
    # What the ear hears depends on where the bar lines fall among the phrase's notes;
    # a fixed hearing leaves only the knobs to vary.
    heard = Steering(key=parse_key("C major"), key_strength=1.5, notes_per_bar=3.0)
    daemon.ear.steering = lambda _notes, _bar_length: heard
    now = time.monotonic()
    inputs.put(now, mido.Message("control_change", control=27, value=96))  # twice as busy
    inputs.put(now, mido.Message("control_change", control=28, value=0))  # own harmony
    assert wait_for(lambda: daemon.accompany_knobs["accompany_key_strength"] == 0.0)
    play_phrase(inputs, clock, pitches=(72, 76, 79))
    assert wait_for(lambda: len(engine.of_type("generate")) >= 1)
    steering = engine.of_type("generate")[0]["steering"]
    assert steering["key_strength"] == 0.0
    # Three notes a bar heard ask for twice accompany_density times three.
    assert steering["notes_per_bar"] == pytest.approx(2 * inter.accompany_density * 3)
    daemon.accompany_knobs["accompany_density"] = 1000.0
    assert daemon._request_settings().interaction.accompany_density == 8.0  # its maximum
    daemon.accompany_knobs.update(accompany_density=1.0, accompany_key_strength=1.0)
    assert daemon._request_settings().interaction == inter  # the centre: as set


def test_accompany_with_a_model_without_roles_asks_as_before(rig):
    daemon, engine, _port, inputs, clock = rig
    _accompany(daemon, inputs)
    play_phrase(inputs, clock, pitches=(72, 76, 79))
    assert wait_for(lambda: engine.of_type("generate"))
    request = engine.of_type("generate")[0]
    assert "role" not in request["constraints"]
    assert all(n.get("role", "any") == "any" for n in request["seed"])
