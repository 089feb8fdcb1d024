"""``augment benchmark``: do the synthetic images help? (the paper's Table 2)

The grid: k real train images per class (k in ``k_values``) x arms x seeds. An arm says what is
added to the k reals and how it is mixed:

    real                          the k reals only (k=0: no data, shown as "–")
    baseline                      + the baseline arm's images (OUT/baseline: plain prompts, same seeds)
    token                         + the token arm's images (OUT: prompts with the learned class tokens)
    token:conf=0.9                + token images whose guide_confidence >= 0.9
    token:weight=0.5              + token images with loss weight 0.5
    token:prob=0.2                + token images drawn with probability 0.2 per sample

Options combine (``token:conf=0.5,prob=0.25,weight=0.5``); an arm's unset options take the
benchmark's defaults (``--synthetic-prob`` etc.). Each cell trains a fresh classifier with the
same settings and seed-dependent k-shot draw, and reports the real test top-1 after the last
epoch (not the best epoch: choosing epochs on the test split would flatter every arm). Cells are
cached in ``OUT/report/benchmark-cells.jsonl`` keyed by their full settings, so an interrupted
grid resumes where it stopped. Outputs: ``OUT/report/benchmark.{json,csv,md,png}``.

This module runs the grid; the arms, cells and result are typed in
:mod:`augment.downstream.benchmark_result` and rendered by :mod:`augment.downstream.benchmark_report`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch

from augment.datasets.base import Dataset
from augment.downstream.benchmark_report import render_markdown, render_text, write_reports
from augment.downstream.benchmark_result import (
    SOURCES,
    Arm,
    BenchmarkCell,
    BenchmarkResult,
    SummaryRow,
    parse_arm,
)
from augment.downstream.mixing import (
    MixedDataset,
    SyntheticSet,
    load_real,
    load_split,
    load_synthetic,
    read_synthetic_images,
)
from augment.downstream.train import TrainSettings, train_classifier
from augment.errors import AugmentError
from augment.io.rundir import ArmDir, RunDir
from augment.io.shards import shard_urls

__all__ = [
    "DEFAULT_ARMS",
    "SOURCES",
    "Arm",
    "BenchmarkCell",
    "BenchmarkResult",
    "CellWorker",
    "arm_sources",
    "parse_arm",
    "render_markdown",
    "render_text",
    "run_benchmark",
]

#: real only; each synthetic arm as is; both filtered by the guide's confidence (the same filter on
#: the baseline separates "the token helps" from "the filter helps"); and loss weighting
DEFAULT_ARMS = ("real", "baseline", "token", "baseline:conf=0.9", "token:conf=0.9", "token:weight=0.5")

#: one grid cell as it travels to a worker: (cache key, k, arm, seed)
Cell = tuple[str, int, Arm, int]


def arm_sources(out: str | Path) -> dict[str, ArmDir]:
    """The run-folder arm each synthetic source reads (by arm name; see augment.io.rundir.ARMS)."""
    run = RunDir(out)
    return {source: run.arm_dir(source) for source in SOURCES if source != "real"}


def _fingerprint(arm: ArmDir) -> str:
    """Changes when the arm's shards change (names, sizes and mtimes of its manifests)."""
    h = hashlib.sha256()
    for p in sorted(arm.manifests.glob("*.parquet")):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _cell_key(arm: Arm, k: int, seed: int, settings: TrainSettings, fp: str | None, dataset: str) -> str:
    s = settings.to_dict()
    for volatile in ("seed", "device", "eval_every", "eval_batch_size"):
        s.pop(volatile, None)
    blob = json.dumps({"arm": asdict(arm), "k": k, "seed": seed, "settings": s, "data": fp, "dataset": dataset},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _read_cache(path: Path) -> dict[str, BenchmarkCell]:
    cache: dict[str, BenchmarkCell] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                cell = BenchmarkCell.from_json(json.loads(line))
            except (ValueError, TypeError):
                continue  # a line cut by a crash (or of another layout): that cell is simply redone
            cache[cell.key] = cell
    return cache


def _append_cache(path: Path, cell: BenchmarkCell) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(cell.to_json(), sort_keys=True) + "\n")
        f.flush()


