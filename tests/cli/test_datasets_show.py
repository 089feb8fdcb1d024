"""`augment datasets show NAME` without --data-root describes the layout the dataset expects."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from augment.cli import cli


@pytest.mark.parametrize("name, fragment", [("cub", "classes.txt"), ("inat", "train.json"), ("folder", "<class>")])
def test_without_data_root_it_describes_the_layout(name, fragment):
    r = CliRunner().invoke(cli, ["datasets", "show", name])
    assert r.exit_code == 0, r.output
    assert fragment in r.output and f"augment datasets show {name} --data-root DATA_ROOT" in r.output


def test_a_missing_data_root_is_still_an_error(tmp_path):
    r = CliRunner().invoke(cli, ["datasets", "show", "cub", "--data-root", str(tmp_path / "nope")])
    assert r.exit_code == 2
