"""Held-out splits: by piece name, stable, and shared by datasets that share pieces."""

from __future__ import annotations

from models.data.manifest import SPLITS
from models.data.splits import split_pieces


def test_split_pieces_ignores_input_order() -> None:
    names = [f"piece{i}.mid" for i in range(30)]
    shuffled = names[::-1]
    assert split_pieces(names, 0.1, 0.1, 3) == split_pieces(shuffled, 0.1, 0.1, 3)


def test_datasets_sharing_pieces_agree_on_their_splits() -> None:
    # The base dataset holds every corpus, a style dataset a part of it: a style's test
    # piece must be a test piece of the base too, or the base model trained on it.
    everything = [f"{corpus}/piece{i:03d}.mid" for corpus in ("bach", "folk", "chopin")
                  for i in range(400)]
    base = split_pieces(everything, 0.1, 0.1, 0)
    for corpus in ("bach", "folk", "chopin"):
        style = split_pieces([n for n in everything if n.startswith(corpus)], 0.1, 0.1, 0)
        for split in SPLITS:
            assert set(style[split]) <= set(base[split]), (corpus, split)
    counts = {split: len(names) for split, names in base.items()}
    assert 90 <= counts["test"] <= 150 and 90 <= counts["validation"] <= 150, counts


def test_a_small_dataset_still_holds_out_a_piece_of_each_split() -> None:
    for count in (3, 5, 8):
        splits = split_pieces([f"p{i}" for i in range(count)], 0.1, 0.1, 0)
        assert len(splits["test"]) >= 1 and len(splits["validation"]) >= 1, splits
        assert sum(map(len, splits.values())) == count
