"""Bundled corpora: public-domain scores shipped inside the music21 package, as MIDI.

music21 (the ``train`` extra) carries a few thousand scores in MusicXML, Humdrum and ABC.
Each named corpus below is a documented list of its collections (one folder of
``music21/corpus`` each). A collection is converted to MIDI once, in worker processes,
and cached under the user's cache directory (``$MELODYD_CACHE``, else
``$XDG_CACHE_HOME/melodyd``, else ``~/.cache/melodyd``); ``melody data build --source
corpus:NAME`` then reads the cached MIDI files like any folder.

One ABC file can hold hundreds of tunes (an "opus"): each tune becomes its own MIDI file,
so that the dataset splits folk music by tune. A score music21 cannot turn into MIDI is
recorded in the collection's ``index.json`` with the error and skipped.

Torch-free; music21 is imported only when something must be converted.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from models.exceptions import DataError

logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"
LOCK_SUFFIX = ".lock"
INDEX_FORMAT = "melodyd-corpus-index"
# Bump when the conversion changes, so old caches are converted again.
CONVERTER_VERSION = 2
# Score formats music21 reads; .rntxt (roman-numeral analyses) and Finale files are not music.
SCORE_SUFFIXES = (".mxl", ".xml", ".musicxml", ".krn", ".abc")


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
    """

    name: str
    description: str
    tunes_per_file: int | None = None
    voices_as_tunes: bool = False


