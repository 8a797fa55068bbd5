"""The fixed prime set of the style evaluation: what every style model is asked to continue.

- The opening of Für Elise (``models.analysis.fur_elise``): the piece the study melodyd grew from
  continued in each style, a melody every listener knows, so the styles' answers are
  easy to compare by ear and on a piano roll. It is in no bundled corpus, so no model
  has seen it.
- The first ``bars`` bars of one held-out piece of each of a few contrasting styles
  (``PRIME_STYLES``), taken from the *test* split of that style's dataset (never trained
  on): a style model is heard continuing its own music and music foreign to it, and
  style fidelity is measured over material it cannot have memorised. The choice is
  deterministic: the first test piece, in the manifest's (sorted) order, that fits.

Torch-free.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.analysis.fur_elise import NUM_BARS as FUR_ELISE_BARS
from models.analysis.fur_elise import TIME_SIGNATURE as FUR_ELISE_SIGNATURE
from models.analysis.fur_elise import fur_elise_notes
from models.analysis.style_classifier import DecodedPiece, decode_with_bars
from models.core.exceptions import DataError
from models.core.meter import bar_length
from models.core.notes import Note

logger = logging.getLogger(__name__)

# Styles whose held-out openings join the prime set, in this order, when their data exist:
# five contrasting idioms (chorale, classical, romantic, one-line folk tune, vocal
# polyphony), so every shipped style is also heard continuing its own idiom.
PRIME_STYLES = ("baroque", "classical", "romantic", "folk", "renaissance")
MAX_DATASET_PRIMES = 5
# A prime must say something about its piece: enough notes, and not a long rest.
MIN_PRIME_NOTES = 10


@dataclass(frozen=True)
class Prime:
    """A passage given to every style model to continue.

    Attributes:
        name: short file-name-safe identifier (``fur_elise``, ``baroque_test``).
        title: what a reader sees in the report.
        notes: the passage, from bar 0 at beat 0.
        time_signature: ``(numerator, denominator)`` of the passage.
        bars: its length in bars; the continuation starts right after.
        source: where it comes from (the fixture, or a dataset's test piece).
    """

    name: str
    title: str
    notes: tuple[Note, ...]
    time_signature: tuple[int, int]
    bars: int
    source: str

    @property
    def bar_length(self) -> float:
        """Beats per bar."""
        return bar_length(self.time_signature)

    @property
    def length(self) -> float:
        """Beats from the start to where the continuation begins."""
        return self.bars * self.bar_length


def fur_elise_prime() -> Prime:
    """Für Elise: the upbeat bar and bars 1-8, in 3/8."""
    return Prime("fur_elise", "Für Elise (Beethoven, WoO 59), upbeat and bars 1-8",
                 tuple(fur_elise_notes()), FUR_ELISE_SIGNATURE, FUR_ELISE_BARS,
                 "models/analysis/fur_elise.py (tests/fixtures/fur_elise_opening.mid)")


def _opening(piece: DecodedPiece, bars: int) -> tuple[list[Note], tuple[int, int]] | None:
    """The first ``bars`` bars if they share one time signature and hold enough notes."""
    if len(piece.bar_starts) < bars + 1 or len(set(piece.signatures[:bars])) != 1:
        return None
    notes, _ = piece.bars(0, bars)
    if len(notes) < MIN_PRIME_NOTES:
        return None
    return notes, piece.signatures[0]


def dataset_prime(directory: str | Path, style: str, bars: int = 4, *,
                  only_style: bool = False) -> Prime | None:
    """The opening of the first test-split piece of a dataset that fits (see module doc);
    with ``only_style``, the first piece of ``style`` (a dataset of several styles).

    Raises:
        DataError: the dataset is missing or malformed.
    """
    from models.analysis.style_classifier import style_sequences  # noqa: PLC0415
    from models.data.dataset import TokenDataset  # noqa: PLC0415 - keeps the module light

    data = TokenDataset(directory, "test")
    tokenizer = data.tokenizer
    names = data.manifest["splits"]["test"].get("pieces", [])
    order = (style_sequences(data.manifest, "test", style) if only_style
             else range(len(data)))
    for index in order:
        opening = _opening(decode_with_bars(np.asarray(data[index]), tokenizer), bars)
        if opening is None:
            continue
        notes, signature = opening
        piece = names[index] if index < len(names) else f"test piece {index}"
        title = f"{style} test piece {Path(piece).with_suffix('')}, bars 1-{bars}"
        return Prime(f"{style}_test", title, tuple(notes), signature, bars,
                     f"{data.directory.name}: {piece}")
    logger.warning("no test piece of %s has a %d-bar opening with %d notes", directory, bars,
                   MIN_PRIME_NOTES)
    return None


def fixed_primes(data_root: str | Path | None, styles: Sequence[str] = PRIME_STYLES,
                 bars: int = 4, limit: int = MAX_DATASET_PRIMES) -> list[Prime]:
    """Für Elise, then up to ``limit`` held-out openings from ``data_root/<style>``.

    Styles without a dataset are skipped, so the set is as large as the data allow.
    """
    primes = [fur_elise_prime()]
    if data_root is None:
        return primes
    for style in styles:
        if len(primes) > limit:
            break
        directory = Path(data_root) / style
        if not (directory / "manifest.json").is_file():
            continue
        try:
            prime = dataset_prime(directory, style, bars)
        except DataError as err:
            logger.warning("no prime from %s: %s", directory, err)
            continue
        if prime is not None:
            primes.append(prime)
    return primes
