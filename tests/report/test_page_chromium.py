"""The report page in a real browser: Debian's headless ``chromium`` (``.ci/run`` installs it) loads it
with no console error, shows every class, and renders something (a screenshot that is not one colour)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from augment.datasets.digits import DIGIT_NAMES
from augment.report.page import write_report_page
from tests.report import CLASSES, make_report_run

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (apt-get install chromium)")]


def chromium(page: Path, tmp: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    """Run headless chromium on ``page`` with its console logged to stderr (``:CONSOLE`` lines)."""
    cmd = ["chromium", "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-quic", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--enable-logging=stderr",
           "--v=0", f"--user-data-dir={tmp / 'profile'}", "--window-size=1200,2000", *mode, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_console_errors_are_seen(tmp_path):
    """The check below is not vacuous: a page whose script fails is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><script>throw new Error("boom")</script></body></html>')
    errors = console_errors(chromium(bad, tmp_path, "--dump-dom").stderr)
    assert any("boom" in e for e in errors)


def test_page_loads_without_console_error_shows_every_class_and_is_not_blank(tmp_path):
    out = make_report_run(tmp_path / "run", caso=True)
    page = write_report_page(out)
    dom = chromium(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_errors(dom.stderr) == []
    for c in CLASSES:
        assert f'id="class-{c}"' in dom.stdout and f"{c}: {DIGIT_NAMES[c]}" in dom.stdout
    shot = tmp_path / "page.png"
    run = chromium(page, tmp_path, f"--screenshot={shot}")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    assert console_errors(run.stderr) == []
    with Image.open(shot) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 10  # None: more colours than counted
