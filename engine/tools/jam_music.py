"""Real music for the jam harness: held-out openings as calls, and a style classifier.

Two sources, the first that is there:

- built style datasets (``--data-root DIR`` with ``DIR/<style>/manifest.json``, the layout
  ``melody train-styles`` and ``melody eval-styles`` use): openings of test pieces from
  ``models.analysis.primes`` and real segments from ``models.analysis.style_classifier``;
- otherwise music21's bundled corpora, converted piece by piece on demand by the
  project's own converter (``models.data.corpus.convert_source``) into ``<cache>/jam/``. A piece
  is held out exactly as a dataset build would hold it out: ``models.data.splits.split_pieces``
  over its MIDI name within its corpus (``bach/bwv1.6.mid``) with the ``[data]`` split
  settings, so an opening used as a call is a test piece the shipped models never met.
  Only small score files are read (``max_kb``), so a cold cache costs a minute, not the
  hours a full conversion takes.

The classifier learns the styles from train-split segments of the answers' length and its
recall on held-out segments is the yardstick of style fidelity, as in ``melody
eval-styles``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.analysis.style_classifier import (
    MIN_SEGMENT_NOTES,
    Segment,
    StyleClassifier,
    fit_on_segments,
)
from models.core.exceptions import DataError, MelodyError
from models.core.meter import bar_length
from models.core.notes import Note
from models.core.settings import DataSettings

logger = logging.getLogger(__name__)

MIN_OPENING_NOTES = 6  # an opening with fewer notes says too little to answer
SEGMENTS_PER_PIECE = 8  # most segments of one piece, so one long piece cannot dominate
ABC_SUFFIX = ".abc"  # a file of many tunes: its pieces' names are known after conversion


@dataclass(frozen=True)
class Opening:
    """The first bars of a held-out piece, from beat 0.

    Attributes:
        style: the style of its corpus.
        notes: its notes, from the first bar with a note.
        time_signature: the piece's time signature.
        source: where it comes from (corpus and piece, or dataset and piece).
    """

    style: str
    notes: tuple[Note, ...]
    time_signature: tuple[int, int]
    source: str


@dataclass(frozen=True)
class _Piece:
    name: str
    notes: tuple[Note, ...]
    time_signature: tuple[int, int]

    @property
    def bar_length(self) -> float:
        return bar_length(self.time_signature)


def _cut(notes: Sequence[Note], start: float, length: float) -> tuple[Note, ...]:
    """Notes starting in ``[start, start + length)``, re-based to 0, cut at the end."""
    end = start + length
    return tuple(Note(n.onset - start, max(min(n.duration, end - n.onset), 1e-3), n.pitch,
                      n.velocity) for n in notes if start <= n.onset < end)


def piece_segments(piece: _Piece, bars: int, limit: int = SEGMENTS_PER_PIECE) -> list[Segment]:
    """Consecutive ``bars``-bar segments of a piece on its first time signature's grid."""
    length = bars * piece.bar_length
    last = max((n.onset for n in piece.notes), default=0.0)
    segments = []
    start = 0.0
    while start <= last and len(segments) < limit:
        notes = _cut(piece.notes, start, length)
        if len(notes) >= MIN_SEGMENT_NOTES:
            segments.append(Segment(notes, length))
        start += length
    return segments


def opening_of(notes: Sequence[Note], bar_length: float, bars: int) -> tuple[Note, ...]:
    """``bars`` bars from the bar of the first note (a piece may start with rests)."""
    if not notes:
        return ()
    first = min(n.onset for n in notes) // bar_length * bar_length
    return _cut(notes, first, bars * bar_length)


