"""Drawing the next token from logits: temperature, top-k, top-p, min-p, greedy.

Disallowed tokens (grammar and musical constraints) get ``-inf`` before the softmax, so
they have probability zero whatever the other settings. Each request owns a seeded
``numpy.random.Generator``: the same seed, model and request give the same tokens.
"""

from __future__ import annotations

import numpy as np

from engine.requests import SamplingParams
from models.exceptions import EngineError


def make_rng(params: SamplingParams) -> np.random.Generator:
    """The random generator of one request (fresh entropy when no seed is given)."""
    return np.random.default_rng(params.seed)


def filtered_logits(logits: np.ndarray, params: SamplingParams,
                    allowed: np.ndarray | None = None) -> np.ndarray:
    """Logits after masking, temperature and the top-k / top-p / min-p filters.

    Tokens removed by a filter are ``-inf``; the result is a new float64 array.

    Raises:
        EngineError: the mask allows no token, or the temperature is not positive.
    """
    if params.temperature <= 0:
        raise EngineError(f"temperature must be above 0 (received {params.temperature})")
    # float64: dividing by a small temperature must not overflow exp() below.
    scores = np.asarray(logits, dtype=np.float64) / params.temperature
    if allowed is not None:
        if not allowed.any():
            raise EngineError("the grammar allows no next token")
        scores = np.where(allowed, scores, -np.inf)
    finite = np.isfinite(scores)
    count = int(finite.sum())
    if params.top_k and 0 < params.top_k < count:
        # The k-th largest score is the threshold; ties at it are kept.
        kth = np.partition(scores, -params.top_k)[-params.top_k]
        scores = np.where(scores >= kth, scores, -np.inf)
    if params.min_p > 0.0:
        # p_i >= min_p * p_max  <=>  s_i >= s_max + log(min_p)
        threshold = scores.max() + np.log(params.min_p)
        scores = np.where(scores >= threshold, scores, -np.inf)
    if params.top_p < 1.0:
        order = np.argsort(-scores, kind="stable")
        probs = _softmax(scores[order])
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        keep = int(np.searchsorted(np.cumsum(probs), params.top_p)) + 1
        dropped = order[keep:]
        scores = scores.copy()
        scores[dropped] = -np.inf
    return scores


def _softmax(scores: np.ndarray) -> np.ndarray:
    top = scores.max()
    weights = np.exp(scores - top)  # exp(-inf) = 0 for masked tokens
    return weights / weights.sum()


def probabilities(logits: np.ndarray, params: SamplingParams,
                  allowed: np.ndarray | None = None) -> np.ndarray:
    """The distribution the sampler draws from (float64, sums to 1)."""
    return _softmax(filtered_logits(logits, params, allowed))


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
           allowed: np.ndarray | None = None) -> int:
    """Draw one token id from logits [V] under a mask of allowed ids.

    Raises:
        EngineError: the mask allows no token.
    """
    if params.greedy:
        if allowed is None:
            return int(np.argmax(logits))
        if not allowed.any():
            raise EngineError("the grammar allows no next token")
        return int(np.argmax(np.where(allowed, logits, -np.inf)))
    probs = probabilities(logits, params, allowed)
    # Inverse-CDF draw: one uniform number per token keeps seeded streams reproducible.
    cdf = np.cumsum(probs)
    index = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    index = min(index, len(probs) - 1)
    # Rounding can land on a zero-probability token at the end; step back to a real one.
    while probs[index] == 0.0 and index > 0:
        index -= 1
    return index
