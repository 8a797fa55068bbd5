"""Which pieces of a dataset are train, validation or test pieces, and what each split holds.

``split_pieces`` splits by piece, never by token position, so no piece leaks across
splits, and draws each piece's split from a hash of the seed and its name alone, so that
datasets sharing pieces agree on them. ``SplitPlan`` is one split's sequences: its pieces
and the transpositions each one takes (``models.data.dataset`` plans and writes them,
``models.data.data_tables`` counts them).

Torch-free. ``engine.tools.jam_music`` holds pieces out with ``split_pieces`` too, exactly
as a dataset build would.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence


def _split_draw(name: str, seed: int) -> float:
    """A piece's fixed draw in [0, 1): a hash of the seed and its name, nothing else."""
    digest = hashlib.sha256(f"{seed}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_pieces(names: Sequence[str], val_fraction: float, test_fraction: float,
                 seed: int, keys: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Assign whole pieces to splits by a hash of ``(seed, name)``.

    ``keys`` gives the name a piece is drawn by when it differs from its name in the
    dataset: a build from several sources draws each piece by its name within its source
    (without the source's prefix), so it agrees with a build from that source alone.

    A piece whose draw is below ``test_fraction`` is a test piece, below
    ``test_fraction + val_fraction`` a validation piece, else a training piece. The draw
    depends on the piece alone, not on which other pieces are in the dataset, so datasets
    that share pieces agree on them: a style's test piece is a test piece of the base
    dataset built from every corpus too, and the fine-tuned style model never met it,
    neither in its fine-tuning nor in its base model's training.

    With at least three pieces, validation and test each get at least one piece when
    their fraction is above zero: a small dataset whose draws all fall above a
    threshold gives its lowest-drawn pieces (the ones nearest to the threshold's side).
    """
    keys = keys or {}
    draws = {name: _split_draw(keys.get(name, name), seed) for name in names}
    ordered = sorted(draws, key=lambda name: (draws[name], name))
    test = [n for n in ordered if draws[n] < test_fraction]
    if test_fraction > 0 and not test and len(ordered) >= 3:
        test = ordered[:1]
    rest = [n for n in ordered if n not in test]
    validation = [n for n in rest if draws[n] < test_fraction + val_fraction]
    if val_fraction > 0 and not validation and len(ordered) >= 3:
        validation = rest[:1]
    held_out = set(test) | set(validation)
    return {
        "test": sorted(test),
        "validation": sorted(validation),
        "train": sorted(n for n in ordered if n not in held_out),
    }


@dataclasses.dataclass
class SplitPlan:
    """The sequences of one split: each piece with the transpositions it takes."""

    pieces: list[str] = dataclasses.field(default_factory=list)
    transpositions: list[list[int]] = dataclasses.field(default_factory=list)
    lengths: list[int] = dataclasses.field(default_factory=list)
    notes: int = 0

    @property
    def num_sequences(self) -> int:
        """Pieces times the transpositions each one takes."""
        return sum(len(shifts) for shifts in self.transpositions)
