"""``melody add-style`` onto a style-conditioned base: the new style is a new style token.

The base is the tiny conditioned checkpoint of the test session (8 style slots: any,
baroque, romantic, pop named, 4 free) and the folder a few generated two-track MIDI files.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="fine-tuning needs torch (the train extra)")

import symusic
import torch

from engine.decoder import StyleDecoder
from engine.model import load_model
from engine.server_cli import load_decoders
from export.metadata import read_card
from export.pipeline import export_checkpoint
from models.cli import main as melody
from models.core.notes import Note
from models.core.protocol.messages import GenerateRequest, SamplingParams
from models.core.settings import EngineSettings
from models.core.tokenizer import MelodyTokenizer
from models.train.checkpoint import read_checkpoint, save_checkpoint

pytestmark = [pytest.mark.torch, pytest.mark.slow]

NAME = "quartetlike"
# The tiny base names baroque, romantic and pop (slots 1-3): the next free slot is 4.
SLOT = 4
TPQ = 480


def write_piece(path: Path, seed: int, bars: int = 12) -> Path:
    """A two-track piece (a line of eighths over whole-bar chords) in 4/4."""
    rng = random.Random(seed)
    score = symusic.Score(TPQ)
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    tune = symusic.Track(name="Violin I", program=40, is_drum=False)
    chords = symusic.Track(name="Cello", program=42, is_drum=False)
    for bar in range(bars):
        root = rng.choice([48, 50, 53, 55])
        for pitch in (root, root + 4, root + 7):
            chords.notes.append(symusic.Note(bar * 4 * TPQ, 4 * TPQ, pitch, 60))
        for eighth in range(8):
            chords_start = (bar * 8 + eighth) * TPQ // 2
            tune.notes.append(symusic.Note(chords_start, TPQ // 2, rng.randint(67, 84), 80))
    score.tracks.extend([tune, chords])
    score.dump_midi(str(path))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("quartets")
    for index in range(8):
        write_piece(root / f"quartet{index}.mid", index)
    return root


def add_style(base: Path, folder: Path, work: Path, out: Path, *extra: str,
              name: str = NAME) -> int:
    return melody(["add-style", name, "--source", str(folder), "--base", str(base),
                   "--work", str(work), "--out", str(out), "--steps", "4",
                   "--batch-size", "2", "--threads", "1", *extra])


# What the base's own dataset was (a shipped base names its corpora and licences).
BASE_DATA = {"source": "lieder,pop909", "licences": ["CC0 1.0", "MIT"],
             "corpora": {"lieder": {"licence": "CC0 1.0", "pieces": 5},
                         "pop909": {"licence": "MIT", "pieces": 7}}}


@pytest.fixture(scope="module")
def base(tiny_conditioned_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny conditioned checkpoint, with the sources of a trained base."""
    state = read_checkpoint(tiny_conditioned_checkpoint)
    state["data"] = {**state["data"], **BASE_DATA}
    return save_checkpoint(tmp_path_factory.mktemp("base") / "base.pt", state)


