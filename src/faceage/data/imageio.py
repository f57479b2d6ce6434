"""Decode any face photo we are likely to meet into one predictable form: H x W x 3 uint8 RGB.

Photos come as grayscale scans, CMYK JPEGs from print workflows, RGBA or 16-bit PNGs, and phone JPEGs
whose pixels are stored sideways with an EXIF orientation tag. All of that is normalised here, once,
so no other part of faceage has to care. Files that cannot be decoded raise :class:`ImageError` with a
short reason (``unreadable`` or ``truncated``) instead of whatever the decoder happened to throw.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

# Transparent pixels are composited onto this colour (white, as a viewer would show them).
BACKGROUND = (255, 255, 255)


class ImageError(Exception):
    """A file that cannot be decoded into an image; ``reason`` is ``unreadable`` or ``truncated``."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}" + (f" ({detail})" if detail else ""))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB with its EXIF orientation applied."""
    image, _ = open_rgb(path)
    return np.asarray(image)


def open_rgb(
    source: str | os.PathLike | bytes, *, reduce_to: int | None = None, name: str | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode ``source`` (a path or the file's bytes) into an upright RGB PIL image.

    ``reduce_to`` lets the JPEG decoder skip detail it would throw away anyway: it decodes at 1/2, 1/4
    or 1/8 scale as long as both sides stay >= ``reduce_to`` (Pillow's ``draft``), which makes large
    photos several times faster to shrink. Returns the image and the file's full-resolution (width,
    height), upright, so that callers can judge the true size of the photo.
    """
    name = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        with warnings.catch_warnings():
            # Pillow warns about odd EXIF or palette transparency; such files are still fine to use.
            warnings.simplefilter("ignore")
            full_size = image.size
            if reduce_to is not None and image.format == "JPEG":
                image.draft(None, (reduce_to, reduce_to))
            image.load()
    except FileNotFoundError as e:
        raise ImageError(name, "unreadable", "no such file") from e
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError...) on bad bytes
        raise ImageError(name, _classify(e), f"{type(e).__name__}: {e}") from e
    image, full_size = _upright(image, full_size)
    return to_rgb(image), full_size


def _upright(image: Image.Image, full_size: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """Apply the EXIF orientation tag; a damaged EXIF block leaves the pixels as stored."""
    try:
        orientation = image.getexif().get(0x0112, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = ImageOps.exif_transpose(image)
    except Exception:  # EXIF is optional metadata: bad EXIF must not cost us a good photo
        return image, full_size
    if orientation in (5, 6, 7, 8):  # these orientations swap width and height
        full_size = full_size[::-1]
    return image, full_size


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: 16-bit scaled down, alpha composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Pillow's own conversion clips 16-bit values at 255; scale them instead.
        a = np.asarray(image).astype(np.uint32)
        if image.mode != "I" or a.max(initial=0) > 255:
            a = a >> 8
        return Image.fromarray(a.astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        a = np.asarray(image)
        a = a * 255 if a.max(initial=0) <= 1 else a
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _classify(error: Exception) -> str:
    text = str(error).lower()
    if "truncated" in text or isinstance(error, EOFError) or "broken" in text:
        return "truncated"
    return "unreadable"
