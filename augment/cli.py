"""The ``augment`` command line: thin wrappers that resolve a config and call the stages.

Every stage reads the previous stage's files in ``--out``, so each command can run alone, on
another machine, or again after a crash; ``augment build`` runs them in order. User mistakes are
AugmentError (one line on stderr, exit code 2); a stage that partly failed exits 1.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from augment import __version__

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def common_options(f: Callable) -> Callable:
    """Options every stage understands; they override the preset and the --config file."""
    opts = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file of settings (overrides the preset)."),
        click.option("--dataset", help="Dataset name: digits, cub, inat, imagenet, folder (selects pipelines/<name>.yaml)."),
        click.option("--data-root", type=click.Path(), help="Folder holding the dataset's images."),
        click.option("--model", help="Diffusion backbone: embedded:<name>, a pipeline folder, or a hub id."),
        click.option("--classifier", help="Guidance classifier: embedded:<name>, timm:<arch>[@ckpt], hf:<repo-or-folder>."),
        click.option("--out", help="Run folder (default: runs/<dataset>)."),
        click.option("--seed", type=int, help="Run seed; every sample's seed derives from it."),
        click.option("--device", help="auto, cpu, cuda or cuda:N."),
        click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), help="Compute dtype (CPU always uses float32)."),
        click.option("--classes", help="Class selection, e.g. 3,8 or 0-9 (default: all)."),
        click.option("--workers", type=int, help="Ray workers (one per GPU on GPU machines; CPU actors otherwise); 0 runs inline."),
        click.option("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


COMMON = ("dataset", "data_root", "model", "classifier", "out", "seed", "device", "dtype", "classes",
          "workers", "address")


def build_config(kwargs: dict[str, Any], extra: dict[str, Any] | None = None):
    """Pop the common options from ``kwargs`` and resolve the config (preset < file < flags)."""
    from augment.config import resolve_config

    overrides = {k: kwargs.pop(k, None) for k in COMMON}
    overrides.update(extra or {})
    return resolve_config(kwargs.pop("config_file", None), overrides, dataset=overrides.get("dataset"))


def handle_errors(f: Callable) -> Callable:
    """Turn AugmentError into one line + exit 2 even when raised from deep inside a stage."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from augment.errors import AugmentError

        try:
            return f(*args, **kwargs)
        except AugmentError:
            raise
        except KeyboardInterrupt:
            click.echo("interrupted; re-run the same command to resume", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="augment")
def cli() -> None:
    """Turn a classifier and a text-to-image diffusion model into a labelled synthetic training set.

    Pipeline: tokens (one learned class token per class) -> generate (WebDataset shards + Parquet
    manifests) -> verify / show / eval -> train / benchmark. `augment build` runs tokens and generate.
    With no arguments everything runs offline on the embedded default (a tiny diffusion model and
    classifiers trained on scikit-learn's digits).
    """


# ------------------------------------------------------------------------------------ datasets
@cli.group()
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
@click.option("--limit", type=int, default=20, show_default=True, help="How many class names to print.")
def datasets_show(name: str, data_root: str | None, class_list: str | None, limit: int) -> None:
    """Print a dataset's classes and split sizes."""
    from augment.datasets import get_dataset

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
@cli.group()
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
    click.echo("other classifiers: timm:<arch>[@checkpoint.safetensors|.pth], hf:<repo-or-folder>")


@models.command("show")
@click.argument("spec")
def models_show(spec: str) -> None:
    """Print an embedded model's card (config, data, seeds, wall time, measured accuracy)."""
    from augment.errors import AugmentError
    from augment.models.backbone import embedded_dir

    if not spec.startswith("embedded:"):
        raise AugmentError(f"models show reads the cards of embedded models; {spec!r} is not embedded:<name>")
    name = spec.split(":", 1)[1]
    for card in (embedded_dir() / name / "card.json", embedded_dir() / f"{name}.json"):
        if card.exists():
            data = json.loads(card.read_text())
            click.echo(json.dumps(data.get("card", data), indent=2))
            return
    raise AugmentError(f"no embedded model {spec!r}; see `augment models list`")


