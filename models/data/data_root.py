"""Named corpora on a data root: openly licensed scores the user keeps in one folder.

``melody data build --source lieder --data-root DIR`` (or ``[data] data_root``) reads
``DIR/openscore-lieder/``; nothing is ever downloaded. Each corpus is the copy of a public
repository described in the README (section "Corpora"), with its licence, a style label
and a rule for the roles of its tracks (``models.data.roles``).

A corpus folder holds its original scores (MusicXML or kern), and may hold MIDI files
music21 made from them beside (``midi/``, same relative paths): those are used instead of
converting again. Either way every piece is normalized once into the user's cache
(``<cache>/data-root/<name>/``, see ``models.data.corpus``): tracks named by role, and an
index with each piece's style, roles and the licence. A user who has only the scores gets
the same pieces, converted by music21 in worker processes.

Torch-free; music21 is imported only by the workers that convert scores.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.core.exceptions import DataError
from models.data.corpus import Cache, Collection, cache_dir, convert_cached, read_index
from models.data.midifile import MIDI_SUFFIXES
from models.data.roles import RULE_ANY, RULE_FIRST_PART, RULE_POP909, RULE_VOICE_PIANO
from models.data.scores import (
    SCORE_SUFFIXES,
    SCORE_WRITER_MUSIC21,
    SCORE_WRITER_NOTES,
    Unit,
)

logger = logging.getLogger(__name__)

SETTING_HINT = "pass --data-root DIR or set [data] data_root in your config"

# String quartets span Haydn to Bartók: a style per composer (the first folder of a
# score's path). Beethoven's op. 18 is classical, his later quartets romantic; every
# composer not listed is romantic.
_QUARTET_STYLES = {
    "Haydn,_Joseph": "classical", "Mozart,_Wolfgang_Amadeus": "classical",
    "Boccherini,_Luigi": "classical", "Hoffmeister,_Franz_Anton": "classical",
    "Saint-Georges,_Joseph_Bologne": "classical", "Cherubini,_Luigi": "classical",
    "Arriaga,_Juan_Crisóstomo_de": "classical",
    "Bartók,_Béla": "modern", "Janáček,_Leoš": "modern", "Schulhoff,_Erwin": "modern",
    "Ravel,_Maurice": "modern", "Debussy,_Claude": "modern",
    "Moeran,_Ernest_John": "modern", "Bridge,_Frank": "modern",
}


def quartet_style(source: str) -> str:
    """The style of one string quartet, from its path ``Composer/Work/file.mxl``."""
    parts = Path(source).parts
    composer = parts[0] if parts else ""
    if composer.startswith("Beethoven"):
        work = parts[1] if len(parts) > 1 else ""
        return "classical" if "Op.18" in work.replace(" ", "") else "romantic"
    return _QUARTET_STYLES.get(composer, "romantic")


@dataclasses.dataclass(frozen=True)
class NamedCorpus:
    """One corpus of the data root.

    Attributes:
        name: what ``--source`` says (``lieder``).
        folder: its folder under the data root.
        description: what it holds, for ``melody data corpora``.
        licence: the licence of its files.
        origin: the public repository (and commit) the folder copies.
        attribution: the credit its licence asks for.
        rule: how its tracks get roles (``models.data.roles``).
        style: the style label of its pieces.
        scores: the subfolder of the original scores, if any.
        midi: the subfolder of MIDI files (music21 conversions of ``scores``, same
            relative paths, or the corpus's own MIDI files when it has no scores).
        style_of: the style of one piece from its source path, when it varies.
        score_writer: how its parsed scores become MIDI (``Collection.score_writer``).
    """

    name: str
    folder: str
    description: str
    licence: str
    origin: str
    attribution: str
    rule: str
    style: str
    scores: str | None = None
    midi: str | None = None
    style_of: Callable[[str], str] | None = None
    score_writer: str = SCORE_WRITER_MUSIC21

    def collection(self) -> Collection:
        """The cache's view of this corpus."""
        return Collection(self.name, self.description, style=self.style, rule=self.rule,
                          licence=self.licence, score_writer=self.score_writer)


_NIFC = "Fryderyk Chopin Institute (NIFC)"
NAMED_CORPORA: dict[str, NamedCorpus] = {c.name: c for c in (
    NamedCorpus("lieder", "openscore-lieder",
                "OpenScore Lieder: 19th-century songs, voice + piano (Schubert, Brahms, "
                "Schumann, Hensel, ...)", "CC0 1.0",
                "github.com/OpenScore/Lieder (commit bca1224)", "OpenScore Lieder",
                RULE_VOICE_PIANO, "romantic", scores="scores", midi="midi"),
    NamedCorpus("quartets", "openscore-quartets",
                "OpenScore String Quartets: Haydn to Bartók (whole quartets)", "CC0 1.0",
                "github.com/OpenScore/StringQuartets (commit 2c723a5)",
                "OpenScore String Quartets", RULE_FIRST_PART, "romantic", scores="scores",
                # A whole quartet is one file: music21's MIDI writer takes 5+ minutes on
                # one (quadratic tie stripping), the one-pass writer seconds.
                style_of=quartet_style, score_writer=SCORE_WRITER_NOTES),
    NamedCorpus("chopin", "chopin-first-editions",
                "Chopin first editions, op. 1-74 and posthumous works (kern)", "CC BY 4.0",
                "github.com/pl-wnifc/humdrum-chopin-first-editions (commit 95dfb10)",
                f"Chopin first editions, {_NIFC}, CC BY 4.0", RULE_ANY, "romantic",
                scores="kern", midi="midi"),
    NamedCorpus("polish-piano", "polish-piano",
                "Heritage of Polish Music: solo piano works, mostly 1800-1900 (kern)",
                "CC BY 4.0", "github.com/pl-wnifc/humdrum-polish-scores (commit c040362)",
                f"Heritage of Polish Music in Open Access, {_NIFC}, CC BY 4.0", RULE_ANY,
                "romantic", scores="kern", midi="midi"),
    NamedCorpus("polish-songs", "polish-songs",
                "Heritage of Polish Music: songs for voice and piano (kern)", "CC BY 4.0",
                "github.com/pl-wnifc/humdrum-polish-scores (commit c040362)",
                f"Heritage of Polish Music in Open Access, {_NIFC}, CC BY 4.0",
                RULE_VOICE_PIANO, "romantic", scores="kern", midi="midi"),
    NamedCorpus("pop909", "pop909",
                "POP909: 909 pop songs as piano arrangements (MELODY, BRIDGE, PIANO tracks)",
                "MIT (dataset); the songs are commercial Chinese pop",
                "github.com/music-x-lab/POP909-Dataset (commit d83e6ed)",
                "POP909, Music X Lab (Wang et al., ISMIR 2020), MIT", RULE_POP909, "pop",
                midi="songs"),
)}


def data_root_cache(data_root: Path) -> Cache:
    """The cache of the named corpora read from ``data_root``.

    The resolved data root is part of every collection's header: the same corpus name
    read from another folder is converted again.
    """
    return Cache(cache_dir() / "data-root", lambda c, root: corpus_units(
        NAMED_CORPORA[c.name], data_root, root), extra={"data_root": str(data_root)},
                 label="scores -> MIDI")


def get_named(name: str) -> NamedCorpus:
    """The named corpus ``name``.

    Raises:
        DataError: no corpus has that name.
    """
    if name not in NAMED_CORPORA:
        raise DataError(f"unknown named corpus {name!r} (known: {', '.join(NAMED_CORPORA)})")
    return NAMED_CORPORA[name]


def check_data_root(data_root: str | Path | None, corpus: NamedCorpus) -> Path:
    """The corpus's folder under the data root.

    Raises:
        DataError: no data root is set, or it or the corpus's folder is missing; the
            message names the setting and where to get the data.
    """
    where = f"get it from {corpus.origin}; see the README, section \"Corpora\""
    if not data_root or not str(data_root).strip():
        raise DataError(f"the corpus {corpus.name!r} is read from a data root, and none is "
                        f"set: {SETTING_HINT} (the folder that holds {corpus.folder}/; "
                        f"{where})")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DataError(f"the data root {str(data_root)!r} is not a folder ({SETTING_HINT})")
    folder = root / corpus.folder
    if not folder.is_dir():
        raise DataError(f"the data root {root} has no {corpus.folder}/ folder for the corpus "
                        f"{corpus.name!r}: {where}")
    return folder


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in suffixes and p.is_file())


