"""Conversions between model tensors in [-1, 1] and PIL images, and image grids."""

from __future__ import annotations

import io
import math
import os
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import BedgenError


def to_pil(batch: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] -> RGB PIL images (round to nearest 8-bit level)."""
    arr = ((batch.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()
    if arr.shape[-1] == 1:
        return [Image.fromarray(a[..., 0], mode="L").convert("RGB") for a in arr]
    return [Image.fromarray(a[..., :3]) for a in arr]


def from_pil(images: list[Image.Image]) -> torch.Tensor:
    """RGB PIL images of one size -> (N, 3, H, W) float tensor in [-1, 1]."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1


def grid(images: list[Image.Image], columns: int | None = None, pad: int = 2) -> Image.Image:
    """Tile images row by row on a white background; a near-square layout by default."""
    if not images:
        raise ValueError("grid() needs at least one image")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    sheet = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), "white")
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        sheet.paste(im, (pad + c * (w + pad), pad + r * (h + pad)))
    return sheet


# --- user-supplied images ----------------------------------------------------------------

MAX_INPUT_PIXELS = 64_000_000  # 8000 x 8000; larger uploads are refused before decoding
MIN_INPUT_SIDE = 8


def load_image(source: "str | os.PathLike[str] | bytes | Image.Image", name: str = "image") -> Image.Image:
    """Open a user-supplied image with checks that give actionable errors.

    Refuses what is not an image, truncated files, decompression bombs (checked on
    the header's size, before any pixel is decoded) and images too small to mean
    anything. Animated images give their first frame. Mode conversion (alpha over
    white, 16-bit scaling, grayscale) is left to ``bedgen.data.preprocess`` so user
    images go through exactly the training preprocessing.
    """
    if isinstance(source, Image.Image):
        image = source
    else:
        image = _open(source, name)
    width, height = image.size
    if width * height > MAX_INPUT_PIXELS:
        raise BedgenError(
            f"{name} is {width}x{height} pixels, more than the {MAX_INPUT_PIXELS // 1_000_000} megapixel limit; "
            "downscale it first"
        )
    if min(width, height) < MIN_INPUT_SIDE:
        raise BedgenError(f"{name} is {width}x{height} pixels; it needs at least {MIN_INPUT_SIDE} pixels on each side")
    try:
        image.seek(0)  # animated GIF / WebP / APNG: the first frame
        image.load()
    except EOFError:
        pass
    except (OSError, ValueError, SyntaxError) as e:
        raise BedgenError(f"{name} could not be decoded ({e}); the file may be truncated or corrupt") from e
    return image


def _open(source: "str | os.PathLike[str] | bytes", name: str) -> Image.Image:
    data = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    if not isinstance(data, io.BytesIO) and not os.path.isfile(data):
        raise BedgenError(f"{name} '{data}' does not exist or is not a file")
    # Pillow warns above its own pixel limit and raises above twice that, at open time
    # (from the header). Both become our error, which names the size and the fix.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(data)
        except Image.DecompressionBombError as e:
            raise BedgenError(f"{name} is too large to decode safely ({e}); downscale it first") from None
        except UnidentifiedImageError:
            raise BedgenError(f"{name} is not an image PIL can read (PNG, JPEG, WebP, GIF, BMP, TIFF ...)") from None
        except OSError as e:
            raise BedgenError(f"{name} could not be opened: {e}") from e
