"""``augment report OUT``: the run as one self-contained HTML page (``OUT/report/index.html``).

It reads only; it takes no config. The page is built by :mod:`augment.report.page`.
"""

from __future__ import annotations

from pathlib import Path

import click

from augment.cli.options import command


@command()
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("--per-class", type=click.IntRange(min=1), default=4, show_default=True,
              help="Images per class and arm on the page.")
@click.option("--max-classes", type=click.IntRange(min=1), default=None, help="At most this many classes (default: all).")
def report(out: str, per_class: int, max_classes: int | None) -> None:
    """Write OUT/report/index.html: settings, token vs plain-prompt images, training curves, Tables 1 and 2."""
    from augment.report.page import write_report_page

    click.echo(str(write_report_page(Path(out), per_class=per_class, max_classes=max_classes, log=click.echo)))


COMMANDS = (report,)
