"""Training on a small real corpus: learning, exact resume, fine-tuning, DDP, the CLIs.

The corpus is a dozen Bach chorales from music21's bundled corpus, converted to MIDI and
built into a dataset by ``models.data.dataset`` in a module fixture.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs torch (the train extra)")

from models.cli import main as melody  # noqa: E402
from models.core.settings import DataSettings, TrainSettings  # noqa: E402
from models.train.checkpoint import load_checkpoint, read_checkpoint  # noqa: E402
from models.train.training import RunRequest, Trainer, train  # noqa: E402

pytestmark = pytest.mark.torch

CHORALES = 16
# Small enough for a loaded 2-core machine: the tiny GPT, short windows of few sequences.
FAST = {"arch": "gpt", "size": "tiny", "batch_size": 4, "eval_batches": 4, "threads": 1,
        "device": "cpu", "warmup_steps": 10, "log_every": 5, "dropout": 0.1}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset of Bach chorales (music21's corpus -> MIDI -> ``models.data.dataset``)."""
    music21 = pytest.importorskip("music21")
    from models.data.dataset import build_dataset  # noqa: PLC0415

    midi_dir = tmp_path_factory.mktemp("chorales")
    paths = sorted(p for p in music21.corpus.getComposer("bach") if str(p).endswith(".mxl"))
    for path in paths[:CHORALES]:
        music21.corpus.parse(path).write("midi", fp=str(midi_dir / f"{Path(path).stem}.mid"))
    out = tmp_path_factory.mktemp("dataset")
    build_dataset(str(midi_dir), out, DataSettings(jobs=1, val_fraction=0.2,
                                                   test_fraction=0.1), progress=False)
    return out


def settings(**changes: object) -> TrainSettings:
    return TrainSettings(**{**FAST, **changes})


def val_records(run: Path) -> dict[int, float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["split"] == "val"}


def unigram_cross_entropy(corpus: Path) -> float:
    """Validation cross-entropy (nats/token) under the training split's token frequencies."""
    train_ids = np.load(corpus / "train.tokens.npy")
    val_ids = np.load(corpus / "validation.tokens.npy")
    vocab = int(max(train_ids.max(), val_ids.max())) + 1
    counts = np.bincount(train_ids, minlength=vocab) + 1.0  # add-one: unseen ids stay finite
    probs = counts / counts.sum()
    return float(-np.log(probs[val_ids]).mean())


@pytest.mark.slow
def test_a_tiny_model_learns_well_below_the_unigram_baseline(corpus: Path,
                                                             tmp_path: Path) -> None:
    baseline = unigram_cross_entropy(corpus)
    summary = train(settings(steps=300, eval_every=100, lr=3e-3),
                    RunRequest(corpus, tmp_path / "run", progress=False))
    best = summary["best_val_loss"]
    assert best < baseline - 1.0, f"val loss {best:.3f} vs unigram baseline {baseline:.3f}"
    assert summary["val"]["perplexity"] == pytest.approx(math.exp(summary["val"]["loss"]))
    for name in ("best.pt", "last.pt", "metrics.jsonl", "loss.png"):
        assert (tmp_path / "run" / name).is_file()


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_resume_after_interruption_reproduces_the_uninterrupted_run(
        corpus: Path, tmp_path: Path, arch: str) -> None:
    config = settings(arch=arch, steps=24, eval_every=8)
    train(config, RunRequest(corpus, tmp_path / "whole", progress=False))
    stopped = train(config, RunRequest(corpus, tmp_path / "split", stop_at=12, progress=False))
    assert stopped["stopped"] == "stop_at" and stopped["step"] == 12
    train(config, RunRequest(corpus, tmp_path / "split", resume=True, progress=False))
    whole, split = val_records(tmp_path / "whole"), val_records(tmp_path / "split")
    assert whole[24] == pytest.approx(split[24], abs=1e-6)
    weights_a = read_checkpoint(tmp_path / "whole" / "last.pt")["model"]
    weights_b = read_checkpoint(tmp_path / "split" / "last.pt")["model"]
    for name, tensor in weights_a.items():
        torch.testing.assert_close(weights_b[name], tensor, atol=1e-6, rtol=0)


