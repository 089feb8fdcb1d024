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
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from augment.datasets.base import Dataset
from augment.downstream.metrics import json_safe
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
from augment.io.atomic import atomic_write_json, atomic_write_text
from augment.io.shards import shard_urls

__all__ = ["DEFAULT_ARMS", "Arm", "CellWorker", "parse_arm", "render_markdown", "run_benchmark"]

#: real only; each synthetic arm as is; both filtered by the guide's confidence (the same filter on
#: the baseline separates "the token helps" from "the filter helps"); and loss weighting
DEFAULT_ARMS = ("real", "baseline", "token", "baseline:conf=0.9", "token:conf=0.9", "token:weight=0.5")
SOURCES = ("real", "baseline", "token")
_KEYS = {"prob": "prob", "p": "prob", "weight": "weight", "w": "weight", "conf": "min_confidence",
         "min_confidence": "min_confidence"}


@dataclass(frozen=True)
class Arm:
    """What is added to the k reals: nothing (``real``) or one synthetic source, and how it is mixed.
    ``None`` fields take the benchmark's defaults."""

    source: str
    prob: float | None = None
    weight: float | None = None
    min_confidence: float | None = None

    @property
    def synthetic(self) -> bool:
        return self.source != "real"

    def resolved(self, prob: float | None, weight: float, min_confidence: float) -> Arm:
        if not self.synthetic:
            return self
        return Arm(self.source, self.prob if self.prob is not None else prob,
                   self.weight if self.weight is not None else weight,
                   self.min_confidence if self.min_confidence is not None else min_confidence)

    @property
    def label(self) -> str:
        if not self.synthetic:
            return "real only"
        extras = []
        if self.min_confidence:
            extras.append(f"conf ≥ {self.min_confidence:g}")
        if self.prob is not None:
            extras.append(f"p={self.prob:g}")
        else:
            extras.append("p=natural")
        if self.weight is not None and self.weight != 1.0:
            extras.append(f"w={self.weight:g}")
        return f"real + {self.source} synthetic" + (f" ({', '.join(extras)})" if extras else "")


def parse_arm(spec: str) -> Arm:
    """``SOURCE[:key=value,...]`` with SOURCE real / baseline / token and keys prob (p), weight (w),
    conf (min_confidence); see the module docstring."""
    source, _, rest = spec.strip().partition(":")
    source = source.strip().lower()
    if source not in SOURCES:
        raise AugmentError(f"--arm {spec!r}: source {source!r} is not one of {', '.join(SOURCES)}")
    values: dict[str, float | None] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        field = _KEYS.get(key.strip().lower())
        if not eq or field is None:
            raise AugmentError(f"--arm {spec!r}: cannot read {part!r}; use prob=0.5, weight=0.5 or conf=0.9")
        try:
            values[field] = float(value)
        except ValueError:
            raise AugmentError(f"--arm {spec!r}: {key}={value!r} is not a number") from None
    if source == "real" and values:
        raise AugmentError(f"--arm {spec!r}: the real-only arm takes no mixing options")
    arm = Arm(source, **values)
    if arm.prob is not None and not 0.0 <= arm.prob <= 1.0:
        raise AugmentError(f"--arm {spec!r}: prob must be in [0, 1]")
    if arm.min_confidence is not None and not 0.0 <= arm.min_confidence <= 1.0:
        raise AugmentError(f"--arm {spec!r}: conf must be in [0, 1]")
    if arm.weight is not None and arm.weight < 0:
        raise AugmentError(f"--arm {spec!r}: weight must be >= 0")
    return arm


def arm_sources(out: str | Path) -> dict[str, Path]:
    out = Path(out)
    return {"token": out, "baseline": out / "baseline"}


def _fingerprint(folder: Path) -> str:
    """Changes when the arm's shards change (names, sizes and mtimes of its manifests)."""
    h = hashlib.sha256()
    for p in sorted((folder / "manifests").glob("*.parquet")):
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


def _read_cache(path: Path) -> dict[str, dict[str, Any]]:
    cache: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                cache[row["key"]] = row
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut by a crash: that cell is simply redone
    return cache


def _append_cache(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(json_safe(row), sort_keys=True) + "\n")
        f.flush()


