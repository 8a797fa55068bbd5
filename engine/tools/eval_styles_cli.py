"""``melody eval-styles``: evaluate melodyd's styles and write ``docs/styles.md``.

Two modes:

- ``--data DIR`` (the shipped setup): the one style-conditioned model (``--model``, default
  the installed ``any.onnx``), every style token in turn, on its own multi-style dataset;
  see ``engine.tools.conditioned_run``.
- ``--data-root DIR`` (the older one-model-per-style setup): for each style in
  ``models/pretrained/`` (or ``--models-dir``) with a dataset in ``--data-root/<style>``
  (the layout ``melody train-styles`` builds): held-out perplexity and accuracy, style
  fidelity judged by a classifier of real music, musical statistics next to real data,
  and the Für Elise continuation as MIDI and piano roll. See ``engine.tools.style_eval``
  for the measures and ``engine.tools.styles_report`` for the page.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import time
from pathlib import Path
from typing import Any

from models.core.exceptions import MelodyError, ToolError

logger = logging.getLogger(__name__)

# The dataset of the base model under --data-root (`melody train-styles` names it so).
BASE_DATASET = "base"
HELP = "evaluate the styles (perplexity, style fidelity, statistics) into a report"
# Defaults that differ by mode: the conditioned model's fidelity is read per kind of
# prime, so it needs more continuations per prime than the per-style models' pooled one.
SAMPLES = {"conditioned": 8, "per-style": 4}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``melody eval-styles``."""
    parser.add_argument("--styles", default=None,
                        help="comma-separated styles to evaluate (default: every style token "
                             "of the model with --data, else every installed model)")
    parser.add_argument("--data", type=Path, default=None, metavar="DIR",
                        help="the style-conditioned model's own dataset (its manifest names "
                             "each piece's style, e.g. data/conditioned): evaluate that "
                             "model's style tokens on it instead of per-style models")
    parser.add_argument("--model", default=None, metavar="M.onnx",
                        help="with --data: the style-conditioned model (default: the "
                             "installed any.onnx)")
    parser.add_argument("--openings", type=int, default=4,
                        help="with --data: held-out openings of each style's own music "
                             "continued under its token (default 4)")
    parser.add_argument("--max-piece-tokens", type=int, default=2048,
                        help="with --data: held-out tokens scored per piece, so the budget "
                             "spans many pieces (default 2048; 0: whole pieces)")
    parser.add_argument("--accompany-pieces", type=int, default=8,
                        help="with --data: held-out lead lines accompanied per style whose "
                             "pieces have lead and accompaniment (default 8; 0: none)")
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="folder of <style>.onnx (default: the installed styles)")
    parser.add_argument("--data-root", type=Path, default=Path("runs/styles/data"),
                        help="folder of the style datasets, one <style>/ each, plus base/ "
                             "(default: runs/styles/data, where `melody train-styles` builds "
                             "them)")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/styles.md"),
                        help="the Markdown report (default docs/styles.md); the JSON results "
                             "go beside it, the pictures and MIDI files into img/ beside it")
    parser.add_argument("--bars", type=int, default=8, help="bars per continuation (default 8)")
    parser.add_argument("--samples", type=int, default=None,
                        help="continuations per prime and style (default "
                             f"{SAMPLES['conditioned']} with --data, else "
                             f"{SAMPLES['per-style']})")
    parser.add_argument("--max-eval-tokens", type=int, default=50_000,
                        help="held-out tokens scored per style (default 50000)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed of the first sample")


def _check_args(args: argparse.Namespace) -> None:
    limits = (("--bars", args.bars, 1, 64), ("--samples", args.samples, 1, 100),
              ("--max-eval-tokens", args.max_eval_tokens, 0, 10_000_000),
              ("--openings", args.openings, 0, 100),
              ("--max-piece-tokens", args.max_piece_tokens, 0, 10_000_000),
              ("--accompany-pieces", args.accompany_pieces, 0, 1000))
    for flag, value, low, high in limits:
        if not low <= value <= high:
            raise ToolError(f"{flag} must be within {low} and {high} (received {value})")
    if not 0.05 <= args.temperature <= 5.0:
        raise ToolError(f"--temperature must be within 0.05 and 5 (received {args.temperature})")
    if not 0.0 < args.top_p <= 1.0:
        raise ToolError(f"--top-p must be within 0 and 1 (received {args.top_p})")


