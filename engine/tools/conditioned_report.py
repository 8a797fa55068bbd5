"""``docs/styles.md`` from the JSON results of ``melody eval-styles --data``.

A pure function of the results (``engine.tools.conditioned_run`` writes them), so the page
can be rebuilt without running the model again, and a test can check it on made-up
numbers.
"""

from __future__ import annotations

from typing import Any

from engine.tools.styles_report import (
    FIDELITY_AIM,
    confusion_section,
    fur_elise_section,
    num,
    pct,
    table,
)

# Column titles of the kinds of prime (``engine.tools.conditioned_eval.KINDS``).
KIND_TITLES = {"fur_elise": "Für Elise", "c_major": "C-major phrase",
               "folk_tune": "folk tune", "neutral": "neutral, all three",
               "own": "own idiom"}
TOO_EMPTY = "(too empty)"


def fidelity_cell(fidelity: dict[str, Any] | None) -> str:
    """``share · ratio ✓/✗`` of one kind of prime (the share alone without a ratio)."""
    if not fidelity or fidelity.get("share") is None:
        return "–"
    share = pct(fidelity["share"])
    if fidelity.get("ratio") is None:
        return share
    mark = "✓" if fidelity["ratio"] >= FIDELITY_AIM else "✗"
    return f"{share} · {fidelity['ratio']:.2f} {mark}"


def _model_section(results: dict[str, Any]) -> list[str]:
    facts = results.get("model") or {}
    shape = f"{facts.get('arch', '?')} {facts.get('layers', '?')}×{facts.get('width', '?')}"
    lines = table(("file", "size", "model", "quantization", "train pieces", "val ppl",
                   "val acc"),
                  [(f"`{facts.get('file', '?')}`", num(facts.get("size_mb"), "{:.1f} MB"),
                    shape, facts.get("quantization", "–"), num(facts.get("train_pieces"), "{}"),
                    num(facts.get("val_perplexity")), pct(facts.get("val_accuracy")))])
    counts = results.get("dataset_styles") or {}
    rows = []
    for name in results["styles"]:
        pieces = counts.get(name) or {}
        rows.append((f"`{name}`", *(num(pieces.get(s, 0), "{:,}") for s in
                                    ("train", "validation", "test"))))
    lines += ["", "Pieces of each style in the dataset (the manifest's `style`), by split:",
              "", *table(("style", "train", "validation", "test"), rows)]
    return lines


def _heldout_section(styles: dict[str, Any]) -> list[str]:
    rows = []
    for name, style in styles.items():
        own, anyone = style.get("heldout") or {}, style.get("heldout_any") or {}
        gain = None
        if own.get("loss") is not None and anyone.get("loss") is not None:
            gain = anyone["loss"] - own["loss"]
        early, early_any = own.get("opening") or {}, anyone.get("opening") or {}
        rows.append((f"`{name}`", num((style.get("pieces") or {}).get("test"), "{}"),
                     num(own.get("sequences"), "{}"), num(own.get("tokens"), "{:,}"),
                     num(own.get("perplexity")), pct(own.get("accuracy")),
                     num(anyone.get("perplexity")), pct(anyone.get("accuracy")),
                     num(gain, "{:+.3f}"),
                     f"{num(early.get('perplexity'))} / {num(early_any.get('perplexity'))}"))
    opening = next((s["heldout"]["opening"].get("per_piece") for s in styles.values()
                    if (s.get("heldout") or {}).get("opening")), None)
    return table(("style", "test pieces", "pieces scored", "tokens scored",
                  "perplexity (style token)", "accuracy", "perplexity (any)", "accuracy (any)",
                  "nats/token the token saves",
                  f"first {num(opening, '{}')} tokens of a piece: perplexity (style / any)"),
                 rows)


