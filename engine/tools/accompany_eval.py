"""``melody accompany-eval``: accompaniments for held-out melodies, next to the real ones.

For held-out pieces of a role-conditioned dataset (its test split) whose notes carry both
roles (POP909 melody and piano, Lieder and Polish songs voice and piano, chorale soprano
and lower voices), take ``--bars`` bars from the first bar with a melody note, let the
model accompany that melody (``engine.tools.harmonize``, the live path's requests) and
compute the figures of ``models.analysis.accompaniment`` for the generated and for the
real accompaniment of the same bars, grouped by style. Also times each bar's decoding
(the readiness target of accompany mode: a bar ready half a bar, 750 ms at 160 BPM in
4/4, before its bar line).

For POP909 pieces whose chord labels are found (``--pop909``), also the **chord
agreement** of ``models.analysis.chords``: at each of the song's beats in the segment, the
share of the accompaniment's sounding pitch classes that are tones of the labelled chord,
for melodyd's accompaniment, the real one (BRIDGE and PIANO, as the dataset holds it), the
real PIANO track alone (read from the song's MIDI file) and, as a control that must score
low, that PIANO track a tritone away.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

from models.core.notes import ACCOMPANIMENT, LEAD, Note

logger = logging.getLogger(__name__)

HELP = "accompany held-out melodies and compare with their real accompaniment"

# Where this project's machines keep POP909 (from the project's root).
DEFAULT_POP909 = Path("../shared/corpora/pop909")
# The control's transposition (semitones): a tritone shares no tone with most triads.
CONTROL_SHIFT = 6


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
    parser.add_argument("--chord-hints", action="store_true",
                        help="give melodyd each POP909 song's labelled chords as hints "
                             "(at [interaction] chord_strength), as a player would with "
                             "--chords")
    parser.add_argument("--live", action="store_true",
                        help="accompany as accompany mode does live: each bar asked "
                             "for a bar ahead, from the melody before the previous bar "
                             "(not forced, best-of-N by [sampling] candidates) instead of "
                             "with its own melody known")
    parser.add_argument("--pop909", type=Path, metavar="DIR",
                        help="POP909 folder with songs/NNN/chord_midi.txt, for the chord "
                             "agreement of POP909 pieces (default: [data] data_root/pop909, "
                             f"else {DEFAULT_POP909} when it exists)")


class Segment(NamedTuple):
    """A held-out segment: its lead, its real accompaniment, its time signature, the
    dataset's name of its piece and the beat of the piece where the segment starts."""

    lead: list[Note]
    accompaniment: list[Note]
    time_signature: tuple[int, int]
    piece: str = ""
    first: float = 0.0


def held_out_names(manifest: dict[str, Any]) -> list[tuple[str, int]]:
    """(piece, transposition) of each sequence of a dataset's test split, in order."""
    info = manifest["splits"]["test"]
    pieces = info.get("pieces") or []
    shifts = info.get("transpositions") or [[0]] * len(pieces)
    return [(piece, shift) for piece, each in zip(pieces, shifts, strict=True)
            for shift in each]


def held_out_segments(data: Path, styles: list[str], pieces: int, bars: int,
                      tokenizer: Any) -> dict[str, list[Segment]]:
    """Per style: (lead, accompaniment, time signature) of ``bars`` bars of test pieces."""
    from models.core.meter import bar_length  # noqa: PLC0415
    from models.core.streaming import StreamingDetokenizer  # noqa: PLC0415
    from models.data.manifest import TokenDataset  # noqa: PLC0415

    dataset = TokenDataset(data, "test")
    names = held_out_names(dataset.manifest)
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
            piece, shift = names[index] if index < len(names) else ("", 0)
            # A transposed copy's labels would not fit its notes: no name, no chords.
            found[style].append(Segment(segment_lead, segment_acc, signature,
                                        piece if shift == 0 else "", first))
    return found


def pop909_root(option: Path | None, data_root: str) -> Path | None:
    """The POP909 folder: ``--pop909``, else ``[data] data_root/pop909``, else the
    machines' shared copy; None when none exists."""
    candidates = [option] if option else (
        [Path(data_root).expanduser() / "pop909"] if data_root.strip() else []) + [
        DEFAULT_POP909]
    return next((c for c in candidates if c is not None and c.is_dir()), None)


def _piano_part(song_dir: Path, first: float, end: float) -> list[Note]:
    """The PIANO track of a POP909 song between beats ``first`` and ``end``, moved to 0."""
    import symusic  # noqa: PLC0415

    score = symusic.Score(str(song_dir / f"{song_dir.name}.mid"))
    tpq = score.ticks_per_quarter
    notes = [Note(n.time / tpq, n.duration / tpq, n.pitch, n.velocity, ACCOMPANIMENT)
             for track in score.tracks if track.name.strip().upper() == "PIANO"
             for n in track.notes]
    return [Note(n.onset - first, min(n.duration, end - n.onset), n.pitch, n.velocity,
                 n.role) for n in notes if first <= n.onset < end]


