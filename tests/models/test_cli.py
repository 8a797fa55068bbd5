"""The ``melody`` dispatcher: entry-point commands, one-line errors, exit codes."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import types
from pathlib import Path

from models.core import commands as cli
from models.core.exceptions import DataError

if sys.version_info >= (3, 11):
    import tomllib
else:  # the base install brings tomli on 3.10
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


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


def _declared_commands(group: str) -> set[str]:
    """The commands ``pyproject.toml`` registers under an entry-point group."""
    with PYPROJECT.open("rb") as fh:
        return set(tomllib.load(fh)["project"]["entry-points"][group])


def test_help_lists_registered_commands() -> None:
    declared = _declared_commands("melody.commands")
    assert {"train", "export", "generate", "bench"} <= declared  # the table was found
    # Without an (up to date) install the entry points are missing and the loop below
    # would check nothing.
    assert set(cli.load_commands("melody.commands")) == declared, (
        "installed commands differ from pyproject.toml: pip install -e . --no-deps")
    result = subprocess.run([sys.executable, "-m", "models.cli", "--help"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0
    listed = set(re.findall(r"^    (\S+)", result.stdout, re.MULTILINE))  # one per command
    assert listed == declared, result.stdout


def test_no_command_prints_help_and_fails() -> None:
    result = subprocess.run([sys.executable, "-m", "models.cli"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "usage: melody" in result.stdout


def test_running_one_command_imports_only_that_command() -> None:
    code = ("import sys\n"
            "from models.cli import main\n"
            "try:\n"
            "    main(['render', '--help'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "print(sorted(m for m in sys.modules if m.endswith('_cli') or m.endswith('.cli')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.strip().splitlines()[-1]
    assert loaded == "['models.analysis.render_cli', 'models.cli']", loaded