def _conditioned_command_line(args: argparse.Namespace) -> str:
    """The command that reproduces a ``--data`` run, for the report."""
    words = ["melody", "eval-styles", "--data", str(args.data)]
    if args.model:
        words += ["--model", str(args.model)]
    if args.styles:
        words += ["--styles", args.styles]
    words += ["-o", str(args.output), "--bars", str(args.bars), "--samples", str(args.samples),
              "--openings", str(args.openings), "--max-eval-tokens", str(args.max_eval_tokens),
              "--max-piece-tokens", str(args.max_piece_tokens), "--accompany-pieces",
              str(args.accompany_pieces), "--temperature", str(args.temperature), "--top-p",
              str(args.top_p), "--seed", str(args.seed)]
    return shlex.join(words)


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, for the report."""
    words = ["melody", "eval-styles", "--data-root", str(args.data_root), "-o", str(args.output),
             "--bars", str(args.bars), "--samples", str(args.samples),
             "--max-eval-tokens", str(args.max_eval_tokens), "--temperature",
             str(args.temperature), "--top-p", str(args.top_p), "--seed", str(args.seed)]
    if args.styles:
        words += ["--styles", args.styles]
    if args.models_dir:
        words += ["--models-dir", str(args.models_dir)]
    return shlex.join(words)


def _select_styles(args: argparse.Namespace) -> tuple[Path, dict[str, Path]]:
    from engine.model import installed_styles  # noqa: PLC0415
    from engine.tools.styles_cli import styles_directory  # noqa: PLC0415

    directory = styles_directory(args.models_dir)
    installed = installed_styles(directory)
    if not installed:
        raise ToolError(f"no style models in {directory}: train them with `melody train-styles` "
                        f"or pass --models-dir")
    if args.styles is None:
        return directory, installed
    wanted = [s.strip() for s in args.styles.split(",") if s.strip()]
    missing = [s for s in wanted if s not in installed]
    if missing:
        raise ToolError(f"not installed in {directory}: {', '.join(missing)} "
                        f"(installed: {', '.join(installed)})")
    return directory, {s: installed[s] for s in wanted}


def _classifier_data(data_root: Path, evaluated: dict[str, Path]) -> dict[str, Path]:
    """The styles the classifier learns: the evaluated ones, then every other style dataset.

    Other datasets under ``data_root`` join so that fidelity means the same whether one
    style or all are evaluated; ``base`` (every corpus together) is no style.
    """
    others = {} if not data_root.is_dir() else {
        d.name: d for d in sorted(data_root.iterdir())
        if d.name not in evaluated and d.name != BASE_DATASET and (d / "manifest.json").is_file()}
    return {**evaluated, **others}


def _train_classifier(data: dict[str, Path], config: Any) -> tuple[Any, dict[str, Any],
                                                                   dict[str, Any]]:
    """The classifier of real music, its report, and each style's real segments and histogram."""
    import numpy as np  # noqa: PLC0415

    from engine.tools.style_eval import reference_histogram  # noqa: PLC0415
    from models.analysis.style_classifier import dataset_segments, fit_on_segments  # noqa: PLC0415

    classes = list(data)
    train = {s: dataset_segments(d, "train", config.bars, max_per_piece=config.train_per_piece,
                                 max_segments=config.max_train_segments) for s, d in data.items()}
    test = {s: dataset_segments(d, "test", config.bars, max_per_piece=config.test_per_piece,
                                max_segments=config.max_test_segments) for s, d in data.items()}
    real = {s: {"test": test[s], "reference": reference_histogram(train[s])} for s in classes}
    if len(classes) < 2 or not all(train.values()) or not all(test.values()):
        logger.warning("style fidelity needs real segments of at least two styles; skipped")
        return None, {"classes": classes, "skipped": True}, real
    classifier, recall, confusion = fit_on_segments(train, test, classes)
    report = {"classes": classes,
              "train_segments": {s: len(train[s]) for s in classes},
              "test_segments": {s: len(test[s]) for s in classes},
              "real_recall": recall,
              "accuracy": float(np.trace(confusion) / max(confusion.sum(), 1)),
              "confusion": confusion.tolist(),
              "model": classifier.to_dict()}
    logger.info("classifier of real music: held-out accuracy %.1f%% over %s", 100 *
                report["accuracy"], ", ".join(f"{s} {r:.0%}" for s, r in
                                              report["real_recall"].items()))
    return classifier, report, real


