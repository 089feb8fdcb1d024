"""``augment benchmark``: do the synthetic images help? (the paper's Table 2)

The grid: k real train images per class (k in ``k_values``) x treatments x seeds. A treatment
(``--arm``) says what is added to the k reals and how it is mixed (the images come from the run
folder's arms, :data:`augment.io.rundir.ARMS`):

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

Options combine (``token:conf=0.5,prob=0.25,weight=0.5``); a treatment's unset options take the
benchmark's defaults (``--synthetic-prob`` etc.). Each cell trains a fresh classifier with the
same settings and seed-dependent k-shot draw, and reports the real test top-1 after the last
epoch (not the best epoch: choosing epochs on the test split would flatter every treatment). Cells are
cached in ``OUT/report/benchmark-cells.jsonl`` keyed by their full settings, so an interrupted
grid resumes where it stopped. Outputs: ``OUT/report/benchmark.{json,csv,md,png}``.

This module runs the grid, as a stage of :mod:`augment.stage` (its progress, resume and failure
policy; :class:`BenchmarkStage`); the treatments, cells and result are typed in
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
from typing import Any, ClassVar

import pyarrow.parquet as pq
import torch

from augment import stage
from augment.config import Config
from augment.datasets.base import Dataset
from augment.distributed import WorkerFactory, ignoring_cache
from augment.downstream.benchmark_report import render_markdown, render_text, write_reports
from augment.downstream.benchmark_result import (
    PER_DRAW,
    SOURCES,
    BenchmarkCell,
    BenchmarkResult,
    SummaryRow,
    Treatment,
    parse_treatment,
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
from augment.models.classifier import ClassifierSource
from augment.models.device import describe_device, resolve_device
from augment.shipping import Payload

__all__ = [
    "DEFAULT_TREATMENTS",
    "SOURCES",
    "Treatment",
    "BenchmarkCell",
    "BenchmarkResult",
    "CellUnit",
    "CellWorker",
    "arm_sources",
    "default_treatments",
    "parse_treatment",
    "render_markdown",
    "render_text",
    "run_benchmark",
]

#: real only; each synthetic arm as is; both filtered by the guide's confidence (the same filter on
#: the baseline separates "the token helps" from "the filter helps"); loss weighting; and the token
#: images distilled (trained on the guide's soft labels instead of their class)
DEFAULT_TREATMENTS = ("real", "baseline", "token", "baseline:conf=0.9", "token:conf=0.9", "token:weight=0.5",
                "token:distill")

#: uint8 images (N,3,H,W) and int64 labels (N,)
Images = tuple[torch.Tensor, torch.Tensor]


@dataclass
class CellUnit:
    """One grid cell as it travels to a worker: its cache key and settings, and the images it
    trains and tests on, read by the driver and sent by reference (the worker opens no file)."""

    key: str
    k: int
    treatment: Treatment
    seed: int
    reals: Payload[Images]  # the (k, seed) draw of real train images; empty for k=0
    test: Payload[Images]  # the real test split (one copy shared by every cell)
    synthetic: list[Payload[tuple[SyntheticSet, torch.Tensor]]]  # the treatment's kept images, per source

    @property
    def label(self) -> str:
        return f"k={self.k} {self.treatment.label} seed={self.seed}"


def arm_sources(out: str | Path) -> dict[str, ArmDir]:
    """The run-folder arm each synthetic source reads (by arm name; see augment.io.rundir.ARMS).
    A per-draw source (caso) maps to its whole arm; cells read :meth:`RunDir.caso_draw` instead."""
    run = RunDir(out)
    return {s: run.arm_dir(s) for source in SOURCES if source != "real" for s in source.split("+")}


def _arm_dir(run: RunDir, source: str, k: int, seed: int) -> ArmDir:
    """Where ``source``'s images for the cell (k, seed) are."""
    return run.caso_draw(k, seed) if source in PER_DRAW else run.arm_dir(source)


def _has_cell(treatment: Treatment, k: int) -> bool:
    """Real only needs reals; a treatment of edits needs reals to edit (k=0: no cell)."""
    return (treatment.synthetic and not treatment.per_draw) or k > 0


