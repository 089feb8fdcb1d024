"""The downstream commands: ``augment train``, ``augment eval``, ``augment benchmark``.

Plain click commands; ``augment/cli.py`` registers them with ``cli.add_command``. They read a run
folder made by ``augment build``: its ``run.json`` supplies the dataset, data root and classifiers
the run was made with, and flags given on the command line override them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import click

from augment.cli import COMMON, common_options, handle_errors


def _deep_update(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    for k, v in new.items():
        k = k.replace("-", "_")
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v
    return base


def run_config(kwargs: dict[str, Any], run: str | Path | None, extra: dict[str, Any] | None = None):
    """The config of run folder ``run`` (its run.json, or its baseline arm's) with this command's
    ``--config`` file and flags on top; without a run.json, the usual preset < file < flags."""
    from augment.cli import build_config
    from augment.config import _read_yaml, config_from_dict, validate
    from augment.io.rundir import read_run_json

    data = None
    if run is not None:
        for where in (Path(run), Path(run) / "baseline"):
            data = read_run_json(where)
            if data and isinstance(data.get("config"), dict):
                break
    if not data or not isinstance(data.get("config"), dict):
        cfg = build_config(kwargs, extra)
        if run is not None:
            cfg.out = str(run)
        return cfg
    merged = dict(data["config"])
    config_file = kwargs.pop("config_file", None)
    if config_file:
        _deep_update(merged, _read_yaml(Path(config_file), "config file"))
    flags: dict[str, Any] = {}
    for key, value in {**{k: kwargs.pop(k, None) for k in COMMON}, **(extra or {})}.items():
        if value is None:
            continue
        node = flags
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    _deep_update(merged, flags)
    cfg = config_from_dict(merged)
    validate(cfg)
    cfg.out = str(run)
    return cfg


def _prob(value: str | None) -> float | None | str:
    """--synthetic-prob: a probability, or 'natural' (the synthetic share of the union)."""
    from augment.errors import AugmentError

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


def train_options(f: Callable) -> Callable:
    """Classifier-training options shared by train and benchmark; unset ones come from cfg.train."""
    opts = [
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
        click.option("--threads", type=int, help="torch CPU threads (train: torch's default; benchmark: 1, faster for tiny CNNs on shared cores)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


TRAIN_KEYS = ("arch", "arch_kwargs", "epochs", "samples_per_epoch", "batch_size", "lr", "hflip", "input_size",
              "synthetic_prob", "synthetic_weight", "min_confidence")


def torch_threads_unset() -> bool:
    import os

    return not os.environ.get("OMP_NUM_THREADS")


def _train_overrides(kwargs: dict[str, Any], default_threads: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pop the training flags: (cfg overrides for train.*, TrainSettings-only overrides); set --threads
    (``default_threads`` when neither --threads nor OMP_NUM_THREADS is given)."""
    from augment.errors import AugmentError

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
                                                "synthetic_weight", "min_confidence")}
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
    from augment.runs import load_dataset

    return load_dataset(cfg)


# ----------------------------------------------------------------------------------------- train


@click.command()
@common_options
@train_options
@click.option("--real-k", type=int, help="Real train images per class (default: the largest of train.k_values).")
@click.option("--synthetic", "synthetic", multiple=True, type=click.Path(file_okay=False),
              help="Synthetic run folder (token arm: OUT, baseline arm: OUT/baseline); repeatable.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Start from this state dict (.safetensors/.pth) instead of scratch.")
