"""The style classifier tells real held-out music of two clearly different corpora apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.analysis.style_classifier import (
    StyleClassifier,
    cut_segments,
    dataset_segments,
    decode_with_bars,
    feature_matrix,
    recall_by_class,
    style_sequences,
)
from models.core.exceptions import DataError
from models.core.notes import Note
from models.core.settings import DataSettings
from models.core.tokenizer import MelodyTokenizer
from models.data.corpus import COLLECTIONS, convert_source, source_files
from models.data.dataset import build_dataset
from models.data.manifest import load_manifest

pytest.importorskip("music21", reason="the bundled corpora need music21 (the train extra)")

CHORALES = 24  # files of music21's bach folder, in sorted order
FOLK_FILE = "essenFolksong/altdeu20.abc"
FOLK_TUNES = 40
BARS = 4


def _build(tmp: Path, name: str, sources: list[str], tunes: int | None) -> Path:
    midi = tmp / f"{name}_midi"
    for source in sources:
        convert_source(source, str(midi), tunes)
    out = tmp / name
    # Fractions chosen so that each test split holds several pieces.
    build_dataset(str(midi), out, DataSettings(jobs=1, val_fraction=0.1, test_fraction=0.3),
                  progress=False)
    return out


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("corpora")
    chorales = [str(p) for p in source_files(COLLECTIONS["bach"])][:CHORALES]
    return {"bach": _build(tmp, "bach", chorales, None),
            "folk": _build(tmp, "folk", [FOLK_FILE], FOLK_TUNES)}


def _matrix(corpora: dict[str, Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    rows, labels = [], []
    for label, directory in enumerate(corpora.values()):
        segments = dataset_segments(directory, split, BARS, max_per_piece=6)
        assert segments, f"no {split} segments in {directory}"
        rows.append(feature_matrix(segments))
        labels += [label] * len(segments)
    return np.concatenate(rows), np.array(labels)


def test_classifier_recognises_held_out_real_pieces(two_corpora: dict[str, Path]) -> None:
    train_x, train_y = _matrix(two_corpora, "train")
    test_x, test_y = _matrix(two_corpora, "test")
    classifier = StyleClassifier(list(two_corpora)).fit(train_x, train_y)
    recall, confusion = recall_by_class(classifier, test_x, test_y)
    # Chance is 0.5 per class; four-part chorales and one-line folk songs differ plainly.
    assert recall.min() >= 0.8, confusion
    assert np.trace(confusion) / confusion.sum() >= 0.85, confusion
    # A JSON round trip keeps the predictions.
    again = StyleClassifier.from_dict(classifier.to_dict())
    np.testing.assert_array_equal(again.predict(test_x), classifier.predict(test_x))


def test_held_out_pieces_are_not_in_the_train_split(two_corpora: dict[str, Path]) -> None:
    for directory in two_corpora.values():
        splits = load_manifest(directory)["splits"]
        assert not set(splits["train"]["pieces"]) & set(splits["test"]["pieces"])


def test_segments_follow_the_bar_grid() -> None:
    tokenizer = MelodyTokenizer()
    # Two bars of 3/4 in eighth notes.
    notes = [Note(i * 0.5, 0.5, 60 + i, 80) for i in range(12)]
    ids = tokenizer.encode_notes(notes, (3, 4), eos=True)
    piece = decode_with_bars(ids, tokenizer)
    assert piece.bar_starts == (0.0, 3.0)
    assert piece.signatures == ((3, 4), (3, 4))
    segments = cut_segments(piece, bars=1)
    assert [s.length for s in segments] == [3.0, 3.0]
    assert [n.pitch for n in segments[1].notes] == [66, 67, 68, 69, 70, 71]
    assert segments[1].notes[0].onset == 0.0


def test_a_classifier_needs_two_styles() -> None:
    with pytest.raises(DataError, match="at least two styles"):
        StyleClassifier(["only"])


def test_a_dataset_of_several_styles_gives_each_style_its_own_pieces() -> None:
    """The conditioned dataset holds every style: the classifier and the jam harness take
    each style's untransposed sequences by the manifest's piece styles."""
    manifest = {
        "pieces": {"a.mid": {"style": "folk"}, "b.mid": {"style": "pop"},
                   "c.mid": {"style": "folk"}, "d.mid": {}},
        "splits": {"train": {"pieces": ["a.mid", "b.mid", "c.mid", "d.mid"],
                             "transpositions": [[0, 2], [-1, 0], [0], [0]]}},
    }
    # Sequences: a+0 (0), a+2 (1), b-1 (2), b+0 (3), c+0 (4), d+0 (5).
    assert style_sequences(manifest, "train", "folk") == [0, 4]
    assert style_sequences(manifest, "train", "pop") == [3]
    assert style_sequences(manifest, "train", "baroque") == []
