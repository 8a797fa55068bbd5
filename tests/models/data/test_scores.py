"""Score files (MusicXML, kern, ABC), roles, named corpora on a data root, resumable caches."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import symusic

from models.cli import main
from models.core.exceptions import DataError
from models.core.settings import DataSettings
from models.data import scores
from models.data.corpus import Cache, Collection, convert_cached, read_index
from models.data.data_root import NAMED_CORPORA, named_summary, quartet_style
from models.data.dataset import build_dataset
from models.data.manifest import SPLITS, load_manifest
from models.data.roles import (
    ACCOMPANIMENT,
    ANY,
    LEAD,
    RULE_ALL_LEAD,
    RULE_ANY,
    RULE_FIRST_PART,
    RULE_POP909,
    RULE_VOICE_PIANO,
    assign_roles,
    piece_info,
)
from models.data.scores import JOURNAL_NAME, Journal, convert_unit
from models.data.sources import SKIP_NOT_CONVERTED

pytest.importorskip("music21", reason="score files are converted by music21 (train extra)")

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "scores"
GOOD = ("song.musicxml", "tune.krn", "tune.abc")
BROKEN = ("broken.musicxml", "broken.krn", "broken.abc")
# Every fixture note of the song's voice is above C5 (72), every piano note below C4 (60).
MIDDLE_C5 = 72


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache, never the user's."""
    monkeypatch.setenv("MELODYD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def settings(**values: object) -> DataSettings:
    """Small fixtures: keep pieces of a few notes, put every piece in train."""
    base = {"jobs": 1, "min_notes": 4, "val_fraction": 0.0, "test_fraction": 0.0}
    return DataSettings(**{**base, **values})


def unit(name: str, out: Path, rule: str) -> dict:
    return {"source": name, "path": str(FIXTURES / name), "kind": "score",
            "out_root": str(out), "midi": Path(name).stem, "rule": rule, "style": "test"}


def tracks(path: Path) -> dict[str, list[int]]:
    score = symusic.Score(str(path))
    return {t.name: [n.pitch for n in t.notes] for t in score.tracks}


# ----------------------------------------------------------------- formats and roles
@pytest.mark.parametrize(("name", "rule", "expected"), [
    ("song.musicxml", RULE_VOICE_PIANO, [LEAD, ACCOMPANIMENT]),
    ("song.musicxml", RULE_FIRST_PART, [LEAD, ACCOMPANIMENT]),
    ("song.musicxml", RULE_ANY, [ANY]),
    ("tune.krn", RULE_ALL_LEAD, [LEAD]),
    ("tune.abc", RULE_ALL_LEAD, [LEAD]),
], ids=["musicxml-song", "musicxml-first-part", "musicxml-any", "kern-tune", "abc-tune"])
def test_each_format_converts_to_role_named_tracks(name: str, rule: str, expected: list[str],
                                                   tmp_path: Path) -> None:
    [record] = convert_unit(unit(name, tmp_path, rule))
    assert record["error"] is None and record["roles"] == expected
    assert record["style"] == "test" and record["origin"] == "score"
    written = tracks(tmp_path / record["midi"])
    assert list(written) == expected
    assert record["notes"] == sum(len(p) for p in written.values())
    if name == "song.musicxml" and len(expected) == 2:
        # The right notes on the right tracks: the voice high, the piano low.
        assert len(written[LEAD]) == 7 and min(written[LEAD]) >= MIDDLE_C5
        assert len(written[ACCOMPANIMENT]) == 7 and max(written[ACCOMPANIMENT]) < 60


@pytest.mark.parametrize(("name", "error"), [
    ("broken.musicxml", "parse: ParseError"),
    ("broken.krn", "parse: HumdrumException"),
    ("broken.abc", "no notes"),
], ids=["musicxml", "kern", "abc"])
def test_a_broken_score_gives_its_reason(name: str, error: str, tmp_path: Path) -> None:
    [record] = convert_unit(unit(name, tmp_path, RULE_ANY))
    assert record["midi"] is None and error in record["error"]
    assert not list(tmp_path.rglob("*.mid"))


def test_a_folder_of_scores_builds_and_skips_the_broken_ones(tmp_path: Path) -> None:
    source = tmp_path / "scores"
    (source / "sub").mkdir(parents=True)
    for name in (*GOOD, *BROKEN):
        shutil.copy(FIXTURES / name, source / name)
    shutil.copy(FIXTURES.parent / "fur_elise_opening.mid", source / "sub" / "elise.mid")
    manifest = build_dataset(str(source), tmp_path / "out", settings(), progress=False)
    kept = manifest["splits"]["train"]["pieces"]
    assert sorted(kept) == sorted([*GOOD, "sub/elise.mid"])
    skipped = {e["file"]: e["detail"] for e in manifest["skipped"][SKIP_NOT_CONVERTED]}
    assert sorted(skipped) == sorted(BROKEN)
    assert "ParseError" in skipped["broken.musicxml"] and "no notes" in skipped["broken.abc"]
    assert manifest["files"] == len(GOOD) + len(BROKEN) + 1
    # A user's folder has no roles and no style.
    assert piece_info(tmp_path / "out", "song.musicxml").roles == (ANY,)
    assert piece_info(tmp_path / "out", "song.musicxml").style is None


def test_assign_roles_rules() -> None:
    song = [("Singstimme Voice", 68), ("Pianoforte", 0), ("", 0)]
    assert assign_roles(RULE_VOICE_PIANO, song) == [LEAD, ACCOMPANIMENT, ACCOMPANIMENT]
    # An unnamed part beside a named piano is the voice; all unnamed: no roles.
    assert assign_roles(RULE_VOICE_PIANO, [("", 0), ("Piano", 0), ("Piano", 0)]) == [
        LEAD, ACCOMPANIMENT, ACCOMPANIMENT]
    assert assign_roles(RULE_VOICE_PIANO, [("", 0), ("", 0)]) == [ANY, ANY]
    # A guitar accompanies; voices alone are a part-song: the top voice leads.
    assert assign_roles(RULE_VOICE_PIANO, [("Stimme Voice", 53), ("Guitarre", 24)]) == [
        LEAD, ACCOMPANIMENT]
    assert assign_roles(RULE_VOICE_PIANO, [("Soprano", 53), ("Alto", 53), ("Bass", 53)]) == [
        LEAD, ACCOMPANIMENT, ACCOMPANIMENT]
    assert assign_roles(RULE_VOICE_PIANO, [("Voice", 53)]) == [LEAD]
    # A flute is not a lute: an obbligato flute over a piano leads.
    assert assign_roles(RULE_VOICE_PIANO, [("Flute", 73), ("Piano", 0)]) == [LEAD, ACCOMPANIMENT]
    # Songs without a voice (a piano piece) have no roles.
    assert assign_roles(RULE_VOICE_PIANO, [("Piano", 0), ("Piano", 0)]) == [ANY, ANY]
    assert assign_roles(RULE_POP909, [("MELODY", 0), ("BRIDGE", 0), ("PIANO", 0)]) == [
        LEAD, ACCOMPANIMENT, ACCOMPANIMENT]
    assert assign_roles(RULE_FIRST_PART, [("Violin I", 40), ("Violin II", 40),
                                          ("Viola", 41)]) == [LEAD, ACCOMPANIMENT, ACCOMPANIMENT]
    with pytest.raises(DataError, match="'nope'"):
        assign_roles("nope", [])


def test_quartet_styles_follow_the_composer() -> None:
    assert quartet_style("Haydn,_Joseph/Op.20/sq1.mxl") == "classical"
    assert quartet_style("Beethoven,_Ludwig_van/String_Quartet_No.1,_Op.18_No.1/a.mxl") == \
        "classical"
    assert quartet_style("Beethoven,_Ludwig_van/String_Quartet_No.13,_Op.130/a.mxl") == \
        "romantic"
    assert quartet_style("Bartók,_Béla/String_Quartet_No.4/a.mxl") == "modern"
    assert quartet_style("Brahms,_Johannes/String_Quartet_No.1/a.mxl") == "romantic"


# ----------------------------------------------------------------- named corpora
def write_midi(path: Path, tracks_: list[tuple[str, int, list[int]]]) -> Path:
    """A MIDI file with named tracks of quarter notes (name, program, pitches)."""
    score = symusic.Score(480)
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    for name, program, pitches in tracks_:
        track = symusic.Track(name=name, program=program, is_drum=False)
        for i, pitch in enumerate(pitches):
            track.notes.append(symusic.Note(i * 480, 480, pitch, 80))
        score.tracks.append(track)
    path.parent.mkdir(parents=True, exist_ok=True)
    score.dump_midi(str(path))
    return path


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A data root shaped like the shared one: lieder (scores, one with a MIDI beside it)
    and pop909 (MIDI only)."""
    root = tmp_path / "corpora"
    lieder = root / "openscore-lieder"
    song = Path("Composer,_A/Set/Song")
    (lieder / "scores" / song).mkdir(parents=True)
    shutil.copy(FIXTURES / "song.musicxml", lieder / "scores" / song / "lc1.musicxml")
    shutil.copy(FIXTURES / "song.musicxml", lieder / "scores" / song / "lc2.musicxml")
    # lc2 was converted beforehand: music21's layout (an empty duplicate of the voice).
    write_midi(lieder / "midi" / song / "lc2.mid",
               [("Gesang Voice", 68, [76, 74, 72, 74, 76, 76, 76, 79]),
                ("Gesang Voice", 0, []), ("Klavier Piano", 0, [48, 55, 43, 50, 48, 52])])
    for number in range(3):
        write_midi(root / "pop909" / "songs" / f"{number:03d}" / f"{number:03d}.mid",
                   [("MELODY", 0, [72 + number, 74, 76, 77, 79]), ("BRIDGE", 0, [67, 69]),
                    ("PIANO", 0, [48, 52, 55, 60])])
        (root / "pop909" / "songs" / f"{number:03d}" / "beat_midi.txt").write_text("0 1\n")
    return root


def test_a_named_corpus_builds_from_the_data_root(data_root: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds-lieder"
    assert main(["data", "build", "--source", "lieder", "--data-root", str(data_root),
                 "--out", str(out), "--jobs", "1", "--no-progress", "--val-fraction", "0",
                 "--test-fraction", "0"]) == 0
    assert "romantic 2" in capsys.readouterr().out
    manifest = load_manifest(out)
    names = sorted(p for s in SPLITS for p in manifest["splits"][s]["pieces"])
    assert names == ["lieder/Composer,_A/Set/Song/lc1.mid",
                     "lieder/Composer,_A/Set/Song/lc2.mid"]
    assert manifest["licences"] == ["CC0 1.0"]
    for name in names:
        info = piece_info(out, name)
        assert info.style == "romantic" and info.roles == (LEAD, ACCOMPANIMENT)
        assert info.licence == "CC0 1.0" and info.corpus == "lieder"
    index = read_index(Cache(tmp_path / "cache" / "data-root", lambda c, r: [],
                             extra={"data_root": str(data_root.resolve())}),
                       NAMED_CORPORA["lieder"].collection())
    assert index is not None
    origins = {r["source"]: r["origin"] for r in index["pieces"]}
    # The MIDI file beside a score is used; a score without one is converted by music21.
    assert origins == {"Composer,_A/Set/Song/lc2.musicxml": "midi",
                       "Composer,_A/Set/Song/lc1.musicxml": "score"}
    cached = tmp_path / "cache" / "data-root" / names[1]
    assert piece_info(cached) == piece_info(out, names[1])
    assert tracks(cached)[LEAD] == [76, 74, 72, 74, 76, 76, 76, 79]


def test_pop909_roles_from_its_track_names(data_root: Path, tmp_path: Path) -> None:
    manifest = build_dataset("pop909", tmp_path / "out",
                             settings(data_root=str(data_root)), progress=False)
    assert manifest["files"] == 3 and manifest["styles"] == {"pop": 3}
    info = piece_info(tmp_path / "out", "pop909/001/001.mid")
    assert info.roles == (LEAD, ACCOMPANIMENT) and info.style == "pop"
    assert info.licence.startswith("MIT")


def test_corpora_lists_availability_and_licences(data_root: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rows = {r["name"]: r for r in named_summary(str(data_root))}
    assert set(rows) == set(NAMED_CORPORA)
    assert rows["lieder"]["available"] and rows["lieder"]["files"] == 2
    assert rows["pop909"]["available"] and rows["pop909"]["files"] == 3
    assert not rows["quartets"]["available"] and "openscore-quartets/" in rows["quartets"]["reason"]
    assert main(["data", "corpora", "--data-root", str(data_root)]) == 0
    out = capsys.readouterr().out
    lieder = next(x for x in out.splitlines() if x.strip().startswith("lieder "))
    assert "CC0 1.0" in lieder and " 2 " in lieder
    assert "missing" in next(x for x in out.splitlines() if x.strip().startswith("quartets "))


def test_a_missing_data_root_is_one_clear_error(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "build", "--source", "lieder", "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err
    assert "--data-root" in err and "[data] data_root" in err
    assert "github.com/OpenScore/Lieder" in err and "Traceback" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no openscore-lieder/ folder.*OpenScore/Lieder"):
        build_dataset("lieder", tmp_path / "o", settings(data_root=str(empty)), progress=False)
    with pytest.raises(DataError, match=r"'/no/such/root' is not a folder.*--data-root"):
        build_dataset("pop909", tmp_path / "o", settings(data_root="/no/such/root"),
                      progress=False)


# ----------------------------------------------------------------- resuming
def fixture_cache(root: Path, names: tuple[str, ...] = GOOD) -> Cache:
    return Cache(root, lambda c, out: [{**unit(n, out, RULE_ALL_LEAD),
                                        "midi": f"{c.name}/{Path(n).stem}"} for n in names])


def test_an_interrupted_conversion_resumes_without_redoing_work(tmp_path: Path) -> None:
    cache, collection = fixture_cache(tmp_path / "c"), Collection("fx", "fixtures")
    first = convert_cached([collection], cache, 1, progress=False)["fx"]
    assert first["converted"] == 3
    folder = tmp_path / "c" / "fx"
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.mid")}
    # "Interrupted" after two units: no index, the journal's last unit half written.
    (folder / "index.json").unlink()
    journal = folder / JOURNAL_NAME
    lines = journal.read_text().splitlines()
    done = [json.loads(x)["source"] for x in lines[1:3]]
    journal.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
    again = convert_cached([collection], cache, 1, progress=False)["fx"]
    assert again["converted"] == 3
    after = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.mid")}
    redone = {name for name in after if after[name] != stamps[name]}
    assert redone == {f"{Path(n).stem}.mid" for n in GOOD if n not in done}
    # The cut line was ended: every unit's line reads back whole.
    header = json.loads(journal.read_text().splitlines()[0])
    assert sorted(Journal(folder, header).load()) == sorted(GOOD)
    # Once indexed, nothing is converted at all.
    assert convert_cached([collection], cache, 1, progress=False)["fx"] == again
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.mid")} == after


def slow_convert_unit(unit_: dict) -> list[dict]:
    """The real conversion after a second of CPU work (forked workers inherit the patch)."""
    end = time.process_time() + 1.0
    while time.process_time() < end:
        pass
    return REAL_CONVERT_UNIT(unit_)


REAL_CONVERT_UNIT = convert_unit


def test_a_score_over_its_time_is_skipped_then_retried_with_more_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scores, "convert_unit", slow_convert_unit)
    cache, collection = fixture_cache(tmp_path / "c", ("song.musicxml",)), Collection("fx", "")
    [record] = convert_cached([collection], cache, 1, progress=False,
                              timeout=0.3)["fx"]["pieces"]
    assert record["midi"] is None and record["error"] == "timeout: more than 0.3 s"
    (tmp_path / "c" / "fx" / "index.json").unlink()
    [record] = convert_cached([collection], cache, 1, progress=False,
                              timeout=600)["fx"]["pieces"]
    assert record["error"] is None and record["roles"] == [LEAD]


def test_another_conversion_starts_clean(tmp_path: Path) -> None:
    cache = fixture_cache(tmp_path / "c", ("tune.krn",))
    convert_cached([Collection("fx", "", rule=RULE_ALL_LEAD)], cache, 1, progress=False)
    stale = tmp_path / "c" / "fx" / "stale.mid"
    stale.write_bytes(b"old")
    # Another rule is another conversion: the journal and old files are dropped.
    index = convert_cached([Collection("fx", "", rule=RULE_ANY)], cache, 1,
                           progress=False)["fx"]
    assert index["rule"] == RULE_ANY and not stale.exists()


def test_a_score_that_blocks_without_cpu_still_ends(tmp_path: Path) -> None:
    # A FIFO named like a score: reading it blocks forever and costs no CPU time.
    fifo = tmp_path / "blocked.musicxml"
    os.mkfifo(fifo)
    cache = Cache(tmp_path / "c", lambda c, out: [{**unit("song.musicxml", out, RULE_ANY),
                                                   "source": "blocked", "path": str(fifo),
                                                   "midi": "fx/blocked"}])
    started = time.monotonic()
    [record] = convert_cached([Collection("fx", "")], cache, 1, progress=False,
                              timeout=0.25)["fx"]["pieces"]
    assert record["error"] == "timeout: more than 0.25 s"
    assert time.monotonic() - started < 30
