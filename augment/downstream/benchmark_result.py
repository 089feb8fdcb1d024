"""The few-shot grid's data, as types: treatments (``--arm``: what a cell adds to its reals),
cells, per-treatment summaries and the whole result.

These are the contract between the pieces of ``augment benchmark``: a :class:`BenchmarkCell` is
what a worker returns, what ``OUT/report/benchmark-cells.jsonl`` caches (one ``to_json()`` per
line; :meth:`BenchmarkCell.from_json` reads the lines of caches written before these types
existed: same keys) and what the grid aggregates into :class:`SummaryRow`; the
:class:`BenchmarkResult` is ``benchmark.json`` and feeds every renderer
(:mod:`augment.downstream.benchmark_report`). No torch here: reports read results without it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from augment.errors import AugmentError
from augment.io.jsonsafe import json_safe, require_fields

__all__ = ["PER_DRAW", "SOURCES", "Treatment", "BenchmarkCell", "BenchmarkResult", "SummaryRow", "parse_treatment"]

#: what a treatment adds to the k reals: nothing, or the images of run-folder arms (augment.io.rundir.ARMS),
#: "+" joining several; "caso" is the CASO edits of exactly the cell's k-shot draw (no arm at k=0)
SOURCES = ("real", "baseline", "token", "caso", "token+caso")
#: sources whose images depend on the cell's (k, seed) draw of reals
PER_DRAW = ("caso",)
_KEYS = {"prob": "prob", "p": "prob", "weight": "weight", "w": "weight", "conf": "min_confidence",
         "min_confidence": "min_confidence", "temperature": "temperature", "t": "temperature"}


@dataclass(frozen=True)
class Treatment:
    """A benchmark treatment (``--arm``): what is added to the k reals, nothing (``real``) or one
    synthetic source (images of run-folder arms), and how it is mixed. ``None`` fields take the
    benchmark's defaults. JSON keys keep the name ``arm`` (``arm``, ``arm_spec``, ``arms``)."""

    source: str
    prob: float | None = None
    weight: float | None = None
    min_confidence: float | None = None
    #: distillation: the synthetic images learn the guide's soft labels at temperature ``temperature``
    distill: bool = False
    temperature: float | None = None

    @property
    def synthetic(self) -> bool:
        return self.source != "real"

    @property
    def sources(self) -> tuple[str, ...]:
        """The run-folder arms whose images this treatment adds (none for ``real``)."""
        return tuple(self.source.split("+")) if self.synthetic else ()

    @property
    def per_draw(self) -> bool:
        """Whether its images are edits of the cell's own reals (then there is no cell at k=0)."""
        return any(s in PER_DRAW for s in self.sources)

    def resolved(self, prob: float | None, weight: float, min_confidence: float, temperature: float = 1.0) -> Treatment:
        if not self.synthetic:
            return self
        return Treatment(self.source, self.prob if self.prob is not None else prob,
                   self.weight if self.weight is not None else weight,
                   self.min_confidence if self.min_confidence is not None else min_confidence,
                   self.distill, (self.temperature if self.temperature is not None else temperature) if self.distill
                   else None)

    def to_json(self) -> dict[str, Any]:
        """The treatment's fields, the distillation ones only when set: cache keys (which hash this) and
        cache lines of treatments without distillation stay what they were before it existed."""
        d = asdict(self)
        if not self.distill:
            d.pop("distill")
            d.pop("temperature")
        return d

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
        if self.distill:
            extras.append("distilled" + (f" T={self.temperature:g}" if self.temperature is not None else ""))
        return f"real + {self.source} synthetic" + (f" ({', '.join(extras)})" if extras else "")

    @classmethod
    def from_json(cls, data: Any, where: str = "arm") -> Treatment:
        """An ``arm_spec`` object (``asdict(arm)``; a ``label`` key, as benchmark.json's arms carry, is ignored;
        the distillation fields default when absent, as in files written before they existed)."""
        if isinstance(data, dict):
            data = {"distill": False, "temperature": None, **data}
        return cls(**require_fields(cls, data, where))


def parse_treatment(spec: str) -> Treatment:
    """``SOURCE[:key=value,...]`` with SOURCE real / baseline / token and keys prob (p), weight (w),
    conf (min_confidence), and ``distill`` (or ``distill=T``: soft labels at temperature T); see
    :mod:`augment.downstream.benchmark`."""
    source, _, rest = spec.strip().partition(":")
    source = source.strip().lower()
    if source not in SOURCES:
        raise AugmentError(f"--arm {spec!r}: source {source!r} is not one of {', '.join(SOURCES)}")
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if key.strip().lower() == "distill":
            values["distill"] = True
            if not eq:
                continue
            key = "temperature"
        field = _KEYS.get(key.strip().lower())
        if not eq or field is None:
            raise AugmentError(f"--arm {spec!r}: cannot read {part!r}; use prob=0.5, weight=0.5, conf=0.9, distill "
                               "or distill=2")
        try:
            values[field] = float(value)
        except ValueError:
            raise AugmentError(f"--arm {spec!r}: {key}={value!r} is not a number") from None
    if source == "real" and values:
        raise AugmentError(f"--arm {spec!r}: the real-only arm takes no mixing options")
    treatment = Treatment(source, **values)
    if treatment.prob is not None and not 0.0 <= treatment.prob <= 1.0:
        raise AugmentError(f"--arm {spec!r}: prob must be in [0, 1]")
    if treatment.min_confidence is not None and not 0.0 <= treatment.min_confidence <= 1.0:
        raise AugmentError(f"--arm {spec!r}: conf must be in [0, 1]")
    if treatment.weight is not None and treatment.weight < 0:
        raise AugmentError(f"--arm {spec!r}: weight must be >= 0")
    if treatment.temperature is not None and not treatment.temperature > 0:
        raise AugmentError(f"--arm {spec!r}: the distillation temperature must be > 0")
    return treatment


