"""``melody render FILE.mid -o FILE.wav``: listen to a MIDI file through FluidSynth."""

from __future__ import annotations

import argparse
from pathlib import Path

from models.analysis.render import render_midi
from models.core.exceptions import ToolError

HELP = "render a MIDI file to WAV with FluidSynth and a General MIDI soundfont"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``melody render``."""
    parser.add_argument("midi", type=Path, help="MIDI file to render")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="WAV file to write (default: the MIDI file's name with .wav)")
    parser.add_argument("--soundfont", type=Path, default=None,
                        help="a .sf2/.sf3 soundfont (default: $MELODYD_SOUNDFONT, then the "
                             "system's General MIDI soundfont)")
    parser.add_argument("--sample-rate", type=int, default=44100, help="samples per second")
    parser.add_argument("--gain", type=float, default=0.8, help="FluidSynth master gain (0-10)")


def run(args: argparse.Namespace) -> int:
    """Render and print where the WAV went.

    Raises:
        ToolError: a flag is out of range, or rendering fails (see ``render_midi``).
    """
    if not 8000 <= args.sample_rate <= 192000:
        raise ToolError(f"--sample-rate must be within 8000 and 192000 "
                        f"(received {args.sample_rate})")
    if not 0.0 <= args.gain <= 10.0:
        raise ToolError(f"--gain must be within 0 and 10 (received {args.gain})")
    output = args.output or args.midi.with_suffix(".wav")
    render_midi(args.midi, output, args.soundfont, args.sample_rate, args.gain)
    print(output)
    return 0
