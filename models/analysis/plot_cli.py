"""``melody plot FILE.mid -o FILE.png``: a piano roll marking prime vs continuation."""

from __future__ import annotations

import argparse
from pathlib import Path

from models.analysis.pianoroll import draw_piano_roll
from models.core.exceptions import ToolError
from models.data.midifile import continuation_beat, read_midi

HELP = "draw a MIDI file as a piano roll (PNG), prime and continuation in two colours"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``melody plot``."""
    parser.add_argument("midi", type=Path, help="MIDI file to draw")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="PNG file to write (default: the MIDI file's name with .png)")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--prime-bars", type=float, default=None,
                       help="the first N bars are the prime (default: the file's "
                            "'continuation' marker, if any)")
    split.add_argument("--split-beat", type=float, default=None,
                       help="the continuation starts at this beat (quarter notes from 0)")
    parser.add_argument("--title", default=None, help="title line (default: the file name)")
    parser.add_argument("--width", type=int, default=1200, help="width in pixels")
    parser.add_argument("--height", type=int, default=500, help="height in pixels")


def run(args: argparse.Namespace) -> int:
    """Draw the file and print where the PNG went.

    Raises:
        ToolError: a negative split, or drawing fails (see ``draw_piano_roll``).
        DataError: the MIDI file is missing or unreadable.
    """
    midi = read_midi(args.midi)
    split = args.split_beat
    if args.prime_bars is not None:
        split = args.prime_bars * midi.bar_length
    elif split is None:
        split = continuation_beat(midi)
    if split is not None and split < 0:
        raise ToolError(f"the prime cannot end before beat 0 (received {split:g})")
    output = args.output or args.midi.with_suffix(".png")
    sig = f"{midi.time_signature[0]}/{midi.time_signature[1]}"
    draw_piano_roll(midi.notes, output, split_beat=split, bar_length=midi.bar_length,
                    title=args.title or f"{args.midi.name} ({sig})",
                    width=args.width, height=args.height)
    print(output)
    return 0
