"""What ``augment eval`` found, as types: the contract between evaluate.py, which writes
``OUT/report/eval.json``, and its readers (``augment show``'s eval figure, scripts).

:meth:`EvalResult.to_json` is exactly the file's content and :meth:`EvalResult.from_json` reads
it back, refusing (ValueError naming the missing field) a file of another layout, so a renamed
field fails loudly where it is read instead of quietly emptying a figure. This module imports
no torch: a report can read results without loading a model stack.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from augment.io.jsonsafe import json_safe, require_fields

__all__ = ["FID_MIN_IMAGES", "Accuracy", "Distance", "EvalArm", "EvalResult"]

#: FID/KID from fewer images than this in either set are too noisy to compare (``eval`` warns, the
#: report page flags them); the sets are still scored
FID_MIN_IMAGES = 50


def _list(data: Any, where: str) -> list[Any]:
    if not isinstance(data, list):
        raise ValueError(f"{where} is a {type(data).__name__}, not a list")
    return data


@dataclass
class EvalArm:
    """One evaluated arm: its folder and how many of its images were scored (after restricting
    the arms to the seeds they share)."""

    dir: str
    images: int


@dataclass
class Accuracy:
    """One classifier's accuracy on one image set.

    ``images`` is an arm name (``token``, ``baseline``; see :data:`augment.io.rundir.ARMS`) or
    ``real <split>`` for the real reference images (then ``dir`` is None). Top-k is over the
    classifier's whole label space; ``top5_k`` is the k actually used (fewer classes than 5).
    The per-class dicts hold only the classes that have images in the set.
    """

    images: str
    dir: str | None
    classifier: str
    n: int
    top1: float | None
    top5: float | None
    top5_k: int
    mean_class_top1: float | None
    mean_class_top5: float | None
    per_class_top1: dict[str, float | None]
    per_class_top5: dict[str, float | None]

    @property
    def real(self) -> bool:
        """Whether this row scores real images (the reference), not an arm."""
        return self.dir is None


@dataclass
class Distance:
    """FID and KID (mean, std over subsets) of one image set against the real split, on a
    classifier's penultimate features; None where undefined (fewer than two images)."""

    images: str
    n: int
    n_real: int
    fid: float | None
    kid: float | None
    kid_std: float | None

    @property
    def small_sample(self) -> bool:
        """Whether either set has fewer than :data:`FID_MIN_IMAGES` images (the scores are unreliable)."""
        return min(self.n, self.n_real) < FID_MIN_IMAGES


@dataclass
class EvalResult:
    """Everything ``augment eval`` reports (``OUT/report/eval.json``; eval.md renders it)."""

    run: str
    dataset: str
    split: str
    classifiers: list[str]
    feature_classifier: str | None
    arms: dict[str, EvalArm]
    accuracy: list[Accuracy]
    distances: list[Distance]
    notes: list[str]
    created: str

    def row(self, images: str, classifier: str) -> Accuracy | None:
        """The accuracy of ``classifier`` on image set ``images`` (an arm name), if it was scored."""
        for r in self.accuracy:
            if r.images == images and r.classifier == classifier:
                return r
        return None

    def to_json(self) -> dict[str, Any]:
        """The eval.json document (strict JSON: undefined metrics are null)."""
        return json_safe(asdict(self))

    @classmethod
    def from_json(cls, doc: Any) -> EvalResult:
        """Read an eval.json document; ValueError naming what is missing when it has another layout."""
        data = require_fields(cls, doc, "eval.json")
        arms = data["arms"]
        if not isinstance(arms, dict):
            raise ValueError(f"eval.json 'arms' is a {type(arms).__name__}, not an object")
        data["arms"] = {name: EvalArm(**require_fields(EvalArm, a, f"eval.json arm {name!r}")) for name, a in arms.items()}
        data["accuracy"] = [Accuracy(**require_fields(Accuracy, r, f"eval.json accuracy row {i}"))
                            for i, r in enumerate(_list(data["accuracy"], "eval.json 'accuracy'"))]
        data["distances"] = [Distance(**require_fields(Distance, d, f"eval.json distance row {i}"))
                             for i, d in enumerate(_list(data["distances"], "eval.json 'distances'"))]
        return cls(**data)

