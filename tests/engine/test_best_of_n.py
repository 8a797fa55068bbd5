"""Best-of-N in the decoder: N candidates per bar in one batch, the critic's choice kept."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from engine import candidates as candidates_module
from engine import critic
from engine.decoder import StyleDecoder
from engine.generation import Generation
from engine.model import load_model
from models.core.notes import Note
from models.core.protocol.messages import Candidates, GenerateRequest, SamplingParams, Steering
from models.core.settings import EngineSettings
from models.core.tonality import parse_key


@pytest.fixture(scope="module")
def model(tiny_onnx_model):
    return load_model(tiny_onnx_model)


def _decoder(model) -> StyleDecoder:
    # A random model crowds its bars: a loose token bound lets every bar end on its Bar.
    return StyleDecoder(model, EngineSettings(max_tokens_per_bar=512), allow_eos=False)


def _request(candidates: Candidates | None = None, bars: int = 2, seed: int = 3
             ) -> GenerateRequest:
    call = tuple(Note(4.0 + i, 0.9, (60, 64, 67, 72, 67, 65, 62, 60)[i], 80) for i in range(8))
    return GenerateRequest(seed=call, start_beat=12.0, bars=bars,
                           sampling=SamplingParams(seed=seed, temperature=0.9),
                           steering=Steering(key=parse_key("C major"), key_strength=1.0,
                                             notes_per_bar=4.0, density_strength=1.0,
                                             min_notes=1),
                           candidates=candidates or Candidates())


def _decode(decoder, request, session="s"):
    gen = decoder.start(session, request)
    return gen, decoder.decode_until_done([gen])[0]


def test_one_candidate_is_todays_path_token_for_token(model):
    plain, plain_notes = _decode(_decoder(model), _request())
    one, one_notes = _decode(_decoder(model), _request(Candidates(1, 120.0, 500.0)))
    # Four asked, but no time for more than one: every bar falls back to plain sampling.
    decoder = _decoder(model)
    decoder.best_of_n.step_seconds = {1: 10.0}
    decoder.best_of_n.observe = lambda rows, seconds: None
    late, late_notes = _decode(decoder, _request(Candidates(4, 120.0, 0.0)))
    assert plain_notes, "the tiny model plays something"
    for gen, notes in ((one, one_notes), (late, late_notes)):
        assert gen.stream == plain.stream
        assert notes == plain_notes
        assert gen.choices == []
        assert gen.log_prob == pytest.approx(plain.log_prob)


def test_each_bar_keeps_the_candidate_the_critic_scores_best(model, monkeypatch):
    decoder = _decoder(model)
    decided: list[tuple[list[list[Note]], list[float], int]] = []
    original = decoder.best_of_n.resolve

    def spy(gen):
        bars = [list(b._notes) for b in gen.branches]
        original(gen)
        _, winner, scores = gen.choices[-1]
        decided.append((bars, scores, winner))

    monkeypatch.setattr(decoder.best_of_n, "resolve", spy)
    request = _request(Candidates(4), bars=2)
    gen = decoder.start("s", request)
    streamed: list[list[Note]] = []
    for (fresh,) in decoder.iter_steps([gen]):
        if fresh:
            streamed.append(fresh)
    assert [n for n, _, _ in gen.choices] == [4, 4]  # one batch of 4 per bar
    assert len(decided) == 2
    call = critic.CallProfile.of(request)
    for (bars, scores, winner), out, bar_start in zip(decided, streamed, (12.0, 16.0),
                                                      strict=True):
        # The candidates differ (their own random streams), and the critic's scores,
        # recomputed here, pick the bar that was streamed, all at once.
        assert len({tuple(b) for b in bars}) > 1
        assert winner == int(np.argmax(scores))
        assert out == bars[winner]
        assert all(bar_start <= n.onset < bar_start + 4.0 for n in out)
        recomputed = [critic.score(critic.BarCandidate(b, 0.0, 0, 4.0), call,
                                   dataclasses.replace(decoder.best_of_n.weights,
                                                       log_likelihood=0.0)) for b in bars]
        best_fit = max(recomputed)
        # Without the likelihood term the winner is at least near the best musical fit.
        assert recomputed[winner] >= best_fit - decoder.best_of_n.weights.log_likelihood * 10
    assert gen.reason == "complete"
    assert gen.grammar.detok.skipped == 0
    assert decoder.pool.used_rows() == 0  # every candidate's row was given back


def test_a_short_deadline_shrinks_n(model):
    decoder = _decoder(model)
    decoder.best_of_n.step_seconds = {1: 0.010, 2: 0.012, 4: 0.016}
    decoder.best_of_n.bar_tokens = 40.0

    def n_for(ready_ms: float) -> int:
        gen = decoder.start("s", _request(Candidates(4, 120.0, ready_ms)))
        n = decoder.best_of_n.candidates_for(gen)
        decoder.cancel(gen)
        return n

    # A bar of 40 tokens: 0.40 s with one row, 0.48 s with two, 0.64 s with four.
    assert n_for(100.0) == 1
    assert n_for(550.0) == 2
    assert n_for(5000.0) == 4
    # Other sessions' rows share the step: fewer candidates fit.
    gen = decoder.start("s", _request(Candidates(4, 120.0, 700.0)))
    assert decoder.best_of_n.candidates_for(gen) == 4
    assert decoder.best_of_n.candidates_for(gen, other_rows=2) == 2


def test_later_bars_get_their_candidates_when_the_first_is_too_near(model):
    decoder = _decoder(model)
    decoder.best_of_n.step_seconds = {1: 0.002, 4: 0.004}
    decoder.best_of_n.observe = lambda rows, seconds: None
    # The first bar is wanted at once; the second a bar later (2 s at 120 BPM).
    gen, notes = _decode(decoder, _request(Candidates(4, 120.0, 0.0), bars=2))
    assert [n for n, _, _ in gen.choices] == [4]
    assert gen.reason == "complete"
    assert any(n.onset < 16.0 for n in notes) and any(n.onset >= 16.0 for n in notes)


def test_cancel_mid_bar_keeps_a_consistent_cache(model):
    decoder = _decoder(model)
    gen = decoder.start("s", _request(Candidates(4)))
    decoder.step([gen])
    decoder.step([gen])
    assert gen.branches is not None
    decoder.cancel(gen)
    assert gen.reason == "cancelled"
    assert decoder.pool.used_rows() == 0
    again = decoder.start("s", _request(Candidates(1)))
    assert again.reused_tokens > 0


class _MovableClock:
    """``time.perf_counter`` plus an offset a test moves (the deadline passes at once)."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.perf_counter() + self.ahead


