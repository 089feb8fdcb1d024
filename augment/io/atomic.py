"""Atomic file writes: a file is either absent or complete, never half-written.

Every writer puts its data in a temporary file *in the same folder* as the target (so the final
``os.replace`` is a rename on one filesystem, which POSIX makes atomic), flushes and fsyncs it,
renames it over the target, and fsyncs the folder so the rename itself survives a power cut.

Temporary names start with a dot and end with ``.tmp`` (``.synth-000003.tar.k2j4h1.tmp``): they
are hidden from ``pyarrow.dataset`` / pandas (which skip ``.``- and ``_``-prefixed files), never
match ``*.parquet`` / ``*.tar`` globs (duckdb, webdataset brace patterns), and
:func:`is_temp_name` lets a resume step find and delete the leftovers of a crashed run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from augment.io.jsonsafe import json_value

TEMP_SUFFIX = ".tmp"

__all__ = [
    "TEMP_SUFFIX",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_dir",
    "is_temp_name",
    "remove_temp_files",
    "sha256_file",
    "temp_path_for",
]


def temp_path_for(path: str | os.PathLike[str]) -> Path:
    """A fresh temporary name next to ``path`` (same folder, so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    """True for names made by :func:`temp_path_for` (leftovers of an interrupted write)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def remove_temp_files(folder: str | os.PathLike[str], targets: list[str] | None = None) -> list[Path]:
    """Delete the leftovers of interrupted writes in ``folder`` (names from :func:`temp_path_for`;
    with ``targets``, only those of these file names, so that another writer's are left alone).
    Returns them. A stage runs it before resuming, never while it writes."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.iterdir()):
        if is_temp_name(p.name) and p.is_file() and (targets is None or p.name[1:].rsplit(".", 2)[0] in targets):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 (hex) of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (renames, creations) to disk; a no-op where not supported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed to ``path``.

    On an exception inside the block the temporary file is deleted and the exception propagates;
    ``path`` is left as it was (absent, or its previous complete content). The parent folder is
    created if needed. The block must create the file at the yielded path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic_path: nothing was written to the temporary file for {path}")
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path`` as a Path."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON (UTF-8, trailing newline) atomically.

    Sorted keys make the file byte-identical for equal objects. Paths, sets, datetimes and numpy /
    torch values are converted by :func:`augment.io.jsonsafe.json_value`; NaN/Infinity are refused
    (they are not JSON and break strict readers: pass results through
    :func:`augment.io.jsonsafe.json_safe` first where a metric may be undefined).
    """
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False, default=json_value)
    return atomic_write_text(path, text + "\n")
