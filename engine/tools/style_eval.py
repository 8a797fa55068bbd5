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
            logits = model.forward(inputs).astype(np.float64)
            top = logits.max(axis=1, keepdims=True)
            log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
            nll += float((log_z - logits[np.arange(len(targets)), targets]).sum())
            correct += int((logits.argmax(axis=1) == targets).sum())
            count += len(targets)
            if progress is not None:
                progress(len(targets))
            if count >= max_tokens:
                break
        if count >= max_tokens:
            break
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
    from models.data.dataset import TokenDataset  # noqa: PLC0415 - keeps imports light

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
    from models.data.dataset import load_manifest  # noqa: PLC0415

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
                           progress: Progress | None = None) -> list[Continuation]:
    """``config.samples`` continuations of every prime, decoded together in one batch.

    Raises:
        EngineError: a prime cannot be encoded for this model or the model fails.
    """
    decoder = StyleDecoder(model, allow_eos=False)
    base_seed = config.sampling.seed or 0
    jobs = []
    for prime in primes:
        for sample in range(config.samples):
            sampling = SamplingParams(temperature=config.sampling.temperature,
                                      top_k=config.sampling.top_k, top_p=config.sampling.top_p,
                                      min_p=config.sampling.min_p, seed=base_seed + sample)
            request = GenerateRequest(seed=prime.notes, start_beat=prime.length,
                                      bars=config.bars, time_signature=prime.time_signature,
                                      style=model.style, sampling=sampling)
            gen = decoder.start(f"{prime.name}/{sample}", request)
            jobs.append((prime, sample, gen))
    gens = [gen for _, _, gen in jobs]
    outputs = decoder.decode_until_done(
        gens, on_step=None if progress is None else lambda: progress(1))
    return [Continuation(model.style, prime, sample, notes, gen.reason or "")
            for (prime, sample, gen), notes in zip(jobs, outputs, strict=True)]


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


def real_key_pairs(data_dir: Path, prime_bars: int, bars: int,
                   limit: int = 200) -> list[tuple[list[Note], list[Note]]]:
    """(opening, what follows) of real held-out pieces: how often real music keeps its key.

    Raises:
        DataError: the dataset is missing or malformed.
    """
    from models.data.dataset import TokenDataset  # noqa: PLC0415

    data = TokenDataset(data_dir, "test")
    tokenizer = data.tokenizer
    pairs = []
    for index in np.random.default_rng(0).permutation(len(data)):  # every collection
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
