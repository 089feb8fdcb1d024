"""A reference run built once per module (issue 24's ``tiny.yaml``, classes 0 and 1, inline), and
a copy of it per test, which the test may break."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from augment.cli import cli

TINY = """
tokens: {max_steps: 2, batch_size: 4, steps: 5, val_seeds: 4, val_every: 1}
generate: {per_class: 4, steps: 10, shard_size: 2, batch_size: 4}
"""


def augment(*args: str) -> tuple[int, str]:
    """Run the CLI in-process: (exit code, stdout + stderr)."""
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.output


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The config file, in a folder of its own."""
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "tiny.yaml").write_text(TINY)
    return folder / "tiny.yaml"


@pytest.fixture(scope="module")
def reference(tiny) -> Path:
    """``augment build --classes 0,1 --config tiny.yaml --workers 0 --out ref`` (token and baseline arms)."""
    ref = tiny.parent / "ref"
    code, out = augment("build", "--classes", "0,1", "--config", str(tiny), "--workers", "0", "--out", str(ref))
    assert code == 0, out
    return ref


@pytest.fixture
def run(reference, tmp_path) -> Path:
    """A copy of the reference run this test may break."""
    dst = tmp_path / "run"
    shutil.copytree(reference, dst)
    return dst
