"""Evaluation of the one style-conditioned model, style token by style token.

``melody eval-styles --data DIR --model any.onnx`` (``engine.tools.conditioned_run``) calls
these; each is one measure, on the model's own dataset (its manifest names every piece's
``style``):

- held-out perplexity (``style_test_sequences`` and ``style_eval.heldout_metrics_with_head``):
  a style's test pieces scored under its style token and, on the same tokens, under slot 0
  ("any style"), which shows what the token buys;
- the classifier of real music (``train_classifier``), trained on every style's train pieces
  and tested on its held-out ones: its recall there is the yardstick of fidelity;
- fidelity (``fidelity_by_kind``, ``fidelity``): the share of a style's continuations of each
  kind of prime (each neutral prime, and held-out openings of the style's own music)
  recognised as that style, over the yardstick, against the aim of 0.8;
- musical statistics of the continuations (``continuation_stats``) next to real music;
- accompaniment (``accompaniment_rows``): ``melody accompany-eval``'s figures for held-out
  lead lines, with melodyd's accompaniment next to the real one.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.model import LoadedModel
from engine.tools.style_eval import (
    Continuation,
    EvalConfig,
    key_kept_share,
    passage_stats,
    reference_histogram,
)
from engine.tools.styles_report import FIDELITY_AIM
from models.analysis.primes import NEUTRAL_PRIMES, Prime
from models.analysis.style_classifier import (
    MIN_SEGMENT_NOTES,
    Segment,
    StyleClassifier,
    dataset_segments,
    feature_matrix,
    fit_on_segments,
    style_sequences,
)

logger = logging.getLogger(__name__)

Progress = Callable[[int], None]

# The kind of a prime cut from the style's own held-out music, and the three neutral
# primes pooled.
OWN = "own"
NEUTRAL = "neutral"
KINDS = (*NEUTRAL_PRIMES, NEUTRAL, OWN)
# A verdict on a continuation too empty to judge.
TOO_EMPTY = "(too empty)"


def prime_kind(prime: Prime) -> str:
    """``fur_elise``, ``c_major``, ``folk_tune`` (the neutral primes) or ``own``."""
    return prime.name if prime.name in NEUTRAL_PRIMES else OWN


# ----------------------------------------------------------------- the dataset
def dataset_styles(manifest: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Pieces per split of every style the manifest names (``{style: {split: n}}``)."""
    counts: dict[str, dict[str, int]] = {}
    styles = {name: (entry or {}).get("style") for name, entry in
              (manifest.get("pieces") or {}).items()}
    for split, info in manifest["splits"].items():
        for name in info.get("pieces", []):
            style = styles.get(name)
            if style:
                row = counts.setdefault(style, {"train": 0, "validation": 0, "test": 0})
                row[split] = row.get(split, 0) + 1
    return counts


def lead_styles(manifest: dict[str, Any], styles: Sequence[str]) -> list[str]:
    """Those of ``styles`` whose pieces carry both a lead and an accompaniment (the data
    table's roles); every one of them when the manifest has no table."""
    table = (manifest.get("table") or {}).get("styles")
    if not table:
        return list(styles)
    return [s for s in styles
            if {"lead", "accompaniment"} <= set((table.get(s) or {}).get("roles") or {})]


def style_test_sequences(data_dir: str | Path, style: str, seed: int = 0) -> list[np.ndarray]:
    """The token arrays of ``style``'s test pieces, in a seeded random order (so a token
    budget samples every collection of the style, not its alphabetically first).

    Raises:
        DataError: the dataset is missing or malformed.
    """
    from models.data.manifest import TokenDataset  # noqa: PLC0415 - keeps imports light

    data = TokenDataset(data_dir, "test")
    order = style_sequences(data.manifest, "test", style)
    np.random.default_rng(seed).shuffle(order)
    return [np.asarray(data[i]) for i in order]


