"""``augment report OUT`` and the page path ``augment build`` prints at its end."""

from __future__ import annotations

from click.testing import CliRunner

from augment.cli import cli
from augment.cli.stages import print_report
from augment.io.rundir import RunDir
from tests.report import make_report_run


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_report_writes_the_page_and_prints_its_path(tmp_path):
    out = make_report_run(tmp_path / "run")
    r = invoke("report", str(out), "--per-class", "2")
    assert r.exit_code == 0, r.output
    page = RunDir(out).report / "index.html"
    assert r.output.strip() == str(page) and page.read_text().count('class="tile') == 3 * 2 * 2


def test_report_help_has_an_example():
    r = invoke("report", "--help")
    assert r.exit_code == 0 and "Example:" in r.output and "augment report runs/digits" in r.output


def test_report_errors_are_one_line(tmp_path):
    r = invoke("report", str(tmp_path / "nope"))
    assert r.exit_code == 2 and "does not exist" in r.output
    (tmp_path / "empty").mkdir()
    r = invoke("report", str(tmp_path / "empty"))
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [f"Error: {tmp_path / 'empty'} holds no generated samples and no "
                                             f"trained tokens; run `augment build --out {tmp_path / 'empty'}` first"]


def test_build_ends_with_the_page_path(tmp_path, capsys):
    out = make_report_run(tmp_path / "run")
    print_report(str(out))
    assert capsys.readouterr().out.strip() == f"report:    {RunDir(out).report / 'index.html'}"
    (tmp_path / "empty").mkdir()
    print_report(str(tmp_path / "empty"))  # a page that cannot be drawn: a warning, the build stands
    assert "not written" in capsys.readouterr().err
