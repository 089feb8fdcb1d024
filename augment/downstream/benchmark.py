"""``augment benchmark``: do the synthetic images help? (the paper's Table 2)

The grid: k real train images per class (k in ``k_values``) x arms x seeds. An arm says what is
added to the k reals and how it is mixed:

    real                          the k reals only (k=0: no data, shown as "–")
    baseline                      + the baseline arm's images (OUT/baseline: plain prompts, same seeds)
    token                         + the token arm's images (OUT: prompts with the learned class tokens)
    token:conf=0.9                + token images whose guide_confidence >= 0.9
    token:weight=0.5              + token images with loss weight 0.5
    token:prob=0.2                + token images drawn with probability 0.2 per sample
    token:distill                 + token images trained on the guide's soft labels (their manifests'
                                  top-k; temperature train.distill_temperature, or token:distill=2)
    caso                          + CASO edits of exactly the cell's k reals (OUT/caso/draws/k<K>-seed<S>:
                                    embeddings learned from that draw alone, so no other real leaks in;
                                    no cell at k=0)
    token+caso                    + both (one pool of synthetic images)

Options combine (``token:conf=0.5,prob=0.25,weight=0.5``); an arm's unset options take the
benchmark's defaults (``--synthetic-prob`` etc.). Each cell trains a fresh classifier with the
same settings and seed-dependent k-shot draw, and reports the real test top-1 after the last
epoch (not the best epoch: choosing epochs on the test split would flatter every arm). Cells are
cached in ``OUT/report/benchmark-cells.jsonl`` keyed by their full settings, so an interrupted
grid resumes where it stopped. Outputs: ``OUT/report/benchmark.{json,csv,md,png}``.

This module runs the grid; the arms, cells and result are typed in
:mod:`augment.downstream.benchmark_result` and rendered by :mod:`augment.downstream.benchmark_report`.

The driver reads every image: the test split and each synthetic set once, each (k, seed) draw of
reals when its first cell is sent. Cells carry them by reference (:class:`~augment.shipping.Payload`,
one object-store copy shared by every cell), so a worker on a node that sees neither the dataset
nor the run folder trains the same cells; inline (``workers=0``) runs the same code on the values.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from augment.datasets.base import Dataset
from augment.downstream.benchmark_report import render_markdown, render_text, write_reports
from augment.downstream.benchmark_result import (
    PER_DRAW,
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
from augment.downstream.train import TrainSettings, read_checkpoint, train_classifier
from augment.errors import AugmentError
from augment.io.atomic import remove_temp_files
from augment.io.rundir import ArmDir, RunDir, parse_shard_name
from augment.io.shards import shard_urls
from augment.logs import progress_disabled
from augment.models.classifier import ClassifierSource
from augment.shipping import Payload

__all__ = [
    "DEFAULT_ARMS",
    "SOURCES",
    "Arm",
    "BenchmarkCell",
    "BenchmarkResult",
    "CellUnit",
    "CellWorker",
    "arm_sources",
    "default_arms",
    "parse_arm",
    "render_markdown",
    "render_text",
    "run_benchmark",
]

#: real only; each synthetic arm as is; both filtered by the guide's confidence (the same filter on
#: the baseline separates "the token helps" from "the filter helps"); loss weighting; and the token
#: images distilled (trained on the guide's soft labels instead of their class)
DEFAULT_ARMS = ("real", "baseline", "token", "baseline:conf=0.9", "token:conf=0.9", "token:weight=0.5",
                "token:distill")

#: uint8 images (N,3,H,W) and int64 labels (N,)
Images = tuple[torch.Tensor, torch.Tensor]


@dataclass
class CellUnit:
    """One grid cell as it travels to a worker: its cache key and settings, and the images it
    trains and tests on, read by the driver and sent by reference (the worker opens no file)."""

    key: str
    k: int
    arm: Arm
    seed: int
    reals: Payload[Images]  # the (k, seed) draw of real train images; empty for k=0
    test: Payload[Images]  # the real test split (one copy shared by every cell)
    synthetic: list[Payload[tuple[SyntheticSet, torch.Tensor]]]  # the arm's kept images, per source

    @property
    def label(self) -> str:
        return f"k={self.k} {self.arm.label} seed={self.seed}"


def arm_sources(out: str | Path) -> dict[str, ArmDir]:
    """The run-folder arm each synthetic source reads (by arm name; see augment.io.rundir.ARMS).
    A per-draw source (caso) maps to its whole arm; cells read :meth:`RunDir.caso_draw` instead."""
    run = RunDir(out)
    return {s: run.arm_dir(s) for source in SOURCES if source != "real" for s in source.split("+")}


def _arm_dir(run: RunDir, source: str, k: int, seed: int) -> ArmDir:
    """Where ``source``'s images for the cell (k, seed) are."""
    return run.caso_draw(k, seed) if source in PER_DRAW else run.arm_dir(source)


