"""``metrics.json`` of one training run as typed records: what :func:`~augment.downstream.train.train_classifier`
returns (``TrainResult.metrics``) and writes, and what the benchmark and ``augment train`` read.

:meth:`TrainMetrics.to_json` gives the file's object, keys in the order the file has always had
them, so the bytes of metrics.json stay what they were when the trainer built a dict;
:meth:`TrainMetrics.from_json` reads a file back (older files without ``init`` or ``checkpoint``
too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from augment.io.jsonsafe import json_safe

__all__ = ["EpochLog", "Scores", "TrainMetrics", "load_metrics"]


@dataclass
class Scores:
    """One evaluation on the real test split (:func:`~augment.downstream.metrics.classification_metrics`:
    top-1/top-5, per class, the confusion matrix) and the epoch it was made after; None where the
    split has no image (of that class)."""

    n: int
    top1: float | None
    top5: float | None
    top5_k: int
    mean_class_top1: float | None
    per_class_top1: dict[str, float | None]
    per_class_top5: dict[str, float | None]
    confusion_matrix: list[list[int]]
    epoch: int

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "top1": self.top1, "top5": self.top5, "top5_k": self.top5_k,
                "mean_class_top1": self.mean_class_top1, "per_class_top1": dict(self.per_class_top1),
                "per_class_top5": dict(self.per_class_top5), "confusion_matrix": self.confusion_matrix,
                "epoch": self.epoch}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scores:
        return cls(**data)


@dataclass
class EpochLog:
    """One epoch of training: its mean loss, the test top-1 (None when the epoch was not
    evaluated), the learning rate at its end and its wall-clock seconds."""

    epoch: int
    loss: float | None
    test_top1: float | None
    lr: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "loss": self.loss, "test_top1": self.test_top1, "lr": self.lr,
                "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EpochLog:
        return cls(**data)


@dataclass
class TrainMetrics:
    """``metrics.json``: the class names, the final and the best epoch's :class:`Scores` (the best
    picked on the test split, so optimistic), the per-epoch log, what was trained on (``data``:
    :meth:`~augment.downstream.mixing.MixedDataset.summary`), the test split's size, the settings
    (``config``: ``train`` plus the caller's extras), how the model was initialised (``init``),
    where the best checkpoint is and how to load it (``checkpoint``), and the seconds taken."""

    class_names: list[str]
    final: Scores
    best: Scores
    history: list[EpochLog]
    data: dict[str, Any]
    test_n: int
    config: dict[str, Any]
    init: str | None = None
    checkpoint: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The file's object (JSON-safe: NaN/inf as null), in the file's key order."""
        return json_safe({
            "class_names": list(self.class_names),
            "final": self.final.to_json(),
            "best": self.best.to_json(),
            "history": [h.to_json() for h in self.history],
            "data": self.data,
            "test": {"n": self.test_n},
            "config": self.config,
            "init": self.init,
            "checkpoint": self.checkpoint,
            "seconds": self.seconds,
        })

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainMetrics:
        return cls(class_names=list(data["class_names"]), final=Scores.from_json(data["final"]),
                   best=Scores.from_json(data["best"]), history=[EpochLog.from_json(h) for h in data["history"]],
                   data=data.get("data") or {}, test_n=int((data.get("test") or {}).get("n", 0)),
                   config=data.get("config") or {}, init=data.get("init"), checkpoint=data.get("checkpoint") or {},
                   seconds=float(data.get("seconds") or 0.0))


def load_metrics(path: str | Path) -> TrainMetrics:
    """A ``metrics.json`` read back."""
    return TrainMetrics.from_json(json.loads(Path(path).read_text()))
