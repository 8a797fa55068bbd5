"""Where a dataset's pieces come from: a folder, a bundled corpus or a named corpus.

``resolve_source`` turns ``melody data build --source`` into the MIDI files to tokenize,
each with its piece name, its style and licence when known, and the entries that are not
read, each with a reason:

- a folder: every MIDI file under it, and every score file (MusicXML, kern, ABC),
  converted once by music21 into the user's cache (``<cache>/folders/``);
- ``corpus:NAME``: a style of music21's bundled scores (``models.data.corpus``);
- a named corpus of the data root (``lieder``, ``pop909``, ... see ``models.data.data_root``);
- ``all-corpora``: every named corpus found under the data root, plus ``corpus:all``.

A name of a named corpus is read as that corpus; write ``./lieder`` for a folder so named.

``resolve_sources`` reads several sources into one (``--source lieder,pop909,corpus:all``,
or ``--source`` repeated). Each piece keeps the style, roles and licence of its source,
and its name is prefixed by its source's label (``lieder:lieder/Brahms,...``,
``corpus:all:bach/bwv1.6``, ``songs:tune01.mid`` for a folder named ``songs``), since two
sources can hold pieces of the same name (the bundled ``chopin`` collection and the named
``chopin`` corpus both write ``chopin/...``). The split still draws each piece by its name
within its source (``Source.split_keys``), so a piece held out of a one-source dataset is
held out of the combined one too. A file reached through two sources (``corpus:romantic``
and ``corpus:all``) is read once, under the first.

Torch-free; music21 is imported only where scores must be converted.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.core.exceptions import DataError, EmptySourceError
from models.data.midifile import MIDI_SUFFIXES
from models.data.scores import SCORE_SUFFIXES, is_score_name

logger = logging.getLogger(__name__)

READ_SUFFIXES = MIDI_SUFFIXES + SCORE_SUFFIXES

CORPUS_PREFIX = "corpus:"
# Every named corpus under the data root plus every bundled collection. Not "all": that
# would read like ``corpus:all``, which is the bundled collections alone.
ALL_CORPORA = "all-corpora"
BUNDLED_ALL = "corpus:all"
# Between a source's label and a piece's name in a build from several sources.
LABEL_SEPARATOR = ":"

# Reasons a file is skipped (the keys of the manifest's skip table).
SKIP_NOT_MIDI = "not MIDI"
SKIP_PARSE = "fails to parse"
SKIP_EMPTY = "empty"
SKIP_TOO_LARGE = "too large"
SKIP_POLYPHONIC = "polyphonic"
SKIP_TOO_MANY_TOKENS = "too many tokens"
SKIP_EMPTY_BARS = "empty bars"
# Reasons found while walking the folder, before any file is opened.
SKIP_NOT_MIDI_NAME = "not a MIDI name"
SKIP_BROKEN_LINK = "broken link"
SKIP_LINK_LOOP = "link loop"
SKIP_DUPLICATE = "duplicate"
SKIP_NOT_REGULAR = "not a regular file"
SKIP_UNREADABLE = "unreadable"
# A score music21 could not turn into MIDI (or not within [data] convert_timeout).
SKIP_NOT_CONVERTED = "not converted"


@dataclasses.dataclass(frozen=True)
class PieceResult:
    """What a worker made of one file: tokens, or the reason it was skipped."""

    name: str
    tokens: np.ndarray | None  # uint16 ids, BOS ... EOS
    notes: int = 0
    reason: str | None = None
    detail: str = ""
    roles: tuple[str, ...] = ()  # the role of each track with notes (models.data.roles)


# ----------------------------------------------------------------- sources
_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
_Key = tuple[int, int]  # (device, inode): one file or folder, whatever the path to it


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), f"file mode {oct(mode)}")


def printable_name(name: str) -> str:
    """A file name as text a manifest can hold.

    Python keeps the bytes of a name that are not UTF-8 (a Latin-1 name on a UTF-8 system)
    as surrogate escapes, which JSON cannot encode: such bytes are shown as ``\\xNN``, so
    the file is still read and named in the report instead of failing the whole build.
    """
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def scan_folder(root: Path) -> tuple[list[Path], list[PieceResult]]:
    """Every entry under ``root``: the MIDI and score files to read, and the others.

    Links are followed, after every real folder has been walked, so that a file or folder
    reached both directly and through a link is read under its own name. A link back into
    the folders above it is a loop; a second way to a file or folder already met is a
    duplicate (reading it twice could put one piece in two splits). FIFOs and devices are
    never opened: reading a FIFO blocks until someone writes to it. The files come back
    sorted by their names relative to ``root``.
    """
    skipped: list[PieceResult] = []
    candidates: dict[_Key, list[tuple[bool, str, Path]]] = {}
    seen_dirs: dict[_Key, str] = {}
    # Folder links wait until every real folder is known: (path, name, ancestors).
    pending: list[tuple[Path, str, tuple[_Key, ...]]] = []

    def skip(rel: str, reason: str, detail: str) -> None:
        skipped.append(PieceResult(rel, None, reason=reason, detail=detail))

    def enter(path: Path, rel: str, key: _Key, ancestors: tuple[_Key, ...], linked: bool) -> None:
        if key in ancestors:
            skip(rel, SKIP_LINK_LOOP, f"links back to {seen_dirs[key] or 'the source folder'}")
        elif key in seen_dirs:
            skip(rel, SKIP_DUPLICATE, f"the same folder as {seen_dirs[key]}")
        else:
            seen_dirs[key] = rel
            walk(path, rel, (*ancestors, key), linked)

    def walk(folder: Path, rel_folder: str, ancestors: tuple[_Key, ...], linked: bool) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            skip(rel_folder or ".", SKIP_UNREADABLE, f"cannot list the folder: {err.strerror}")
            return
        for entry in entries:
            name = printable_name(entry.name)
            rel = f"{rel_folder}/{name}" if rel_folder else name
            is_link = entry.is_symlink()
            try:
                info = os.stat(entry.path)  # follows links
            except OSError as err:
                if is_link and err.errno == errno.ENOENT:
                    skip(rel, SKIP_BROKEN_LINK,
                         f"links to {os.readlink(entry.path)!r}, which does not exist")
                elif err.errno == errno.ELOOP:
                    skip(rel, SKIP_LINK_LOOP, f"links in a circle ({err.strerror})")
                else:
                    skip(rel, SKIP_UNREADABLE, f"{err.strerror or err}")
                continue
            key = (info.st_dev, info.st_ino)
            if stat.S_ISDIR(info.st_mode):
                if is_link:
                    pending.append((Path(entry.path), rel, ancestors))
                else:
                    enter(Path(entry.path), rel, key, ancestors, linked)
            elif not stat.S_ISREG(info.st_mode):
                skip(rel, SKIP_NOT_REGULAR, f"{_kind(info.st_mode)}, not a file")
            elif Path(entry.name).suffix.lower() not in READ_SUFFIXES:
                suffix = Path(entry.name).suffix
                skip(rel, SKIP_NOT_MIDI_NAME, (f"suffix {suffix!r}" if suffix else "no suffix")
                     + f" (read: {', '.join(READ_SUFFIXES)}, in any case)")
            else:
                candidates.setdefault(key, []).append((linked or is_link, rel, Path(entry.path)))

    try:
        top = root.stat()
    except OSError as err:
        raise DataError(f"cannot read the source folder {root}: {err}") from err
    root_key = (top.st_dev, top.st_ino)
    seen_dirs[root_key] = ""
    walk(root, "", (root_key,), False)
    while pending:
        path, rel, ancestors = pending.pop(0)
        try:
            info = path.stat()
        except OSError as err:  # removed or changed since it was listed
            skip(rel, SKIP_UNREADABLE, f"{err.strerror or err}")
            continue
        enter(path, rel, (info.st_dev, info.st_ino), ancestors, True)
    files: dict[str, Path] = {}
    for names in candidates.values():
        # The file's own name (not a link's) is read; every other way to it is reported.
        _, kept, path = min(names)
        files[kept] = path
        for _, rel, _ in names:
            if rel != kept:
                skip(rel, SKIP_DUPLICATE, f"the same file as {kept}")
    return [files[rel] for rel in sorted(files)], skipped


@dataclasses.dataclass
class Source:
    """The files of a dataset source, ready to tokenize.

    Attributes:
        root: the folder the MIDI files lie under.
        items: ``(MIDI file, piece name)`` of each piece, sorted by name.
        unread: the entries not read, each with a reason (see ``scan_folder``), and the
            scores that could not be converted.
        meta: per piece name, what is known of it: ``style``, ``licence``, ``corpus``
            and (from ``resolve_sources``) ``source``, the label of its source.
        split_keys: per piece name, the name its split is drawn by when that differs
            (the name within its source, without the source's label).
        sources: one entry per source read: ``label``, ``spec`` (what ``--source``
            said), ``root``.
    """

    root: Path
    items: list[tuple[Path, str]]
    unread: list[PieceResult]
    meta: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    split_keys: dict[str, str] = dataclasses.field(default_factory=dict)
    sources: list[dict[str, str]] = dataclasses.field(default_factory=list)


# ----------------------------------------------------------------- several sources
def _is_folder(text: str) -> bool:
    """True if ``text`` names an existing folder; a long comma list is no path at all (the
    system refuses it with "file name too long")."""
    try:
        return Path(text).expanduser().is_dir()
    except OSError:
        return False


def split_source_list(values: str | Sequence[str]) -> list[str]:
    """``--source`` values as a list of sources: comma lists split, blanks dropped, each
    source once (first place kept).

    A value naming an existing folder is taken whole, so a folder with a comma in its
    name still works.
    """
    texts = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for text in texts:
        parts = [text] if _is_folder(text) else text.split(",")
        for part in (p.strip() for p in parts):
            if part and part not in out:
                out.append(part)
    return out


def available_named(data_root: str | Path | None) -> list[str]:
    """The named corpora whose folder is under ``data_root`` (none when it is unset)."""
    from models.data.data_root import NAMED_CORPORA  # noqa: PLC0415 - avoids an import cycle

    if not data_root or not str(data_root).strip():
        return []
    root = Path(data_root).expanduser()
    return [name for name, corpus in NAMED_CORPORA.items() if (root / corpus.folder).is_dir()]


def expand_sources(specs: Sequence[str], data_root: str | Path | None,
                   exclude: Sequence[str] = ()) -> list[str]:
    """The sources to read: ``all-corpora`` replaced by what it stands for, minus ``exclude``.

    ``all-corpora`` is every named corpus found under the data root (in the order of
    ``models.data.data_root.NAMED_CORPORA``), then ``corpus:all``.

    Raises:
        DataError: no source is left, or an excluded name is no source at all (a typo
            would otherwise silently keep the corpus in).
    """
    from models.data.corpus import CORPORA  # noqa: PLC0415
    from models.data.data_root import NAMED_CORPORA  # noqa: PLC0415

    expanded: list[str] = []
    for spec in specs:
        more = ([*available_named(data_root), BUNDLED_ALL] if spec == ALL_CORPORA else [spec])
        expanded += [s for s in more if s not in expanded]
    known = {*NAMED_CORPORA, *(CORPUS_PREFIX + name for name in CORPORA)}
    excluded = split_source_list(exclude)
    for name in excluded:
        if name not in expanded and name not in known:
            raise DataError(f"--exclude {name!r} is not one of the sources "
                            f"({', '.join(expanded)}) nor a corpus name")
    left = [s for s in expanded if s not in excluded]
    if not left:
        raise DataError(f"no source left to read (sources {', '.join(specs) or 'none'}, "
                        f"excluded {', '.join(excluded) or 'none'})")
    return left


def _label(spec: str, taken: set[str]) -> str:
    """A short unique label of a source: a corpus's own name, or a folder's base name."""
    from models.data.data_root import NAMED_CORPORA  # noqa: PLC0415

    if spec.startswith(CORPUS_PREFIX) or spec in NAMED_CORPORA:
        base = spec
    else:
        base = Path(spec).expanduser().resolve().name or "folder"
    label, number = base, 2
    while label in taken:  # two folders called "midi": midi, midi-2
        label, number = f"{base}-{number}", number + 1
    taken.add(label)
    return label


def resolve_sources(specs: str | Sequence[str], jobs: int = 0, *, progress: bool = True,
                    data_root: str | Path | None = None, timeout: float = 600.0,
                    exclude: Sequence[str] = (),
                    resolve: Callable[..., Source] | None = None) -> Source:
    """The pieces of one or several sources, as one ``Source``.

    ``specs`` is what ``--source`` said (a comma list, a list, ``all-corpora``). One
    source is read as ``resolve_source`` reads it, names unchanged; several get their
    names prefixed by their source's label (see the module docstring). Every piece's
    ``meta`` names its source's label. ``resolve`` reads one source (default
    ``resolve_source``; tests give fixtures).

    Raises:
        DataError: as ``resolve_source`` for any source, and as ``expand_sources``.
    """
    resolve = resolve or resolve_source
    listed = expand_sources(split_source_list(specs), data_root, exclude)
    taken: set[str] = set()
    labelled = [(spec, _label(spec, taken)) for spec in listed]
    blank = {"style": None, "licence": None, "corpus": None}
    if len(labelled) == 1:
        spec, label = labelled[0]
        found = resolve(spec, jobs, progress=progress, data_root=data_root, timeout=timeout)
        found.meta = {name: {**blank, **found.meta.get(name, {}), "source": label}
                      for _, name in found.items}
        found.sources = [{"label": label, "spec": spec, "root": str(found.root)}]
        return found
    items: list[tuple[Path, str]] = []
    unread: list[PieceResult] = []
    meta: dict[str, dict[str, Any]] = {}
    keys: dict[str, str] = {}
    sources: list[dict[str, str]] = []
    first_name: dict[Path, str] = {}
    for spec, label in labelled:
        try:
            found = resolve(spec, jobs, progress=progress, data_root=data_root,
                            timeout=timeout)
        except EmptySourceError as err:
            # One source of several that converted nothing (every score timed out, say)
            # is reported and left out; the others still make the dataset.
            logger.warning("%s is left out: %s", label, err)
            unread.append(PieceResult(label, None, reason=SKIP_NOT_CONVERTED, detail=str(err)))
            continue
        sources.append({"label": label, "spec": spec, "root": str(found.root)})
        prefix = f"{label}{LABEL_SEPARATOR}"
        for path, name in found.items:
            full = prefix + name
            real = path.resolve()
            if real in first_name:
                unread.append(PieceResult(full, None, reason=SKIP_DUPLICATE,
                                          detail=f"the same file as {first_name[real]}"))
                continue
            first_name[real] = full
            items.append((path, full))
            meta[full] = {**blank, **found.meta.get(name, {}), "source": label}
            keys[full] = name
        unread += [dataclasses.replace(r, name=prefix + r.name) for r in found.unread]
    if not sources:
        raise DataError(f"none of the sources has convertible scores ({', '.join(listed)})")
    root = Path(os.path.commonpath([s["root"] for s in sources]))
    return Source(root, sorted(items, key=lambda item: item[1]), unread, meta, keys, sources)


def resolve_source(source: str, jobs: int = 0, *, progress: bool = True,
                   data_root: str | Path | None = None, timeout: float = 600.0) -> Source:
    """The pieces of a folder, a ``corpus:NAME`` or a named corpus of the data root.

    Args:
        source: what ``--source`` says.
        jobs: worker processes for conversions (0 = one per core).
        progress: show tqdm bars.
        data_root: the folder of the named corpora (``[data] data_root``).
        timeout: seconds allowed to convert one score file (0 = no limit).

    Raises:
        DataError: the folder does not exist or holds no MIDI or score file, the corpus
            is unknown, or a named corpus's data root is not set or lacks the corpus.
    """
    from models.data.data_root import NAMED_CORPORA  # noqa: PLC0415 - avoids an import cycle

    if source.startswith(CORPUS_PREFIX):
        return _bundled(source[len(CORPUS_PREFIX):], jobs, progress, timeout)
    if source in NAMED_CORPORA:
        return _named(source, data_root, jobs, progress, timeout)
    root = Path(source).expanduser()
    if not root.is_dir():
        raise DataError(f"source folder not found: {root} (give a folder of MIDI or score "
                        f"files, corpus:NAME or a named corpus, see `melody data corpora`)")
    files, skipped = scan_folder(root)
    if not files:
        others = f" (only {len(skipped)} other entries)" if skipped else ""
        raise DataError(f"no {', '.join(READ_SUFFIXES)} files under {root}{others}")
    items = [(f, printable_name(f.relative_to(root).as_posix())) for f in files
             if not is_score_name(f)]
    scores = [f for f in files if is_score_name(f)]
    if scores:
        converted, failed = _folder_scores(root, scores, jobs, progress, timeout)
        items += converted
        skipped += failed
    return Source(root, sorted(items, key=lambda item: item[1]), skipped)


def _from_indexes(indexes: list[dict[str, Any]], root: Path, corpus: str | None,
                  source: str) -> Source:
    """A source from converted collections: their MIDI files, failures and metadata."""
    items, unread, meta = [], [], {}
    for index in indexes:
        for record in index["pieces"]:
            if not record.get("midi"):
                unread.append(PieceResult(str(record["source"]), None,
                                          reason=SKIP_NOT_CONVERTED,
                                          detail=str(record.get("error") or "no MIDI written")))
                continue
            path = root / record["midi"]
            if not path.is_file():
                raise DataError(f"the cached MIDI file {path} of {source} is gone; delete "
                                f"{root / index['collection']} and convert again")
            name = record["midi"]
            items.append((path, name))
            meta[name] = {"style": record.get("style") or index.get("style") or None,
                          "licence": index.get("licence"),
                          "corpus": corpus or index.get("collection")}
    if not items:
        raise EmptySourceError(f"{source} has no convertible scores")
    return Source(root, sorted(items, key=lambda item: item[1]), unread, meta)


def _bundled(name: str, jobs: int, progress: bool, timeout: float) -> Source:
    from models.data.corpus import convert_collections, corpus_root, get_corpus  # noqa: PLC0415

    spec = get_corpus(name)
    indexes = convert_collections(spec.collections, jobs, progress=progress, timeout=timeout)
    return _from_indexes([indexes[c] for c in spec.collections], corpus_root(), None,
                         f"corpus:{name}")


def _named(name: str, data_root: str | Path | None, jobs: int, progress: bool,
           timeout: float) -> Source:
    from models.data.data_root import data_root_cache, named_pieces  # noqa: PLC0415

    index = named_pieces(name, data_root, jobs, progress=progress, timeout=timeout)
    root = data_root_cache(Path(".")).root
    return _from_indexes([index], root, name, name)


def _folder_scores(root: Path, scores: list[Path], jobs: int, progress: bool,
                   timeout: float) -> tuple[list[tuple[Path, str]], list[PieceResult]]:
    """Convert a folder's score files once into the cache (roles ``any``, no style)."""
    from models.data.corpus import Cache, Collection, cache_dir, convert_cached  # noqa: PLC0415
    from models.data.roles import RULE_ANY  # noqa: PLC0415

    resolved = root.resolve()
    key = hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
    cache_root = cache_dir() / "folders" / key
    collection = Collection("scores", f"score files of {resolved}", rule=RULE_ANY)

    def units(_: Collection, out_root: Path) -> list[dict[str, Any]]:
        out = []
        for path in scores:
            rel = Path(printable_name(path.relative_to(root).as_posix()))
            out.append({"source": rel.as_posix(), "path": str(path), "kind": "score",
                        "out_root": str(out_root),
                        "midi": f"scores/{rel.with_suffix('').as_posix()}",
                        "rule": RULE_ANY, "style": None, "tunes_per_file": None,
                        "voices_as_tunes": False, "size": path.stat().st_size})
        return out

    cache = Cache(cache_root, units, extra={"folder": str(resolved)}, label="scores -> MIDI")
    index = convert_cached([collection], cache, jobs, progress=progress,
                           timeout=timeout)["scores"]
    items, failed = [], []
    for record in index["pieces"]:
        if record.get("midi"):
            items.append((cache_root / record["midi"], str(record["source"])))
        else:
            failed.append(PieceResult(str(record["source"]), None, reason=SKIP_NOT_CONVERTED,
                                      detail=str(record.get("error") or "no MIDI written")))
    return items, failed