# The test wraps optimizer.step to raise the signal mid-step; torch warns about any wrap.
@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_sigterm_mid_step_stops_after_the_step_and_resumes_exactly(corpus: Path,
                                                                   tmp_path: Path) -> None:
    config = settings(steps=24, eval_every=8)
    train(config, RunRequest(corpus, tmp_path / "whole", progress=False))
    trainer = Trainer(config, RunRequest(corpus, tmp_path / "split", progress=False))
    optimizer_step = trainer.optimizer.step
    calls = []

    def step_then_signal(*args, **kwargs):
        result = optimizer_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 11:  # between the weight update and the scheduler/step count
            signal.raise_signal(signal.SIGTERM)
        return result

    trainer.optimizer.step = step_then_signal
    stopped = trainer.fit()
    assert stopped["stopped"] == "interrupted" and stopped["step"] == 11
    saved = read_checkpoint(tmp_path / "split" / "last.pt")
    assert saved["step"] == 11 and saved["scheduler"]["last_epoch"] == 11
    train(config, RunRequest(corpus, tmp_path / "split", resume=True, progress=False))
    whole, split = val_records(tmp_path / "whole"), val_records(tmp_path / "split")
    assert whole[24] == pytest.approx(split[24], abs=1e-6)


def test_the_same_seed_gives_the_same_run(corpus: Path, tmp_path: Path) -> None:
    config = settings(steps=6, eval_every=6)
    first = train(config, RunRequest(corpus, tmp_path / "a", progress=False))
    second = train(config, RunRequest(corpus, tmp_path / "b", progress=False))
    assert first["val"]["loss"] == second["val"]["loss"]


@pytest.mark.parametrize("arch", ["gpt", "gru"])
def test_fine_tuning_keeps_frozen_parameters_bit_identical(corpus: Path, tmp_path: Path,
                                                           arch: str) -> None:
    train(settings(arch=arch, steps=4, eval_every=4), RunRequest(corpus, tmp_path / "base",
                                                                 progress=False))
    base = load_checkpoint(tmp_path / "base" / "best.pt").model.state_dict()
    trainer = Trainer(settings(steps=6, eval_every=6, lr=1e-2),
                      RunRequest(corpus, tmp_path / "tuned", init_from=tmp_path / "base" /
                                 "best.pt", freeze=1, progress=False))
    frozen = set(trainer.frozen)
    assert frozen and any(n.startswith(("wte.", "embed.")) for n in frozen)
    trainer.fit()
    tuned = load_checkpoint(tmp_path / "tuned" / "last.pt").model.state_dict()
    changed = set()
    for name, before in base.items():
        if name in frozen or (name == "lm_head.weight" and "wte.weight" in frozen):
            assert torch.equal(tuned[name], before), f"{name} is frozen but changed"
        elif not torch.equal(tuned[name], before):
            changed.add(name)
    upper = "blocks.1." if arch == "gpt" else "rnn.weight_hh_l1"
    assert any(name.startswith(upper) for name in changed), "the upper layers must train"


def test_freezing_everything_without_a_new_style_is_refused(corpus: Path, tmp_path: Path,
                                                            ) -> None:
    from models.core.exceptions import ModelError  # noqa: PLC0415

    train(settings(steps=2, eval_every=2), RunRequest(corpus, tmp_path / "base",
                                                      progress=False))
    with pytest.raises(ModelError, match="--freeze all leaves nothing to train"):
        Trainer(settings(steps=2), RunRequest(corpus, tmp_path / "tuned", init_from=tmp_path
                                              / "base" / "best.pt", freeze="all",
                                              progress=False))


