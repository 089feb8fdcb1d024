"""The commands that make a run folder: ``tokens``, ``generate``, ``caso`` and ``build`` (all of them).

Each is a thin call into its stage (``augment.tokens.runner``, ``augment.generate.runner``,
``augment.generate.caso_runner``): resolve the config, run, print the stage's summary, exit with
its code (1 when some units failed; finished units are kept, a re-run resumes).
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import click

from augment.cli.options import add_options, build_config, command, common_options, grad_steps_option
from augment.io.lock import keep_lock
from augment.io.rundir import RunDir

if TYPE_CHECKING:
    from augment.config import Config
    from augment.verify import VerifySummary

generate_options = add_options([
    click.option("--per-class", type=int, help="Images per class (raising it later only adds samples)."),
    click.option("--shard-size", type=int, help="Samples per shard (default 1000)."),
    click.option("--image-format", type=click.Choice(["jpg", "png", "webp"]), help="Encoding of the images in the shards."),
    click.option("--batch-size", type=int, help="Images per sampler call (default: chosen per device)."),
    click.option("--steps", type=int, help="Denoising steps."),
    click.option("--guidance-scale", type=float, help="Classifier-free guidance scale."),
    click.option("--min-confidence", type=float,
                 help="Rejection sampling: keep only images the guide gives at least this confidence; each class "
                      "draws new seeds until it has --per-class images or its budget is spent (0 = keep all)."),
    click.option("--max-attempts", type=int,
                 help="Under --min-confidence: a class's budget, in draws per requested image (default 5)."),
])

threads_option = click.option(
    "--threads", type=int,
    help="torch CPU threads per work unit, inline and on every Ray actor alike (default 1): the same count gives "
         "the same bytes whatever --workers.")


def threads_override(kw: dict[str, Any]) -> dict[str, Any]:
    """Pop --threads as the ``threads`` config override."""
    return {"threads": kw.pop("threads", None)}


GENERATE_KEYS = ("per_class", "shard_size", "image_format", "batch_size", "steps", "guidance_scale", "min_confidence",
                 "max_attempts")


def generate_overrides(kw: dict[str, Any]) -> dict[str, Any]:
    """Pop the generate flags as ``generate.*`` config overrides."""
    return {f"generate.{k}": kw.pop(k, None) for k in GENERATE_KEYS}


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
    click.echo(f"generate: {s.samples} samples of {s.classes} classes in {s.shards} shards "
               f"({s.written} written, {s.skipped} already done) in {s.seconds:.0f}s{conf} -> {s.out}")
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
@common_options
@threads_option
@click.option("--grad-steps", help="Final denoising steps the gradient flows through: an integer or 'all'.")
@click.option("--lr", type=float, help="Learning rate of the token embedding.")
@click.option("--max-steps", type=int, help="Most optimisation steps per class.")
@click.option("--force", is_flag=True, help="Retrain tokens that exist / write into a folder made with other settings.")
def tokens(force: bool, grad_steps: str | None, lr: float | None, max_steps: int | None, **kwargs) -> None:
    """Learn one discriminative token per class (DisCo), resumable; writes OUT/tokens/."""
    from augment.tokens.runner import run_tokens

    gs = grad_steps_option(grad_steps)
    cfg = build_config(kwargs, {"tokens.grad_steps": gs, "tokens.lr": lr, "tokens.max_steps": max_steps}
                       | threads_override(kwargs))
    summary = run_tokens(cfg, force=force)
    print_tokens(summary, cfg.out)
    sys.exit(summary.exit_code)


@command()
@common_options
@threads_option
@generate_options
@click.option("--baseline", is_flag=True, help="Plain prompts without the class token, same seeds (writes OUT/baseline/).")
@click.option("--force", is_flag=True, help="Rewrite done shards / write into a folder made with other settings.")
def generate(baseline: bool, force: bool, **kwargs) -> None:
    """Generate --per-class images per class into WebDataset shards + Parquet manifests (resumable)."""
    from augment.generate.runner import run_generate

    cfg = build_config(kwargs, generate_overrides(kwargs) | threads_override(kwargs))
    s = run_generate(cfg, baseline=baseline, force=force)
    print_generate(s)
    sys.exit(s.exit_code)


@command()
@common_options
@threads_option
@generate_options
@click.option("--grad-steps", help="Final denoising steps the gradient flows through: an integer or 'all'.")
@click.option("--baseline/--no-baseline", "with_baseline", default=None,
              help="Also generate the plain-prompt arm with the same seeds (OUT/baseline/).")
@click.option("--force", is_flag=True, help="Retrain / regenerate what exists.")
def build(grad_steps: str | None, with_baseline: bool | None, force: bool, **kwargs) -> None:
    """Run the whole job: tokens, then generate (and the baseline arm), then verify.

    The stages share one pool of workers: Ray is joined and the models are loaded once.

    With no arguments it runs the embedded default end to end: digits, 10 classes x 100 images.
    """
    start = time.perf_counter()
    gs = grad_steps_option(grad_steps)
    cfg = build_config(kwargs, generate_overrides(kwargs) | {"tokens.grad_steps": gs} | threads_override(kwargs))
    with keep_lock(cfg.out):  # the first stage takes the run folder's lock; nobody writes between stages
        _build(cfg, with_baseline, force, start)


def _build(cfg: Config, with_baseline: bool | None, force: bool, start: float) -> None:
    """``build``'s stages and verify, the run folder's lock kept throughout."""
    from augment.generate.runner import run_generate
    from augment.stage import open_pool
    from augment.tokens.runner import run_tokens
    from augment.verify import verify_arms

    baseline = with_baseline if with_baseline is not None else cfg.dataset == "digits"
    with open_pool(cfg) as pool:  # one set of workers, models loaded once, for every stage
        t = run_tokens(cfg, force=force, pool=pool)
        print_tokens(t)
        if t.exit_code:
            click.echo("some tokens failed; fix and re-run (done classes are kept)", err=True)
            sys.exit(t.exit_code)
        s = run_generate(cfg, force=force, pool=pool)
        print_generate(s)
        failed = list(s.failed)
        if baseline:
            b = run_generate(cfg, baseline=True, force=force, pool=pool)
            print_generate(b)
            failed += b.failed
    run = RunDir(cfg.out)
    checked = verify_arms(run.path)
    click.echo("")
    click.echo(f"done in {time.perf_counter() - start:.0f}s: {s.classes} classes, {s.samples} samples, {s.shards} shards"
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
    if failed or checked.exit_code:
        sys.exit(1)


@command()
@common_options
@threads_option
@click.option("--k", type=int, help="Real images per class: the embeddings learn from all classes' k reals, each is edited.")
@click.option("--target", help="Which embeddings edit which reals: self (default), all, B, A->B (counterfactual, "
                               "label B); B+C concatenates embeddings in one condition.")
@click.option("--edit-mode", type=click.Choice(["ddim", "sdedit"]),
              help="ddim: DDIM inversion then guided denoising (the paper's); sdedit: noise then denoise.")
@click.option("--strength", type=float, help="Editing: fraction of the schedule the real image is inverted/noised to.")
@click.option("--guided-step", type=int, help="Guide this denoising step only (single-step edit; 0 = the first that runs).")
@click.option("--edits-per-image", type=int, help="Edits written per real image and condition (> 1 needs sdedit).")
@click.option("--edit-guidance", type=float, help="Guidance scale of the edit (negative reverses it; the label stays the source's).")
@click.option("--max-steps", type=int, help="Optimisation steps per embedding.")
@click.option("--force", is_flag=True, help="Redo classes that are done / write into a folder made with other settings.")
def caso(force: bool, **kwargs) -> None:
    """CASO: learn an embedding per class from the k-shot reals and write edits of them (OUT/caso/)."""
    from augment.generate.caso_runner import run_caso

    keys = ("k", "target", "edit_mode", "strength", "guided_step", "edits_per_image", "edit_guidance", "max_steps")
    cfg = build_config(kwargs, {f"caso.{k}": kwargs.pop(k, None) for k in keys} | threads_override(kwargs))
    s = run_caso(cfg, force=force)
    click.echo(f"caso: {s.done} classes done, {s.skipped} already done, {len(s.failed)} failed in {s.seconds:.0f}s -> {s.out}")
    for r in s.rows:
        click.echo(f"  class {r.class_index} -> {'+'.join(map(str, r.targets))}: guide accuracy of one-step "
                   f"predictions on the reals {r.init_accuracy:.2f} -> {r.final_accuracy:.2f} ({r.seconds:.0f}s)")
    print_failed(s.failed)
    sys.exit(s.exit_code)


COMMANDS = (tokens, generate, caso, build)
