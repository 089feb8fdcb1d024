"""The stage commands on the embedded default (small settings), as a user chains them."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from augment.cli import cli

#: the token settings small enough for a test; generate's come as flags only, so that a
#: ``tokens`` run (which does not take them) records the defaults for them in run.json's config
SMALL_TOKENS = "tokens:\n  max_steps: 1\n  batch_size: 2\n  steps: 3\n"


@pytest.mark.slow
def test_tokens_rerun_does_not_block_the_same_generate(tmp_path):
    """Issue 13, defect 1: ``tokens`` after ``generate`` rewrote run.json with its own (default)
    generate settings, and the identical ``generate`` was refused (``generate.shard_size: 1000 in
    run.json, 4 now``)."""
    (tmp_path / "small.yaml").write_text(SMALL_TOKENS)
    out = tmp_path / "run"
    common = ["--config", str(tmp_path / "small.yaml"), "--out", str(out), "--classes", "0", "--workers", "0"]
    generate = ["generate", *common, "--per-class", "2", "--shard-size", "4", "--steps", "3"]
    runner = CliRunner()
    for args in (["tokens", *common], generate, ["tokens", *common]):
        r = runner.invoke(cli, args)
        assert r.exit_code == 0, r.output
    assert json.loads((out / "run.json").read_text())["config"]["generate"]["shard_size"] != 4  # tokens wrote last
    r = runner.invoke(cli, generate)
    assert r.exit_code == 0, r.output
    assert "(0 written, 1 already done)" in r.output