@pytest.fixture(scope="module")
def added(base: Path, folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One add-style run with the recipe's defaults (only the new token learns)."""
    root = tmp_path_factory.mktemp("added")
    assert add_style(base, folder, root / "work", root / "styles") == 0
    return {"work": root / "work", "styles": root / "styles",
            "model": root / "styles" / f"{NAME}.onnx"}


def test_the_new_style_takes_the_first_free_slot_of_the_card(added: dict, folder: Path,
                                                            ) -> None:
    card = read_card(added["model"])
    assert card.style == NAME
    assert card.style_slots == {"any": 0, "baroque": 1, "romantic": 2, "pop": 3, NAME: SLOT}
    assert card.tokenizer["settings"]["style_slots"] == 8
    # The card names the base's sources and the folder's.
    assert card.training["sources"] == ["lieder,pop909", str(folder)]
    assert card.training["corpus"] == str(folder)
    assert card.training["corpora"] == {**BASE_DATA["corpora"],
                                        folder.name: {"licence": "unknown", "pieces": 8}}
    assert card.training["licences"] == ["CC0 1.0", "MIT"]


def test_every_piece_of_the_folder_is_labelled_with_the_new_style(added: dict) -> None:
    manifest = json.loads((added["work"] / "data" / "manifest.json").read_text())
    assert {piece["style"] for piece in manifest["pieces"].values()} == {NAME}
    assert len(manifest["pieces"]) == 8
    tokenizer = MelodyTokenizer.from_dict(manifest["tokenizer"])
    tokens = np.load(added["work"] / "data" / "train.tokens.npy")
    assert tokens[1] == tokenizer.style_id(NAME) == tokenizer.style_ids[SLOT]


def test_only_the_new_style_token_learned(added: dict, base: Path) -> None:
    weights = read_checkpoint(base)["model"]
    tuned_state = read_checkpoint(added["work"] / "run" / "best.pt")
    tuned = tuned_state["model"]
    tokenizer = MelodyTokenizer.from_dict(tuned_state["tokenizer"])
    row = tokenizer.style_id(NAME)
    assert tuned_state["train_config"]["freeze"] == "all"
    assert tuned_state["train_config"]["new_styles"] == {NAME: row}
    for name, before in weights.items():
        if name in ("wte.weight", "lm_head.weight"):
            others = [i for i in range(before.shape[0]) if i != row]
            assert torch.equal(tuned[name][others], before[others]), name
        else:
            assert torch.equal(tuned[name], before), f"{name} changed"
    # The new row started as "any style"'s and moved from there.
    any_row = weights["wte.weight"][tokenizer.style_ids[0]]
    assert not torch.equal(tuned["wte.weight"][row], weights["wte.weight"][row])
    assert not torch.equal(tuned["wte.weight"][row], any_row)
    assert torch.dist(tuned["wte.weight"][row], any_row) < torch.dist(
        weights["wte.weight"][row], any_row)


def test_the_engine_plays_the_new_style_and_every_old_one(added: dict) -> None:
    decoders = load_decoders([], [str(added["model"])], EngineSettings())
    assert set(decoders) == {"any", "baroque", "romantic", "pop", NAME}
    decoder = decoders[NAME]
    assert all(d is decoder for d in decoders.values())  # one model, one decoder
    tokenizer = decoder.tokenizer
    assert decoder.model.facts()["style_tokens"] == sorted(["any", "baroque", "romantic",
                                                            "pop", NAME])
    for style, slot in (("baroque", 1), ("pop", 3), (NAME, SLOT)):
        generation = decoder.start("s", GenerateRequest(
            seed=(), start_beat=0.0, bars=1, style=style, sampling=SamplingParams(seed=1)))
        # The engine prepends the style's token after BOS.
        assert generation.stream[:2] == [tokenizer.bos_id, tokenizer.style_ids[slot]]
        assert tokenizer.tokens[generation.stream[1]] == f"Style_{slot}"
        while not generation.done:
            decoder.step([generation])
        assert generation.reason in ("complete", "max_tokens", "eos")


def test_old_styles_play_exactly_as_the_base_plays_them(added: dict, base: Path,
                                                       tmp_path: Path) -> None:
    # Only NAME's embedding row differs; its other use, the Style token's output logit, is
    # never sampled (the engine's grammar allows a Style only where the prompt has one).
    before = export_checkpoint(base, tmp_path / "base.onnx", style="any").path
    after = export_checkpoint(added["work"] / "run" / "best.pt", tmp_path / "after.onnx",
                              style=NAME).path
    seed = tuple(Note(beat / 2, 0.5, 60 + (beat * 5) % 12, 80) for beat in range(8))
    for style in ("any", "baroque", "pop"):
        streams = []
        for path in (before, after):
            decoder = StyleDecoder(load_model(path), allow_eos=False)
            generation = decoder.start("s", GenerateRequest(
                seed=seed, start_beat=4.0, bars=2, style=style,
                sampling=SamplingParams(greedy=True)))
            while not generation.done:
                decoder.step([generation])
            streams.append(generation.stream)
        assert streams[0] == streams[1], style


def test_upper_blocks_can_learn_too_and_the_old_rows_stay(
        tiny_conditioned_checkpoint: Path, folder: Path, tmp_path: Path) -> None:
    assert add_style(tiny_conditioned_checkpoint, folder, tmp_path / "work",
                     tmp_path / "styles", "--freeze", "1", "--lr", "1e-2") == 0
    base = read_checkpoint(tiny_conditioned_checkpoint)["model"]
    tuned_state = read_checkpoint(tmp_path / "work" / "run" / "best.pt")
    tuned = tuned_state["model"]
    row = MelodyTokenizer.from_dict(tuned_state["tokenizer"]).style_id(NAME)
    others = [i for i in range(base["wte.weight"].shape[0]) if i != row]
    assert torch.equal(tuned["wte.weight"][others], base["wte.weight"][others])
    assert not torch.equal(tuned["wte.weight"][row], base["wte.weight"][row])
    assert torch.equal(tuned["blocks.0.attn.qkv.weight"], base["blocks.0.attn.qkv.weight"])
    assert any(not torch.equal(tuned[n], base[n]) for n in base if n.startswith("blocks.1."))
    assert read_card(tmp_path / "styles" / f"{NAME}.onnx").style_slots[NAME] == SLOT


@pytest.mark.parametrize("taken", [("pop", 3), ("any", 0)], ids=["pop", "any"])
def test_a_name_the_base_already_plays_is_one_clear_error(
        tiny_conditioned_checkpoint: Path, folder: Path, tmp_path: Path, capsys,
        taken: tuple[str, int]) -> None:
    name, slot = taken
    assert add_style(tiny_conditioned_checkpoint, folder, tmp_path / "w", tmp_path / "s",
                     name=name) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"style {name!r} is already slot {slot} of the base model" in err[0]
    assert not (tmp_path / "w").exists()


def test_a_base_without_a_free_slot_is_one_clear_error(folder: Path, tmp_path: Path,
                                                        capsys) -> None:
    from export.tiny import tiny_checkpoint_state  # noqa: PLC0415

    full = save_checkpoint(tmp_path / "full.pt", tiny_checkpoint_state(
        tokens={"style_slots": 3, "styles": ("folk", "pop")}, width={"n_embd": 32}))
    assert add_style(full, folder, tmp_path / "w", tmp_path / "s") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "no free style slot: all 3 are taken (any, folk, pop)" in err[0]


def test_running_again_skips_every_finished_step(
        tiny_conditioned_checkpoint: Path, folder: Path, tmp_path: Path, caplog) -> None:
    work, styles = tmp_path / "work", tmp_path / "styles"
    assert add_style(tiny_conditioned_checkpoint, folder, work, styles) == 0
    model = styles / f"{NAME}.onnx"
    outputs = [work / "data" / "manifest.json", work / "run" / "last.pt", model]
    stamps = [path.stat().st_mtime_ns for path in outputs]
    caplog.clear()
    with caplog.at_level("INFO", logger="models.train.recipe_cli"):
        assert add_style(tiny_conditioned_checkpoint, folder, work, styles) == 0
    assert [path.stat().st_mtime_ns for path in outputs] == stamps
    done = [r.getMessage() for r in caplog.records if "already done" in r.getMessage()]
    assert [line.split(":")[0] for line in done] == [f"data {NAME}", f"fine-tune {NAME}",
                                                     f"export {NAME}"]
    # A lost model file is exported again from the fine-tuned checkpoint, nothing else.
    model.unlink()
    assert add_style(tiny_conditioned_checkpoint, folder, work, styles) == 0
    assert [path.stat().st_mtime_ns for path in outputs[:2]] == stamps[:2]
    assert read_card(model).style_slots[NAME] == SLOT


def test_an_interrupted_fine_tune_resumes_and_only_the_new_token_learns(
        base: Path, folder: Path, tmp_path: Path, capsys, caplog) -> None:
    work = tmp_path / "work"
    work.mkdir()
    vocabulary = work / "tokenizer.json"
    vocabulary.write_text(json.dumps(read_checkpoint(base)["tokenizer"]))
    assert melody(["data", "build", "--source", str(folder), "--out", str(work / "data"),
                   "--tokenizer", str(vocabulary), "--style", NAME, "--jobs", "1",
                   "--no-progress"]) == 0
    # The fine-tune of an earlier add-style, stopped after 2 of its 4 steps.
    assert melody(["fine-tune", "--from", str(base), "--data", str(work / "data"),
                   "--freeze", "all", "--out", str(work / "run"), "--steps", "4",
                   "--stop-at", "2", "--eval-every", "2", "--batch-size", "2",
                   "--threads", "1", "--lr", "1e-2", "--no-progress"]) == 0
    assert read_checkpoint(work / "run" / "last.pt")["step"] == 2
    capsys.readouterr()
    with caplog.at_level("INFO", logger="models.train.recipe_cli"):
        assert add_style(base, folder, work, tmp_path / "styles") == 0
    steps = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"data {NAME}: already done") for m in steps)
    assert any(m.startswith(f"fine-tune {NAME}:") and "--resume" in m for m in steps)
    # The loss before fine-tuning is the interrupted run's step 0.
    assert re.search(r"validation loss on your pieces: \d+\.\d{4} before, \d+\.\d{4} after",
                     capsys.readouterr().out)
    tuned = read_checkpoint(work / "run" / "last.pt")
    assert tuned["step"] == 4
    assert tuned["train_config"]["new_styles"] == {NAME: MelodyTokenizer.from_dict(
        tuned["tokenizer"]).style_ids[SLOT]}
    assert tuned["init_data"]["corpora"] == BASE_DATA["corpora"]
    before = read_checkpoint(base)["model"]["wte.weight"]
    row = tuned["train_config"]["new_styles"][NAME]
    others = [i for i in range(before.shape[0]) if i != row]
    assert torch.equal(tuned["model"]["wte.weight"][others], before[others])
    assert not torch.equal(tuned["model"]["wte.weight"][row], before[row])
    assert read_card(tmp_path / "styles" / f"{NAME}.onnx").training["step"] == 4


def test_the_default_base_is_the_shipped_conditioned_checkpoint_of_any_onnx(tmp_path: Path):
    """`melody add-style NAME --source DIR` alone starts from any.onnx's own weights: the
    shipped conditioned.pt has its architecture and vocabulary; without it, base.pt."""
    from models.core.paths import CONDITIONED_CHECKPOINT_NAME, PRETRAINED_DIR  # noqa: PLC0415
    from models.train.add_style_cli import default_base  # noqa: PLC0415

    assert default_base() == PRETRAINED_DIR / CONDITIONED_CHECKPOINT_NAME
    state = read_checkpoint(default_base())
    card = load_model(PRETRAINED_DIR / "any.onnx", EngineSettings(intra_op_threads=1)).card
    assert state["model_config"] == card.model_config
    assert state["tokenizer"] == card.tokenizer
    assert MelodyTokenizer.from_dict(state["tokenizer"]).style_slots["romantic"] == 7
    (tmp_path / "base.pt").write_bytes(b"")
    assert default_base(tmp_path) == tmp_path / "base.pt"
