"""The commands that use a finished run: ``train``, ``eval`` and ``benchmark``.

They read a run folder made by ``augment build``: its ``run.json`` supplies the dataset, data root
and classifiers the run was made with (the config resolution's run.json layer), and flags given on
the command line override them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import click

from augment.cli.options import build_config, command, config_options, int_list
from augment.config import synthetic_prob_flag
from augment.errors import AugmentError
from augment.io.lock import keep_lock, run_lock
from augment.io.rundir import RunDir

#: train's and benchmark's --threads: torch's thread count in this process, not the config's
#: ``threads`` (the stages' count per work unit), so not a declared setting
torch_threads_option = click.option(
    "--threads", type=int, help="torch CPU threads (train: torch's default; benchmark: 1, faster for tiny CNNs on shared cores).")


def torch_threads_unset() -> bool:
    import os

    return not os.environ.get("OMP_NUM_THREADS")


def _trainer_flags(kwargs: dict[str, Any], default_threads: int | None = None) -> dict[str, Any]:
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
    prob = kwargs.get("synthetic_prob")
    return {"samples_per_epoch": kwargs.pop("samples_per_epoch", None), "hflip": kwargs.pop("hflip", None),
            "natural": prob is not None and synthetic_prob_flag(prob) is None}


def _settings(cfg, only: dict[str, Any], seed: int | None = None):
    from augment.downstream.train import TrainSettings
    from augment.models.device import resolve_device

    return TrainSettings.from_config(
        cfg.train, samples_per_epoch=only["samples_per_epoch"], hflip=only["hflip"],
        seed=cfg.seed if seed is None else seed, device=str(resolve_device(cfg.device)),
    )


def _dataset(cfg):
    from augment.datasets.selection import load_dataset

    return load_dataset(cfg)


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
    from augment.downstream.mixing import load_split, make_mixed_dataset
    from augment.downstream.train import train_classifier

    out_flag = kwargs.get("out")
    only = _trainer_flags(kwargs)
    run = str(RunDir.locate(synthetic[0])[0]) if synthetic else None
    kwargs["out"] = None
    cfg = build_config(kwargs, {"train.distill": distill}, run=run)
    if checkpoint:
        cfg.train.checkpoint = checkpoint
    settings = _settings(cfg, only)
    k = real_k if real_k is not None else max(cfg.train.k_values or [0])
    dataset = _dataset(cfg)
    prob = None if only["natural"] else cfg.train.synthetic_prob
    mixed = make_mixed_dataset(dataset, k, cfg.seed, synthetic, prob, cfg.train.synthetic_weight,
                               cfg.train.min_confidence, settings.input_size, split,
                               distill_temperature=cfg.train.distill_temperature if cfg.train.distill else None)
    test_images, test_labels = load_split(dataset, test_split, settings.input_size)
    if out_flag:
        out = Path(out_flag)
    else:
        located = [(s, RunDir.locate(s)[1]) for s in synthetic]
        arms = [Path(s).name if name == "token" else name for s, name in located]
        out = RunDir(cfg.out if run else f"runs/{cfg.dataset}").train_dir(k, arms, cfg.seed)
    for s in mixed.sets:
        dropped = ", ".join(f"{n} {r}" for r, n in s.dropped.items())
        click.echo(f"synthetic {s.root}: {s.kept} of {s.total} images" + (f" (dropped {dropped})" if dropped else ""))
    click.echo(f"training {settings.arch} on {mixed.n_real} real ({k}/class from {split}) + {mixed.n_synthetic} synthetic "
               f"images (synthetic share {mixed.effective_prob:.2f}, weight {mixed.synthetic_weight:g}"
               + (f", soft labels at T={mixed.distill_temperature:g}" if mixed.distill_temperature else "") + ") for "
               f"{settings.epochs} epochs -> {out}")
    extra = {"dataset": dataset.name, "data_root": cfg.data_root, "real_k": k, "split": split, "test_split": test_split,
             "synthetic": [str(s) for s in synthetic], "seed": cfg.seed,
             "distill_temperature": mixed.distill_temperature}
    with run_lock(run) if run and not out_flag else contextlib.nullcontext():  # it writes <run>/train/
        result = train_classifier(mixed, test_images, test_labels, settings, out=out, desc="train", extra=extra)
    final, best = result.metrics["final"], result.metrics["best"]
    click.echo(f"test top-1 {100 * final['top1']:.2f}% top-5 {100 * final['top5']:.2f}% after {settings.epochs} epochs; "
               f"best {100 * best['top1']:.2f}% at epoch {best['epoch']} ({result.seconds:.0f}s)")
    click.echo(f"  metrics:    {out / 'metrics.json'}")
    click.echo(f"  checkpoint: {out / 'best.safetensors'}  (--classifier timm:{settings.arch}@{out / 'best.safetensors'})")


# ------------------------------------------------------------------------------------------ eval


@command("eval")
@click.argument("run", required=False, type=click.Path(file_okay=False))
@config_options("eval")
@click.option("--eval-classifier", "specs", multiple=True,
              help="Classifier spec to score the images with; repeatable (default: the run's --classifier and judge).")
@click.option("--features", help="Classifier whose penultimate features FID/KID use (default: the last --eval-classifier).")
@click.option("--split", default="test", show_default=True, help="Real split for FID/KID and the reference accuracy.")
def eval_cmd(run: str | None, specs: tuple[str, ...], features: str | None, split: str, **kwargs) -> None:
    """Accuracy of a run's generated images (token and baseline arm) by classifiers, plus FID/KID (Table 1).

    Writes RUN/report/eval.json and RUN/report/eval.md and prints the table.
    """
    from augment.downstream.evaluate import render_eval_markdown, run_eval
    from augment.models.device import resolve_device

    run = run or kwargs.get("out")
    if run is None:
        run = build_config(dict(kwargs)).out
    if not Path(run).is_dir():
        raise AugmentError(f"run folder {run} does not exist; run `augment build --out {run}` first")
    kwargs["out"] = None
    cfg = build_config(kwargs, run=run)
    specs = specs or tuple(s for s in (cfg.classifier, cfg.judge) if s)
    dataset = _dataset(cfg)
    result = run_eval(run, dataset, specs, features, split, resolve_device(cfg.device))
    click.echo(render_eval_markdown(result, dataset.class_names))
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

    from augment.downstream.arms import build_missing_arms
    from augment.downstream.benchmark import default_arms, render_text, run_benchmark
    # tiny CNNs at 32x32 gain nothing from a second intra-op thread and lose several-fold when
    # the cores are shared, so the grid runs single-threaded unless told otherwise
    only = _trainer_flags(kwargs, default_threads=1)
    out = kwargs.get("out")
    if out is None:
        out = build_config(dict(kwargs)).out
    kwargs["out"] = None
    cfg = build_config(kwargs, run=out)
    # every flag is checked before missing arms are built: a typo must not cost a build
    ks = int_list(k_values, "--k") or list(cfg.train.k_values)
    seed_list = int_list(seeds, "--seeds")
    if seed_list is not None and len(seed_list) == 1 and seeds and "," not in seeds:
        if seed_list[0] < 1:
            raise AugmentError(f"--seeds {seeds}: give a count >= 1 or a list like 0,1,2")
        seed_list = list(range(seed_list[0]))
    seed_list = seed_list or list(cfg.train.seeds)
    settings = _settings(cfg, only, seed=0)
    if build_missing:
        with keep_lock(out):  # one lock for all the stages it runs: nobody writes in between
            build_missing_arms(cfg, RunDir(out), arms or default_arms(out, lambda m: None), click.echo,
                               draws=[(k, s) for k in ks for s in seed_list])
    if not Path(out).is_dir():
        raise AugmentError(f"run folder {out} does not exist; run `augment build --baseline --out {out}` first")
    arms = arms or default_arms(out, click.echo)
    prob = None if only["natural"] else cfg.train.synthetic_prob
    dataset = _dataset(cfg)
    n_cells = len(ks) * len(arms) * len(seed_list)
    click.echo(f"benchmark: k={ks}, {len(arms)} arms, seeds {seed_list} (up to {n_cells} cells), "
               f"{settings.arch} x {settings.epochs} epochs, run {out}, "
               + (f"{cfg.workers} Ray workers" if cfg.workers > 0 else "inline"))
    with run_lock(out):  # the grid writes report/: one writer per run folder
        result = run_benchmark(out, dataset, settings, ks, seed_list, arms, prob,
                               cfg.train.synthetic_weight, cfg.train.min_confidence, test_split,
                               distill_temperature=cfg.train.distill_temperature, resume=not fresh,
                               log=lambda m: tqdm.write(m), workers=cfg.workers, address=cfg.address,
                               gpus_per_worker=cfg.gpus_per_worker, placement_timeout=cfg.placement_timeout)
    click.echo("")
    click.echo(f"real {test_split} top-1 (%), mean ± std over {len(seed_list)} seeds, after the last epoch:")
    click.echo(render_text(result))
    click.echo(f"\nwrote {RunDir(out).benchmark_files()['json']}, .csv, .md, .png ({result.seconds:.0f}s)")


COMMANDS = (train, eval_cmd, benchmark)
