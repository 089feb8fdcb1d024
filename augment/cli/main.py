"""The ``augment`` command group: every command, grouped by what it does.

    catalog     datasets, models, config       what augment knows; the resolved settings
    plan        plan                           predicted peak memory of a config (no GPU needed)
    stages      tokens, generate, caso, build  make a run folder (resumable stages)
    inspect     verify, show                   check and look at a run folder
    report      report                         the run as one HTML page
    downstream  train, guide, eval, benchmark  use a run folder: classifiers, Table 1 and 2; a guide from reals

Each command is a thin call into a stage; shared options, config resolution and error handling
live in :mod:`augment.cli.options`.
"""

from __future__ import annotations

import click

from augment import __version__
from augment.cli import catalog, downstream, inspect, plan, report, stages
from augment.cli.examples import add_examples
from augment.cli.options import AugmentGroup


@click.group(cls=AugmentGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="augment")
def cli() -> None:
    """Turn a classifier and a text-to-image diffusion model into a labelled synthetic training set.

    Pipeline: tokens (one learned class token per class) -> generate (WebDataset shards + Parquet
    manifests) -> verify / show / eval -> train / benchmark. `augment build` runs tokens and generate.
    With no arguments everything runs offline on the embedded default (a tiny diffusion model and
    classifiers trained on scikit-learn's digits).
    """


for module in (stages, inspect, report, downstream, catalog, plan):
    for command in module.COMMANDS:
        cli.add_command(command)
add_examples(cli)


def main() -> None:
    cli(prog_name="augment")


if __name__ == "__main__":  # python -m augment.cli.main
    main()