def segment_hints(segment: Segment, root: Path | None, bars: int) -> tuple[Any, ...]:
    """The POP909 labels of a segment's bars as chord hints on its timeline (``N``: a hint
    of no chord), or none when its song has no labels."""
    from models.analysis.chords import pop909_song_dir, read_song_chords  # noqa: PLC0415
    from models.core.meter import bar_length  # noqa: PLC0415
    from models.core.protocol.messages import ChordHint  # noqa: PLC0415

    song = pop909_song_dir(segment.piece, root) if root and segment.piece else None
    if song is None:
        return ()
    end = segment.first + bars * bar_length(segment.time_signature)
    hints: list[ChordHint] = []
    for span in read_song_chords(song).window(segment.first, end).spans:
        hint = ChordHint(round(span.start, 6), tuple(sorted(span.pitch_classes)))
        if hints and hint.beat <= hints[-1].beat:  # a zero-length span: the later wins
            hints[-1] = hint
        else:
            hints.append(hint)
    return tuple(hints)


def chord_figures(segments: list[Segment], made: list[list[Note]], root: Path | None,
                  bars: int) -> dict[str, Any] | None:
    """Chord agreement with POP909's labels over the segments whose song has them.

    Returns None when no segment's song has a chord file. Otherwise ``pieces``, ``beats``
    (labelled beats with a chord), and the agreement of ``melodyd``, ``real`` (the
    dataset's accompaniment), ``real_piano`` and ``piano_transposed`` (the control).
    """
    from models.analysis.chords import (  # noqa: PLC0415
        chord_agreement,
        pop909_song_dir,
        read_song_chords,
        transposed,
    )
    from models.core.meter import bar_length  # noqa: PLC0415

    if root is None:
        return None
    counts: dict[str, list[int]] = {k: [0, 0] for k in
                                    ("melodyd", "real", "real_piano", "piano_transposed")}
    pieces = beats = 0
    for segment, generated in zip(segments, made, strict=True):
        song = pop909_song_dir(segment.piece, root) if segment.piece else None
        if song is None:
            continue
        end = segment.first + bars * bar_length(segment.time_signature)
        chords = read_song_chords(song).window(segment.first, end)
        piano = _piano_part(song, segment.first, end)
        parts = {"melodyd": generated, "real": segment.accompaniment, "real_piano": piano,
                 "piano_transposed": transposed(piano, CONTROL_SHIFT)}
        for key, notes in parts.items():
            good, total = chord_agreement(notes, chords)
            counts[key][0] += good
            counts[key][1] += total
        pieces += 1
        beats += sum(1 for b in chords.beats
                     if (span := chords.chord_at(b)) is not None and span.is_chord)
    if not pieces:
        return None
    return {"pieces": pieces, "beats": beats,
            **{key: good / total if total else None for key, (good, total) in counts.items()}}


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
    root = pop909_root(args.pop909, settings.data.data_root)
    rows: list[dict[str, Any]] = []
    chord_rows: list[dict[str, Any]] = []
    for style in styles:
        real_pairs, made_pairs, bar_seconds = [], [], []
        for number, segment in enumerate(segments.get(style, [])):
            lead, real, signature = segment.lead, segment.accompaniment, segment.time_signature
            hints = segment_hints(segment, root, args.bars) if args.chord_hints else ()
            started = time.perf_counter()
            made = harmonize(decoder, lead, settings=settings, style=style,
                             time_signature=signature, seed=args.seed + 100 * number,
                             bars=args.bars, chords=hints, live=args.live)
            bar_seconds.append((time.perf_counter() - started) / args.bars)
            real_pairs.append((lead, real))
            made_pairs.append((lead, made))
        if not real_pairs:
            logger.warning("no held-out %s piece with both roles in %s", style, args.data)
            continue
        chords = chord_figures(segments[style], [made for _, made in made_pairs], root,
                               args.bars)
        if chords is not None:
            chord_rows.append({"style": style, **chords})
        # Each piece's strong beats from its own metre (a 3/4 Lied has no mid-bar one).
        meters = [segment.time_signature for segment in segments[style]]
        for source, pairs in (("real", real_pairs), ("melodyd", made_pairs)):
            row = {"style": style, "accompaniment": source,
                   **accompaniment_figures(pairs, signatures=meters),
                   "chord_agreement": chords[source] if chords else None}
            if source == "melodyd":
                row["bar_ms_mean"] = 1000 * sum(bar_seconds) / len(bar_seconds)
                row["bar_ms_max"] = 1000 * max(bar_seconds)
            rows.append(row)
    print(format_rows(rows))
    if chord_rows:
        print()
        print(format_chord_rows(chord_rows))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "chords": chord_rows,
                                         "bars": args.bars, "pieces": args.pieces,
                                         "live": args.live},
                                        indent=1) + "\n")
    return 0


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the figures."""
    columns = ("style", "accompaniment", "pieces", "consonance", "polyphony_p95", "span_p95",
               "doubling", "pc_doubling", "notes_per_lead_note", "chord_agreement",
               "bar_ms_mean", "bar_ms_max")
    return _table(columns, rows)


def format_chord_rows(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the chord agreement (POP909 labels), with its control."""
    columns = ("style", "pieces", "beats", "melodyd", "real", "real_piano",
               "piano_transposed")
    title = (f"chord agreement (POP909 labels): share of sounding pitch classes in the "
             f"labelled chord, each beat; real = BRIDGE+PIANO, piano_transposed = the PIANO "
             f"track {CONTROL_SHIFT:+d} semitones (a control)")
    return title + "\n" + _table(columns, rows)


def _table(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
