"""``melody accompany-eval``: accompaniments for held-out melodies, next to the real ones.

For held-out pieces of a role-conditioned dataset (its test split) whose notes carry both
roles (POP909 melody and piano, Lieder and Polish songs voice and piano, chorale soprano
and lower voices), take ``--bars`` bars from the first bar with a melody note, let the
model accompany that melody (``engine.tools.harmonize``, the live path's requests) and
compute the figures of ``models.analysis.accompaniment`` for the generated and for the
real accompaniment of the same bars, grouped by style. Also times each bar's decoding
(the readiness target of accompany mode: a bar ready half a bar, 750 ms at 160 BPM in
4/4, before its bar line).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from models.core.notes import ACCOMPANIMENT, LEAD, Note

logger = logging.getLogger(__name__)

HELP = "accompany held-out melodies and compare with their real accompaniment"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``melody accompany-eval``."""
    parser.add_argument("--data", required=True, type=Path,
                        help="a dataset built with role tokens (its test split is used)")
    parser.add_argument("--model", metavar="M.onnx", help="model (default: installed any)")
    parser.add_argument("--styles", default="pop,romantic,baroque",
                        help="comma-separated styles to evaluate (default pop,romantic,baroque)")
    parser.add_argument("--pieces", type=int, default=8, help="pieces per style (default 8)")
    parser.add_argument("--bars", type=int, default=8, help="bars per piece (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="first sampling seed")
    parser.add_argument("--config", type=Path, help="a config.toml merged over the defaults")
    parser.add_argument("--json", type=Path, help="write the figures here")


# A held-out segment: its lead, its real accompaniment, its time signature.
Segment = tuple[list[Note], list[Note], tuple[int, int]]


def held_out_segments(data: Path, styles: list[str], pieces: int, bars: int,
                      tokenizer: Any) -> dict[str, list[Segment]]:
    """Per style: (lead, accompaniment, time signature) of ``bars`` bars of test pieces."""
    from models.core.meter import bar_length  # noqa: PLC0415
    from models.core.streaming import StreamingDetokenizer  # noqa: PLC0415
    from models.data.dataset import TokenDataset  # noqa: PLC0415

    dataset = TokenDataset(data, "test")
    slot_names = {slot: name for name, slot in tokenizer.style_slots.items()}
    slot_of = {token: slot for slot, token in enumerate(tokenizer.style_ids)}
    found: dict[str, list[Segment]] = defaultdict(list)
    for index in range(len(dataset)):
        ids = [int(t) for t in dataset[index]]
        style = slot_names.get(slot_of.get(ids[1], 0), "any") if len(ids) > 1 else "any"
        if style not in styles or len(found[style]) >= pieces:
            continue
        detok = StreamingDetokenizer(tokenizer)
        notes = detok.feed_many(ids)
        signature = detok.time_signature
        length = bar_length(signature)
        lead = [n for n in notes if n.role == LEAD]
        accompaniment = [n for n in notes if n.role == ACCOMPANIMENT]
        if not lead or not accompaniment:
            continue
        first = int(min(n.onset for n in lead) // length) * length
        end = first + bars * length

        def cut(part: list[Note], first: float = first, end: float = end) -> list[Note]:
            return [Note(n.onset - first, min(n.duration, end - n.onset), n.pitch, n.velocity,
                         n.role) for n in part if first <= n.onset < end]

        segment_lead, segment_acc = cut(lead), cut(accompaniment)
        if len(segment_lead) >= bars and segment_acc:
            found[style].append((segment_lead, segment_acc, signature))
    return found


def run(args: argparse.Namespace) -> int:
    """Accompany, measure, print a table, write JSON."""
    from engine.decoder import StyleDecoder  # noqa: PLC0415 - onnxruntime loads here
    from engine.tools.generate_cli import model_and_style  # noqa: PLC0415
    from engine.tools.harmonize import harmonize  # noqa: PLC0415
    from models.analysis.accompaniment import accompaniment_figures  # noqa: PLC0415
    from models.core.settings import load_settings  # noqa: PLC0415

    settings = load_settings(args.config)
    styles = [s for s in args.styles.split(",") if s]
    model, _ = model_and_style(args.model, styles[0] if not args.model else None,
                               settings.engine)
    decoder = StyleDecoder(model, settings.engine, allow_eos=False)
    segments = held_out_segments(args.data, styles, args.pieces, args.bars, model.tokenizer)
    rows: list[dict[str, Any]] = []
    for style in styles:
        real_pairs, made_pairs, bar_seconds = [], [], []
        for number, (lead, real, signature) in enumerate(segments.get(style, [])):
            started = time.perf_counter()
            made = harmonize(decoder, lead, settings=settings, style=style,
                             time_signature=signature, seed=args.seed + 100 * number,
                             bars=args.bars)
            bar_seconds.append((time.perf_counter() - started) / args.bars)
            real_pairs.append((lead, real))
            made_pairs.append((lead, made))
        if not real_pairs:
            logger.warning("no held-out %s piece with both roles in %s", style, args.data)
            continue
        for source, pairs in (("real", real_pairs), ("melodyd", made_pairs)):
            row = {"style": style, "accompaniment": source,
                   **accompaniment_figures(pairs)}
            if source == "melodyd":
                row["bar_ms_mean"] = 1000 * sum(bar_seconds) / len(bar_seconds)
                row["bar_ms_max"] = 1000 * max(bar_seconds)
            rows.append(row)
    print(format_rows(rows))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "bars": args.bars,
                                         "pieces": args.pieces}, indent=1) + "\n")
    return 0


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the figures."""
    columns = ("style", "accompaniment", "pieces", "consonance", "polyphony_p95", "span_p95",
               "doubling", "pc_doubling", "notes_per_lead_note", "bar_ms_mean", "bar_ms_max")

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
