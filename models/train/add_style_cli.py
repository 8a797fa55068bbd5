"""``melody add-style``: a new style from the user's own MIDI folder, in one command.

What it does depends on the base checkpoint's vocabulary:

- **A style-conditioned base** (Style tokens, like the one model ``any.onnx`` is exported
  from): NAME becomes a new style *token*. It takes the next free style slot of the base's
  vocabulary (an error if NAME is already a style there or no slot is free), the folder is
  tokenized with the base's own vocabulary and every piece labelled NAME (``melody data
  build --tokenizer --style``), the base is fine-tuned on it (``melody fine-tune``: the
  new token starts as "any style" and learns; training windows keep the base's style
  dropout and roles) and exported with every old style plus NAME in its vocabulary, and the
  base's corpora and licences plus the folder's on its card.
- **An unconditioned base** (the earlier ``models/pretrained/base.pt``): a separate
  fine-tune, as the shipped recipe makes its per-style models.

Either way the result is ``<out>/NAME.onnx`` (``[styles] directory``, else the installed
``models/pretrained``), where ``melodyd --style NAME`` finds it. From a conditioned base it
is a whole conditioned model that plays every old style as well as NAME, written **beside**
the installed model rather than over it, because:

- the installed model stays exactly what shipped (and what its card measured), and removing
  the style is deleting one file; a read-only installation works too;
- with the default ``--freeze all`` the new file's weights differ from its base's in NAME's
  embedding row only (whose other use, the Style token's output logit, the engine's grammar
  never samples), so every old style plays exactly as the base plays it, whichever of the
  two files the engine serves it from; ``--freeze K`` also adapts the upper blocks (measured:
  worse on a held-out part of the folder, and every other style drifting towards it), the
  other reason not to overwrite the shared model;
- it costs one more model file (11 MiB int8 for the shipped size) per added style. To
  gather several new styles in one model, add the next one with ``--base`` the previous
  one's checkpoint (``WORK/run/best.pt``): it takes the next slot after the previous one.

Like ``train-styles``, every step is skipped when its output exists (the dataset's
manifest, the fine-tune's ``done`` marker, an export newer than its checkpoint) and
fine-tuning resumes from ``last.pt``, so running it again after an interruption continues.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from models.core.exceptions import ConfigError, DataError, ModelError
from models.core.paths import CONDITIONED_CHECKPOINT_NAME
from models.core.protocol.limits import STYLE_ANY
from models.train.finetune_cli import freeze_value
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

HELP = ("train a new style from your own MIDI folder (a new style token of a conditioned "
        "base model, or a fine-tune of an unconditioned one)")
_STYLE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def default_base(pretrained: Path | None = None) -> Path:
    """The checkpoint a new style starts from when ``--base`` is not given: the shipped
    conditioned model's (a new style token of it), else the old unconditioned base."""
    folder = pretrained or PRETRAINED
    conditioned = folder / CONDITIONED_CHECKPOINT_NAME
    return conditioned if conditioned.is_file() else folder / BASE_CHECKPOINT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``melody add-style``."""
    parser.add_argument("name", help="the style's name, e.g. avantgarde (then "
                                     "`melodyd --style avantgarde`)")
    parser.add_argument("--source", required=True,
                        help="a folder of .mid/.midi files (searched recursively) or corpus:NAME")
    parser.add_argument("--base", type=Path, default=None,
                        help=f"checkpoint to start from (default: the shipped "
                             f"models/pretrained/{CONDITIONED_CHECKPOINT_NAME}, any.onnx's "
                             f"own, else {BASE_CHECKPOINT}); a style-conditioned one gets NAME "
                             f"as a new style token")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the dataset, checkpoints and logs "
                             "(default runs/styles/NAME)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where NAME.onnx goes (default: [styles] directory, else the "
                             "installed models/pretrained)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="fine-tuning time budget (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=None,
                        help="fine-tuning steps (default: the recipe's)")
    parser.add_argument("--freeze", type=freeze_value, default=None,
                        help="lower blocks kept frozen, or 'all' (a conditioned base: only "
                             "NAME's token learns) (default: the recipe's)")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate (default: the recipe's)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="sequences per step (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: all cores)")
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE,
                        help="recipe whose [base] transposition and [add_style] (conditioned "
                             "base) or [finetune] settings apply")
    parser.add_argument("--config", metavar="FILE", help="a config.toml merged over defaults")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")


def _styles_dir(out: Path | None, config: str | None) -> Path:
    from models.core.paths import styles_directory  # noqa: PLC0415
    from models.core.settings import load_settings  # noqa: PLC0415

    if out is not None:
        return out
    return styles_directory(load_settings(config).styles.directory)


def next_style_slot(tokenizer: dict[str, Any], name: str) -> int | None:
    """The slot NAME takes in a vocabulary: its next free style slot; ``None`` without any.

    Raises:
        ConfigError: NAME is already a style of the vocabulary (or "any"), or every slot
            is taken.
    """
    from models.core.tokenizer import MelodyTokenizer  # noqa: PLC0415

    vocabulary = MelodyTokenizer.from_dict(tokenizer)
    slots = vocabulary.style_slots
    if not slots:
        return None
    if name in slots:
        raise ConfigError(f"style {name!r} is already slot {slots[name]} of the base model "
                          f"(its styles: {', '.join(slots)}); choose another name")
    total = vocabulary.settings.style_slots
    if len(slots) >= total:
        raise ConfigError(f"the base model has no free style slot: all {total} are taken "
                          f"({', '.join(slots)}); add the style to a model with more "
                          f"[tokens] style_slots")
    return len(slots)


def _settings(recipe: Recipe, conditioned: bool, args: argparse.Namespace) -> dict[str, Any]:
    """The fine-tune settings: the recipe's section, then the flags."""
    section = recipe.finetune
    if conditioned:
        section = {**section, **recipe.add_style}
    settings = dict(section)
    for key, value in (("time_budget", args.minutes), ("steps", args.steps),
                       ("freeze", args.freeze), ("batch_size", args.batch_size),
                       ("lr", args.lr)):
        if value is not None:
            settings[key] = value
    return settings


