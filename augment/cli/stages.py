"""The commands that make a run folder: ``tokens``, ``generate``, ``caso`` and ``build`` (all of them).

Each is a thin call into its stage (``augment.tokens.runner``, ``augment.generate.runner``,
``augment.generate.caso_runner``) or, for ``build``, into the composer (``augment.pipeline``):
resolve the config, run, print the summary, exit with its code (1 when some units failed;
finished units are kept, a re-run resumes).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from augment.cli.options import build_config, command, config_options
from augment.io.rundir import RunDir

if TYPE_CHECKING:
    from augment.config import Config
    from augment.pipeline import BuildResult
    from augment.stage import StageSummary
    from augment.verify import VerifySummary

def print_failed(failed: list[str]) -> None:
    for line in failed:
        click.echo(f"failed: {line}", err=True)


def print_tokens(t, out: str | None = None) -> None:
    where = f" -> {RunDir(out).tokens}" if out else ""
    click.echo(f"tokens: {t.trained} trained, {t.skipped} already done, {len(t.failed)} failed "
               f"in {t.seconds:.0f}s{where}")
    for r in t.rows:
        if r.init_val_accuracy is not None and r.final_val_accuracy is not None:
            click.echo(f"  class {r.class_index} {r.class_name}: guide accuracy on validation images "
                       f"{r.init_val_accuracy:.2f} -> {r.final_val_accuracy:.2f} ({r.steps} steps, {r.seconds:.0f}s)")
    print_failed(t.failed)


def print_generate(s) -> None:
    conf = f", mean guide confidence {s.mean_confidence:.3f}" if s.mean_confidence is not None else ""
    nan = f", {s.nonfinite} NaN/inf draws rejected (redrawn)" if s.nonfinite else ""
    click.echo(f"generate: {s.samples} samples of {s.classes} classes in {s.shards} shards "
               f"({s.written} written, {s.skipped} already done) in {s.seconds:.0f}s{conf}{nan} -> {s.out}")
    if s.acceptance is not None:
        a = s.acceptance
        names = s.class_names or []
        click.echo(f"  acceptance at guide confidence >= {a.min_confidence:g} (kept/drawn, budget {a.max_attempts} "
                   f"draws per image; {RunDir(s.out).acceptance_json.name}):")
        click.echo("  " + ", ".join(
            f"{names[c.class_index] if c.class_index < len(names) else c.class_index} {c.accepted}/{c.attempts}"
            f" ({100 * (c.rate or 0):.0f}%)" + ("" if c.accepted == c.slots else f" short {c.slots - c.accepted}")
            for c in a.classes))
    print_failed(s.failed)


def verify_line(checked: VerifySummary) -> str:
    """Every arm's verdict in one line: ``ok (token: 5 shards, baseline: 5 shards)``, or the
    number of problems, per arm, and the command that lists them."""
    arms = ", ".join(f"{name}: {r.summary.shards} shards" + ("" if r.ok else f", {len(r.problems)} problems")
                     for name, r in checked.reports.items())
    if not checked.exit_code:
        return f"ok ({arms})"
    problems = sum(len(r.problems) for r in checked.reports.values())
    return f"{problems} problems ({arms}); `augment verify {checked.out}` lists them"


@command()
@config_options("tokens")
@click.option("--force", is_flag=True, help="Retrain tokens that exist / write into a folder made with other settings.")
def tokens(force: bool, **kwargs) -> None:
    """Learn one discriminative token per class (DisCo), resumable; writes OUT/tokens/."""
    from augment.tokens.runner import run_tokens

    cfg = build_config(kwargs)
    summary = run_tokens(cfg, force=force)
    print_tokens(summary, cfg.out)
    sys.exit(summary.exit_code)


@command()
@config_options("generate")
@click.option("--baseline", is_flag=True, help="Plain prompts without the class token, same seeds (writes OUT/baseline/).")
@click.option("--force", is_flag=True, help="Rewrite done shards / write into a folder made with other settings.")
def generate(baseline: bool, force: bool, **kwargs) -> None:
    """Generate --per-class images per class into WebDataset shards + Parquet manifests (resumable)."""
    from augment.generate.runner import run_generate

    cfg = build_config(kwargs)
    s = run_generate(cfg, baseline=baseline, force=force)
    print_generate(s)
    sys.exit(s.exit_code)


@command()
@config_options("build")
@click.option("--baseline/--no-baseline", "with_baseline", default=None,
              help="Also generate the plain-prompt arm with the same seeds (OUT/baseline/).")
@click.option("--force", is_flag=True, help="Retrain / regenerate what exists.")
def build(with_baseline: bool | None, force: bool, **kwargs) -> None:
    """Run the whole job: tokens, then generate (and the baseline arm), then verify.

    The stages share one pool of workers: Ray is joined and the models are loaded once.

    With no arguments it runs the embedded default end to end: digits, 10 classes x 100 images.
    """
    from augment import pipeline

    cfg = build_config(kwargs)
    result = pipeline.build(cfg, with_baseline, force, report=print_summary)
    if result.stopped:
        click.echo(result.stopped, err=True)
        sys.exit(result.exit_code)
    print_built(cfg, result)
    print_report(cfg.out)
    sys.exit(result.exit_code)


def print_report(out: str) -> None:
    """The run's page (``augment report``), written and its path printed: a build ends with a
    look at what it made. A page that cannot be drawn is a warning, not a failed build."""
    from augment.errors import AugmentError
    from augment.report.page import write_report_page

    try:
        click.echo(f"  report:    {write_report_page(RunDir(out).path)}")
    except (AugmentError, OSError) as e:
        click.echo(f"  report:    not written ({e}); `augment report {out}` retries", err=True)


def print_summary(summary: StageSummary) -> None:
    """A stage's summary as its own command prints it."""
    if summary.stage == "tokens":
        print_tokens(summary)
    else:
        print_generate(summary)