def _fidelity_section(results: dict[str, Any]) -> list[str]:
    styles = results["styles"]
    baseline = (results.get("any") or {}).get("fidelity") or {}
    rows = []
    for name, style in styles.items():
        fidelity = style.get("fidelity") or {}
        real = next((f.get("real") for f in fidelity.values() if f.get("real") is not None),
                    None)
        rows.append((f"`{name}`", pct(real),
                     *(fidelity_cell(fidelity.get(kind)) for kind in KIND_TITLES),
                     fidelity_cell((baseline.get(name) or {}).get("neutral"))))
    lines = table(("style", "real held-out music recognised",
                   *KIND_TITLES.values(), "any-style token on the neutral primes"), rows)
    neutral_titles = {k: v for k, v in KIND_TITLES.items() if k != "own"}
    base_rows = [(f"`{name}`", *(fidelity_cell(shares.get(kind)) for kind in neutral_titles))
                 for name, shares in baseline.items()]
    if base_rows:
        lines += ["", "The baseline prime by prime: the neutral primes continued under the "
                  "\"any style\" token, and how often the classifier hears each style there "
                  "(the same cells as above, without the style asked for):", ""]
        lines += table(("heard as", *neutral_titles.values()), base_rows)
    classifier = results.get("classifier") or {}
    classes = classifier.get("classes") or []
    lines += confusion_section(classifier, unit="segments")
    heard = [*classes, TOO_EMPTY]
    rows = []
    for name, style in styles.items():
        for kind in ("neutral", "own"):
            counts = (style.get("verdicts") or {}).get(kind) or {}
            if counts:
                rows.append((f"`{name}` ({KIND_TITLES[kind]})",
                             *(counts.get(c, 0) for c in heard)))
    any_counts = ((results.get("any") or {}).get("verdicts") or {}).get("neutral") or {}
    if any_counts:
        rows.append(("any style (neutral)", *(any_counts.get(c, 0) for c in heard)))
    if classes and rows:
        lines += ["", "What the continuations were heard as (continuations):", ""]
        lines += table(("token (primes) \\ heard as", *heard), rows)
    return lines


def _shortfalls(results: dict[str, Any]) -> list[str]:
    """One line per style below the aim: each kind of prime it missed on, its ratio and
    what its continuations were heard as instead."""
    lines = []
    for name, style in results["styles"].items():
        fidelity = style.get("fidelity") or {}
        verdicts = style.get("verdicts") or {}
        misses = []
        for kind, title in KIND_TITLES.items():
            result = fidelity.get(kind) or {}
            if result.get("met") is not False:
                continue
            others = {k: v for k, v in (verdicts.get(kind) or {}).items() if k != name}
            total = sum((verdicts.get(kind) or {}).values())
            heard = ""
            if others and total:
                top, count = max(others.items(), key=lambda item: item[1])
                heard = f", heard as {top} {count / total:.0%}"
            misses.append(f"{title} {result['ratio']:.2f}{heard}")
        if misses:
            lines.append(f"- `{name}`: " + "; ".join(misses) + ".")
    return lines


def _reading(results: dict[str, Any]) -> list[str]:
    """What the numbers say about the token's part and the yardstick's, in sentences
    computed from them (so the page stays true when it is rebuilt)."""
    styles = results["styles"]
    lines = []
    gains = [(name, s["heldout_any"]["loss"] - s["heldout"]["loss"],
              (s["heldout_any"].get("opening") or {}).get("loss"),
              (s["heldout"].get("opening") or {}).get("loss"))
             for name, s in styles.items()
             if (s.get("heldout") or {}).get("loss") is not None
             and (s.get("heldout_any") or {}).get("loss") is not None]
    if gains:
        low, high = min(g for _, g, _, _ in gains), max(g for _, g, _, _ in gains)
        early = [a - b for _, _, a, b in gains if a is not None and b is not None]
        text = (f"- **The style token's weight.** On held-out music, naming the style saves "
                f"{low:+.3f} to {high:+.3f} nats per token against \"any style\"")
        if early:
            text += (f" ({min(early):+.3f} to {max(early):+.3f} over each piece's first "
                     "tokens, where the notes have said least)")
        lines.append(text + ": the model reads a piece's style from its notes far more "
                     "than from the token." if high < 0.05 else text + ".")
    baseline = (results.get("any") or {}).get("fidelity") or {}
    pairs = [(name, (s.get("fidelity") or {}).get("neutral"),
              (baseline.get(name) or {}).get("neutral")) for name, s in styles.items()]
    pairs = [(n, own, base) for n, own, base in pairs if own and base
             and own.get("share") is not None and base.get("share") is not None]
    if pairs:
        cells = ", ".join(f"{n} {pct(own['share'])} vs {pct(base['share'])}"
                          for n, own, base in pairs)
        lines.append("- **The token on the neutral primes.** Heard as the style under its "
                     f"token vs under \"any style\": {cells}. Where the two are close, the "
                     "continuation is the prime's, not the style's.")
    classifier = results.get("classifier") or {}
    classes = classifier.get("classes") or []
    recall = classifier.get("real_recall") or {}
    confusion = classifier.get("confusion") or []
    weak = []
    for i, name in enumerate(classes):
        if recall.get(name) is not None and recall[name] < FIDELITY_AIM and i < len(confusion):
            row = confusion[i]
            others = [(classes[j], n) for j, n in enumerate(row) if j != i]
            if others and sum(row):
                top, count = max(others, key=lambda item: item[1])
                weak.append(f"{name} {pct(recall[name])} (else mostly {top}, "
                            f"{count / sum(row):.0%})")
    if weak:
        lines.append("- **The yardstick itself.** Real held-out music the classifier does not "
                     f"reliably recognise: {', '.join(weak)}; a continuation of those styles "
                     "can be no clearer than the real music.")
    return lines