def default_treatments(out: str | Path, log: Callable[[str], None]) -> tuple[str, ...]:
    """:data:`DEFAULT_TREATMENTS`, less the distilled treatment when the token arm's manifests carry no soft
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
            return tuple(a for a in DEFAULT_TREATMENTS if not parse_treatment(a).distill)
    return DEFAULT_TREATMENTS


def _fingerprint(arm: ArmDir) -> str:
    """Changes when the arm's shards change (names, sizes and mtimes of its manifests)."""
    h = hashlib.sha256()
    for p in sorted(arm.manifests.glob("*.parquet")):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _cell_key(treatment: Treatment, k: int, seed: int, settings: TrainSettings, fp: str | None, dataset: str) -> str:
    s = settings.to_dict()
    for volatile in ("seed", "device", "eval_every", "eval_batch_size"):
        s.pop(volatile, None)
    blob = json.dumps({"arm": treatment.to_json(), "k": k, "seed": seed, "settings": s, "data": fp, "dataset": dataset},
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
        # the device resolved here, on the worker's node (the driver may have no GPU; "auto" is the node's)
        device = resolve_device(settings.device)
        self.settings = dataclasses.replace(settings, device=str(device))
        self.device_info = describe_device(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
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
        k, t, seed, settings = cell.k, cell.treatment, cell.seed, self.settings
        test_images, test_labels = self.shared(cell.test)
        real_images, real_labels = cell.reals.get()
        if len(real_labels) == 0:
            real_images = torch.zeros(0, *test_images.shape[1:], dtype=torch.uint8)
        sets = [self.shared(p) for p in cell.synthetic]
        mixed = MixedDataset(real_images, real_labels, sets, self.class_names,
                             t.prob if t.synthetic else None, t.weight if t.weight is not None else 1.0,
                             distill_temperature=(t.temperature or 1.0) if t.distill else None)
        # only the last epoch counts here, so skip the per-epoch test passes (~15% of a cell)
        s = dataclasses.replace(settings, seed=seed, eval_every=0)
        result = train_classifier(mixed, test_images, test_labels, s, out=None, progress=False,
                                  desc=f"k={k} {t.source} s{seed}",
                                  checkpoint=self.shared(self.checkpoint) if self.checkpoint is not None else None)
        final = result.metrics.final
        return BenchmarkCell(key=cell.key, arm=t.label, arm_spec=t, k=k, seed=seed, top1=result.final_top1,
                             top5=final.top5, mean_class_top1=final.mean_class_top1, real=mixed.n_real,
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


@dataclass
class BenchmarkSummary(stage.StageSummary):
    """What the grid did (the stage skeleton's summary): ``result`` is benchmark.json's content,
    None when a cell failed (no report is written then; the finished cells are cached)."""

    result: BenchmarkResult | None = None


class BenchmarkStage(stage.Stage[CellUnit, BenchmarkCell, BenchmarkSummary]):
    """The grid as a stage (:mod:`augment.stage`): units are cells, results trained cells. It writes
    no arm (``records_run`` False): only ``OUT/report/``. A cell is done when the cells cache holds
    its key; ``force`` (``--fresh``) retrains every cell."""

    name = "benchmark"
    compat_keys: ClassVar[list[str]] = []
    progress_unit = "cell"
    records_run = False

    def __init__(self, cfg: Config, dataset: Dataset, settings: TrainSettings, k_values: Sequence[int],
                 seeds: Sequence[int], treatments: Sequence[Treatment], test_split: str = "test",
                 log: Callable[[str], None] | None = None) -> None:
        super().__init__(cfg)
        self.start = time.perf_counter()
        self.dataset, self.settings, self.test_split = dataset, settings, test_split
        self.k_values, self.seeds, self.treatments = list(k_values), list(seeds), list(treatments)
        self.log = log or (lambda msg: None)
        self.done: dict[str, BenchmarkCell] = {}
        self.grid: list[CellUnit] = []
        self.pending: dict[tuple[int, int], int] = {}
        self.failures: list[str] = []
        self.result: BenchmarkResult | None = None

    @property
    def arm(self) -> ArmDir:
        return self.run.arm_dir("token")  # the run folder: report/ is written there

    @property
    def needs(self) -> set[tuple[str, int | None, int | None]]:
        """(source, k, seed) of every arm folder a cell reads; k and seed are None for whole-run arms."""
        return {(s, k if s in PER_DRAW else None, seed if s in PER_DRAW else None)
                for t in self.treatments for k in self.k_values for seed in self.seeds if _has_cell(t, k)
                for s in t.sources}

    def preflight(self) -> None:
        """The grid's values, its arms' shards, then every synthetic set and the test split read (and
        checked) by the driver before the first cell trains."""
        if not self.k_values or min(self.k_values) < 0:
            raise AugmentError(f"--k needs values >= 0, got {self.k_values}")
        if not self.seeds:
            raise AugmentError("--seeds needs at least one seed")
        dataset, out, run = self.dataset, self.run.path, self.run
        if max(self.k_values) > 0:
            dataset.kshot(max(self.k_values), self.seeds[0])  # the largest k must fit the smallest class
        needs = self.needs
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
        size = self.settings.input_size
        self.test = Payload(load_split(dataset, self.test_split, size))
        confs = {n: sorted({float(t.min_confidence or 0.0) for t in self.treatments if n[0] in t.sources})
                 for n in needs}
        self.syn_sets = {(n, c): Payload(_read_arm(where[n], c, dataset, size, self.log))
                         for n in sorted(needs, key=str) for c in confs[n]}
        for t in self.treatments:  # a set without soft labels fails here, once, not in every distilled cell
            if t.distill:
                for n in needs:
                    if n[0] in t.sources:
                        self.syn_sets[n, float(t.min_confidence or 0.0)].get()[0].soft_targets(
                            len(dataset.class_names), 1.0)
        self.fps = {n: _fingerprint(where[n]) for n in needs}

    def _cell(self, treatment: Treatment, k: int, seed: int,
              reals: dict[tuple[int, int], Payload[Images]]) -> CellUnit:
        ns = [(s, k if s in PER_DRAW else None, seed if s in PER_DRAW else None) for s in treatment.sources]
        fp = "+".join(self.fps[n] for n in ns) or None
        conf = float(treatment.min_confidence or 0.0)
        return CellUnit(_cell_key(treatment, k, seed, self.settings, fp, self.dataset.name), k, treatment, seed,
                        reals[k, seed], self.test, [self.syn_sets[n, conf] for n in ns])

    def plan(self, force: bool) -> stage.Plan[CellUnit]:
        cache_path = self.run.benchmark_cells
        # a killed run's half-written reports (the cells cache is appended to, and skips a cut line)
        remove_temp_files(cache_path.parent, [p.name for p in self.run.benchmark_files().values()])
        cache = {} if force else _read_cache(cache_path)
        size = self.settings.input_size
        reals = {(k, seed): Payload.lazy(partial(_kshot_reals, self.dataset, k, seed, size))
                 for k in self.k_values for seed in self.seeds}
        self.grid = [self._cell(t, k, seed, reals) for k in self.k_values for t in self.treatments
                     for seed in self.seeds if _has_cell(t, k)]
        self.done = {cell.key: cache[cell.key] for cell in self.grid if cell.key in cache}
        todo = [cell for cell in self.grid if cell.key not in self.done]
        # a (k, seed) draw of reals is released once its last cell is done
        for cell in todo:
            self.pending[cell.k, cell.seed] = self.pending.get((cell.k, cell.seed), 0) + 1
        return stage.Plan(todo, skipped=len(self.done), total=len(self.grid))

    def worker_factory(self) -> WorkerFactory:
        # train.checkpoint's bytes, read by the driver (when a cell is to train): actors need not see its disk
        checkpoint = Payload(read_checkpoint(self.settings)) if self.pending else None
        return ignoring_cache(partial(CellWorker, self.settings, self.dataset.class_names, checkpoint))

    def _finished(self, cell: CellUnit) -> None:
        self.pending[cell.k, cell.seed] -= 1
        if self.pending[cell.k, cell.seed] == 0:
            cell.reals.release()

    def on_result(self, cell: CellUnit, row: BenchmarkCell) -> str | None:
        self._finished(cell)
        self.done[row.key] = row
        _append_cache(self.run.benchmark_cells, row)
        self.log(f"k={row.k:<3d} {row.arm:<45s} seed={row.seed}: top-1 {100 * row.top1:5.1f}% ({row.seconds:.0f}s)")
        return None

    def on_failed(self, cell: CellUnit, error: str) -> None:
        self._finished(cell)
        self.failures.append(f"{cell.label}: {error}")

    def failure_text(self, exc: BaseException) -> str:
        return str(exc)

    def unit_label(self, cell: CellUnit) -> str:
        return cell.label

    def write_label(self, cell: CellUnit) -> str:
        return f"the cells cache {self.run.benchmark_cells.name} (cell {cell.label})"

    def progress_key(self, cell: CellUnit) -> str:
        return cell.key

    def finish(self) -> None:
        """The summary rows and the report files, when every cell of the grid is done."""
        if self.failures:
            return
        done, grid = self.done, self.grid
        summary = []
        for t in self.treatments:
            for k in self.k_values:
                values = [done[cell.key].top1 for cell in grid if cell.treatment == t and cell.k == k]
                note = ("no data (k=0, real only)" if not t.synthetic and k == 0 else
                        "no reals to edit (k=0)" if t.per_draw and k == 0 else None)
                summary.append(SummaryRow.of(t, k, values, note))
        result = BenchmarkResult(
            run=str(self.run.path),
            dataset=self.dataset.name,
            test_split=self.test_split,
            test_images=int(len(self.test.get()[1])),
            k_values=self.k_values,
            seeds=self.seeds,
            arms=self.treatments,
            metric="real test top-1 after the last epoch; mean ± sample std over seeds",
            settings=self._settings_run(),
            workers=self.cfg.workers,
            summary=summary,
            cells=[done[cell.key] for cell in grid],
            seconds=time.perf_counter() - self.start,
            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        )
        self.result = BenchmarkResult.from_json(result.to_json())  # NaN -> None: the object equals the file
        write_reports(self.run, self.result)

    def _settings_run(self) -> dict[str, Any]:
        """The trainer's settings as benchmark.json records them: the device the workers resolved
        (``cuda:0``, not the ``auto`` typed; several joined by commas), when some cell trained now."""
        settings = self.settings.to_dict()
        names = list(dict.fromkeys(d.device for d in self.devices))
        if names:
            settings["device"] = ",".join(names)
        return settings

    def summary(self, **common: Any) -> BenchmarkSummary:
        return BenchmarkSummary(**common, result=self.result)


def grid_values(k_values: Sequence[int], seeds: Sequence[int]) -> tuple[list[int], list[int]]:
    """``--k`` sorted without repeats, ``--seeds`` in order without repeats."""
    return sorted(set(int(k) for k in k_values)), list(dict.fromkeys(int(s) for s in seeds))


def resolve_treatments(treatments: Sequence[Treatment | str], synthetic_prob: float | None, synthetic_weight: float,
                       min_confidence: float, distill_temperature: float) -> list[Treatment]:
    """Parsed, their unset options taken from the benchmark's defaults, without repeats."""
    parsed = [t if isinstance(t, Treatment) else parse_treatment(t) for t in treatments]
    return list(dict.fromkeys(t.resolved(synthetic_prob, synthetic_weight, min_confidence, distill_temperature)
                              for t in parsed))


def run_benchmark(
    out: str | Path,
    dataset: Dataset,
    settings: TrainSettings,
    k_values: Sequence[int] = (0, 3, 9, 15),
    seeds: Sequence[int] = (0, 1, 2),
    treatments: Sequence[Treatment | str] = DEFAULT_TREATMENTS,
    synthetic_prob: float | None = 0.5,
    synthetic_weight: float = 1.0,
    min_confidence: float = 0.0,
    test_split: str = "test",
    distill_temperature: float = 1.0,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    cfg: Config | None = None,
) -> BenchmarkSummary:
    """Run the grid (see the module docstring) on the arms of run folder ``out`` through the stage
    skeleton (:func:`augment.stage.run_stage`: its lock, progress bar, failure policy); writes the
    report files into ``out/report/`` and returns the summary, whose ``result`` is benchmark.json's.

    ``cfg`` gives the pool (``workers``, ``address``, ``gpus_per_worker``, ``placement_timeout``,
    ``threads``: :func:`augment.stage.pool_spec`); None: inline, with this process's torch threads.
    Each cell carries its own seed and images, so the figures do not depend on the pool. Actors
    receive nothing large at construction (only settings and class names): an object-store
    constructor argument breaks actor restarts (ray-project/ray#53727)."""
    if cfg is None:
        cfg = Config(out=str(out), workers=0, device=settings.device, threads=torch.get_num_threads())
    cfg = dataclasses.replace(cfg, out=str(out))
    k_values, seeds = grid_values(k_values, seeds)
    chosen = resolve_treatments(treatments, synthetic_prob, synthetic_weight, min_confidence, distill_temperature)
    grid = BenchmarkStage(cfg, dataset, settings, k_values, seeds, chosen, test_split, log)
    return stage.run_stage(grid, force=not resume, show_progress=progress)
