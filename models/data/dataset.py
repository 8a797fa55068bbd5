"""Token datasets: MIDI files -> train/validation/test token arrays on disk.

``build_dataset`` tokenizes every piece of a source (a folder of MIDI and score files, a
bundled ``corpus:NAME``, a named corpus of the data root, or several of these, e.g.
``all-corpora``; see ``models.data.sources``) in worker processes, skips bad input with a
recorded reason, splits the pieces into train / validation / test (by piece, never by
token position, so no piece leaks across splits), adds transposed copies of the training
pieces, and writes per split ``{split}.tokens.npy`` (uint16, pieces concatenated, each
``BOS ... EOS``) and ``{split}.offsets.npy`` (int64, ``n + 1`` start offsets), plus
``manifest.json``. ``TokenDataset`` opens them again as memory maps.

Every entry of a source folder is accounted for: a file is kept, or listed in the
manifest's skip table with a reason (a name that is not MIDI, a broken link, a FIFO, a
piece with too many tokens, ...). Suffixes are compared in any letter case, and karaoke
``.kar`` files are read: they are Standard MIDI Files with lyrics.

The manifest's ``pieces`` table gives each kept piece's style, licence, corpus, source
and the role of each of its tracks (``models.data.roles.piece_info`` reads it); its ``table``
sums pieces, notes and tokens per split, and the roles met, per style and per source
(``data_table``; ``melody data build`` prints it).

With a conditioned vocabulary (``[tokens] style_slots``, ``roles``), each piece starts
``BOS Style_k`` with its style's slot (slot 0 when its style is unknown) and its notes
keep their tracks' roles; the styles of the source take the free style slots before
anything is tokenized, and the manifest's tokenizer configuration records them.

Torch-free: the training loop wraps ``TokenDataset`` in its own torch dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from models.core.exceptions import DataError, TokenizerError
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
    resolve_source,
    resolve_sources,
)

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "melodyd-dataset"
MANIFEST_VERSION = 1
SPLITS = ("train", "validation", "test")
# ----------------------------------------------------------------- one file (in a worker)
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
    pitches = np.concatenate([[0], np.cumsum(_pitch_table(tokenizer)[tokens] >= 0)])
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
    notes = int((_pitch_table(tokenizer)[tokens] >= 0).sum())
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


# ----------------------------------------------------------------- splits and augmentation
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


def transpose_tokens(tokens: np.ndarray, semitones: int,
                     tokenizer: MelodyTokenizer) -> np.ndarray | None:
    """The piece moved by ``semitones``, or ``None`` if a note would leave the pitch range.

    Working on ids is exact: MidiTok orders simultaneous notes by pitch, which a shift
    of every pitch keeps.
    """
    if semitones == 0:
        return tokens
    table = _pitch_table(tokenizer)
    pitches = table[tokens]
    mask = pitches >= 0
    moved = pitches[mask] + semitones
    low, high = tokenizer.settings.pitch_min, tokenizer.settings.pitch_max
    if moved.size and (moved.min() < low or moved.max() > high):
        return None
    out = tokens.copy()
    out[mask] = _pitch_id_of(tokenizer)[moved]
    return out


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


def _pitch_table(tokenizer: MelodyTokenizer) -> np.ndarray:
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


# ----------------------------------------------------------------- writing
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


def _plan(results: dict[str, PieceResult], names: list[str], shifts: Sequence[int],
          tokenizer: MelodyTokenizer) -> SplitPlan:
    """Which transpositions each piece takes: those keeping every note in the vocabulary."""
    plan = SplitPlan()
    pitch_of_id = _pitch_table(tokenizer)
    low, high = tokenizer.settings.pitch_min, tokenizer.settings.pitch_max
    for name in names:
        result = results[name]
        assert result.tokens is not None  # only kept pieces reach the splits
        pitches = pitch_of_id[result.tokens]
        pitches = pitches[pitches >= 0]
        applied = [s for s in shifts
                   if not pitches.size or (pitches.min() + s >= low and pitches.max() + s <= high)]
        plan.pieces.append(name)
        plan.transpositions.append(applied)
        plan.lengths.append(len(result.tokens))
        plan.notes += result.notes * len(applied)
    return plan


def _write_split(out: Path, split: str, plan: SplitPlan, results: dict[str, PieceResult], *,
                 tokenizer: MelodyTokenizer, digest: Any) -> int:
    """Write one split's arrays, transposing straight into a memory map; return its tokens.

    Nothing but the untransposed pieces is held in memory, so a large folder with twelve
    transpositions does not need twelve times its size in RAM.
    """
    lengths = np.array([length for length, shifts in zip(plan.lengths, plan.transpositions,
                                                         strict=True) for _ in shifts],
                       dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    tokens = np.lib.format.open_memmap(out / f"{split}.tokens.npy", mode="w+",
                                       dtype=np.uint16, shape=(total,))
    row = 0
    for name, shifts in zip(plan.pieces, plan.transpositions, strict=True):
        base = results[name].tokens
        for shift in shifts:
            sequence = transpose_tokens(base, shift, tokenizer)
            assert sequence is not None  # the plan kept only shifts that fit
            tokens[offsets[row]:offsets[row + 1]] = sequence
            digest.update(sequence.tobytes())
            row += 1
    tokens.flush()
    del tokens
    np.save(out / f"{split}.offsets.npy", offsets)
    digest.update(offsets.tobytes())
    return total


def _skip_table(results: Sequence[PieceResult]) -> dict[str, list[dict[str, str]]]:
    table: dict[str, list[dict[str, str]]] = {}
    for result in results:
        if result.reason is not None:
            table.setdefault(result.reason, []).append(
                {"file": result.name, "detail": result.detail})
    return table


NO_STYLE = "(none)"  # the table's row of pieces without a style label (slot 0 when conditioned)


def _empty_row() -> dict[str, Any]:
    return {"pieces": dict.fromkeys(SPLITS, 0), "notes": dict.fromkeys(SPLITS, 0),
            "tokens": dict.fromkeys(SPLITS, 0), "train_sequences": 0,
            "train_tokens_written": 0, "roles": {}}


def data_table(pieces: Mapping[str, Mapping[str, Any]], kept: Mapping[str, PieceResult],
               plans: Mapping[str, SplitPlan],
               tokenizer: MelodyTokenizer | None = None) -> dict[str, dict[str, Any]]:
    """Per style and per source: pieces, notes and tokens of each split, and roles.

    ``pieces``, ``notes`` and ``tokens`` count each piece once, untransposed (the size of
    the corpus); ``train_sequences`` and ``train_tokens_written`` count what the train
    split holds with its transposed copies (what training reads). ``roles`` counts, per
    role, the pieces with a track of that role. A style row carries its ``slot`` when the
    vocabulary has style tokens.
    """
    table: dict[str, dict[str, Any]] = {"styles": {}, "sources": {}}
    slots = tokenizer.style_slots if tokenizer is not None else {}
    for split, plan in plans.items():
        for name, shifts in zip(plan.pieces, plan.transpositions, strict=True):
            info, result = pieces[name], kept[name]
            assert result.tokens is not None  # only kept pieces reach the splits
            groups = (("styles", str(info.get("style") or NO_STYLE)),
                      ("sources", str(info.get("source") or "-")))
            for kind, key in groups:
                row = table[kind].setdefault(key, _empty_row())
                row["pieces"][split] += 1
                row["notes"][split] += result.notes
                row["tokens"][split] += len(result.tokens)
                if split == "train":
                    row["train_sequences"] += len(shifts)
                    row["train_tokens_written"] += len(result.tokens) * len(shifts)
                for role in sorted(set(result.roles)):
                    row["roles"][role] = row["roles"].get(role, 0) + 1
    if slots:
        for style, row in table["styles"].items():
            row["slot"] = slots.get(style, 0)
    return {kind: dict(sorted(rows.items())) for kind, rows in table.items()}


def build_dataset(source: str | Sequence[str], out: str | Path, settings: DataSettings,
                  tokenizer: MelodyTokenizer | None = None, *,
                  progress: bool = True, exclude: Sequence[str] = (),
                  style: str | None = None) -> dict[str, Any]:
    """Build a dataset folder from MIDI files and return its manifest.

    Args:
        source: a folder of MIDI and score files (searched recursively), ``corpus:NAME``,
            a named corpus, ``all-corpora``, or several of them (a list or a comma list;
            see ``models.data.sources.resolve_sources``).
        out: the dataset folder (created; earlier arrays in it are replaced).
        settings: the ``[data]`` values (with command-line overrides applied).
        tokenizer: the vocabulary; ``[tokens]`` defaults when omitted.
        progress: show tqdm bars.
        exclude: sources to leave out (``all-corpora`` minus a corpus).
        style: the style of every piece, in place of what its source says (``melody
            add-style`` labels a user's folder with the new style's name this way).

    Raises:
        DataError: no source files, no piece survives the filters, or the output folder
            cannot be written. Bad files never raise: they are skipped with a reason.
    """
    started = time.monotonic()
    tokenizer = tokenizer or MelodyTokenizer()
    # resolve_source is looked up here, at call time, so that tests can stand in for it.
    found = resolve_sources(source, settings.jobs, progress=progress,
                            data_root=settings.data_root, timeout=settings.convert_timeout,
                            exclude=exclude, resolve=resolve_source)
    source_text = ",".join(s["spec"] for s in found.sources)
    root = found.root
    resolve_seconds = time.monotonic() - started
    if style is not None:
        for name in found.meta:
            found.meta[name]["style"] = style
    styles = {name: info.get("style") for name, info in found.meta.items()}
    if tokenizer.style_ids:
        # Before any worker starts, so every piece is encoded with the same slots.
        try:
            tokenizer = tokenizer.with_styles(sorted({s for s in styles.values() if s}))
        except TokenizerError as err:
            raise DataError(f"{source_text}: {err}") from err
        logger.info("style slots: %s", tokenizer.style_slots)
    results = tokenize_files(root, found.items, tokenizer, settings, progress=progress,
                             styles=styles) + found.unread
    kept = {r.name: r for r in results if r.tokens is not None}
    if not kept:
        reasons = Counter(r.reason for r in results)
        raise DataError(f"no usable piece among {len(results)} files of {source_text} "
                        f"(skipped: {dict(reasons)})")
    splits = split_pieces(list(kept), settings.val_fraction, settings.test_fraction,
                          settings.seed, keys=found.split_keys)
    # Train gets shift 0 first, then the others in order; held-out splits stay untouched.
    train_shifts = [0] + [s for s in range(settings.transpose_min, settings.transpose_max + 1)
                          if s != 0]
    out = Path(out).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST_NAME).unlink(missing_ok=True)  # no manifest while arrays change
    except OSError as err:
        raise DataError(f"cannot write the dataset folder {out}: {err}") from err
    digest = hashlib.sha256()
    manifest_splits: dict[str, Any] = {}
    plans: dict[str, SplitPlan] = {}
    for split in SPLITS:
        shifts = train_shifts if split == "train" else [0]
        plan = plans[split] = _plan(kept, splits[split], shifts, tokenizer)
        total = _write_split(out, split, plan, kept, tokenizer=tokenizer, digest=digest)
        digest.update(json.dumps([plan.pieces, plan.transpositions]).encode())
        manifest_splits[split] = {
            "pieces": plan.pieces,
            "transpositions": plan.transpositions,
            "num_pieces": len(plan.pieces),
            "num_sequences": plan.num_sequences,
            "tokens": total,
            "notes": plan.notes,
        }
    skipped = _skip_table(results)
    # What the tokenizer needs to condition on each kept piece: (style, role per track).
    pieces = {name: {**{"style": None, "licence": None, "corpus": None},
                     **found.meta.get(name, {}), "roles": list(kept[name].roles)}
              for name in sorted(kept)}
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "source": source_text,
        "source_root": str(root),
        "sources": found.sources,
        "tokenizer": tokenizer.to_dict(),
        "settings": dataclasses.asdict(settings),
        "files": len(results),
        "splits": manifest_splits,
        "skipped": skipped,
        "skipped_counts": {reason: len(v) for reason, v in skipped.items()},
        "pieces": pieces,
        "styles": dict(Counter(str(p["style"]) for p in pieces.values())),
        "table": data_table(pieces, kept, plans, tokenizer),
        "licences": sorted({str(p["licence"]) for p in pieces.values() if p["licence"]}),
        "content_hash": digest.hexdigest(),
        "convert_seconds": round(resolve_seconds, 2),
        "build_seconds": round(time.monotonic() - started, 2),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    logger.info("dataset written to %s in %.1f s", out, manifest["build_seconds"])
    return manifest


# ----------------------------------------------------------------- reading
def load_manifest(directory: str | Path) -> dict[str, Any]:
    """Read and check a dataset's ``manifest.json``.

    Raises:
        DataError: the folder or manifest is missing, or the manifest is malformed.
    """
    folder = Path(directory).expanduser()
    hint = f"build one with `melody data build --source SRC --out {folder}`"
    if not folder.is_dir():
        raise DataError(f"dataset folder not found: {folder}; {hint}")
    path = folder / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise DataError(f"{folder} has no {MANIFEST_NAME} (not a dataset, or its build "
                        f"did not finish); {hint}") from err
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}; {hint}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{path} is not a melodyd dataset manifest; {hint}")
    if manifest.get("version") != MANIFEST_VERSION:
        raise DataError(f"{path} has manifest version {manifest.get('version')!r}, this "
                        f"melodyd reads version {MANIFEST_VERSION}; {hint}")
    splits = manifest.get("splits")
    if (not isinstance(splits, dict) or not all(isinstance(splits.get(s), dict) for s in SPLITS)
            or not isinstance(manifest.get("tokenizer"), dict)):
        raise DataError(f"{path} lacks its splits or tokenizer; {hint}")
    return manifest


class TokenDataset:
    """One split of a built dataset, as memory maps.

    Attributes:
        directory: the dataset folder.
        split: ``train``, ``validation`` or ``test``.
        manifest: the parsed ``manifest.json``.
        tokens: uint16 ids of every sequence, concatenated (read-only memmap).
        offsets: int64 start of each sequence, plus the total length at the end.
    """

    def __init__(self, directory: str | Path, split: str) -> None:
        """Open a split.

        Raises:
            DataError: unknown split, missing manifest or arrays, or arrays that do not
                agree with each other or with the manifest.
        """
        if split not in SPLITS:
            raise DataError(f"split must be one of {', '.join(SPLITS)} (received {split!r})")
        self.directory = Path(directory).expanduser()
        self.split = split
        self.manifest = load_manifest(self.directory)
        self.tokens = self._load(f"{split}.tokens.npy", np.uint16)
        self.offsets = self._load(f"{split}.offsets.npy", np.int64)
        info = self.manifest["splits"][split]
        if (self.offsets.ndim != 1 or len(self.offsets) < 1 or self.offsets[0] != 0
                or int(self.offsets[-1]) != len(self.tokens)
                or len(self.offsets) - 1 != info.get("num_sequences")):
            raise DataError(f"{self.directory}: {split} arrays do not match each other or "
                            f"the manifest; rebuild with `melody data build`")

    def _load(self, name: str, dtype: type) -> np.ndarray:
        path = self.directory / name
        try:
            array = np.load(path, mmap_mode="r")
        except FileNotFoundError as err:
            raise DataError(f"{path} is missing; rebuild with `melody data build`") from err
        except (OSError, ValueError) as err:
            raise DataError(f"{path} is not a readable array ({err}); rebuild with "
                            f"`melody data build`") from err
        if array.dtype != dtype:
            raise DataError(f"{path} holds {array.dtype}, expected {np.dtype(dtype)}")
        return array

    def __len__(self) -> int:
        """Number of sequences (pieces and their transposed copies)."""
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        """Token ids of one sequence, ``BOS ... EOS``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"sequence {index} out of range (0..{len(self) - 1})")
        index %= len(self)
        return self.tokens[self.offsets[index]:self.offsets[index + 1]]

    @property
    def tokenizer(self) -> MelodyTokenizer:
        """The vocabulary the dataset was built with."""
        return MelodyTokenizer.from_dict(self.manifest["tokenizer"])