def corpus_units(corpus: NamedCorpus, data_root: Path, out_root: Path) -> list[Unit]:
    """The conversion units of a named corpus: one per original score (or MIDI file).

    A score with a MIDI file beside it (``midi/`` + the same relative path) is read from
    that MIDI file; the unit's ``source`` is the score's path all the same.

    Raises:
        DataError: the corpus's folder is missing, or holds neither scores nor MIDI files.
    """
    folder = check_data_root(data_root, corpus)
    scores = folder / corpus.scores if corpus.scores else None
    midi = folder / corpus.midi if corpus.midi else None
    units = []
    if scores is not None and scores.is_dir():
        for path in _files(scores, SCORE_SUFFIXES):
            rel = path.relative_to(scores)
            converted = midi / rel.with_suffix(".mid") if midi is not None else None
            if converted is not None and converted.is_file():
                units.append(_unit(corpus, rel, converted, "midi", out_root))
            else:
                units.append(_unit(corpus, rel, path, "score", out_root))
    elif midi is not None and midi.is_dir():
        units = [_unit(corpus, p.relative_to(midi), p, "midi", out_root)
                 for p in _files(midi, MIDI_SUFFIXES)]
    if not units:
        wanted = " or ".join(f"{folder / sub}/" for sub in (corpus.scores, corpus.midi) if sub)
        raise DataError(f"no score or MIDI files in {wanted} (corpus {corpus.name!r}: get "
                        f"it from {corpus.origin})")
    return units


