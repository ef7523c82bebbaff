"""`ragops --help` and every command's help, as a real `ragops` process prints them (rich, wide terminal).

typer 0.29.2's rich help labelled every flag with its annotation's type, so `--quiet`, `--policy/--no-policy`,
`--version` and `--help` all read `<bool>` as if they took a value (infra/workflows/cli.py: _flag_type_rich).
A flag shows no type; an option that takes a value keeps its own (`<dir>`, `<str>`, ranges).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import typer

from infra.workflows.cli import app
from infra.workflows.stacks import REPO_ROOT


def commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    # typer 0.29 builds its groups on its own copy of click, so a group is what has sub-commands.
    found = [prefix]
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            found += commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


ALL = commands(typer.main.get_command(app))


def help_of(command: tuple[str, ...]) -> str:
    env = {**os.environ, "COLUMNS": "200", "TERM": "xterm", "NO_COLOR": "1"}
    env.pop("TYPER_USE_RICH", None)
    done = subprocess.run(
        [sys.executable, "-c", "from infra.workflows.cli import main; main()", *command, "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_help_enumerates_the_nested_commands() -> None:
    assert ("up",) in ALL
    assert ("ephemeral", "up") in ALL
    assert ("reindex",) in ALL


@pytest.mark.parametrize("command", [(), ("up",), ("promote",), ("ephemeral", "up")], ids=" ".join)
def test_no_flag_is_labelled_bool_and_value_options_keep_their_type(command: tuple[str, ...]) -> None:
    text = help_of(command)
    assert "╭─ Options" in text  # the rich help, not the plain fallback
    assert "<bool>" not in text
    flag_lines = [line for line in text.splitlines() if "--help" in line]
    assert flag_lines
    assert "<" not in flag_lines[0]
    if command == ():
        assert "--work-dir" in text
        assert "<dir>" in text
        assert "--version" in text
    else:
        assert "<str>" in text  # --stack / --from / --name take a value and say so


def test_every_command_help_is_free_of_bool_labels() -> None:
    from typer.testing import CliRunner

    runner = CliRunner()
    for command in ALL:
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"}, terminal_width=200)
        assert result.exit_code == 0, (command, result.output)
        assert "<bool>" not in result.output, command
