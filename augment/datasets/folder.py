"""Images on disk: the shared file-backed base, and the generic ``ImageFolder`` layout.

Layouts of ``folder`` (detected, in this order):

* ``root/train/<class>/...`` (+ ``root/val/<class>``, ``root/test/<class>``): when every
  sub-folder of ``root`` is one of ``train``, ``val``, ``valid``, ``validation``, ``test`` and
  ``train`` is among them; the splits are named after those folders.
* ``root/<class>/...``: one split, ``train``.

Class folders are sorted by name (the order torchvision's ``ImageFolder`` uses, so label indices
agree with classifiers trained on the same folder); the union over splits gives the classes, so
indices are the same in every split. Class names are the folder names cleaned for prompts
(``_`` -> space, lower case: ``Red_Fox`` -> ``red fox``); :attr:`FolderDataset.folder_names`
keeps the raw names, and two folders that clean to the same name are refused. Files are found recursively below each class folder, by extension
(``.jpg .jpeg .png .webp``, any case); other files and hidden files (``.DS_Store``, ``._x.jpg``)
are ignored; class folders with no image at all are left out (listed in ``empty_dirs``).

Any size and mode is fine: :meth:`ImageFileDataset.load_image` opens a file with
:func:`augment.io.images.open_image` (EXIF rotation, grey/CMYK/palette/16-bit -> RGB, transparency
on white); consumers resize with :func:`augment.io.images.fit`.

Corrupt images: listing never opens files, so it cannot fail on them. :meth:`load_image` raises
:class:`~augment.errors.AugmentError` naming the file (and records it in ``skipped``);
:meth:`load_images` loads many samples, skips unreadable ones with one warning and records them in
``skipped``. The same holds for every file-backed dataset (cub, inat, imagenet).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from augment.datasets.base import Dataset, Sample
from augment.datasets.names import check_distinct, clean_name
from augment.errors import AugmentError
from augment.io.images import open_image

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
SPLIT_DIRS = ("train", "val", "valid", "validation", "test")
_JUNK_DIRS = {"__MACOSX", ".ipynb_checkpoints", ".git", ".svn", ".cache", ".Trash", "@eaDir"}


def resolve_root(data_root: str | os.PathLike, dataset: str) -> Path:
    """``data_root`` as an existing folder, or an AugmentError saying so."""
    root = Path(os.path.expanduser(str(data_root))).absolute()  # sample paths stay valid in other cwds (Ray)
    if not root.exists():
        raise AugmentError(f"data root {root} for dataset {dataset!r} does not exist; check --data-root")
    if not root.is_dir():
        raise AugmentError(
            f"data root {root} for dataset {dataset!r} is a file, not a folder; check --data-root"
        )
    return root


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: Path, root: Path | None = None) -> list[Path]:
    """Image files below ``folder`` (recursive, symlinks followed), in a fixed sorted order.

    With ``root`` (the data root), a file or folder whose link leads outside it is refused, naming
    the link: ``--data-root`` is the whole of what a run reads, so a stray or hostile link cannot
    pull other files of the machine into a training set."""
    found: list[Path] = []
    seen: set[str] = set()  # real paths walked, so a symlink loop cannot recurse forever
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if d not in _JUNK_DIRS)
        base = Path(dirpath)
        files = [base / f for f in sorted(filenames) if is_image_file(f)]
        if root is not None:
            for path in [base] + files:
                check_inside(root, path)
        found.extend(files)
    return found


def check_inside(root: Path, path: str | os.PathLike) -> None:
    """Refuse ``path`` when it resolves outside ``root`` (a link, or ``..`` in a metadata file)."""
    inside, real = os.path.realpath(root), os.path.realpath(path)
    if os.path.commonpath([inside, real]) != inside:
        raise AugmentError(f"{path} leads to {real}, outside the data root {root}; "
                           "copy the file into the data root or remove the link or entry")


class ImageFileDataset(Dataset):
    """A dataset whose samples are image files: ``Sample.ref`` is the file's path (a str)."""

    def __init__(self) -> None:
        self.skipped: list[str] = []  # files that failed to load, in the order they failed
        self._names: list[str] = []  # subclasses fill these two in their __init__
        self._samples: dict[str, list[Sample]] = {}

    @property
    def class_names(self) -> list[str]:
        return list(self._names)

    def splits(self) -> list[str]:
        return list(self._samples)

    def samples(self, split: str) -> list[Sample]:
        if split not in self._samples:
            raise self.no_split(split)
        return list(self._samples[split])

    def no_split(self, split: str) -> AugmentError:
        """The error for a split this dataset's folder does not have."""
        return AugmentError(
            f"dataset {self.name!r} has no split {split!r} in {getattr(self, 'root', 'its data root')} "
            f"(available: {', '.join(self.splits()) or 'none'}); use one of those"
        )

    def load_image(self, sample: Sample) -> Image.Image:
        root = getattr(self, "root", None)
        if root is not None:  # every file dataset: a metadata line (cub's images.txt) may point anywhere
            check_inside(root, sample.ref)
        try:
            return open_image(sample.ref)
        except AugmentError:
            if str(sample.ref) not in self.skipped:
                self.skipped.append(str(sample.ref))
            raise

    def load_images(self, samples: Iterable[Sample]) -> list[tuple[Sample, Image.Image]]:
        """Load many samples, skipping unreadable files (one warning with the count; see ``skipped``)."""
        out: list[tuple[Sample, Image.Image]] = []
        bad: list[str] = []
        for s in samples:
            try:
                out.append((s, self.load_image(s)))
            except AugmentError:
                bad.append(str(s.ref))
        if bad:
            msg = f"{self.name}: skipped {len(bad)} unreadable image(s), e.g. {bad[0]}"
            warnings.warn(msg, stacklevel=2)
        return out


