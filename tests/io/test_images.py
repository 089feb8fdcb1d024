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


# ---------------------------------------------------------------- real images: any mode, any size


def test_transparency_is_composited_on_white():
    from augment.io.images import to_rgb

    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    out = to_rgb(rgba)
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (255, 255, 255) and out.getpixel((0, 0)) == (10, 20, 30)
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.info["transparency"] = 0
    out = to_rgb(palette)
    assert out.getpixel((1, 1)) == (255, 255, 255) and out.getpixel((0, 0)) == (200, 100, 50)


def test_sixteen_bit_is_scaled_not_clipped():
    from augment.io.images import to_rgb

    deep = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))
    assert deep.mode == "I;16"
    assert [to_rgb(deep).getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_exif_rotation_and_cmyk(tmp_path):
    from augment.io.images import open_image

    img = Image.new("RGB", (30, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "r.jpg", exif=exif)
    assert open_image(tmp_path / "r.jpg").size == (10, 30)
    Image.new("CMYK", (5, 5), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    red = open_image(tmp_path / "c.jpg").getpixel((2, 2))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_fit_keeps_the_aspect_ratio_and_resizes_squares_plainly():
    from augment.io.images import RESAMPLE, fit

    wide = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8)[None, :, None], (16, 1, 3)))  # 64x16 ramp
    out = fit(wide, 8)
    assert out.size == (8, 8)
    # the centre of the ramp is kept, not the whole ramp squashed
    row = np.asarray(out)[4, :, 0]
    assert 16 < row[0] and row[-1] < 48
    square = Image.fromarray(_pixels()[:12, :12])
    assert np.array_equal(np.asarray(fit(square, 32)), np.asarray(square.resize((32, 32), RESAMPLE)))
    assert fit(square, 12) is square
    assert fit(wide, (4, 10)).size == (10, 4)


def test_unreadable_file_is_one_line(tmp_path):
    from augment.errors import AugmentError
    from augment.io.images import open_image

    (tmp_path / "x.jpg").write_bytes(b"nope")
    with pytest.raises(AugmentError, match=r"cannot read image .*x\.jpg .*remove or replace the file"):
        open_image(tmp_path / "x.jpg")
    with pytest.raises(AugmentError, match="does not exist"):
        open_image(tmp_path / "missing.jpg")
