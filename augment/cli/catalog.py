"""The commands that describe what augment knows before any run: ``datasets``, ``models`` and
``config`` (the settings a command would run with)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import yaml

from augment.cli.options import build_config, command, config_options, group


# ------------------------------------------------------------------------------------ datasets
@group()
def datasets() -> None:
    """List and inspect datasets."""


@datasets.command("list")
def datasets_list() -> None:
    """List the datasets augment knows."""
    from augment.datasets import list_datasets

    for name, desc, needs_root in list_datasets():
        click.echo(f"{name:10s} {'(needs --data-root) ' if needs_root else ''}{desc}")


@datasets.command("show")
@click.argument("name")
@click.option("--data-root", type=click.Path(), help="Folder holding the dataset's images.")
@click.option("--class-list", type=click.Path(dir_okay=False), help="inat: file of class names or ids to keep.")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True, help="How many class names to print.")
def datasets_show(name: str, data_root: str | None, class_list: str | None, limit: int) -> None:
    """Print a dataset's classes and split sizes (without its --data-root: the layout it expects)."""
    from augment.datasets import DATASETS, get_dataset

    cls = DATASETS.get(name)
    if cls is not None and data_root is None and getattr(cls, "needs_data_root", False):
        click.echo(f"dataset: {name} ({cls.description})")
        click.echo(getattr(cls, "layout", "needs its images: pass --data-root"))
        click.echo(f"then: augment datasets show {name} --data-root DATA_ROOT")
        return
    ds = get_dataset(name, data_root, **({"class_list": class_list} if class_list else {}))
    names = ds.class_names
    click.echo(f"dataset: {name}")
    click.echo(f"classes: {len(names)}")
    sizes = ds.split_sizes()
    click.echo("splits:  " + (", ".join(f"{s}={n}" for s, n in sizes.items()) if sizes else "none (class names only)"))
    for i, n in enumerate(names[:limit]):
        click.echo(f"  {i:4d}  {n}")
    if len(names) > limit:
        click.echo(f"  ... {len(names) - limit} more (--limit)")
    skipped = getattr(ds, "skipped", None)
    if skipped:
        click.echo(f"skipped unreadable files: {len(skipped) if hasattr(skipped, '__len__') else skipped}")


# -------------------------------------------------------------------------------------- models
@group()
def models() -> None:
    """List, inspect and build models."""


@models.command("list")
def models_list() -> None:
    """List the embedded models and the spec forms for real ones."""
    from augment.models.backbone import list_embedded_backbones
    from augment.models.classifier import list_embedded_classifiers

    click.echo("embedded backbones (diffusers StableDiffusionPipeline):")
    for n in list_embedded_backbones() or ["(none built: augment models build-embedded)"]:
        click.echo(f"  embedded:{n}")
    click.echo("embedded classifiers (timm):")
    for n in list_embedded_classifiers() or ["(none built)"]:
        click.echo(f"  embedded:{n}")
    click.echo("other backbones:   a local pipeline folder (save_pretrained), or a hub id in the local HF cache")
    click.echo("other classifiers: timm:<arch>[@checkpoint.safetensors|.pth], hf:<repo-or-folder>, "
               "clip:<folder-or-hub-id> (zero-shot over the class names); `augment guide` trains one")


@models.command("show")
@click.argument("spec")
def models_show(spec: str) -> None:
    """Describe any model spec from its configs, without loading weights.

    A pipeline folder or hub id (from the local cache): its pipeline class, components, resolution;
    timm:<arch>[@checkpoint]: pretrained config, checkpoint, number of outputs; hf:<repo-or-folder>:
    its labels; embedded:<name>: its card.
    """
    from augment.models.describe import describe_spec

    click.echo(yaml.safe_dump(describe_spec(spec), sort_keys=False, allow_unicode=True, default_flow_style=None), nl=False)


@models.command("build-embedded")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Output folder (default: the package's embedded folder).")
@click.option("--budget", type=click.Choice(["full", "smoke"]), default="full", show_default=True, help="smoke: a few steps per part (for tests).")
@click.option("--seed", type=int, default=0, show_default=True, help="Training seed.")
def models_build_embedded(out: str | None, budget: str, seed: int) -> None:
    """Train the embedded tiny-digits diffusion model and the two digit classifiers from scratch."""
    from augment.models.backbone import embedded_dir
    from augment.models.embedded.build import build_embedded

    result = build_embedded(Path(out) if out else embedded_dir(), budget=budget, seed=seed)
    click.echo(json.dumps(result, indent=2, default=str))


# -------------------------------------------------------------------------------------- config
@command("config")
@config_options("config")
@click.option("--run", "run", type=click.Path(file_okay=False),
              help="Apply this run folder's run.json, as train/eval/benchmark do when they read it.")
def config_cmd(run: str | None, **kwargs) -> None:
    """Print the resolved settings as YAML: defaults < preset < --config < run.json (--run) < flags.

    The same resolution every command uses; `augment config --dataset cub --config my.yaml` shows
    what `augment build` with those arguments would run with.
    """
    cfg = build_config(kwargs, run=run)
    click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)


COMMANDS = (datasets, models, config_cmd)
