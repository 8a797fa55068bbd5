"""Accompaniment for a known melody, bar by bar, with the live path's own decisions.

``melody harmonize`` and the accompaniment evaluation both call :func:`harmonize`. Each
bar is one request built by ``bridge.requests.accompaniment_request`` (what accompany
mode sends live: the melody as ``lead``, what was played as ``accompaniment``, limits and
steering under the lead) and decoded with the bar's own melody written into the stream
(``engine.forcing``), which offline is known before the bar is played. Live, a bar is
asked for a bar ahead, so only the melody before the previous bar is known, nothing is
forced and best-of-N applies: ``harmonize(..., live=True)`` decodes that way, to measure
what accompany mode plays (``melody accompany-eval --live``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

from bridge.ear import Ear
from bridge.requests import accompaniment_request
from engine.decoder import StyleDecoder
from engine.streams import decoder_facts
from models.core.exceptions import EngineError
from models.core.meter import bar_length
from models.core.notes import Note
from models.core.protocol.messages import ChordHint
from models.core.settings import Settings


def quantize(notes: Sequence[Note], positions_per_beat: int) -> list[Note]:
    """Notes with onsets on the model's grid and durations of at least one step."""
    step = 1.0 / positions_per_beat
    return [Note(round(n.onset / step) * step, max(step, round(n.duration / step) * step),
                 n.pitch, n.velocity, n.role) for n in notes]


def bar_count(melody: Sequence[Note], time_signature: tuple[int, int]) -> int:
    """Bars from bar 0 up to the melody's last note (at least one)."""
    length = bar_length(time_signature)
    return max(1, math.ceil(max((n.end for n in melody), default=length) / length - 1e-9))


def hints_between(chords: Sequence[ChordHint], start: float,
                  end: float) -> tuple[ChordHint, ...]:
    """The hints sounding in ``[start, end)``: the one in force at ``start`` (moved to it)
    and those that begin inside."""
    before = [h for h in chords if h.beat <= start + 1e-9]
    inside = tuple(h for h in chords if start + 1e-9 < h.beat < end - 1e-9)
    if before:
        return (ChordHint(start, before[-1].pitch_classes), *inside)
    return inside


def harmonize(decoder: StyleDecoder, melody: Sequence[Note], *, settings: Settings,
              style: str, time_signature: tuple[int, int], seed: int | None = None,
              bars: int | None = None, chords: Sequence[ChordHint] = (),
              on_bar: Callable[[int], None] | None = None, live: bool = False) -> list[Note]:
    """The accompaniment of ``melody`` (onsets >= 0), bar by bar from bar 0.

    Args:
        decoder: a decoder of a model with role tokens.
        melody: the lead line (any role; it is played as ``lead``).
        settings: ``[interaction]`` and ``[sampling]`` as melodyd would use them.
        style: the style asked for (a style token of the model, or its own style).
        time_signature: the melody's time signature.
        seed: sampling seed of the first bar (bar ``i`` uses ``seed + i``), or ``None``.
        bars: how many bars (default: up to the melody's last note).
        chords: chord hints on the melody's timeline (ascending beats), e.g. a song's
            labelled chords; each bar gets those sounding in it, at ``[interaction]
            chord_strength``, instead of the ``[interaction] chords`` loop.
        on_bar: called with each finished bar's index (progress).
        live: accompany as accompany mode does live, where each bar is asked for at the
            bar line before the one it starts on (``bridge.policy.AccompanyPolicy`` keeps
            one bar queued ahead): a bar hears and stays under only the melody before the
            previous bar, and nothing is forced (so ``[sampling] candidates`` applies,
            without a deadline); offline (``False``) the bar's melody is written into the
            stream and heard.

    Raises:
        EngineError: the model has no role tokens, or a request cannot be encoded.
    """
    if not decoder.vocab.role:
        raise EngineError(f"style {style!r}: its model has no role tokens, so it cannot "
                          "play an accompaniment apart from a lead (use a conditioned model "
                          "such as models/pretrained/any.onnx)")
    length = bar_length(time_signature)
    melody = quantize(melody, decoder.tokenizer.settings.positions_per_beat)
    if bars is None:
        bars = bar_count(melody, time_signature)
    facts = decoder_facts(decoder)
    ear = Ear(settings.interaction)
    window = settings.interaction.seed_bars * length
    played: list[Note] = []
    for bar in range(bars):
        start, end = bar * length, (bar + 1) * length
        this_bar = [n for n in melody if start <= n.onset < end]
        # Live, the request leaves a bar ahead: the melody is known up to that bar line.
        known = start - length if live else start
        lead = [n for n in melody if start - window <= n.onset < known]
        own = [n for n in played if start - window <= n.onset < start]
        # Offline the bar's own melody is known: hear it with the bars before. Live it is
        # not played yet: the daemon hears the window and stays under all of it.
        heard = ear.steering(lead if live else lead + this_bar, length)
        request = accompaniment_request(
            settings, style=style, facts=facts, temperature=settings.sampling.temperature,
            lead=lead, own=own, recent_lead=lead if live else (this_bar or lead[-8:]),
            heard=heard, time_signature=time_signature, start_beat=start, bars=1)
        if chords:
            request = dataclasses.replace(request, steering=dataclasses.replace(
                request.steering, chords=hints_between(chords, start, end),
                chord_strength=settings.interaction.chord_strength))
        if seed is not None:
            request = dataclasses.replace(
                request, sampling=dataclasses.replace(request.sampling, seed=seed + bar))
        generation = decoder.start("harmonize", request, lead=() if live else this_bar)
        (notes,) = decoder.decode_until_done([generation])
        played += [n for n in notes if start <= n.onset < end]
        if on_bar is not None:
            on_bar(bar)
    return played
