"""What every stage resolves the same way from a config: the dataset, the class list, the selection.

Class names come from the dataset (its folder or the embedded digits); with no data root, from the
guidance classifier's label map (that is how ``--dataset cub`` trains tokens without the images).
"""

from __future__ import annotations

from augment.config import Config
from augment.datasets import get_dataset
from augment.datasets.base import Dataset
from augment.errors import AugmentError


def load_dataset(cfg: Config, classifier_names: list[str] | None = None) -> Dataset:
    """The config's dataset; names-only from the classifier when there is no data root."""
    try:
        return get_dataset(cfg.dataset, cfg.data_root, **cfg.dataset_options)
    except AugmentError:
        if cfg.data_root is None and classifier_names is None and cfg.dataset != "digits":
            from augment.models.classifier import load_classifier

            classifier_names = load_classifier(cfg.classifier).class_names
        if cfg.data_root is None and classifier_names:
            return get_dataset(cfg.dataset, None, class_names=classifier_names)
        raise


def select_classes(spec: str | None, n: int) -> list[int]:
    """Parse ``--classes`` ("3,8", "0-9", "0-4,7") into sorted indices, each in [0, n)."""
    if spec is None or str(spec).strip() in ("", "all"):
        return list(range(n))
    out: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if a > b:
                    raise ValueError
                out.update(range(a, b + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise AugmentError(f"--classes {spec!r}: cannot read {part!r}; use indices like 3,8 or ranges like 0-9") from None
    bad = sorted(c for c in out if c < 0 or c >= n)
    if bad:
        raise AugmentError(f"--classes {spec!r}: class {bad[0]} is out of range; this dataset has classes 0-{n - 1}")
    return sorted(out)
