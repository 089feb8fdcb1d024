"""`augment plan`: the three predicted peaks of the resolved config, no GPU needed."""

from __future__ import annotations

from click.testing import CliRunner

from augment.cli import cli


def test_plan_prints_the_three_estimates_of_the_resolved_config():
    r = CliRunner().invoke(cli, ["plan", "--set", "tokens.batch_size=2", "--grad-steps", "1"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert "embedded:tiny-digits" in lines[0]
    assert [line.split()[0] + " " + line.split()[1] for line in lines[1:]] == [
        "token step", "generation batch", "downstream batch"]
    assert "batch 2," in lines[1] and "grad_steps 1," in lines[1] and " GB " in lines[1]


def test_plan_refuses_an_unknown_setting_in_one_line():
    r = CliRunner().invoke(cli, ["plan", "--set", "tokens.nope=1"])
    assert r.exit_code == 2 and "unknown config key 'nope'" in r.output