def _forked_with_time_to_spare(model) -> tuple[StyleDecoder, _MovableClock, Generation]:
    """A decoder whose first bar forks into 4 (the estimate says there is time)."""
    decoder = _decoder(model)
    clock = _MovableClock()
    decoder.best_of_n.clock = clock
    decoder.best_of_n.step_seconds = {1: 1e-6, 4: 1e-6}
    decoder.best_of_n.observe = lambda rows, seconds: None
    gen = decoder.start("s", _request(Candidates(4, 120.0, 60_000.0), bars=2))
    decoder.step([gen])
    assert gen.branches is not None and len(gen.branches) == 4
    return decoder, clock, gen


def test_a_bar_past_its_deadline_goes_on_with_the_candidate_furthest_into_it(model):
    decoder, clock, gen = _forked_with_time_to_spare(model)
    # The candidates step together (as many tokens each) but their notes reach different
    # places in the bar.
    for _ in range(64):
        times = [b.grammar.detok.time for b in gen.branches]
        if len(set(times)) > 1:
            break
        decoder.step([gen])
    assert len(set(times)) > 1, "the candidates never parted: try a seed"
    assert not any(b.parked or b.done for b in gen.branches)
    furthest = gen.branches[int(np.argmax(times))]
    clock.ahead = 3600.0  # the estimate was wrong: the deadline has passed
    assert decoder.best_of_n.cut_if_late(gen, rows=4)
    # No candidate finished the bar: the furthest goes on alone, and the rest of its bar
    # streams as it is sampled, as one candidate would have.
    assert gen.branches is None
    assert gen.choices == [(1, int(np.argmax(times)), [])]
    assert gen.stream == furthest.stream
    assert decoder.best_of_n.cuts == 1
    assert decoder.pool.busy_rows() == 1  # the three others gave their rows back
    gen.drain_notes()  # what it had sampled so far, at once
    first_bar_later = []
    while not gen.done:
        decoder.step([gen])
        first_bar_later += [n for n in gen.drain_notes() if n.onset < 16.0]
    assert first_bar_later, "the first bar's later notes came one step at a time"
    assert gen.reason == "complete"
    assert decoder.pool.used_rows() == 0


