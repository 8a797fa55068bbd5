"""The jam harness's figures: its scored answers summarised per style and call family,
and the Markdown table ``melody jam-eval`` prints (the records are
``engine.tools.jam.answer_call``'s)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def summarise_records(records: Sequence[dict[str, Any]], real_recall: float | None
                      ) -> dict[str, Any]:
    """The issue's measures over some answers (one style's, one family's...).

    ``key_kept``, ``in_scale``, ``monotone``, ``in_density``, ``near_silent``, ``style_ok``
    and ``lead_ok`` are shares (0-1); ``cut_bars`` counts bars best-of-N decided at their
    deadline before every candidate finished; ``silent_to_busy`` counts near-silent answers to
    calls with at least 2 notes per bar (the target is 0); ``fidelity`` is ``style_ok``
    over the classifier's recall on real held-out music of the style (the target is 0.8).
    """
    done = [r for r in records if "error" not in r]
    out: dict[str, Any] = {"answers": len(done), "errors": len(records) - len(done)}
    if not done:
        return out
    ratios = [r["density_ratio"] for r in done if r.get("density_ratio") is not None]
    judged = "style_verdict" in done[0]
    leads = [r["lead_ms"] for r in done if r.get("lead_ms") is not None]
    out.update(
        key_kept=_mean([r["key_agreement"] for r in done]),
        in_scale=_mean([r.get("in_scale") for r in done]),
        monotone=_mean([float(r["monotone"]) for r in done if "monotone" in r]),
        in_density=_mean([None if r["in_density"] is None else float(r["in_density"])
                          for r in done]),
        density_ratio_median=float(np.median(ratios)) if ratios else None,
        near_silent=_mean([float(r["near_silent"]) for r in done]),
        silent_to_busy=sum(r["near_silent"] and r["call_per_bar"] >= 2 for r in done),
        register_distance=_mean([r["register_distance"] for r in done]),
        rhythm=_mean([r["rhythm"] for r in done]),
        log_likelihood=_mean([r["log_likelihood"] for r in done]),
        lead_ms_min=min(leads) if leads else None,
        lead_ms_median=float(np.median(leads)) if leads else None,
        lead_ok=_mean([None if r.get("lead_beats") is None else float(r["lead_beats"] >= 1.0)
                       for r in done]),
        notes_per_bar=_mean([r["answer_per_bar"] for r in done]),
        cut_bars=sum(r.get("cut_bars", 0) for r in done))
    if judged:
        ok = float(np.mean([r["style_verdict"] == r["style"] for r in done]))
        out["style_ok"] = ok
        out["fidelity"] = ok / real_recall if real_recall else None
    return out


def summarise(records: Sequence[dict[str, Any]], real_recall: dict[str, float]
              ) -> dict[str, dict[str, Any]]:
    """Per style: ``all`` answers, then each call family."""
    result: dict[str, dict[str, Any]] = {}
    for style in dict.fromkeys(r["style"] for r in records):
        mine = [r for r in records if r["style"] == style]
        recall = real_recall.get(style)
        result[style] = {"all": summarise_records(mine, recall)}
        for family in dict.fromkeys(r["family"] for r in mine):
            result[style][family] = summarise_records(
                [r for r in mine if r["family"] == family], recall)
    return result


_COLUMNS = (  # header, key, format: shares as percentages
    ("n", "answers", "{:d}"), ("key%", "key_kept", "pct"), ("scale%", "in_scale", "pct"),
    ("mono%", "monotone", "pct"), ("dens%", "in_density", "pct"),
    ("ratio", "density_ratio_median", "{:.2f}"), ("silent%", "near_silent", "pct"),
    ("reg", "register_distance", "{:.1f}"), ("rhythm", "rhythm", "{:.2f}"),
    ("style%", "style_ok", "pct"), ("fid", "fidelity", "{:.2f}"),
    ("loglik", "log_likelihood", "{:.2f}"), ("lead_min", "lead_ms_min", "{:.0f}"),
    ("lead_med", "lead_ms_median", "{:.0f}"), ("lead>=1b%", "lead_ok", "pct"),
    ("cut", "cut_bars", "{:d}"),
)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.0f}" if fmt == "pct" else fmt.format(value)


def format_table(summary: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: one row per style and family (``all`` first)."""
    head = ["style", "calls"] + [c[0] for c in _COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for style, families in summary.items():
        for family, stats in families.items():
            cells = [style, family] + [_cell(stats.get(key), fmt) for _, key, fmt in _COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
