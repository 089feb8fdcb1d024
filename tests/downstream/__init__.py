"""Tests of augment.downstream and helpers that write synthetic shard sets without a diffusion model.

``make_digit_run`` writes "synthetic" shards whose images are real digits from the embedded
dataset's train split (so a classifier can learn from them), with chosen manifest class indices
(to test alignment by name), class names and guide confidences.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

from augment.datasets.digits import DIGIT_NAMES, digits_split, to_rgb32
from augment.io.shards import SynthSample, sample_key, write_info, write_shard


def digit_png(class_index: int, sample_index: int) -> bytes:
    """The ``sample_index``-th train image of digit ``class_index`` as 32x32 RGB PNG bytes."""
    x, y = digits_split()["train"]
    idx = [i for i, lbl in enumerate(y) if lbl == class_index][sample_index]
    buf = io.BytesIO()
    to_rgb32(x[idx]).save(buf, "PNG")
    return buf.getvalue()


def make_digit_run(
    out: Path,
    per_class: int = 4,
    classes: Sequence[int] = tuple(range(10)),
    names: Sequence[str] = DIGIT_NAMES,
    index_of: Callable[[int], int] = lambda c: c,
    confidence: Callable[[int, int], float | None] = lambda c, i: 0.9,
    shard_size: int = 16,
    soft: Callable[[int, int], tuple[list[int], list[float]] | None] | None = None,
) -> Path:
    """Write ``per_class`` images of each digit in ``classes`` into ``out`` (shards + manifests +
    _info.json), classes interleaved. Digit ``c`` is stored with manifest class index
    ``index_of(c)`` and class name ``names[c]``, guide confidence ``confidence(c, i)`` and, with
    ``soft``, soft label ``soft(c, i)`` (class indices, probabilities)."""
    samples = []
    for i in range(per_class):
        for c in classes:
            ci = index_of(c)
            samples.append(SynthSample(
                key=sample_key(ci, i), class_index=ci, image=digit_png(c, i), image_format="png",
                meta={"sample_index": i, "class_name": names[c], "seed": 1000 * c + i, "mode": "txt2img",
                      "prompt": f"a photo of the digit {names[c]}", "guide_confidence": confidence(c, i),
                      "guide_pred": ci, "status": "ok",
                      **({"soft_classes": soft(c, i)[0], "soft_probs": soft(c, i)[1]} if soft and soft(c, i) else {})},
            ))
    for n, start in enumerate(range(0, len(samples), shard_size)):
        write_shard(out, n, samples[start : start + shard_size])
    write_info(out, "test")
    return out
