"""The datasets registry: one name -> one :class:`~augment.datasets.base.Dataset` class.

    get_dataset("digits")                                   embedded, real train/test images
    get_dataset("imagenet")                                 1000 names from timm, no images
    get_dataset("imagenet", data_root="~/imagenet/val")     + split "val" from <wnid>/*.JPEG
    get_dataset("cub", data_root="~/data/CUB_200_2011")     200 birds, splits train/test
    get_dataset("inat", data_root="~/inat21", class_list="inat50.txt")
    get_dataset("folder", data_root="~/my_images")          root/<class>/*.jpg (or train/ + test/)
    get_dataset("cub", class_names=labels)                  names only (from a classifier's label map)

``class_names`` is used only when no ``data_root`` is given (``digits`` ignores both, it ships its
images). The names are cleaned the way that dataset cleans its own (``001.Black_footed_Albatross``
-> ``black footed albatross``; ImageNet WordNet ids -> names), and the result has no splits.
Options other than ``data_root``/``class_names`` are passed to the dataset class (``inat`` takes
``class_list``); ``None`` values are dropped, unknown ones refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from PIL import Image

from augment.datasets.base import Dataset, Sample
from augment.datasets.cub import CubDataset
from augment.datasets.digits import DigitsDataset
from augment.datasets.folder import FolderDataset, ImageFileDataset
from augment.datasets.imagenet import ImageNetDataset
from augment.datasets.inat import INatDataset
from augment.errors import AugmentError
from augment.io.slug import slugify

# digits.py predates the registry metadata; fill it in where the class does not define it.
for _attr, _value in (
    ("description", "scikit-learn's 8x8 digits, embedded (10 classes, 1347 train / 450 test, no files)"),
    ("needs_data_root", False),
    ("option_names", ()),
):
    if _attr not in vars(DigitsDataset):
        setattr(DigitsDataset, _attr, _value)

DATASETS: dict[str, type[Dataset]] = {
    "digits": DigitsDataset,
    "cub": CubDataset,
    "inat": INatDataset,
    "imagenet": ImageNetDataset,
    "folder": FolderDataset,
}


class NamesOnlyDataset(Dataset):
    """Class names without images (token training needs no images): no splits, no k-shot."""

    def __init__(self, name: str, class_names: Sequence[str], raw_names: Sequence[str] | None = None) -> None:
        self.name = name
        self._names = list(class_names)
        self.raw_names = list(raw_names) if raw_names is not None else list(class_names)

    @property
    def class_names(self) -> list[str]:
        return list(self._names)

    def samples(self, split: str) -> list[Sample]:
        raise AugmentError(
            f"dataset {self.name!r} has only class names, no real split {split!r}; "
            "pass --data-root pointing at the dataset folder"
        )

    def load_image(self, sample: Sample) -> Image.Image:
        raise AugmentError(
            f"dataset {self.name!r} has only class names, no images; pass --data-root pointing at the dataset folder"
        )


def list_datasets() -> list[tuple[str, str, bool]]:
    """(name, one-line description, needs a data root) for every registered dataset."""
    return [
        (n, getattr(c, "description", ""), bool(getattr(c, "needs_data_root", False)))
        for n, c in DATASETS.items()
    ]


def _unknown(name: str) -> AugmentError:
    return AugmentError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def get_dataset(
    name: str,
    data_root: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    **options: Any,
) -> Dataset:
    """Build dataset ``name`` (see the module docstring); every user mistake is an AugmentError."""
    cls = DATASETS.get(str(name).strip().lower()) if isinstance(name, str) else None
    if cls is None:
        raise _unknown(name)
    name = str(name).strip().lower()
    options = {k: v for k, v in options.items() if v is not None}
    allowed = tuple(getattr(cls, "option_names", ()))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise AugmentError(
            f"dataset {name!r} takes no option {unknown[0]!r} (its options: {', '.join(allowed) or 'none'}); remove it"
        )
    if isinstance(data_root, str) and not data_root.strip():
        data_root = None
    if cls is DigitsDataset:
        return DigitsDataset(data_root)
    if data_root is None and class_names is not None:
        raw = [str(n) for n in class_names]
        if not raw:
            raise AugmentError(
                f"the class names given for dataset {name!r} are empty; use a classifier that has labels"
            )
        clean = getattr(cls, "clean", None) or (lambda s: s)
        return NamesOnlyDataset(name, [clean(n) or n.strip() or n for n in raw], raw)
    if data_root is None and getattr(cls, "needs_data_root", True):
        raise AugmentError(
            f"dataset {name!r} needs its images: pass --data-root pointing at the dataset folder "
            "(or a classifier that has labels, to train tokens from class names only)"
        )
    return cls(data_root, **options) if data_root is not None else cls(**options)


__all__ = [
    "DATASETS",
    "Dataset",
    "ImageFileDataset",
    "NamesOnlyDataset",
    "Sample",
    "get_dataset",
    "list_datasets",
    "slugify",
]
