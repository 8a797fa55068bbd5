"""The melodyd daemon's brain: one thread that listens, decides, asks and schedules.

It owns the engine socket and everything that is not thread-safe (seed window, policy,
requests). Each ``turn`` sleeps in one ``zmq.Poller`` on the engine socket and the input
queue's wake-up pipe, with a timeout at the next thing due (a heartbeat, the end of a
phrase's silence, a bar line in accompany mode, the status line), so an idle daemon wakes
only a few times a second. The scheduler thread plays what it schedules. The parts it
uses are started and stopped by ``bridge.app.Melodyd``, which also runs the turns.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any

import mido
import zmq

from bridge.client import EngineClient
from bridge.clock import Clock, MidiClock
from bridge.controls import ControlMap
from bridge.ear import Ear
from bridge.listener import InputQueue
from bridge.policy import AccompanyPolicy, CallResponsePolicy, Trigger
from bridge.requests import accompaniment_request, generate_request, has_roles
from bridge.scheduler import Scheduler
from bridge.seed import SeedWindow
from bridge.status import Response, StatusLine, format_status
from models.core import protocol
from models.core.exceptions import ProtocolError
from models.core.notes import Note
from models.core.settings import Settings, clamp_to_setting

logger = logging.getLogger(__name__)

CLOCK_MESSAGES = ("clock", "start", "stop", "continue", "songpos")
MAX_WAIT_S = 5.0  # the poll never sleeps longer, so a missed wake-up costs at most this


def follow_dynamics(velocity: int, player: float | None, amount: float) -> int:
    """Blend a model velocity toward the player's recent mean (``amount`` 0-1)."""
    if player is None or amount <= 0:
        return velocity
    return max(1, min(127, round((1 - amount) * velocity + amount * player)))