COLLECTIONS: dict[str, Collection] = {c.name: c for c in (
    # Renaissance and earlier vocal polyphony.
    Collection("palestrina", "Giovanni Pierluigi da Palestrina: mass movements (Humdrum)"),
    Collection("josquin", "Josquin des Prez: chansons and motets (ABC, one voice per tune)",
               voices_as_tunes=True),
    Collection("monteverdi", "Claudio Monteverdi: madrigals, books 3-5"),
    Collection("lusitano", "Vicente Lusitano: motet"),
    Collection("trecento", "Italian trecento songs (14th century)"),
    Collection("ciconia", "Johannes Ciconia"),
    Collection("luca", "Luca Marenzio"),
    # Baroque.
    Collection("bach", "Johann Sebastian Bach: chorales and other works"),
    Collection("handel", "George Frideric Handel"),
    Collection("corelli", "Arcangelo Corelli: trio sonata"),
    # Classical.
    Collection("cpebach", "Carl Philipp Emanuel Bach"),
    Collection("haydn", "Joseph Haydn: string quartets"),
    Collection("mozart", "Wolfgang Amadeus Mozart: string quartets and others"),
    Collection("beethoven", "Ludwig van Beethoven: string quartets and piano works"),
    # Romantic.
    Collection("schubert", "Franz Schubert: song"),
    Collection("schumann_robert", "Robert Schumann: songs and piano pieces"),
    Collection("schumann_clara", "Clara Schumann: songs"),
    Collection("chopin", "Frédéric Chopin: mazurka (Humdrum)"),
    Collection("weber", "Carl Maria von Weber"),
    Collection("verdi", "Giuseppe Verdi"),
    Collection("beach", "Amy Beach: song"),
    Collection("liliuokalani", "Liliʻuokalani: song"),
    Collection("joplin", "Scott Joplin: rag"),
    # Early twentieth century.
    Collection("schoenberg", "Arnold Schoenberg: piano pieces"),
    Collection("webern", "Anton Webern"),
    Collection("johnson_j_r", "J. Rosamond Johnson: song"),
    # Folk tunes (monophonic, ABC), ~13,000 in all (Essen alone ~8,500). Converting all of
    # them was measured at well under 10 minutes on 2 cores, so none is capped.
    Collection("essenFolksong", "Essen folksong collection (European folk songs)"),
    Collection("ryansMammoth", "Ryan's Mammoth Collection (1883 fiddle tunes)"),
    Collection("oneills1850", "O'Neill's 1850 Irish melodies"),
    Collection("airdsAirs", "Aird's Airs (Scottish airs, 18th century)"),
    Collection("miscFolk", "miscellaneous folk tunes"),
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
    """The corpus called ``name`` (without the ``corpus:`` prefix).

    Raises:
        DataError: no corpus has that name.
    """
    if name not in CORPORA:
        known = ", ".join(f"corpus:{n}" for n in CORPORA)
        raise DataError(f"unknown corpus 'corpus:{name}' (known: {known})")
    return CORPORA[name]


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


# ----------------------------------------------------------------- conversion (workers)
def _count_notes(path: Path) -> int:
    import symusic  # noqa: PLC0415 - keep worker start light

    score = symusic.Score(str(path))
    return sum(len(track.notes) for track in score.tracks if not track.is_drum)


def _unshare_time_signatures(score: Any) -> None:
    """Give each measure its own TimeSignature object.

    music21's ABC reader puts one TimeSignature object into several measures when a tune
    alternates meters, and its MIDI writer then fails ("already found in this Stream").
    """
    from music21 import meter, stream  # noqa: PLC0415

    seen: set[int] = set()
    for measure in list(score.recurse().getElementsByClass(stream.Measure)):
        for signature in list(measure.getElementsByClass(meter.TimeSignature)):
            if id(signature) in seen:
                measure.replace(signature, copy.deepcopy(signature))
            else:
                seen.add(id(signature))


def _strip_repeats(score: Any) -> None:
    """Drop repeat barlines and signs, so a score with malformed repeats plays straight."""
    from music21 import bar, repeat, stream  # noqa: PLC0415

    for measure in list(score.recurse().getElementsByClass(stream.Measure)):
        for side in ("leftBarline", "rightBarline"):
            if isinstance(getattr(measure, side), bar.Repeat):
                setattr(measure, side, None)
        for mark in list(measure.getElementsByClass(repeat.RepeatExpression)):
            measure.remove(mark)


def _write_midi(score: Any, target: Path) -> int:
    """Write one music21 score as MIDI (atomically) and return its note count."""
    from music21 import repeat  # noqa: PLC0415

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    _unshare_time_signatures(score)
    try:
        score.write("midi", fp=str(partial))
    except repeat.ExpanderException:
        logger.debug("%s: malformed repeats, written without them", target)
        _strip_repeats(score)
        score.write("midi", fp=str(partial))
    partial.replace(target)
    return _count_notes(target)


def _join_voices(opus: Any) -> Any:
    """One score holding the parts of every score of an opus, all starting together."""
    from music21 import stream  # noqa: PLC0415

    joined = stream.Score()
    for score in opus.scores:
        for part in score.parts:
            joined.insert(0, part)
    return joined


def convert_source(source: str, out_root: str, tunes_per_file: int | None,
                   voices_as_tunes: bool = False) -> list[dict[str, Any]]:
    """Convert one score file (every tune of an ABC opus) into MIDI files.

    Runs in a worker process and returns plain records (JSON-ready), one per piece:
    ``{"source", "midi" (relative to out_root, or None), "notes", "error"}``.
    """
    from music21 import converter, stream  # noqa: PLC0415 - heavy, only in workers

    started = time.process_time()
    src = music21_corpus_dir() / source
    # Not with_suffix(): "bwv112.5.mxl" must become "bwv112.5.mid", not "bwv112.mid".
    rel = Path(source).with_name(Path(source).stem)
    records: list[dict[str, Any]] = []
    try:
        parsed = converter.parse(str(src))
    except Exception as err:  # music21 raises many types; a bad score is data
        return [{"source": source, "midi": None, "notes": 0,
                 "error": f"parse: {type(err).__name__}: {err}"[:300]}]
    if isinstance(parsed, stream.Opus) and voices_as_tunes:
        parsed = _join_voices(parsed)
    if isinstance(parsed, stream.Opus):
        scores = list(parsed.scores)
        if tunes_per_file is not None:
            scores = scores[:tunes_per_file]
        items = []
        for index, score in enumerate(scores, start=1):
            number = getattr(score.metadata, "number", None) if score.metadata else None
            items.append((f"{source}#{number or index}", score,
                          rel.parent / f"{rel.name}-{index:04d}.mid"))
    else:
        items = [(source, parsed, rel.with_name(rel.name + ".mid"))]
    for name, score, midi in items:
        try:
            notes = _write_midi(score, Path(out_root) / midi)
            records.append({"source": name, "midi": midi.as_posix(), "notes": notes,
                            "error": None})
        except Exception as err:  # same: record it and go on
            records.append({"source": name, "midi": None, "notes": 0,
                            "error": f"midi: {type(err).__name__}: {err}"[:300]})
    # CPU time, not wall time: what conversion costs on an idle machine, for the docs.
    records[0]["cpu_seconds"] = round(time.process_time() - started, 3)
    return records


# ----------------------------------------------------------------- the cache
def _index_path(collection: Collection) -> Path:
    return corpus_root() / collection.name / INDEX_NAME


def load_index(collection: Collection) -> dict[str, Any] | None:
    """The conversion record of a collection, or ``None`` if it is not (validly) converted."""
    path = _index_path(collection)
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as err:
        logger.warning("ignoring unreadable corpus index %s: %s", path, err)
        return None
    if (not isinstance(index, dict) or index.get("format") != INDEX_FORMAT
            or index.get("converter_version") != CONVERTER_VERSION
            or index.get("tunes_per_file") != collection.tunes_per_file
            or index.get("voices_as_tunes", False) != collection.voices_as_tunes
            or not isinstance(index.get("pieces"), list)):
        return None
    return index


def _resolve_jobs(jobs: int) -> int:
    return jobs if jobs > 0 else (os.cpu_count() or 1)


def convert_collections(names: Sequence[str], jobs: int = 0, *,
                        progress: bool = True) -> dict[str, dict[str, Any]]:
    """Convert the collections not yet in the cache; return every collection's index.

    Args:
        names: collection names (keys of ``COLLECTIONS``).
        jobs: worker processes (0 = one per CPU core).
        progress: show a tqdm bar.

    Raises:
        DataError: music21 is missing or the cache folder cannot be written.
    """
    indexes, todo = _cached(names)
    if not todo:
        return indexes
    out_root = corpus_root()
    with contextlib.ExitStack() as locks:
        # Two builds may start together: the second waits for the collections the first
        # is converting, then finds them done. Locks are taken in sorted order (no deadlock)
        # and per collection, so a build of another corpus is not held up.
        for collection in sorted(todo, key=lambda c: c.name):
            try:
                out_root.mkdir(parents=True, exist_ok=True)
                lock = locks.enter_context(open(out_root / f"{collection.name}{LOCK_SUFFIX}", "a+"))
            except OSError as err:
                raise DataError(f"cannot write the corpus cache {out_root}: {err}") from err
            fcntl.flock(lock, fcntl.LOCK_EX)
        done, todo = _cached([c.name for c in todo])
        indexes.update(done)
        if todo:
            indexes.update(_convert(todo, out_root, jobs, progress))
    return indexes


def _cached(names: Sequence[str]) -> tuple[dict[str, dict[str, Any]], list[Collection]]:
    """The indexes of the converted collections, and the collections still to convert."""
    indexes: dict[str, dict[str, Any]] = {}
    todo: list[Collection] = []
    for name in names:
        index = load_index(COLLECTIONS[name])
        if index is None:
            todo.append(COLLECTIONS[name])
        else:
            indexes[name] = index
    return indexes, todo


def _convert(todo: list[Collection], out_root: Path, jobs: int,
             progress: bool) -> dict[str, dict[str, Any]]:
    """Convert collections in a process pool and write their indexes."""
    from tqdm import tqdm  # noqa: PLC0415 - CLI-only dependency at import time

    indexes: dict[str, dict[str, Any]] = {}
    for collection in todo:
        # Start clean: files of an older or interrupted conversion must not linger.
        shutil.rmtree(out_root / collection.name, ignore_errors=True)
    units = [(c, str(src)) for c in todo for src in source_files(c)]
    # Largest files first, so that a long quartet or a 300-tune ABC file does not start
    # last and leave every other worker idle.
    base = music21_corpus_dir()
    units.sort(key=lambda unit: -_size(base / unit[1]))
    remaining = {c.name: 0 for c in todo}
    for collection, _ in units:
        remaining[collection.name] += 1
    started = time.monotonic()
    records: dict[str, list[dict[str, Any]]] = {c.name: [] for c in todo}
    logger.info("converting %d score files of %s to MIDI in %s", len(units),
                ", ".join(c.name for c in todo), out_root)
    for collection in todo:
        if remaining[collection.name] == 0:  # nothing of it in this music21
            indexes[collection.name] = _write_index(collection, [], 0.0)
    with ProcessPoolExecutor(max_workers=_resolve_jobs(jobs)) as pool, \
            tqdm(total=len(units), unit="file", desc="music21 -> MIDI",
                 disable=not progress) as bar:
        futures = {pool.submit(convert_source, src, str(out_root), c.tunes_per_file,
                               c.voices_as_tunes): c for c, src in units}
        for future in as_completed(futures):
            collection = futures[future]
            records[collection.name].extend(future.result())
            bar.update()
            remaining[collection.name] -= 1
            if remaining[collection.name] == 0:
                # Index each collection as soon as it is complete: an interrupted run
                # keeps what it finished.
                indexes[collection.name] = _write_index(
                    collection, records[collection.name], time.monotonic() - started)
    return indexes


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # the worker reports the missing file as a failed conversion


def _write_index(collection: Collection, records: list[dict[str, Any]],
                 elapsed: float) -> dict[str, Any]:
    pieces = sorted(records, key=lambda r: r["source"])
    index = {
        "format": INDEX_FORMAT,
        "converter_version": CONVERTER_VERSION,
        "collection": collection.name,
        "tunes_per_file": collection.tunes_per_file,
        "voices_as_tunes": collection.voices_as_tunes,
        "music21_version": _music21_version(),
        "pieces": pieces,
        "converted": sum(1 for r in pieces if r["midi"]),
        "failed": sum(1 for r in pieces if not r["midi"]),
        "notes": sum(r["notes"] for r in pieces),
        "cpu_seconds": round(sum(r.get("cpu_seconds", 0.0) for r in pieces), 1),
        "wall_seconds_since_batch_start": round(elapsed, 1),
    }
    path = _index_path(collection)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(index, indent=1) + "\n")
    partial.replace(path)  # readers never see half an index
    if index["failed"]:
        logger.info("%s: %d pieces could not be converted (see %s)", collection.name,
                    index["failed"], path)
    return index


def _music21_version() -> str:
    import music21  # noqa: PLC0415

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