class FolderDataset(ImageFileDataset):
    name = "folder"
    description = "any ImageFolder tree: root/<class>/*.jpg (or root/train/<class> + root/test/<class>)"
    needs_data_root = True
    #: what ``augment datasets show folder`` prints without --data-root
    layout = ("DATA_ROOT = an ImageFolder tree, one folder per class (folder names are the class names):\n"
              "  DATA_ROOT/<class>/*.jpg|png|webp                       one split, train\n"
              "  DATA_ROOT/train/<class>/... + DATA_ROOT/test/<class>/...  splits named after the folders")
    option_names: tuple[str, ...] = ()

    @staticmethod
    def clean(raw: str) -> str:
        return clean_name(raw)

    def __init__(self, data_root: str | os.PathLike) -> None:
        super().__init__()
        self.root = resolve_root(data_root, self.name)
        subdirs = self._dirs(self.root)
        if subdirs and "train" in subdirs and set(subdirs) <= set(SPLIT_DIRS):
            split_roots = {s: self.root / s for s in SPLIT_DIRS if s in subdirs}
        else:
            split_roots = {"train": self.root}
        files: dict[str, dict[str, list[Path]]] = {}
        for split, sroot in split_roots.items():
            files[split] = {c: list_images(sroot / c, self.root) for c in self._dirs(sroot)}
        all_dirs = sorted({c for per in files.values() for c in per})
        self.folder_names = [c for c in all_dirs if any(per.get(c) for per in files.values())]
        self.empty_dirs = [c for c in all_dirs if c not in self.folder_names]
        if not self.folder_names:
            layout = "train/<class>/" if split_roots.get("train") != self.root else "<class>/"
            raise AugmentError(
                f"data root {self.root} has no class folders with images ({', '.join(IMAGE_EXTENSIONS)}); "
                f"lay it out as {self.root}/{layout}<image files>"
            )
        if self.empty_dirs:
            log.warning(
                "%s: ignoring %d folder(s) without images: %s",
                self.root,
                len(self.empty_dirs),
                ", ".join(self.empty_dirs[:5]),
            )
        index = {c: i for i, c in enumerate(self.folder_names)}
        self._names = [self.clean(c) or c for c in self.folder_names]
        check_distinct(self._names, self.folder_names, "class folders", self.root)
        self._samples = {
            split: [Sample(str(p), index[c]) for c in self.folder_names for p in per.get(c, [])]
            for split, per in files.items()
        }

    @staticmethod
    def _dirs(folder: Path) -> list[str]:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if e.is_dir() and e.name not in _JUNK_DIRS)

