"""Accompany mode's requests, bar after bar, reuse the engine's cache of the previous
one: the seed window moves in steps of whole windows (``SeedWindow.anchored_start``), so
each prompt begins like the last and only what the player added runs through the model."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from bridge.requests import accompaniment_request
from bridge.seed import SeedWindow
from engine.decoder import StyleDecoder
from engine.model import load_model
from models.core.notes import Note
from models.core.protocol.messages import SamplingParams, Steering
from models.core.settings import EngineSettings, Settings

BAR = 4.0
BARS = 12


@pytest.fixture(scope="module")
def decoder(tiny_conditioned_onnx):
    model = load_model(tiny_conditioned_onnx, EngineSettings(intra_op_threads=1))
    return StyleDecoder(model, EngineSettings(intra_op_threads=1), allow_eos=False)


def _melody(bar: int, per_bar: int) -> list[Note]:
    """The player's bar: ``per_bar`` notes walking up and down the C major scale."""
    step = BAR / per_bar
    return [Note(bar * BAR + i * step, step, 72 + (2 * (bar + i)) % 12, 90)
            for i in range(per_bar)]


def _play_along(decoder: StyleDecoder, session: str, *, anchored: bool,
                per_bar: int) -> list[tuple[int, int]]:
    """A live accompany session: at each bar line the player's bar just played joins the
    window and the bar after the coming one is asked for, its notes played back as
    melodyd's own; (prompt tokens, reused tokens) of each request."""
    settings = Settings()
    window = SeedWindow(settings.interaction.seed_bars, BAR)
    figures = []
    for bar in range(BARS):
        for note in _melody(bar, per_bar):
            window.note_on(note.onset, note.pitch, note.velocity)
            window.note_off(note.end, note.pitch)
        now = (bar + 1) * BAR  # the bar line after the bar just played
        target = now + BAR  # the bar after the coming one (whose notes are queued)
        start = window.anchored_start(now) if anchored else None
        request = accompaniment_request(
            settings, style="pop", facts={"roles": True}, temperature=1.0,
            lead=window.notes(now, start=start),
            own=window.own_notes(now, until=target, start=start),
            recent_lead=window.notes(now), heard=Steering(), time_signature=(4, 4),
            start_beat=target, bars=1)
        request = dataclasses.replace(request, sampling=SamplingParams(seed=bar))
        generation = decoder.start(session, request)
        (notes,) = decoder.decode_until_done([generation])
        window.add_own(notes)
        figures.append((generation.prefill_tokens + generation.reused_tokens,
                        generation.reused_tokens))
    return figures


def test_bar_after_bar_the_anchored_window_reuses_most_of_each_prompt(decoder):
    """A sparse lead: every prompt fits the tiny model's context, so only the bridge's
    window decides where prompts begin."""
    anchored = _play_along(decoder, "anchored", anchored=True, per_bar=1)
    sliding = _play_along(decoder, "sliding", anchored=False, per_bar=1)
    assert all(total < decoder.model.context_length * 3 // 4 for total, _ in anchored)
    # Past the first bars, a window sliding by a bar every bar changes each prompt's
    # first notes: nothing past the first few tokens (BOS, style, ...) is reused.
    assert all(reused <= 8 for _total, reused in sliding[5:]), sliding
    # Anchored, a request reuses everything up to the bar the player just added, except
    # when the window jumps (once in seed_bars bars).
    share = [reused / total for total, reused in anchored[5:]]
    assert sum(s > 0.5 for s in share) >= len(share) - 2, anchored
    run_anchored = sum(total - reused for total, reused in anchored[5:])
    run_sliding = sum(total - reused for total, reused in sliding[5:])
    assert run_anchored < 0.6 * run_sliding, (anchored, sliding)


def test_a_prompt_cut_to_fit_keeps_its_first_bar_from_request_to_request(decoder):
    """A dense lead overflows the tiny model's context: the engine cuts the seed on bars
    that are multiples of CUT_STEP_BARS, so successive prompts still share their start."""
    figures = _play_along(decoder, "cut", anchored=True, per_bar=4)
    budget = decoder.model.context_length * 3 // 4
    # Cuts happen: a prompt near the budget is followed by a shorter one while the
    # window has not moved (the window moves at bars 7 and 11 here).
    assert any(total > budget * 3 // 4 and following < total
               for (total, _), (following, _) in itertools.pairwise(figures[3:7]))
    share = [reused / total for total, reused in figures[5:]]
    assert sum(s > 0.5 for s in share) >= len(share) - 3, figures


def test_a_chord_loop_gives_each_requested_bar_its_chord():
    """[interaction] chords reaches the engine as one hint per bar asked for, whichever
    mode asks (accompany requests are built on the answers' request)."""
    settings = Settings()
    settings = dataclasses.replace(settings, interaction=dataclasses.replace(
        settings.interaction, chords="C G Am F", chord_strength=4.0))
    request = accompaniment_request(
        settings, style="pop", facts={"roles": True}, temperature=1.0,
        lead=_melody(0, 4), own=[], recent_lead=_melody(0, 4), heard=Steering(),
        time_signature=(4, 4), start_beat=20.0, bars=2)
    steering = request.steering
    assert steering.chord_strength == 4.0
    assert [(h.beat, h.pitch_classes) for h in steering.chords] == [
        (20.0, (2, 7, 11)), (24.0, (0, 4, 9))]  # bars 5 and 6: G, Am
    plain = accompaniment_request(
        Settings(), style="pop", facts={"roles": True}, temperature=1.0,
        lead=_melody(0, 4), own=[], recent_lead=_melody(0, 4), heard=Steering(),
        time_signature=(4, 4), start_beat=20.0, bars=2)
    assert plain.steering.chords == () and plain.steering.chord_strength == 0.0