def _stats(values: list[float]) -> dict[str, Any]:
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "values": []}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"n": n, "mean": mean, "std": std, "values": values}


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

    def run(self, cell: tuple[str, int, Arm, int]) -> dict[str, Any]:
        """Train one cell ``(key, k, arm, seed)`` and return its cache row."""
        key, k, arm, seed = cell
        dataset, settings = self.dataset, self.settings
        real_images, real_labels = load_real(dataset, dataset.kshot(k, seed) if k > 0 else [], settings.input_size)
        if len(real_labels) == 0:
            real_images = torch.zeros(0, *self.test_images.shape[1:], dtype=torch.uint8)
        sets = [self.synthetic(arm)] if arm.synthetic else []
        mixed = MixedDataset(real_images, real_labels, sets, dataset.class_names,
                             arm.prob if arm.synthetic else None, arm.weight if arm.weight is not None else 1.0)
        # only the last epoch counts here, so skip the per-epoch test passes (~15% of a cell)
        s = TrainSettings(**{**asdict(settings), "seed": seed, "eval_every": 0})
        result = train_classifier(mixed, self.test_images, self.test_labels, s, out=None, progress=False,
                                  desc=f"k={k} {arm.source} s{seed}")
        return {"key": key, "arm": arm.label, "arm_spec": asdict(arm), "k": k, "seed": seed,
                "top1": result.final_top1, "top5": result.metrics["final"]["top5"],
                "mean_class_top1": result.metrics["final"]["mean_class_top1"],
                "real": mixed.n_real, "synthetic": mixed.n_synthetic, "seconds": result.seconds}


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
) -> dict[str, Any]:
    """Run the grid (see the module docstring) on the arms of run folder ``out``; writes the report
    files into ``out/report/`` and returns the JSON-able result.

    ``workers`` > 0 trains cells on that many Ray actors (one per GPU on GPU machines); each cell
    carries its own seed and cells train single-threaded, so the figures do not depend on it.
    ``dataset_factory`` (a small picklable callable returning ``dataset``) lets each actor rebuild
    the dataset: a dataset object over 100 KB would travel through Ray's object store, from which
    an actor restart cannot always get it back (ray-project/ray#53727)."""
    start = time.perf_counter()
    out = Path(out)
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
            f"{', '.join(str(sources[m] / 'shards') for m in what)}); run `augment build --baseline --out {out}` "
            "first (tokens, then both arms), or drop those arms with --arm"
        )
    # the driver reads (and checks) every synthetic set before the first cell trains
    driver = CellWorker(out, dataset, settings, test_split, log)
    for arm in arms:
        if arm.synthetic:
            driver.synthetic(arm)
    fps = {s: _fingerprint(p) for s, p in sources.items() if any(a.source == s for a in arms)}
    cache_path = out / "report" / "benchmark-cells.jsonl"
    cache = _read_cache(cache_path) if resume else {}
    grid = [(_cell_key(arm, k, seed, settings, fps.get(arm.source), dataset.name), k, arm, seed)
            for k in k_values for arm in arms for seed in seeds if arm.synthetic or k > 0]
    rows = {key: cache[key] for key, *_ in grid if key in cache}
    todo = [cell for cell in grid if cell[0] not in rows]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(grid), initial=len(rows), desc="benchmark", unit="cell", disable=not progress)
    failures: list[str] = []

    def on_result(cell: tuple[str, int, Arm, int], row: dict[str, Any]) -> None:
        rows[row["key"]] = row
        _append_cache(cache_path, row)
        bar.update(1)
        log(f"k={row['k']:<3d} {row['arm']:<45s} seed={row['seed']}: top-1 {100 * row['top1']:5.1f}% "
            f"({row['seconds']:.0f}s)")

    def on_error(cell: tuple[str, int, Arm, int], exc: BaseException) -> None:
        failures.append(f"k={cell[1]} {cell[2].label} seed={cell[3]}: {exc}")

    if todo:
        from augment.distributed import PoolSpec, run_units

        factory = (lambda: driver) if workers <= 0 else \
            partial(CellWorker, out, dataset_factory or dataset, settings, test_split)
        run_units(factory, todo, PoolSpec(workers=workers, address=address, device=settings.device),
                  on_result, on_error)
    bar.close()
    if failures:
        raise AugmentError(f"{len(failures)} benchmark cell(s) failed, first: {failures[0]}; the "
                           f"{len(rows)} finished cells are cached, re-run to retry the rest")
    cells = [rows[key] for key, *_ in grid]

    summary = []
    for arm in arms:
        for k in k_values:
            vals = [c["top1"] for c in cells if c["arm"] == arm.label and c["k"] == k]
            st = _stats(vals)
            summary.append({"arm": arm.label, "arm_spec": asdict(arm), "k": k, **st,
                            "note": "no data (k=0, real only)" if not arm.synthetic and k == 0 else None})
    result = json_safe({
        "run": str(out),
        "dataset": dataset.name,
        "test_split": test_split,
        "test_images": int(len(driver.test_labels)),
        "k_values": k_values,
        "seeds": seeds,
        "arms": [{"label": a.label, **asdict(a)} for a in arms],
        "metric": "real test top-1 after the last epoch; mean ± sample std over seeds",
        "settings": settings.to_dict(),
        "workers": workers,
        "summary": summary,
        "cells": cells,
        "seconds": time.perf_counter() - start,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    })
    write_reports(out / "report", result)
    return result


