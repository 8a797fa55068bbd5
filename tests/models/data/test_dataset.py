"""``melody data build`` on small folders of generated MIDI files (plus bad ones)."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
import symusic

from bench.hostile_folder import _rmid as _wrap_rmid
from bench.hostile_folder import check_build, huge_delta_midi, make_hostile_folder, smf
from bench.hostile_folder import melody as hostile_melody
from models.cli import main
from models.core.exceptions import ConfigError, DataError
from models.core.settings import DataSettings, load_settings
from models.core.tokenizer import MelodyTokenizer
from models.data import dataset, sources, tokenize_pieces
from models.data.dataset import build_dataset
from models.data.manifest import SPLITS, TokenDataset, load_manifest
from models.data.midifile import read_midi
from models.data.sources import (
    SKIP_DUPLICATE,
    SKIP_EMPTY,
    SKIP_EMPTY_BARS,
    SKIP_NOT_MIDI,
    SKIP_PARSE,
    SKIP_POLYPHONIC,
    SKIP_TOO_LARGE,
    SKIP_TOO_MANY_TOKENS,
)

TPQ = 480


def write_midi(path: Path, notes: list[tuple[float, float, int, int]]) -> Path:
    """A one-track MIDI file of (onset beats, duration beats, pitch, velocity) notes."""
    score = symusic.Score(TPQ)
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    track = symusic.Track(name="melody", program=0, is_drum=False)
    for onset, duration, pitch, velocity in notes:
        track.notes.append(symusic.Note(round(onset * TPQ), round(duration * TPQ), pitch,
                                        velocity))
    score.tracks.append(track)
    path.parent.mkdir(parents=True, exist_ok=True)
    score.dump_midi(str(path))
    return path


def melody(seed: int, length: int = 16, low: int = 55, high: int = 80) -> list[tuple]:
    """A deterministic monophonic line of eighths and quarters."""
    rng = random.Random(seed)
    notes, time = [], 0.0
    for _ in range(length):
        duration = rng.choice([0.5, 1.0])
        notes.append((time, duration, rng.randint(low, high), rng.randint(40, 110)))
        time += duration
    return notes


@pytest.fixture
def midi_folder(tmp_path: Path) -> Path:
    """Twenty monophonic pieces in two subfolders."""
    root = tmp_path / "midi"
    for i in range(20):
        write_midi(root / f"set{i % 2}" / f"tune{i:02d}.mid", melody(i))
    return root


@pytest.fixture
def bad_folder(midi_folder: Path) -> Path:
    """The good pieces plus one corrupt, one empty, one non-MIDI and one polyphonic file."""
    good = (midi_folder / "set0" / "tune00.mid").read_bytes()
    (midi_folder / "corrupt.mid").write_bytes(good[:30])
    write_midi(midi_folder / "empty.mid", [])
    (midi_folder / "zero.mid").write_bytes(b"")  # an interrupted download
    (midi_folder / "notes.midi").write_text("these are not the notes you are looking for\n")
    chords = [(float(b), 1.0, p, 80) for b in range(8) for p in (60, 64, 67)]
    write_midi(midi_folder / "chords.mid", chords)
    return midi_folder


def settings(**changes) -> DataSettings:
    """In-process parsing (jobs=1) keeps these tests quick; one test covers the pool."""
    values = {"jobs": 1, "seed": 0, "val_fraction": 0.1, "test_fraction": 0.1}
    values.update(changes)
    return DataSettings(**values)


def build(source: Path, out: Path, **changes) -> dict:
    return build_dataset(str(source), out, settings(**changes), progress=False)


def all_pieces(manifest: dict) -> dict[str, list[str]]:
    return {split: manifest["splits"][split]["pieces"] for split in SPLITS}


def test_bad_files_are_skipped_with_their_own_reason(bad_folder: Path, tmp_path: Path) -> None:
    manifest = build(bad_folder, tmp_path / "out")
    reasons = {entry["file"]: reason for reason, entries in manifest["skipped"].items()
               for entry in entries}
    assert reasons == {"corrupt.mid": SKIP_PARSE, "empty.mid": SKIP_EMPTY,
                       "zero.mid": SKIP_EMPTY, "notes.midi": SKIP_NOT_MIDI}
    kept = sum(manifest["splits"][s]["num_pieces"] for s in SPLITS)
    assert kept == 21  # the twenty tunes and the chords
    assert manifest["files"] == 25
    on_disk = load_manifest(tmp_path / "out")
    assert on_disk["skipped_counts"] == {SKIP_PARSE: 1, SKIP_EMPTY: 2, SKIP_NOT_MIDI: 1}


def test_monophonic_skips_a_polyphonic_file(bad_folder: Path, tmp_path: Path) -> None:
    manifest = build(bad_folder, tmp_path / "out", monophonic=True)
    polyphonic = [e["file"] for e in manifest["skipped"][SKIP_POLYPHONIC]]
    assert polyphonic == ["chords.mid"]
    pieces = {p for split in all_pieces(manifest).values() for p in split}
    assert "chords.mid" not in pieces
    assert "set0/tune00.mid" in pieces


def test_a_legato_overlap_shorter_than_a_grid_step_is_still_monophonic(tmp_path: Path) -> None:
    notes = [(b * 1.0, 1.02, 60 + b, 80) for b in range(10)]  # each overlaps the next a bit
    write_midi(tmp_path / "src" / "legato.mid", notes)
    write_midi(tmp_path / "src" / "other.mid", melody(1))
    manifest = build(tmp_path / "src", tmp_path / "out", monophonic=True,
                     val_fraction=0.0, test_fraction=0.0)
    assert manifest["skipped"] == {}


def test_too_large_files_are_skipped(midi_folder: Path, tmp_path: Path) -> None:
    write_midi(midi_folder / "long.mid", melody(99, length=400))
    manifest = build(midi_folder, tmp_path / "out", max_file_bytes=1000)
    assert [e["file"] for e in manifest["skipped"][SKIP_TOO_LARGE]] == ["long.mid"]


def test_no_piece_appears_in_two_splits(midi_folder: Path, tmp_path: Path) -> None:
    manifest = build(midi_folder, tmp_path / "out", val_fraction=0.2, test_fraction=0.2)
    splits = all_pieces(manifest)
    seen = [p for pieces in splits.values() for p in pieces]
    assert len(seen) == len(set(seen)) == 20
    # Each piece's split is drawn on its own (a hash), so the counts only follow the
    # fractions on average.
    assert 1 <= len(splits["validation"]) <= 9 and 1 <= len(splits["test"]) <= 9, splits


def test_the_same_seed_gives_the_same_split_and_bytes(midi_folder: Path, tmp_path: Path) -> None:
    first = build(midi_folder, tmp_path / "a", seed=7)
    second = build(midi_folder, tmp_path / "b", seed=7)
    other = build(midi_folder, tmp_path / "c", seed=8)
    assert all_pieces(first) == all_pieces(second)
    assert first["content_hash"] == second["content_hash"]
    for split in SPLITS:
        a = np.load(tmp_path / "a" / f"{split}.tokens.npy")
        b = np.load(tmp_path / "b" / f"{split}.tokens.npy")
        assert np.array_equal(a, b)
    assert all_pieces(other) != all_pieces(first)
    assert other["content_hash"] != first["content_hash"]


def test_transposition_only_adds_train_sequences(midi_folder: Path, tmp_path: Path) -> None:
    plain = build(midi_folder, tmp_path / "plain")
    augmented = build(midi_folder, tmp_path / "aug", transpose_min=-2, transpose_max=3)
    assert all_pieces(plain) == all_pieces(augmented)
    for split in ("validation", "test"):
        assert np.array_equal(np.load(tmp_path / "plain" / f"{split}.tokens.npy"),
                              np.load(tmp_path / "aug" / f"{split}.tokens.npy"))
        assert augmented["splits"][split]["transpositions"] == [
            [0]] * augmented["splits"][split]["num_pieces"]
    train = augmented["splits"]["train"]
    assert train["num_sequences"] == 6 * train["num_pieces"]
    assert train["transpositions"][0] == [0, -2, -1, 1, 2, 3]
    # The first sequence of every piece is the untransposed piece itself.
    plain_train = TokenDataset(tmp_path / "plain", "train")
    aug_train = TokenDataset(tmp_path / "aug", "train")
    assert np.array_equal(aug_train[0], plain_train[0])
    tokenizer = aug_train.tokenizer
    up = tokenizer.decode_notes(aug_train[5])
    assert [n.pitch for n in up] == [n.pitch + 3 for n in tokenizer.decode_notes(plain_train[0])]


def test_a_transposition_leaving_the_pitch_range_is_skipped(tmp_path: Path) -> None:
    top = MelodyTokenizer().settings.pitch_max
    for i in range(3):
        write_midi(tmp_path / "src" / f"high{i}.mid", melody(i, low=top - 4, high=top))
    manifest = build(tmp_path / "src", tmp_path / "out", val_fraction=0.0, test_fraction=0.0,
                     transpose_min=-1, transpose_max=6)
    for shifts in manifest["splits"]["train"]["transpositions"]:
        assert 0 in shifts and -1 in shifts
        assert 6 not in shifts
    dataset = TokenDataset(tmp_path / "out", "train")
    pitches = [n.pitch for i in range(len(dataset))
               for n in dataset.tokenizer.decode_notes(dataset[i])]
    assert max(pitches) <= top


def test_arrays_hold_each_piece_between_bos_and_eos(midi_folder: Path, tmp_path: Path) -> None:
    build(midi_folder, tmp_path / "out", transpose_min=-1, transpose_max=1)
    for split in SPLITS:
        dataset = TokenDataset(tmp_path / "out", split)
        tokenizer = dataset.tokenizer
        assert dataset.tokens.dtype == np.uint16 and dataset.offsets.dtype == np.int64
        assert isinstance(dataset.tokens, np.memmap)
        assert dataset.offsets[0] == 0 and dataset.offsets[-1] == len(dataset.tokens)
        assert len(dataset) == dataset.manifest["splits"][split]["num_sequences"]
        for i in range(len(dataset)):
            sequence = dataset[i]
            assert sequence[0] == tokenizer.bos_id and sequence[-1] == tokenizer.eos_id
            assert tokenizer.eos_id not in sequence[:-1]


def test_worker_processes_give_the_same_dataset(midi_folder: Path, tmp_path: Path) -> None:
    serial = build(midi_folder, tmp_path / "one", jobs=1)
    parallel = build(midi_folder, tmp_path / "two", jobs=2)
    assert parallel["content_hash"] == serial["content_hash"]


def test_a_folder_without_midi_files_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "readme.txt").write_text("nothing here")
    with pytest.raises(DataError, match=r"no \.mid"):
        build(tmp_path / "src", tmp_path / "out")
    with pytest.raises(DataError, match="not found"):
        build(tmp_path / "absent", tmp_path / "out")


def test_only_bad_files_is_a_data_error_naming_the_reasons(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.mid").write_text("text")
    with pytest.raises(DataError, match="not MIDI"):
        build(tmp_path / "src", tmp_path / "out")


@pytest.mark.parametrize("damage", ["no-folder", "no-manifest", "bad-json", "wrong-format",
                                    "missing-array", "short-offsets"])
def test_token_dataset_errors_tell_to_run_data_build(midi_folder: Path, tmp_path: Path,
                                                     damage: str) -> None:
    out = tmp_path / "out"
    build(midi_folder, out)
    if damage == "no-folder":
        out = tmp_path / "nowhere"
    elif damage == "no-manifest":
        (out / "manifest.json").unlink()
    elif damage == "bad-json":
        (out / "manifest.json").write_text("{not json")
    elif damage == "wrong-format":
        (out / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    elif damage == "missing-array":
        (out / "train.tokens.npy").unlink()
    elif damage == "short-offsets":
        np.save(out / "train.offsets.npy", np.zeros(2, dtype=np.int64))
    with pytest.raises(DataError, match="melody data build"):
        TokenDataset(out, "train")


def test_token_dataset_rejects_an_unknown_split(midi_folder: Path, tmp_path: Path) -> None:
    build(midi_folder, tmp_path / "out")
    with pytest.raises(DataError, match="valid"):
        TokenDataset(tmp_path / "out", "valid")


def test_cli_builds_and_prints_split_sizes(bad_folder: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["data", "build", "--source", str(bad_folder), "--out", str(out),
                 "--jobs", "1", "--transpose", "-2..1", "--val-fraction", "0.2", "--seed", "3",
                 "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    manifest = load_manifest(out)
    assert manifest["settings"]["transpose_min"] == -2
    assert manifest["settings"]["val_fraction"] == 0.2
    assert manifest["settings"]["seed"] == 3
    for split in SPLITS:
        info = manifest["splits"][split]
        assert f"{split}" in printed and str(info["tokens"]) in printed
    assert SKIP_NOT_MIDI in printed and "notes.midi" in printed


def test_cli_reports_a_missing_source_on_one_line(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["data", "build", "--source", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1


def test_cli_flags_override_the_config_file(midi_folder: Path, tmp_path: Path) -> None:
    config = tmp_path / "mine.toml"
    config.write_text("[data]\nseed = 5\nval_fraction = 0.3\njobs = 1\n")
    out = tmp_path / "out"
    assert main(["data", "build", "--source", str(midi_folder), "--out", str(out),
                 "--config", str(config), "--seed", "9", "--no-progress"]) == 0
    used = load_manifest(out)["settings"]
    assert used["seed"] == 9 and used["val_fraction"] == 0.3


@pytest.mark.parametrize(("toml", "pieces"), [
    pytest.param("[data]\nval_fractoin = 0.2\n", ["val_fractoin", "did you mean 'val_fraction'"],
                 id="unknown-key"),
    pytest.param("[data]\nval_fraction = 0.9\n", ["val_fraction", "0.9"], id="out-of-range"),
    pytest.param("[data]\nmin_notes = 'many'\n", ["min_notes", "'many'"], id="wrong-type"),
    pytest.param("[dta]\nseed = 1\n", ["[dta]", "did you mean 'data'"], id="unknown-section"),
    pytest.param("[data]\nval_fraction = 0.5\ntest_fraction = 0.5\n",
                 ["val_fraction + test_fraction", "0.5 + 0.5"], id="no-train-left"),
    pytest.param("[tokens]\ntime_signatures = [44]\n", ["time_signatures", "44"],
                 id="signature-not-a-string"),
    pytest.param("[tokens]\ntime_signatures = ['4/3']\n", ["time_signatures", "'4/3'"],
                 id="signature-not-a-power-of-two"),
    pytest.param("[tokens]\ntime_signatures = ['7/32']\n", ["time_signatures", "'7/32'"],
                 id="signature-beyond-the-vocabulary"),
    pytest.param("[tokens]\npitch_min = 90\npitch_max = 60\n", ["pitch_min", "90 > 60"],
                 id="pitch-range-reversed"),
])
def test_config_errors_name_the_key_and_the_value(tmp_path: Path, toml: str,
                                                  pieces: list[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    for piece in pieces:
        assert piece in str(info.value)


def test_cli_config_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[data]\nseed = -4\n")
    code = main(["data", "build", "--source", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and "seed" in err and "-4" in err


def test_flag_values_are_range_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["data", "build", "--source", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--val-fraction", "0.8"])
    err = capsys.readouterr().err
    assert code == 2 and "val_fraction" in err and "0.8" in err


def test_an_unexpected_error_on_one_file_is_recorded(midi_folder: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real = tokenize_pieces.tokenize_file

    def flaky(path: Path, name: str, *args, **kwargs):
        if name == "set1/tune03.mid":
            raise ZeroDivisionError("a library bug")
        return real(path, name, *args, **kwargs)

    monkeypatch.setattr(tokenize_pieces, "tokenize_file", flaky)
    manifest = build(midi_folder, tmp_path / "out")
    [entry] = manifest["skipped"][SKIP_PARSE]
    assert entry["file"] == "set1/tune03.mid" and "ZeroDivisionError" in entry["detail"]


# ----------------------------------------------------------------- hostile input (issue 12)
def pieces_lengths(out: Path) -> list[int]:
    """Token length of every sequence of every split of a built dataset."""
    lengths = []
    for split in SPLITS:
        data = TokenDataset(out, split)
        lengths += [len(data[i]) for i in range(len(data))]
    return lengths


def test_every_entry_of_a_hostile_folder_is_kept_or_skipped_with_its_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = make_hostile_folder(tmp_path / "src")
    # Every score MidiTok is handed is recorded: the files that span millions of bars
    # must be refused before it runs (it took 56 s and 4 GB on one of them).
    encoded: list[float] = []
    real = MelodyTokenizer.encode_score

    def spy(self: MelodyTokenizer, score: symusic.Score, **kwargs) -> list[int]:
        onsets = [n.time for t in score.tracks for n in t.notes]
        encoded.append(max(onsets, default=0) / score.ticks_per_quarter)
        return real(self, score, **kwargs)

    monkeypatch.setattr(MelodyTokenizer, "encode_score", spy)
    data_settings = settings()
    manifest = build_dataset(str(tmp_path / "src"), tmp_path / "out", data_settings,
                             progress=False)
    row = check_build(tmp_path / "out", manifest, expected, data_settings)
    assert row["problems"] == []
    assert manifest["files"] == len(expected) == row["entries"]
    assert {"huge_delta.mid", "case/Upper.Midi", "case/MIXED.mId", "karaoke.kar",
            "dangling.mid", "loop_a.mid", "circle", "pipe.mid", "zero.mid", "text.mid",
            "tpq_zero.mid", "resample_overflow.mid"} <= set(expected)
    details = {entry["file"]: entry["detail"] for entries in manifest["skipped"].values()
               for entry in entries}
    assert "max_tokens 250000" in details["huge_delta.mid"]
    assert "max_empty_bars 64" in details["sparse.mid"]
    assert "0 ticks per quarter" in details["tpq_zero.mid"]
    assert "OverflowError" in details["resample_overflow.mid"]
    assert "does not exist" in details["dangling.mid"]
    assert "FIFO" in details["pipe.mid"]
    assert details["alias.mid"] == "the same file as good/tune1.mid"
    assert max(encoded) < 1000, "a score spanning millions of beats reached MidiTok"
    assert max(pieces_lengths(tmp_path / "out")) <= data_settings.max_tokens


def test_the_hostile_folder_builds_the_same_in_worker_processes(tmp_path: Path) -> None:
    expected = make_hostile_folder(tmp_path / "src")
    data_settings = settings(jobs=2)
    manifest = build_dataset(str(tmp_path / "src"), tmp_path / "out", data_settings,
                             progress=False)
    assert check_build(tmp_path / "out", manifest, expected, data_settings)["problems"] == []


@pytest.mark.parametrize(("name", "data", "reason", "detail"), [
    ("huge_delta.mid", huge_delta_midi(), SKIP_TOO_MANY_TOKENS, "at least 3670021 tokens"),
    ("tpq_zero.mid", smf(hostile_melody(12), division=0), SKIP_PARSE, "0 ticks per quarter"),
    ("wrapped.mid", smf(hostile_melody(18, gap=0x0FFFFFFF, lead=0x0FFFFFFF)), SKIP_PARSE,
     "overflow"),
], ids=["huge-delta", "tpq-zero", "int32-wrap"])
def test_tokenize_file_refuses_without_raising(tmp_path: Path, name: str, data: bytes,
                                               reason: str, detail: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    result = tokenize_pieces.tokenize_file(path, name, MelodyTokenizer(), settings())
    assert result.tokens is None
    assert result.reason == reason and detail in result.detail


def test_a_piece_over_max_tokens_is_skipped_after_tokenizing(midi_folder: Path,
                                                             tmp_path: Path) -> None:
    # Few bars, many notes: the bar count before tokenizing cannot tell, the tokens do.
    write_midi(midi_folder / "long.mid", melody(5, length=120))
    manifest = build(midi_folder, tmp_path / "out", max_tokens=300)
    [entry] = manifest["skipped"][SKIP_TOO_MANY_TOKENS]
    assert entry["file"] == "long.mid"
    assert re.fullmatch(r"\d+ tokens > max_tokens 300 \(120 notes\)", entry["detail"])
    assert max(pieces_lengths(tmp_path / "out")) <= 300


def test_empty_bars_are_counted_exactly_on_the_tokens(midi_folder: Path,
                                                      tmp_path: Path) -> None:
    # Bars 0-1 and 9-10 hold notes: seven empty 4/4 bars lie between them, which the
    # check before tokenizing (counting 6-beat bars, the longest) sees as at least four.
    notes = [(float(b), 1.0, 60 + b % 5, 80) for b in range(8)]
    notes += [(36.0 + b, 1.0, 62, 80) for b in range(8)]
    write_midi(midi_folder / "gap.mid", notes)
    manifest = build(midi_folder, tmp_path / "a", max_empty_bars=6)
    [entry] = manifest["skipped"][SKIP_EMPTY_BARS]
    assert entry == {"file": "gap.mid",
                     "detail": "7 bars in a row without a note > max_empty_bars 6"}
    kept = build(midi_folder, tmp_path / "b", max_empty_bars=7)
    assert kept["skipped"] == {}


def test_leading_empty_bars_count(tmp_path: Path) -> None:
    tokenizer = MelodyTokenizer()
    path = write_midi(tmp_path / "late.mid", [(40.0 + b, 1.0, 60, 80) for b in range(8)])
    result = tokenize_pieces.tokenize_file(path, "late.mid", tokenizer, settings(max_empty_bars=9))
    assert result.reason == SKIP_EMPTY_BARS and result.detail.startswith("10 bars")
    ids = np.asarray(tokenizer.encode_file(path), dtype=np.uint16)
    assert tokenize_pieces.longest_empty_run(ids, tokenizer) == 10


@pytest.mark.parametrize("name", ["a.Midi", "b.mId", "c.MID", "d.kar", "e.KAR", "f.rmi"])
def test_midi_files_load_whatever_the_case_of_their_suffix(tmp_path: Path, name: str) -> None:
    data = smf(hostile_melody(12))
    (tmp_path / name).write_bytes(_wrap_rmid(data) if name.endswith(".rmi") else data)
    assert len(read_midi(tmp_path / name).notes) == 12
    if not name.endswith(".rmi"):  # encode_file leaves RIFF unwrapping to load_score
        assert MelodyTokenizer().encode_file(tmp_path / name)[0] == MelodyTokenizer().bos_id
    files, skipped = sources.scan_folder(tmp_path)
    assert [f.name for f in files] == [name] and skipped == []


def test_a_link_is_reported_and_the_file_read_under_its_own_name(tmp_path: Path) -> None:
    write_midi(tmp_path / "z" / "real.mid", melody(1))
    (tmp_path / "a_link.mid").symlink_to("z/real.mid")
    (tmp_path / "a_folder").symlink_to("z")
    files, skipped = sources.scan_folder(tmp_path)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["z/real.mid"]
    assert sorted((s.name, s.reason, s.detail) for s in skipped) == [
        ("a_folder", SKIP_DUPLICATE, "the same folder as z"),
        ("a_link.mid", SKIP_DUPLICATE, "the same file as z/real.mid")]


def test_a_link_to_a_folder_outside_is_read(tmp_path: Path) -> None:
    write_midi(tmp_path / "elsewhere" / "tune.mid", melody(1))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "linked").symlink_to(tmp_path / "elsewhere")
    files, skipped = sources.scan_folder(tmp_path / "src")
    assert [f.relative_to(tmp_path / "src").as_posix() for f in files] == ["linked/tune.mid"]
    assert skipped == []


def test_a_folder_of_other_files_names_what_it_found(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "readme.txt").write_text("nothing here")
    os.mkfifo(tmp_path / "src" / "pipe")
    with pytest.raises(DataError,
                       match=r"no \.mid, \.midi, \.kar, \.rmi, \.mxl, .*\.abc files .* 2 other"):
        build(tmp_path / "src", tmp_path / "out")


@pytest.mark.parametrize("toml", ["[data]\nmax_tokens = 3\n", "[data]\nmax_empty_bars = -1\n"])
def test_piece_limits_are_range_checked(tmp_path: Path, toml: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    key, value = toml.split("\n")[1].split(" = ")
    with pytest.raises(ConfigError, match=f"{key}.*{value}"):
        load_settings(config)


def test_default_limits_come_from_config_toml() -> None:
    data = load_settings().data
    assert data.max_tokens == DataSettings().max_tokens == 250_000
    assert data.max_empty_bars == DataSettings().max_empty_bars == 64


# ----------------------------------------------------------------- style and role tokens
def write_song(path: Path, seed: int) -> Path:
    """A two-track MIDI file named by role, as the corpus cache writes them."""
    score = symusic.Score(TPQ)
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    for role, low, high in (("lead", 67, 79), ("accompaniment", 43, 55)):
        track = symusic.Track(name=role, program=0, is_drum=False)
        for onset, duration, pitch, velocity in melody(seed + high, 12, low, high):
            track.notes.append(symusic.Note(round(onset * TPQ), round(duration * TPQ), pitch,
                                            velocity))
        score.tracks.append(track)
    path.parent.mkdir(parents=True, exist_ok=True)
    score.dump_midi(str(path))
    return path


def test_a_conditioned_build_writes_each_piece_s_style_and_roles(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from models.core.settings import TokensSettings  # noqa: PLC0415
    from models.core.streaming import StreamingDetokenizer  # noqa: PLC0415
    from models.data.sources import Source  # noqa: PLC0415

    root = tmp_path / "songs"
    files = [write_song(root / f"song{i:02d}.mid", i) for i in range(12)]
    styles = {f.name: ("romantic" if i % 3 == 0 else "pop" if i % 3 == 1 else None)
              for i, f in enumerate(files)}
    source = Source(root, [(f, f.name) for f in files], [],
                    {name: {"style": style, "licence": "CC0", "corpus": "test"}
                     for name, style in styles.items()})
    monkeypatch.setattr(dataset, "resolve_source", lambda *args, **kwargs: source)
    tokenizer = MelodyTokenizer(TokensSettings(style_slots=4, roles=True))
    manifest = build_dataset("songs", tmp_path / "out",
                             settings(jobs=1, transpose_min=-2, transpose_max=2),
                             tokenizer, progress=False)
    built = MelodyTokenizer.from_dict(manifest["tokenizer"])
    assert built.fingerprint == tokenizer.fingerprint
    assert built.style_slots == {"any": 0, "pop": 1, "romantic": 2}
    for split in SPLITS:
        data = TokenDataset(tmp_path / "out", split)
        info = manifest["splits"][split]
        names = [name for name, shifts in zip(info["pieces"], info["transpositions"],
                                              strict=True) for _ in shifts]
        for index, name in enumerate(names):
            ids = [int(i) for i in data[index]]
            assert ids[:2] == [built.bos_id, built.style_id(styles[name])], name
            stream = StreamingDetokenizer(built)
            notes = stream.feed_many(ids)
            assert stream.skipped == 0
            lead = [n.pitch for n in notes if n.role == "lead"]
            accompaniment = [n.pitch for n in notes if n.role == "accompaniment"]
            assert len(lead) == len(accompaniment) == 12
            # Transposed copies move pitches only: lead stays above the accompaniment.
            assert min(lead) > max(accompaniment)
    assert len(TokenDataset(tmp_path / "out", "train")) > manifest["splits"]["train"][
        "num_pieces"]


def test_too_many_styles_for_the_slots_is_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from models.core.settings import TokensSettings  # noqa: PLC0415
    from models.data.sources import Source  # noqa: PLC0415

    root = tmp_path / "songs"
    files = [write_song(root / f"song{i}.mid", i) for i in range(3)]
    source = Source(root, [(f, f.name) for f in files], [],
                    {f.name: {"style": f"style{i}"} for i, f in enumerate(files)})
    monkeypatch.setattr(dataset, "resolve_source", lambda *args, **kwargs: source)
    with pytest.raises(DataError, match="free style slots"):
        build_dataset("songs", tmp_path / "out", settings(jobs=1),
                      MelodyTokenizer(TokensSettings(style_slots=3)), progress=False)