def format_skip_table(manifest: dict[str, Any], limit: int = 5) -> list[str]:
    """Lines of a table of skipped files by reason (at most ``limit`` examples each)."""
    skipped = manifest.get("skipped", {})
    if not skipped:
        return ["skipped: none"]
    lines = [f"skipped {sum(len(v) for v in skipped.values())} of {manifest['files']} files:"]
    width = max(len(reason) for reason in skipped)
    for reason, entries in sorted(skipped.items()):
        lines.append(f"  {reason:<{width}}  {len(entries):>6}")
        for entry in entries[:limit]:
            lines.append(f"      {entry['file']}: {entry['detail']}")
        if len(entries) > limit:
            lines.append(f"      ... and {len(entries) - limit} more (see manifest.json)")
    return lines




def _triple(values: Mapping[str, int]) -> str:
    return "/".join(str(values.get(split, 0)) for split in SPLITS)


def format_data_table(manifest: dict[str, Any]) -> list[str]:
    """Lines of the manifest's per-style and per-source table (``data_table``).

    Each of pieces, notes and tokens is ``train/validation/test``, counting every piece
    once; ``written`` is the train split's tokens with its transposed copies.
    """
    table = manifest.get("table")
    if not isinstance(table, dict):
        return ["(no per-style table: a dataset built before it existed)"]
    lines = []
    for kind, title in (("styles", "style"), ("sources", "source")):
        rows = table.get(kind) or {}
        if not rows:
            continue
        texts = {key: (_triple(row["pieces"]), _triple(row["notes"]), _triple(row["tokens"]))
                 for key, row in rows.items()}
        widths = [max(len(title), *(len(k) for k in rows))] + [
            max(len(head), *(len(t[i]) for t in texts.values()))
            for i, head in enumerate(("pieces", "notes", "tokens"))]
        slot = kind == "styles" and any("slot" in row for row in rows.values())
        head = (f"  {title:<{widths[0]}}" + ("  slot" if slot else "")
                + f"  {'pieces':>{widths[1]}}  {'notes':>{widths[2]}}  {'tokens':>{widths[3]}}"
                + f"  {'written':>11}  roles (pieces)")
        lines.append(f"per {title} (pieces / notes / tokens: train/validation/test, each piece "
                     f"once; written: train tokens with transposed copies)")
        lines.append(head)
        for key, row in rows.items():
            roles = ", ".join(f"{role} {count}" for role, count in sorted(row["roles"].items()))
            lines.append(f"  {key:<{widths[0]}}" + (f"  {row.get('slot', '-'):>4}" if slot else "")
                         + f"  {texts[key][0]:>{widths[1]}}  {texts[key][1]:>{widths[2]}}"
                         f"  {texts[key][2]:>{widths[3]}}  {row['train_tokens_written']:>11}"
                         f"  {roles or '-'}")
    return lines
