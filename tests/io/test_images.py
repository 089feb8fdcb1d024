"""augment.io.images: the encoder and the shard writer's header check agree on every format."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from augment.io.images import IMAGE_FORMATS, encode_image, image_size


def _pixels() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", sorted(IMAGE_FORMATS))
def test_encoded_bytes_are_the_mapped_format(fmt):
    data = encode_image(_pixels(), fmt)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == IMAGE_FORMATS[fmt]
    assert image_size(data, fmt) == (20, 12)


@pytest.mark.parametrize("fmt", sorted(IMAGE_FORMATS))
def test_encoding_is_deterministic(fmt):
    assert encode_image(_pixels(), fmt) == encode_image(_pixels(), fmt)


def test_image_size_rejects_a_mismatched_format_and_garbage():
    png = encode_image(_pixels(), "png")
    with pytest.raises(ValueError, match="PNG"):
        image_size(png, "jpg")
    with pytest.raises(ValueError, match="not a readable image"):
        image_size(b"not an image")
