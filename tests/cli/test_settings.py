"""Every setting declared once (augment.config.setting): its flag on the commands it names, and
--set KEY=VALUE on every command that resolves a config, at the flags' precedence."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from augment.cli import cli
from augment.cli.options import command_settings
from augment.config import CONFIG_COMMANDS, settings_of


def _flags(command: click.Command) -> dict[str, click.Option]:
    return {o: p for p in command.params if isinstance(p, click.Option) for o in p.opts + p.secondary_opts}


def test_every_declared_flag_is_an_option_of_its_commands():
    names = set(cli.commands)
    for key, s in settings_of():
        for name in s.commands:
            assert name in names, f"{key} names an unknown command {name}"
            flag = s.flag_of(key)
            option = _flags(cli.commands[name]).get(flag)
            assert option is not None, f"{key}: {flag} missing on `augment {name}`"
            assert option.help == s.help and option.default is None, key
    for name in CONFIG_COMMANDS:  # one setting per flag on a command; --set everywhere
        params = [s.flag_of(k) for k, s in command_settings(name)]
        assert len(params) == len(set(params)), name
        assert "--set" in _flags(cli.commands[name]), name


@pytest.mark.parametrize("item, fragment", [("train.epochs=0", "--epochs must be at least 1, got 0"),
                                            ("train.hflip=3", "--hflip must be a probability in [0, 1], got 3")])
def test_set_refuses_bad_train_values_in_one_line(item, fragment):
    r = CliRunner().invoke(cli, ["config", "--set", item])
    assert r.exit_code == 2 and fragment in r.output and r.output.strip().count("\n") == 0, r.output


@pytest.mark.parametrize("name", CONFIG_COMMANDS)
def test_set_on_every_config_command(name, tmp_path):
    (tmp_path / "run").mkdir()  # eval reads an existing run folder
    r = CliRunner().invoke(cli, [name, "--out", str(tmp_path / "run"), "--set", "nope=1"])
    assert r.exit_code == 2 and "unknown config key 'nope' in command-line options" in r.output, r.output
    assert r.output.strip().count("\n") == 0


class _Captured(Exception):
    pass


def _resolved(monkeypatch, *args: str) -> dict:
    """The config `augment tokens ARGS` would run with (the stage itself is not run)."""
    from augment.tokens import runner

    seen = {}

    def capture(cfg, **kw):
        seen["cfg"] = cfg.to_dict()
        raise _Captured

    monkeypatch.setattr(runner, "run_tokens", capture)
    r = CliRunner().invoke(cli, ["tokens", *args])
    assert isinstance(r.exception, _Captured), r.output
    return seen["cfg"]


def test_set_works_like_the_flag(monkeypatch, tmp_path):
    out = str(tmp_path / "run")
    by_flag = _resolved(monkeypatch, "--out", out, "--max-steps", "1", "--grad-steps", "2")
    by_set = _resolved(monkeypatch, "--out", out, "--set", "tokens.max_steps=1", "--set", "tokens.grad_steps=2")
    assert by_flag == by_set and by_set["tokens"]["max_steps"] == 1 and by_set["tokens"]["grad_steps"] == 2
    assert _resolved(monkeypatch, "--out", out)["tokens"]["max_steps"] != 1
