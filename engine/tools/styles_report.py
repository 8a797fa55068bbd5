"""``docs/styles.md`` from the JSON results of ``melody eval-styles``.

A pure function of the results, so the page can be rebuilt from ``styles.json`` without
running the models again, and a test can check it on made-up numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# The aim: each style's output recognised as its own style at least this share of
# how often its real held-out music is.
FIDELITY_AIM = 0.8


def num(value: Any, fmt: str = "{:.2f}") -> str:
    """A number in ``fmt``, or a dash when there is none."""
    return "–" if value is None else fmt.format(value)


def pct(value: Any) -> str:
    """A share as a whole percentage, or a dash."""
    return num(value, "{:.0%}")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _verdict(fidelity: dict[str, Any]) -> str:
    ratio = fidelity.get("ratio")
    if ratio is None:
        return "–"
    return f"{ratio:.2f} {'✓' if ratio >= FIDELITY_AIM else '✗ below aim'}"


def _model_section(styles: dict[str, Any]) -> list[str]:
    rows = []
    for name, style in styles.items():
        facts = style.get("facts", {})
        model = f"{facts.get('arch', '?')} {facts.get('layers', '?')}×{facts.get('width', '?')}"
        rows.append((f"`{name}`", num(facts.get("size_mb"), "{:.1f} MB"), model,
                     facts.get("quantization", "–"), facts.get("corpus") or "–",
                     num(facts.get("train_pieces"), "{}"), num(facts.get("val_perplexity")),
                     pct(facts.get("val_accuracy"))))
    return table(("style", "size", "model", "quantization", "trained on", "train pieces",
                   "val ppl", "val acc"), rows)


def _heldout_section(styles: dict[str, Any]) -> list[str]:
    rows = []
    for name, style in styles.items():
        held = style.get("heldout") or {}
        rows.append((f"`{name}`", num(held.get("perplexity")), pct(held.get("accuracy")),
                     num(held.get("tokens"), "{:,}"), num(style.get("heldout_pieces"), "{}"),
                     num(style.get("heldout_excluded"), "{}")))
    return table(("style", "perplexity", "accuracy", "tokens scored", "pieces",
                   "test pieces left out (seen by the base model)"), rows)


def _fidelity_section(results: dict[str, Any]) -> list[str]:
    styles = results["styles"]
    rows = []
    for name, style in styles.items():
        fid = style.get("fidelity") or {}
        rows.append((f"`{name}`", pct(fid.get("generated")), num(fid.get("judged"), "{}"),
                     pct(fid.get("real")), _verdict(fid)))
    lines = table(("style", "continuations recognised as the style", "continuations judged",
                    "real held-out music recognised", "ratio (aim ≥ 0.8)"), rows)
    classifier = results.get("classifier") or {}
    classes = classifier.get("classes") or []
    lines += confusion_section(classifier)
    by_prime = [(name, style["fidelity"].get("by_prime") or {}) for name, style in
                styles.items() if style.get("fidelity")]
    primes = sorted({p for _, shares in by_prime for p in shares})
    if primes:
        lines += ["", "Continuations recognised as the model's own style, by prime (**bold**: "
                  "the prime from the model's own style). A continuation follows its prime's "
                  "texture, so a foreign prime pulls the judgement towards the prime's style:", ""]
        lines += table(("model \\ prime", *(f"`{p}`" for p in primes)),
                        [(f"`{name}`", *(_own(name, p, shares.get(p)) for p in primes))
                         for name, shares in by_prime])
    predicted = [(name, style["fidelity"].get("predicted") or {}) for name, style in
                 styles.items() if style.get("fidelity")]
    if classes and predicted:
        lines += ["", "What the generated continuations were recognised as:", ""]
        lines += table(("model \\ judged as", *classes),
                        [(f"`{name}`", *(counts.get(c, 0) for c in classes))
                         for name, counts in predicted])
    return lines


def _own(style: str, prime: str, share: float | None) -> str:
    """A by-prime share, bold on the prime cut from the style's own test pieces."""
    text = pct(share)
    return f"**{text}**" if prime == f"{style}_test" else text


def _stats_section(styles: dict[str, Any]) -> list[str]:
    rows = []
    for name, style in styles.items():
        gen, real = style.get("generated") or {}, style.get("real") or {}
        rows.append((f"`{name}`",
                     f"{num(gen.get('pc_distance'))} / {num(real.get('pc_distance'))}",
                     f"{pct(gen.get('key_kept'))} / {pct(real.get('key_kept'))}",
                     f"{num(gen.get('density'))} / {num(real.get('density'))}",
                     f"{num(gen.get('polyphony'))} / {num(real.get('polyphony'))}",
                     num(gen.get("empty"), "{}")))
    return table(("style (generated / real)", "pitch-class distance", "key kept",
                   "notes per beat", "polyphony", "empty continuations"), rows)


def _primes_section(primes: list[dict[str, Any]]) -> list[str]:
    rows = [(f"`{p['name']}`", p["title"], f"{p['time_signature'][0]}/{p['time_signature'][1]}",
             p["bars"], p["notes"], p["source"]) for p in primes]
    return table(("prime", "what", "metre", "bars", "notes", "source"), rows)


