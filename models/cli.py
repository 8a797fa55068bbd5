"""The ``melody`` command: subcommands found through the ``melody.commands`` entry points.

Each part registers its own subcommands in ``pyproject.toml``, so this dispatcher imports
no part directly (the import-direction rules stay intact) and ``melody --help`` loads only
light modules: command modules keep torch and onnxruntime imports inside ``run``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib import import_module
from importlib.metadata import entry_points
from types import ModuleType

from models.exceptions import MelodyError

logger = logging.getLogger(__name__)


def load_commands(group: str) -> dict[str, ModuleType]:
    """Import the command modules registered under an entry-point ``group``."""
    commands = {}
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        commands[ep.name] = import_module(ep.value)
    return commands


def configure_logging(verbose: bool) -> None:
    """Log to stderr; ``--verbose`` shows debug lines."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")


def run_command(module: ModuleType, args: argparse.Namespace) -> int:
    """Run a command module; a ``MelodyError`` becomes one ``error:`` line and exit code 2."""
    try:
        return int(module.run(args) or 0)
    except MelodyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser(prog: str, group: str, description: str) -> tuple[argparse.ArgumentParser,
                                                                     dict[str, ModuleType]]:
    """A parser with one subparser per command module of ``group``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = load_commands(group)
    for name, module in commands.items():
        command_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command_parser)
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``melody``."""
    parser, commands = build_parser(
        "melody", "melody.commands",
        "melodyd's tools: build datasets, train, export, generate, evaluate.")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    configure_logging(args.verbose)
    return run_command(commands[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