def test_a_bar_past_its_deadline_is_chosen_among_the_candidates_that_finished_it(model):
    decoder, clock, gen = _forked_with_time_to_spare(model)
    for _ in range(512):
        finished = [i for i, b in enumerate(gen.branches) if b.parked]
        if finished and len(finished) < len(gen.branches):
            break
        decoder.step([gen])
        assert gen.branches is not None, "every candidate ended on one step: try a seed"
    else:
        pytest.fail("no candidate finished its bar before the others")
    call = critic.CallProfile.of(gen.request)
    span = 4.0
    scores = [critic.score(critic.BarCandidate(gen.branches[i]._notes,
                                               gen.branches[i].log_prob - gen._fork_log_prob,
                                               gen.branches[i].tokens - gen._fork_tokens, span),
                           call, decoder.best_of_n.weights) for i in finished]
    clock.ahead = 3600.0
    assert decoder.best_of_n.cut_if_late(gen, rows=4)
    assert gen.branches is None
    n, winner, kept_scores = gen.choices[0]
    # Only the finished candidates were compared, and the critic's best of them won.
    assert n == len(finished)
    assert winner == finished[int(np.argmax(scores))]
    assert kept_scores == pytest.approx(scores)
    assert decoder.pool.busy_rows() == 1
    rest = decoder.decode_until_done([gen])[0]
    assert gen.reason == "complete"
    assert any(note.onset >= 16.0 for note in rest)
    assert decoder.pool.used_rows() == 0


def test_a_cut_does_not_end_the_answer_on_a_candidate_that_stopped_early(model):
    decoder, clock, gen = _forked_with_time_to_spare(model)
    early = gen.branches[2]
    early.done, early.reason = True, "eos"  # as if it had drawn EOS mid-bar
    clock.ahead = 3600.0
    assert decoder.best_of_n.cut_if_late(gen, rows=4)
    assert gen.choices[0][:2] != (1, 2) and not gen.done
    assert decoder.decode_until_done([gen]) and gen.reason == "complete"


def test_the_critic_sees_the_answers_bars_before_the_one_it_chooses(model, monkeypatch):
    """The variety term judges a bar with the answer so far: the second bar's candidates
    carry the first bar's streamed notes."""
    decoder = _decoder(model)
    seen: list[list[critic.BarCandidate]] = []
    original = candidates_module.best

    def spy(candidates, call, weights):
        seen.append(list(candidates))
        return original(candidates, call, weights)

    monkeypatch.setattr(candidates_module, "best", spy)
    gen = decoder.start("s", _request(Candidates(4), bars=2))
    streamed: list[Note] = []
    for (fresh,) in decoder.iter_steps([gen]):
        streamed += fresh
    assert len(seen) == 2
    first_bar = [n for n in streamed if n.onset < 16.0]
    assert first_bar
    assert all(list(c.before) == [] for c in seen[0])
    assert all(list(c.before) == first_bar for c in seen[1])
