"""Encoded image bytes: the one map of image formats a shard may hold, encoding and header checks.

The generate stages encode with :func:`encode_image` and the shard writer checks the bytes with
:func:`image_size`; both read :data:`IMAGE_FORMATS`, so a format is added in one place (see
ARCHITECTURE.md, "Data contracts").
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = ["IMAGE_FORMATS", "encode_image", "image_size"]

#: extension in the shard -> the format name PIL reports for such a file
IMAGE_FORMATS: dict[str, str] = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def encode_image(array: np.ndarray, fmt: str) -> bytes:
    """uint8 HWC -> encoded bytes; deterministic settings (same pixels -> same bytes)."""
    buf = io.BytesIO()
    img = Image.fromarray(array)
    if fmt == "jpg":
        img.save(buf, "JPEG", quality=95, subsampling=0, optimize=False)
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=95, method=4)
    else:
        img.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def image_size(data: bytes, image_format: str | None = None) -> tuple[int, int]:
    """(width, height) from the encoded image's header; checks the bytes match ``image_format``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, size = im.format, im.size
    except Exception as e:  # PIL raises several types for corrupt data
        raise ValueError(f"image bytes are not a readable image: {e}") from e
    if image_format is not None and IMAGE_FORMATS.get(image_format) != fmt:
        raise ValueError(f"image_format is {image_format!r} but the bytes are a {fmt} image")
    return size
