"""Tests of augment.io (shards, manifests, run folder, verify) and shared helpers to build runs."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from pathlib import Path

from PIL import Image

from augment.io.images import IMAGE_FORMATS
from augment.io.manifest import ManifestRow
from augment.io.shards import SynthSample, sample_key, write_info, write_shard

CLASS_NAMES = ["zero", "one", "two"]
FIXED_TIME = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def encode(class_index: int, sample_index: int, fmt: str = "jpg", size: int = 16) -> bytes:
    """A small deterministic image whose colour depends on class and sample."""
    im = Image.new("RGB", (size, size), (40 + 60 * class_index, 10 * sample_index % 256, 90))
    buf = io.BytesIO()
    im.save(buf, IMAGE_FORMATS[fmt])
    return buf.getvalue()


def make_sample(class_index: int, sample_index: int, fmt: str = "jpg", created_at=FIXED_TIME) -> SynthSample:
    name = CLASS_NAMES[class_index]
    return SynthSample(
        key=sample_key(class_index, sample_index),
        class_index=class_index,
        image=encode(class_index, sample_index, fmt),
        image_format=fmt,
        meta=ManifestRow(
            sample_index=sample_index,
            class_name=name,
            prompt=f"A photo of a <c{class_index:04d}> {name}",
            negative_prompt="",
            seed=1000 * class_index + sample_index,
            token=f"<c{class_index:04d}>",
            mode="txt2img",
            model_id="embedded:tiny-digits",
            scheduler="ddim",
            steps=30,
            guidance_scale=7.0,
            guide_confidence=0.5 + 0.1 * class_index,
            guide_pred=class_index,
            attempts=1,
            status="ok",
            created_at=created_at,
        ),
    )


def make_run(out: Path, shards: tuple[int, ...] = (3, 3, 2), fmt: str = "jpg", info: bool = True) -> Path:
    """Write ``len(shards)`` shards with the given sizes, classes interleaved; returns ``out``."""
    n = 0
    for index, size in enumerate(shards):
        samples = []
        for _ in range(size):
            c = n % len(CLASS_NAMES)
            samples.append(make_sample(c, n // len(CLASS_NAMES), fmt))
            n += 1
        write_shard(out, index, samples)
    if info:
        write_info(out, "synth")
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
