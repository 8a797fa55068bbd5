"""``melodyd``: the jam daemon, and ``melodyd COMMAND`` for registered subcommands.

``melodyd engine ...`` (and any other command in the ``melodyd.commands`` entry-point
group) is dispatched without importing the engine here. Everything else is the daemon:
this module turns the flags into settings and a choice of models, and ``bridge.app.Melodyd``
opens MIDI ports, starts (or connects to) an engine, and plays until SIGINT or SIGTERM,
releasing every note on the way out.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

from models.core.commands import command_entry_points, configure_logging, run_command
from models.core.exceptions import BridgeError, MelodyError
from models.core.paths import styles_directory as resolve_styles_directory
from models.core.settings import Settings, load_settings

logger = logging.getLogger(__name__)

HOW_TO_MAKE = ("make one with `melody export CHECKPOINT -o models/pretrained/NAME.onnx "
               "--style NAME`, or pass --model PATH.onnx")


def build_parser() -> argparse.ArgumentParser:
    """The daemon's flags (each overrides its ``config.toml`` setting)."""
    parser = argparse.ArgumentParser(
        prog="melodyd",
        description="Jam live: listen on a MIDI port, answer in a style at the DAW's tempo. "
                    "`melodyd engine --help` shows the engine service.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log debug details, including every response")
    parser.add_argument("--config", metavar="PATH", help="a config file merged over the defaults")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--style", metavar="NAME",
                       help="an installed style (models/pretrained/NAME.onnx); default: "
                            "[styles] default")
    model.add_argument("--model", metavar="PATH.onnx", help="any exported melodyd model")
    parser.add_argument("--engine", metavar="tcp://HOST:PORT",
                        help="use a running engine instead of starting a private one")
    parser.add_argument("--engine-keys", metavar="DIR",
                        help="CURVE keys for a remote engine: DIR/server.key and "
                             "DIR/client.key_secret from `melodyd engine --make-keys DIR`")
    parser.add_argument("--list-ports", action="store_true", help="list MIDI ports and exit")
    parser.add_argument("--backend", choices=("auto", "alsa", "jack", "coremidi", "windows"),
                        help="MIDI system (default: [midi] backend, auto)")
    parser.add_argument("--in", dest="in_port", metavar="NAME",
                        help="name of the virtual input port (default 'melodyd in')")
    parser.add_argument("--out", dest="out_port", metavar="NAME",
                        help="name of the virtual output port (default 'melodyd out')")
    parser.add_argument("--connect-in", metavar="NAME", help="read from this existing port")
    parser.add_argument("--connect-out", metavar="NAME", help="play into this existing port")
    parser.add_argument("--clock", choices=("internal", "midi"),
                        help="follow the internal tempo or the DAW's MIDI clock")
    parser.add_argument("--bpm", type=float, help="tempo of the internal clock")
    parser.add_argument("--time-signature", metavar="N/D", help="bar length, e.g. 4/4 or 6/8")
    parser.add_argument("--mode", choices=("call", "accompany"),
                        help="answer phrases (call) or play along (accompany)")
    parser.add_argument("--bars", type=int, help="length of an answer in bars")
    parser.add_argument("--morph", metavar="STYLE",
                        help="a second style of the same model to morph towards with the "
                             "morph knob (CC 29; [interaction] morph_style)")
    parser.add_argument("--chords", metavar='"C G Am F"',
                        help="a chord loop, one chord a bar from the timeline's bar 0 "
                             "([interaction] chords): answers and accompaniment lean onto it")
    parser.add_argument("--temperature", type=float, help="sampling temperature")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Config file plus flag overrides.

    Raises:
        ConfigError: a bad file or value.
    """
    overrides: dict[str, dict[str, Any]] = {
        "midi": {"backend": args.backend, "in_port": args.in_port, "out_port": args.out_port,
                 "connect_in": args.connect_in, "connect_out": args.connect_out},
        "clock": {"source": args.clock, "bpm": args.bpm, "time_signature": args.time_signature},
        "interaction": {"mode": args.mode, "response_bars": args.bars, "chords": args.chords,
                        "morph_style": args.morph},
        "sampling": {"temperature": args.temperature},
        "engine": {"connect": args.engine},
    }
    return load_settings(args.config, overrides)


def styles_directory(settings: Settings) -> Path:
    """Where installed styles live: ``[styles] directory`` or the package's pretrained."""
    return resolve_styles_directory(settings.styles.directory)


