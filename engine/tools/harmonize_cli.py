"""``melody harmonize``: write an accompaniment for a melody file (offline).

The producer's use of accompany mode: the same requests, bar by bar, with each bar's
melody known in advance (``engine.tools.harmonize``). The output holds two tracks,
``lead`` (the melody as read, on the model's grid) and ``accompaniment``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from models.core.exceptions import EngineError

logger = logging.getLogger(__name__)

HELP = "write an accompaniment under a melody (MIDI in, MIDI with lead and accompaniment out)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``melody harmonize``."""
    parser.add_argument("melody", metavar="LEAD.mid", help="the melody (every note is the lead)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.mid",
                        help="MIDI file to write (tracks: lead, accompaniment)")
    parser.add_argument("--style", default="pop",
                        help="style of the accompaniment (a style token of the model; "
                             "default pop)")
    parser.add_argument("--model", metavar="M.onnx",
                        help="a model with role tokens (default: the installed one that "
                             "plays --style)")
    parser.add_argument("--bars", type=int, help="accompany only the first N bars")
    parser.add_argument("--seed", type=int, help="sampling seed (same seed, same output)")
    parser.add_argument("--temperature", type=float, help="sampling temperature")
    parser.add_argument("--chords", metavar='"C G Am F"',
                        help="a chord loop, one chord a bar from the melody's first bar "
                             "([interaction] chords): the accompaniment leans onto it")
    parser.add_argument("--config", type=Path,
                        help="a config.toml merged over the defaults ([interaction] "
                             "accompany_*, [sampling])")


def run(args: argparse.Namespace) -> int:
    """Read the melody, accompany it bar by bar, write both tracks.

    Raises:
        EngineError: no model plays the style or it has no role tokens.
        DataError: the melody cannot be read or the output written.
    """
    from tqdm import tqdm  # noqa: PLC0415

    from engine.decoder import StyleDecoder  # noqa: PLC0415 - onnxruntime loads here
    from engine.tools.generate_cli import model_and_style  # noqa: PLC0415
    from engine.tools.harmonize import bar_count, harmonize, quantize  # noqa: PLC0415
    from models.core.settings import load_settings  # noqa: PLC0415
    from models.data.midifile import read_midi, write_midi  # noqa: PLC0415

    overrides: dict[str, dict[str, object]] = {
        "sampling": {"temperature": args.temperature},
        "interaction": {"chords": args.chords}}
    settings = load_settings(args.config, overrides)
    model, style = model_and_style(args.model, args.style, settings.engine)
    midi = read_midi(args.melody)
    if not midi.notes:
        raise EngineError(f"{args.melody} holds no notes to accompany")
    decoder = StyleDecoder(model, settings.engine, allow_eos=False)
    total = args.bars or bar_count(midi.notes, midi.time_signature)
    with tqdm(total=total, unit="bar", desc=f"harmonizing ({style})") as progress:
        accompaniment = harmonize(decoder, midi.notes, settings=settings, style=style,
                                  time_signature=midi.time_signature, seed=args.seed,
                                  bars=total, on_bar=lambda _bar: progress.update(1))
    lead = quantize(midi.notes, model.tokenizer.settings.positions_per_beat)
    out = write_midi(args.output, [], time_signature=midi.time_signature, tempo=midi.tempo,
                     tracks=(("lead", lead), ("accompaniment", accompaniment)))
    print(f"{out}: {len(accompaniment)} accompaniment notes under {len(lead)} melody notes, "
          f"{total} bars ({style})")
    return 0