def _fmt(cell: dict[str, Any]) -> str:
    if cell["mean"] is None:
        return "–"
    if cell["n"] > 1:
        return f"{100 * cell['mean']:.1f} ± {100 * cell['std']:.1f}"
    return f"{100 * cell['mean']:.1f}"


def table_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    ks = result["k_values"]
    header = ["arm"] + [f"k={k}" for k in ks]
    rows = []
    for arm in result["arms"]:
        cells = {c["k"]: c for c in result["summary"] if c["arm"] == arm["label"]}
        rows.append([arm["label"]] + [_fmt(cells[k]) for k in ks])
    return header, rows


def render_markdown(result: dict[str, Any]) -> str:
    header, rows = table_rows(result)
    seeds = result["seeds"]
    lines = [f"# Few-shot benchmark: {result['run']}", "",
             f"Real {result['test_split']} top-1 (%) of a `{result['settings']['arch']}` trained "
             f"{result['settings']['epochs']} epochs on k real images per class plus synthetic images; "
             f"mean ± std over {len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))}), "
             "accuracy after the last epoch.", "",
             "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "k=0 real only has no training data (–)."]
    if any(a.get("min_confidence") for a in result["arms"]):
        lines.append("conf ≥ x keeps the synthetic images whose guide_confidence (the guidance classifier's "
                     "probability of the intended class, from the manifests) is at least x. That classifier "
                     "was trained on its own real data (for the embedded default: the whole digits train "
                     "split), so the filtered arms use knowledge from more than k real images per class.")
    return "\n".join(lines) + "\n"


def render_text(result: dict[str, Any]) -> str:
    header, rows = table_rows(result)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))  # noqa: E731
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def _csv(result: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["arm", "k", "n_seeds", "mean_top1", "std_top1", "values"])
    for c in result["summary"]:
        w.writerow([c["arm"], c["k"], c["n"], "" if c["mean"] is None else f"{c['mean']:.4f}",
                    "" if c["std"] is None else f"{c['std']:.4f}", " ".join(f"{v:.4f}" for v in c["values"])])
    return buf.getvalue()


def plot(result: dict[str, Any], path: Path) -> Path:
    """Accuracy vs k, one line per arm with ±std error bars (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for arm in result["arms"]:
        pts = [c for c in result["summary"] if c["arm"] == arm["label"] and c["mean"] is not None]
        if pts:
            ax.errorbar([c["k"] for c in pts], [100 * c["mean"] for c in pts], yerr=[100 * (c["std"] or 0) for c in pts],
                        marker="o", capsize=3, label=arm["label"])
    ax.set_xlabel("real images per class (k)")
    ax.set_ylabel(f"real {result['test_split']} top-1 (%)")
    ax.set_xticks(result["k_values"])
    ax.set_title(f"{result['dataset']}: few-shot classifier with synthetic data")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from augment.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def write_reports(report: Path, result: dict[str, Any]) -> dict[str, Path]:
    paths = {"json": report / "benchmark.json", "csv": report / "benchmark.csv", "md": report / "benchmark.md",
             "png": report / "benchmark.png"}
    atomic_write_json(paths["json"], result)
    atomic_write_text(paths["csv"], _csv(result))
    atomic_write_text(paths["md"], render_markdown(result))
    plot(result, paths["png"])
    return paths
