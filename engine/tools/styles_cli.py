"""``melody styles``: the installed style models and what their metadata says about them.

Each ``models/pretrained/<style>.onnx`` (or the ``[styles] directory``) is opened the way
the engine opens it, so a model listed here without a problem is one the engine loads.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from models.core.exceptions import MelodyError
from models.core.protocol.limits import STYLE_ANY

HELP = "list the installed style models with their size, training data and metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``melody styles``."""
    parser.add_argument("--dir", type=Path, default=None,
                        help="folder of <style>.onnx files (default: [styles] directory, "
                             "else the installed models/pretrained)")
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")
    parser.add_argument("--config", metavar="FILE", help="a config.toml merged over defaults")


def styles_directory(explicit: Path | None, config: str | None = None) -> Path:
    """The installed styles' folder: ``--dir``, else ``[styles] directory``, else the package's."""
    from models.core.paths import styles_directory as resolve  # noqa: PLC0415
    from models.core.settings import load_settings  # noqa: PLC0415

    if explicit is not None:
        return resolve(explicit=explicit)
    return resolve(load_settings(config).styles.directory)


def _metric(metrics: dict[str, Any], *names: str) -> float | None:
    for name in names:
        value = metrics.get(name)
        if isinstance(value, (int, float)):
            return float(value)
    return None


def model_facts(path: Path, model: Any = None) -> dict[str, Any]:
    """What one model file says about itself, or the problem that stops the engine loading it.

    Args:
        path: the ONNX file.
        model: the file already loaded by ``engine.model.load_model`` (saves a second load).

    Returns:
        ``style``, ``file``, ``size_mb``, and either ``error`` or the card's facts:
        ``arch``, ``parameters``, ``context_length``, ``quantization``, ``corpus``,
        ``train_pieces``, ``train_tokens``, ``val_perplexity``, ``val_accuracy``, ``step``,
        ``exported_at``.
    """
    from engine.model import load_model  # noqa: PLC0415 - onnxruntime loads here

    facts: dict[str, Any] = {"style": path.stem, "file": str(path),
                             "size_mb": round(path.stat().st_size / 1e6, 2)}
    if model is None:
        try:
            model = load_model(path)
        except MelodyError as err:
            facts["error"] = str(err)
            return facts
    card = model.card
    training = card.training or {}
    metrics = training.get("metrics") or {}
    pieces = training.get("pieces") or {}
    tokens = training.get("tokens") or {}
    config = card.model_config
    facts.update({
        "style": card.style,
        "arch": card.arch,
        "layers": config.get("n_layer", config.get("num_layers", card.cache.num_layers)),
        "width": config.get("n_embd", config.get("d_model", config.get("hidden"))),
        "context_length": card.context_length,
        "quantization": card.quantization,
        "corpus": training.get("corpus"),
        "train_pieces": pieces.get("train") if isinstance(pieces, dict) else pieces,
        "train_tokens": tokens.get("train") if isinstance(tokens, dict) else tokens,
        "val_perplexity": _metric(metrics, "perplexity", "val_perplexity"),
        "val_accuracy": _metric(metrics, "accuracy", "val_accuracy"),
        "step": training.get("step"),
        "exported_at": card.exported_at,
        # A style-conditioned model plays each style of its vocabulary by a token.
        "token_styles": [name for name in model.tokenizer.style_slots if name != STYLE_ANY],
        "corpora": dict(training.get("corpora") or {}),
        "licences": list(training.get("licences") or []),
    })
    return facts


def source_lines(row: dict[str, Any]) -> list[str]:
    """Indented lines under a model's row: the styles it plays by token and its sources."""
    lines = []
    if row.get("token_styles"):
        lines.append(f"  {row['style']} also plays, by style token: "
                     f"{', '.join(row['token_styles'])}")
    corpora = row.get("corpora") or {}
    if corpora:
        lines.append("  trained on: " + "; ".join(
            f"{name} ({_pieces(info.get('pieces'))}, {info.get('licence', 'unknown')})"
            for name, info in corpora.items()))
    return lines


def _pieces(count: Any) -> str:
    """``1 piece``, ``12 pieces``, ``? pieces`` (a card without the count)."""
    return "1 piece" if count == 1 else f"{'?' if count is None else count} pieces"


def _cell(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def _data_cell(corpus: str | None) -> str:
    """A corpus name, or how many for a multi-corpus model (they are listed below it)."""
    if corpus is None:
        return "-"
    parts = corpus.split(",")
    return corpus if len(parts) == 1 else f"{len(parts)} corpora"


def format_table(rows: list[dict[str, Any]]) -> list[str]:
    """Aligned text lines: one row per style, problems on their own line."""
    header = ("style", "size", "model", "quant", "data", "train pieces", "val ppl", "val acc",
              "step")
    lines = []
    table = [header]
    for row in rows:
        if "error" in row:
            continue
        model = f"{row['arch']} {_cell(row['layers'])}x{_cell(row['width'])}"
        table.append((row["style"], f"{row['size_mb']:.1f} MB", model, row["quantization"],
                      _data_cell(row["corpus"]), _cell(row["train_pieces"]),
                      _cell(row["val_perplexity"], "{:.2f}"),
                      _cell(row["val_accuracy"], "{:.1%}"), _cell(row["step"])))
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    if len(table) > 1:
        lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                  for r in table]
    for row in rows:
        if "error" not in row:
            lines += source_lines(row)
    lines += [f"{row['style']}: cannot be loaded: {row['error']}" for row in rows
              if "error" in row]
    return lines


def run(args: argparse.Namespace) -> int:
    """Print the installed styles; exit 1 when a model cannot be loaded.

    Raises:
        ConfigError: a malformed config file.
    """
    from engine.model import installed_styles  # noqa: PLC0415

    directory = styles_directory(args.dir, args.config)
    styles = installed_styles(directory)
    rows = [model_facts(path) for path in styles.values()]
    if args.json:
        print(json.dumps({"directory": str(directory), "styles": rows}, indent=2))
    elif not rows:
        print(f"no styles installed in {directory} (train them with `melody train-styles`, "
              f"or export one there with `melody export CHECKPOINT -o {directory}/NAME.onnx`)")
    else:
        print(f"installed styles in {directory}:")
        for line in format_table(rows):
            print(line)
    return 1 if any("error" in row for row in rows) else 0
