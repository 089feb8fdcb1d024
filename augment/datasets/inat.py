"""iNaturalist 2021 from a local folder (nothing is downloaded).

``data_root`` holds the COCO-style annotation files next to the image folders they point to:
``train.json`` and/or ``val.json`` (``train_mini.json`` too, if present), each with ``images``
(``id``, ``file_name`` relative to ``data_root``), ``annotations`` (``image_id``, ``category_id``)
and ``categories`` (``id``, ``name``). Splits: one per file found (``train``, ``train_mini``,
``val``); ``test`` is an alias of ``val`` (iNat 2021's test labels are not public).

Option ``class_list``: a text file (or a list of strings) selecting a subset, e.g. the paper's
iNat50 / iNat179: one category per line, given by id, by ``name`` (any case, ``_`` or spaces) or by
``image_dir_name``; blank lines and ``#`` comments are ignored. Class index = line order in the
file; without a list, all categories sorted by id. Class names are ``name`` cleaned (``_`` ->
space, lower case). Annotation files are parsed lazily: class names come from the smallest file
present, a split's file only when its samples are asked for (``train.json`` is large).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from augment.datasets.base import Sample
from augment.datasets.folder import ImageFileDataset, resolve_root
from augment.datasets.names import check_distinct, clean_name
from augment.errors import AugmentError

SPLIT_FILES = {"train": "train.json", "train_mini": "train_mini.json", "val": "val.json"}
ALIASES = {"test": "val"}


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AugmentError(
            f"cannot read {path} ({str(e).splitlines()[0][:80]}); re-extract the annotation file"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
        raise AugmentError(
            f"{path} is not a COCO-style iNat annotation file (no 'categories' list); check the file"
        )
    return data


def read_class_list(class_list: str | os.PathLike | Sequence[str]) -> tuple[list[str], str]:
    """Entries of a class-list file (or a list of strings), and where they came from (for messages)."""
    if isinstance(class_list, str | os.PathLike):
        path = Path(os.path.expanduser(str(class_list)))
        if not path.is_file():
            raise AugmentError(f"class list file {path} does not exist; pass an existing file to class_list")
        lines = path.read_text(encoding="utf-8").splitlines()
        where = str(path)
    else:
        lines = [str(x) for x in class_list]
        where = "the class list"
    entries = [ln.split("#", 1)[0].strip() for ln in lines]
    entries = [e for e in entries if e]
    if not entries:
        raise AugmentError(f"{where} selects no classes; put one category name or id per line")
    return entries, where


class INatDataset(ImageFileDataset):
    name = "inat"
    description = "iNaturalist 2021 from a local folder with train.json/val.json; class_list= picks a subset"
    needs_data_root = True
    #: what ``augment datasets show inat`` prints without --data-root
    layout = ("DATA_ROOT = a folder holding the iNaturalist 2021 annotation files and the image folders they name:\n"
              "  train.json and/or val.json (train_mini.json too, if present)  train/...  val/...\n"
              "splits: one per file found (test = val); --class-list FILE keeps a subset (ids or names, one a line)")
    option_names: tuple[str, ...] = ("class_list",)

    @staticmethod
    def clean(raw: str) -> str:
        return clean_name(raw)

    def __init__(
        self, data_root: str | os.PathLike, class_list: str | os.PathLike | Sequence[str] | None = None
    ) -> None:
        super().__init__()
        self.root = resolve_root(data_root, self.name)
        self._files = {s: self.root / f for s, f in SPLIT_FILES.items() if (self.root / f).is_file()}
        if not self._files:
            raise AugmentError(
                f"iNat data root {self.root} lacks train.json and val.json; point --data-root at the folder "
                "holding the iNat 2021 annotation files and image folders"
            )
        self._cache: dict[str, dict[str, Any]] = {}
        first = min(self._files.values(), key=lambda p: p.stat().st_size)
        categories = self._read(next(s for s, p in self._files.items() if p == first))["categories"]
        cats = sorted(categories, key=lambda c: int(c["id"]))
        if class_list is None:
            chosen = cats
        else:
            chosen = self._select(cats, class_list)
        self.category_ids = [int(c["id"]) for c in chosen]
        self.raw_names = [str(c.get("name", c["id"])) for c in chosen]
        self._names = [
            self.clean(n) or str(i) for n, i in zip(self.raw_names, self.category_ids, strict=True)
        ]
        check_distinct(self._names, self.raw_names, "categories", first)
        self._index = {cid: i for i, cid in enumerate(self.category_ids)}
        self._samples: dict[str, list[Sample]] = {}

    def _read(self, split: str) -> dict[str, Any]:
        if split not in self._cache:
            self._cache[split] = read_json(self._files[split])
        return self._cache[split]

    @staticmethod
    def _select(cats: list[dict[str, Any]], class_list: Any) -> list[dict[str, Any]]:
        entries, where = read_class_list(class_list)
        lookup: dict[str, dict[str, Any]] = {}
        for c in cats:
            for key in (str(c["id"]), clean_name(c.get("name", "")), clean_name(c.get("image_dir_name", ""))):
                if key:
                    lookup.setdefault(key, c)
        chosen: list[dict[str, Any]] = []
        seen: set[int] = set()
        unknown = []
        for e in entries:
            c = lookup.get(e.strip()) or lookup.get(clean_name(e))
            if c is None:
                unknown.append(e)
            elif int(c["id"]) in seen:
                raise AugmentError(f"{where} lists category {e!r} twice; remove the duplicate line")
            else:
                seen.add(int(c["id"]))
                chosen.append(c)
        if unknown:
            raise AugmentError(
                f"{where} names {len(unknown)} categor{'y' if len(unknown) == 1 else 'ies'} the annotation files "
                f"do not have, e.g. {unknown[0]!r}; use category ids or names from train.json/val.json"
            )
        return chosen

    @property
    def class_names(self) -> list[str]:
        return list(self._names)

    def splits(self) -> list[str]:
        return list(self._files)

    def samples(self, split: str) -> list[Sample]:
        if split not in self._files:
            if ALIASES.get(split) not in self._files:
                raise self.no_split(split)
            split = ALIASES[split]
        if split not in self._samples:
            data = self._read(split)
            files = {im["id"]: im["file_name"] for im in data.get("images", [])}
            out: list[Sample] = []
            for ann in data.get("annotations", []):
                label = self._index.get(int(ann["category_id"]))
                path = files.get(ann["image_id"])
                if label is not None and path is not None:
                    out.append(Sample(str(self.root / path), label))
            self._samples[split] = out
            self._cache.pop(split, None)  # the big JSON is not needed any more
        return list(self._samples[split])