@click.option("--split", default="train", show_default=True, help="Real split the k-shot images come from.")
@click.option("--test-split", default="test", show_default=True, help="Real split evaluated after every epoch.")
@handle_errors
def train(real_k: int | None, synthetic: tuple[str, ...], checkpoint: str | None, split: str, test_split: str,
          **kwargs) -> None:
    """Train a timm classifier on k real images per class plus synthetic shards; test on the real test split.

    Writes OUT/metrics.json (top-1/top-5, per-class accuracy, confusion matrix, config) and the best
    epoch's OUT/best.safetensors + best.json (load it with --classifier timm:ARCH@OUT/best.safetensors).
    OUT defaults to <run>/train/k<K>-<arms>-seed<S> next to the first --synthetic run.
    """
    from augment.downstream.mixing import load_split, make_mixed_dataset
    from augment.downstream.train import train_classifier

    out_flag = kwargs.get("out")
    cfg_over, only = _train_overrides(kwargs)
    run = synthetic[0] if synthetic else None
    if run is not None and Path(run).name == "baseline":
        run = str(Path(run).parent)
    kwargs["out"] = None
    cfg = run_config(kwargs, run, cfg_over)
    if checkpoint:
        cfg.train.checkpoint = checkpoint
    settings = _settings(cfg, only)
    k = real_k if real_k is not None else max(cfg.train.k_values or [0])
    dataset = _dataset(cfg)
    prob = None if only["natural"] else cfg.train.synthetic_prob
    mixed = make_mixed_dataset(dataset, k, cfg.seed, synthetic, prob, cfg.train.synthetic_weight,
                               cfg.train.min_confidence, settings.input_size, split)
    test_images, test_labels = load_split(dataset, test_split, settings.input_size)
    if out_flag:
        out = Path(out_flag)
    else:
        arms = "-".join(("baseline" if Path(s).name == "baseline" else Path(s).name) for s in synthetic) or "real"
        out = Path(cfg.out if run else f"runs/{cfg.dataset}") / "train" / f"k{k}-{arms}-seed{cfg.seed}"
    for s in mixed.sets:
        dropped = ", ".join(f"{n} {r}" for r, n in s.dropped.items())
        click.echo(f"synthetic {s.root}: {s.kept} of {s.total} images" + (f" (dropped {dropped})" if dropped else ""))
    click.echo(f"training {settings.arch} on {mixed.n_real} real ({k}/class from {split}) + {mixed.n_synthetic} synthetic "
               f"images (synthetic share {mixed.effective_prob:.2f}, weight {mixed.synthetic_weight:g}) for "
               f"{settings.epochs} epochs -> {out}")
    extra = {"dataset": dataset.name, "data_root": cfg.data_root, "real_k": k, "split": split, "test_split": test_split,
             "synthetic": [str(s) for s in synthetic], "seed": cfg.seed}
    result = train_classifier(mixed, test_images, test_labels, settings, out=out, desc="train", extra=extra)
    final, best = result.metrics["final"], result.metrics["best"]
    click.echo(f"test top-1 {100 * final['top1']:.2f}% top-5 {100 * final['top5']:.2f}% after {settings.epochs} epochs; "
               f"best {100 * best['top1']:.2f}% at epoch {best['epoch']} ({result.seconds:.0f}s)")
    click.echo(f"  metrics:    {out / 'metrics.json'}")
    click.echo(f"  checkpoint: {out / 'best.safetensors'}  (--classifier timm:{settings.arch}@{out / 'best.safetensors'})")


# ------------------------------------------------------------------------------------------ eval


@click.command("eval")
@click.argument("run", required=False, type=click.Path(file_okay=False))
@common_options
@click.option("--eval-classifier", "specs", multiple=True,
              help="Classifier spec to score the images with; repeatable (default: the run's --classifier and judge).")
@click.option("--features", help="Classifier whose penultimate features FID/KID use (default: the last --eval-classifier).")
@click.option("--split", default="test", show_default=True, help="Real split for FID/KID and the reference accuracy.")
@handle_errors
def eval_cmd(run: str | None, specs: tuple[str, ...], features: str | None, split: str, **kwargs) -> None:
    """Accuracy of a run's generated images (token and baseline arm) by classifiers, plus FID/KID (Table 1).

    Writes RUN/report/eval.json and RUN/report/eval.md and prints the table.
    """
    from augment.downstream.evaluate import render_eval_markdown, run_eval
    from augment.errors import AugmentError
    from augment.models.device import resolve_device

    run = run or kwargs.get("out")
    if run is None:
        from augment.cli import build_config

        run = build_config(dict(kwargs)).out
    if not Path(run).is_dir():
        raise AugmentError(f"run folder {run} does not exist; run `augment build --out {run}` first")
    kwargs["out"] = None
    cfg = run_config(kwargs, run)
    specs = specs or tuple(s for s in (cfg.classifier, cfg.judge) if s)
    dataset = _dataset(cfg)
    result = run_eval(run, dataset, specs, features, split, resolve_device(cfg.device))
    click.echo(render_eval_markdown(result, dataset.class_names))
    click.echo(f"wrote {Path(run) / 'report' / 'eval.json'} and eval.md")


# ------------------------------------------------------------------------------------- benchmark


