"""The manifest's tables of a dataset build, and their printed form.

``skip_table`` lists the skipped files by reason, ``data_table`` sums pieces, notes and
tokens per split, and the roles met, per style and per source; both go into
``manifest.json``. ``format_skip_table`` and ``format_data_table`` turn them into the
lines ``melody data build`` prints.

The tables are made and printed here, apart from the build, so that what a build reports
and how it is shown are read in one place. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from models.core.tokenizer import MelodyTokenizer
from models.data.manifest import SPLITS
from models.data.sources import PieceResult
from models.data.splits import SplitPlan


def skip_table(results: Sequence[PieceResult]) -> dict[str, list[dict[str, str]]]:
    """The skipped files by reason, each with why (the manifest's ``skipped``)."""
    table: dict[str, list[dict[str, str]]] = {}
    for result in results:
        if result.reason is not None:
            table.setdefault(result.reason, []).append(
                {"file": result.name, "detail": result.detail})
    return table


NO_STYLE = "(none)"  # the table's row of pieces without a style label (slot 0 when conditioned)


def _empty_row() -> dict[str, Any]:
    return {"pieces": dict.fromkeys(SPLITS, 0), "notes": dict.fromkeys(SPLITS, 0),
            "tokens": dict.fromkeys(SPLITS, 0), "train_sequences": 0,
            "train_tokens_written": 0, "roles": {}}


def data_table(pieces: Mapping[str, Mapping[str, Any]], kept: Mapping[str, PieceResult],
               plans: Mapping[str, SplitPlan],
               tokenizer: MelodyTokenizer | None = None) -> dict[str, dict[str, Any]]:
    """Per style and per source: pieces, notes and tokens of each split, and roles.

    ``pieces``, ``notes`` and ``tokens`` count each piece once, untransposed (the size of
    the corpus); ``train_sequences`` and ``train_tokens_written`` count what the train
    split holds with its transposed copies (what training reads). ``roles`` counts, per
    role, the pieces with a track of that role. A style row carries its ``slot`` when the
    vocabulary has style tokens.
    """
    table: dict[str, dict[str, Any]] = {"styles": {}, "sources": {}}
    slots = tokenizer.style_slots if tokenizer is not None else {}
    for split, plan in plans.items():
        for name, shifts in zip(plan.pieces, plan.transpositions, strict=True):
            info, result = pieces[name], kept[name]
            assert result.tokens is not None  # only kept pieces reach the splits
            groups = (("styles", str(info.get("style") or NO_STYLE)),
                      ("sources", str(info.get("source") or "-")))
            for kind, key in groups:
                row = table[kind].setdefault(key, _empty_row())
                row["pieces"][split] += 1
                row["notes"][split] += result.notes
                row["tokens"][split] += len(result.tokens)
                if split == "train":
                    row["train_sequences"] += len(shifts)
                    row["train_tokens_written"] += len(result.tokens) * len(shifts)
                for role in sorted(set(result.roles)):
                    row["roles"][role] = row["roles"].get(role, 0) + 1
    if slots:
        for style, row in table["styles"].items():
            row["slot"] = slots.get(style, 0)
    return {kind: dict(sorted(rows.items())) for kind, rows in table.items()}


def format_skip_table(manifest: dict[str, Any], limit: int = 5) -> list[str]:
    """Lines of a table of skipped files by reason (at most ``limit`` examples each)."""
    skipped = manifest.get("skipped", {})
    if not skipped:
        return ["skipped: none"]
    lines = [f"skipped {sum(len(v) for v in skipped.values())} of {manifest['files']} files:"]
    width = max(len(reason) for reason in skipped)
    for reason, entries in sorted(skipped.items()):
        lines.append(f"  {reason:<{width}}  {len(entries):>6}")
        for entry in entries[:limit]:
            lines.append(f"      {entry['file']}: {entry['detail']}")
        if len(entries) > limit:
            lines.append(f"      ... and {len(entries) - limit} more (see manifest.json)")
    return lines


def _triple(values: Mapping[str, int]) -> str:
    return "/".join(str(values.get(split, 0)) for split in SPLITS)


def format_data_table(manifest: dict[str, Any]) -> list[str]:
    """Lines of the manifest's per-style and per-source table (``data_table``).

    Each of pieces, notes and tokens is ``train/validation/test``, counting every piece
    once; ``written`` is the train split's tokens with its transposed copies.
    """
    table = manifest.get("table")
    if not isinstance(table, dict):
        return ["(no per-style table: a dataset built before it existed)"]
    lines = []
    for kind, title in (("styles", "style"), ("sources", "source")):
        rows = table.get(kind) or {}
        if not rows:
            continue
        texts = {key: (_triple(row["pieces"]), _triple(row["notes"]), _triple(row["tokens"]))
                 for key, row in rows.items()}
        widths = [max(len(title), *(len(k) for k in rows))] + [
            max(len(head), *(len(t[i]) for t in texts.values()))
            for i, head in enumerate(("pieces", "notes", "tokens"))]
        slot = kind == "styles" and any("slot" in row for row in rows.values())
        head = (f"  {title:<{widths[0]}}" + ("  slot" if slot else "")
                + f"  {'pieces':>{widths[1]}}  {'notes':>{widths[2]}}  {'tokens':>{widths[3]}}"
                + f"  {'written':>11}  roles (pieces)")
        lines.append(f"per {title} (pieces / notes / tokens: train/validation/test, each piece "
                     f"once; written: train tokens with transposed copies)")
        lines.append(head)
        for key, row in rows.items():
            roles = ", ".join(f"{role} {count}" for role, count in sorted(row["roles"].items()))
            lines.append(f"  {key:<{widths[0]}}" + (f"  {row.get('slot', '-'):>4}" if slot else "")
                         + f"  {texts[key][0]:>{widths[1]}}  {texts[key][1]:>{widths[2]}}"
                         f"  {texts[key][2]:>{widths[3]}}  {row['train_tokens_written']:>11}"
                         f"  {roles or '-'}")
    return lines
