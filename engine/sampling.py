"""Drawing the next token from logits: temperature, top-k, top-p, min-p, greedy.

Disallowed tokens (grammar and musical constraints) get ``-inf`` before the softmax, so
they have probability zero whatever the other settings. Each request owns a seeded
``numpy.random.Generator``: the same seed, model and request give the same tokens.
"""

from __future__ import annotations

import math

import numpy as np

from models.core.exceptions import EngineError
from models.core.protocol.messages import SamplingParams


def make_rng(params: SamplingParams) -> np.random.Generator:
    """The random generator of one request (fresh entropy when no seed is given)."""
    return np.random.default_rng(params.seed)


def _weights(logits: np.ndarray, params: SamplingParams,
             allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Unnormalized probabilities of the allowed tokens after temperature and the filters.

    Only the allowed tokens are scored: the grammar usually leaves a few dozen of the
    vocabulary, so every array below is that short, and a masked token (weight 0 in the
    full distribution) never takes part. Working with ``exp(score - max)`` (the best token
    weighs 1) needs one ``exp`` per step and turns min-p into a plain threshold.

    Returns:
        the weights and the token ids they belong to (``None``: every token, in order).

    Raises:
        EngineError: the mask allows no token, or the temperature is not positive.
    """
    if params.temperature <= 0:
        raise EngineError(f"temperature must be above 0 (received {params.temperature})")
    ids = None
    if allowed is not None:
        ids = np.flatnonzero(allowed)
        if not ids.size:
            raise EngineError("the grammar allows no next token")
        logits = logits[ids]
    # float64: dividing by a small temperature must not overflow exp() below.
    scores = np.asarray(logits, dtype=np.float64) / params.temperature
    if params.top_k and 0 < params.top_k < scores.size:
        # The k-th largest score is the threshold; ties at it are kept.
        kth = np.partition(scores, -params.top_k)[-params.top_k]
        scores[scores < kth] = -np.inf
    weights = np.exp(scores - scores.max())  # filtered tokens weigh 0
    if params.min_p > 0.0:
        weights[weights < params.min_p] = 0.0  # p_i < min_p * p_max, as p_max weighs 1
    if params.top_p < 1.0:
        order = np.argsort(-weights, kind="stable")
        mass = np.cumsum(weights[order])
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        keep = int(np.searchsorted(mass, params.top_p * mass[-1])) + 1
        weights[order[keep:]] = 0.0
    return weights, ids


def probabilities(logits: np.ndarray, params: SamplingParams,
                  allowed: np.ndarray | None = None) -> np.ndarray:
    """The distribution the sampler draws from (float64, sums to 1).

    Raises:
        EngineError: the mask allows no token, or the temperature is not positive.
    """
    weights, ids = _weights(logits, params, allowed)
    if ids is None:
        return weights / weights.sum()
    full = np.zeros(len(logits), dtype=np.float64)
    full[ids] = weights / weights.sum()
    return full


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
           allowed: np.ndarray | None = None) -> int:
    """Draw one token id from logits [V] under a mask of allowed ids.

    Raises:
        EngineError: the mask allows no token, or the temperature is not positive.
    """
    if params.greedy:
        if allowed is None:
            return int(np.argmax(logits))
        if not allowed.any():
            raise EngineError("the grammar allows no next token")
        return int(np.argmax(np.where(allowed, logits, -np.inf)))
    weights, ids = _weights(logits, params, allowed)
    # Inverse-CDF draw in token order: one uniform number per token keeps seeded streams
    # reproducible (masked tokens would only add flat steps of zero weight to the CDF, so
    # drawing among the allowed ones picks the same token as drawing over all of them).
    cdf = np.cumsum(weights)
    index = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    index = min(index, len(weights) - 1)
    # Rounding can land on a zero-weight token at the end; step back to a real one.
    while weights[index] == 0.0 and index > 0:
        index -= 1
    return index if ids is None else int(ids[index])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities of raw logits (float32, -inf stays -inf)."""
    values = np.asarray(logits, dtype=np.float32)
    top = values.max()
    shifted = values - top
    return shifted - np.log(np.exp(shifted).sum(dtype=np.float64)).astype(np.float32)


def log_prob(logits: np.ndarray, token: int) -> float:
    """The log-probability of ``token`` under the model's own distribution (softmax of
    the raw logits: temperature 1, no masks or biases)."""
    values = np.asarray(logits, dtype=np.float64)
    top = values.max()
    return float(values[token] - top - math.log(np.exp(values - top).sum()))
