"""The commands that use a finished run: ``train``, ``eval`` and ``benchmark``.

They read a run folder made by ``augment build``: its ``run.json`` supplies the dataset, data root
and classifiers the run was made with (the config resolution's run.json layer), and flags given on
the command line override them.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import click

from augment.cli.options import add_options, build_config, command, common_options, int_list
from augment.errors import AugmentError
from augment.io.lock import keep_lock, run_lock
from augment.io.rundir import RunDir


def _prob(value: str | None) -> float | None | str:
    """--synthetic-prob: a probability, or 'natural' (the synthetic share of the union)."""
    if value is None:
        return "unset"
    if value.strip().lower() in ("natural", "none"):
        return None
    try:
        p = float(value)
    except ValueError:
        raise AugmentError(f"--synthetic-prob {value!r} is not a number in [0, 1] or 'natural'") from None
    if not 0.0 <= p <= 1.0:
        raise AugmentError(f"--synthetic-prob must be in [0, 1], got {p}")
    return p


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


def _train_overrides(kwargs: dict[str, Any], default_threads: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pop the training flags: (cfg overrides for train.*, TrainSettings-only overrides); set --threads
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
    prob = _prob(vals.pop("synthetic_prob"))
    cfg_over = {f"train.{k}": vals[k] for k in ("arch", "arch_kwargs", "epochs", "batch_size", "lr", "input_size",
                                                "synthetic_weight", "min_confidence", "distill_temperature")}
    if prob != "unset" and prob is not None:
        cfg_over["train.synthetic_prob"] = prob
    only = {"samples_per_epoch": vals["samples_per_epoch"], "hflip": vals["hflip"],
            "natural": prob is None}
    return cfg_over, only


def _settings(cfg, only: dict[str, Any], seed: int | None = None):
    from augment.downstream.train import TrainSettings
    from augment.models.device import resolve_device

    return TrainSettings.from_config(
        cfg.train, samples_per_epoch=only["samples_per_epoch"], hflip=only["hflip"],
        seed=cfg.seed if seed is None else seed, device=str(resolve_device(cfg.device)),
    )


def _dataset(cfg):
    from augment.models.labels import load_dataset

    return load_dataset(cfg)


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
    from augment.downstream.mixing import load_split, make_mixed_dataset
    from augment.downstream.train import train_classifier

    out_flag = kwargs.get("out")
    cfg_over, only = _train_overrides(kwargs)
    run = str(RunDir.locate(synthetic[0])[0]) if synthetic else None
    kwargs["out"] = None
    cfg = build_config(kwargs, cfg_over | {"train.distill": distill}, run=run)
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

    from augment.downstream.arms import build_missing_arms
    from augment.downstream.benchmark import default_arms, render_text, run_benchmark
    # tiny CNNs at 32x32 gain nothing from a second intra-op thread and lose several-fold when
    # the cores are shared, so the grid runs single-threaded unless told otherwise
    cfg_over, only = _train_overrides(kwargs, default_threads=1)
    out = kwargs.get("out")
    if out is None:
        out = build_config(dict(kwargs)).out
    kwargs["out"] = None
    cfg = build_config(kwargs, cfg_over, run=out)
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