class Daemon:
    """Wires clock, seed window, policy, engine client and scheduler together.

    Args:
        settings: every section of the config (flags already applied).
        clock: the beat timeline (an ``InternalClock`` already started, or a ``MidiClock``).
        scheduler: plays the answers (started before the first turn).
        client: the engine client (opened before the first turn).
        style: the style to ask for; ``None`` takes the engine's first style.
        inputs: the queue the input port's callback feeds.
    """

    def __init__(self, settings: Settings, clock: Clock, *, scheduler: Scheduler,
                 client: EngineClient, style: str | None, inputs: InputQueue) -> None:
        self.settings = settings
        self.clock = clock
        self.client = client
        self.inputs = inputs
        self.style = style
        self.styles: list[str] = []
        self._style_facts: dict[str, dict[str, Any]] = {}  # per style, from the engine's hello
        self.mode = settings.interaction.mode
        self.temperature = settings.sampling.temperature
        self.session = f"melodyd-{os.getpid()}"
        self.last_latency_ms: float | None = None
        inter = settings.interaction
        self.seed = SeedWindow(inter.seed_bars, clock.bar_length)
        self.call = CallResponsePolicy.from_settings(inter, clock.bar_length)
        self.accompany = AccompanyPolicy(clock.bar_length, inter.accompany_stop_bars)
        self.controls = ControlMap(settings.midi)
        self.ear = Ear(inter)
        # Accompany mode's knobs: factors on their [interaction] settings (1.0 = as set).
        self.accompany_knobs = {"accompany_density": 1.0, "accompany_key_strength": 1.0}
        self.morph_amount: float | None = None  # the morph knob, once turned
        self.scheduler = scheduler
        self.status = StatusLine()
        self._responses: dict[str, Response] = {}
        self._answer: str | None = None  # the running call-and-response answer
        self._next_status = 0.0
        self._engine_state = "connecting"  # the client's state when last looked at
        self._poller = zmq.Poller()
        self._poller.register(inputs.wake_fd, zmq.POLLIN)
        self._polled: zmq.Socket | None = None  # the engine socket in the poller

    # ----------------------------------------------------------------- the loop
    def turn(self) -> None:
        """One turn: sleep until something is due or arrives (at most ``MAX_WAIT_S``),
        then handle the MIDI input, the engine's replies, the policy and the status."""
        until_ping = self.client.service()
        self._follow_engine()
        socket = self.client.socket
        if socket is not self._polled:  # replaced after an engine loss
            if self._polled is not None:
                self._poller.unregister(self._polled)
            self._poller.register(socket, zmq.POLLIN)
            self._polled = socket
        timeout = min(until_ping, self._policy_wait(), self._status_wait())
        self._poller.poll(max(0, math.ceil(timeout * 1000)))
        for t, message in self.inputs.drain():
            self._on_midi(t, message)
        replies = self.client.receive()
        self._follow_engine()
        for reply in replies:
            self._on_reply(reply)
        self._check_policy()
        self._show_status()

    def engine_replaced(self, reason: str) -> None:
        """The engine process died and another took its place: what it was generating is
        lost, even if the new one answers before any silence shows."""
        self.client.lose(reason)
        self._follow_engine()

    def close(self) -> None:
        """End the status line (the last turn has run)."""
        self.status.clear()

    # ----------------------------------------------------------------- MIDI input
    def _on_midi(self, t: float, msg: mido.Message) -> None:
        if msg.type in CLOCK_MESSAGES:
            self._on_clock(t, msg)
            return
        channel = self.settings.midi.input_channel
        if channel and getattr(msg, "channel", channel - 1) != channel - 1:
            return
        if msg.type == "control_change":
            self._on_control(msg.control, msg.value)
            return
        if msg.type not in ("note_on", "note_off"):
            return
        beat = self.clock.input_beat(t)
        if beat is None:
            return  # the DAW's transport is stopped: no timeline to put the note on
        if msg.type == "note_on" and msg.velocity > 0:
            self.seed.note_on(beat, msg.note, msg.velocity)
            if self._policy().on_player_note(beat) and self._answer is not None:
                response = self._responses.get(self._answer)
                if response is not None and beat < response.start_beat:
                    logger.info("the phrase goes on: dropping response %s, asked ahead of "
                                "its silence", self._answer)
                else:
                    logger.info("barge-in: stopping response %s", self._answer)
                self._end_request(self._answer)
                self._answer = None
        else:
            self.seed.note_off(beat, msg.note)

    def _on_clock(self, t: float, msg: mido.Message) -> None:
        clock = self.clock
        if not isinstance(clock, MidiClock):
            return
        if msg.type == "clock":
            clock.tick(t)
        elif msg.type == "start":
            self._silence("transport start")
            self.seed = SeedWindow(self.seed.bars, clock.bar_length)  # the song restarts
            clock.start()
        elif msg.type == "continue":
            clock.resume()
        elif msg.type == "stop":
            clock.stop()
            self._silence("transport stop")
        elif msg.type == "songpos":
            before = clock.position_beats
            clock.song_position(msg.pos)
            if clock.position_beats != before:
                # The DAW located elsewhere: what was played lies on the old timeline, and
                # would sit in the future of the new one and confuse the next seed.
                self.seed = SeedWindow(self.seed.bars, clock.bar_length)

    def _on_control(self, control: int, value: int) -> None:
        action = self.controls.interpret(control, value, len(self.styles))
        if action is None:
            return
        logger.info("control: %s = %s", action.kind, action.value)
        if action.kind == "panic":
            self._silence("panic")
        elif action.kind == "temperature":
            self.temperature = float(action.value)
        elif action.kind == "length":
            self.call.bars = int(action.value)
        elif action.kind == "mode" and action.value != self.mode:
            self._silence("mode change")
            self.mode = str(action.value)
        elif action.kind == "key_lock":
            self.ear.lock_key(bool(action.value))
        elif action.kind == "follow":
            self.ear.set_follow(int(action.value))
        elif action.kind == "morph":
            self.morph_amount = float(action.value)
            if not self.settings.interaction.morph_style:
                logger.warning("the morph knob needs a style to morph towards: set "
                               "[interaction] morph_style or start with --morph STYLE")
        elif action.kind in self.accompany_knobs:
            self.accompany_knobs[action.kind] = float(action.value)
        elif action.kind == "style" and self.styles:
            self.style = self.styles[int(action.value)]

    # ----------------------------------------------------------------- decisions
    def _policy(self) -> CallResponsePolicy | AccompanyPolicy:
        return self.call if self.mode == "call" else self.accompany

    def _request_settings(self) -> Settings:
        """The settings with the live knobs applied to their ``[interaction]`` values:
        accompany mode's (each kept within what the setting allows) and the morph's."""
        inter = self.settings.interaction
        turned: dict[str, float] = {
            name: clamp_to_setting(inter, name, getattr(inter, name) * factor)
            for name, factor in self.accompany_knobs.items()}
        if self.morph_amount is not None:
            turned["morph_amount"] = self.morph_amount
        return dataclasses.replace(self.settings,
                                   interaction=dataclasses.replace(inter, **turned))

    def _lead_beats(self) -> float:
        bpm = self.clock.bpm or 120.0
        return self.settings.interaction.min_lead_ms / 1000.0 * bpm / 60.0

    def _policy_wait(self) -> float:
        now = time.monotonic()
        beat = self.clock.beat_at(now)
        if beat is None:
            return MAX_WAIT_S
        when = self._policy().next_check(self.seed, beat)
        wall = None if when is None else self.clock.time_at(when)
        return MAX_WAIT_S if wall is None else min(MAX_WAIT_S, max(0.0, wall - now))

    def _check_policy(self) -> None:
        now = time.monotonic()
        beat = self.clock.beat_at(now)
        if beat is None:
            return
        if self._answer is not None and not self.call.answering:
            self._responses.pop(self._answer, None)  # it played out
            self._answer = None
        if self.client.state != "up" or self.style is None:
            return
        trigger = self._policy().due(beat, self.seed, self._lead_beats())
        if trigger is not None:
            self._request(trigger, now, beat)

    def _request(self, trigger: Trigger, now: float, beat: float) -> None:
        facts = self._style_facts.get(self.style or "", {})
        # The call (or the lead) is the player's notes of the window, never melodyd's own.
        player = self.seed.notes(beat)
        heard = self.ear.steering(player, self.clock.bar_length)
        if self.mode == "accompany" and has_roles(facts):
            # The player is the lead, melodyd's notes the accompaniment, and only
            # accompaniment is asked for, under the lead (models.core.accompaniment).
            # The seed's window moves in steps of seed_bars bars (SeedWindow.anchored_start),
            # so each bar's request begins like the previous one and the engine only runs
            # what changed; the ceiling and the ear keep to the last seed_bars bars.
            start = self.seed.anchored_start(beat)
            own = self.seed.own_notes(beat, until=trigger.own_until or trigger.start_beat,
                                      start=start)
            # The bar being asked for is not played yet: stay under the lowest note of the
            # last seed_bars bars (only a melody going lower than it went in the last seed_bars
            # bars can meet the accompaniment; the last bar alone let it climb into the
            # next bar's melody).
            request = accompaniment_request(
                self._request_settings(), style=self.style, facts=facts,
                temperature=self.temperature, lead=self.seed.notes(beat, start=start),
                own=own, recent_lead=player, heard=heard,
                time_signature=self.clock.time_signature, start_beat=trigger.start_beat,
                bars=trigger.bars, now_beat=beat, bpm=self.clock.bpm)
        else:
            request = generate_request(
                self._request_settings(), style=self.style, facts=facts,
                temperature=self.temperature,
                seed=self.seed.notes(beat, own_until=trigger.own_until),
                time_signature=self.clock.time_signature, start_beat=trigger.start_beat,
                bars=trigger.bars, steering=heard, now_beat=beat, bpm=self.clock.bpm)
        seed = request.seed
        try:
            request_id = self.client.generate(self.session, request)
        except ProtocolError as err:
            # Checked by the engine's own rules before sending: asking would only earn an
            # error reply. As after one, no answer runs: call mode waits for the next
            # phrase, accompany mode asks for the next bar.
            logger.warning("not asking the engine for an answer at beat %g: %s",
                           trigger.start_beat, err)
            if self.mode == "call":
                self.call.cancel()
            return
        self._responses[request_id] = Response(request_id, now, beat, trigger.start_beat,
                                               trigger.bars)
        if self.mode == "call":
            self._answer = request_id
        logger.debug("request %s at beat %.2f: start %g, %d bar(s), seed of %d notes",
                     request_id, beat, trigger.start_beat, trigger.bars, len(seed))

    # ----------------------------------------------------------------- engine replies
    def _on_reply(self, reply: protocol.Reply) -> None:
        if isinstance(reply, protocol.HelloReply):
            self._on_hello(reply)
        elif isinstance(reply, protocol.NotesReply):
            self._on_notes(reply)
        elif isinstance(reply, protocol.DoneReply):
            response = self._responses.get(reply.id)
            if response is not None:
                response.done = True
                logger.debug("%s", response.describe(reply.reason))
                if self.mode == "accompany":
                    self._responses.pop(reply.id, None)
        elif isinstance(reply, protocol.ErrorReply):
            logger.warning("engine error %s: %s", reply.code, reply.message)
            if reply.id in self._responses:
                self._end_request(reply.id, tell_engine=False)

    def _on_hello(self, reply: protocol.HelloReply) -> None:
        self.styles = sorted(reply.styles)
        self._style_facts = {name: dict(facts) for name, facts in reply.styles.items()}
        if self.style not in self.styles:
            if self.style is not None:
                logger.error("the engine does not serve style %r (it serves %s); playing "
                             "%s instead. Install it with `melody add-style` or choose "
                             "another with --style", self.style,
                             ", ".join(self.styles) or "nothing",
                             self.styles[0] if self.styles else "nothing")
            self.style = self.styles[0] if self.styles else None
        logger.info("engine serves %s; playing %s", ", ".join(self.styles) or "nothing",
                    self.style)

    def _on_notes(self, reply: protocol.NotesReply) -> None:
        response = self._responses.get(reply.id)
        if response is None:
            return  # a cancelled or finished request's stragglers
        player = self.seed.recent_velocity()
        amount = self.settings.interaction.follow_dynamics
        # The notes were checked by the protocol's parser (pitch, velocity, duration > 0).
        notes = [Note(n.onset, n.duration, n.pitch, follow_dynamics(n.velocity, player, amount))
                 for n in reply.notes]
        if not notes:
            return
        now = time.monotonic()
        if response.first_lead_ms is None:
            due = self.clock.time_at(min(n.onset for n in notes))
            response.first_lead_ms = None if due is None else (due - now) * 1000.0
            response.latency_ms = (now - response.trigger_t) * 1000.0
            self.last_latency_ms = response.latency_ms
        response.notes.extend(notes)
        self.scheduler.schedule(response.id, notes)
        if self.mode == "accompany":
            self.seed.add_own(notes)

    # ----------------------------------------------------------------- safety
    def _end_request(self, request_id: str, tell_engine: bool = True) -> None:
        """Stop one response: the engine stops generating, its notes are released."""
        response = self._responses.pop(request_id, None)
        if response is not None and not response.done:
            if tell_engine and self.client.state == "up":
                self.client.cancel(request_id)
            logger.debug("%s", response.describe("cancelled"))
        self.scheduler.cancel(request_id)
        if request_id == self._answer:
            self._answer = None
            self.call.cancel()

    def _silence(self, reason: str) -> None:
        """Stop every response and release every note (panic, stop, engine loss)."""
        for request_id in list(self._responses):
            self._end_request(request_id)
        self._answer = None
        self.call.cancel()
        self.accompany.cancel()
        self.seed.clear_own()
        self.scheduler.panic(reason)
        logger.info("%s: all notes released", reason)

    def _follow_engine(self) -> None:
        """Act on the engine coming up (ask what it serves) or going away (release)."""
        state = self.client.state
        if state == self._engine_state:
            return
        self._engine_state = state
        if state == "up":
            self.client.hello()
        elif state == "lost":
            self._engine_lost()

    def _engine_lost(self) -> None:
        for response in self._responses.values():
            if not response.done:
                logger.warning("%s", response.describe("abandoned: engine lost"))
        self._responses.clear()  # the engine forgot them; nothing to cancel
        self._silence("engine lost")

    # ----------------------------------------------------------------- status
    def _status_wait(self) -> float:
        interval = self.settings.interaction.status_interval_s
        if interval <= 0 or not self.status.visible:
            return MAX_WAIT_S  # no reason to wake up for a line nobody sees
        return max(0.0, self._next_status - time.monotonic())

    def _show_status(self) -> None:
        interval = self.settings.interaction.status_interval_s
        now = time.monotonic()
        if interval <= 0 or now < self._next_status or not self.status.visible:
            return
        self._next_status = now + interval
        beat = self.clock.beat_at(now)
        stats = self.scheduler.stats
        self.status.show(format_status(
            bpm=self.clock.bpm, mode=self.mode,
            bar=None if beat is None else self.clock.bar_of(beat),
            latency_ms=self.last_latency_ms, sent=stats.sent, dropped=stats.dropped,
            engine=self.client.state, style=self.style or "-"))
