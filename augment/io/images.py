"""Image bytes in and out: the formats a shard may hold, encoding and header checks, and the one
way a real image is opened and brought to the size its consumer needs.

The generate stages encode with :func:`encode_image` and the shard writer checks the bytes with
:func:`image_size`; both read :data:`IMAGE_FORMATS`, so a format is added in one place (see
ARCHITECTURE.md, "Data contracts").

Real images come in any size and mode (a user's folder, CUB's odd sizes and grayscale JPEGs,
CMYK, palette PNGs with transparency, 16-bit scans, phone photos rotated by an EXIF tag). Every
reader (the datasets' ``load_image``, the downstream loaders, eval/FID, CASO's reals) goes through
:func:`open_image` / :func:`to_rgb` (EXIF transpose, any mode -> 8-bit RGB, alpha composited on
white, 16-bit scaled to 8-bit) and :func:`fit` (the resize policy, declared here once: the shorter
side scaled to the target with :data:`RESAMPLE`, then a centre crop, as timm's eval transform
with ``crop_pct=1`` does; a square image is simply resized), so no user has to make a dataset
uniform first.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from augment.errors import AugmentError

if TYPE_CHECKING:
    import torch

__all__ = ["IMAGE_FORMATS", "RESAMPLE", "encode_image", "fit", "image_size", "image_tensor", "open_image", "to_rgb"]

#: the filter of every resize of a real image (the policy of :func:`fit`)
RESAMPLE = Image.BILINEAR
#: what transparent pixels become: white, as a browser or viewer shows a transparent PNG
BACKGROUND = (255, 255, 255)

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


def _to_8bit(img: Image.Image) -> Image.Image:
    """A 16- or 32-bit single-channel image as 8-bit grey, scaled (65535 -> 255), not clipped
    (PIL's own ``convert`` saturates every value above 255 to white)."""
    arr = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        top = 1.0 if arr.size and arr.max() <= 1.0 else 255.0
    else:
        top = 65535.0 if img.mode.startswith("I;16") or (arr.size and arr.max() > 255) else 255.0
    return Image.fromarray(np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8), "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as the 8-bit RGB picture a person sees: EXIF orientation applied, 16-bit
    scaled, palette and CMYK converted, transparency composited on white. An RGB image without an
    EXIF rotation comes back with the same pixels."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "L" and "transparency" in img.info or img.mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, BACKGROUND)
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img if img.mode == "RGB" else img.convert("RGB")


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file fully as RGB (:func:`to_rgb`); AugmentError naming the file when it is
    missing or unreadable."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except FileNotFoundError:
        raise AugmentError(f"image file {path} does not exist; check the dataset folder") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise AugmentError(f"cannot read image {path} ({reason}); remove or replace the file") from None


def fit(img: Image.Image, size: int | tuple[int, int]) -> Image.Image:
    """``img`` brought to ``size`` (a side, or (height, width)): the shorter side scaled to cover
    it (:data:`RESAMPLE`), then the centre cropped; aspect ratio kept, nothing stretched."""
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if img.size == (w, h):
        return img
    scale = max(w / img.width, h / img.height)
    nw, nh = max(w, round(img.width * scale)), max(h, round(img.height * scale))
    img = img.resize((nw, nh), RESAMPLE)
    if (nw, nh) == (w, h):
        return img
    left, top = (nw - w) // 2, (nh - h) // 2
    return img.crop((left, top, left + w, top + h))


def image_tensor(img: Image.Image, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """``img`` as a uint8 (3,H,W) tensor, through :func:`to_rgb` and (with ``size``) :func:`fit`."""
    import torch  # here, not at import: the shard writer imports this module without needing torch

    img = to_rgb(img)
    if size is not None:
        img = fit(img, size)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
