"""The ``melody`` dispatcher: entry-point commands, one-line errors, exit codes."""

from __future__ import annotations

import argparse
import subprocess
import sys
import types

from models import cli
from models.exceptions import DataError


def _module(run) -> types.ModuleType:
    module = types.ModuleType("fake_command")
    module.HELP = "a command for this test"
    module.add_arguments = lambda parser: None
    module.run = run
    return module


def test_melody_error_becomes_one_line_and_exit_2(capsys) -> None:
    def run(args: argparse.Namespace) -> int:
        raise DataError("dataset folder d has no manifest.json")

    code = cli.run_command(_module(run), argparse.Namespace())
    err = capsys.readouterr().err
    assert code == 2
    assert err == "error: dataset folder d has no manifest.json\n"


def test_exit_code_of_command_is_returned() -> None:
    assert cli.run_command(_module(lambda args: 3), argparse.Namespace()) == 3
    assert cli.run_command(_module(lambda args: None), argparse.Namespace()) == 0


def test_help_lists_registered_commands() -> None:
    result = subprocess.run([sys.executable, "-m", "models.cli", "--help"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0
    for name in cli.load_commands("melody.commands"):
        assert name in result.stdout


def test_no_command_prints_help_and_fails() -> None:
    result = subprocess.run([sys.executable, "-m", "models.cli"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "usage: melody" in result.stdout
