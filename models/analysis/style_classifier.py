"""Style fidelity: a classifier of real music that judges generated continuations.

Real pieces of each style (a built dataset's token arrays, decoded back to notes) are cut
into segments of a fixed number of bars, the same length as the continuations being
judged; ``models.analysis.music_stats.style_features`` turns each into a vector, and a multinomial
logistic regression written in numpy learns the styles from the train split. Its recall
on the held-out test split is the yardstick: a style model's output is as recognisable as
its real music when it is classified as that style about as often.

Torch-free: numpy only (no scikit-learn, which melodyd does not depend on).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.analysis.music_stats import NUM_FEATURES, style_features
from models.core.exceptions import DataError
from models.core.meter import bar_length
from models.core.notes import Note
from models.core.streaming import StreamingDetokenizer, parse_vocabulary
from models.core.tokenizer import MelodyTokenizer

logger = logging.getLogger(__name__)

CLASSIFIER_FORMAT = "melodyd-style-classifier"
# Segments with fewer notes than this say too little about a style to be judged.
MIN_SEGMENT_NOTES = 4


@dataclass(frozen=True)
class Segment:
    """A passage of a piece, on its own timeline.

    Attributes:
        notes: notes with onsets relative to the segment start (all within the segment).
        length: nominal length in beats (the bars it covers).
        piece: index of the sequence it came from, for bookkeeping.
    """

    notes: tuple[Note, ...]
    length: float
    piece: int = -1


@dataclass(frozen=True)
class DecodedPiece:
    """A token sequence decoded to notes, with its bar grid.

    Attributes:
        notes: notes in beats from bar 0.
        bar_starts: start beat of every bar.
        signatures: time signature of every bar.
        bar_ends: end beat of every bar.
    """

    notes: tuple[Note, ...]
    bar_starts: tuple[float, ...]
    signatures: tuple[tuple[int, int], ...]

    @property
    def bar_ends(self) -> tuple[float, ...]:
        """End beat of every bar (the next bar's start; the last from its signature)."""
        if not self.bar_starts:
            return ()
        return (*self.bar_starts[1:], self.bar_starts[-1] + bar_length(self.signatures[-1]))

    def bars(self, first: int, count: int) -> tuple[list[Note], float]:
        """Notes starting in bars ``first .. first+count-1``, on a timeline from their start.

        Durations are cut at the end of the last bar. Returns the notes and the length of
        the bars in beats (shorter when the piece ends sooner).
        """
        last = min(first + count, len(self.bar_starts)) - 1
        if last < first:
            return [], 0.0
        start, end = self.bar_starts[first], self.bar_ends[last]
        inside = [Note(n.onset - start, max(min(n.duration, end - n.onset), 1e-3), n.pitch,
                       n.velocity) for n in self.notes if start <= n.onset < end]
        return inside, end - start


def decode_with_bars(ids: Iterable[int], tokenizer: MelodyTokenizer,
                     infos: list[Any] | None = None) -> DecodedPiece:
    """Decode token ids to notes and note where each bar starts and its time signature."""
    infos = infos if infos is not None else parse_vocabulary(tokenizer)
    detok = StreamingDetokenizer(tokenizer, infos=infos)
    notes, starts, signatures = [], [], []
    bar_id = tokenizer.bar_id
    for raw in ids:
        token = int(raw)
        note = detok.feed(token)
        if note is not None:
            notes.append(note)
        elif token == bar_id:
            starts.append(detok.bar_start)
            signatures.append(detok.time_signature)
        elif starts and 0 <= token < len(infos) and infos[token].kind == "TimeSig":
            signatures[-1] = detok.time_signature  # TimeSig follows its Bar
    return DecodedPiece(tuple(notes), tuple(starts), tuple(signatures))


def cut_segments(piece: DecodedPiece, bars: int, index: int = -1,
                 offset_bars: int = 0) -> list[Segment]:
    """Cut a decoded piece into consecutive segments of ``bars`` bars.

    A final shorter segment is kept when it has at least half the bars; segments with
    fewer than ``MIN_SEGMENT_NOTES`` notes are dropped.
    """
    segments = []
    for first in range(offset_bars, len(piece.bar_starts), bars):
        if min(bars, len(piece.bar_starts) - first) < max(1, bars // 2):
            break
        notes, length = piece.bars(first, bars)
        if len(notes) >= MIN_SEGMENT_NOTES:
            segments.append(Segment(tuple(notes), length, index))
    return segments


def untransposed_sequences(manifest: dict[str, Any], split: str) -> list[int]:
    """Indices of the sequences of a split that are pieces as written (no transposition).

    The train split holds each piece once per transposition, in the manifest's order.
    """
    info = manifest["splits"][split]
    indices, position = [], 0
    for shifts in info.get("transpositions", [[0]] * info.get("num_sequences", 0)):
        for shift in shifts:
            if shift == 0:
                indices.append(position)
            position += 1
    return indices


def style_sequences(manifest: dict[str, Any], split: str, style: str) -> list[int]:
    """Indices of a split's untransposed sequences whose piece is of ``style`` (the
    manifest's ``pieces`` name each piece's style: a dataset of several styles)."""
    info = manifest["splits"][split]
    names = info.get("pieces", [])
    styles = {name: (entry or {}).get("style") for name, entry in
              manifest.get("pieces", {}).items()}
    indices, position = [], 0
    for name, shifts in zip(names, info.get("transpositions", [[0]] * len(names)),
                            strict=False):
        for shift in shifts:
            if shift == 0 and styles.get(name) == style:
                indices.append(position)
            position += 1
    return indices


def dataset_segments(directory: str | Path, split: str, bars: int, *,
                     max_per_piece: int = 4, max_segments: int = 2000,
                     seed: int = 0, style: str | None = None) -> list[Segment]:
    """Segments of real music from one split of a built dataset.

    Pieces are visited in a seeded random order and each gives at most ``max_per_piece``
    evenly spread segments, so that long pieces do not dominate and a style's share
    of the classifier's data does not depend on how long its pieces are. ``style``: only
    the pieces of that style (a dataset of several styles, such as the conditioned one).

    Raises:
        DataError: the dataset or split is missing or malformed.
    """
    from models.data.manifest import TokenDataset  # noqa: PLC0415 - keeps this module light to import

    data = TokenDataset(directory, split)
    tokenizer = data.tokenizer
    infos = parse_vocabulary(tokenizer)
    if style is not None:
        order = style_sequences(data.manifest, split, style)
    else:
        order = untransposed_sequences(data.manifest, split) or list(range(len(data)))
    rng = np.random.default_rng(seed)
    rng.shuffle(order)
    segments: list[Segment] = []
    for index in order:
        decoded = decode_with_bars(np.asarray(data[index]), tokenizer, infos)
        pieces = cut_segments(decoded, bars, int(index))
        if len(pieces) > max_per_piece:
            keep = np.linspace(0, len(pieces) - 1, max_per_piece).round().astype(int)
            pieces = [pieces[i] for i in sorted(set(keep.tolist()))]
        segments.extend(pieces)
        if len(segments) >= max_segments:
            break
    return segments[:max_segments]


def feature_matrix(segments: Sequence[Segment]) -> np.ndarray:
    """One row of ``style_features`` per segment."""
    if not segments:
        return np.zeros((0, NUM_FEATURES))
    return np.stack([style_features(s.notes, s.length) for s in segments])


class StyleClassifier:
    """Multinomial logistic regression on standardized features, with balanced classes.

    Attributes:
        classes: style names, in the order of the output columns.
        mean: feature means of the training data.
        scale: feature standard deviations (1 where a feature is constant).
        weights: ``[features, classes]`` coefficients.
        bias: ``[classes]`` intercepts.
    """

    def __init__(self, classes: Sequence[str]) -> None:
        if len(classes) < 2:
            raise DataError(f"a style classifier needs at least two styles (received "
                            f"{list(classes)})")
        self.classes = list(classes)
        self.mean = np.zeros(NUM_FEATURES)
        self.scale = np.ones(NUM_FEATURES)
        self.weights = np.zeros((NUM_FEATURES, len(classes)))
        self.bias = np.zeros(len(classes))

    def _standardize(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=float) - self.mean) / self.scale

    def fit(self, features: np.ndarray, labels: Sequence[int], *, l2: float = 1e-3,
            steps: int = 800, lr: float = 0.05) -> StyleClassifier:
        """Train by full-batch Adam on the class-balanced cross-entropy plus an L2 penalty.

        Raises:
            DataError: no data, or a class with no examples.
        """
        x = np.asarray(features, dtype=float)
        y = np.asarray(labels, dtype=int)
        counts = np.bincount(y, minlength=len(self.classes))
        if len(x) == 0 or (counts == 0).any():
            empty = [c for c, n in zip(self.classes, counts, strict=True) if n == 0]
            raise DataError(f"no training segments for style(s): {', '.join(empty) or 'all'}")
        self.mean = x.mean(axis=0)
        self.scale = np.where(x.std(axis=0) > 1e-8, x.std(axis=0), 1.0)
        x = self._standardize(x)
        # Each class weighs the same in the loss, whatever its number of segments.
        sample_weight = (len(y) / (len(self.classes) * counts))[y] / len(y)
        onehot = np.eye(len(self.classes))[y]
        params = [self.weights, self.bias]
        moments = [np.zeros_like(p) for p in params]
        squares = [np.zeros_like(p) for p in params]
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        for step in range(1, steps + 1):
            probs = self._softmax(x @ self.weights + self.bias)
            delta = (probs - onehot) * sample_weight[:, None]
            grads = [x.T @ delta + 2 * l2 * self.weights, delta.sum(axis=0)]
            for i, grad in enumerate(grads):
                moments[i] = beta1 * moments[i] + (1 - beta1) * grad
                squares[i] = beta2 * squares[i] + (1 - beta2) * grad * grad
                update = (moments[i] / (1 - beta1 ** step)) / (
                    np.sqrt(squares[i] / (1 - beta2 ** step)) + eps)
                params[i] -= lr * update  # in place: params alias weights and bias
        return self

    @staticmethod
    def _softmax(scores: np.ndarray) -> np.ndarray:
        scores = scores - scores.max(axis=1, keepdims=True)
        exp = np.exp(scores)
        return exp / exp.sum(axis=1, keepdims=True)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """``[n, classes]`` probabilities."""
        x = np.atleast_2d(np.asarray(features, dtype=float))
        return self._softmax(self._standardize(x) @ self.weights + self.bias)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Index of the most likely class per row."""
        return self.predict_proba(features).argmax(axis=1)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (no pickle): classes and parameters as lists."""
        return {"format": CLASSIFIER_FORMAT, "classes": self.classes,
                "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "weights": self.weights.tolist(), "bias": self.bias.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StyleClassifier:
        """Rebuild from ``to_dict``'s form.

        Raises:
            DataError: not a classifier of this feature layout.
        """
        if not isinstance(data, dict) or data.get("format") != CLASSIFIER_FORMAT:
            raise DataError("not a melodyd style classifier")
        model = cls(data["classes"])
        model.mean, model.scale = np.array(data["mean"]), np.array(data["scale"])
        model.weights, model.bias = np.array(data["weights"]), np.array(data["bias"])
        if model.weights.shape != (NUM_FEATURES, len(model.classes)):
            raise DataError(f"classifier has {model.weights.shape[0]} features, this melodyd "
                            f"computes {NUM_FEATURES}; train it again")
        return model


def recall_by_class(classifier: StyleClassifier, features: np.ndarray,
                    labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-class recall and the confusion matrix (rows: true class, columns: predicted)."""
    k = len(classifier.classes)
    confusion = np.zeros((k, k), dtype=int)
    if len(labels):
        for true, pred in zip(labels, classifier.predict(features), strict=True):
            confusion[true, pred] += 1
    totals = confusion.sum(axis=1)
    recall = np.divide(np.diag(confusion), totals, out=np.full(k, np.nan), where=totals > 0)
    return recall, confusion


def fit_on_segments(train: Mapping[str, Sequence[Segment]],
                    test: Mapping[str, Sequence[Segment]], classes: Sequence[str],
                    ) -> tuple[StyleClassifier, dict[str, float], np.ndarray]:
    """Fit a classifier of ``classes`` on real training segments, score it on held-out ones.

    Returns:
        The classifier, each class's recall on ``test`` (NaN where it has none) and the
        confusion matrix (rows: true class, columns: predicted).
    """
    x = np.concatenate([feature_matrix(train[s]) for s in classes])
    y = np.concatenate([[i] * len(train[s]) for i, s in enumerate(classes)])
    classifier = StyleClassifier(list(classes)).fit(x, y)
    test_x = np.concatenate([feature_matrix(test[s]) for s in classes])
    test_y = np.concatenate([[i] * len(test[s]) for i, s in enumerate(classes)])
    recall, confusion = recall_by_class(classifier, test_x, test_y)
    return classifier, {s: float(r) for s, r in zip(classes, recall, strict=True)}, confusion
