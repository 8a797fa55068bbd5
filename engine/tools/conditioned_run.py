"""``melody eval-styles --data DIR``: the style-conditioned model, every style token in turn.

For each style token of the model (``--styles`` picks some): held-out perplexity and
accuracy on the style's test pieces of the model's dataset under its token and under
"any style"; continuations of the neutral primes and of held-out openings of its own
music, judged by the classifier of real music; their statistics next to real held-out
music; Für Elise as MIDI and piano roll. Then the "any style" baseline on the neutral
primes and the accompaniment of held-out lead lines. Writes the JSON results and the page
(``engine.tools.conditioned_report``). The measures are ``engine.tools.conditioned_eval``'s.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from models.core.exceptions import ToolError

logger = logging.getLogger(__name__)

# Below this many held-out pieces a style's perplexity and recall are noisy: say so.
FEW_PIECES = 5
# The first tokens of each held-out piece (a few bars), also scored on their own: there the
# piece has said least about its style, so the style token should matter most.
OPENING_TOKENS = 256


def _styles(args: argparse.Namespace, slots: dict[str, int], model_path: Path) -> list[str]:
    from models.core.protocol.limits import STYLE_ANY  # noqa: PLC0415

    named = [s for s in slots if s != STYLE_ANY]
    if not named:
        raise ToolError(f"{model_path} has no style tokens: evaluate per-style models with "
                        "--data-root instead of --data")
    if not args.styles:
        return named
    wanted = [s.strip() for s in args.styles.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in named]
    if unknown:
        raise ToolError(f"{model_path.name} has no style {', '.join(unknown)} "
                        f"(its styles: {', '.join(named)})")
    return wanted


def _check_vocabulary(manifest: dict[str, Any], model: Any, data: Path) -> None:
    """The dataset's tokens must be the model's, or every held-out score is meaningless."""
    theirs = (manifest.get("tokenizer") or {}).get("fingerprint")
    ours = model.tokenizer.fingerprint
    if theirs != ours:
        raise ToolError(f"{data} was built with another vocabulary (fingerprint {theirs}) "
                        f"than {model.path.name} ({ours}): pass the model's own dataset")


def _prime_facts(prime: Any) -> dict[str, Any]:
    return {"name": prime.name, "title": prime.title, "source": prime.source,
            "bars": prime.bars, "time_signature": list(prime.time_signature),
            "notes": len(prime.notes)}


def _heldout(model: Any, data: Path, style: str, config: Any, entry: dict[str, Any]) -> None:
    """Score the style's test pieces under its token and under "any style"."""
    from tqdm import tqdm  # noqa: PLC0415

    from engine.tools.conditioned_eval import style_test_sequences  # noqa: PLC0415
    from engine.tools.style_eval import heldout_metrics_with_head  # noqa: PLC0415
    from models.core.protocol.limits import STYLE_ANY  # noqa: PLC0415

    sequences = style_test_sequences(data, style)
    if not sequences or not config.max_eval_tokens:
        return
    cap = config.max_piece_tokens or None
    available = sum(len(s[2:][:cap]) for s in sequences)
    tokenizer = model.tokenizer
    for key, name in (("heldout", style), ("heldout_any", STYLE_ANY)):
        head = [tokenizer.bos_id, tokenizer.style_id(name)]
        with tqdm(total=min(config.max_eval_tokens, available), unit="tok",
                  desc=f"held-out {style} as {name}") as bar:
            entry[key] = heldout_metrics_with_head(
                model, sequences, head, config.max_eval_tokens,
                max_piece_tokens=config.max_piece_tokens, opening=OPENING_TOKENS,
                progress=bar.update)


