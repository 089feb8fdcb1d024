"""WebDataset shards + their Parquet manifests + timm's ``_info.json``.

Layout inside a run folder (ARCHITECTURE.md, "Run folder" and "Data contracts")::

    shards/synth-000000.tar          <key>.cls, <key>.<jpg|png|webp>, <key>.json per sample
    shards/_info.json                timm's wds split info, rebuilt from the manifests
    manifests/synth-000000.parquet   one row per sample (augment.io.manifest.MANIFEST_SCHEMA)

A shard is *done* iff its Parquet exists: the tar is written to a temp name and renamed first,
the Parquet last (the completion marker), so an interrupted run leaves at worst a tar without
its Parquet (or a temp file), which :func:`cleanup_partial` removes before the shard is redone.

Writing is deterministic: identical samples give a byte-identical tar (fixed mtime, uid/gid,
user/group names and mode in every header; members in sample order, a sample's files contiguous
and sorted by extension; the JSON sidecar has sorted keys and no wall-clock fields). The Parquet
is byte-identical too when the caller sets ``created_at`` in ``meta`` (otherwise it is "now").

This module knows nothing about models: it takes already-encoded images.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

import augment
from augment.io.atomic import atomic_path, atomic_write_json, remove_temp_files
from augment.io.images import IMAGE_FORMATS, image_size
from augment.io.jsonsafe import json_safe
from augment.io.manifest import MANIFEST_SCHEMA, ManifestRow, rows_to_table, write_parquet
from augment.io.rundir import ArmDir, parse_shard_name, shard_name

__all__ = [
    "IMAGE_FORMATS",
    "ShardWritten",
    "SynthSample",
    "cleanup_partial",
    "complete_shard_keys",
    "done_shards",
    "image_size",
    "info_dict",
    "info_of",
    "manifest_path",
    "parse_shard_name",
    "sample_key",
    "shard_name",
    "shard_path",
    "shard_urls",
    "write_info",
    "write_shard",
]


#: fixed tar header fields, so that equal samples give byte-identical shards
TAR_MTIME = 946684800  # 2000-01-01T00:00:00Z
TAR_USER = "augment"
TAR_MODE = 0o644

#: manifest columns that are not copied into ``<key>.json``: wall-clock / file-level facts that
#: live in the manifest (the sidecar must stay byte-identical when a shard is rewritten)
JSON_EXCLUDE = frozenset({"created_at", "shard", "image_sha256", "bytes"})

#: columns write_shard fills itself; ``meta`` must not contradict them
_COMPUTED = ("key", "shard", "class_index", "image_format", "width", "height", "image_sha256", "bytes")

#: the files write_shard stores per sample: the image, ``.cls`` and ``.json``
SAMPLE_FILES = ("image", "cls", "json")

_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_SAMPLE_KEY_RE = re.compile(r"^c(\d+)_s(\d+)$")


@dataclass
class SynthSample:
    """One encoded synthetic image and its manifest row.

    ``meta`` is the row as the stage knows it (class_name, prompt, seed, token, mode, status, ...;
    see ``manifests/schema/manifest.json``); a dict (column -> value) is turned into a
    :class:`~augment.io.manifest.ManifestRow`, refusing columns the schema lacks. ``key``,
    ``shard``, ``class_index``, ``image_format``, ``width``, ``height``, ``image_sha256`` and
    ``bytes`` are filled by :func:`write_shard`; ``created_at`` and ``tool_version`` default to
    now / augment's version; ``sample_index`` defaults to the number in a ``c0042_s000017`` key.
    """

    key: str
    class_index: int
    image: bytes
    image_format: str
    meta: ManifestRow

    def __post_init__(self) -> None:
        if isinstance(self.meta, Mapping):
            self.meta = ManifestRow.from_json(self.meta)


@dataclass
class ShardWritten:
    """What :func:`write_shard` wrote: the shard's name and index, its tar and manifest, how many
    samples, the tar's size, the images' bytes and the samples per class index."""

    shard: str
    index: int
    tar: Path
    manifest: Path
    num_samples: int
    tar_bytes: int
    image_bytes: int
    per_class: dict[int, int]

    def to_json(self) -> dict[str, Any]:
        return {"shard": self.shard, "index": self.index, "tar": str(self.tar), "manifest": str(self.manifest),
                "num_samples": self.num_samples, "tar_bytes": self.tar_bytes, "image_bytes": self.image_bytes,
                "per_class": dict(self.per_class)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ShardWritten:
        return cls(shard=data["shard"], index=int(data["index"]), tar=Path(data["tar"]),
                   manifest=Path(data["manifest"]), num_samples=int(data["num_samples"]),
                   tar_bytes=int(data["tar_bytes"]), image_bytes=int(data["image_bytes"]),
                   per_class={int(k): int(v) for k, v in data["per_class"].items()})


def sample_key(class_index: int, sample_index: int) -> str:
    """``c0042_s000017``: class and per-class sample index, zero-padded, no dots."""
    if class_index < 0 or sample_index < 0:
        raise ValueError(f"sample_key: negative index ({class_index}, {sample_index})")
    return f"c{class_index:04d}_s{sample_index:06d}"


def shard_path(out_dir: str | os.PathLike[str], index: int) -> Path:
    return ArmDir(out_dir).shard_path(index)


def manifest_path(out_dir: str | os.PathLike[str], index: int) -> Path:
    return ArmDir(out_dir).manifest_path(index)


# ----------------------------------------------------------------------------------------- writing


def _sidecar(row: ManifestRow) -> bytes:
    """The ``<key>.json`` bytes: the row's columns (schema order) minus JSON_EXCLUDE, sorted keys."""
    doc = {name: json_safe(value) for name, value in row.to_json().items() if name not in JSON_EXCLUDE}
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, allow_nan=False).encode("utf-8")