def test_time_budget_stops_gracefully_with_checkpoints(corpus: Path, tmp_path: Path) -> None:
    summary = train(settings(steps=100_000, eval_every=1000, time_budget=0.0005),
                    RunRequest(corpus, tmp_path / "run", progress=False))
    assert summary["stopped"] == "time_budget" and summary["step"] < 100_000
    assert load_checkpoint(tmp_path / "run" / "last.pt").step == summary["step"]


def test_cli_train_fine_tune_eval_and_lr_find_end_to_end(corpus: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    common = ["--data", str(corpus), "--batch-size", "2", "--threads", "1", "--no-progress"]
    run = tmp_path / "run"
    assert melody(["train", "--size", "tiny", "--steps", "6", "--eval-every", "3",
                   "--out", str(run), *common]) == 0
    assert "val loss" in capsys.readouterr().out
    assert melody(["train", "--size", "tiny", "--steps", "6", "--out", str(run), *common]) == 2
    assert "--resume" in capsys.readouterr().err
    tuned = tmp_path / "tuned"
    assert melody(["fine-tune", "--from", str(run / "best.pt"), "--freeze", "1",
                   "--steps", "4", "--out", str(tuned), *common]) == 0
    assert "froze" in capsys.readouterr().out
    state = read_checkpoint(tuned / "last.pt")
    assert state["step"] == 4 and state["train_config"]["freeze"] == 1
    whole = tmp_path / "whole"
    assert melody(["fine-tune", "--from", str(run / "best.pt"), "--no-freeze",
                   "--steps", "2", "--out", str(whole), *common]) == 0
    assert "trained every weight" in capsys.readouterr().out
    base, continued = (read_checkpoint(p)["model"] for p in (run / "best.pt", whole / "last.pt"))
    assert read_checkpoint(whole / "last.pt")["train_config"]["freeze"] is None
    assert not torch.equal(base["wte.weight"], continued["wte.weight"]), "embeddings frozen"
    assert melody(["fine-tune", "--from", str(run / "best.pt"), "--no-freeze", "--freeze",
                   "1", "--out", str(tmp_path / "both"), *common]) == 2
    assert "contradict" in capsys.readouterr().err
    assert melody(["eval", str(tuned / "best.pt"), "--data", str(corpus),
                   "--json", str(tmp_path / "eval.json"), "--threads", "1"]) == 0
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert metrics["split"] == "test" and metrics["perplexity"] > 1
    assert melody(["lr-find", "--data", str(corpus), "--out", str(tmp_path / "lr"), "--size",
                   "tiny", "--steps", "12", "--batch-size", "2", "--threads", "1"]) == 0
    assert (tmp_path / "lr" / "lr_find.png").is_file()
    assert json.loads((tmp_path / "lr" / "lr_find.json").read_text())["suggested_lr"] > 0


def test_missing_checkpoint_is_one_clear_error_line(corpus: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nowhere" / "best.pt"
    assert melody(["eval", str(missing), "--data", str(corpus)]) == 2
    assert melody(["fine-tune", "--from", str(missing), "--data", str(corpus),
                   "--out", str(tmp_path / "ft"), "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"error: checkpoint not found: {missing}"] * 2


@pytest.mark.slow
def test_two_process_ddp_run_completes(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "models.cli", "train", "--data", str(corpus),
               "--out", str(out), "--size", "tiny", "--steps", "6", "--eval-every", "3",
               "--batch-size", "2", "--threads", "1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    state = read_checkpoint(out / "last.pt")
    assert state["step"] == 6 and state["train_config"]["world_size"] == 2
    assert done.stdout.count("stopped at step 6") == 1  # only the first process reports


def test_run_settings_are_saved_for_resume(corpus: Path, tmp_path: Path) -> None:
    config = settings(steps=3, eval_every=3, lr=2e-3)
    train(config, RunRequest(corpus, tmp_path / "run", progress=False))
    saved = read_checkpoint(tmp_path / "run" / "last.pt")["train_config"]["settings"]
    assert TrainSettings(**saved) == config
    assert dataclasses.asdict(config) == saved