def _evaluate_style(model: Any, data: Path, style: str, config: Any, *, real: Any,
                    counts: dict[str, int], img_dir: Path, doc_dir: Path) -> dict[str, Any]:
    from tqdm import tqdm  # noqa: PLC0415

    from engine.tools.conditioned_eval import (  # noqa: PLC0415
        KINDS,
        NEUTRAL,
        OWN,
        continuation_stats,
        fidelity_by_kind,
        judge,
        prime_kind,
        verdict_counts,
    )
    from engine.tools.eval_styles_cli import write_fur_elise  # noqa: PLC0415
    from engine.tools.style_eval import (  # noqa: PLC0415
        generate_continuations,
        key_kept_share,
        passage_stats,
        real_key_pairs,
    )
    from models.analysis.primes import neutral_primes, style_openings  # noqa: PLC0415

    entry: dict[str, Any] = {"pieces": counts, "notes": [], "seconds": {}}
    test_pieces = counts.get("test", 0)
    started = time.monotonic()
    _heldout(model, data, style, config, entry)
    entry["seconds"]["heldout"] = round(time.monotonic() - started, 1)
    if not test_pieces:
        entry["notes"].append(f"{counts.get('train', 0)} train pieces and no held-out ones: "
                              "no held-out perplexity, no classifier class, no own-idiom "
                              "primes and no real statistics; only what its continuations "
                              "of the neutral primes are heard as")
    elif test_pieces < FEW_PIECES:
        entry["notes"].append(f"only {test_pieces} held-out pieces: its perplexity and the "
                              "classifier's recall on it rest on few pieces")
    if style in real.report.get("left_out", {}) and test_pieces:
        entry["notes"].append(f"not a class of the classifier: {real.report['left_out'][style]}")
    openings = (style_openings(data, style, config.prime_bars, config.openings)
                if test_pieces and config.openings else [])
    entry["openings"] = [_prime_facts(p) for p in openings]
    started = time.monotonic()
    with tqdm(unit="step", desc=f"generating {style}") as bar:
        continuations = generate_continuations(model, [*neutral_primes(), *openings], config,
                                               bar.update, style=style)
    entry["seconds"]["generation"] = round(time.monotonic() - started, 1)
    unfinished = sum(c.reason != "complete" for c in continuations)
    if unfinished:
        entry["notes"].append(f"{unfinished} of {len(continuations)} continuations ended "
                              "before their last bar")
    verdicts = judge(real.classifier, continuations, config.bars)
    # A style the classifier does not know cannot be heard: no share to report, only
    # what it was heard as.
    classes = real.classifier.classes if real.classifier is not None else []
    entry["fidelity"] = (fidelity_by_kind(style, continuations, verdicts, real.recall(style))
                         if style in classes else {})
    entry["verdicts"] = {kind: counts for kind in KINDS
                         if (counts := verdict_counts(continuations, verdicts, [kind]))}
    reference = real.reference.get(style)
    entry["generated"] = {
        kind: continuation_stats([c for c in continuations
                                  if (prime_kind(c.prime) == OWN) == (kind == OWN)],
                                 config.bars, reference)
        for kind in (NEUTRAL, OWN)}
    if real.test.get(style):
        entry["real"] = passage_stats(real.test[style], reference)
        entry["real"]["key_kept"] = key_kept_share(
            real_key_pairs(data, config.prime_bars, config.bars, style=style))
    entry["fur_elise"] = write_fur_elise(style, continuations, img_dir, doc_dir,
                                         title=f"Für Elise continued in the {style} style")
    return entry


def _any_baseline(model: Any, config: Any, real: Any, styles: list[str]) -> dict[str, Any]:
    """The neutral primes continued under "any style": how often each style is heard
    without its token, prime by prime (what the token adds to fidelity)."""
    from tqdm import tqdm  # noqa: PLC0415

    from engine.tools.conditioned_eval import (  # noqa: PLC0415
        KINDS,
        fidelity_by_kind,
        judge,
        verdict_counts,
    )
    from engine.tools.style_eval import generate_continuations  # noqa: PLC0415
    from models.analysis.primes import neutral_primes  # noqa: PLC0415
    from models.core.protocol.limits import STYLE_ANY  # noqa: PLC0415

    with tqdm(unit="step", desc="generating any") as bar:
        continuations = generate_continuations(model, neutral_primes(), config, bar.update,
                                               style=STYLE_ANY)
    verdicts = judge(real.classifier, continuations, config.bars)
    classes = real.classifier.classes if real.classifier is not None else []
    return {"verdicts": {kind: counts for kind in KINDS
                         if (counts := verdict_counts(continuations, verdicts, [kind]))},
            "fidelity": {s: fidelity_by_kind(s, continuations, verdicts, real.recall(s))
                         for s in styles if s in classes}}


