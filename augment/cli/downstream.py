"""The commands that use a finished run: ``train``, ``eval`` and ``benchmark``.

They read a run folder made by ``augment build``: its ``run.json`` supplies the dataset, data root
and classifiers the run was made with (the config resolution's run.json layer), and flags given on
the command line override them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from augment.cli.options import add_options, build_config, command, common_options, int_list
from augment.errors import AugmentError
from augment.io.rundir import RunDir

if TYPE_CHECKING:
    from augment.pipeline import TrainFlags


def _prob(value: str | None) -> tuple[float | None, bool]:
    """--synthetic-prob: (a probability, or None when not given or 'natural'; whether it is
    'natural', the synthetic share of the union)."""
    if value is None:
        return None, False
    if value.strip().lower() in ("natural", "none"):
        return None, True
    try:
        p = float(value)
    except ValueError:
        raise AugmentError(f"--synthetic-prob {value!r} is not a number in [0, 1] or 'natural'") from None
    if not 0.0 <= p <= 1.0:
        raise AugmentError(f"--synthetic-prob must be in [0, 1], got {p}")
    return p, False


#: classifier-training options shared by train and benchmark; unset ones come from cfg.train
train_options = add_options([
        click.option("--arch", help="timm architecture of the classifier to train (default: train.arch)."),
        click.option("--arch-kwargs", help='JSON of extra timm.create_model kwargs, e.g. \'{"channels": [16,32,64,128]}\'.'),
        click.option("--epochs", type=int, help="Training epochs (default: train.epochs)."),
        click.option("--samples-per-epoch", type=int,
                     help="Samples drawn per epoch (default: the mixed set's size, at least 1000)."),
        click.option("--batch-size", type=int, help="Batch size (default: train.batch_size)."),
        click.option("--lr", type=float, help="Learning rate (default: train.lr)."),
        click.option("--hflip", type=float, default=None, help="Horizontal-flip probability (default 0: digits must not be mirrored)."),
        click.option("--input-size", type=int, help="Image side the classifier is trained at (default: train.input_size)."),
        click.option("--synthetic-prob", help="Probability that a drawn sample is synthetic, or 'natural' (default: train.synthetic_prob)."),
        click.option("--synthetic-weight", type=float, help="Loss weight of synthetic samples (default: train.synthetic_weight)."),
        click.option("--min-confidence", type=float, help="Drop synthetic images whose guide_confidence is lower (default: train.min_confidence)."),
        click.option("--distill-temperature", type=float,
                     help="Temperature of the soft labels synthetic images learn with distillation (default: train.distill_temperature)."),
        click.option("--threads", type=int, help="torch CPU threads (train: torch's default; benchmark: 1, faster for tiny CNNs on shared cores)."),
])


TRAIN_KEYS = ("arch", "arch_kwargs", "epochs", "samples_per_epoch", "batch_size", "lr", "hflip", "input_size",
              "synthetic_prob", "synthetic_weight", "min_confidence", "distill_temperature")


def torch_threads_unset() -> bool:
    import os

    return not os.environ.get("OMP_NUM_THREADS")


def _train_overrides(kwargs: dict[str, Any], default_threads: int | None = None) -> tuple[dict[str, Any], TrainFlags]:
    """Pop the training flags: (cfg overrides for train.*, the flags that are no config key); set --threads
    (``default_threads`` when neither --threads nor OMP_NUM_THREADS is given)."""
    vals = {k: kwargs.pop(k, None) for k in TRAIN_KEYS}
    threads = kwargs.pop("threads", None)
    if threads is None and default_threads is not None and torch_threads_unset():
        threads = default_threads
    if threads is not None:
        if threads < 1:
            raise AugmentError(f"--threads must be at least 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    if vals["arch_kwargs"] is not None:
        try:
            vals["arch_kwargs"] = json.loads(vals["arch_kwargs"])
        except json.JSONDecodeError as e:
            raise AugmentError(f"--arch-kwargs is not valid JSON ({e.msg}); e.g. '{{\"channels\": [16, 32, 64, 128]}}'") from None
        if not isinstance(vals["arch_kwargs"], dict):
            raise AugmentError("--arch-kwargs must be a JSON object of keyword arguments")
    from augment.pipeline import TrainFlags

    prob, natural = _prob(vals.pop("synthetic_prob"))
    cfg_over = {f"train.{k}": vals[k] for k in ("arch", "arch_kwargs", "epochs", "batch_size", "lr", "input_size",
                                                "synthetic_weight", "min_confidence", "distill_temperature")}
    if prob is not None:
        cfg_over["train.synthetic_prob"] = prob
    return cfg_over, TrainFlags(samples_per_epoch=vals["samples_per_epoch"], hflip=vals["hflip"], natural=natural)


# ----------------------------------------------------------------------------------------- train


@command()
@common_options
@train_options
@click.option("--real-k", type=int, help="Real train images per class (default: the largest of train.k_values).")
@click.option("--synthetic", "synthetic", multiple=True, type=click.Path(file_okay=False),
              help="Synthetic run folder (token arm: OUT, baseline arm: OUT/baseline); repeatable.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Start from this state dict (.safetensors/.pth) instead of scratch.")
@click.option("--distill/--no-distill", default=None,
              help="Train the synthetic images on the guide's soft labels (their manifests' top-k) instead of their "
                   "class; real images keep their labels (default: train.distill).")
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
    cfg_over, flags = _train_overrides(kwargs)
    run = str(RunDir.locate(synthetic[0])[0]) if synthetic else None
    kwargs["out"] = None
    cfg = build_config(kwargs, cfg_over | {"train.distill": distill}, run=run)
    if checkpoint:
        cfg.train.checkpoint = checkpoint
    request = pipeline.TrainRequest(synthetic, real_k, split, test_split, Path(out_flag) if out_flag else None, run,
                                    flags)
    done = pipeline.train(cfg, request, log=click.echo)
    result, settings, out = done.result, done.settings, done.out
    final, best = result.metrics["final"], result.metrics["best"]
    click.echo(f"test top-1 {100 * final['top1']:.2f}% top-5 {100 * final['top5']:.2f}% after {settings.epochs} epochs; "
               f"best {100 * best['top1']:.2f}% at epoch {best['epoch']} ({result.seconds:.0f}s)")
    click.echo(f"  metrics:    {out / 'metrics.json'}")
    click.echo(f"  checkpoint: {out / 'best.safetensors'}  (--classifier timm:{settings.arch}@{out / 'best.safetensors'})")


# ------------------------------------------------------------------------------------------ eval


@command("eval")
@click.argument("run", required=False, type=click.Path(file_okay=False))
@common_options
@click.option("--eval-classifier", "specs", multiple=True,
              help="Classifier spec to score the images with; repeatable (default: the run's --classifier and judge).")
@click.option("--features", help="Classifier whose penultimate features FID/KID use (default: the last --eval-classifier).")
@click.option("--split", default="test", show_default=True, help="Real split for FID/KID and the reference accuracy.")
def eval_cmd(run: str | None, specs: tuple[str, ...], features: str | None, split: str, **kwargs) -> None:
    """Accuracy of a run's generated images (token and baseline arm) by classifiers, plus FID/KID (Table 1).

    Writes RUN/report/eval.json and RUN/report/eval.md and prints the table.
    """
    from augment.downstream.evaluate import render_eval_markdown, run_eval
    from augment.inputs import resolve_inputs
    from augment.models.device import resolve_device

    run = run or kwargs.get("out")
    if run is None:
        run = build_config(dict(kwargs)).out
    if not Path(run).is_dir():
        raise AugmentError(f"run folder {run} does not exist; run `augment build --out {run}` first")
    kwargs["out"] = None
    cfg = build_config(kwargs, run=run)
    specs = specs or tuple(s for s in (cfg.classifier, cfg.judge) if s)
    dataset = resolve_inputs(cfg).dataset
    result = run_eval(run, dataset, specs, features, split, resolve_device(cfg.device))
    click.echo(render_eval_markdown(result, dataset.class_names))
    click.echo(f"wrote {RunDir(run).eval_json} and eval.md")


# ------------------------------------------------------------------------------------- benchmark


@command()
@common_options
@train_options
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
    cfg_over, flags = _train_overrides(kwargs, default_threads=1)
    out = kwargs.get("out")
    if out is None:
        out = build_config(dict(kwargs)).out
    kwargs["out"] = None
    cfg = build_config(kwargs, cfg_over, run=out)
    # every flag is checked before missing arms are built: a typo must not cost a build
    ks = int_list(k_values, "--k")
    seed_list = int_list(seeds, "--seeds")
    if seed_list is not None and len(seed_list) == 1 and seeds and "," not in seeds:
        if seed_list[0] < 1:
            raise AugmentError(f"--seeds {seeds}: give a count >= 1 or a list like 0,1,2")
        seed_list = list(range(seed_list[0]))
    flags.settings(cfg, seed=0)  # the training settings, checked
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


COMMANDS = (train, eval_cmd, benchmark)
