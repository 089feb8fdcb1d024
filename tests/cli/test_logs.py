"""What the commands print: -q / default / -v, TQDM_DISABLE, --log-file (issue 13, defect 13).

The stage runs are the micro models' (seconds); the CLI's output is captured by click's runner.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from augment import logs
from augment.cli.main import cli

TINY = "tokens: {batch_size: 2, steps: 2, max_steps: 1, grad_steps: 1}\ngenerate: {per_class: 2, steps: 2, shard_size: 2}\n"
AUGMENT = [sys.executable, "-m", "augment"]
#: what the libraries print while a stage loads its models, unless -v
CHATTER = ("Loading pipeline components", "mean_resizing")


@pytest.fixture()
def stage_args(tmp_path, micro_pipeline_dir, micro_classifier_path):
    (tmp_path / "tiny.yaml").write_text(TINY)

    def args(command: str, *extra: str) -> list[str]:
        return [command, "--dataset", "cub", "--model", str(micro_pipeline_dir), "--classifier",
                f"timm:test_resnet@{micro_classifier_path}", "--classes", "0", "--workers", "0",
                "--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run"), *extra]

    yield args
    logs.set_verbosity(0)  # the runner invokes in this process: leave the default behind


def _invoke(args: list[str]):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def _bar_shown(result, desc: str) -> bool:
    return f"{desc}: 100%" in result.stderr


def test_default_shows_the_bar_and_one_summary_line(stage_args):
    tokens = _invoke(stage_args("tokens"))
    assert tokens.exit_code == 0, tokens.output
    generate = _invoke(stage_args("generate"))
    assert generate.exit_code == 0, generate.output
    for result, name in ((tokens, "tokens"), (generate, "generate")):
        assert _bar_shown(result, name)
        # one summary line; tokens adds one validation line per trained class under it
        first, *rest = result.stdout.strip().splitlines()
        assert first.startswith(f"{name}: ") and all(line.startswith("  class ") for line in rest)
        assert len(rest) == (1 if name == "tokens" else 0)


@pytest.mark.slow
def test_library_chatter_only_with_verbose(stage_args):
    """The real executable (the libraries' log handlers write to the process's own stderr)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled")
    env.pop("TQDM_DISABLE", None)
    tokens = subprocess.run([*AUGMENT, *stage_args("tokens")], env=env, capture_output=True, text=True, timeout=600)
    assert tokens.returncode == 0, tokens.stderr[-2000:]
    outputs = {}
    for flag in ("", "-v"):
        run = subprocess.run([*AUGMENT, *stage_args("generate", "--force", *([flag] if flag else []))], env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        outputs[flag] = run.stdout + run.stderr
    assert not [c for c in CHATTER if c in outputs[""] + tokens.stderr]
    assert [c for c in CHATTER if c in outputs["-v"]] == list(CHATTER)


def test_quiet_and_tqdm_disable_hide_the_bar_not_the_summary(stage_args, monkeypatch):
    quiet = _invoke(stage_args("tokens", "-q"))
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == "" and quiet.stdout.startswith("tokens: 1 trained")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    again = _invoke(stage_args("tokens", "--force"))
    assert again.exit_code == 0, again.output
    assert not _bar_shown(again, "tokens") and again.stdout.startswith("tokens: 1 trained")


def test_verbose_and_quiet_together_are_one_error(stage_args):
    result = CliRunner().invoke(cli, stage_args("tokens", "-v", "-q"))
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["Error: -v and -q contradict each other; pass one of them"]


def test_log_file_records_the_command_its_output_and_its_end(stage_args, tmp_path):
    log = tmp_path / "augment.log"
    ok = CliRunner().invoke(cli, stage_args("tokens", "--log-file", str(log)), prog_name="augment")
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(cli, [*stage_args("tokens"), "--classes", "7", "--log-file", str(log)])
    assert bad.exit_code == 2
    lines = [line.split(" ", 1)[1] for line in log.read_text().splitlines()]  # without the timestamps
    assert lines[0].startswith("augment tokens --dataset cub") and f"--out {tmp_path / 'run'} (pid" in lines[0]
    assert any(line.startswith("tokens: 100%") for line in lines)  # the bar, as it ended
    printed = ok.stdout.strip().splitlines()
    assert all(line in lines and lines.index(line) < lines.index("exit 0") for line in printed)
    assert lines[-2:] == [bad.stderr.strip(), "exit 2"]


def test_a_log_file_that_cannot_be_opened_is_one_error(tmp_path):
    result = CliRunner().invoke(cli, ["verify", str(tmp_path), "--log-file", str(tmp_path / "no" / "x.log")])
    assert result.exit_code == 2
    assert "cannot open --log-file" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_tee_keeps_a_redrawn_line_as_its_last_state():
    terminal, log = io.StringIO(), io.StringIO()
    tee = logs._Tee(terminal, log)
    tee.write("bar 10%\rbar 50%\rbar 100%\nsummary\npartial")
    tee.finish()
    assert terminal.getvalue() == "bar 10%\rbar 50%\rbar 100%\nsummary\npartial"
    assert [line.split(" ", 1)[1] for line in log.getvalue().splitlines()] == ["bar 100%", "summary", "partial"]