def run(args: argparse.Namespace, config: Any, command: str) -> int:
    """Evaluate the conditioned model and write the page and its JSON.

    Raises:
        ToolError: a model without style tokens, an unknown style, or a dataset of
            another vocabulary.
        DataError: the dataset is missing or malformed.
        EngineError: the model cannot be loaded or fails.
    """
    from tqdm import tqdm  # noqa: PLC0415

    from engine.model import load_model, resolve_model_path  # noqa: PLC0415
    from engine.tools.conditioned_eval import (  # noqa: PLC0415
        accompaniment_rows,
        dataset_styles,
        lead_styles,
        train_classifier,
    )
    from engine.tools.conditioned_report import render_report  # noqa: PLC0415
    from engine.tools.eval_styles_cli import portable_path  # noqa: PLC0415
    from engine.tools.styles_cli import model_facts  # noqa: PLC0415
    from engine.tools.styles_report import write_page  # noqa: PLC0415
    from models.analysis.pianoroll import draw_piano_roll  # noqa: PLC0415
    from models.analysis.primes import neutral_primes  # noqa: PLC0415
    from models.core.protocol.limits import STYLE_ANY  # noqa: PLC0415
    from models.data.manifest import load_manifest  # noqa: PLC0415

    path = resolve_model_path(model=args.model) if args.model else resolve_model_path(
        style=STYLE_ANY)
    model = load_model(path)
    styles = _styles(args, model.tokenizer.style_slots, path)
    data = Path(args.data)
    manifest = load_manifest(data)
    _check_vocabulary(manifest, model, data)
    counts = dataset_styles(manifest)
    # Every style of the model with data is a class, whichever are evaluated, so that a
    # style's fidelity does not depend on which others were asked for.
    known = [s for s in model.tokenizer.style_slots if s in counts]
    doc_dir = args.output.resolve().parent
    img_dir = doc_dir / "img"
    facts = model_facts(path, model)
    results: dict[str, Any] = {
        "mode": "conditioned",
        "generated_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command,
        "model": {**facts, "file": portable_path(Path(facts["file"]))},
        "data": portable_path(data),
        "config": {"bars": config.bars, "prime_bars": config.prime_bars,
                   "samples": config.samples, "openings": config.openings,
                   "max_eval_tokens": config.max_eval_tokens,
                   "max_piece_tokens": config.max_piece_tokens,
                   "accompany_pieces": args.accompany_pieces,
                   "sampling": {"temperature": config.sampling.temperature,
                                "top_p": config.sampling.top_p, "seed": config.sampling.seed}},
        "dataset_styles": counts,
        "primes": [_prime_facts(p) for p in neutral_primes()],
        "styles": {},
    }
    started = time.monotonic()
    with tqdm(total=len(known), unit="style", desc="real music") as bar:
        real = train_classifier(data, known, config, bar.update)
    results["seconds"] = {"classifier": round(time.monotonic() - started, 1)}
    results["classifier"] = real.report
    fur = neutral_primes()[0]
    results["fur_elise_prime_png"] = str(draw_piano_roll(
        fur.notes, img_dir / "fur_elise_prime.png", bar_length=fur.bar_length,
        title="Für Elise, the prime: the upbeat bar and bars 1-8", width=1200,
        height=450).relative_to(doc_dir))
    for style in styles:
        results["styles"][style] = _evaluate_style(
            model, data, style, config, real=real, counts=counts.get(style, {}),
            img_dir=img_dir, doc_dir=doc_dir)
    started = time.monotonic()
    results["any"] = _any_baseline(model, config, real, styles)
    results["seconds"]["any_baseline"] = round(time.monotonic() - started, 1)
    accompanied = [s for s in lead_styles(manifest, styles) if counts.get(s, {}).get("test")]
    started = time.monotonic()
    with tqdm(total=len(accompanied) * args.accompany_pieces, unit="piece",
              desc="accompanying") as bar:
        results["accompaniment"] = accompaniment_rows(
            model, data, accompanied, pieces=args.accompany_pieces, bars=config.bars,
            seed=config.sampling.seed or 0, progress=bar.update)
    results["seconds"]["accompaniment"] = round(time.monotonic() - started, 1)
    write_page(args.output, results, render_report)
    return 0
