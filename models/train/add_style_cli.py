"""``melody add-style``: a new style from the user's own MIDI folder, in one command.

The shipped corpora hold almost no twentieth-century music, so melodyd ships no
"avant-garde" model; a musician who wants one (or any other style) points this command at
a folder of MIDI files. It runs the same steps as the shipped recipe
(``models/pretrained/recipe.toml``): build a dataset (transposed like the base's), fine-tune
the shipped base model with its lower blocks frozen, export to ONNX (int8 when it agrees
with fp32), and installs the result where ``melodyd --style NAME`` looks. Like
``train-styles``, every step is skipped when its output exists, so running it again after
an interruption continues.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from pathlib import Path

from models.core.exceptions import ConfigError, ModelError
from models.train.recipe_cli import (
    BASE_CHECKPOINT,
    DEFAULT_RECIPE,
    PRETRAINED,
    Recipe,
    Runner,
    build_data,
    export_style,
    melody_command,
    print_timings,
    train_flags,
)

logger = logging.getLogger(__name__)

HELP = "train a new style from your own MIDI folder (fine-tunes the shipped base model)"
_STYLE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``melody add-style``."""
    parser.add_argument("name", help="the style's name, e.g. avantgarde (then "
                                     "`melodyd --style avantgarde`)")
    parser.add_argument("--source", required=True,
                        help="a folder of .mid/.midi files (searched recursively) or corpus:NAME")
    parser.add_argument("--base", type=Path, default=None,
                        help=f"checkpoint to fine-tune (default: the shipped "
                             f"models/pretrained/{BASE_CHECKPOINT})")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the dataset, checkpoints and logs "
                             "(default runs/styles/NAME)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where NAME.onnx goes (default: [styles] directory, else the "
                             "installed models/pretrained)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="fine-tuning time budget (default: the recipe's [finetune])")
    parser.add_argument("--steps", type=int, default=None,
                        help="fine-tuning steps (default: the recipe's [finetune])")
    parser.add_argument("--freeze", type=int, default=None,
                        help="lower blocks kept frozen (default: the recipe's [finetune])")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="sequences per step (default: the recipe's [finetune])")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: all cores)")
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE,
                        help="recipe whose [base] transposition and [finetune] settings apply")
    parser.add_argument("--config", metavar="FILE", help="a config.toml merged over defaults")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")


def _styles_dir(out: Path | None, config: str | None) -> Path:
    from models.core.paths import styles_directory  # noqa: PLC0415
    from models.core.settings import load_settings  # noqa: PLC0415

    if out is not None:
        return out
    return styles_directory(load_settings(config).styles.directory)


def run(args: argparse.Namespace) -> int:
    """Build the dataset, fine-tune the base on it, export and install ``NAME.onnx``.

    Raises:
        ConfigError: a style name that is not a plain lowercase word.
        ModelError: no base checkpoint to start from.
        MelodyError: a step failed (its own error is printed above).
    """
    name: str = args.name
    if not _STYLE_NAME.match(name):
        raise ConfigError(f"style name must be lowercase letters, digits, '-' or '_' "
                          f"(at most 40, received {name!r})")
    base = args.base or PRETRAINED / BASE_CHECKPOINT
    if not base.is_file():
        raise ModelError(f"base checkpoint not found: {base} (train one with "
                         f"`melody train-styles`, or pass --base RUN/best.pt)")
    recipe = Recipe(args.recipe)
    settings = dict(recipe.finetune)
    for key, value in (("time_budget", args.minutes), ("steps", args.steps),
                       ("freeze", args.freeze), ("batch_size", args.batch_size)):
        if value is not None:
            settings[key] = value
    work = args.work or Path("runs/styles") / name
    out_dir = _styles_dir(args.out, args.config)
    target = out_dir / f"{name}.onnx"
    runner = Runner(args.dry_run)
    started = time.monotonic()

    data = work / "data"
    build_data(runner, name, args.source, str(recipe.base.get("transpose", "0..0")), data)
    run_dir = work / "run"
    resume = ["--resume"] if (run_dir / "last.pt").exists() else []
    from_base = [] if resume else ["--from", str(base)]
    runner.step(f"fine-tune {name}", melody_command(
        "fine-tune", *from_base, "--data", str(data), "--freeze", str(settings["freeze"]),
        "--out", str(run_dir), *resume, *train_flags(settings, args.threads)),
        done=run_dir / "done")
    if not args.dry_run:
        (run_dir / "done").touch()
        out_dir.mkdir(parents=True, exist_ok=True)
    export_style(runner, name, run_dir / "best.pt", data, target)
    print_timings(runner, started)
    if not args.dry_run:
        print(f"style {name!r} installed: {target}\n"
              f"jam with it: melodyd --style {name}")
    return 0