class CellWorker:
    """Trains grid cells. One is built per Ray actor (or one on the driver for ``workers=0``): it
    loads the test split once and each synthetic set the first time an arm needs it."""

    def __init__(self, out: str | Path, dataset: Dataset | Callable[[], Dataset], settings: TrainSettings,
                 test_split: str = "test", log: Callable[[str], None] | None = None) -> None:
        if not isinstance(dataset, Dataset):
            dataset = dataset()  # a factory: actors rebuild the dataset instead of receiving it pickled
        self.sources = arm_sources(out)
        self.dataset = dataset
        self.settings = settings
        self.log = log or (lambda msg: None)
        self.test_images, self.test_labels = load_split(dataset, test_split, settings.input_size)
        self._synthetic: dict[tuple[str, float], tuple[SyntheticSet, torch.Tensor]] = {}

    def synthetic(self, arm: Arm) -> tuple[SyntheticSet, torch.Tensor]:
        key = (arm.source, float(arm.min_confidence or 0.0))
        if key not in self._synthetic:
            syn = load_synthetic(self.sources[arm.source], self.dataset.class_names, key[1])
            self._synthetic[key] = (syn, read_synthetic_images(syn, self.settings.input_size))
            self.log(f"{arm.source} arm (min confidence {key[1]:g}): {syn.kept} of {syn.total} images kept"
                     + (f" ({', '.join(f'{n} {r}' for r, n in syn.dropped.items())})" if syn.dropped else ""))
        return self._synthetic[key]

    def run(self, cell: Cell) -> BenchmarkCell:
        """Train one cell ``(key, k, arm, seed)``."""
        key, k, arm, seed = cell
        dataset, settings = self.dataset, self.settings
        real_images, real_labels = load_real(dataset, dataset.kshot(k, seed) if k > 0 else [], settings.input_size)
        if len(real_labels) == 0:
            real_images = torch.zeros(0, *self.test_images.shape[1:], dtype=torch.uint8)
        sets = [self.synthetic(arm)] if arm.synthetic else []
        mixed = MixedDataset(real_images, real_labels, sets, dataset.class_names,
                             arm.prob if arm.synthetic else None, arm.weight if arm.weight is not None else 1.0)
        # only the last epoch counts here, so skip the per-epoch test passes (~15% of a cell)
        s = dataclasses.replace(settings, seed=seed, eval_every=0)
        result = train_classifier(mixed, self.test_images, self.test_labels, s, out=None, progress=False,
                                  desc=f"k={k} {arm.source} s{seed}")
        final = result.metrics["final"]
        return BenchmarkCell(key=key, arm=arm.label, arm_spec=arm, k=k, seed=seed, top1=result.final_top1,
                             top5=final["top5"], mean_class_top1=final["mean_class_top1"], real=mixed.n_real,
                             synthetic=mixed.n_synthetic, seconds=result.seconds)


