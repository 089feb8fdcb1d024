"""ImageNet-1k: class names from timm's bundled ImageNet info (no files needed), optional local images.

Class index = timm's order (sorted WordNet ids, the usual 0..999); the name is the first synonym
of timm's description, lower case (``"great white shark, white shark, ..."`` -> ``great white
shark``). Three pairs of classes share a first synonym (crane, cardigan, maillot); the token and the
index tell them apart. :attr:`ImageNetDataset.wnids` keeps the WordNet ids.

With ``data_root``: either a folder of ``<wnid>/*.JPEG`` class folders (split ``val``), or a folder
holding ``train/`` and/or ``val/`` laid out that way (splits named after them). Class folders that
are not ImageNet-1k ids are ignored; a subset of the 1000 classes is fine (k-shot then needs a
split that has every class). ``val/`` may also be the flat folder of ``ILSVRC2012_val_*.JPEG`` as
the official tarball unpacks, read with its label file next to it (in ``data_root``):
:data:`VAL_LABEL_FILES`, Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString`` whose first
word is the wnid) or Caffe's ``val.txt`` (``<file> <class index>``, timm's order). A flat folder
without one is refused with a hint.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

from augment.datasets.base import Sample
from augment.datasets.folder import ImageFileDataset, is_image_file, list_images, resolve_root
from augment.datasets.names import imagenet_class_name, is_wnid
from augment.errors import AugmentError


def _read_timm_info_files() -> tuple[list[str], list[str]] | None:
    """The files behind ``timm.data.ImageNetInfo``, read without importing timm (seconds of torch imports)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    info_dir = Path(next(iter(spec.submodule_search_locations))) / "data" / "_info"
    try:
        wnids = (info_dir / "imagenet_synsets.txt").read_text(encoding="utf-8").split()
        rows = csv.reader(
            (info_dir / "imagenet_synset_to_lemma.txt").read_text(encoding="utf-8").splitlines(),
            delimiter="\t",
        )
        lemmas = {r[0]: r[1] for r in rows if len(r) >= 2}
        descriptions = [lemmas[w] for w in wnids]
    except (OSError, KeyError):
        return None
    return (wnids, descriptions) if len(wnids) == 1000 else None


@lru_cache(maxsize=1)
def imagenet_info() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(wnids, prompt names) of ImageNet-1k, in timm's class order (``timm.data.ImageNetInfo``)."""
    found = _read_timm_info_files()
    if found is None:  # another timm layout: ask timm itself
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        found = (list(info.label_names()), list(info.label_descriptions()))
    wnids, descriptions = found
    return tuple(wnids), tuple(imagenet_class_name(d) for d in descriptions)


#: label files of a flat val/ folder, looked for in data_root, in this order
VAL_LABEL_FILES = ("LOC_val_solution.csv", "val.txt")


def read_val_labels(path: Path, wnids: list[str]) -> dict[str, int]:
    """Image file stem -> class index, from a flat val folder's label file (:data:`VAL_LABEL_FILES`)."""
    index = {w: i for i, w in enumerate(wnids)}
    out: dict[str, int] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip() or (path.suffix == ".csv" and n == 1 and line.startswith("ImageId")):
            continue
        parts = line.replace(",", " ", 1).split() if path.suffix == ".csv" else line.split()
        label = index.get(parts[1]) if len(parts) >= 2 else None
        if label is None and len(parts) >= 2 and parts[1].isdigit() and int(parts[1]) < len(wnids):
            label = int(parts[1])
        if label is None:
            raise AugmentError(f"{path} line {n} does not give an image and an ImageNet class: "
                               f"{line.strip()[:60]!r}; fix or re-download the label file")
        out[Path(parts[0]).stem] = label
    return out


def _wnid_dirs(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and is_wnid(e.name))


class ImageNetDataset(ImageFileDataset):
    name = "imagenet"
    description = "ImageNet-1k class names (bundled with timm); optional local <wnid>/*.JPEG val folder"
    needs_data_root = False
    option_names: tuple[str, ...] = ()

    @staticmethod
    def clean(raw: str) -> str:
        """A WordNet id -> its name; a description -> its first synonym."""
        wnids, names = imagenet_info()
        if is_wnid(raw) and raw in wnids:
            return names[wnids.index(raw)]
        return imagenet_class_name(raw)

    def __init__(self, data_root: str | os.PathLike | None = None) -> None:
        super().__init__()
        wnids, names = imagenet_info()
        self.wnids = list(wnids)
        self._names = list(names)
        self.root: Path | None = None
        self._samples: dict[str, list[Sample]] = {}
        if data_root is None:
            return
        self.root = resolve_root(data_root, self.name)
        if _wnid_dirs(self.root):
            split_roots = {"val": self.root}
        else:
            split_roots = {s: self.root / s for s in ("train", "val") if (self.root / s).is_dir()}
        index = {w: i for i, w in enumerate(self.wnids)}
        for split, sroot in split_roots.items():
            dirs = [d for d in _wnid_dirs(sroot) if d in index]
            if dirs:
                self._samples[split] = [
                    Sample(str(p), index[d]) for d in dirs for p in list_images(sroot / d, self.root)
                ]
        flat_val = self.root / "val"
        if "val" not in self._samples and flat_val.is_dir() and not _wnid_dirs(flat_val):
            label_file = next((self.root / f for f in VAL_LABEL_FILES if (self.root / f).is_file()), None)
            if label_file is not None:
                labels = read_val_labels(label_file, self.wnids)
                files = [p for p in list_images(flat_val, self.root) if p.stem in labels]
                if files:
                    self._samples["val"] = [Sample(str(p), labels[p.stem]) for p in files]
        if not self._samples:
            flat = self.root / "val" if (self.root / "val").is_dir() else self.root
            with os.scandir(flat) as it:
                has_flat_images = any(e.is_file() and is_image_file(e.name) for e in it)
            hint = (
                "put its label file (LOC_val_solution.csv or val.txt) in the data root, or sort the flat "
                "validation images into <wnid>/ class folders (e.g. with valprep.sh)"
                if has_flat_images
                else "lay it out as <wnid>/*.JPEG (e.g. n01440764/ILSVRC2012_val_00000293.JPEG)"
            )
            raise AugmentError(f"ImageNet data root {self.root} has no ImageNet-1k class folders; {hint}")

    def samples(self, split: str) -> list[Sample]:
        if split not in self._samples and self.root is None:
            raise AugmentError(
                f"dataset 'imagenet' has no real split {split!r} without images; "
                "pass --data-root pointing at a folder of <wnid>/*.JPEG class folders"
            )
        return super().samples(split)