def print_built(cfg: Config, result: BuildResult) -> None:
    """``build``'s closing lines: what it made, where, and verify's verdict."""
    s, checked = result.generate, result.verify
    assert s is not None and checked is not None, "a build that ran to the end has both"
    run = RunDir(cfg.out)
    click.echo("")
    click.echo(f"done in {result.seconds:.0f}s: {s.classes} classes, {s.samples} samples, {s.shards} shards"
               + (f", mean guide confidence {s.mean_confidence:.3f}" if s.mean_confidence is not None else ""))
    click.echo(f"  tokens:    {run.tokens}  (pipe.load_textual_inversion)")
    click.echo(f"  shards:    {run.shards}  (+ _info.json for timm wds/)")
    click.echo(f"  manifests: {run.manifests}")
    click.echo(f"  verify:    {verify_line(checked)}")
    for problem in [p for r in checked.reports.values() for p in r.problems][:3]:
        click.echo(f"  problem:   {problem}", err=True)
    click.echo(f"  read it:   python -c \"import webdataset as wds; ds = wds.WebDataset('{run.shard_path(0).parent}/"
               f"synth-{{000000..{s.shards - 1:06d}}}.tar', shardshuffle=False).decode('pil')"
               f".to_tuple('{cfg.generate.image_format}', 'cls'); print(next(iter(ds)))\"")


@command()
@config_options("caso")
@click.option("--force", is_flag=True, help="Redo classes that are done / write into a folder made with other settings.")
def caso(force: bool, **kwargs) -> None:
    """CASO: learn an embedding per class from the k-shot reals and write edits of them (OUT/caso/)."""
    from augment.generate.caso_runner import run_caso

    cfg = build_config(kwargs)
    s = run_caso(cfg, force=force)
    click.echo(f"caso: {s.done} classes done, {s.skipped} already done, {len(s.failed)} failed in {s.seconds:.0f}s -> {s.out}")
    for r in s.rows:
        click.echo(f"  class {r.class_index} -> {'+'.join(map(str, r.targets))}: guide accuracy of one-step "
                   f"predictions on the reals {r.init_accuracy:.2f} -> {r.final_accuracy:.2f} ({r.seconds:.0f}s)")
    print_failed(s.failed)
    sys.exit(s.exit_code)


COMMANDS = (tokens, generate, caso, build)