def _int_list(value: str | None, flag: str) -> list[int] | None:
    from augment.errors import AugmentError

    if value is None:
        return None
    try:
        return [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise AugmentError(f"{flag} {value!r}: use comma-separated integers, e.g. 0,3,9,15") from None


def _build_missing_arms(cfg, out: str | Path, arms: tuple[str, ...] | list[str]) -> None:
    """Make the synthetic arms the grid needs and OUT lacks: tokens (for the token arm), then the token
    and/or baseline shards. Every stage resumes, so an interrupted build is picked up by the next call."""
    from augment.downstream.benchmark import arm_sources, parse_arm
    from augment.errors import AugmentError
    from augment.generate.runner import run_generate
    from augment.io.shards import shard_urls
    from augment.tokens.runner import run_tokens

    sources = arm_sources(out)
    needed = sorted({a.source for a in map(parse_arm, arms) if a.synthetic})
    missing = [s for s in needed if not shard_urls(sources[s])]
    if not missing:
        return
    click.echo(f"benchmark: {' and '.join(missing)} arm missing in {out}; building it first "
               "(as `augment build --baseline`; --no-build refuses instead)")
    if "token" in missing:
        t = run_tokens(cfg)
        if t.failed:
            raise AugmentError(f"{len(t.failed)} token(s) failed, first: {t.failed[0]}; fix it and re-run "
                               "(finished tokens are kept)")
    for arm in missing:
        g = run_generate(cfg, baseline=arm == "baseline")
        if g.failed:
            raise AugmentError(f"{arm} arm: {len(g.failed)} shard(s) failed, first: {g.failed[0]}; re-run to "
                               "retry them (finished shards are kept)")


@click.command()
@common_options
@train_options
@click.option("--k", "k_values", help="Real images per class to try, comma-separated (default: train.k_values, 0,3,9,15).")
@click.option("--seeds", help="Number of seeds N (0..N-1) or a comma-separated list (default: train.seeds).")
@click.option("--arm", "arms", multiple=True,
              help="An arm: real | baseline | token, with options, e.g. token:conf=0.9 or token:prob=0.2,weight=0.5; "
                   "repeatable (default: real, baseline, token, baseline:conf=0.9, token:conf=0.9, token:weight=0.5).")
@click.option("--test-split", default="test", show_default=True, help="Real split the classifiers are tested on.")
@click.option("--fresh", is_flag=True, help="Retrain every cell (default: reuse cells cached in OUT/report/).")
@click.option("--build/--no-build", "build_missing", default=True, show_default=True,
              help="Build the synthetic arms the grid needs when OUT lacks them (tokens, then generate, as "
                   "`augment build --baseline`; resumable) instead of refusing.")
@handle_errors
def benchmark(k_values: str | None, seeds: str | None, arms: tuple[str, ...], test_split: str, fresh: bool,
              build_missing: bool, **kwargs) -> None:
    """Few-shot grid (Table 2): k real images per class x {real only, + baseline, + token synthetic, ...} x seeds.

    Reuses the run folder's token arm (OUT) and baseline arm (OUT/baseline) made by
    `augment build --baseline`, building the ones it lacks first (--no-build: refuse); prints
    mean ± std real test top-1 per cell and writes OUT/report/benchmark.{json,csv,md,png}.
    Cells train on --workers Ray actors (0: inline) and are cached, so a re-run resumes.
    """
    from tqdm.auto import tqdm

    from augment.downstream.benchmark import DEFAULT_ARMS, render_text, run_benchmark
    from augment.errors import AugmentError

    # tiny CNNs at 32x32 gain nothing from a second intra-op thread and lose several-fold when
    # the cores are shared, so the grid runs single-threaded unless told otherwise
    cfg_over, only = _train_overrides(kwargs, default_threads=1)
    out = kwargs.get("out")
    if out is None:
        from augment.cli import build_config

        out = build_config(dict(kwargs)).out
    kwargs["out"] = None
    cfg = run_config(kwargs, out, cfg_over)
    if build_missing:
        _build_missing_arms(cfg, out, arms or DEFAULT_ARMS)
    if not Path(out).is_dir():
        raise AugmentError(f"run folder {out} does not exist; run `augment build --baseline --out {out}` first")
    ks = _int_list(k_values, "--k") or list(cfg.train.k_values)
    seed_list = _int_list(seeds, "--seeds")
    if seed_list is not None and len(seed_list) == 1 and seeds and "," not in seeds:
        if seed_list[0] < 1:
            raise AugmentError(f"--seeds {seeds}: give a count >= 1 or a list like 0,1,2")
        seed_list = list(range(seed_list[0]))
    seed_list = seed_list or list(cfg.train.seeds)
    settings = _settings(cfg, only, seed=0)
    prob = None if only["natural"] else cfg.train.synthetic_prob
    dataset = _dataset(cfg)
    n_cells = len(ks) * len(arms or DEFAULT_ARMS) * len(seed_list)
    click.echo(f"benchmark: k={ks}, {len(arms or DEFAULT_ARMS)} arms, seeds {seed_list} (up to {n_cells} cells), "
               f"{settings.arch} x {settings.epochs} epochs, run {out}, "
               + (f"{cfg.workers} Ray workers" if cfg.workers > 0 else "inline"))
    result = run_benchmark(out, dataset, settings, ks, seed_list, arms or DEFAULT_ARMS, prob,
                           cfg.train.synthetic_weight, cfg.train.min_confidence, test_split, resume=not fresh,
                           log=lambda m: tqdm.write(m), workers=cfg.workers, address=cfg.address,
                           dataset_factory=partial(_dataset, cfg))
    click.echo("")
    click.echo(f"real {test_split} top-1 (%), mean ± std over {len(seed_list)} seeds, after the last epoch:")
    click.echo(render_text(result))
    report = Path(out) / "report"
    click.echo(f"\nwrote {report / 'benchmark.json'}, .csv, .md, .png ({result['seconds']:.0f}s)")


def _register() -> None:
    """Make sure the group has these commands even when this module is imported before augment.cli
    (cli.py registers them when it is imported first; adding twice is a no-op here)."""
    from augment.cli import cli as group

    for name, cmd in (("train", train), ("eval", eval_cmd), ("benchmark", benchmark)):
        if name not in group.commands:
            group.add_command(cmd, name)


_register()