# ----------------------------------------------------------------- real music, the classifier
@dataclass
class RealStyles:
    """Real music of every style, and the classifier that learnt the styles from it.

    Attributes:
        classifier: ``None`` when fewer than two styles have train and test segments.
        report: classes, segment counts, recall per class on held-out segments, accuracy,
            confusion (rows: true class), and why a style is not a class.
        test: held-out segments per style (the real statistics' reference).
        reference: mean key-relative pitch-class histogram of each style's train segments.
    """

    classifier: StyleClassifier | None
    report: dict[str, Any]
    test: dict[str, list[Segment]]
    reference: dict[str, np.ndarray | None]

    def recall(self, style: str) -> float | None:
        """The classifier's recall on the style's real held-out segments (None: no class)."""
        value = (self.report.get("real_recall") or {}).get(style)
        return None if value is None or not math.isfinite(value) else float(value)


def train_classifier(data_dir: str | Path, styles: Sequence[str], config: EvalConfig,
                     progress: Progress | None = None) -> RealStyles:
    """Train the classifier on ``config.bars``-bar segments of each style's train pieces.

    A style becomes a class only with segments in both splits (without held-out music
    there is no yardstick to compare its continuations with); the others are named in
    the report with the reason.

    Raises:
        DataError: the dataset is missing or malformed.
    """
    train: dict[str, list[Segment]] = {}
    test: dict[str, list[Segment]] = {}
    for style in styles:
        train[style] = dataset_segments(data_dir, "train", config.bars,
                                        max_per_piece=config.train_per_piece,
                                        max_segments=config.max_train_segments, style=style)
        test[style] = dataset_segments(data_dir, "test", config.bars,
                                       max_per_piece=config.test_per_piece,
                                       max_segments=config.max_test_segments, style=style)
        if progress is not None:
            progress(1)
    classes = [s for s in styles if train[s] and test[s]]
    left_out = {s: ("no held-out segments" if train[s] else "no train segments")
                for s in styles if s not in classes}
    report: dict[str, Any] = {"classes": classes, "left_out": left_out,
                              "train_segments": {s: len(v) for s, v in train.items()},
                              "test_segments": {s: len(v) for s, v in test.items()}}
    reference = {s: reference_histogram(train[s]) for s in styles}
    if len(classes) < 2:
        logger.warning("the style classifier needs real music of two styles; no fidelity")
        return RealStyles(None, report, test, reference)
    classifier, recall, confusion = fit_on_segments(train, test, classes)
    report.update(real_recall=recall, confusion=confusion.tolist(),
                  accuracy=float(np.trace(confusion) / max(confusion.sum(), 1)))
    logger.info("classifier on real held-out %d-bar segments: %s", config.bars,
                ", ".join(f"{s} {r:.0%}" for s, r in recall.items()))
    return RealStyles(classifier, report, test, reference)


def judge(classifier: StyleClassifier | None, continuations: Sequence[Continuation],
          bars: int) -> list[str]:
    """The style the classifier hears in each continuation (``TOO_EMPTY`` when it has
    too few notes to judge; every one ``TOO_EMPTY`` without a classifier)."""
    verdicts = [TOO_EMPTY] * len(continuations)
    if classifier is None:
        return verdicts
    judged = [i for i, c in enumerate(continuations) if len(c.notes) >= MIN_SEGMENT_NOTES]
    if judged:
        predictions = classifier.predict(feature_matrix(
            [continuations[i].segment(bars) for i in judged]))
        for i, prediction in zip(judged, predictions, strict=True):
            verdicts[i] = classifier.classes[int(prediction)]
    return verdicts


# ----------------------------------------------------------------- fidelity
def fidelity(recognised: int, total: int, real_recall: float | None) -> dict[str, Any]:
    """Share of continuations recognised as their style, over the real music's recall.

    Returns:
        ``recognised``, ``continuations``, ``share`` (None without continuations),
        ``real``, ``ratio`` = share / real (None without a real recall above 0) and
        ``met`` (ratio >= ``FIDELITY_AIM``; None without a ratio).
    """
    share = recognised / total if total else None
    real = real_recall if real_recall is not None and math.isfinite(real_recall) else None
    ratio = share / real if share is not None and real else None
    return {"recognised": recognised, "continuations": total, "share": share, "real": real,
            "ratio": ratio, "met": None if ratio is None else ratio >= FIDELITY_AIM}