def _fidelity(classifier: Any, report: dict[str, Any], style: str, continuations: list[Any],
              bars: int) -> dict[str, Any]:
    from models.analysis.style_classifier import MIN_SEGMENT_NOTES, feature_matrix  # noqa: PLC0415

    if classifier is None or style not in classifier.classes:
        return {}
    judged = [c for c in continuations if len(c.notes) >= MIN_SEGMENT_NOTES]
    if not judged:
        return {"generated": 0.0, "judged": 0, "real": report["real_recall"][style],
                "ratio": 0.0, "predicted": {}, "by_prime": {}}
    predictions = classifier.predict(feature_matrix([c.segment(bars) for c in judged]))
    names = [classifier.classes[int(p)] for p in predictions]
    # Continuations too empty to judge count as not recognised.
    generated = sum(n == style for n in names) / len(continuations)
    real = report["real_recall"][style]
    by_prime: dict[str, list[bool]] = {}
    for cont, name in zip(judged, names, strict=True):
        by_prime.setdefault(cont.prime.name, []).append(name == style)
    return {"generated": generated, "judged": len(judged), "real": real,
            "ratio": generated / real if real else None,
            "predicted": {c: names.count(c) for c in classifier.classes},
            "by_prime": {p: sum(v) / len(v) for p, v in by_prime.items()}}


def write_fur_elise(style: str, continuations: list[Any], img_dir: Path, doc_dir: Path, *,
                    title: str | None = None) -> dict[str, str]:
    """The first Für Elise continuation of a style as MIDI and piano roll in ``img_dir``.

    Returns:
        ``midi`` and ``png`` relative to ``doc_dir``, ``midi_path`` as typed from the
        working directory; empty when no continuation is of Für Elise.

    Raises:
        ToolError: matplotlib is missing.
    """
    from models.analysis.pianoroll import draw_piano_roll  # noqa: PLC0415
    from models.data.midifile import CONTINUATION_MARKER, write_midi  # noqa: PLC0415

    first = next((c for c in continuations if c.prime.name == "fur_elise" and c.sample == 0),
                 None)
    if first is None:
        return {}
    prime = first.prime
    midi = write_midi(img_dir / f"fur_elise_{style}.mid", prime.notes,
                      time_signature=prime.time_signature, tempo=72.0,
                      tracks=[("continuation", first.notes)],
                      markers=[(prime.length, CONTINUATION_MARKER)])
    png = draw_piano_roll([*prime.notes, *first.notes], img_dir / f"fur_elise_{style}.png",
                          split_beat=prime.length, bar_length=prime.bar_length,
                          title=title or f"Für Elise continued by the {style} model",
                          width=1200, height=450)
    return {"midi": str(midi.relative_to(doc_dir)), "png": str(png.relative_to(doc_dir)),
            "midi_path": os.path.relpath(midi)}  # as typed from where the command ran


