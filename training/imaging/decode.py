"""Decoding one PNG or JPEG (bytes, never the name) into a uint8 ``(C, size, size)`` array, bomb-safe."""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image, ImageOps

from training.errors import ImageDecodeError

__all__ = ["MAX_PIXELS", "decode_image", "fit_pixels"]

#: Largest image (width x height) :func:`decode_image` will decode; larger ones are refused
#: from their header, before any pixel is inflated (a decompression bomb).
MAX_PIXELS = 40_000_000

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_JPEG_MAGIC = b"\xff\xd8\xff"


def fit_pixels(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """Convert to L/RGB, resize (antialiased) and return uint8 (C, size, size)."""
    mode = "L" if channels == 1 or image.mode == "L" else "RGB"  # gray to RGB: resize once, then repeat
    if image.mode != mode:
        image = image.convert(mode)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        return np.repeat(pixels[None], channels, axis=0)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _to_8bit(image: Image.Image) -> Image.Image:
    """High-bit-depth grayscale (16-bit PNG) scaled to 8 bits over its full range."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        wide = np.asarray(image).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), mode="L")
    return image


#: A Python object's repr in a decoder's message (``<_io.BytesIO object at 0x7f...>``): not for users.
_OBJECT_REPR = re.compile(r"<[^<>]*\bat 0x[0-9a-fA-F]+>")


def decode_image(data: bytes, *, size: int, channels: int, name: str = "upload") -> np.ndarray:
    """Decode one PNG or JPEG into a uint8 ``(channels, size, size)`` array.

    The format is read from the bytes, never the name. Images over :data:`MAX_PIXELS` are
    refused from their header; 16-bit PNGs are scaled to 8 bits (65535 -> 255); the EXIF
    orientation is applied; the image is then converted to grayscale or RGB and resized
    (antialiased, aspect ratio not kept) to ``size`` x ``size``.

    Args:
        data: The file's bytes.
        size: Output height and width.
        channels: 1 (grayscale) or 3 (RGB).
        name: How the image is named in errors (a file name, an upload's name).

    Raises:
        ImageDecodeError: One line naming the image and the problem.
    """
    if not data:
        raise ImageDecodeError(name, "empty file")
    if not data.startswith((_PNG_MAGIC, _JPEG_MAGIC)):
        raise ImageDecodeError(name, "not a PNG or JPEG image")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ImageDecodeError(name, f"image too large ({width}x{height} pixels, at most {MAX_PIXELS:,})")
        if image.format == "JPEG":
            image.draft("L" if channels == 1 else "RGB", (size, size))
        image.load()
        return fit_pixels(_to_8bit(ImageOps.exif_transpose(image)), size, channels)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(name, "image too large (decompression bomb)") from err
    except Exception as err:  # noqa: BLE001 - any decoder failure (OSError, SyntaxError, zlib) is a bad image
        problem = " ".join(_OBJECT_REPR.sub("", str(err)).split()) or type(err).__name__
        raise ImageDecodeError(name, f"corrupt or truncated image ({problem})") from err