def _stats_section(styles: dict[str, Any]) -> list[str]:
    rows = []
    for name, style in styles.items():
        generated = style.get("generated") or {}
        neutral, own = generated.get("neutral") or {}, generated.get("own") or {}
        real = style.get("real") or {}

        def three(key: str, show: Any, n: dict = neutral, o: dict = own,
                  r: dict = real) -> str:
            return f"{show(n.get(key))} / {show(o.get(key))} / {show(r.get(key))}"

        rows.append((f"`{name}`", three("key_kept", pct), three("density", num),
                     three("polyphony", num), three("pc_distance", num),
                     f"{num(neutral.get('empty'), '{}')} / {num(own.get('empty'), '{}')}"))
    return table(("style (neutral / own idiom / real)", "key kept", "notes per beat",
                  "polyphony", "pitch-class distance", "empty (neutral / own)"), rows)


def _accompaniment_section(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["No style of the evaluated ones has held-out pieces with both a lead and "
                "an accompaniment (or `--accompany-pieces 0`)."]
    return table(("style", "accompaniment", "pieces", "consonance on strong beats",
                  "notes per beat", "notes per lead note", "polyphony p95", "span p95",
                  "doubling"),
                 [(f"`{r['style']}`", r["accompaniment"], num(r.get("pieces"), "{}"),
                   pct(r.get("consonance")), num(r.get("notes_per_beat")),
                   num(r.get("notes_per_lead_note")), num(r.get("polyphony_p95"), "{:.0f}"),
                   num(r.get("span_p95"), "{:.0f}"), pct(r.get("doubling"))) for r in rows])


def _primes_section(results: dict[str, Any]) -> list[str]:
    rows = [(f"`{p['name']}`", p["title"], f"{p['time_signature'][0]}/{p['time_signature'][1]}",
             p["bars"], p["notes"], p["source"]) for p in results.get("primes", [])]
    for style in results["styles"].values():
        rows += [(f"`{p['name']}`", p["title"],
                  f"{p['time_signature'][0]}/{p['time_signature'][1]}", p["bars"], p["notes"],
                  p["source"]) for p in style.get("openings") or []]
    return table(("prime", "what", "metre", "bars", "notes", "source"), rows)


def render_report(results: dict[str, Any]) -> str:
    """The Markdown page of an evaluation of the style-conditioned model."""
    config = results.get("config", {})
    sampling = config.get("sampling", {})
    styles = results["styles"]
    classifier = results.get("classifier") or {}
    left_out = classifier.get("left_out") or {}
    segments = classifier.get("train_segments") or {}
    classes = classifier.get("classes") or []
    caveats = [f"- `{name}`: {note}" for name, style in styles.items()
               for note in style.get("notes", [])]
    shortfalls = _shortfalls(results)
    bars, prime_bars = config.get("bars", "?"), config.get("prime_bars", "?")
    lines = [
        "# Styles: evaluation of the style-conditioned model",
        "",
        f"Written by `melody eval-styles` on {results.get('generated_at', '?')} from "
        f"`{(results.get('model') or {}).get('file', '?')}`, one model that plays every "
        "style by a style token after `BOS`, on its own dataset "
        f"`{results.get('data', '?')}` (the manifest names each piece's style; splits are "
        "drawn per piece). Rebuild it with the command at the end.",
        "",
        "## The model and its styles",
        "",
        *_model_section(results),
        "",
        "## Held-out perplexity and accuracy",
        "",
        "Next-token perplexity and accuracy on each style's *test* pieces (never trained on), "
        "run through ONNX Runtime as the engine runs the model: every window starts with "
        "`BOS` and the style token, as the engine's prompt does and as training windows "
        "did, and only the tokens after them are scored. The same tokens are scored again "
        "under slot 0, \"any style\" (what the model learnt with the token dropped): the "
        "last column is what naming the style saves, in nats per token. Pieces in a fixed "
        f"random order, at most {num(config.get('max_piece_tokens'), '{:,}')} tokens each, "
        f"up to {num(config.get('max_eval_tokens'), '{:,}')} per style.",
        "",
        *_heldout_section(styles),
        "",
        "## Style fidelity",
        "",
        "A classifier of real music (multinomial logistic regression on pitch-class, "
        "interval, rhythm, density, polyphony and register statistics; "
        f"`models/analysis/style_classifier.py`) learns {bars}-bar segments of every "
        "style's *train* pieces of this dataset (by the manifest's style: "
        + ", ".join(f"{s} {segments.get(s, 0):,}" for s in classes) + " segments) and is "
        "tested on segments of their *test* pieces: that recall is the yardstick. "
        "Each style's continuations are judged by it: of each neutral prime, and of "
        f"held-out openings of the style's own music ({config.get('openings', '?')} "
        "openings). A cell is the share recognised as the style · that share over the "
        f"yardstick, ✓ when it reaches the aim of {FIDELITY_AIM} and ✗ when not. The last "
        "column is the baseline: the neutral primes continued under the \"any style\" "
        "token, and how often the classifier hears each style there."
        + (" Not classes (no yardstick): " + ", ".join(f"{s} ({r})" for s, r in
                                                         left_out.items()) + "."
           if left_out else ""),
        "",
        *_fidelity_section(results),
        "",
    ]
    if shortfalls:
        lines += ["### Where fidelity falls short, and why", "",
                  "Styles below the aim, each kind of prime with its ratio and what the "
                  "continuations were heard as instead:", "", *shortfalls, "",
                  "A continuation follows its prime's texture and key: a one-line C-major "
                  "phrase or folk tune invites a one-line answer, Für Elise's broken chords "
                  "a piano texture, and the classifier's features (polyphony, density, "
                  "register, rhythm) are mostly texture, so a neutral prime pulls the "
                  "verdict towards the styles whose real music has that texture. What the "
                  "numbers above say about why:", "", *_reading(results), ""]
    lines += [
        "## Musical statistics",
        "",
        f"Continuations ({bars} bars) of the neutral primes and of the style's own held-out "
        f"openings, next to real held-out music of the style: share of continuations whose "
        "Krumhansl–Schmuckler key equals the prime's (for real music: the key of the "
        f"{bars} bars after the first {prime_bars} against those); notes per beat; mean "
        "number of notes sounding together; total-variation distance of the key-relative "
        "pitch-class histogram to the style's real (train) mean.",
        "",
        *_stats_section(styles),
        "",
        "## Accompaniment",
        "",
        "For held-out lead lines of the styles whose pieces have a lead and an "
        f"accompaniment ({bars} bars from the first bar with a melody note), melodyd "
        "accompanies the lead as `melody harmonize` does (the live path's requests and "
        "defaults), next to the real accompaniment of the same bars, as "
        "`melody accompany-eval` measures it (docs/accompany.md): consonance with the "
        "lead's top note on strong beats (each piece's own metre); rhythmic density as "
        "accompaniment notes per beat and per lead note; polyphony and span per beat "
        "(p95); notes doubling a lead note.",
        "",
        *_accompaniment_section(results.get("accompaniment") or []),
        "",
        "## The primes",
        "",
        f"Every style continues every prime {config.get('samples', '?')} times, with "
        f"sampling seeds {sampling.get('seed', 0)}… (temperature "
        f"{sampling.get('temperature', '?')}, top-p {sampling.get('top_p', '?')}, no "
        f"steering), for {bars} bars. The neutral primes belong to no style of the data; "
        f"the own-idiom ones are the first {prime_bars} bars of test pieces of the style, "
        "in a fixed random order (`models/analysis/primes.py`).",
        "",
        *_primes_section(results),
        "",
        *fur_elise_section(results),
    ]
    if caveats:
        lines += ["## Caveats", "", *caveats, ""]
    lines += ["## Reproduce", "", "```", results.get("command", "melody eval-styles"), "```", ""]
    return "\n".join(lines)
