"""Subcommand dispatch shared by ``melody`` and ``melodyd``: entry points, errors, logging.

Each part registers its subcommands in ``pyproject.toml`` (entry-point groups
``melody.commands`` and ``melodyd.commands``), so a dispatcher imports no part directly
(the import directions stay intact). Running one command imports only that command's
module; only ``--help`` without a command imports them all, to list what each does.
A command module exposes ``HELP``, ``add_arguments(parser)`` and ``run(args)``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib import import_module
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType

from models.core.exceptions import MelodyError


def command_entry_points(group: str) -> dict[str, EntryPoint]:
    """The commands registered under ``group``, by name, without importing any of them."""
    return {ep.name: ep for ep in sorted(entry_points(group=group), key=lambda e: e.name)}


def load_commands(group: str) -> dict[str, ModuleType]:
    """Import every command module of ``group`` (for the full ``--help``)."""
    return {name: import_module(ep.value) for name, ep in command_entry_points(group).items()}


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


def _parser(prog: str, description: str,
            commands: dict[str, ModuleType]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in commands.items():
        command_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command_parser)
    return parser


def _chosen(argv: Sequence[str], known: dict[str, EntryPoint]) -> str | None:
    """The command named in ``argv``: its first word that is not a global flag."""
    for word in argv:
        if word in ("-v", "--verbose"):
            continue
        return word if word in known else None
    return None


def dispatch(prog: str, group: str, description: str, argv: Sequence[str]) -> int:
    """Parse ``argv`` and run the chosen command of ``group``, importing only that one.

    Returns:
        The command's exit code; 2 with the full help when no command is named.
    """
    known = command_entry_points(group)
    name = _chosen(argv, known)
    commands = (load_commands(group) if name is None
                else {name: import_module(known[name].value)})
    parser = _parser(prog, description, commands)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    configure_logging(args.verbose)
    return run_command(commands[args.command], args)
