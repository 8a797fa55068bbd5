"""Tokenizing pieces: MIDI files -> token ids, in worker processes, or a skip reason.

``tokenize_files`` runs ``tokenize_file`` on every file of a dataset build in
``[data] jobs`` worker processes (MidiTok is slow, and a corpus has thousands of files),
in input order. ``tokenize_file`` never raises on bad input: a file that is empty, too
large, not MIDI, unparsable, polyphonic when ``monophonic`` is asked for, or over a limit
of ``[data]`` comes back as a ``PieceResult`` with its skip reason (``models.data.sources``
names the reasons), so a build can account for every file.

The limits are checked on the file's note onsets (``piece_shape``) before MidiTok runs,
since MidiTok's time and memory grow with the bars a piece spans, not with its size.

With a conditioned vocabulary each piece starts ``BOS Style_k`` with its style's slot and
its notes keep their tracks' roles.

Tokenizing is the build's one slow step and the only one in worker processes; the
workers' per-process state stays here, beside the functions that use it. Torch-free.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from models.core.exceptions import DataError
from models.core.meter import bar_length
from models.core.settings import DataSettings, TokensSettings
from models.core.tokenizer import MelodyTokenizer
from models.data.midifile import score_from_bytes, smf_bytes
from models.data.roles import track_roles
from models.data.sources import (
    SKIP_EMPTY,
    SKIP_EMPTY_BARS,
    SKIP_NOT_MIDI,
    SKIP_PARSE,
    SKIP_POLYPHONIC,
    SKIP_TOO_LARGE,
    SKIP_TOO_MANY_TOKENS,
    SKIP_UNREADABLE,
    PieceResult,
)
from models.data.transpose import pitch_table

logger = logging.getLogger(__name__)


def is_polyphonic(score: Any, tolerance_ticks: int) -> bool:
    """Whether more than one note sounds at once once tracks are merged (drums ignored).

    Overlaps of up to ``tolerance_ticks`` (legato playing, rounding in the file) are
    not counted.
    """
    spans = sorted((n.time, n.time + n.duration) for track in score.tracks
                   if not track.is_drum for n in track.notes)
    sounding_until = None
    for start, end in spans:
        if sounding_until is not None and start < sounding_until - tolerance_ticks:
            return True
        sounding_until = end if sounding_until is None else max(sounding_until, end)
    return False


@dataclasses.dataclass(frozen=True)
class PieceShape:
    """What a score's note onsets promise about its tokens, known before tokenizing.

    Bars are counted with the longest bar the vocabulary has (6 beats by default), so
    both counts are lower bounds of what the tokenizer will make: a piece refused on them
    would have been refused after tokenizing too.

    Attributes:
        notes: non-drum notes within the vocabulary's pitch range.
        bars: bars up to the last onset, at least (each is one ``Bar`` token).
        empty_run: the longest run of bars without an onset, at least (leading bars
            before the first onset included: the tokens start at beat 0).
        first_tick: the earliest onset; negative when the file's times overflowed.
    """

    notes: int
    bars: int
    empty_run: int
    first_tick: int


def _longest_bar_beats(tokenizer: MelodyTokenizer) -> float:
    """Beats of the longest bar the vocabulary can hold (4/4 is always there)."""
    beats = [4.0]
    for text in tokenizer.settings.time_signatures:
        numerator, denominator = (int(part) for part in text.split("/"))
        beats.append(bar_length((numerator, denominator)))
    return max(beats)


def piece_shape(score: Any, tokenizer: MelodyTokenizer) -> PieceShape:
    """The cheap lower bounds of ``PieceShape`` (milliseconds even for 1e9 ticks)."""
    low, high = tokenizer.settings.pitch_min, tokenizer.settings.pitch_max
    onsets = []
    for track in score.tracks:
        if track.is_drum or not len(track.notes):
            continue
        arrays = track.notes.numpy()
        inside = (arrays["pitch"] >= low) & (arrays["pitch"] <= high)
        onsets.append(arrays["time"][inside].astype(np.int64))
    times = np.unique(np.concatenate(onsets)) if onsets else np.zeros(0, dtype=np.int64)
    if not times.size:
        return PieceShape(0, 0, 0, 0)
    bar_ticks = _longest_bar_beats(tokenizer) * score.ticks_per_quarter
    # An interval of g ticks holds at least floor(g / longest bar) bar lines.
    gaps = np.diff(times, prepend=0)
    lines = np.floor(gaps / bar_ticks)
    empty = np.maximum(lines - 1, 0)
    empty[0] = lines[0]  # bars before the first onset are all empty
    return PieceShape(notes=int(sum(len(t) for t in onsets)),
                      bars=int(times[-1] // bar_ticks) + 1,
                      empty_run=int(empty.max()), first_tick=int(times[0]))


def longest_empty_run(tokens: np.ndarray, tokenizer: MelodyTokenizer) -> int:
    """The longest run of ``Bar`` tokens with no ``Pitch`` token in their bars."""
    bars = np.flatnonzero(tokens == tokenizer.bar_id)
    if not bars.size:
        return 0
    pitches = np.concatenate([[0], np.cumsum(pitch_table(tokenizer)[tokens] >= 0)])
    ends = np.append(bars[1:], len(tokens))
    empty = (pitches[ends] - pitches[bars]) == 0
    # Length of each run of True: positions of run starts and ends in the padded mask.
    edges = np.flatnonzero(np.diff(np.concatenate([[0], empty.astype(np.int8), [0]])))
    return int((edges[1::2] - edges[::2]).max()) if edges.size else 0


def _limits(name: str, notes: int, tokens: int, empty_run: int, settings: DataSettings,
            *, bound: str = "") -> PieceResult | None:
    """The skip result of a piece over a limit, or ``None``; ``bound`` marks estimates."""
    if notes < settings.min_notes:
        return PieceResult(name, None, notes=notes, reason=SKIP_EMPTY,
                           detail=f"{notes} notes < min_notes {settings.min_notes}")
    if tokens > settings.max_tokens:
        return PieceResult(name, None, notes=notes, reason=SKIP_TOO_MANY_TOKENS,
                           detail=f"{bound}{tokens} tokens > max_tokens {settings.max_tokens}"
                                  f" ({notes} notes)")
    if empty_run > settings.max_empty_bars:
        return PieceResult(name, None, notes=notes, reason=SKIP_EMPTY_BARS,
                           detail=f"{bound}{empty_run} bars in a row without a note > "
                                  f"max_empty_bars {settings.max_empty_bars}")
    return None


def tokenize_file(path: Path, name: str, tokenizer: MelodyTokenizer,
                  settings: DataSettings, *, style: str | None = None) -> PieceResult:
    """Tokenize one MIDI file, or say why it is skipped. Never raises on bad input.

    ``style`` is the piece's style, written after ``BOS`` by a vocabulary with style
    tokens (ignored by one without); tracks named by role give their notes that role.

    The limits of ``settings`` (``max_file_bytes``, ``min_notes``, ``max_tokens``,
    ``max_empty_bars``) are checked on the file and on its note onsets before MidiTok
    runs, since MidiTok's time and memory grow with the bars a piece spans, not with its
    size: a 200-byte file with huge delta times spans millions of bars. The exact token
    counts are checked again afterwards.
    """
    try:
        size = path.stat().st_size
    except OSError as err:
        return PieceResult(name, None, reason=SKIP_UNREADABLE, detail=str(err))
    if size == 0:
        return PieceResult(name, None, reason=SKIP_EMPTY, detail="0 bytes")
    if size > settings.max_file_bytes:
        return PieceResult(name, None, reason=SKIP_TOO_LARGE,
                           detail=f"{size} bytes > max_file_bytes {settings.max_file_bytes}")
    try:
        with open(path, "rb") as fh:
            # One byte more than allowed: a file that grew since stat() is still refused.
            data = fh.read(settings.max_file_bytes + 1)
    except OSError as err:
        return PieceResult(name, None, reason=SKIP_UNREADABLE, detail=str(err))
    if len(data) > settings.max_file_bytes:
        return PieceResult(name, None, reason=SKIP_TOO_LARGE,
                           detail=f"more than max_file_bytes {settings.max_file_bytes} bytes")
    if smf_bytes(data) is None:
        return PieceResult(name, None, reason=SKIP_NOT_MIDI,
                           detail=f"starts with {data[:4]!r}, not a MIDI header")
    try:
        score = score_from_bytes(data, "the file")
    except DataError as err:
        return PieceResult(name, None, reason=SKIP_PARSE, detail=str(err)[:200])
    shape = piece_shape(score, tokenizer)
    if shape.first_tick < 0:
        return PieceResult(name, None, reason=SKIP_PARSE,
                           detail=f"a note at tick {shape.first_tick} (the file's delta "
                                  f"times overflow symusic's 32-bit ticks)")
    refused = _limits(name, shape.notes, shape.bars + 2, shape.empty_run, settings,
                      bound="at least ")
    if refused is not None:
        return refused
    if settings.monophonic:
        # One grid step of tolerance: a legato overlap is still one line of melody.
        tolerance = score.ticks_per_quarter // tokenizer.settings.positions_per_beat
        if is_polyphonic(score, tolerance):
            return PieceResult(name, None, reason=SKIP_POLYPHONIC,
                               detail="notes overlap after merging tracks")
    try:
        ids = tokenizer.encode_score(score, style=style)
    except (RuntimeError, ValueError, IndexError, KeyError, OverflowError,
            ZeroDivisionError) as err:
        # MidiTok and symusic can still trip on odd files (a time signature MidiTok
        # cannot represent, a time that overflows int32 once resampled).
        return PieceResult(name, None, reason=SKIP_PARSE,
                           detail=f"tokenizer: {type(err).__name__}: {err}"[:200])
    tokens = np.asarray(ids, dtype=np.uint16)
    notes = int((pitch_table(tokenizer)[tokens] >= 0).sum())
    refused = _limits(name, notes, len(tokens), longest_empty_run(tokens, tokenizer), settings)
    if refused is not None:
        return refused
    return PieceResult(name, tokens, notes=notes, roles=tuple(track_roles(score)))


# Per-process state of the workers, set once by the pool initializer (building the
# MidiTok vocabulary per file would dominate the run time).
_WORKER: dict[str, Any] = {}


def _init_worker(tokens_settings: dict[str, Any], data_settings: dict[str, Any]) -> None:
    _WORKER["tokenizer"] = MelodyTokenizer(_tokens_from_dict(tokens_settings))
    _WORKER["settings"] = DataSettings(**data_settings)


def _work(item: tuple[str, str, str | None]) -> tuple[str, bytes | None, int, str | None, str,
                                                      tuple[str, ...]]:
    """Worker entry: plain values in and out (ids as raw uint16 bytes)."""
    path, name, style = item
    try:
        result = tokenize_file(Path(path), name, _WORKER["tokenizer"], _WORKER["settings"],
                               style=style)
    except Exception as err:  # a library bug on one odd file must not end a long build
        logger.warning("unexpected error on %s: %r", name, err)
        result = PieceResult(name, None, reason=SKIP_PARSE,
                             detail=f"unexpected {type(err).__name__}: {err}"[:200])
    raw = None if result.tokens is None else result.tokens.tobytes()
    return result.name, raw, result.notes, result.reason, result.detail, result.roles


def _tokens_from_dict(values: dict[str, Any]) -> TokensSettings:
    return TokensSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def tokenize_files(root: Path | None, files: Sequence[Path | tuple[Path, str]],
                   tokenizer: MelodyTokenizer, settings: DataSettings, *,
                   progress: bool = True,
                   styles: Mapping[str, str | None] | None = None) -> list[PieceResult]:
    """Tokenize files in ``settings.jobs`` worker processes, in input order.

    Each file is a path (its piece name is the path relative to ``root``) or a
    ``(path, piece name)`` pair; ``styles`` gives a piece's style by its name.
    """
    from tqdm import tqdm  # noqa: PLC0415

    named = [(str(f[0]), f[1]) if isinstance(f, tuple)
             else (str(f), f.relative_to(root).as_posix() if root else f.name) for f in files]
    styles = styles or {}
    items = [(path, name, styles.get(name)) for path, name in named]
    jobs = settings.jobs or os.cpu_count() or 1
    tokens_dict = dataclasses.asdict(tokenizer.settings)
    bar = tqdm(total=len(items), unit="file", desc="tokenizing", disable=not progress)
    results = []
    with bar:
        if jobs == 1:
            _init_worker(tokens_dict, dataclasses.asdict(settings))
            outputs = map(_work, items)
            for out in outputs:
                results.append(out)
                bar.update()
        else:
            with ProcessPoolExecutor(jobs, initializer=_init_worker,
                                     initargs=(tokens_dict, dataclasses.asdict(settings))) as pool:
                for out in pool.map(_work, items, chunksize=8):
                    results.append(out)
                    bar.update()
    return [PieceResult(name, None if raw is None else np.frombuffer(raw, dtype=np.uint16),
                        notes, reason, detail, tuple(roles))
            for name, raw, notes, reason, detail, roles in results]