@dataclass
class BenchmarkCell:
    """One trained cell of the grid: k reals per class + ``arm_spec``'s images, seed ``seed``.

    ``key`` hashes everything that shapes the figure (see ``benchmark._cell_key``); ``arm`` is the
    treatment's label when the cell was trained; ``top1``/``top5``/``mean_class_top1`` are on the real
    test split after the last epoch; ``real``/``synthetic`` count the training images.
    """

    key: str
    arm: str
    arm_spec: Treatment
    k: int
    seed: int
    top1: float | None
    top5: float | None
    mean_class_top1: float | None
    real: int
    synthetic: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """The cache line's object (``arm_spec`` as :meth:`Treatment.to_json`)."""
        return json_safe({**asdict(self), "arm_spec": self.arm_spec.to_json()})

    @classmethod
    def from_json(cls, data: Any) -> BenchmarkCell:
        """A cache line's object; ValueError (or TypeError) for a line of another layout."""
        fields_ = require_fields(cls, data, "benchmark cell")
        fields_["arm_spec"] = Treatment.from_json(fields_["arm_spec"], "benchmark cell 'arm_spec'")
        return cls(**fields_)


@dataclass
class SummaryRow:
    """One treatment at one k: the cells' top-1 over the seeds (mean, sample std, the values in seed
    order); ``note`` explains a cell without data (k=0, real only)."""

    arm: str
    arm_spec: Treatment
    k: int
    n: int
    mean: float | None
    std: float | None
    values: list[float]
    note: str | None = None

    @classmethod
    def of(cls, treatment: Treatment, k: int, values: list[float], note: str | None = None) -> SummaryRow:
        """The summary of ``values`` (mean ± sample std; std 0 for one value, None for none)."""
        n = len(values)
        if n == 0:
            return cls(treatment.label, treatment, k, 0, None, None, [], note)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        return cls(treatment.label, treatment, k, n, mean, std, list(values), note)

    @classmethod
    def from_json(cls, data: Any) -> SummaryRow:
        fields_ = require_fields(cls, data, "benchmark summary row")
        fields_["arm_spec"] = Treatment.from_json(fields_["arm_spec"], "benchmark summary 'arm_spec'")
        return cls(**fields_)


@dataclass
class BenchmarkResult:
    """The whole grid (``OUT/report/benchmark.json``).

    ``settings`` is the trainer's record, ``TrainSettings.to_dict()`` (the seed in it is the one
    the settings were made with; each cell trains with its own); ``summary`` has one row per
    treatment and k, in ``arms`` x ``k_values`` order; ``cells`` are in grid order.
    """

    run: str
    dataset: str
    test_split: str
    test_images: int
    k_values: list[int]
    seeds: list[int]
    arms: list[Treatment]
    metric: str
    settings: dict[str, Any]
    workers: int
    summary: list[SummaryRow]
    cells: list[BenchmarkCell]
    seconds: float
    created: str

    def summary_of(self, treatment: Treatment) -> dict[int, SummaryRow]:
        """``treatment``'s summary rows by k."""
        return {s.k: s for s in self.summary if s.arm_spec == treatment}

    def to_json(self) -> dict[str, Any]:
        """The benchmark.json document (each treatment carries its ``label`` beside its fields)."""
        doc = asdict(self)
        doc["arms"] = [{"label": a.label, **a.to_json()} for a in self.arms]
        doc["summary"] = [{**asdict(s), "arm_spec": s.arm_spec.to_json()} for s in self.summary]
        doc["cells"] = [c.to_json() for c in self.cells]
        return json_safe(doc)

    @classmethod
    def from_json(cls, doc: Any) -> BenchmarkResult:
        """Read a benchmark.json document; ValueError naming what is missing for another layout."""
        data = require_fields(cls, doc, "benchmark.json")
        data["arms"] = [Treatment.from_json(a, f"benchmark.json arm {i}") for i, a in enumerate(data["arms"])]
        data["summary"] = [SummaryRow.from_json(s) for s in data["summary"]]
        data["cells"] = [BenchmarkCell.from_json(c) for c in data["cells"]]
        return cls(**data)