def _unit(corpus: NamedCorpus, rel: Path, path: Path, kind: str, out_root: Path) -> Unit:
    source = rel.as_posix()
    style = corpus.style_of(source) if corpus.style_of else corpus.style
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    # The original score's size orders the work (a big quartet first), whatever is read.
    return {"source": source, "path": str(path), "kind": kind, "out_root": str(out_root),
            "midi": f"{corpus.name}/{rel.with_suffix('').as_posix()}", "rule": corpus.rule,
            "style": style, "tunes_per_file": None, "voices_as_tunes": False, "size": size,
            "score_writer": corpus.score_writer}


def named_pieces(name: str, data_root: str | Path | None, jobs: int = 0, *,
                 progress: bool = True, timeout: float = 600.0) -> dict[str, Any]:
    """Convert (once) a named corpus into the cache; return its index.

    Raises:
        DataError: unknown corpus, no data root, or the corpus's folder is missing.
    """
    corpus = get_named(name)
    root = check_data_root(data_root, corpus).parent.resolve()
    cache = data_root_cache(root)
    return convert_cached([corpus.collection()], cache, jobs, progress=progress,
                          timeout=timeout)[name]


def named_summary(data_root: str | Path | None) -> list[dict[str, Any]]:
    """Each named corpus: licence, whether it is under the data root, files and pieces.

    ``files`` counts the originals (or MIDI files) found; ``pieces``/``notes`` come from
    the cache once the corpus is converted (else ``None``).
    """
    rows = []
    for corpus in NAMED_CORPORA.values():
        row: dict[str, Any] = {"name": corpus.name, "licence": corpus.licence,
                               "description": corpus.description, "origin": corpus.origin,
                               "folder": corpus.folder, "available": False, "files": None,
                               "pieces": None, "notes": None, "failed": None, "reason": ""}
        try:
            folder = check_data_root(data_root, corpus)
            units = corpus_units(corpus, folder.parent, cache_dir())
        except DataError as err:
            row["reason"] = str(err)
            rows.append(row)
            continue
        row["available"], row["files"] = True, len(units)
        index = read_index(data_root_cache(folder.parent.resolve()), corpus.collection())
        if index is not None:
            row.update(pieces=index["converted"], notes=index["notes"], failed=index["failed"])
        rows.append(row)
    return rows
