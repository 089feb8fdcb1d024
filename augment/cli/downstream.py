"""The commands that use a finished run: ``train``, ``eval`` and ``benchmark``; and ``guide``, which
trains a guidance classifier from the k-shot reals for a user who has none (the same trainer).

They read a run folder made by ``augment build``: its ``run.json`` supplies the dataset, data root
and classifiers the run was made with (the config resolution's run.json layer), and flags given on
the command line override them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from augment.cli.options import build_config, command, config_options, int_list
from augment.config import synthetic_prob_flag
from augment.errors import AugmentError
from augment.io.rundir import RunDir, check_no_file_in_the_way

if TYPE_CHECKING:
    from augment.pipeline import TrainFlags

#: train's and benchmark's --threads: torch's thread count in this process, not the config's
#: ``threads`` (the stages' count per work unit), so not a declared setting
torch_threads_option = click.option(
    "--threads", type=int, help="torch CPU threads (train: torch's default; benchmark: 1, faster for tiny CNNs on shared cores).")


def torch_threads_unset() -> bool:
    import os

    return not os.environ.get("OMP_NUM_THREADS")


def _trainer_flags(kwargs: dict[str, Any], default_threads: int | None = None) -> TrainFlags:
    """Set torch's threads from --threads (``default_threads`` when neither --threads nor
    OMP_NUM_THREADS is given) and pop what the trainer takes past the config: --hflip and
    --samples-per-epoch (checked with the trainer's settings; as before, not written into the
    config, so the run.json of arms a benchmark builds stays the same) and whether --synthetic-prob
    is 'natural' (the synthetic share of the union, which the config's probability cannot say)."""
    threads = kwargs.pop("threads", None)
    if threads is None and default_threads is not None and torch_threads_unset():
        threads = default_threads
    if threads is not None:
        if threads < 1:
            raise AugmentError(f"--threads must be at least 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    from augment.pipeline import TrainFlags

    prob = kwargs.get("synthetic_prob")
    return TrainFlags(samples_per_epoch=kwargs.pop("samples_per_epoch", None), hflip=kwargs.pop("hflip", None),
                      natural=prob is not None and synthetic_prob_flag(prob) is None)


# ----------------------------------------------------------------------------------------- train


@command()
@config_options("train")
@torch_threads_option
@click.option("--real-k", type=int, help="Real train images per class (default: the largest of train.k_values).")
@click.option("--synthetic", "synthetic", multiple=True, type=click.Path(file_okay=False),
              help="Synthetic run folder (token arm: OUT, baseline arm: OUT/baseline); repeatable.")
@click.option("--split", default="train", show_default=True, help="Real split the k-shot images come from.")
@click.option("--test-split", default="test", show_default=True, help="Real split evaluated after every epoch.")
def train(real_k: int | None, synthetic: tuple[str, ...], checkpoint: str | None, distill: bool | None, split: str,
          test_split: str, **kwargs) -> None:
    """Train a timm classifier on k real images per class plus synthetic shards; test on the real test split.

    Writes OUT/metrics.json (top-1/top-5, per-class accuracy, confusion matrix, config) and the best
    epoch's OUT/best.safetensors + best.json (load it with --classifier timm:ARCH@OUT/best.safetensors).
    OUT defaults to <run>/train/k<K>-<arms>-seed<S> next to the first --synthetic run.
    """
    from augment import pipeline

    out_flag = kwargs.get("out")
    flags = _trainer_flags(kwargs)
    run = str(RunDir.locate(synthetic[0])[0]) if synthetic else None
    kwargs["out"] = None
    cfg = build_config(kwargs, {"train.distill": distill}, run=run)
    if checkpoint:
        cfg.train.checkpoint = checkpoint
    request = pipeline.TrainRequest(synthetic, real_k, split, test_split, Path(out_flag) if out_flag else None, run,
                                    flags)
    done = pipeline.train(cfg, request, log=click.echo)
    result, settings, out = done.result, done.settings, done.out
    final, best = result.metrics.final, result.metrics.best
    click.echo(f"test top-1 {100 * final.top1:.2f}% top-5 {100 * final.top5:.2f}% after {settings.epochs} epochs; "
               f"best {100 * best.top1:.2f}% at epoch {best.epoch} ({result.seconds:.0f}s)")
    click.echo(f"  metrics:    {out / 'metrics.json'}")
    click.echo(f"  checkpoint: {out / 'best.safetensors'}  (--classifier timm:{settings.arch}@{out / 'best.safetensors'})")


# ----------------------------------------------------------------------------------------- guide


@command()
@config_options("guide")
@torch_threads_option
@click.option("--k", "k", type=int, help="Real train images per class the guide learns from (default: the largest of train.k_values).")
@click.option("--split", default="train", show_default=True, help="Real split the k-shot images come from.")
@click.option("--test-split", help="Real split the guide is tested on (default: test or val, else --split).")
def guide(k: int | None, split: str, test_split: str | None, **kwargs) -> None:
    """A guidance classifier for users who have none: fine-tune (or --linear-probe) the preset's
    backbone on the k-shot reals (from scratch for digits), the same draw train and benchmark use.

    Writes OUT/best.safetensors + best.json (the sidecar: class names, input size, mean/std) and
    OUT/metrics.json, and prints the --classifier value that loads it. OUT defaults to
    guides/<dataset>-k<K>-seed<S>.
    """
    from augment import pipeline

    out_flag = kwargs.get("out")
    flags = _trainer_flags(kwargs)
    kwargs["out"] = None
    cfg = build_config(kwargs)
    request = pipeline.GuideRequest(k, split, test_split, Path(out_flag) if out_flag else None, flags)
    done = pipeline.guide(cfg, request, log=click.echo)
    final = done.result.metrics.final
    click.echo(f"guide: {done.settings.arch}, {done.k} real/class, test top-1 {100 * final.top1:.2f}% after "
               f"{done.settings.epochs} epochs, the checkpoint ({done.result.seconds:.0f}s)")
    click.echo(f"  metrics:    {done.out / 'metrics.json'}")
    click.echo(f"  --classifier {pipeline.guide_spec(done)}")


# ------------------------------------------------------------------------------------------ eval


@command("eval")
@click.argument("run", required=False, type=click.Path(file_okay=False))
@config_options("eval")
@click.option("--eval-classifier", "specs", multiple=True,
              help="Classifier spec to score the images with; repeatable (default: the run's --classifier and judge).")
@click.option("--features", help="Classifier whose penultimate features FID/KID use (default: the last --eval-classifier).")
@click.option("--split", default="test", show_default=True, help="Real split for FID/KID and the reference accuracy.")
@click.option("--class-map", type=click.Path(dir_okay=False),
              help="YAML/CSV of dataset class -> a classifier's label (null: not judged), for a judge trained on "
                   "other names (CUB judged by an iNat classifier); classes it lacks are left out of its accuracy.")
def eval_cmd(run: str | None, specs: tuple[str, ...], features: str | None, split: str, class_map: str | None,
             **kwargs) -> None:
    """Accuracy of a run's generated images (token and baseline arm) by classifiers, plus FID/KID (Table 1).

    Writes RUN/report/eval.json and RUN/report/eval.md and prints the table.
    """
    from augment.downstream.eval_result import FID_MIN_IMAGES
    from augment.downstream.evaluate import read_class_map, render_eval_markdown, run_eval
    from augment.inputs import resolve_inputs
    from augment.models.device import resolve_device

    mapping = read_class_map(class_map) if class_map else None  # a bad file stops before any model loads
    run = run or kwargs.get("out")
    if run is None:
        run = build_config(dict(kwargs)).out
    if not Path(run).is_dir():
        raise AugmentError(f"run folder {run} does not exist; run `augment build --out {run}` first")
    kwargs["out"] = None
    cfg = build_config(kwargs, run=run)
    check_no_file_in_the_way([RunDir(run).report])  # before the images are scored, not after
    specs = specs or tuple(s for s in (cfg.classifier, cfg.judge) if s)
    dataset = resolve_inputs(cfg).dataset
    result = run_eval(run, dataset, specs, features, split, resolve_device(cfg.device), class_map=mapping)
    click.echo(render_eval_markdown(result, dataset.class_names))
    for d in result.distances:
        if d.small_sample:
            click.echo(f"warning: FID/KID of {d.images} from {d.n} images against {d.n_real} real ones: fewer than "
                       f"{FID_MIN_IMAGES} per set, too noisy to compare (raise --per-class)", err=True)
    click.echo(f"wrote {RunDir(run).eval_json} and eval.md")


# ------------------------------------------------------------------------------------- benchmark


@command()
@config_options("benchmark")
@torch_threads_option
@click.option("--k", "k_values", help="Real images per class to try, comma-separated (default: train.k_values, 0,3,9,15).")
@click.option("--seeds", help="Number of seeds N (0..N-1) or a comma-separated list (default: train.seeds).")
@click.option("--arm", "arms", multiple=True,
              help="An arm: real | baseline | token | caso | token+caso, with options, e.g. token:conf=0.9, "
                   "token:prob=0.2,weight=0.5 or token:distill (soft labels) (caso: CASO edits of exactly each "
                   "cell's k reals, built per draw); repeatable (default: real, baseline, token, baseline:conf=0.9, "
                   "token:conf=0.9, token:weight=0.5, token:distill).")
@click.option("--test-split", default="test", show_default=True, help="Real split the classifiers are tested on.")
@click.option("--fresh", is_flag=True, help="Retrain every cell (default: reuse cells cached in OUT/report/).")
@click.option("--build/--no-build", "build_missing", default=True, show_default=True,
              help="Build the synthetic arms the grid needs when OUT lacks them (tokens, then generate, as "
                   "`augment build --baseline`; resumable) instead of refusing.")
def benchmark(k_values: str | None, seeds: str | None, arms: tuple[str, ...], test_split: str, fresh: bool,
              build_missing: bool, **kwargs) -> None:
    """Few-shot grid (Table 2): k real images per class x {real only, + baseline, + token synthetic, ...} x seeds.

    Reuses the run folder's token arm (OUT) and baseline arm (OUT/baseline) made by
    `augment build --baseline`, building the ones it lacks first (--no-build: refuse); prints
    mean ± std real test top-1 per cell and writes OUT/report/benchmark.{json,csv,md,png}.
    Cells train on --workers Ray actors (0: inline) and are cached, so a re-run resumes.
    """
    from tqdm.auto import tqdm

    from augment import pipeline
    from augment.downstream.benchmark import render_text
    # tiny CNNs at 32x32 gain nothing from a second intra-op thread and lose several-fold when
    # the cores are shared, so the grid runs single-threaded unless told otherwise
    flags = _trainer_flags(kwargs, default_threads=1)
    out = kwargs.get("out")
    if out is None:
        out = build_config(dict(kwargs)).out
    kwargs["out"] = None
    cfg = build_config(kwargs, run=out)
    # every flag is checked before missing arms are built: a typo must not cost a build
    ks = int_list(k_values, "--k")
    seed_list = int_list(seeds, "--seeds")
    if seed_list is not None and len(seed_list) == 1 and seeds and "," not in seeds:
        if seed_list[0] < 1:
            raise AugmentError(f"--seeds {seeds}: give a count >= 1 or a list like 0,1,2")
        seed_list = list(range(seed_list[0]))
    flags.settings(cfg, seed=0, on_workers=cfg.workers > 0)  # the training settings, checked
    request = pipeline.BenchmarkRequest(ks, seed_list, arms, test_split, fresh, build_missing, flags)
    done = pipeline.benchmark(cfg, request, log=click.echo, cell_log=lambda m: tqdm.write(m))
    if done.exit_code:
        for line in done.failed:
            click.echo(f"failed: {line}", err=True)
        if done.stopped:
            click.echo(done.stopped, err=True)
        sys.exit(done.exit_code)
    assert done.grid is not None and done.grid.result is not None
    result = done.grid.result
    click.echo("")
    click.echo(f"real {test_split} top-1 (%), mean ± std over {len(done.seeds)} seeds, after the last epoch:")
    click.echo(render_text(result))
    click.echo(f"\nwrote {RunDir(out).benchmark_files()['json']}, .csv, .md, .png ({result.seconds:.0f}s)")


COMMANDS = (train, guide, eval_cmd, benchmark)