class CorpusMusic:
    """Pieces of music21's bundled corpora by style and split, converted on demand.

    Attributes:
        cache: folder of the converted MIDI files and their index.
        data: the ``[data]`` settings whose split fractions and seed decide held-out pieces.
        max_kb: score files larger than this are not read (they take long to convert).
    """

    def __init__(self, cache: Path | None = None, data: DataSettings | None = None,
                 max_kb: int = 60) -> None:
        from models.data.corpus import cache_dir  # noqa: PLC0415 - music21 is optional

        self.cache = cache or cache_dir() / "jam"
        self.data = data or DataSettings()
        self.max_kb = max_kb
        self._index_path = self.cache / "index.json"
        self._index: dict[str, list[str]] = {}
        if self._index_path.is_file():
            try:
                self._index = json.loads(self._index_path.read_text())
            except (OSError, ValueError) as err:
                logger.warning("ignoring the unreadable %s: %s", self._index_path, err)

    def _split(self, names: Sequence[str]) -> dict[str, str]:
        from models.data.splits import split_pieces  # noqa: PLC0415

        parts = split_pieces(list(names), self.data.val_fraction, self.data.test_fraction,
                             self.data.seed)
        return {name: split for split, members in parts.items() for name in members}

    def _convert(self, source: Path, voices_as_tunes: bool) -> list[str]:
        """The MIDI names of one score file (converted once, then from the index)."""
        from models.data.corpus import convert_source  # noqa: PLC0415

        key = source.as_posix()
        if key in self._index and all((self.cache / n).is_file() for n in self._index[key]):
            return self._index[key]
        try:
            records = convert_source(key, str(self.cache), None, voices_as_tunes)
        except (MelodyError, OSError, ValueError) as err:
            logger.warning("cannot convert %s: %s", key, err)
            records = []
        self._index[key] = [r["midi"] for r in records if r.get("midi")]
        self.cache.mkdir(parents=True, exist_ok=True)
        self._index_path.write_text(json.dumps(self._index, indent=0, sort_keys=True))
        return self._index[key]

    def _read(self, name: str) -> _Piece | None:
        from models.data.midifile import read_midi  # noqa: PLC0415

        try:
            midi = read_midi(self.cache / name)
        except MelodyError as err:
            logger.warning("cannot read %s: %s", name, err)
            return None
        return _Piece(name, tuple(midi.notes), tuple(midi.time_signature))

    def pieces(self, style: str, split: str, limit: int) -> list[_Piece]:
        """Up to ``limit`` pieces of a style's split, in a fixed order mixing collections.

        Raises:
            DataError: music21 is not installed.
        """
        from models.data.corpus import COLLECTIONS, music21_corpus_dir, source_files  # noqa: PLC0415

        base = music21_corpus_dir()
        files = [(path, c.voices_as_tunes) for c in COLLECTIONS.values() if c.style == style
                 for path in source_files(c)
                 if (base / path).stat().st_size <= self.max_kb * 1000]
        # A score file's piece name is known before converting it; its split is drawn
        # over all of them at once, as the style's dataset build draws it.
        scores = {f"{p.with_name(p.stem).as_posix()}.mid": (p, v) for p, v in files
                  if p.suffix.lower() != ABC_SUFFIX}
        splits = self._split(sorted(scores))
        order = np.random.default_rng(0).permutation(len(files))
        found: list[_Piece] = []
        for i in order:
            path, voices = files[int(i)]
            if path.suffix.lower() == ABC_SUFFIX:
                # One name at a time: a corpus of thousands of tunes splits by threshold.
                names = [n for n in self._convert(path, voices)
                         if self._split([n]).get(n) == split]
            else:
                name = f"{path.with_name(path.stem).as_posix()}.mid"
                names = self._convert(path, voices) if splits[name] == split else []
            for name in names:
                piece = self._read(name)
                if piece is not None and piece.notes:
                    found.append(piece)
                if len(found) >= limit:
                    return found
        return found


@dataclass
class RealMusic:
    """What the harness takes from real music.

    Attributes:
        openings: held-out openings per style (calls).
        classifier: the style classifier (``None`` when fewer than two styles have data).
        real_recall: its recall per style on held-out real segments of the answers' length.
        report: how it was trained, for the JSON.
    """

    openings: dict[str, list[Opening]]
    classifier: StyleClassifier | None
    real_recall: dict[str, float]
    report: dict[str, Any]