@models.command("build-embedded")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Output folder (default: the package's embedded folder).")
@click.option("--budget", type=click.Choice(["full", "smoke"]), default="full", show_default=True, help="smoke: a few steps per part (for tests).")
@click.option("--seed", type=int, default=0, show_default=True, help="Training seed.")
@handle_errors
def models_build_embedded(out: str | None, budget: str, seed: int) -> None:
    """Train the embedded tiny-digits diffusion model and the two digit classifiers from scratch."""
    from augment.models.backbone import embedded_dir
    from augment.models.embedded_build import build_embedded

    result = build_embedded(Path(out) if out else embedded_dir(), budget=budget, seed=seed)
    click.echo(json.dumps(result, indent=2, default=str))


# -------------------------------------------------------------------------------------- tokens
@cli.command()
@common_options
@click.option("--grad-steps", help="Final denoising steps the gradient flows through: an integer or 'all'.")
@click.option("--lr", type=float, help="Learning rate of the token embedding.")
@click.option("--max-steps", type=int, help="Most optimisation steps per class.")
@click.option("--force", is_flag=True, help="Retrain tokens that exist / write into a folder made with other settings.")
@handle_errors
def tokens(force: bool, grad_steps: str | None, lr: float | None, max_steps: int | None, **kwargs) -> None:
    """Learn one discriminative token per class (DisCo), resumable; writes OUT/tokens/."""
    from augment.tokens.runner import run_tokens

    gs = _grad_steps(grad_steps)
    cfg = build_config(kwargs, {"tokens.grad_steps": gs, "tokens.lr": lr, "tokens.max_steps": max_steps})
    summary = run_tokens(cfg, force=force)
    click.echo(f"tokens: {summary.trained} trained, {summary.skipped} already done, {len(summary.failed)} failed "
               f"in {summary.seconds:.0f}s -> {Path(cfg.out) / 'tokens'}")
    for line in summary.failed:
        click.echo(f"failed: {line}", err=True)
    if summary.failed:
        sys.exit(1)


def generate_options(f: Callable) -> Callable:
    opts = [
        click.option("--per-class", type=int, help="Images per class (raising it later only adds samples)."),
        click.option("--shard-size", type=int, help="Samples per shard (default 1000)."),
        click.option("--image-format", type=click.Choice(["jpg", "png", "webp"]), help="Encoding of the images in the shards."),
        click.option("--batch-size", type=int, help="Images per sampler call (default: chosen per device)."),
        click.option("--steps", type=int, help="Denoising steps."),
        click.option("--guidance-scale", type=float, help="Classifier-free guidance scale."),
        click.option("--min-confidence", type=float, help="Regenerate samples whose guide confidence is below this (0 = keep all)."),
        click.option("--max-attempts", type=int, help="Seeds tried per sample under --min-confidence."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _generate_overrides(kw: dict[str, Any]) -> dict[str, Any]:
    keys = ("per_class", "shard_size", "image_format", "batch_size", "steps", "guidance_scale", "min_confidence",
            "max_attempts")
    return {f"generate.{k}": kw.pop(k, None) for k in keys}


def _print_generate(s) -> None:
    conf = f", mean guide confidence {s.mean_confidence:.3f}" if s.mean_confidence is not None else ""
    click.echo(f"generate: {s.samples} samples of {s.classes} classes in {s.shards} shards "
               f"({s.written} written, {s.skipped} already done) in {s.seconds:.0f}s{conf} -> {s.out}")
    for line in s.failed:
        click.echo(f"failed: {line}", err=True)


@cli.command()
@common_options
@generate_options
@click.option("--baseline", is_flag=True, help="Plain prompts without the class token, same seeds (writes OUT/baseline/).")
@click.option("--force", is_flag=True, help="Rewrite done shards / write into a folder made with other settings.")
@handle_errors
def generate(baseline: bool, force: bool, **kwargs) -> None:
    """Generate --per-class images per class into WebDataset shards + Parquet manifests (resumable)."""
    from augment.generate.runner import run_generate

    cfg = build_config(kwargs, _generate_overrides(kwargs))
    s = run_generate(cfg, baseline=baseline, force=force)
    _print_generate(s)
    if s.failed:
        sys.exit(1)


@cli.command()
@common_options
@generate_options
@click.option("--grad-steps", help="Final denoising steps the gradient flows through: an integer or 'all'.")
@click.option("--baseline/--no-baseline", "with_baseline", default=None,
              help="Also generate the plain-prompt arm with the same seeds (OUT/baseline/).")
@click.option("--force", is_flag=True, help="Retrain / regenerate what exists.")
@handle_errors
def build(grad_steps: str | None, with_baseline: bool | None, force: bool, **kwargs) -> None:
    """Run the whole job: tokens, then generate (and the baseline arm), then verify.

    With no arguments it runs the embedded default end to end: digits, 10 classes x 100 images.
    """
    import time

    from augment.generate.runner import run_generate
    from augment.io.verify import verify_run
    from augment.tokens.runner import run_tokens

    start = time.perf_counter()
    gs = _grad_steps(grad_steps)
    extra = _generate_overrides(kwargs) | {"tokens.grad_steps": gs}
    cfg = build_config(kwargs, extra)
    t = run_tokens(cfg, force=force)
    click.echo(f"tokens: {t.trained} trained, {t.skipped} already done, {len(t.failed)} failed in {t.seconds:.0f}s")
    for line in t.failed:
        click.echo(f"failed: {line}", err=True)
    if t.failed:
        click.echo("some tokens failed; fix and re-run (done classes are kept)", err=True)
        sys.exit(1)
    s = run_generate(cfg, force=force)
    _print_generate(s)
    baseline = with_baseline if with_baseline is not None else cfg.dataset == "digits"
    if baseline:
        _print_generate(run_generate(cfg, baseline=True, force=force))
    report = verify_run(s.out)
    out = Path(cfg.out)
    click.echo("")
    click.echo(f"done in {time.perf_counter() - start:.0f}s: {s.classes} classes, {s.samples} samples, {s.shards} shards"
               + (f", mean guide confidence {s.mean_confidence:.3f}" if s.mean_confidence is not None else ""))
    click.echo(f"  tokens:    {out / 'tokens'}  (pipe.load_textual_inversion)")
    click.echo(f"  shards:    {out / 'shards'}  (+ _info.json for timm wds/)")
    click.echo(f"  manifests: {out / 'manifests'}")
    click.echo(f"  verify:    {'ok' if report.ok else f'{len(report.problems)} problems (augment verify {out})'}")
    click.echo(f"  read it:   python -c \"import webdataset as wds; ds = wds.WebDataset('{out}/shards/synth-{{000000..{s.shards - 1:06d}}}.tar', "
               f"shardshuffle=False).decode('pil').to_tuple('{cfg.generate.image_format}', 'cls'); print(next(iter(ds)))\"")
    if s.failed or not report.ok:
        sys.exit(1)


@cli.command()
@common_options
@click.option("--k", type=int, help="Real images per class the embedding is learned from.")
@click.option("--target", type=int, help="Counterfactual edits towards this class index (default: each class itself).")
@click.option("--strength", type=float, help="Editing: fraction of the schedule the real image is noised to.")
@click.option("--edits-per-image", type=int, help="Edited variations written per real image.")
@click.option("--edit-guidance", type=float, help="Guidance scale of the edit (negative reverses it).")
@click.option("--max-steps", type=int, help="Optimisation steps per embedding.")
@click.option("--force", is_flag=True, help="Redo classes that are done / write into a folder made with other settings.")
@handle_errors
def caso(force: bool, **kwargs) -> None:
    """CASO: learn a semantic embedding per class from k real images and write edits (OUT/caso/)."""
    from augment.generate.caso_runner import run_caso

    keys = {"k": "k", "target": "target", "strength": "strength", "edits_per_image": "edits_per_image",
            "edit_guidance": "edit_guidance", "max_steps": "max_steps"}
    cfg = build_config(kwargs, {f"caso.{v}": kwargs.pop(k, None) for k, v in keys.items()})
    s = run_caso(cfg, force=force)
    click.echo(f"caso: {s.done} classes done, {s.skipped} already done, {len(s.failed)} failed in {s.seconds:.0f}s -> {s.out}")
    for r in s.rows:
        click.echo(f"  class {r['class']} -> {r['target']}: guide accuracy of one-step edits "
                   f"{r['init_accuracy']:.2f} -> {r['final_accuracy']:.2f} ({r['seconds']:.0f}s)")
    for line in s.failed:
        click.echo(f"failed: {line}", err=True)
    if s.failed:
        sys.exit(1)


@cli.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("--no-decode", is_flag=True, help="Skip decoding every image (faster; hashes are still checked).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def verify(out: str, no_decode: bool, as_json: bool) -> None:
    """Check shards against manifests, _info.json and tokens; exit 1 naming any mismatch."""
    from augment.io.verify import verify_run

    failed = False
    arms = [Path(out)] + ([Path(out) / "baseline"] if (Path(out) / "baseline" / "manifests").exists() else [])
    for arm in arms:
        report = verify_run(arm, decode_images=not no_decode)
        if as_json:
            click.echo(json.dumps({"arm": str(arm), **report.to_dict()}, indent=2, default=str))
        else:
            summ = report.summary
            click.echo(f"{arm}: {summ.get('shards', 0)} shards, {summ.get('samples', 0)} samples, "
                       f"{summ.get('classes', 0)} classes: {'ok' if report.ok else 'PROBLEMS'}")
            for p in report.problems:
                click.echo(f"  problem: {p}", err=True)
        failed |= not report.ok
    if failed:
        sys.exit(1)


@cli.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("--per-class", type=int, default=8, show_default=True, help="Images per class on the sheet.")
@click.option("--max-classes", type=int, default=None, help="At most this many classes (default: all).")
@handle_errors
def show(out: str, per_class: int, max_classes: int | None) -> None:
    """Write contact sheets (token vs baseline images of the same seeds) and eval figures to OUT/report/."""
    from augment.report.contact import write_contact_sheets, write_eval_figures

    paths = write_contact_sheets(Path(out), per_class=per_class, max_classes=max_classes)
    paths += write_eval_figures(Path(out)) or []
    for p in paths:
        click.echo(str(p))


def _grad_steps(value: str | None) -> int | str | None:
    """--grad-steps: an integer or 'all' (None: not given)."""
    if value is None or value == "all":
        return value
    return _int_or_error(value, "--grad-steps")


def _int_or_error(value: str, flag: str) -> int:
    from augment.errors import AugmentError

    try:
        return int(value)
    except ValueError:
        raise AugmentError(f"{flag} {value!r} is not an integer or 'all'") from None


def _register_downstream() -> None:
    """train / eval / benchmark live in cli_downstream.py (they import this module's helpers).

    When cli_downstream is imported first, it is half-initialised at this point and registers its
    commands itself at its end.
    """
    half = sys.modules.get("augment.cli_downstream")
    if half is not None and not hasattr(half, "benchmark"):
        return
    from augment.cli_downstream import benchmark, eval_cmd, train

    cli.add_command(train)
    cli.add_command(eval_cmd, "eval")
    cli.add_command(benchmark)


_register_downstream()


def main() -> None:
    cli(prog_name="augment")

