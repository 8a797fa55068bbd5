"""Bundled corpora: definitions, the MIDI cache, conversion and ``melody data corpora``."""

from __future__ import annotations

import fcntl
import json
import shutil
import threading
from pathlib import Path

import pytest
import symusic

from models.cli import main
from models.core.exceptions import DataError
from models.core.settings import DataSettings
from models.data import corpus
from models.data.corpus import (
    COLLECTIONS,
    CORPORA,
    Collection,
    CorpusSpec,
    cache_dir,
    convert_collections,
    convert_source,
    corpus_failures,
    corpus_midi_files,
    corpus_summary,
    get_corpus,
    load_index,
    source_files,
)
from models.data.dataset import build_dataset
from models.data.manifest import SPLITS, TokenDataset
from models.data.sources import SKIP_NOT_CONVERTED

pytest.importorskip("music21", reason="the bundled corpora come from music21 (train extra)")

STYLES = ("bach", "baroque", "renaissance", "classical", "romantic", "folk")
# Three short scores, so that converting them in a test takes a second or two.
TINY = CorpusSpec("tiny", "three short scores for tests", ("lusitano", "verdi", "handel"))


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache, never the user's."""
    monkeypatch.setenv("MELODYD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> CorpusSpec:
    monkeypatch.setitem(CORPORA, "tiny", TINY)
    return TINY


@pytest.fixture(scope="module")
def tiny_converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny corpus converted once per module (music21 is slow); tests copy it."""
    cache = tmp_path_factory.mktemp("tiny-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MELODYD_CACHE", str(cache))
        patch.setitem(CORPORA, "tiny", TINY)
        corpus_midi_files("tiny", jobs=1, progress=False)
    return cache / "corpus"


@pytest.fixture
def tiny_cached(tiny: CorpusSpec, tiny_converted: Path, private_cache: Path) -> CorpusSpec:
    """The tiny corpus, already converted into this test's private cache."""
    shutil.copytree(tiny_converted, private_cache / "corpus")
    return tiny


def test_cache_dir_follows_the_environment(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MELODYD_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("MELODYD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "melodyd"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "melodyd"


@pytest.mark.parametrize("name", [*STYLES, "all"])
def test_every_named_corpus_has_scores(name: str) -> None:
    spec = get_corpus(name)
    assert spec.description
    for collection in spec.collections:
        assert source_files(COLLECTIONS[collection]), f"{collection} is empty in music21"


def test_all_is_the_union_of_the_styles() -> None:
    styles = {c for name in STYLES for c in CORPORA[name].collections}
    everything = set(CORPORA["all"].collections)
    assert styles <= everything
    assert everything == set(COLLECTIONS)
    assert len(CORPORA["all"].collections) == len(everything)


def test_one_collection_is_a_corpus_of_its_own() -> None:
    spec = get_corpus("monteverdi")
    assert spec.collections == ("monteverdi",)
    assert spec.description == COLLECTIONS["monteverdi"].description


def test_an_unknown_corpus_lists_the_known_ones() -> None:
    with pytest.raises(DataError, match="corpus:bach"):
        get_corpus("bahc")


def test_a_score_shipped_in_two_formats_is_taken_once() -> None:
    bach = [str(p) for p in source_files(COLLECTIONS["bach"])]
    assert "bach/bwv277.mxl" in bach and "bach/bwv277.krn" not in bach
    assert len(bach) == len(set(bach))
    assert not any(p.endswith(".rntxt") for p in bach)


def test_each_tune_of_an_abc_file_becomes_its_own_midi(tmp_path: Path) -> None:
    records = convert_source("josquin/oVenusBant.abc", str(tmp_path), 2)
    assert [r["midi"] for r in records] == [
        "josquin/oVenusBant-0001.mid", "josquin/oVenusBant-0002.mid"]
    assert all(r["notes"] > 0 and r["error"] is None for r in records)
    assert len({r["source"] for r in records}) == 2


def test_voices_stored_as_tunes_are_joined_into_one_piece(tmp_path: Path) -> None:
    assert COLLECTIONS["josquin"].voices_as_tunes
    [record] = convert_source("josquin/oVenusBant.abc", str(tmp_path), None, True)
    assert record["midi"] == "josquin/oVenusBant.mid" and record["error"] is None
    score = symusic.Score(str(tmp_path / record["midi"]))
    # Josquin's three equal voices: one track of role "any" holding all their notes.
    assert [t.name for t in score.tracks] == ["any"] and record["roles"] == ["any"]
    assert record["notes"] == sum(len(t.notes) for t in score.tracks) > 300


def test_dotted_score_names_keep_their_whole_stem(tmp_path: Path) -> None:
    [record] = convert_source("bach/bwv66.6.mxl", str(tmp_path), None)
    assert record["midi"] == "bach/bwv66.6.mid"
    assert (tmp_path / "bach" / "bwv66.6.mid").stat().st_size > 0


def test_a_failed_conversion_is_recorded_not_fatal(tiny: CorpusSpec, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    real = corpus.source_files

    def with_a_broken_file(collection: Collection) -> list[Path]:
        extra = [Path(collection.name) / "missing.mxl"] if collection.name == "verdi" else []
        return real(collection) + extra

    monkeypatch.setattr(corpus, "source_files", with_a_broken_file)
    indexes = convert_collections(["verdi"], jobs=1, progress=False)
    verdi = indexes["verdi"]
    assert verdi["converted"] == 1 and verdi["failed"] == 1
    [failure] = [r for r in verdi["pieces"] if r["error"]]
    assert failure["source"] == "verdi/missing.mxl" and failure["midi"] is None


def test_conversion_is_cached_and_counted(tiny: CorpusSpec, private_cache: Path) -> None:
    [row] = corpus_summary(["tiny"])
    assert row["converted"] is False and row["pieces"] is None
    root, files = corpus_midi_files("tiny", jobs=2, progress=False)
    assert root == private_cache / "corpus"
    assert [f.relative_to(root).parts[0] for f in files] == ["handel", "lusitano", "verdi"]
    [row] = corpus_summary(["tiny"])
    assert row["converted"] is True and row["pieces"] == 3 and row["failed"] == 0
    assert row["notes"] > 100
    stamp = {f: f.stat().st_mtime_ns for f in files}
    _, again = corpus_midi_files("tiny", progress=False)
    assert again == files and {f: f.stat().st_mtime_ns for f in again} == stamp


def test_a_damaged_index_means_convert_again(tiny_cached: CorpusSpec,
                                             private_cache: Path) -> None:
    index_path = private_cache / "corpus" / "verdi" / "index.json"
    index_path.write_text("{broken")
    assert load_index(COLLECTIONS["verdi"]) is None
    index_path.write_text(json.dumps({"format": "melodyd-corpus-index", "converter_version": -1,
                                      "pieces": []}))
    assert load_index(COLLECTIONS["verdi"]) is None
    corpus_midi_files("tiny", jobs=1, progress=False)
    assert load_index(COLLECTIONS["verdi"])["converted"] == 1


def test_a_dataset_builds_from_a_corpus_name(tiny_cached: CorpusSpec, tmp_path: Path) -> None:
    manifest = build_dataset("corpus:tiny", tmp_path / "out",
                             DataSettings(jobs=1, val_fraction=0.34, test_fraction=0.34),
                             progress=False)
    pieces = sorted(p for s in SPLITS for p in manifest["splits"][s]["pieces"])
    assert pieces == ["handel/rinaldo/Lascia_chio_pianga.mid",
                      "lusitano/allor_che_ignuda.mid", "verdi/laDonnaEMobile.mid"]
    assert manifest["source"] == "corpus:tiny"
    assert len(TokenDataset(tmp_path / "out", "train")) == 1


def test_cli_lists_corpora_not_converted_yet(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "corpora"]) == 0
    out = capsys.readouterr().out
    for name in [*STYLES, "all"]:
        line = next(x for x in out.splitlines() if x.startswith(f"corpus:{name} "))
        assert "not converted yet" in line
    assert "--convert" in out


def test_cli_lists_counts_once_converted(tiny_cached: CorpusSpec,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    [row] = corpus_summary(["tiny"])
    assert main(["data", "corpora"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("corpus:tiny "))
    assert str(row["pieces"]) in line and str(row["notes"]) in line
    assert "not converted" not in line


def _hold_lock(cache: Path, collection: str):
    handle = open(cache / "corpus" / f"{collection}.lock", "a+")  # noqa: SIM115
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def test_a_second_build_waits_for_the_first_and_reuses_its_work(
        tiny_cached: CorpusSpec, private_cache: Path) -> None:
    index_path = private_cache / "corpus" / "verdi" / "index.json"
    finished = json.loads(index_path.read_text())
    index_path.unlink()
    first = _hold_lock(private_cache, "verdi")  # "another build" is converting verdi
    results: list[dict] = []
    second = threading.Thread(target=lambda: results.append(
        convert_collections(["verdi"], jobs=1, progress=False)), daemon=True)
    second.start()
    second.join(timeout=1.0)
    assert second.is_alive(), "the second build must wait for the lock"
    index_path.write_text(json.dumps({**finished, "written_by": "first"}))
    first.close()  # releases the lock
    second.join(timeout=120)
    assert not second.is_alive()
    assert results[0]["verdi"]["written_by"] == "first"


def test_a_build_of_other_collections_does_not_wait(tiny_cached: CorpusSpec,
                                                    private_cache: Path) -> None:
    (private_cache / "corpus" / "verdi" / "index.json").unlink()
    other = _hold_lock(private_cache, "handel")
    try:
        done = threading.Thread(target=convert_collections, args=(["verdi"],),
                                kwargs={"jobs": 1, "progress": False}, daemon=True)
        done.start()
        done.join(timeout=300)
        assert not done.is_alive()
    finally:
        other.close()
    assert load_index(COLLECTIONS["verdi"])["converted"] == 1


def test_scores_that_failed_to_convert_are_in_the_skip_table(tiny_cached: CorpusSpec,
                                                             private_cache: Path,
                                                             tmp_path: Path) -> None:
    index_path = private_cache / "corpus" / "verdi" / "index.json"
    index = json.loads(index_path.read_text())
    index["pieces"].append({"source": "verdi/broken.mxl", "midi": None, "notes": 0,
                            "error": "parse: ValueError: no measures"})
    index_path.write_text(json.dumps(index))
    assert corpus_failures("tiny") == [("verdi/broken.mxl", "parse: ValueError: no measures")]
    manifest = build_dataset("corpus:tiny", tmp_path / "out",
                             DataSettings(jobs=1, val_fraction=0.34, test_fraction=0.34),
                             progress=False)
    assert manifest["skipped"] == {SKIP_NOT_CONVERTED: [
        {"file": "verdi/broken.mxl", "detail": "parse: ValueError: no measures"}]}
    assert manifest["files"] == 4


def test_a_chorale_soprano_leads_the_lower_voices(tmp_path: Path) -> None:
    from music21 import corpus as m21corpus  # noqa: PLC0415 - only this test needs it

    [record] = convert_source("bach/bwv66.6.mxl", str(tmp_path), None)
    assert record["roles"] == ["lead", "accompaniment"] and record["style"] == "baroque"
    score = symusic.Score(str(tmp_path / record["midi"]))
    soprano = m21corpus.parse("bach/bwv66.6").parts[0].stripTies()
    lead = next(t for t in score.tracks if t.name == "lead")
    assert len(lead.notes) == len(soprano.flatten().notes)
    assert [n.pitch for n in lead.notes[:3]] == [p.pitch.midi for p in soprano.flatten().notes[:3]]


def test_a_folk_tune_is_all_lead(tmp_path: Path) -> None:
    [record] = convert_source("miscFolk/americanfifeopus.abc", str(tmp_path), 1)
    assert record["roles"] == ["lead"] and record["style"] == "folk"


def test_the_index_records_style_roles_and_licence(tiny_cached: CorpusSpec) -> None:
    index = load_index(COLLECTIONS["verdi"])
    assert index["style"] == "romantic" and index["licence"].startswith("public domain")
    assert all(r["roles"] and r["style"] == "romantic" for r in index["pieces"])