def choose_models(args: argparse.Namespace,
                  settings: Settings) -> tuple[list[Path], str | None]:
    """The ONNX files for the private engine and the style to ask for (``None``: its own).

    With ``--model`` the engine serves that one file. Otherwise it serves every installed
    style, the chosen one first, so the style knob (``[midi] cc_style``) can switch
    between them while playing.

    Raises:
        BridgeError: the file does not exist; the message says how to make one.
    """
    if args.model:
        path = Path(args.model).expanduser()
        if not path.is_file():
            raise BridgeError(f"model file not found: {path}; {HOW_TO_MAKE}")
        return [path], None
    style = args.style or settings.styles.default
    directory = styles_directory(settings)
    installed = sorted(directory.glob("*.onnx"))
    if not installed:
        raise BridgeError(f"no style is installed in {directory} (style {style!r} asked "
                          f"for); {HOW_TO_MAKE}")
    path = directory / f"{style}.onnx"
    if not path.is_file():
        # A style-conditioned model plays its styles by token, not by file: the engine
        # serves every installed file and its hello says whether one of them plays it.
        return installed, style
    return [path, *(p for p in installed if p != path)], style


def list_ports_command(settings: Settings) -> int:
    """Print the MIDI ports of the chosen MIDI system."""
    from bridge.drivers.system import choose_backend, list_ports  # noqa: PLC0415 - rtmidi

    backend = choose_backend(settings.midi.backend)
    inputs, outputs = list_ports(backend)
    print(f"MIDI system: {backend}")
    print("inputs (melodyd can listen to):")
    for name in inputs:
        print(f"  {name}")
    print("outputs (melodyd can play into):")
    for name in outputs:
        print(f"  {name}")
    return 0


def run_daemon(args: argparse.Namespace) -> int:
    """Settings from the flags, then the daemon (``bridge.app.Melodyd``) until it stops.

    Raises:
        MelodyError: bad settings, no MIDI system, missing model, unreachable engine.
    """
    # Imported here so `melodyd engine` and `melodyd --help` never load MIDI libraries.
    from bridge.app import Melodyd  # noqa: PLC0415
    from bridge.client import CurveClientKeys  # noqa: PLC0415

    settings = settings_from_args(args)
    if args.list_ports:
        return list_ports_command(settings)
    curve = CurveClientKeys.from_dir(args.engine_keys) if args.engine_keys else None
    if settings.engine.connect:
        if args.model:
            raise BridgeError("--model runs a model in melodyd's own engine; with --engine the "
                              "remote engine serves its models: choose one with --style")
        # A remote engine serves its own set; ask for the configured default unless told.
        app = Melodyd(settings, style=args.style or settings.styles.default, curve=curve)
    else:
        models, style = choose_models(args, settings)
        app = Melodyd(settings, style=style, models=models, curve=curve, verbose=args.verbose)
    app.run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``melodyd``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        commands = command_entry_points("melodyd.commands")
        if argv[0] in commands:
            module = import_module(commands[argv[0]].value)
            parser = argparse.ArgumentParser(prog=f"melodyd {argv[0]}", description=module.HELP)
            parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
            module.add_arguments(parser)
            args = parser.parse_args(argv[1:])
            configure_logging(args.verbose)
            return run_command(module, args)
        known = ", ".join(sorted(commands)) or "none"
        print(f"error: unknown command {argv[0]!r} (commands: {known}; "
              "without a command melodyd runs the daemon)", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return run_daemon(args)
    except MelodyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception:  # the daemon's one catch-all: log it; `finally`s released the notes
        logger.exception("melodyd stopped on an unexpected error")
        return 1


if __name__ == "__main__":
    sys.exit(main())
