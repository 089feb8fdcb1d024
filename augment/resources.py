"""Files that ship with augment: the dataset presets and the reference manifests.

They live at the repository's top level (``pipelines/*.yaml``, ``manifests/``), where users were
promised them, and setuptools maps them into the wheel as ``augment.pipelines`` and
``augment.manifests`` (``package-dir`` in pyproject.toml). Reading them through
:mod:`importlib.resources` therefore finds the same files from an editable install, a wheel, or a
cluster node that installed the wheel; a plain source checkout on ``sys.path`` falls back to the
top-level folders. ``$AUGMENT_PIPELINES`` points at another presets folder.
"""

from __future__ import annotations

import importlib.resources
import os
from importlib.resources.abc import Traversable
from pathlib import Path

from augment.errors import AugmentError

_SOURCE_ROOT = Path(__file__).resolve().parents[1]


def _shipped(package: str, folder: str) -> Traversable:
    try:
        return importlib.resources.files(package)
    except ModuleNotFoundError:  # a source tree on sys.path, not installed
        return _SOURCE_ROOT / folder


def presets_dir() -> Traversable:
    """The folder of dataset presets (``<dataset>.yaml``): ``$AUGMENT_PIPELINES`` when set (it must
    be a folder; anything else is one AugmentError naming the variable), else the shipped ones."""
    env = os.environ.get("AUGMENT_PIPELINES")
    if not env:
        return _shipped("augment.pipelines", "pipelines")
    path = Path(env)
    if not path.is_dir():
        what = "is a file" if path.exists() else "does not exist"
        raise AugmentError(f"AUGMENT_PIPELINES={env} {what}, not a folder of <dataset>.yaml presets; "
                           "point it at one, or unset it for the shipped presets")
    return path


def manifests_dir() -> Traversable:
    """The reference manifests: class lists and the Parquet schema documents (``schema/``)."""
    return _shipped("augment.manifests", "manifests")


def list_presets() -> list[str]:
    """Names of the datasets that have a preset (files only: a folder named ``x.yaml`` is none)."""
    try:
        return sorted(p.name[: -len(".yaml")] for p in presets_dir().iterdir()
                      if p.name.endswith(".yaml") and p.is_file())
    except OSError as e:
        raise AugmentError(f"cannot list the presets in {presets_dir()} ({e.strerror or type(e).__name__}); "
                           "check AUGMENT_PIPELINES") from None


def read_preset(dataset: str) -> str:
    """The text of ``<dataset>.yaml``; AugmentError naming the presets that exist when there is
    none, and one naming the file when it cannot be read as UTF-8 text."""
    path = presets_dir() / f"{dataset}.yaml"
    if not path.is_file():
        names = ", ".join(list_presets()) or "none"
        raise AugmentError(f"no preset for dataset {dataset!r} (presets: {names}); pick one of those with "
                           "--dataset, or add pipelines/<name>.yaml")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise AugmentError(f"preset {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                           "save it as UTF-8 YAML") from None
    except OSError as e:
        raise AugmentError(f"cannot read preset {path} ({e.strerror or type(e).__name__}); check its permissions") \
            from None
