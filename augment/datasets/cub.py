"""CUB-200-2011 from a local folder (the official tarball, unpacked; nothing is downloaded).

``data_root`` is the ``CUB_200_2011`` folder itself or its parent. Needed there: ``classes.txt``,
``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt`` (``1`` = train, ``0`` = test)
and ``images/``. Class index = position of the class id in ``classes.txt`` sorted by id (so the
usual 0..199), names cleaned: ``001.Black_footed_Albatross`` -> ``black footed albatross``.
Samples keep the order of ``images.txt``. Image files are opened only when loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from augment.datasets.base import Sample
from augment.datasets.folder import ImageFileDataset, resolve_root
from augment.datasets.names import check_distinct, cub_class_name
from augment.errors import AugmentError

CUB_DIR = "CUB_200_2011"
REQUIRED = ("classes.txt", "images.txt", "image_class_labels.txt", "train_test_split.txt")


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """Lines of ``<id> <value>`` (value may contain spaces); blank lines skipped."""
    out: list[tuple[str, str]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AugmentError(f"cannot read {path} ({type(e).__name__}); check the file") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise AugmentError(
                f"{path} line {n} is not '<id> <value>': {line.strip()[:60]!r}; fix or re-extract the file"
            )
        out.append((parts[0], parts[1].strip()))
    return out


def find_cub_dir(root: Path) -> Path:
    """``root`` if it holds the metadata files, else ``root/CUB_200_2011``; AugmentError naming a missing file."""
    for cand in (root, root / CUB_DIR):
        if all((cand / f).is_file() for f in REQUIRED):
            return cand
    base = root / CUB_DIR if (root / CUB_DIR).is_dir() else root
    missing = next(f for f in REQUIRED if not (base / f).is_file())
    raise AugmentError(
        f"CUB data root {base} lacks {missing}; point --data-root at the unpacked CUB_200_2011 folder "
        "(with classes.txt, images.txt, image_class_labels.txt, train_test_split.txt, images/)"
    )


class CubDataset(ImageFileDataset):
    name = "cub"
    description = "Caltech-UCSD Birds 200-2011 from a local CUB_200_2011 folder (200 classes, train/test)"
    needs_data_root = True
    #: what ``augment datasets show cub`` prints without --data-root
    layout = ("DATA_ROOT = the unpacked CUB_200_2011/ folder (or its parent), as in the official tarball:\n"
              "  classes.txt  images.txt  image_class_labels.txt  train_test_split.txt  images/<class>/*.jpg\n"
              "splits: train and test (train_test_split.txt); 200 classes")
    option_names: tuple[str, ...] = ()

    @staticmethod
    def clean(raw: str) -> str:
        return cub_class_name(raw)

    def __init__(self, data_root: str | os.PathLike) -> None:
        super().__init__()
        self.root = find_cub_dir(resolve_root(data_root, self.name))
        self.image_dir = self.root / "images"
        if not self.image_dir.is_dir():
            raise AugmentError(
                f"CUB data root {self.root} lacks the images/ folder; re-extract CUB_200_2011.tgz there"
            )

        classes = read_pairs(self.root / "classes.txt")
        try:
            classes.sort(key=lambda kv: int(kv[0]))
        except ValueError:
            raise AugmentError(
                f"{self.root / 'classes.txt'} has a non-numeric class id; fix or re-extract it"
            ) from None
        if not classes:
            raise AugmentError(f"{self.root / 'classes.txt'} lists no classes; re-extract CUB_200_2011")
        self.raw_names = [raw for _, raw in classes]
        self._names = [self.clean(raw) for raw in self.raw_names]
        check_distinct(self._names, self.raw_names, "classes", self.root / "classes.txt")
        class_index = {cid: i for i, (cid, _) in enumerate(classes)}

        labels = dict(read_pairs(self.root / "image_class_labels.txt"))
        is_train = dict(read_pairs(self.root / "train_test_split.txt"))
        self._samples: dict[str, list[Sample]] = {"train": [], "test": []}
        for image_id, rel in read_pairs(self.root / "images.txt"):
            for fname, table in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
                if image_id not in table:
                    raise AugmentError(
                        f"image id {image_id} ({rel}) has no line in {self.root / fname}; re-extract the file"
                    )
            cid = labels[image_id].split()[0]
            if cid not in class_index:
                raise AugmentError(
                    f"image id {image_id} has class id {cid}, which {self.root / 'classes.txt'} does not list; "
                    "re-extract the metadata files"
                )
            flag = is_train[image_id].split()[0]
            if flag not in ("0", "1"):
                raise AugmentError(
                    f"image id {image_id} has split flag {flag!r} in train_test_split.txt, not 0 or 1"
                )
            split = "train" if flag == "1" else "test"
            self._samples[split].append(Sample(str(self.image_dir / rel), class_index[cid]))

    def splits(self) -> list[str]:
        return ["train", "test"]