def confusion_section(classifier: dict[str, Any], unit: str = "") -> list[str]:
    """The classifier's confusion on real held-out segments as a table (nothing when the
    results hold none); ``unit`` names what the cells count."""
    classes = classifier.get("classes") or []
    confusion = classifier.get("confusion")
    if not (classes and confusion):
        return []
    counted = f"; {unit}" if unit else ""
    return ["", f"Confusion of the classifier on real held-out segments (rows: true style, "
                f"columns: predicted{counted}):", "",
            *table(("true \\ predicted", *classes),
                   [(c, *row) for c, row in zip(classes, confusion, strict=True)])]


def fur_elise_section(results: dict[str, Any]) -> list[str]:
    """The section's heading, the prime's piano roll, then each style's continuation of it
    (roll, MIDI, how to listen): the part of the page every evaluation shares."""
    lines = ["## Für Elise in every style", "",
             "The prime is blue, the continuation orange (first sample of each style).", ""]
    prime_png = results.get("fur_elise_prime_png")
    if prime_png:
        lines += [f"![Für Elise, the prime]({prime_png})", ""]
    for name, style in results["styles"].items():
        pictures = style.get("fur_elise") or {}
        if not pictures.get("png"):
            continue
        lines += [f"### `{name}`", "",
                  f"![Für Elise continued in the {name} style]({pictures['png']})", "",
                  f"MIDI: [{pictures['midi']}]({pictures['midi']}); listen with "
                  f"`melody render {pictures.get('midi_path', pictures['midi'])} "
                  f"-o fur_elise_{name}.wav`.", ""]
    return lines


def render_report(results: dict[str, Any]) -> str:
    """The Markdown page of an evaluation."""
    config = results.get("config", {})
    sampling = config.get("sampling", {})
    styles = results["styles"]
    caveats = [f"- `{name}`: {note}" for name, style in styles.items()
               for note in style.get("notes", [])]
    if caveats:
        caveats = ["## Caveats", "", *caveats, ""]
    lines = [
        "# Style models: evaluation",
        "",
        f"Written by `melody eval-styles` on {results.get('generated_at', '?')} from the models "
        f"in `{results.get('models_dir', '?')}` and the datasets in "
        f"`{results.get('data_root', '?')}`. Rebuild it with the command at the end.",
        "",
        "## The models",
        "",
        *_model_section(styles),
        "",
        "## Held-out perplexity and accuracy",
        "",
        "Next-token perplexity and accuracy of each ONNX model (run through the engine) on "
        "the test split of its style's dataset: pieces the style was never fine-tuned on. "
        "Splits are drawn per piece (a hash of its name), so these are test pieces of the "
        "base model's dataset too; any test piece the base model saw in its training split "
        "would be left out and counted, so every scored piece is new to the model.",
        "",
        *_heldout_section(styles),
        "",
        "## Style fidelity",
        "",
        "A classifier of real music (multinomial logistic regression on pitch-class, interval, "
        "rhythm, density, polyphony and register statistics; "
        "`models/analysis/style_classifier.py`) is "
        f"trained on {config.get('bars', '?')}-bar segments of the train split of every "
        "evaluated style, and judges each style's continuations of the fixed primes. "
        "Its recall on real held-out segments is the yardstick: the ratio compares how often "
        "a style's continuations are recognised as that style with how often its real music is.",
        "",
        *_fidelity_section(results),
        "",
        "## Musical statistics",
        "",
        "Continuations next to real held-out music of the same style: mean total-variation "
        "distance of the key-relative pitch-class histogram to the style's real (train) mean; "
        "share of continuations whose Krumhansl–Schmuckler key equals the prime's (for real "
        f"held-out music: the key of the {config.get('bars', '?')} bars after the first "
        f"{config.get('prime_bars', '?')} against those); "
        "notes per beat; mean number of notes sounding together.",
        "",
        *_stats_section(styles),
        "",
        "## The prime set",
        "",
        "Every style continues every prime below, "
        f"{config.get('samples', '?')} times each with sampling seeds "
        f"{sampling.get('seed', 0)}… (temperature {sampling.get('temperature', '?')}, "
        f"top-p {sampling.get('top_p', '?')}), for {config.get('bars', '?')} bars. Für Elise is "
        "the reference melody of the study melodyd grew from and is in no training corpus; "
        "the others are the openings of the first suitable pieces of the *test* splits of "
        "contrasting styles (chosen deterministically, see `models/analysis/primes.py`), so every "
        "model is heard continuing its own idiom and foreign ones, on music it never saw.",
        "",
        *_primes_section(results.get("primes", [])),
        "",
        *fur_elise_section(results),
        *caveats,
        "## Reproduce",
        "",
        "```",
        results.get("command", "melody eval-styles -o docs/styles.md"),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_page(output: Path, results: dict[str, Any],
               render: Callable[[dict[str, Any]], str]) -> None:
    """Write an evaluation's page (``output``, Markdown by ``render``) and its JSON beside
    it (same name, ``.json``), and print both paths."""
    output.parent.mkdir(parents=True, exist_ok=True)
    json_path = output.with_suffix(".json")
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    output.write_text(render(results))
    print(output)
    print(json_path)