def _rows(shard: str, samples: list[SynthSample], now: _dt.datetime) -> list[ManifestRow]:
    """Each sample's row with the file facts filled in (and the defaults of the docstring above)."""
    rows: list[ManifestRow] = []
    seen: set[str] = set()
    for s in samples:
        if not isinstance(s.key, str) or not _KEY_RE.match(s.key):
            raise ValueError(f"sample key {s.key!r} must be letters, digits, '_' or '-' (no dots or slashes)")
        if s.key in seen:
            raise ValueError(f"sample key {s.key!r} appears twice in shard {shard}")
        seen.add(s.key)
        if s.image_format not in IMAGE_FORMATS:
            raise ValueError(
                f"sample {s.key}: image_format {s.image_format!r} is not one of {', '.join(IMAGE_FORMATS)}"
            )
        if not isinstance(s.image, bytes | bytearray | memoryview) or len(s.image) == 0:
            raise ValueError(f"sample {s.key}: image must be non-empty encoded bytes")
        image = bytes(s.image)
        try:
            width, height = image_size(image, s.image_format)
        except ValueError as e:
            raise ValueError(f"sample {s.key}: {e}") from None
        computed = {
            "key": s.key,
            "shard": shard,
            "class_index": int(s.class_index),
            "image_format": s.image_format,
            "width": width,
            "height": height,
            "image_sha256": hashlib.sha256(image).hexdigest(),
            "bytes": len(image),
        }
        for name in _COMPUTED:
            given = getattr(s.meta, name)
            if given is not None and given != computed[name]:
                raise ValueError(
                    f"sample {s.key}: meta[{name!r}]={given!r} contradicts the "
                    f"computed value {computed[name]!r}"
                )
        row = replace(s.meta, **computed)
        if row.created_at is None:
            row.created_at = now
        if row.tool_version is None:
            row.tool_version = augment.__version__
        if row.sample_index is None:
            m = _SAMPLE_KEY_RE.match(s.key)
            if m:
                row.sample_index = int(m.group(2))
        rows.append(row)
    return rows


def write_shard(
    out_dir: str | os.PathLike[str], shard_index: int, samples: list[SynthSample],
    metadata: dict[str, str] | None = None,
) -> ShardWritten:
    """Write ``shards/synth-NNNNNN.tar`` then ``manifests/synth-NNNNNN.parquet`` (the done marker).
    ``metadata``: file-level key-value entries of the Parquet (facts about the whole shard).

    Both are written to temp names and renamed; an existing Parquet for this index is removed
    first, so a crash mid-rewrite never leaves a "done" marker next to a different tar. Refuses
    an empty ``samples`` list (readers reject empty tars). Raises ValueError for bad samples
    (dotted or duplicate keys, unknown formats, bytes that are not the declared image format,
    meta contradicting computed columns, required columns left empty). Returns a
    :class:`ShardWritten`: shard name, paths, sample count, tar size, image bytes, per-class counts.
    """
    if not samples:
        raise ValueError(
            f"write_shard: refusing to write an empty shard {shard_name(shard_index)} "
            "(WebDataset readers reject empty tars)"
        )
    out_dir = Path(out_dir)
    name = shard_name(shard_index)
    tar_path = shard_path(out_dir, shard_index)
    pq_path = manifest_path(out_dir, shard_index)
    now = _dt.datetime.now(_dt.UTC)

    rows = _rows(name, samples, now)
    columns = [r.to_json() for r in rows]
    rows_to_table(columns, MANIFEST_SCHEMA, f"shard {name}")  # validate before touching any file

    pq_path.parent.mkdir(parents=True, exist_ok=True)
    pq_path.unlink(missing_ok=True)  # un-mark "done" before replacing the tar
    with atomic_path(tar_path) as tmp, open(tmp, "wb") as f:
        with wds.TarWriter(
            f, user=TAR_USER, group=TAR_USER, mode=TAR_MODE, encoder=False, mtime=TAR_MTIME
        ) as writer:
            for s, row in zip(samples, rows, strict=True):
                writer.write(
                    {
                        "__key__": s.key,
                        s.image_format: bytes(s.image),
                        "cls": str(int(s.class_index)).encode("ascii"),
                        "json": _sidecar(row),
                    }
                )
        f.flush()
        os.fsync(f.fileno())
    write_parquet(pq_path, columns, MANIFEST_SCHEMA, metadata)

    per_class: dict[int, int] = {}
    for s in samples:
        per_class[int(s.class_index)] = per_class.get(int(s.class_index), 0) + 1
    return ShardWritten(shard=name, index=shard_index, tar=tar_path, manifest=pq_path, num_samples=len(samples),
                        tar_bytes=tar_path.stat().st_size, image_bytes=sum(r.bytes or 0 for r in rows),
                        per_class=per_class)