def portable_path(path: Path) -> str:
    """``path`` relative to the working directory when inside it: the committed report
    must not carry the paths of the machine that wrote it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _portable_facts(facts: dict[str, Any]) -> dict[str, Any]:
    return {**facts, "file": portable_path(Path(facts["file"]))}


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the report, the JSON results and the Für Elise pictures.

    Raises:
        ToolError: bad flags, no installed styles, or matplotlib missing.
        EngineError: a model cannot be loaded or fails.
    """
    from tqdm import tqdm  # noqa: PLC0415

    from engine.model import load_model  # noqa: PLC0415 - onnxruntime loads here
    from engine.tools.style_eval import (  # noqa: PLC0415
        EvalConfig,
        base_train_pieces,
        generate_continuations,
        heldout_metrics,
        heldout_sequences,
        key_kept_share,
        passage_stats,
        real_key_pairs,
    )
    from engine.tools.styles_cli import model_facts  # noqa: PLC0415
    from engine.tools.styles_report import render_report, write_page  # noqa: PLC0415
    from models.analysis.pianoroll import draw_piano_roll  # noqa: PLC0415
    from models.analysis.primes import fixed_primes  # noqa: PLC0415
    from models.core.protocol.messages import SamplingParams  # noqa: PLC0415

    mode = "conditioned" if args.data is not None else "per-style"
    if args.samples is None:
        args.samples = SAMPLES[mode]
    _check_args(args)
    sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    if mode == "conditioned":
        from engine.tools.conditioned_run import run as run_conditioned  # noqa: PLC0415

        config = EvalConfig(bars=args.bars, samples=args.samples,
                            max_eval_tokens=args.max_eval_tokens, openings=args.openings,
                            max_piece_tokens=args.max_piece_tokens, sampling=sampling)
        return run_conditioned(args, config, _conditioned_command_line(args))
    models_dir, styles = _select_styles(args)
    config = EvalConfig(bars=args.bars, samples=args.samples, max_eval_tokens=args.max_eval_tokens,
                        sampling=sampling)
    data_root: Path = args.data_root
    data = {s: data_root / s for s in styles if (data_root / s / "manifest.json").is_file()}
    for style in styles:
        if style not in data:
            logger.warning("%s: no dataset in %s; no held-out metrics or fidelity for it",
                           style, data_root / style)
    doc_dir = args.output.resolve().parent
    img_dir = doc_dir / "img"
    results: dict[str, Any] = {
        "generated_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": _command_line(args),
        "models_dir": portable_path(models_dir), "data_root": portable_path(data_root),
        "config": {"bars": config.bars, "prime_bars": config.prime_bars,
                   "samples": config.samples, "max_eval_tokens": config.max_eval_tokens,
                   "sampling": {"temperature": args.temperature, "top_p": args.top_p,
                                "seed": args.seed}},
        "styles": {},
    }
    classifier, report, real = _train_classifier(_classifier_data(data_root, data), config)
    results["classifier"] = {k: v for k, v in report.items() if k != "model"}
    primes = fixed_primes(data_root if data else None, bars=config.prime_bars)
    results["primes"] = [{"name": p.name, "title": p.title, "source": p.source,
                          "bars": p.bars, "time_signature": list(p.time_signature),
                          "notes": len(p.notes)} for p in primes]
    fur = primes[0]
    results["fur_elise_prime_png"] = str(draw_piano_roll(
        fur.notes, img_dir / "fur_elise_prime.png", bar_length=fur.bar_length,
        title="Für Elise, the prime: the upbeat bar and bars 1-8", width=1200,
        height=450).relative_to(doc_dir))
    seen_by_base = base_train_pieces(data_root, BASE_DATASET)
    for style, path in styles.items():
        entry: dict[str, Any] = {"notes": []}
        results["styles"][style] = entry
        try:
            model = load_model(path)
        except MelodyError as err:
            entry["facts"] = _portable_facts(model_facts(path))
            entry["notes"].append(f"cannot be loaded: {err}")
            continue
        entry["facts"] = _portable_facts(model_facts(path, model))
        if model.style != style:
            entry["notes"].append(f"the file {path.name} says its style is {model.style!r}")
        if style not in data:
            entry["notes"].append(f"no dataset in {data_root / style}: no held-out metrics, "
                                  "fidelity or real statistics")
        else:
            sequences, kept, excluded = heldout_sequences(data[style], seen_by_base)
            entry.update(heldout_pieces=kept, heldout_excluded=excluded)
            with tqdm(total=min(config.max_eval_tokens, sum(len(s) for s in sequences)),
                      unit="tok", desc=f"held-out {style}") as bar:
                entry["heldout"] = heldout_metrics(model, sequences, config.max_eval_tokens,
                                                   bar.update)
            if kept < 5:
                entry["notes"].append(f"only {kept} held-out test pieces were never seen by "
                                      f"the base model ({excluded} left out): perplexity is "
                                      "noisy")
        with tqdm(unit="step", desc=f"generating {style}") as bar:
            continuations = generate_continuations(model, primes, config, bar.update)
        unfinished = sum(c.reason != "complete" for c in continuations)
        if unfinished:
            entry["notes"].append(f"{unfinished} of {len(continuations)} continuations ended "
                                  "before their last bar")
        entry["fidelity"] = _fidelity(classifier, report, style, continuations, config.bars)
        if not entry["fidelity"] and style in data:
            entry["notes"].append("no style fidelity: the classifier needs datasets of at least "
                                  "two styles under the data root")
        reference = real[style]["reference"] if style in real else None
        entry["generated"] = passage_stats([c.segment(config.bars) for c in continuations],
                                           reference)
        entry["generated"]["key_kept"] = key_kept_share(
            [(c.prime.notes, c.relative) for c in continuations])
        if style in real:
            entry["real"] = passage_stats(real[style]["test"], reference)
            entry["real"]["key_kept"] = key_kept_share(
                real_key_pairs(data[style], config.prime_bars, config.bars))
        entry["fur_elise"] = write_fur_elise(style, continuations, img_dir, doc_dir)
    write_page(args.output, results, render_report)
    return 0
