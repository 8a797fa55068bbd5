"""Transposing tokenized pieces, on their ids, and the pitch tables it needs.

A dataset build adds transposed copies of its training pieces (``[data] transpose_min``
.. ``transpose_max``, or ``melody data build --transpose``, read by ``parse_transpose``).
``transpose_tokens`` moves a piece by changing its ``Pitch`` ids: no detokenizing and
retokenizing, so a copy is exact and cheap.

``pitch_table`` (each id's pitch, -1 for an id that is no ``Pitch`` token) is shared with
the tokenizing and the build, which count a piece's notes and range with it; the tables
are built once per vocabulary.

Torch-free.
"""

from __future__ import annotations

import numpy as np

from models.core.exceptions import DataError
from models.core.tokenizer import MelodyTokenizer


def transpose_tokens(tokens: np.ndarray, semitones: int,
                     tokenizer: MelodyTokenizer) -> np.ndarray | None:
    """The piece moved by ``semitones``, or ``None`` if a note would leave the pitch range.

    Working on ids is exact: MidiTok orders simultaneous notes by pitch, which a shift
    of every pitch keeps.
    """
    if semitones == 0:
        return tokens
    table = pitch_table(tokenizer)
    pitches = table[tokens]
    mask = pitches >= 0
    moved = pitches[mask] + semitones
    low, high = tokenizer.settings.pitch_min, tokenizer.settings.pitch_max
    if moved.size and (moved.min() < low or moved.max() > high):
        return None
    out = tokens.copy()
    out[mask] = _pitch_id_of(tokenizer)[moved]
    return out


# (pitch of each id, id of each pitch) per vocabulary fingerprint: every piece of a build
# looks its ids up, so the tables are built once.
_TABLES: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _tables(tokenizer: MelodyTokenizer) -> tuple[np.ndarray, np.ndarray]:
    key = tokenizer.fingerprint
    if key not in _TABLES:
        pitch_of_id = np.full(tokenizer.vocab_size, -1, dtype=np.int64)
        id_of_pitch = np.full(128, -1, dtype=np.int64)
        for index, text in enumerate(tokenizer.tokens):
            if text.startswith("Pitch_"):
                pitch = int(text.split("_")[1])
                pitch_of_id[index] = pitch
                id_of_pitch[pitch] = index
        _TABLES[key] = (pitch_of_id, id_of_pitch)
    return _TABLES[key]


def pitch_table(tokenizer: MelodyTokenizer) -> np.ndarray:
    """Each id's MIDI pitch, -1 for an id that is no ``Pitch`` token."""
    return _tables(tokenizer)[0]


def _pitch_id_of(tokenizer: MelodyTokenizer) -> np.ndarray:
    return _tables(tokenizer)[1]


def parse_transpose(text: str) -> tuple[int, int]:
    """``"-5..6"`` -> ``(-5, 6)``; a single number ``"3"`` means ``-3..3``.

    Raises:
        DataError: the text is not such a range or its bounds are out of -12..12.
    """
    try:
        if ".." in text:
            low_text, high_text = text.split("..", 1)
            low, high = int(low_text), int(high_text)
        else:
            high = abs(int(text))
            low = -high
    except ValueError as err:
        raise DataError(f"--transpose must look like -5..6 (received {text!r})") from err
    if not -12 <= low <= 0 <= high <= 12:
        raise DataError(f"--transpose must run from -12..0 to 0..12 semitones "
                        f"(received {text!r})")
    return low, high
