"""Conversions between model tensors in [-1, 1] and PIL images, and image grids."""

from __future__ import annotations

import io
import math
import os
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import BedgenError, one_line


def to_pil(batch: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] -> RGB PIL images (round to nearest 8-bit level)."""
    arr = ((batch.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()
    if arr.shape[-1] == 1:
        return [Image.fromarray(a[..., 0], mode="L").convert("RGB") for a in arr]
    return [Image.fromarray(a[..., :3]) for a in arr]


def from_pil(images: list[Image.Image]) -> torch.Tensor:
    """RGB PIL images of one size -> (N, 3, H, W) float tensor in [-1, 1]."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
    return to_signed(torch.from_numpy(arr).permute(0, 3, 1, 2))


def to_signed(pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 pixels [0, 255] -> float32 in [-1, 1], the range every network here works in."""
    pixels = torch.from_numpy(pixels) if isinstance(pixels, np.ndarray) else pixels
    return pixels.float() / 127.5 - 1


def signed_to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] (bedgen's range) -> [0, 1], where score models work (Song & Ermon 2019 use [0, 1] data)."""
    return (x + 1) / 2


def unit_to_signed(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`signed_to_unit`."""
    return x * 2 - 1


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

MAX_INPUT_PIXELS = 64_000_000  # 8000 x 8000 at 8 bits a sample; larger uploads are refused before decoding
MIN_INPUT_SIDE = 8
# Samples deeper than 8 bits are scaled to 8 through float64 arrays (bedgen.data.datasets), several
# copies of 8 bytes a pixel: a 64-megapixel 16-bit PNG took ~4 GB. They get a limit 8x
# lower, still far more than any model here needs (256-1024 px a side).
DEEP_SAMPLE_BITS = {"I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 32, "F": 32}
MAX_DEEP_INPUT_PIXELS = MAX_INPUT_PIXELS // 8


def load_image(source: "str | os.PathLike[str] | bytes | Image.Image", name: str = "image") -> Image.Image:
    """Open a user-supplied image with checks that give actionable errors.

    Refuses what is not an image, truncated files, decompression bombs (in the pixels or
    in compressed PNG text chunks), images too large to decode cheaply (checked on the
    header's size and bit depth, before any pixel is decoded; a JPEG over the limit is
    decoded at 1/2, 1/4 or 1/8 scale instead) and images too small to mean anything.
    Animated images give their first frame. Mode conversion (alpha over white, 16-bit
    scaling, grayscale) is left to ``bedgen.data.datasets.preprocess`` so user images go through
    exactly the training preprocessing.
    """
    if isinstance(source, Image.Image):
        image = source
    else:
        image = _open(source, name)
    _reduce_jpeg(image)
    _check_size(image, name)
    try:
        image.seek(0)  # animated GIF / WebP / APNG: the first frame
        image.load()
    except EOFError:
        pass
    except (OSError, ValueError, SyntaxError) as e:
        raise _unreadable(name, e) from None
    return image


def _reduce_jpeg(image: Image.Image) -> None:
    """Let libjpeg decode a JPEG over the pixel limit at the largest of 1/2, 1/4, 1/8 scale
    that fits (DCT scaling: the full-size image is never built). Smaller JPEGs decode exactly."""
    width, height = image.size
    if image.format != "JPEG" or width * height <= MAX_INPUT_PIXELS:
        return
    scale = next((s for s in (2, 4, 8) if (width // s) * (height // s) <= MAX_INPUT_PIXELS), 8)
    image.draft(None, (width // scale, height // scale))


def _check_size(image: Image.Image, name: str) -> None:
    width, height = image.size
    bits = DEEP_SAMPLE_BITS.get(image.mode)
    if bits and width * height > MAX_DEEP_INPUT_PIXELS:
        raise BedgenError(
            f"{name} is {width}x{height} pixels of {bits}-bit samples, more than the "
            f"{MAX_DEEP_INPUT_PIXELS // 1_000_000} megapixel limit for images deeper than 8 bits; "
            "downscale it or save it with 8 bits a sample"
        )
    if width * height > MAX_INPUT_PIXELS:
        raise BedgenError(
            f"{name} is {width}x{height} pixels, more than the {MAX_INPUT_PIXELS // 1_000_000} megapixel limit; "
            "downscale it first"
        )
    if min(width, height) < MIN_INPUT_SIDE:
        raise BedgenError(f"{name} is {width}x{height} pixels; it needs at least {MIN_INPUT_SIDE} pixels on each side")


def _unreadable(name: str, error: BaseException) -> BedgenError:
    """Pillow's refusal -> bedgen's one-line error (the cause stays in the text, not in a traceback)."""
    text = one_line(error)
    if "MAX_TEXT" in text:  # a zTXt/iTXt chunk inflating past Pillow's limits: a bomb in the metadata
        return BedgenError(
            f"{name} has compressed metadata (a PNG text chunk) that inflates past the safe limit; "
            "save the image again without metadata"
        )
    return BedgenError(f"{name} could not be decoded ({text}); the file may be truncated or corrupt")


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
        except ValueError as e:  # text chunks read while opening (before the pixels)
            raise _unreadable(name, e) from None
        except OSError as e:
            raise BedgenError(f"{name} could not be opened: {e}") from e