# ----------------------------------------------------------------------------------------- resume


def _indices(folder: Path, suffix: str) -> set[int]:
    if not folder.is_dir():
        return set()
    out = set()
    for p in folder.iterdir():
        if p.name.endswith(suffix) and p.is_file():
            i = parse_shard_name(p.name[: -len(suffix)])
            if i is not None:
                out.add(i)
    return out


def done_shards(out_dir: str | os.PathLike[str]) -> set[int]:
    """Indices of the complete shards: the Parquet (done marker) and the tar both exist."""
    arm = ArmDir(out_dir)
    return _indices(arm.manifests, ".parquet") & _indices(arm.shards, ".tar")


def complete_shard_keys(out_dir: str | os.PathLike[str], index: int) -> list[str] | None:
    """The sample keys of shard ``index`` when its manifest and its tar can both be read and list
    the same samples, in order; None otherwise, and then the shard is to be written again.

    A pair that exists but cannot be read (truncated or empty: a full disk, a copy cut short, a
    hand edit) also loses its manifest, the done marker, so that nothing counts it as done
    (``_info.json``, readers) until it is rewritten. Reads the tar's headers only, not its images.
    """
    import tarfile

    marker = manifest_path(out_dir, index)
    try:
        keys = pq.read_table(marker, columns=["key"]).column("key").to_pylist()
        tar_path = shard_path(out_dir, index)
        size = tar_path.stat().st_size
        with tarfile.open(tar_path) as tar:
            # a member whose data runs past the end of the file: the tar was cut short
            stems = [m.name.split(".", 1)[0] if m.offset_data + m.size <= size else "" for m in tar]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, tarfile.TarError, pa.ArrowException):
        stems, keys = [], None
    in_tar = list(dict.fromkeys(stems))  # a sample's files are contiguous: one stem per sample
    if not keys or keys != in_tar or len(stems) != len(SAMPLE_FILES) * len(keys):
        marker.unlink(missing_ok=True)
        return None
    return keys


def cleanup_partial(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove what an interrupted run left: temp files in shards/ and manifests/, tars without
    their Parquet (not done) and Parquets without their tar (a marker for missing data, so the
    shard is redone). Returns the removed paths. Run it before resuming; not while writing.
    """
    arm = ArmDir(out_dir)
    removed: list[Path] = []
    for folder in (arm.shards, arm.manifests):
        removed.extend(remove_temp_files(folder))
    tars = _indices(arm.shards, ".tar")
    pqs = _indices(arm.manifests, ".parquet")
    for i in sorted(tars - pqs):
        shard_path(out_dir, i).unlink(missing_ok=True)
        removed.append(shard_path(out_dir, i))
    for i in sorted(pqs - tars):
        manifest_path(out_dir, i).unlink(missing_ok=True)
        removed.append(manifest_path(out_dir, i))
    return removed


# ------------------------------------------------------------------------------------ _info.json


def shard_urls(out_dir: str | os.PathLike[str]) -> list[str]:
    """Absolute paths of the complete shards, in index order (for ``wds.WebDataset(urls)``)."""
    return [str(shard_path(out_dir, i).resolve()) for i in sorted(done_shards(out_dir))]


def info_dict(out_dir: str | os.PathLike[str], name: str) -> dict[str, Any]:
    """timm's wds split info for the complete shards (counts from the manifests' row counts: one
    footer read per shard; a driver that writes shards keeps the counts itself, :func:`info_of`)."""
    out_dir = Path(out_dir)
    return info_of(name, {i: pq.read_metadata(manifest_path(out_dir, i)).num_rows
                          for i in sorted(done_shards(out_dir))})


def info_of(name: str, lengths: Mapping[int, int]) -> dict[str, Any]:
    """timm's wds split info for the shards ``lengths`` holds (shard index -> samples), in index order."""
    order = sorted(lengths)
    return {
        "name": name,
        "splits": {
            "train": {
                "name": "train",
                "num_samples": sum(lengths[i] for i in order),
                "filenames": [f"{shard_name(i)}.tar" for i in order],
                "shard_lengths": [lengths[i] for i in order],
            }
        },
    }


def write_info(out_dir: str | os.PathLike[str], name: str, lengths: Mapping[int, int] | None = None) -> Path:
    """Write ``shards/_info.json`` (timm ``create_dataset("wds/<name>", root=shards/,
    split="train")``) atomically: from ``lengths`` (shard index -> samples) when the caller keeps
    them, else rebuilt from the complete shards' manifests. Returns its path."""
    info = info_dict(out_dir, name) if lengths is None else info_of(name, lengths)
    return atomic_write_json(ArmDir(out_dir).info_json, info)