def run_benchmark(
    out: str | Path,
    dataset: Dataset,
    settings: TrainSettings,
    k_values: Sequence[int] = (0, 3, 9, 15),
    seeds: Sequence[int] = (0, 1, 2),
    arms: Sequence[Arm | str] = DEFAULT_ARMS,
    synthetic_prob: float | None = 0.5,
    synthetic_weight: float = 1.0,
    min_confidence: float = 0.0,
    test_split: str = "test",
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    workers: int = 0,
    address: str | None = None,
    dataset_factory: Callable[[], Dataset] | None = None,
    gpus_per_worker: float = 1.0,
    placement_timeout: float = 300.0,
) -> BenchmarkResult:
    """Run the grid (see the module docstring) on the arms of run folder ``out``; writes the report
    files into ``out/report/`` and returns the result as written to benchmark.json.

    ``workers`` > 0 trains cells on that many Ray actors (each asking for ``gpus_per_worker`` GPUs
    on CUDA; ``placement_timeout``: see :class:`augment.distributed.PoolSpec`); each cell carries its
    own seed and cells train single-threaded, so the figures do not depend on it.
    ``dataset_factory`` (a small picklable callable returning ``dataset``) lets each actor rebuild
    the dataset: a dataset object over 100 KB would travel through Ray's object store, from which
    an actor restart cannot always get it back (ray-project/ray#53727)."""
    start = time.perf_counter()
    out = Path(out)
    run = RunDir(out)
    log = log or (lambda msg: None)
    arms = [a if isinstance(a, Arm) else parse_arm(a) for a in arms]
    arms = list(dict.fromkeys(a.resolved(synthetic_prob, synthetic_weight, min_confidence) for a in arms))
    k_values = sorted(set(int(k) for k in k_values))
    if not k_values or min(k_values) < 0:
        raise AugmentError(f"--k needs values >= 0, got {k_values}")
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise AugmentError("--seeds needs at least one seed")
    if max(k_values) > 0:
        dataset.kshot(max(k_values), seeds[0])  # the largest k must fit the smallest class
    sources = arm_sources(out)
    missing = [a.source for a in arms if a.synthetic and not shard_urls(sources[a.source])]
    if missing:
        what = sorted(set(missing))
        raise AugmentError(
            f"no {' and no '.join(what)} arm shards in {out} (looked in "
            f"{', '.join(str(sources[m].shards) for m in what)}); run `augment build --baseline --out {out}` "
            "first (tokens, then both arms), or drop those arms with --arm"
        )
    # the driver reads (and checks) every synthetic set before the first cell trains
    driver = CellWorker(out, dataset, settings, test_split, log)
    for arm in arms:
        if arm.synthetic:
            driver.synthetic(arm)
    fps = {s: _fingerprint(p) for s, p in sources.items() if any(a.source == s for a in arms)}
    cache_path = run.benchmark_cells
    cache = _read_cache(cache_path) if resume else {}
    grid: list[Cell] = [(_cell_key(arm, k, seed, settings, fps.get(arm.source), dataset.name), k, arm, seed)
                        for k in k_values for arm in arms for seed in seeds if arm.synthetic or k > 0]
    done = {key: cache[key] for key, *_ in grid if key in cache}
    todo = [cell for cell in grid if cell[0] not in done]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(grid), initial=len(done), desc="benchmark", unit="cell", disable=not progress)
    failures: list[str] = []

    def on_result(cell: Cell, row: BenchmarkCell) -> None:
        done[row.key] = row
        _append_cache(cache_path, row)
        bar.update(1)
        log(f"k={row.k:<3d} {row.arm:<45s} seed={row.seed}: top-1 {100 * row.top1:5.1f}% ({row.seconds:.0f}s)")

    def on_error(cell: Cell, exc: BaseException) -> None:
        failures.append(f"k={cell[1]} {cell[2].label} seed={cell[3]}: {exc}")

    if todo:
        from augment.distributed import PoolSpec, run_units

        factory = (lambda: driver) if workers <= 0 else \
            partial(CellWorker, out, dataset_factory or dataset, settings, test_split)
        run_units(factory, todo, PoolSpec(workers=workers, address=address, device=settings.device,
                                          gpus_per_worker=gpus_per_worker, placement_timeout=placement_timeout),
                  on_result, on_error)
    bar.close()
    if failures:
        raise AugmentError(f"{len(failures)} benchmark cell(s) failed, first: {failures[0]}; the "
                           f"{len(done)} finished cells are cached, re-run to retry the rest")
    cells = [done[key] for key, *_ in grid]

    summary = []
    for arm in arms:
        for k in k_values:
            values = [done[key].top1 for key, kk, a, _ in grid if a == arm and kk == k]
            note = "no data (k=0, real only)" if not arm.synthetic and k == 0 else None
            summary.append(SummaryRow.of(arm, k, values, note))
    result = BenchmarkResult(
        run=str(out),
        dataset=dataset.name,
        test_split=test_split,
        test_images=int(len(driver.test_labels)),
        k_values=k_values,
        seeds=seeds,
        arms=arms,
        metric="real test top-1 after the last epoch; mean ± sample std over seeds",
        settings=settings.to_dict(),
        workers=workers,
        summary=summary,
        cells=cells,
        seconds=time.perf_counter() - start,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )
    result = BenchmarkResult.from_json(result.to_json())  # NaN -> None: the object equals what the file holds
    write_reports(run, result)
    return result
