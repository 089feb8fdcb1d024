"""Every command's --help ends with an example, and every example uses only flags its command takes."""

from __future__ import annotations

import re
import shlex

import click
import pytest
from click.testing import CliRunner

from augment.cli import cli
from augment.cli.examples import EXAMPLES


def commands(group: click.Group = cli, prefix: str = "") -> dict[str, click.Command]:
    out: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        out[f"{prefix}{name}"] = command
        if isinstance(command, click.Group):
            out.update(commands(command, f"{prefix}{name} "))
    return out


ALL = commands()


def test_every_command_has_an_example_and_every_example_a_command():
    assert set(EXAMPLES) == set(ALL)


@pytest.mark.parametrize("path", sorted(ALL))
def test_help_ends_with_its_example(path):
    r = CliRunner().invoke(cli, [*path.split(), "--help"])
    assert r.exit_code == 0, r.output
    assert "Example:" in r.output and EXAMPLES[path][0].split("#")[0].strip() in r.output


@pytest.mark.parametrize("path", sorted(p for p in ALL if not isinstance(ALL[p], click.Group)))
def test_examples_use_only_the_commands_flags(path):
    command = ALL[path]
    flags = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    for line in EXAMPLES[path]:
        words = shlex.split(line.split("#")[0])
        assert words[: 1 + len(path.split())] == ["augment", *path.split()], line
        used = {w.split("=")[0] for w in words if re.match(r"^--?[a-z]", w)}
        assert used <= flags, (line, used - flags)