def _check_dataset(data: Path, name: str, slot: int) -> None:
    """The built dataset must give NAME the slot this run chose (a folder reused from
    another base would not)."""
    from models.core.tokenizer import MelodyTokenizer  # noqa: PLC0415
    from models.data.manifest import load_manifest  # noqa: PLC0415

    built = MelodyTokenizer.from_dict(load_manifest(data)["tokenizer"]).style_slots
    if built.get(name) != slot:
        raise DataError(f"the dataset in {data} gives {name!r} slot {built.get(name)}, "
                        f"not the base's next free slot {slot}: it was built for another "
                        f"base; delete it (or pass another --work) to build it again")


def _report(run_dir: Path, name: str, slot: int | None, tokenizer: dict[str, Any]) -> None:
    """Print the validation loss before fine-tuning and of the exported checkpoint, and the
    styles the model plays."""
    from models.train.evaluation import MetricsLog  # noqa: PLC0415 - torch only here

    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        # Step 0 of the log survives a resumed run; the summary only knows its own start.
        starts = [record["loss"] for record in MetricsLog(run_dir / "metrics.jsonl").read()
                  if record.get("split") == "val" and record.get("step") == 0]
        before = f"{starts[0]:.4f} before, " if starts else ""
        print(f"validation loss on your pieces: {before}{summary['best_val_loss']:.4f} "
              f"after fine-tuning (the exported checkpoint; {summary['step']} steps)")
    if slot is not None:
        styles = [STYLE_ANY, *tokenizer["settings"].get("styles", []), name]
        print(f"style {name!r} is style token {slot}; the model plays "
              f"{', '.join(styles)}")


def run(args: argparse.Namespace) -> int:
    """Build the dataset, fine-tune the base on it, export and install ``NAME.onnx``.

    Raises:
        ConfigError: a style name that is not a plain lowercase word, one the base model
            already has, or a base model without a free style slot.
        ModelError: no base checkpoint to start from.
        MelodyError: a step failed (its own error is printed above).
    """
    name: str = args.name
    if not _STYLE_NAME.match(name):
        raise ConfigError(f"style name must be lowercase letters, digits, '-' or '_' "
                          f"(at most 40, received {name!r})")
    base = args.base or default_base()
    if not base.is_file():
        raise ModelError(f"base checkpoint not found: {base} (train one with "
                         f"`melody train-styles`, or pass --base RUN/best.pt)")
    from models.train.checkpoint import read_checkpoint  # noqa: PLC0415 - torch only here

    tokenizer = read_checkpoint(base)["tokenizer"]
    slot = next_style_slot(tokenizer, name)
    if name == STYLE_ANY:
        # A conditioned base already refused it; any.onnx is the shipped conditioned model.
        raise ConfigError(f"style name {STYLE_ANY!r} means \"no style\" (and any.onnx is the "
                          f"shipped model); choose another name")
    recipe = Recipe(args.recipe)
    settings = _settings(recipe, slot is not None, args)
    work = args.work or Path("runs/styles") / name
    out_dir = _styles_dir(args.out, args.config)
    target = out_dir / f"{name}.onnx"
    runner = Runner(args.dry_run)
    started = time.monotonic()
    config = ["--config", args.config] if args.config else []

    data = work / "data"
    transpose = str(recipe.base.get("transpose", "0..0"))
    if slot is None:
        build_data(runner, name, args.source, transpose, data)
    else:
        logger.info("%s: a style-conditioned base; %r takes its free style slot %d",
                    base, name, slot)
        vocabulary = work / "tokenizer.json"
        if not args.dry_run and not vocabulary.exists():
            work.mkdir(parents=True, exist_ok=True)
            vocabulary.write_text(json.dumps(tokenizer, indent=2) + "\n")
        build_data(runner, name, args.source, transpose, data,
                   extra=["--tokenizer", str(vocabulary), "--style", name, *config])
        if not args.dry_run:
            _check_dataset(data, name, slot)
    run_dir = work / "run"
    resume = ["--resume"] if (run_dir / "last.pt").exists() else []
    from_base = [] if resume else ["--from", str(base)]
    runner.step(f"fine-tune {name}", melody_command(
        "fine-tune", *from_base, "--data", str(data), "--freeze", str(settings["freeze"]),
        "--out", str(run_dir), *resume, *config, *train_flags(settings, args.threads)),
        done=run_dir / "done")
    if not args.dry_run:
        (run_dir / "done").touch()
        out_dir.mkdir(parents=True, exist_ok=True)
    export_style(runner, name, run_dir / "best.pt", data, target)
    print_timings(runner, started)
    if not args.dry_run:
        _report(run_dir, name, slot, tokenizer)
        print(f"style {name!r} installed: {target}\n"
              f"jam with it: melodyd --style {name}")
    return 0
