"""``melody train-styles``: rebuild every shipped style model from the recipe.

It runs the same commands a user would (``melody data build``, ``train``, ``fine-tune``,
``export``), each as a child process, so the recipe exercises the documented path and a
crash in one step cannot corrupt the others. Every step is skipped when its output
exists and training resumes from ``last.pt``: an interrupted run (a session limit, a
reboot) continues where it stopped when the command is run again.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from models.core.exceptions import ConfigError, MelodyError
from models.core.paths import BASE_CHECKPOINT_NAME as BASE_CHECKPOINT
from models.core.paths import DEFAULT_RECIPE
from models.core.paths import PRETRAINED_DIR as PRETRAINED
from models.core.settings import read_toml

logger = logging.getLogger(__name__)

HELP = "re-train and re-export the shipped style models from the recipe"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``melody train-styles``."""
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE,
                        help="recipe file (default: the shipped models/pretrained/recipe.toml)")
    parser.add_argument("--work", type=Path, default=Path("runs/styles"),
                        help="folder for datasets, checkpoints and logs (default runs/styles)")
    parser.add_argument("--out", type=Path, default=PRETRAINED,
                        help="where the exported <style>.onnx files go")
    parser.add_argument("--styles", default=None,
                        help="comma-separated subset of the recipe's styles")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for training (default: all cores)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")


def melody_command(*args: str) -> list[str]:
    """The argv of a ``melody`` subcommand run by this Python as a child process."""
    return [sys.executable, "-m", "models.cli", *args]


class Recipe:
    """The recipe file, checked for the keys each step needs."""

    def __init__(self, path: Path) -> None:
        raw = read_toml(path)
        for section in ("base", "finetune", "styles"):
            if section not in raw:
                raise ConfigError(f"recipe {path} has no [{section}] section")
        self.base: dict[str, Any] = raw["base"]
        self.finetune: dict[str, Any] = raw["finetune"]
        self.styles: dict[str, dict[str, Any]] = raw["styles"]
        # `melody add-style` on a style-conditioned base: what differs from [finetune].
        self.add_style: dict[str, Any] = raw.get("add_style", {})
        for name, style in self.styles.items():
            if "source" not in style:
                raise ConfigError(f"recipe {path}: [styles.{name}] needs a source")


class Runner:
    """Runs the steps, skipping finished ones and timing each."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.timings: list[tuple[str, float]] = []

    def step(self, name: str, command: list[str], done: Path | None = None,
             allow_failure: bool = False) -> bool:
        """Run one command unless ``done`` exists; return whether it succeeded."""
        if done is not None and done.exists():
            logger.info("%s: already done (%s)", name, done)
            return True
        logger.info("%s: %s", name, " ".join(command[2:]))
        if self.dry_run:
            return True
        start = time.monotonic()
        result = subprocess.run(command, check=False)
        self.timings.append((name, time.monotonic() - start))
        if result.returncode != 0 and not allow_failure:
            raise MelodyError(f"step '{name}' failed with exit code {result.returncode}")
        return result.returncode == 0


def train_flags(section: dict[str, Any], threads: int | None) -> list[str]:
    """``melody train``/``fine-tune`` flags of a recipe section."""
    flags = ["--batch-size", str(section["batch_size"]), "--lr", str(section["lr"]),
             "--steps", str(section["steps"]), "--eval-every", str(section["eval_every"]),
             "--time-budget", str(section["time_budget"]), "--seed", str(section["seed"])]
    if threads:
        flags += ["--threads", str(threads)]
    return flags


def build_data(runner: Runner, name: str, source: str, transpose: str, out: Path, *,
               extra: list[str] | None = None) -> None:
    """Build a dataset unless its manifest exists (``extra``: more ``data build`` flags)."""
    runner.step(f"data {name}", melody_command("data", "build", "--source", source,
                                               "--out", str(out), "--transpose", transpose,
                                               *(extra or [])),
                done=out / "manifest.json")


def export_style(runner: Runner, style: str, checkpoint: Path, data: Path, target: Path) -> None:
    """Export a style model: int8 when it agrees with fp32 well enough, else fp32.

    Skipped when ``target`` is newer than ``checkpoint`` (already exported from it).
    """
    if (target.exists() and checkpoint.exists()
            and target.stat().st_mtime_ns >= checkpoint.stat().st_mtime_ns):
        logger.info("export %s: already done (%s)", style, target)
        return
    export = ["export", str(checkpoint), "-o", str(target), "--style", style]
    # `melody export --int8` refuses (non-zero exit) below its agreement thresholds.
    if not runner.step(f"export {style} int8",
                       melody_command(*export, "--int8", "--data", str(data)),
                       allow_failure=True):
        logger.warning("%s: int8 export refused; shipping fp32", style)
        runner.step(f"export {style} fp32", melody_command(*export))


def print_timings(runner: Runner, started: float) -> None:
    """One line per step that ran, and the total, in minutes."""
    for name, seconds in runner.timings:
        print(f"{name:<28} {seconds / 60:6.1f} min")
    print(f"total {(time.monotonic() - started) / 60:.1f} min")


def run(args: argparse.Namespace) -> int:
    """Build data, train the base, fine-tune and export each style."""
    recipe = Recipe(args.recipe)
    wanted = list(recipe.styles) if args.styles is None else args.styles.split(",")
    unknown = [s for s in wanted if s not in recipe.styles]
    if unknown:
        raise ConfigError(f"styles not in the recipe: {', '.join(unknown)} "
                          f"(the recipe has {', '.join(recipe.styles)})")
    work: Path = args.work
    runner = Runner(args.dry_run)
    started = time.monotonic()
    transpose = str(recipe.base.get("transpose", "0..0"))

    base_data = work / "data" / "base"
    build_data(runner, "base", recipe.base["source"], transpose, base_data)
    base_run = work / "base"
    resume = ["--resume"] if (base_run / "last.pt").exists() else []
    runner.step("train base", melody_command(
        "train", "--data", str(base_data), "--arch", recipe.base["arch"],
        "--size", recipe.base["size"], "--out", str(base_run), *resume,
        *train_flags(recipe.base, args.threads)), done=base_run / "done")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.dry_run:
        (base_run / "done").touch()
        # The base ships too (weights only, fp16): `melody add-style` fine-tunes it on a
        # user's own MIDI folder.
        from models.train.checkpoint import write_weights_only  # noqa: PLC0415 - torch only here

        write_weights_only(base_run / "best.pt", args.out / BASE_CHECKPOINT)
        logger.info("base model: %s", args.out / BASE_CHECKPOINT)
    for style in wanted:
        data = work / "data" / style
        build_data(runner, style, recipe.styles[style]["source"], transpose, data)
        run_dir = work / style
        settings = {**recipe.finetune, **recipe.styles[style]}
        runner.step(f"fine-tune {style}", melody_command(
            "fine-tune", "--from", str(base_run / "best.pt"), "--data", str(data),
            "--freeze", str(settings["freeze"]), "--out", str(run_dir),
            *train_flags(settings, args.threads)), done=run_dir / "done")
        if not args.dry_run:
            (run_dir / "done").touch()
        export_style(runner, style, run_dir / "best.pt", data, args.out / f"{style}.onnx")

    print_timings(runner, started)
    return 0
