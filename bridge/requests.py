"""The ``generate`` request the daemon sends, as a typed ``GenerateRequest``.

Pure functions of the settings, the engine's facts about the style and the seed, shared by
the daemon (which sends the request over zmq) and the jam harness (``engine.tools.jam``,
which plays scripted calls through the same decisions without ports or sockets), so what
the harness measures is what a musician gets. The request is a protocol type: encoding it
runs the engine's own validation (``models.core.protocol.wire.encode``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from models.core.accompaniment import (
    accompaniment_constraints,
    accompaniment_steering,
    with_roles,
)
from models.core.chords import loop_hints, parse_chord_loop
from models.core.meter import TimeSignature, bar_length
from models.core.notes import Note
from models.core.protocol.limits import STYLE_ANY
from models.core.protocol.messages import GenerateRequest, Morph, Steering
from models.core.settings import InteractionSettings, Settings


def style_pitch_range(settings: Settings, facts: Mapping[str, Any]) -> tuple[int, int]:
    """``[sampling]``'s pitch range within what the style's vocabulary can play.

    The engine refuses a range beyond the style's (``hello`` says what it is), so a
    configured 0-127 asks for the style's whole range instead of failing every answer.

    Args:
        settings: the daemon's settings.
        facts: what the engine's ``hello`` said about the style (may be empty).
    """
    s = settings.sampling
    low, high = s.pitch_min, s.pitch_max
    if isinstance(facts.get("pitch_min"), int) and isinstance(facts.get("pitch_max"), int):
        low, high = max(low, facts["pitch_min"]), min(high, facts["pitch_max"])
        if low > high:  # no overlap at all: the style's range is the only playable one
            low, high = facts["pitch_min"], facts["pitch_max"]
    return low, high


def generate_request(settings: Settings, *, style: str, facts: Mapping[str, Any],
                     temperature: float, seed: Sequence[Note],
                     time_signature: TimeSignature, start_beat: float,
                     bars: int, steering: Steering | None = None,
                     now_beat: float | None = None,
                     bpm: float | None = None) -> GenerateRequest:
    """What one ``generate`` asks for (its session and id are the client's).

    Args:
        settings: the daemon's settings (``[sampling]`` gives sampling and constraints).
        style: the style asked for.
        facts: the engine's facts about that style (its pitch range).
        temperature: the live temperature (a CC may have changed it from the config).
        seed: the seed window's notes.
        time_signature: the clock's time signature.
        start_beat: where the answer starts (the policy's trigger).
        bars: its length in bars.
        steering: what the ear heard in the call (``bridge.ear``); ``None``: none.
        now_beat: the beat the request leaves at and ``bpm`` the tempo: with them the
            engine knows when each bar is due and shrinks best-of-N to fit
            (``[sampling] candidates``); either ``None``: no deadline.
    """
    s = settings.sampling
    steering = steering or Steering()
    chords = settings.interaction.chords
    if chords.strip():  # a chord loop: its chords for the bars asked for
        steering = dataclasses.replace(
            steering, chord_strength=settings.interaction.chord_strength,
            chords=loop_hints(parse_chord_loop(chords), start_beat=start_beat, bars=bars,
                              bar_length=bar_length(time_signature)))
    return GenerateRequest(
        morph=morph_of(settings.interaction, facts),
        seed=tuple(seed), start_beat=start_beat, bars=bars,
        time_signature=(time_signature[0], time_signature[1]), style=style,
        sampling=s.sampling_params(temperature),
        constraints=s.constraints(style_pitch_range(settings, facts)),
        steering=steering,
        candidates=s.candidates_for(now_beat=now_beat, start_beat=start_beat, bpm=bpm))


def morph_of(interaction: InteractionSettings, facts: Mapping[str, Any]) -> Morph | None:
    """The request's ``morph``: the morph towards ``morph_style`` when one is set, else
    style guidance from the "any" style when ``style_guidance`` is above 1 and the model
    has style tokens (``hello``'s ``style_tokens``), else none."""
    if interaction.morph_style and interaction.morph_amount != 0:
        return Morph(interaction.morph_style, interaction.morph_amount)
    if interaction.style_guidance > 1 and STYLE_ANY in facts.get("style_tokens", ()):
        return Morph(STYLE_ANY, 1.0 - interaction.style_guidance)
    return None


def accompaniment_request(settings: Settings, *, style: str, facts: Mapping[str, Any],
                          temperature: float, lead: Sequence[Note], own: Sequence[Note],
                          recent_lead: Sequence[Note], heard: Steering,
                          time_signature: TimeSignature, start_beat: float,
                          bars: int, now_beat: float | None = None,
                          bpm: float | None = None) -> GenerateRequest:
    """What accompany mode (and ``melody harmonize``) asks of a model with role tokens.

    Args:
        settings: the daemon's settings (``[interaction] accompany_*``, ``[sampling]``).
        style: the style asked for.
        facts: the engine's facts about that style.
        temperature: the live temperature.
        lead: the player's (or the file's) notes of the seed window: the ``lead``.
        own: melodyd's notes of the window: the ``accompaniment``.
        recent_lead: the lead notes the ceiling stays under (live: the seed window; offline:
            the bar's own melody).
        heard: what the ear heard in the lead (``bridge.ear``).
        time_signature: the clock's time signature.
        start_beat: the bar to accompany.
        bars: how many bars.
        now_beat: the beat the request leaves at and ``bpm`` the tempo (live): each bar's
            deadline for best-of-N, as ``generate_request`` has them; ``None`` offline.
    """
    request = generate_request(settings, style=style, facts=facts, temperature=temperature,
                               seed=with_roles(lead, own), time_signature=time_signature,
                               start_beat=start_beat, bars=bars,
                               steering=accompaniment_steering(heard, settings.interaction),
                               now_beat=now_beat, bpm=bpm)
    return dataclasses.replace(request, constraints=accompaniment_constraints(
        request.constraints, recent_lead, settings.interaction))


def has_roles(facts: Mapping[str, Any]) -> bool:
    """Whether the engine's ``hello`` says the style's model has role tokens."""
    return bool(facts.get("roles"))
