"""Evaluation of installed style models: held-out perplexity, style fidelity, statistics.

Everything runs on the ONNX files through the engine (no torch):

- held-out perplexity and next-token accuracy on the style's test split, minus any piece
  the base model was trained on (the base dataset's train split, when it is known);
- style fidelity: a classifier of real music (``models.analysis.style_classifier``) trained on the
  train splits of all evaluated styles judges every style's continuations of the fixed
  primes (``models.analysis.primes``); its recall on real held-out music is the yardstick;
- musical statistics of the continuations next to real held-out music of the style.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.decoder import StyleDecoder
from engine.model import LoadedModel
from models.analysis.music_stats import (
    histogram_distance,
    key_relative_histogram,
    note_density,
    polyphony,
)
from models.analysis.primes import Prime
from models.analysis.style_classifier import MIN_SEGMENT_NOTES, Segment, decode_with_bars
from models.core.notes import Note
from models.core.protocol.messages import GenerateRequest, SamplingParams
from models.core.tonality import estimate_key

logger = logging.getLogger(__name__)

Progress = Callable[[int], None]


@dataclass(frozen=True)
class EvalConfig:
    """How much of everything the evaluation does.

    Attributes:
        bars: length of each continuation, and of the real segments it is compared with.
        prime_bars: bars of the held-out openings in the prime set (and of the real
            "prime" when measuring how often real music keeps its key).
        samples: continuations per prime and style (each with its own sampling seed).
        max_eval_tokens: held-out tokens scored per style (perplexity, accuracy).
        max_train_segments: real segments per style the classifier learns from.
        max_test_segments: real held-out segments per style it is tested on.
        train_per_piece: most segments taken from one train piece.
        test_per_piece: most segments taken from one test piece (more than for training:
            small styles have only a few test pieces, and every bar of them counts).
        max_piece_tokens: held-out tokens scored per piece (0: no limit), so that the
            budget is spread over many pieces instead of a few long ones.
        openings: held-out openings of a style's own music continued under its token
            (the style-conditioned model's "own idiom" primes).
        batch: continuations decoded together (each holds a row of key/value cache).
        sampling: how continuation tokens are drawn (``seed`` is the first sample's seed).
    """

    bars: int = 8
    prime_bars: int = 4
    samples: int = 4
    max_eval_tokens: int = 50_000
    max_train_segments: int = 1500
    max_test_segments: int = 400
    train_per_piece: int = 8
    test_per_piece: int = 32
    max_piece_tokens: int = 0
    openings: int = 4
    batch: int = 16
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(
        temperature=1.0, top_p=0.95, seed=0))


@dataclass
class Continuation:
    """One style's continuation of one prime.

    Attributes:
        style: the model that wrote it.
        prime: what it continues.
        sample: index of the sample (its sampling seed is ``config seed + sample``).
        notes: generated notes on the prime's timeline (from ``prime.length``).
        reason: why generation ended (``complete`` when all bars were written).
    """

    style: str
    prime: Prime
    sample: int
    notes: list[Note]
    reason: str

    @property
    def relative(self) -> tuple[Note, ...]:
        """The generated notes on their own timeline, from beat 0."""
        return tuple(n.shifted(-self.prime.length) for n in self.notes)

    def segment(self, bars: int) -> Segment:
        """The continuation as a segment the classifier can judge."""
        return Segment(self.relative, bars * self.prime.bar_length)


# ----------------------------------------------------------------- held-out metrics
def heldout_metrics(model: LoadedModel, sequences: Sequence[np.ndarray], max_tokens: int,
                    progress: Progress | None = None) -> dict[str, Any]:
    """Perplexity and next-token accuracy over token sequences (each ``BOS ... EOS``).

    Each sequence is cut into windows of the model's context length, every window scored
    from an empty cache (what the model was trained on); the first token of a window is
    only context. Stops after ``max_tokens`` predicted tokens.

    Returns:
        ``perplexity``, ``accuracy``, ``loss`` (nats per token), ``tokens``, ``sequences``.
    """
    context = model.context_length
    nll, correct, count, used = 0.0, 0, 0, 0
    for sequence in sequences:
        ids = np.asarray(sequence, dtype=np.int64)
        used += 1
        for start in range(0, max(len(ids) - 1, 0), context):
            window = ids[start:start + context + 1]  # context inputs predict context targets
            inputs, targets = window[:-1], window[1:]
            if len(targets) == 0:
                continue
            window_nll, window_correct = _score(model.forward(inputs).astype(np.float64),
                                                targets)
            nll, correct, count = nll + window_nll, correct + window_correct, count + len(targets)
            if progress is not None:
                progress(len(targets))
            if count >= max_tokens:
                break
        if count >= max_tokens:
            break
    return _metrics(nll, correct, count, used)


def heldout_metrics_with_head(model: LoadedModel, sequences: Sequence[np.ndarray],
                              head: Sequence[int], max_tokens: int, *,
                              max_piece_tokens: int = 0, opening: int = 0,
                              progress: Progress | None = None) -> dict[str, Any]:
    """Perplexity and accuracy of a style-conditioned model prompted as the engine prompts it.

    Each sequence is ``BOS Style ...``: its own first two tokens are replaced by ``head``
    (``BOS`` and the style token to score under: the piece's own, or slot 0 "any style"),
    and every window starts with ``head``, as the engine's prompt keeps ``BOS Style`` when
    its cache slides and as training windows do (``keep_heads``). The head is context,
    never a prediction; every later token (``EOS`` included) is predicted once. At most
    ``max_piece_tokens`` per sequence (0: all), then the next sequence, until ``max_tokens``.

    Returns:
        As :func:`heldout_metrics`, and with ``opening`` > 0 the same figures of the first
        ``opening`` scored tokens of each piece under ``"opening"`` (where the piece has
        said least about its style and the head most).

    Raises:
        ValueError: the head fills the model's context.
    """
    head_ids = np.asarray(head, dtype=np.int64)
    per_window = model.context_length - len(head_ids) + 1  # targets one window predicts
    if per_window < 1:
        raise ValueError(f"a head of {len(head_ids)} tokens leaves no room in a context of "
                         f"{model.context_length}")
    nll, correct, count, used = 0.0, 0, 0, 0
    first = [0.0, 0, 0]  # the openings' nll, correct, count
    for sequence in sequences:
        body = np.asarray(sequence, dtype=np.int64)[2:]
        if max_piece_tokens:
            body = body[:max_piece_tokens]
        if len(body) == 0:
            continue
        used += 1
        for start in range(0, len(body), per_window):
            targets = body[start:start + per_window]
            inputs = np.concatenate([head_ids, body[start:start + len(targets) - 1]])
            # The head's last token predicts the window's first target.
            logits = model.forward(inputs)[len(head_ids) - 1:].astype(np.float64)
            window_nll, window_correct = _score(logits, targets)
            nll, correct, count = nll + window_nll, correct + window_correct, count + len(targets)
            if start < opening:
                early = min(opening - start, len(targets))
                early_nll, early_correct = _score(logits[:early], targets[:early])
                first = [first[0] + early_nll, first[1] + early_correct, first[2] + early]
            if progress is not None:
                progress(len(targets))
            if count >= max_tokens:
                break
        if count >= max_tokens:
            break
    metrics = _metrics(nll, correct, count, used)
    if opening:
        metrics["opening"] = {**_metrics(float(first[0]), int(first[1]), int(first[2]), used),
                              "per_piece": opening}
    return metrics


def _score(logits: np.ndarray, targets: np.ndarray) -> tuple[float, int]:
    """Summed negative log-likelihood of ``targets`` and how many are the argmax."""
    top = logits.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    nll = float((log_z - logits[np.arange(len(targets)), targets]).sum())
    return nll, int((logits.argmax(axis=1) == targets).sum())


def _metrics(nll: float, correct: int, count: int, used: int) -> dict[str, Any]:
    if count == 0:
        return {"perplexity": None, "accuracy": None, "loss": None, "tokens": 0,
                "sequences": used}
    loss = nll / count
    return {"perplexity": float(np.exp(loss)), "accuracy": correct / count, "loss": loss,
            "tokens": count, "sequences": used}


def heldout_sequences(data_dir: Path, exclude: set[str]) -> tuple[list[np.ndarray], int, int]:
    """The test split's sequences in a fixed random order, without those in ``exclude``.

    Returns:
        ``(sequences, kept, excluded)`` counts of pieces.

    Raises:
        DataError: the dataset is missing or malformed.
    """
    from models.data.manifest import TokenDataset  # noqa: PLC0415 - keeps imports light

    data = TokenDataset(data_dir, "test")
    names = data.manifest["splits"]["test"].get("pieces", [])
    kept = [np.asarray(data[i]) for i, name in enumerate(names[:len(data)])
            if name not in exclude]
    # A fixed shuffle: a token budget then samples every collection of the style, not
    # the alphabetically first composers.
    order = np.random.default_rng(0).permutation(len(kept))
    return [kept[i] for i in order], len(kept), len(names) - len(kept)


def base_train_pieces(data_root: Path, base_name: str = "base") -> set[str]:
    """Pieces the base model was trained on (empty when its dataset is not there)."""
    from models.core.exceptions import DataError  # noqa: PLC0415
    from models.data.manifest import load_manifest  # noqa: PLC0415

    directory = data_root / base_name
    if not (directory / "manifest.json").is_file():
        return set()
    try:
        return set(load_manifest(directory)["splits"]["train"].get("pieces", []))
    except DataError as err:
        logger.warning("cannot read the base dataset %s: %s", directory, err)
        return set()


# ----------------------------------------------------------------- generation
def generate_continuations(model: LoadedModel, primes: Sequence[Prime], config: EvalConfig,
                           progress: Progress | None = None, *,
                           style: str | None = None) -> list[Continuation]:
    """``config.samples`` continuations of every prime, decoded ``config.batch`` at a time.

    ``style``: the style asked for (a style token of a conditioned model); default the
    model's own.

    Raises:
        EngineError: a prime cannot be encoded for this model or the model fails.
    """
    style = style or model.style
    decoder = StyleDecoder(model, allow_eos=False)
    base_seed = config.sampling.seed or 0
    jobs = [(prime, sample) for prime in primes for sample in range(config.samples)]
    size = max(1, config.batch) if config.batch else max(1, len(jobs))
    continuations = []
    for first in range(0, len(jobs), size):
        gens = []
        for prime, sample in jobs[first:first + size]:
            sampling = SamplingParams(temperature=config.sampling.temperature,
                                      top_k=config.sampling.top_k, top_p=config.sampling.top_p,
                                      min_p=config.sampling.min_p, seed=base_seed + sample)
            request = GenerateRequest(seed=prime.notes, start_beat=prime.length,
                                      bars=config.bars, time_signature=prime.time_signature,
                                      style=style, sampling=sampling)
            gens.append(decoder.start(f"{style}/{prime.name}/{sample}", request))
        outputs = decoder.decode_until_done(
            gens, on_step=None if progress is None else lambda: progress(1))
        for (prime, sample), gen, notes in zip(jobs[first:first + size], gens, outputs,
                                               strict=True):
            continuations.append(Continuation(style, prime, sample, notes, gen.reason or ""))
            decoder.drop_session(f"{style}/{prime.name}/{sample}")
    return continuations


# ----------------------------------------------------------------- statistics
def passage_stats(segments: Sequence[Segment], reference: np.ndarray | None) -> dict[str, Any]:
    """Mean note density, polyphony and pitch-class distance to ``reference`` of segments.

    ``reference`` is the style's mean key-relative pitch-class histogram (real train data).
    """
    usable = [s for s in segments if len(s.notes) >= MIN_SEGMENT_NOTES]
    if not usable:
        return {"segments": 0, "empty": len(segments)}
    stats: dict[str, Any] = {
        "segments": len(usable),
        "empty": len(segments) - len(usable),
        "density": float(np.mean([note_density(s.notes, s.length) for s in usable])),
        "polyphony": float(np.mean([polyphony(s.notes) for s in usable])),
    }
    if reference is not None:
        stats["pc_distance"] = float(np.mean(
            [histogram_distance(key_relative_histogram(s.notes), reference) for s in usable]))
    return stats


def reference_histogram(segments: Sequence[Segment]) -> np.ndarray | None:
    """Mean key-relative pitch-class histogram of real segments."""
    if not segments:
        return None
    return np.mean([key_relative_histogram(s.notes) for s in segments], axis=0)


def same_key(first: Sequence[Note], second: Sequence[Note]) -> bool | None:
    """Whether two passages have the same estimated key (``None`` when one has none)."""
    a, b = estimate_key(first), estimate_key(second)
    if a is None or b is None:
        return None
    return (a.tonic, a.mode) == (b.tonic, b.mode)


def key_kept_share(pairs: Sequence[tuple[Sequence[Note], Sequence[Note]]]) -> float | None:
    """Share of (prime, continuation) pairs in the same key, over pairs with keys."""
    verdicts = [v for v in (same_key(a, b) for a, b in pairs) if v is not None]
    return sum(verdicts) / len(verdicts) if verdicts else None


def real_key_pairs(data_dir: Path, prime_bars: int, bars: int, limit: int = 200, *,
                   style: str | None = None) -> list[tuple[list[Note], list[Note]]]:
    """(opening, what follows) of real held-out pieces: how often real music keeps its key.

    ``style``: only that style's pieces (a dataset of several styles).

    Raises:
        DataError: the dataset is missing or malformed.
    """
    from models.analysis.style_classifier import style_sequences  # noqa: PLC0415
    from models.data.manifest import TokenDataset  # noqa: PLC0415

    data = TokenDataset(data_dir, "test")
    tokenizer = data.tokenizer
    indices = (np.arange(len(data)) if style is None
               else np.asarray(style_sequences(data.manifest, "test", style), dtype=int))
    pairs = []
    for index in np.random.default_rng(0).permutation(indices):  # every collection
        piece = decode_with_bars(np.asarray(data[index]), tokenizer)
        if len(piece.bar_starts) < prime_bars + bars // 2:
            continue
        opening, _ = piece.bars(0, prime_bars)
        after, _ = piece.bars(prime_bars, bars)
        if len(opening) >= MIN_SEGMENT_NOTES and len(after) >= MIN_SEGMENT_NOTES:
            pairs.append((opening, after))
        if len(pairs) >= limit:
            break
    return pairs
