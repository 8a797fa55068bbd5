"""The fixed prime set of the style evaluation: what every style model is asked to continue.

- The **neutral** primes (``neutral_primes``): Für Elise, a plain C-major 2-bar phrase and a
  4-bar folk tune (``models.analysis.plain_tunes``), which the one style-conditioned model
  continues under every style token; none is music of one of its styles' datasets.
- The opening of Für Elise (``models.analysis.fur_elise``): the piece the study melodyd grew from
  continued in each style, a melody every listener knows, so the styles' answers are
  easy to compare by ear and on a piano roll. It is in no bundled corpus, so no model
  has seen it.
- The first ``bars`` bars of one held-out piece of each of a few contrasting styles
  (``PRIME_STYLES``), taken from the *test* split of that style's dataset (never trained
  on): a style model is heard continuing its own music and music foreign to it, and
  style fidelity is measured over material it cannot have memorised. The choice is
  deterministic: the first test piece, in the manifest's (sorted) order, that fits.
- ``style_openings``: several held-out openings of one style of a dataset of several
  styles (the conditioned model's), the style's "own idiom".

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
from models.analysis.plain_tunes import (
    C_MAJOR_BARS,
    C_MAJOR_SIGNATURE,
    FOLK_TUNE_BARS,
    FOLK_TUNE_SIGNATURE,
    c_major_notes,
    folk_tune_notes,
)
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
# The names of the neutral primes, in the order ``neutral_primes`` gives them.
NEUTRAL_PRIMES = ("fur_elise", "c_major", "folk_tune")


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


def c_major_prime() -> Prime:
    """The plain C-major phrase: two bars of quarter notes in 4/4."""
    return Prime("c_major", "a plain C-major phrase, C D E F, G E F C in quarter notes",
                 tuple(c_major_notes()), C_MAJOR_SIGNATURE, C_MAJOR_BARS,
                 "models/analysis/plain_tunes.py (the jam harness's c_major call)")


def folk_tune_prime() -> Prime:
    """Greensleeves: the upbeat bar and bars 1-4, in 6/8."""
    return Prime("folk_tune", "Greensleeves (English folk tune), upbeat and bars 1-4",
                 tuple(folk_tune_notes()), FOLK_TUNE_SIGNATURE, FOLK_TUNE_BARS,
                 "models/analysis/plain_tunes.py")


def neutral_primes() -> list[Prime]:
    """Für Elise, the C-major phrase and the folk tune (``NEUTRAL_PRIMES``)."""
    return [fur_elise_prime(), c_major_prime(), folk_tune_prime()]


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
    from models.data.manifest import TokenDataset  # noqa: PLC0415 - keeps the module light

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


def style_openings(directory: str | Path, style: str, bars: int = 4, count: int = 4, *,
                   seed: int = 0) -> list[Prime]:
    """Up to ``count`` openings of ``style``'s test pieces in a dataset of several styles.

    The pieces are visited in a seeded random order (the same every run), so that a style
    drawn from several collections is heard through more than its alphabetically first
    one; each opening is its piece's first ``bars`` bars, when they share one time
    signature and hold ``MIN_PRIME_NOTES`` notes. Named ``<style>_test_<n>``.

    Raises:
        DataError: the dataset is missing or malformed.
    """
    from models.analysis.style_classifier import style_sequences  # noqa: PLC0415
    from models.data.manifest import TokenDataset  # noqa: PLC0415 - keeps the module light

    data = TokenDataset(directory, "test")
    tokenizer = data.tokenizer
    names = data.manifest["splits"]["test"].get("pieces", [])
    order = style_sequences(data.manifest, "test", style)
    np.random.default_rng(seed).shuffle(order)
    found: list[Prime] = []
    for index in order:
        if len(found) >= count:
            break
        opening = _opening(decode_with_bars(np.asarray(data[index]), tokenizer), bars)
        if opening is None:
            continue
        notes, signature = opening
        piece = names[index] if index < len(names) else f"test piece {index}"
        number = len(found) + 1
        found.append(Prime(f"{style}_test_{number}",
                           f"{style} test piece {Path(piece).with_suffix('')}, bars 1-{bars}",
                           tuple(notes), signature, bars, f"{data.directory.name}: {piece}"))
    if len(found) < count:
        logger.warning("%s: %d of %d held-out openings (%d-bar, %d notes) found in %s", style,
                       len(found), count, bars, MIN_PRIME_NOTES, directory)
    return found


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