def fidelity_by_kind(style: str, continuations: Sequence[Continuation],
                     verdicts: Sequence[str], real_recall: float | None,
                     ) -> dict[str, dict[str, Any]]:
    """``fidelity`` per kind of prime (``KINDS``: each neutral prime, the three pooled,
    the style's own openings), for the kinds the continuations include.

    A continuation too empty to judge counts as not recognised.
    """
    groups: dict[str, list[bool]] = {}
    for continuation, verdict in zip(continuations, verdicts, strict=True):
        kind = prime_kind(continuation.prime)
        hit = verdict == style
        groups.setdefault(kind, []).append(hit)
        if kind != OWN:
            groups.setdefault(NEUTRAL, []).append(hit)
    return {kind: fidelity(sum(groups[kind]), len(groups[kind]), real_recall)
            for kind in KINDS if kind in groups}


def verdict_counts(continuations: Sequence[Continuation], verdicts: Sequence[str],
                   kinds: Sequence[str]) -> dict[str, int]:
    """How many continuations of primes of ``kinds`` the classifier called each style."""
    wanted = set(kinds)
    if NEUTRAL in wanted:
        wanted.update(NEUTRAL_PRIMES)
    return dict(Counter(v for c, v in zip(continuations, verdicts, strict=True)
                        if prime_kind(c.prime) in wanted))


# ----------------------------------------------------------------- statistics
def continuation_stats(continuations: Sequence[Continuation], bars: int,
                       reference: np.ndarray | None) -> dict[str, Any]:
    """Note density, polyphony, pitch-class distance and key kept of continuations."""
    stats = passage_stats([c.segment(bars) for c in continuations], reference)
    stats["key_kept"] = key_kept_share([(c.prime.notes, c.relative) for c in continuations])
    stats["continuations"] = len(continuations)
    return stats


# ----------------------------------------------------------------- accompaniment
def accompaniment_rows(model: LoadedModel, data_dir: str | Path, styles: Sequence[str], *,
                       pieces: int, bars: int, seed: int = 0,
                       progress: Progress | None = None) -> list[dict[str, Any]]:
    """``melody accompany-eval``'s figures for ``pieces`` held-out lead lines per style.

    Per style two rows, ``real`` and ``melodyd``: consonance with the lead's top note on
    strong beats, polyphony and span (p95 per beat), doubling, accompaniment notes per
    lead note and per beat. melodyd's accompaniment is decoded as ``melody harmonize``
    decodes it (the live path's requests, the configured defaults).

    Raises:
        EngineError: the model fails.
    """
    from engine.decoder import StyleDecoder  # noqa: PLC0415
    from engine.tools.accompany_eval import held_out_segments  # noqa: PLC0415
    from engine.tools.harmonize import harmonize  # noqa: PLC0415
    from models.analysis.accompaniment import accompaniment_figures  # noqa: PLC0415
    from models.core.meter import bar_length  # noqa: PLC0415
    from models.core.settings import load_settings  # noqa: PLC0415

    if not model.tokenizer.settings.roles or not styles or pieces <= 0:
        return []
    settings = load_settings()
    decoder = StyleDecoder(model, settings.engine, allow_eos=False)
    segments = held_out_segments(Path(data_dir), list(styles), pieces, bars, model.tokenizer)
    rows = []
    for style in styles:
        found = segments.get(style, [])
        if not found:
            logger.warning("no held-out %s piece with both roles in %s", style, data_dir)
            continue
        made = []
        for number, segment in enumerate(found):
            made.append(harmonize(decoder, segment.lead, settings=settings, style=style,
                                  time_signature=segment.time_signature,
                                  seed=seed + 100 * number, bars=bars))
            if progress is not None:
                progress(1)
        meters = [s.time_signature for s in found]
        beats = sum(bars * bar_length(m) for m in meters)
        for source, parts in (("real", [s.accompaniment for s in found]), ("melodyd", made)):
            pairs = [(s.lead, part) for s, part in zip(found, parts, strict=True)]
            rows.append({"style": style, "accompaniment": source,
                         **accompaniment_figures(pairs, signatures=meters),
                         "notes_per_beat": sum(len(p) for p in parts) / beats})
    return rows
