"""One dataset from several sources: style slots, roles, split agreement, the data table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import symusic

from models.cli import main
from models.core.exceptions import DataError
from models.core.settings import DataSettings, load_settings
from models.core.streaming import StreamingDetokenizer
from models.core.tokenizer import MelodyTokenizer
from models.data import dataset, splits
from models.data.dataset import build_dataset
from models.data.manifest import SPLITS, TokenDataset
from models.data.sources import (
    ALL_CORPORA,
    SKIP_DUPLICATE,
    Source,
    expand_sources,
    split_source_list,
)
from models.data.splits import split_pieces

TPQ = 480
CONDITIONED = Path(__file__).resolve().parents[3] / "models" / "pretrained" / \
    "conditioned-tokens.toml"
POP_SONGS, CHOPIN_PIECES = 7, 6


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test converts into its own empty cache, never the user's."""
    monkeypatch.setenv("MELODYD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_midi(path: Path, tracks: list[tuple[str, list[int]]]) -> Path:
    """A 4/4 MIDI file with one track per ``(name, pitches)``, quarter notes from beat 0."""
    score = symusic.Score(TPQ)
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    for name, pitches in tracks:
        track = symusic.Track(name=name, program=0, is_drum=False)
        for beat, pitch in enumerate(pitches):
            track.notes.append(symusic.Note(beat * TPQ, TPQ, pitch, 80))
        score.tracks.append(track)
    path.parent.mkdir(parents=True, exist_ok=True)
    score.dump_midi(str(path))
    return path


def pop_melody(number: int) -> list[int]:
    """Song ``number``'s MELODY: 10 notes above every accompaniment note."""
    return [72 + (number + i) % 7 for i in range(10)]


def pop_piano(number: int) -> list[int]:
    return [43 + (number * 3 + i) % 12 for i in range(10)]


def chopin_piece(number: int) -> list[int]:
    return [60 + (number + 2 * i) % 15 for i in range(12)]


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """pop909 (MELODY / PIANO tracks: lead and accompaniment) and Chopin (solo piano, MIDI
    only: no roles), laid out as in the shared data root."""
    root = tmp_path / "corpora"
    for number in range(POP_SONGS):
        folder = root / "pop909" / "songs" / f"{number:03d}"
        write_midi(folder / f"{number:03d}.mid",
                   [("MELODY", pop_melody(number)), ("PIANO", pop_piano(number))])
    for number in range(CHOPIN_PIECES):
        write_midi(root / "chopin-first-editions" / "midi" / f"op{number:02d}.mid",
                   [("Piano", chopin_piece(number))])
    return root


def data_settings(data_root: Path, **changes: object) -> DataSettings:
    values: dict = {"jobs": 1, "min_notes": 4, "val_fraction": 0.2, "test_fraction": 0.2,
                    "transpose_min": -2, "transpose_max": 1, "data_root": str(data_root)}
    return DataSettings(**{**values, **changes})


def conditioned() -> MelodyTokenizer:
    return MelodyTokenizer(load_settings(CONDITIONED).tokens)


def sequences(out: Path, split: str) -> list[tuple[str, int, list[int]]]:
    """``(piece, transposition, ids)`` of every sequence of a split."""
    data = TokenDataset(out, split)
    info = data.manifest["splits"][split]
    named = [(name, shift) for name, shifts in zip(info["pieces"], info["transpositions"],
                                                   strict=True) for shift in shifts]
    assert len(named) == len(data)
    return [(name, shift, [int(i) for i in data[k]]) for k, (name, shift) in enumerate(named)]


# ----------------------------------------------------------------- the conditioned build
def test_two_corpora_make_one_conditioned_dataset(data_root: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "both"
    assert main(["data", "build", "--source", "pop909,chopin", "--data-root", str(data_root),
                 "--config", str(CONDITIONED), "--out", str(out), "--jobs", "1",
                 "--no-progress", "--transpose=-2..1", "--val-fraction", "0.2",
                 "--test-fraction", "0.2"]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    built = MelodyTokenizer.from_dict(manifest["tokenizer"])
    # The shipped config pins the slots: pop and romantic keep theirs, nothing is added.
    assert built.style_slots == conditioned().style_slots
    assert built.style_slots["pop"] == 5 and built.style_slots["romantic"] == 7
    assert built.has_roles and manifest["source"] == "pop909,chopin"
    assert [s["label"] for s in manifest["sources"]] == ["pop909", "chopin"]

    names = [p for split in SPLITS for p in manifest["splits"][split]["pieces"]]
    assert len(names) == len(set(names)) == POP_SONGS + CHOPIN_PIECES
    assert sum(n.startswith("pop909:pop909/") for n in names) == POP_SONGS
    assert sum(n.startswith("chopin:chopin/") for n in names) == CHOPIN_PIECES
    for split in SPLITS:
        assert manifest["splits"][split]["num_pieces"] >= 1, split
        for name, shift, ids in sequences(out, split):
            info = manifest["pieces"][name]
            style = "pop" if name.startswith("pop909:") else "romantic"
            assert info["style"] == style and info["source"] == name.split(":")[0]
            assert ids[:2] == [built.bos_id, built.style_id(style)], name
            assert ids[-1] == built.eos_id
            stream = StreamingDetokenizer(built)
            notes = stream.feed_many(ids)
            assert stream.skipped == 0
            number = int(name.rsplit("/", 1)[1].removeprefix("op").removesuffix(".mid"))
            by_role = {role: sorted(n.pitch for n in notes if n.role == role)
                       for role in ("lead", "accompaniment", "any")}
            if style == "pop":
                assert info["roles"] == ["lead", "accompaniment"]
                assert by_role["lead"] == sorted(p + shift for p in pop_melody(number))
                assert by_role["accompaniment"] == sorted(p + shift for p in pop_piano(number))
                assert not by_role["any"]
            else:
                assert info["roles"] == ["any"]
                assert by_role["any"] == sorted(p + shift for p in chopin_piece(number))
                assert not by_role["lead"] and not by_role["accompaniment"]

    table = manifest["table"]
    assert set(table["styles"]) == {"pop", "romantic"}
    assert set(table["sources"]) == {"pop909", "chopin"}
    for style, source, count, per_piece, roles in (
            ("pop", "pop909", POP_SONGS, 20, {"lead": POP_SONGS, "accompaniment": POP_SONGS}),
            ("romantic", "chopin", CHOPIN_PIECES, 12, {"any": CHOPIN_PIECES})):
        row = table["styles"][style]
        assert row == {k: v for k, v in table["sources"][source].items() if k != "slot"} | {
            "slot": built.style_slots[style]}
        assert sum(row["pieces"].values()) == count
        assert row["notes"] == {s: per_piece * row["pieces"][s] for s in SPLITS}
        assert row["roles"] == roles
        # Tokens: the untransposed length of each piece, once; written: with every copy.
        lengths = {s: {} for s in SPLITS}
        for split in SPLITS:
            for name, _, ids in sequences(out, split):
                if manifest["pieces"][name]["style"] == style:
                    lengths[split].setdefault(name, len(ids))
                    if split == "train":
                        row["train_tokens_written"] -= len(ids)
        assert row["tokens"] == {s: sum(lengths[s].values()) for s in SPLITS}
        assert row["train_tokens_written"] == 0
    # The printed table: one line per style with its slot, pieces and roles.
    pop_line = next(x for x in printed.splitlines() if x.strip().startswith("pop "))
    pieces = "/".join(str(table["styles"]["pop"]["pieces"][s]) for s in SPLITS)
    assert re.search(rf"^\s*pop\s+5\s+{pieces}\s", pop_line), pop_line
    assert pop_line.endswith("accompaniment 7, lead 7")
    assert any(x.strip().startswith("pop909 ") for x in printed.splitlines())
    assert "style slots: 0 any, 1 baroque," in printed


def _seed_drawing_every_split(groups: list[list[str]]) -> int:
    """A seed whose hash draws put a piece of each group in validation and in test.

    A small dataset whose draws leave a split empty gives it a piece anyway (its lowest
    draw), and that stand-in depends on the other pieces: the agreement below holds for
    the draws, so the test picks a seed that needs no stand-in.
    """
    for seed in range(200):
        if all(any(0 <= splits._split_draw(n, seed) < 0.2 for n in names)
               and any(0.2 <= splits._split_draw(n, seed) < 0.4 for n in names)
               for names in groups):
            return seed
    raise AssertionError("no seed in 0..199 draws every split")


def test_the_split_agrees_with_a_build_of_each_source_alone(data_root: Path,
                                                            tmp_path: Path) -> None:
    seed = _seed_drawing_every_split([
        [f"pop909/{n:03d}/{n:03d}.mid" for n in range(POP_SONGS)],
        [f"chopin/op{n:02d}.mid" for n in range(CHOPIN_PIECES)]])
    both = build_dataset(["pop909", "chopin"], tmp_path / "both",
                         data_settings(data_root, seed=seed), conditioned(), progress=False)
    for source in ("pop909", "chopin"):
        alone = build_dataset(source, tmp_path / source, data_settings(data_root, seed=seed),
                              conditioned(), progress=False)
        for split in SPLITS:
            mine = alone["splits"][split]["pieces"]
            assert [f"{source}:{name}" for name in mine] == [
                n for n in both["splits"][split]["pieces"] if n.startswith(f"{source}:")]
            # And the hash of the name within its source is what decides.
            assert split_pieces([n.split(":", 1)[1] for n in both["pieces"]
                                 if n.startswith(f"{source}:")], 0.2, 0.2, seed)[split] == mine


def test_pieces_of_the_same_name_in_two_folders_do_not_clash(tmp_path: Path) -> None:
    for side, base in (("a", 60), ("b", 40)):
        for number in range(4):
            write_midi(tmp_path / side / "midi" / f"tune{number}.mid",
                       [("x", [base + number + i for i in range(8)])])
    manifest = build_dataset(f"{tmp_path / 'a' / 'midi'},{tmp_path / 'b' / 'midi'}",
                             tmp_path / "out", DataSettings(jobs=1), progress=False)
    assert set(manifest["pieces"]) == {f"{label}:tune{n}.mid" for n in range(4)
                                       for label in ("midi", "midi-2")}
    assert [s["root"] for s in manifest["sources"]] == [str(tmp_path / "a" / "midi"),
                                                       str(tmp_path / "b" / "midi")]
    # Each kept its own notes: the second folder's tunes lie an octave and more lower.
    for split in SPLITS:
        for name, shift, ids in sequences(tmp_path / "out", split):
            tokenizer = MelodyTokenizer.from_dict(manifest["tokenizer"])
            low = min(n.pitch for n in tokenizer.decode_notes(ids)) - shift
            assert (low < 50) == name.startswith("midi-2:"), name
    assert set(manifest["table"]["styles"]) == {"(none)"}
    assert sum(manifest["table"]["sources"]["midi-2"]["pieces"].values()) == 4


def test_a_file_reached_through_two_sources_is_read_once(tmp_path: Path) -> None:
    folder = tmp_path / "songs"
    for number in range(4):
        write_midi(folder / f"tune{number}.mid", [("x", [60 + number + i for i in range(8)])])
    manifest = build_dataset([str(folder), f"{folder}/."], tmp_path / "out",
                             DataSettings(jobs=1), progress=False)
    assert sorted(manifest["pieces"]) == [f"songs:tune{n}.mid" for n in range(4)]
    duplicates = manifest["skipped"][SKIP_DUPLICATE]
    assert sorted(d["file"] for d in duplicates) == [f"songs-2:tune{n}.mid" for n in range(4)]
    assert all("the same file as songs:tune" in d["detail"] for d in duplicates)


def test_a_style_missing_from_the_config_takes_the_next_free_slot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {spec: [write_midi(tmp_path / spec / f"t{n}.mid",
                               [("lead", [62 + n + i for i in range(8)])]) for n in range(3)]
             for spec in ("klezmer", "fado")}

    def resolve(spec: str, *args: object, **kwargs: object) -> Source:
        return Source(tmp_path / spec, [(f, f.name) for f in files[spec]], [],
                      {f.name: {"style": spec, "licence": "CC0", "corpus": spec}
                       for f in files[spec]})

    monkeypatch.setattr(dataset, "resolve_source", resolve)
    manifest = build_dataset("klezmer,fado", tmp_path / "out", DataSettings(jobs=1),
                             conditioned(), progress=False)
    built = MelodyTokenizer.from_dict(manifest["tokenizer"])
    assert built.style_slots["fado"] == 8 and built.style_slots["klezmer"] == 9
    assert built.style_slots["romantic"] == 7  # the pinned slots stay where they were
    assert {s: r["slot"] for s, r in manifest["table"]["styles"].items()} == {
        "fado": 8, "klezmer": 9}
    for split in SPLITS:
        for name, _, ids in sequences(tmp_path / "out", split):
            assert ids[1] == built.style_id(name.split(":")[0])
            assert manifest["pieces"][name]["roles"] == ["lead"]


def test_the_cli_builds_with_a_saved_vocabulary_and_one_style_for_every_piece(
        data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vocabulary = conditioned().with_styles(["fado"])  # a model's own: slot 8 is taken
    vocabulary.save(tmp_path / "tokenizer.json")
    # pop909 says its songs are pop; --style says every piece is klezmer.
    assert main(["data", "build", "--source", "pop909", "--data-root", str(data_root),
                 "--tokenizer", str(tmp_path / "tokenizer.json"), "--style", "klezmer",
                 "--out", str(tmp_path / "out"), "--jobs", "1", "--no-progress"]) == 0
    assert "9 klezmer" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    built = MelodyTokenizer.from_dict(manifest["tokenizer"])
    assert built.fingerprint == vocabulary.fingerprint
    assert built.style_slots == {**vocabulary.style_slots, "klezmer": 9}
    assert {piece["style"] for piece in manifest["pieces"].values()} == {"klezmer"}
    assert len(manifest["pieces"]) == POP_SONGS
    for split in SPLITS:
        for _, _, ids in sequences(tmp_path / "out", split):
            assert ids[:2] == [built.bos_id, built.style_id("klezmer")]


def test_an_unreadable_saved_vocabulary_is_one_line(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tokenizer.json").write_text("{}")
    assert main(["data", "build", "--source", str(tmp_path), "--tokenizer",
                 str(tmp_path / "tokenizer.json"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'tokenizer.json'}: not a melodyd tokenizer configuration")


# ----------------------------------------------------------------- naming the sources
def test_source_lists_split_on_commas_and_keep_a_folder_whole(tmp_path: Path) -> None:
    odd = tmp_path / "a,b"
    odd.mkdir()
    assert split_source_list(["lieder, pop909", "lieder", " ", str(odd)]) == [
        "lieder", "pop909", str(odd)]
    assert split_source_list("corpus:folk,,chopin") == ["corpus:folk", "chopin"]


def test_all_corpora_is_every_named_corpus_found_plus_the_bundled_ones(
        data_root: Path, tmp_path: Path) -> None:
    assert expand_sources([ALL_CORPORA], data_root) == ["chopin", "pop909", "corpus:all"]
    assert expand_sources([ALL_CORPORA, "chopin"], data_root) == [
        "chopin", "pop909", "corpus:all"]
    assert expand_sources([ALL_CORPORA], data_root, ["pop909,corpus:all"]) == ["chopin"]
    # A corpus that is not there can be excluded all the same (the same command works on
    # a data root without it); a name that is no corpus at all is a typo.
    assert expand_sources([ALL_CORPORA], data_root, ["quartets"]) == [
        "chopin", "pop909", "corpus:all"]
    with pytest.raises(DataError, match="'quartet' is not one of the sources"):
        expand_sources([ALL_CORPORA], data_root, ["quartet"])
    with pytest.raises(DataError, match="no source left"):
        expand_sources(["chopin"], data_root, ["chopin"])
    assert expand_sources([ALL_CORPORA], "") == ["corpus:all"]
    assert expand_sources([ALL_CORPORA], tmp_path / "nowhere") == ["corpus:all"]


def test_the_cli_excludes_a_source(data_root: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["data", "build", "--source", "pop909", "--source", "chopin",
                 "--exclude", "pop909", "--data-root", str(data_root), "--out", str(out),
                 "--jobs", "1", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == "chopin" and set(manifest["table"]["sources"]) == {"chopin"}
    # One source: names as a build of that source alone has always written them.
    assert all(name.startswith("chopin/") for name in manifest["pieces"])
    assert "per style" in capsys.readouterr().out


def test_a_file_name_that_is_not_utf8_is_read_and_named(tmp_path: Path) -> None:
    """A Latin-1 name on a UTF-8 system used to crash the build when the manifest was
    written; the file is read, and its name shows the odd byte as \\xff."""
    import os  # noqa: PLC0415

    folder = tmp_path / "songs"
    for index in range(3):
        write_midi(folder / f"tune{index}.mid", [("lead", pop_melody(index))])
    good = folder / "tune0.mid"
    os.rename(bytes(good), os.fsencode(folder) + b"/caf\xe9.mid")
    manifest = build_dataset(str(folder), tmp_path / "out", DataSettings(jobs=1),
                             MelodyTokenizer(), progress=False)
    names = [name for split in SPLITS for name in manifest["splits"][split]["pieces"]]
    assert "caf\\xe9.mid" in names
    json.loads((tmp_path / "out" / "manifest.json").read_text())


def test_a_source_list_longer_than_a_file_name_is_still_a_list() -> None:
    names = [f"corpus:collection{i:03d}" for i in range(40)]  # > 255 characters together
    assert split_source_list(",".join(names)) == names


def test_a_source_that_converts_nothing_is_reported_and_the_rest_still_build(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from models.core.exceptions import EmptySourceError  # noqa: PLC0415
    from models.data.sources import resolve_sources  # noqa: PLC0415

    tune = write_midi(tmp_path / "good" / "t.mid", [("lead", [60, 62, 64, 65])])

    def resolve(spec: str, *args: object, **kwargs: object) -> Source:
        if spec == "corpus:airdsAirs":
            raise EmptySourceError("corpus:airdsAirs has no convertible scores")
        return Source(tmp_path / "good", [(tune, tune.name)], [], {})

    found = resolve_sources("good,corpus:airdsAirs", resolve=resolve)
    assert [name for _, name in found.items] == ["good:t.mid"]
    assert [(r.name, r.reason) for r in found.unread] == [("corpus:airdsAirs", "not converted")]
    assert "corpus:airdsAirs is left out" in caplog.text
    with pytest.raises(DataError, match="none of the sources"):
        resolve_sources("corpus:airdsAirs,corpus:miscFolk",
                        resolve=lambda *a, **k: (_ for _ in ()).throw(
                            EmptySourceError("nothing")))
