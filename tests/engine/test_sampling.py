"""Sampling on logits: masks, temperature, top-k/top-p/min-p, greedy, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from engine.sampling import make_rng, probabilities, sample
from models.core.exceptions import EngineError
from models.core.protocol.messages import SamplingParams

VOCAB = 64


@pytest.fixture
def logits() -> np.ndarray:
    return np.random.default_rng(7).normal(0.0, 2.0, VOCAB).astype(np.float32)


def _entropy_of_samples(tokens: list[int]) -> float:
    counts = np.bincount(tokens, minlength=VOCAB).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_temperature_changes_the_entropy_of_samples(logits):
    entropies = {}
    for temperature in (0.3, 1.0, 2.5):
        params = SamplingParams(temperature=temperature, seed=3)
        rng = make_rng(params)
        tokens = [sample(logits, params, rng) for _ in range(4000)]
        entropies[temperature] = _entropy_of_samples(tokens)
    assert entropies[0.3] < entropies[1.0] - 0.3
    assert entropies[1.0] < entropies[2.5] - 0.3


def test_temperature_is_applied_to_the_logits(logits):
    p1 = probabilities(logits, SamplingParams(temperature=1.0))
    p2 = probabilities(logits, SamplingParams(temperature=2.0))
    expected = np.exp(logits / 2.0) / np.exp(logits / 2.0).sum()
    np.testing.assert_allclose(p2, expected, rtol=1e-5)
    assert not np.allclose(p1, p2)


def test_masked_tokens_are_never_drawn(logits):
    allowed = np.zeros(VOCAB, dtype=bool)
    allowed[[3, 10, 40]] = True
    params = SamplingParams(temperature=5.0, seed=1)
    rng = make_rng(params)
    drawn = {sample(logits, params, rng, allowed) for _ in range(500)}
    assert drawn == {3, 10, 40}


def test_greedy_takes_the_best_allowed_token(logits):
    allowed = np.ones(VOCAB, dtype=bool)
    allowed[int(np.argmax(logits))] = False
    token = sample(logits, SamplingParams(greedy=True), make_rng(SamplingParams()), allowed)
    assert token == int(np.argsort(logits)[-2])


def test_top_k_keeps_k_tokens(logits):
    p = probabilities(logits, SamplingParams(top_k=5))
    assert (p > 0).sum() == 5
    assert set(np.flatnonzero(p)) == set(np.argsort(logits)[-5:])


def test_top_p_keeps_the_smallest_set_reaching_p(logits):
    full = probabilities(logits, SamplingParams())
    p = probabilities(logits, SamplingParams(top_p=0.8))
    kept = np.flatnonzero(p)
    assert full[kept].sum() >= 0.8
    # Without its least likely member the set falls short of p.
    assert full[kept].sum() - full[kept].min() < 0.8


def test_min_p_drops_unlikely_tokens(logits):
    full = probabilities(logits, SamplingParams())
    p = probabilities(logits, SamplingParams(min_p=0.1))
    assert set(np.flatnonzero(p)) == set(np.flatnonzero(full >= 0.1 * full.max()))


def test_a_seed_reproduces_the_draws(logits):
    params = SamplingParams(temperature=1.2, top_p=0.95, seed=42)
    first = [sample(logits, params, r) for r in [make_rng(params)] for _ in range(50)]
    again = [sample(logits, params, r) for r in [make_rng(params)] for _ in range(50)]
    assert first == again


def test_an_empty_mask_is_an_engine_error(logits):
    with pytest.raises(EngineError, match="allows no next token"):
        sample(logits, SamplingParams(), make_rng(SamplingParams()), np.zeros(VOCAB, bool))