def _train(train: dict[str, list[Segment]], test: dict[str, list[Segment]], bars: int
           ) -> tuple[StyleClassifier | None, dict[str, float], dict[str, Any]]:
    classes = [s for s in train if train[s] and test.get(s)]
    report: dict[str, Any] = {"train_segments": {s: len(v) for s, v in train.items()},
                              "test_segments": {s: len(v) for s, v in test.items()}}
    if len(classes) < 2:
        logger.warning("the style classifier needs real music of two styles; no verdicts")
        return None, {}, report
    classifier, real, confusion = fit_on_segments(train, test, classes)
    report.update(classes=classes, real_recall=real,
                  accuracy=float(np.trace(confusion) / max(confusion.sum(), 1)))
    logger.info("style classifier on held-out real %d-bar segments: %s", bars,
                ", ".join(f"{s} {r:.0%}" for s, r in real.items()))
    return classifier, real, report


def load_real_music(styles: Sequence[str], *, call_bars: int, answer_bars: int,
                    openings: int = 1, data_root: Path | None = None,
                    train_pieces: int = 16, test_pieces: int = 8,
                    signatures: Sequence[tuple[int, int]] | None = None,
                    corpus: CorpusMusic | None = None,
                    dataset: Path | None = None) -> RealMusic:
    """Held-out openings and a style classifier for ``styles``.

    ``signatures`` limits the openings to time signatures the models can encode (a 4/2
    Renaissance opening is refused by a vocabulary without 4/2).

    ``dataset``: one dataset of several styles (its manifest names each piece's style,
    e.g. the conditioned model's): every style's openings and segments come from its
    pieces of that style; it takes precedence over ``data_root``.

    Styles without real music get no opening and no classifier class (logged).

    Raises:
        DataError: a dataset under ``data_root`` is malformed.
    """
    train: dict[str, list[Segment]] = {}
    test: dict[str, list[Segment]] = {}
    found: dict[str, list[Opening]] = {}
    source = "music21 corpus"
    for style in styles:
        directory = None if data_root is None else Path(data_root) / style
        shared = dataset is not None
        if shared:
            directory = Path(dataset)
        if directory is not None and (directory / "manifest.json").is_file():
            from models.analysis.primes import dataset_prime  # noqa: PLC0415
            from models.analysis.style_classifier import dataset_segments  # noqa: PLC0415

            source = f"the {style} pieces of {dataset}" if shared else f"datasets in {data_root}"
            only = style if shared else None
            prime = dataset_prime(directory, style, call_bars, only_style=shared)
            found[style] = [] if prime is None else [
                Opening(style, prime.notes, prime.time_signature, prime.source)]
            train[style] = dataset_segments(directory, "train", answer_bars,
                                            max_per_piece=SEGMENTS_PER_PIECE,
                                            max_segments=train_pieces * SEGMENTS_PER_PIECE,
                                            style=only)
            test[style] = dataset_segments(directory, "test", answer_bars,
                                           max_per_piece=SEGMENTS_PER_PIECE,
                                           max_segments=test_pieces * SEGMENTS_PER_PIECE,
                                           style=only)
            continue
        corpus = corpus or CorpusMusic()
        try:
            held = corpus.pieces(style, "test", test_pieces)
            learn = corpus.pieces(style, "train", train_pieces)
        except DataError as err:
            logger.warning("no real %s music: %s", style, err)
            continue
        found[style] = []
        for piece in held:
            notes = opening_of(piece.notes, piece.bar_length, call_bars)
            playable = signatures is None or piece.time_signature in signatures
            if playable and len(notes) >= MIN_OPENING_NOTES and len(found[style]) < openings:
                found[style].append(Opening(style, notes, piece.time_signature,
                                            f"music21 corpus (test split): {piece.name}"))
        train[style] = [s for p in learn for s in piece_segments(p, answer_bars)]
        test[style] = [s for p in held for s in piece_segments(p, answer_bars)]
        if not found[style]:
            logger.warning("no held-out %s piece has a %d-bar opening of %d notes", style,
                           call_bars, MIN_OPENING_NOTES)
    classifier, real, report = _train(train, test, answer_bars)
    report["source"] = source
    return RealMusic(found, classifier, real, report)
