"""Bundled corpora: public-domain scores shipped inside the music21 package, as MIDI.

music21 (the ``train`` extra) carries a few thousand scores in MusicXML, Humdrum and ABC.
Each named corpus below is a documented list of its collections (one folder of
``music21/corpus`` each). A collection is converted to MIDI once, in worker processes,
and cached under the user's cache directory (``$MELODYD_CACHE``, else
``$XDG_CACHE_HOME/melodyd``, else ``~/.cache/melodyd``); ``melody data build --source
corpus:NAME`` then reads the cached MIDI files like any folder.

One ABC file can hold hundreds of tunes (an "opus"): each tune becomes its own MIDI file,
so that the dataset splits folk music by tune. A score music21 cannot turn into MIDI (or
that takes longer than ``[data] convert_timeout``) is recorded in the collection's
``index.json`` with the error and skipped.

The cache machinery here is shared with the named corpora of a data root
(``models.data.data_root``): each collection is a folder with role-named MIDI files
(``models.data.roles``), a ``journal.jsonl`` written as each source file finishes (an
interrupted conversion resumes where it stopped), and, once complete, ``index.json``
with every piece's style, track roles and the collection's licence. A lock file per
collection lets two builds share the work.

Torch-free; music21 is imported only when something must be converted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from models.core.exceptions import DataError
from models.data.roles import RULE_ALL_LEAD, RULE_ANY, RULE_FIRST_PART, RULE_VOICE_PIANO
from models.data.scores import (
    SCORE_SUFFIXES,
    SCORE_WRITER_MUSIC21,
    Journal,
    Record,
    Unit,
    run_units,
    stamp,
    still_valid,
)

logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"
LOCK_SUFFIX = ".lock"
INDEX_FORMAT = "melodyd-corpus-index"
# Bump when the conversion changes, so old caches are converted again.
# 3: tracks named by role (lead / accompaniment / any), style and roles in the index.
CONVERTER_VERSION = 3
MUSIC21_LICENCE = "public domain (music21 corpus)"
# Per-file time limit when none is given (seconds): a string quartet takes up to ~4 min.
DEFAULT_TIMEOUT = 600.0


@dataclasses.dataclass(frozen=True)
class Collection:
    """One folder of ``music21/corpus``.

    Attributes:
        name: the folder name inside music21's corpus.
        description: composer or collection, for ``melody data corpora``.
        tunes_per_file: keep at most this many tunes of each multi-tune (ABC opus) file,
            the first ones in file order, so that huge folk collections stay quick to
            convert; ``None`` keeps all.
        voices_as_tunes: the ABC files store each voice of one piece as its own tune
            (X: field); the voices are put back together into one score.
        style: the style label of its pieces (the style model it feeds).
        rule: how its tracks get their roles (``models.data.roles.RULES``).
        licence: the licence of its scores.
        score_writer: how a parsed score becomes MIDI: ``"music21"`` (its own writer, which
            expands repeats) or ``"notes"`` (``models.data.score_notes``: one pass, as
            notated; for scores too large for music21's writer, e.g. whole quartets).
    """

    name: str
    description: str
    tunes_per_file: int | None = None
    voices_as_tunes: bool = False
    style: str = ""
    rule: str = RULE_ANY
    licence: str = MUSIC21_LICENCE
    score_writer: str = SCORE_WRITER_MUSIC21


# Style labels (bundled corpora keep the styles of models/pretrained/recipe.toml).
_S_REN, _S_BAR, _S_CLA, _S_ROM, _S_FOLK, _S_MOD = (
    "renaissance", "baroque", "classical", "romantic", "folk", "modern")
_SONGS = {"rule": RULE_VOICE_PIANO}

COLLECTIONS: dict[str, Collection] = {c.name: c for c in (
    # Renaissance and earlier vocal polyphony (equal voices: no lead).
    Collection("palestrina", "Giovanni Pierluigi da Palestrina: mass movements (Humdrum)",
               style=_S_REN),
    Collection("josquin", "Josquin des Prez: chansons and motets (ABC, one voice per tune)",
               voices_as_tunes=True, style=_S_REN),
    Collection("monteverdi", "Claudio Monteverdi: madrigals, books 3-5", style=_S_REN),
    Collection("lusitano", "Vicente Lusitano: motet", style=_S_REN),
    Collection("trecento", "Italian trecento songs (14th century)", style=_S_REN),
    Collection("ciconia", "Johannes Ciconia", style=_S_REN),
    Collection("luca", "Luca Marenzio", style=_S_REN),
    # Baroque. The bach folder is the chorales: the soprano leads the lower voices.
    Collection("bach", "Johann Sebastian Bach: chorales and other works", style=_S_BAR,
               rule=RULE_FIRST_PART),
    Collection("handel", "George Frideric Handel", style=_S_BAR),
    Collection("corelli", "Arcangelo Corelli: trio sonata", style=_S_BAR),
    # Classical.
    Collection("cpebach", "Carl Philipp Emanuel Bach", style=_S_CLA),
    Collection("haydn", "Joseph Haydn: string quartets", style=_S_CLA),
    Collection("mozart", "Wolfgang Amadeus Mozart: string quartets and others", style=_S_CLA),
    Collection("beethoven", "Ludwig van Beethoven: string quartets and piano works",
               style=_S_CLA),
    # Romantic. Songs: the voice leads, the piano accompanies.
    Collection("schubert", "Franz Schubert: song", style=_S_ROM, **_SONGS),
    Collection("schumann_robert", "Robert Schumann: songs and piano pieces", style=_S_ROM,
               **_SONGS),
    Collection("schumann_clara", "Clara Schumann: songs", style=_S_ROM, **_SONGS),
    Collection("chopin", "Frédéric Chopin: mazurka (Humdrum)", style=_S_ROM),
    Collection("weber", "Carl Maria von Weber", style=_S_ROM),
    Collection("verdi", "Giuseppe Verdi", style=_S_ROM),
    Collection("beach", "Amy Beach: song", style=_S_ROM, **_SONGS),
    Collection("liliuokalani", "Liliʻuokalani: song", style=_S_ROM, **_SONGS),
    Collection("joplin", "Scott Joplin: rag", style=_S_ROM),
    # Early twentieth century.
    Collection("schoenberg", "Arnold Schoenberg: piano pieces", style=_S_MOD),
    Collection("webern", "Anton Webern", style=_S_MOD),
    Collection("johnson_j_r", "J. Rosamond Johnson: song", style=_S_MOD, **_SONGS),
    # Folk tunes (monophonic, ABC), ~13,000 in all (Essen alone ~8,500). Converting all of
    # them was measured at well under 10 minutes on 2 cores, so none is capped. A tune is
    # all lead.
    Collection("essenFolksong", "Essen folksong collection (European folk songs)",
               style=_S_FOLK, rule=RULE_ALL_LEAD),
    Collection("ryansMammoth", "Ryan's Mammoth Collection (1883 fiddle tunes)", style=_S_FOLK,
               rule=RULE_ALL_LEAD),
    Collection("oneills1850", "O'Neill's 1850 Irish melodies", style=_S_FOLK,
               rule=RULE_ALL_LEAD),
    Collection("airdsAirs", "Aird's Airs (Scottish airs, 18th century)", style=_S_FOLK,
               rule=RULE_ALL_LEAD),
    Collection("miscFolk", "miscellaneous folk tunes", style=_S_FOLK, rule=RULE_ALL_LEAD),
)}


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """A named corpus: a style, as a list of collections."""

    name: str
    description: str
    collections: tuple[str, ...]


_RENAISSANCE = ("palestrina", "josquin", "monteverdi", "lusitano", "trecento", "ciconia",
                "luca")
_BAROQUE = ("bach", "handel", "corelli")
_CLASSICAL = ("cpebach", "haydn", "mozart", "beethoven")
_ROMANTIC = ("schubert", "schumann_robert", "schumann_clara", "chopin", "weber", "verdi",
             "beach", "liliuokalani", "joplin")
_FOLK = ("essenFolksong", "ryansMammoth", "oneills1850", "airdsAirs", "miscFolk")
_MODERN = ("schoenberg", "webern", "johnson_j_r")

CORPORA: dict[str, CorpusSpec] = {c.name: c for c in (
    CorpusSpec("bach", "J. S. Bach (chorales, mostly four-part)", ("bach",)),
    CorpusSpec("baroque", "Bach, Handel, Corelli", _BAROQUE),
    CorpusSpec("renaissance", "Palestrina, Josquin, Monteverdi and other vocal polyphony "
               "up to 1600 (with the Italian trecento)", _RENAISSANCE),
    CorpusSpec("classical", "C. P. E. Bach, Haydn, Mozart, Beethoven", _CLASSICAL),
    CorpusSpec("romantic", "Schubert, the Schumanns, Chopin, Weber, Verdi, Beach, "
               "Liliʻuokalani, Joplin", _ROMANTIC),
    CorpusSpec("folk", "Essen folksongs, Ryan's Mammoth, O'Neill's 1850, Aird's Airs "
               "(every tune of each ABC file is one piece)", _FOLK),
    CorpusSpec("all", "every collection above, plus Schoenberg, Webern and J. R. Johnson",
               _RENAISSANCE + _BAROQUE + _CLASSICAL + _ROMANTIC + _FOLK + _MODERN),
)}


def cache_dir() -> Path:
    """The user's melodyd cache: ``$MELODYD_CACHE``, ``$XDG_CACHE_HOME/melodyd`` or ``~/.cache``."""
    if os.environ.get("MELODYD_CACHE"):
        return Path(os.environ["MELODYD_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "melodyd"
    return Path.home() / ".cache" / "melodyd"


def corpus_root() -> Path:
    """Folder of the converted collections (one subfolder each)."""
    return cache_dir() / "corpus"


def get_corpus(name: str) -> CorpusSpec:
    """The corpus called ``name`` (without the ``corpus:`` prefix): a style, ``all``, or one
    collection (``corpus:monteverdi``), so a build can take part of a style.

    Raises:
        DataError: no corpus or collection has that name.
    """
    if name in CORPORA:
        return CORPORA[name]
    if name in COLLECTIONS:
        collection = COLLECTIONS[name]
        return CorpusSpec(name, collection.description, (name,))
    known = ", ".join(f"corpus:{n}" for n in CORPORA)
    raise DataError(f"unknown corpus 'corpus:{name}' (known: {known}, or one collection "
                    f"such as corpus:bach)")


def music21_corpus_dir() -> Path:
    """music21's bundled corpus folder.

    Raises:
        DataError: music21 is not installed.
    """
    try:
        import music21  # noqa: PLC0415 - heavy, optional (the train extra)
    except ImportError as err:
        raise DataError("the bundled corpora need music21: pip install 'melodyd[train]'") from err
    return Path(music21.__file__).parent / "corpus"


def source_files(collection: Collection) -> list[Path]:
    """Score files of a collection, sorted, relative to music21's corpus folder.

    music21 ships some scores twice (``bwv277.krn`` and ``bwv277.mxl``): only the first
    format in ``SCORE_SUFFIXES`` order is kept, so that one piece cannot land in two
    dataset splits.
    """
    base = music21_corpus_dir()
    folder = base / collection.name
    if not folder.is_dir():
        return []
    chosen: dict[Path, Path] = {}
    for path in folder.rglob("*"):
        suffix = path.suffix.lower()
        if not path.is_file() or suffix not in SCORE_SUFFIXES:
            continue
        stem = path.relative_to(base).with_name(path.name[:-len(suffix)])
        held = chosen.get(stem)
        if held is None or SCORE_SUFFIXES.index(suffix) < SCORE_SUFFIXES.index(held.suffix.lower()):
            chosen[stem] = path.relative_to(base)
    return sorted(chosen.values())




def _bundled_unit(collection: Collection, source: Path, out_root: Path) -> Unit:
    """The conversion unit of one score of music21's corpus."""
    path = music21_corpus_dir() / source
    # Not with_suffix(): "bwv112.5.mxl" must become "bwv112.5.mid", not "bwv112.mid".
    return {"source": source.as_posix(), "path": str(path), "kind": "score",
            "out_root": str(out_root), "midi": source.with_name(source.stem).as_posix(),
            "rule": collection.rule, "style": collection.style,
            "tunes_per_file": collection.tunes_per_file,
            "voices_as_tunes": collection.voices_as_tunes, "size": _size(path)}


def _bundled_units(collection: Collection, out_root: Path) -> list[Unit]:
    return [_bundled_unit(collection, src, out_root) for src in source_files(collection)]


def convert_source(source: str, out_root: str, tunes_per_file: int | None,
                   voices_as_tunes: bool = False) -> list[Record]:
    """Convert one score of music21's corpus here (no worker) into role-named MIDI files.

    The collection (the first folder of ``source``) gives the role rule and style; the
    records are those of ``models.data.scores.convert_unit``.
    """
    from models.data.scores import convert_unit  # noqa: PLC0415

    name = Path(source).parts[0]
    collection = dataclasses.replace(
        COLLECTIONS.get(name, Collection(name, "")), tunes_per_file=tunes_per_file,
        voices_as_tunes=voices_as_tunes)
    return convert_unit(_bundled_unit(collection, Path(source), Path(out_root)))


# ----------------------------------------------------------------- the cache
UnitsOf = Callable[[Collection, Path], list[Unit]]


@dataclasses.dataclass(frozen=True)
class Cache:
    """Where and how a family of collections is converted.

    Attributes:
        root: one folder per collection below it, and one lock file per collection.
        units_of: the conversion units of a collection, given ``root``.
        extra: what else the conversion depends on (e.g. the data root); a cached
            collection converted with other values is converted again.
        label: the progress bar's label.
    """

    root: Path
    units_of: UnitsOf
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    label: str = "music21 -> MIDI"


def bundled_cache() -> Cache:
    """The cache of music21's bundled collections (under ``corpus_root()``)."""
    return Cache(corpus_root(), _bundled_units)


def _header(collection: Collection, extra: dict[str, Any]) -> dict[str, Any]:
    """What a converted collection depends on: another value means convert again."""
    header = {"format": INDEX_FORMAT, "converter_version": CONVERTER_VERSION,
              "collection": collection.name, "tunes_per_file": collection.tunes_per_file,
              "voices_as_tunes": collection.voices_as_tunes, "rule": collection.rule,
              "style": collection.style, **extra}
    # Named only when not music21's, so caches converted before the choice existed stay
    # valid for the collections that still use it.
    if collection.score_writer != SCORE_WRITER_MUSIC21:
        header["score_writer"] = collection.score_writer
    return header


def read_index(cache: Cache, collection: Collection) -> dict[str, Any] | None:
    """The finished conversion of a collection, or ``None`` if it is not (validly) done."""
    path = cache.root / collection.name / INDEX_NAME
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        logger.warning("ignoring unreadable corpus index %s: %s", path, err)
        return None
    header = _header(collection, cache.extra)
    if (not isinstance(index, dict) or any(index.get(k) != v for k, v in header.items())
            or not isinstance(index.get("pieces"), list)):
        return None
    return index


def load_index(collection: Collection) -> dict[str, Any] | None:
    """The conversion record of a bundled collection, or ``None`` if not (validly) converted."""
    return read_index(bundled_cache(), collection)


def _resolve_jobs(jobs: int) -> int:
    return jobs if jobs > 0 else (os.cpu_count() or 1)


def convert_collections(names: Sequence[str], jobs: int = 0, *, progress: bool = True,
                        timeout: float = DEFAULT_TIMEOUT) -> dict[str, dict[str, Any]]:
    """Convert the bundled collections not yet in the cache; return every collection's index.

    Args:
        names: collection names (keys of ``COLLECTIONS``).
        jobs: worker processes (0 = one per CPU core).
        progress: show a tqdm bar.
        timeout: seconds allowed per score file (0 = no limit).

    Raises:
        DataError: music21 is missing or the cache folder cannot be written.
    """
    return convert_cached([COLLECTIONS[n] for n in names], bundled_cache(), jobs,
                          progress=progress, timeout=timeout)


def convert_cached(collections: Sequence[Collection], cache: Cache, jobs: int = 0, *,
                   progress: bool = True,
                   timeout: float = DEFAULT_TIMEOUT) -> dict[str, dict[str, Any]]:
    """Convert what is missing of some collections of a cache; return their indexes.

    A collection whose conversion was interrupted resumes: the units in its journal are
    kept (unless their source changed, their files are gone, or they ran out of a
    shorter time limit) and only the others are converted.

    Raises:
        DataError: the cache folder cannot be written.
    """
    indexes, todo = _cached(collections, cache)
    if not todo:
        return indexes
    with contextlib.ExitStack() as locks:
        # Two builds may start together: the second waits for the collections the first
        # is converting, then finds them done. Locks are taken in sorted order (no deadlock)
        # and per collection, so a build of another corpus is not held up.
        for collection in sorted(todo, key=lambda c: c.name):
            try:
                cache.root.mkdir(parents=True, exist_ok=True)
                lock = locks.enter_context(
                    open(cache.root / f"{collection.name}{LOCK_SUFFIX}", "a+"))
            except OSError as err:
                raise DataError(f"cannot write the corpus cache {cache.root}: {err}") from err
            fcntl.flock(lock, fcntl.LOCK_EX)
        done, todo = _cached(todo, cache)
        indexes.update(done)
        if todo:
            indexes.update(_convert(todo, cache, jobs, progress, timeout))
    return indexes


def _cached(collections: Sequence[Collection],
            cache: Cache) -> tuple[dict[str, dict[str, Any]], list[Collection]]:
    """The indexes of the converted collections, and the collections still to convert."""
    indexes: dict[str, dict[str, Any]] = {}
    todo: list[Collection] = []
    for collection in collections:
        index = read_index(cache, collection)
        if index is None:
            todo.append(collection)
        else:
            indexes[collection.name] = index
    return indexes, todo


def _convert(todo: list[Collection], cache: Cache, jobs: int, progress: bool,
             timeout: float) -> dict[str, dict[str, Any]]:
    """Convert collections in worker processes, journaling each unit, and index them."""
    indexes: dict[str, dict[str, Any]] = {}
    by_name = {c.name: c for c in todo}
    journals: dict[str, Journal] = {}
    records: dict[str, list[Record]] = {c.name: [] for c in todo}
    units: list[tuple[str, Unit]] = []
    resumed = 0
    for collection in todo:
        folder = cache.root / collection.name
        journal = Journal(folder, _header(collection, cache.extra))
        entries = journal.load()
        if entries is None:
            # An older or foreign conversion: its files must not linger.
            shutil.rmtree(folder, ignore_errors=True)
            try:
                journal.start()
            except OSError as err:
                raise DataError(f"cannot write the corpus cache {folder}: {err}") from err
            entries = {}
        journals[collection.name] = journal
        for unit in cache.units_of(collection, cache.root):
            entry = entries.get(unit["source"])
            if entry is not None and still_valid(entry, stamp(Path(unit["path"])),
                                                 cache.root, timeout):
                records[collection.name].extend(entry["records"])
                resumed += 1
            else:
                units.append((collection.name, unit))
    # Largest files first, so that a long quartet or a 300-tune ABC file does not start
    # last and leave every other worker idle.
    units.sort(key=lambda item: -item[1].get("size", 0))
    remaining = {c.name: 0 for c in todo}
    for name, _ in units:
        remaining[name] += 1
    started = time.monotonic()
    for collection in todo:
        if remaining[collection.name] == 0:  # nothing (more) to convert
            indexes[collection.name] = _write_index(cache, collection, records[collection.name],
                                                    0.0)
    if not units:
        return indexes
    logger.info("converting %d files of %s in %s (%d already done)", len(units),
                ", ".join(c.name for c in todo), cache.root, resumed)
    owner = {id(unit): name for name, unit in units}

    def done(unit: Unit, result: list[Record]) -> None:
        name = owner[id(unit)]
        journals[name].append(unit["source"], stamp(Path(unit["path"])), result)
        records[name].extend(result)
        remaining[name] -= 1
        if remaining[name] == 0:
            indexes[name] = _write_index(cache, by_name[name], records[name],
                                         time.monotonic() - started)

    run_units([unit for _, unit in units], done, jobs=_resolve_jobs(jobs), timeout=timeout,
              progress=progress, desc=cache.label)
    return indexes


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # the worker reports the missing file as a failed conversion


def _write_index(cache: Cache, collection: Collection, records: list[Record],
                 elapsed: float) -> dict[str, Any]:
    pieces = sorted(records, key=lambda r: r["source"])
    index = {
        **_header(collection, cache.extra),
        "licence": collection.licence,
        "music21_version": _music21_version(),
        "pieces": pieces,
        "converted": sum(1 for r in pieces if r["midi"]),
        "failed": sum(1 for r in pieces if not r["midi"]),
        "notes": sum(r["notes"] for r in pieces),
        "cpu_seconds": round(sum(r.get("seconds", 0.0) for r in pieces), 1),
        "wall_seconds_since_batch_start": round(elapsed, 1),
    }
    path = cache.root / collection.name / INDEX_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(index, indent=1) + "\n")
    partial.replace(path)  # readers never see half an index
    if index["failed"]:
        logger.info("%s: %d pieces could not be converted (see %s)", collection.name,
                    index["failed"], path)
    return index


def _music21_version() -> str:
    try:
        import music21  # noqa: PLC0415
    except ImportError:
        return ""  # MIDI-only collections convert without music21
    return str(music21.__version__)


def corpus_midi_files(name: str, jobs: int = 0, *,
                      progress: bool = True) -> tuple[Path, list[Path]]:
    """The cached MIDI files of a corpus, converting what is missing first.

    Returns:
        The cache root (file names in manifests are relative to it) and the sorted files.

    Raises:
        DataError: unknown corpus, music21 missing, or nothing converted.
    """
    spec = get_corpus(name)
    indexes = convert_collections(spec.collections, jobs, progress=progress)
    root = corpus_root()
    files = sorted({root / r["midi"] for index in indexes.values()
                    for r in index["pieces"] if r["midi"]})
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{len(missing)} cached MIDI files of corpus:{name} are gone "
                        f"(e.g. {missing[0]}); delete {root} and convert again")
    if not files:
        raise DataError(f"corpus:{name} has no convertible scores in this music21")
    return root, files


def corpus_failures(name: str) -> list[tuple[str, str]]:
    """``(score, error)`` of each score of a converted corpus that has no MIDI file.

    Raises:
        DataError: unknown corpus.
    """
    failures = []
    for collection in get_corpus(name).collections:
        index = load_index(COLLECTIONS[collection])
        for record in (index or {}).get("pieces", []):
            if not record.get("midi"):
                failures.append((str(record["source"]),
                                 str(record.get("error") or "no MIDI written")))
    return sorted(failures)


def corpus_summary(names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Pieces and notes of each corpus, from the cache (``None`` counts when not converted)."""
    rows = []
    for spec in (CORPORA[n] for n in (names or CORPORA)):
        indexes = [load_index(COLLECTIONS[c]) for c in spec.collections]
        converted = all(i is not None for i in indexes)
        rows.append({
            "name": f"corpus:{spec.name}",
            "description": spec.description,
            "collections": list(spec.collections),
            "converted": converted,
            "converted_collections": sum(i is not None for i in indexes),
            "pieces": sum(i["converted"] for i in indexes) if converted else None,
            "failed": sum(i["failed"] for i in indexes) if converted else None,
            "notes": sum(i["notes"] for i in indexes) if converted else None,
        })
    return rows
