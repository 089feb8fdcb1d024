"""What every stage resolves the same way from a config: the dataset, the class list, the selection.

Class names come from the dataset (its folder or the embedded digits); with no data root, from the
guidance classifier's label map (that is how ``--dataset cub`` trains tokens without the images),
which :func:`augment.models.labels.load_dataset` loads and hands to :func:`dataset_of`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from augment.config import Config
from augment.datasets import get_dataset
from augment.datasets.base import Dataset
from augment.errors import AugmentError


def dataset_of(cfg: Config, classifier_names: list[str] | None = None) -> Dataset:
    """The config's dataset; names-only from ``classifier_names`` (the guidance classifier's label
    map) when there is no data root. The classifier is loaded by the caller
    (:func:`augment.models.labels.load_dataset`): datasets sit above models in the layers."""
    try:
        return get_dataset(cfg.dataset, cfg.data_root, **cfg.dataset_options)
    except AugmentError:
        if cfg.data_root is None and classifier_names:
            return get_dataset(cfg.dataset, None, class_names=classifier_names)
        raise


def needs_classifier_names(cfg: Config) -> bool:
    """Whether a config whose dataset cannot be read may take its class names from its classifier
    (no data root, and a dataset that is not embedded)."""
    return cfg.data_root is None and cfg.dataset != "digits"


def _part(part: str, n: int, names: Sequence[str] | None, spec: str) -> range:
    """One comma-separated part of ``--classes`` as a range of indices, checked against ``n``
    before it is expanded (``0-99999999999`` must cost nothing)."""
    if names is not None and part in names:  # a class name (names with '-' or digits too)
        return range(names.index(part), names.index(part) + 1)
    m = re.fullmatch(r"(-?\d+)(?:-(-?\d+))?", part)
    if m is None:
        known = f"; names are those of `augment datasets show`, e.g. {names[0]!r}" if names else ""
        raise AugmentError(f"--classes {spec!r}: cannot read {part!r}; use indices like 3,8 or ranges like 0-9"
                           f"{known}")
    a = int(m.group(1))
    b = a if m.group(2) is None else int(m.group(2))
    if a > b:
        raise AugmentError(f"--classes {spec!r}: range {part!r} runs backwards; write it low-high, e.g. {b}-{a}")
    bad = a if not 0 <= a < n else b if not 0 <= b < n else None
    if bad is not None:
        raise AugmentError(f"--classes {spec!r}: class {bad} is out of range; this dataset has classes 0-{n - 1}")
    return range(a, b + 1)


def select_classes(spec: str | None, n: int, names: Sequence[str] | None = None) -> list[int]:
    """Parse ``--classes`` ("3,8", "0-9", "0-4,7", or class names when ``names`` is given) into
    sorted indices, each in [0, n); a class selected twice is refused (a typo, not a weight)."""
    if spec is None or str(spec).strip() in ("", "all"):
        return list(range(n))
    spec = str(spec)
    out: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        r = _part(part, n, names, spec)
        twice = out.intersection(r)
        if twice:
            c = min(twice)
            raise AugmentError(f"--classes {spec!r}: class {c} is selected twice; list each class once")
        out.update(r)
    if not out:
        raise AugmentError(f"--classes {spec!r} selects no class; use indices like 3,8 or ranges like 0-9")
    return sorted(out)
