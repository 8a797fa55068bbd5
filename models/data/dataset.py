"""Token datasets: MIDI files -> train/validation/test token arrays on disk.

``build_dataset`` tokenizes every piece of a source (a folder of MIDI and score files, a
bundled ``corpus:NAME``, a named corpus of the data root, or several of these, e.g.
``all-corpora``; see ``models.data.sources``) in worker processes
(``models.data.tokenize_pieces``), skips bad input with a recorded reason, splits the
pieces into train / validation / test (``models.data.splits``: by piece, never by token
position, so no piece leaks across splits), adds transposed copies of the training pieces
(``models.data.transpose``), and writes per split ``{split}.tokens.npy`` and
``{split}.offsets.npy``, plus ``manifest.json`` (``models.data.manifest`` describes them and
reads them back).

Every entry of a source folder is accounted for: a file is kept, or listed in the
manifest's skip table with a reason (a name that is not MIDI, a broken link, a FIFO, a
piece with too many tokens, ...). Suffixes are compared in any letter case, and karaoke
``.kar`` files are read: they are Standard MIDI Files with lyrics.

The manifest's ``pieces`` table gives each kept piece's style, licence, corpus, source
and the role of each of its tracks (``models.data.roles.piece_info`` reads it); its ``table``
sums pieces, notes and tokens per split, and the roles met, per style and per source
(``models.data.data_tables``; ``melody data build`` prints it).

With a conditioned vocabulary (``[tokens] style_slots``, ``roles``), each piece starts
``BOS Style_k`` with its style's slot (slot 0 when its style is unknown) and its notes
keep their tracks' roles; the styles of the source take the free style slots before
anything is tokenized, and the manifest's tokenizer configuration records them.

Torch-free.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.core.exceptions import DataError, TokenizerError
from models.core.settings import DataSettings
from models.core.tokenizer import MelodyTokenizer
from models.data.data_tables import data_table, skip_table
from models.data.manifest import MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION, SPLITS
from models.data.sources import PieceResult, resolve_source, resolve_sources
from models.data.splits import SplitPlan, split_pieces
from models.data.tokenize_pieces import tokenize_files
from models.data.transpose import pitch_table, transpose_tokens

logger = logging.getLogger(__name__)


def _plan(results: dict[str, PieceResult], names: list[str], shifts: Sequence[int],
          tokenizer: MelodyTokenizer) -> SplitPlan:
    """Which transpositions each piece takes: those keeping every note in the vocabulary."""
    plan = SplitPlan()
    pitch_of_id = pitch_table(tokenizer)
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
    skipped = skip_table(results)
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
