"""The commands that look at a finished run folder: ``verify`` (integrity) and ``show`` (contact
sheets). They read only; they take no config."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from augment.cli.options import command


@command()
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("--no-decode", is_flag=True, help="Skip decoding every image (faster; hashes are still checked).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(out: str, no_decode: bool, as_json: bool) -> None:
    """Check shards against manifests, _info.json and tokens; exit 1 naming any mismatch."""
    from augment.verify import verify_arms

    summary = verify_arms(out, decode_images=not no_decode)
    for name, report in summary.reports.items():
        arm = summary.arms[name]
        if as_json:
            click.echo(json.dumps({"arm": str(arm), **report.to_dict()}, indent=2, default=str))
        else:
            summ = report.summary
            click.echo(f"{arm}: {summ.shards} shards, {summ.samples} samples, "
                       f"{summ.classes} classes: {'ok' if report.ok else 'PROBLEMS'}")
            for p in report.problems:
                click.echo(f"  problem: {p}", err=True)
    sys.exit(summary.exit_code)


@command()
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("--per-class", type=click.IntRange(min=1), default=8, show_default=True, help="Images per class on the sheet.")
@click.option("--max-classes", type=click.IntRange(min=1), default=None, help="At most this many classes (default: all).")
def show(out: str, per_class: int, max_classes: int | None) -> None:
    """Write contact sheets (token vs baseline images of the same seeds) and eval figures to OUT/report/."""
    from augment.report.contact import write_contact_sheets, write_eval_figures

    paths = write_contact_sheets(Path(out), per_class=per_class, max_classes=max_classes)
    paths += write_eval_figures(Path(out), log=click.echo) or []
    for p in paths:
        click.echo(str(p))


COMMANDS = (verify, show)