def _has_cell(arm: Arm, k: int) -> bool:
    """Real only needs reals; an arm of edits needs reals to edit (k=0: no cell)."""
    return (arm.synthetic and not arm.per_draw) or k > 0


def default_arms(out: str | Path, log: Callable[[str], None]) -> tuple[str, ...]:
    """:data:`DEFAULT_ARMS`, less the distilled arm when the token arm's manifests carry no soft
    labels (a run generated before they existed, or with ``soft_labels: 0``): the default grid of
    such a run still runs."""
    token = RunDir(out).arm_dir("token")
    urls = shard_urls(token)
    if urls:
        first = token.manifest_path(parse_shard_name(Path(urls[0]).name) or 0)
        has = "soft_classes" in pq.read_schema(first).names and \
            pq.read_table(first, columns=["soft_classes"]).column("soft_classes").null_count == 0
        if not has:
            log(f"benchmark: {token.manifests} has no soft labels (generated before them); skipping the "
                "distilled arm (regenerate the token arm into a fresh --out to add it)")
            return tuple(a for a in DEFAULT_ARMS if not parse_arm(a).distill)
    return DEFAULT_ARMS


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
    blob = json.dumps({"arm": arm.to_json(), "k": k, "seed": seed, "settings": s, "data": fp, "dataset": dataset},
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
    """Trains grid cells from the images they carry. One is built per Ray actor (or one on the driver
    for ``workers=0``); the test split and each synthetic set are fetched once per worker (cached by
    their payload's key), a cell's reals every time."""

    def __init__(self, settings: TrainSettings, class_names: Sequence[str],
                 checkpoint: Payload[ClassifierSource | None] | None = None) -> None:
        self.settings = settings
        self.class_names = list(class_names)
        self.checkpoint = checkpoint  # train.checkpoint's bytes, read by the driver
        self._shared: dict[str, Any] = {}

    def shared(self, payload: Payload[Any]) -> Any:
        """A payload that many cells carry, fetched the first time only."""
        if payload.key not in self._shared:
            self._shared[payload.key] = payload.get()
        return self._shared[payload.key]

    def run(self, cell: CellUnit) -> BenchmarkCell:
        """Train one cell."""
        k, arm, seed, settings = cell.k, cell.arm, cell.seed, self.settings
        test_images, test_labels = self.shared(cell.test)
        real_images, real_labels = cell.reals.get()
        if len(real_labels) == 0:
            real_images = torch.zeros(0, *test_images.shape[1:], dtype=torch.uint8)
        sets = [self.shared(p) for p in cell.synthetic]
        mixed = MixedDataset(real_images, real_labels, sets, self.class_names,
                             arm.prob if arm.synthetic else None, arm.weight if arm.weight is not None else 1.0,
                             distill_temperature=(arm.temperature or 1.0) if arm.distill else None)
        # only the last epoch counts here, so skip the per-epoch test passes (~15% of a cell)
        s = dataclasses.replace(settings, seed=seed, eval_every=0)
        result = train_classifier(mixed, test_images, test_labels, s, out=None, progress=False,
                                  desc=f"k={k} {arm.source} s{seed}",
                                  checkpoint=self.shared(self.checkpoint) if self.checkpoint is not None else None)
        final = result.metrics["final"]
        return BenchmarkCell(key=cell.key, arm=arm.label, arm_spec=arm, k=k, seed=seed, top1=result.final_top1,
                             top5=final["top5"], mean_class_top1=final["mean_class_top1"], real=mixed.n_real,
                             synthetic=mixed.n_synthetic, seconds=result.seconds)


def _kshot_reals(dataset: Dataset, k: int, seed: int, size: int | None) -> Images:
    """The (k, seed) draw of real train images, decoded on the driver."""
    return load_real(dataset, dataset.kshot(k, seed) if k > 0 else [], size)


def _read_arm(where: ArmDir, conf: float, dataset: Dataset, size: int | None,
              log: Callable[[str], None]) -> tuple[SyntheticSet, torch.Tensor]:
    """An arm's synthetic set after its confidence filter, decoded on the driver."""
    syn = load_synthetic(where, dataset.class_names, conf)
    images = read_synthetic_images(syn, size)
    log(f"{where} (min confidence {conf:g}): {syn.kept} of {syn.total} images kept"
        + (f" ({', '.join(f'{n} {r}' for r, n in syn.dropped.items())})" if syn.dropped else ""))
    return syn, images


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
    distill_temperature: float = 1.0,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    workers: int = 0,
    address: str | None = None,
    gpus_per_worker: float = 1.0,
    placement_timeout: float = 300.0,
) -> BenchmarkResult:
    """Run the grid (see the module docstring) on the arms of run folder ``out``; writes the report
    files into ``out/report/`` and returns the result as written to benchmark.json.

    ``workers`` > 0 trains cells on that many Ray actors (each asking for ``gpus_per_worker`` GPUs
    on CUDA; ``placement_timeout``: see :class:`augment.distributed.PoolSpec`); each cell carries its
    own seed and images and cells train single-threaded, so the figures do not depend on it. Actors
    receive nothing large at construction (only settings and class names): an object-store
    constructor argument breaks actor restarts (ray-project/ray#53727)."""
    start = time.perf_counter()
    out = Path(out)
    run = RunDir(out)
    log = log or (lambda msg: None)
    arms = [a if isinstance(a, Arm) else parse_arm(a) for a in arms]
    arms = list(dict.fromkeys(a.resolved(synthetic_prob, synthetic_weight, min_confidence, distill_temperature)
                              for a in arms))
    k_values = sorted(set(int(k) for k in k_values))
    if not k_values or min(k_values) < 0:
        raise AugmentError(f"--k needs values >= 0, got {k_values}")
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise AugmentError("--seeds needs at least one seed")
    if max(k_values) > 0:
        dataset.kshot(max(k_values), seeds[0])  # the largest k must fit the smallest class
    # (source, k, seed) -> the arm folder a cell reads; k and seed are None for whole-run arms
    needs = {(s, k if s in PER_DRAW else None, seed if s in PER_DRAW else None)
             for arm in arms for k in k_values for seed in seeds if _has_cell(arm, k) for s in arm.sources}
    where = {n: _arm_dir(run, n[0], n[1] or 0, n[2] or 0) for n in needs}
    absent = sorted((n for n in needs if not shard_urls(where[n])), key=str)
    missing = sorted({n[0] for n in absent})
    if missing:
        shown = [str(where[n].shards) for n in absent]
        raise AugmentError(
            f"no {' and no '.join(missing)} arm shards in {out} (looked in "
            f"{', '.join(shown[:3])}{f' and {len(shown) - 3} more' if len(shown) > 3 else ''}); "
            f"run `augment benchmark --build` or `augment build --baseline --out {out}` first, or drop those "
            "arms with --arm"
        )
    # the driver reads (and checks) every synthetic set and the test split before the first cell trains
    size = settings.input_size
    test = Payload(load_split(dataset, test_split, size))
    confs = {n: sorted({float(a.min_confidence or 0.0) for a in arms if n[0] in a.sources}) for n in needs}
    syn_sets = {(n, c): Payload(_read_arm(where[n], c, dataset, size, log)) for n in sorted(needs, key=str)
                for c in confs[n]}
    for a in arms:  # a set without soft labels fails here, once, not in every distilled cell
        if a.distill:
            for n in needs:
                if n[0] in a.sources:
                    syn_sets[n, float(a.min_confidence or 0.0)].get()[0].soft_targets(len(dataset.class_names), 1.0)
    fps = {n: _fingerprint(where[n]) for n in needs}

    def cell(arm: Arm, k: int, seed: int) -> CellUnit:
        ns = [(s, k if s in PER_DRAW else None, seed if s in PER_DRAW else None) for s in arm.sources]
        fp = "+".join(fps[n] for n in ns) or None
        conf = float(arm.min_confidence or 0.0)
        return CellUnit(_cell_key(arm, k, seed, settings, fp, dataset.name), k, arm, seed, reals[k, seed], test,
                        [syn_sets[n, conf] for n in ns])

    cache_path = run.benchmark_cells
    # a killed run's half-written reports (the cells cache is appended to, and skips a cut line)
    remove_temp_files(cache_path.parent, [p.name for p in run.benchmark_files().values()])
    cache = _read_cache(cache_path) if resume else {}
    reals = {(k, seed): Payload.lazy(partial(_kshot_reals, dataset, k, seed, size)) for k in k_values for seed in seeds}
    grid = [cell(arm, k, seed) for k in k_values for arm in arms for seed in seeds if _has_cell(arm, k)]
    done = {cell.key: cache[cell.key] for cell in grid if cell.key in cache}
    todo = [cell for cell in grid if cell.key not in done]
    # a (k, seed) draw of reals is released once its last cell is done
    pending: dict[tuple[int, int], int] = {}
    for cell in todo:
        pending[cell.k, cell.seed] = pending.get((cell.k, cell.seed), 0) + 1
    from tqdm.auto import tqdm

    bar = tqdm(total=len(grid), initial=len(done), desc="benchmark", unit="cell", disable=progress_disabled(progress))
    failures: list[str] = []

    def finished(cell: CellUnit) -> None:
        pending[cell.k, cell.seed] -= 1
        if pending[cell.k, cell.seed] == 0:
            cell.reals.release()

    def on_result(cell: CellUnit, row: BenchmarkCell) -> None:
        finished(cell)
        done[row.key] = row
        _append_cache(cache_path, row)
        bar.update(1)
        log(f"k={row.k:<3d} {row.arm:<45s} seed={row.seed}: top-1 {100 * row.top1:5.1f}% ({row.seconds:.0f}s)")

    def on_error(cell: CellUnit, exc: BaseException) -> None:
        finished(cell)
        failures.append(f"{cell.label}: {exc}")

    if todo:
        from augment.distributed import PoolSpec, ignoring_cache, run_units

        checkpoint = Payload(read_checkpoint(settings))  # actors need not see the driver's disk
        worker = CellWorker(settings, dataset.class_names, checkpoint)
        build = (lambda: worker) if workers <= 0 else partial(CellWorker, settings, dataset.class_names, checkpoint)
        # cells on actors train with this process's thread count (--threads), as inline cells do
        run_units(ignoring_cache(build), todo, PoolSpec(workers=workers, address=address, device=settings.device,
                                          gpus_per_worker=gpus_per_worker, placement_timeout=placement_timeout,
                                          threads=torch.get_num_threads()),
                  on_result, on_error)
    bar.close()
    if failures:
        raise AugmentError(f"{len(failures)} benchmark cell(s) failed, first: {failures[0]}; the "
                           f"{len(done)} finished cells are cached, re-run to retry the rest")
    cells = [done[cell.key] for cell in grid]

    summary = []
    for arm in arms:
        for k in k_values:
            values = [done[cell.key].top1 for cell in grid if cell.arm == arm and cell.k == k]
            note = ("no data (k=0, real only)" if not arm.synthetic and k == 0 else
                    "no reals to edit (k=0)" if arm.per_draw and k == 0 else None)
            summary.append(SummaryRow.of(arm, k, values, note))
    result = BenchmarkResult(
        run=str(out),
        dataset=dataset.name,
        test_split=test_split,
        test_images=int(len(test.get()[1])),
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
