"""Decode any face photo we are likely to meet into one predictable form: H x W x 3 uint8 RGB.

Photos come as grayscale scans, CMYK JPEGs from print workflows, RGBA or 16-bit PNGs, and phone JPEGs
whose pixels are stored sideways with an EXIF orientation tag. All of that is normalised here, once,
so no other part of faceage has to care. Files that cannot be decoded raise :class:`ImageError` with a
short reason (``unreadable`` or ``truncated``) instead of whatever the decoder happened to throw; files over a
caller's pixel limit raise :class:`ImageTooLargeError` (reason ``too large``) before their pixels are decoded.
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
    """A file that cannot be decoded into an image; ``reason`` is ``unreadable``, ``truncated`` or ``too large``."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}" + (f" ({detail})" if detail else ""))


class ImageTooLargeError(ImageError, ValueError):
    """An image with more pixels than the caller allows; raised from its header, before the pixels are decoded."""

    def __init__(self, path: str | os.PathLike, size: tuple[int, int], limit: int) -> None:
        self.size, self.pixels, self.limit = size, size[0] * size[1], limit
        detail = (
            f"{size[0]}x{size[1]} = {self.pixels:,} pixels ({self.pixels / 1e6:.1f} MP) is over the limit of "
            f"{limit:,} pixels; raise it with --max-pixels N (CLI) or max_pixels=N (Python), or shrink the image"
        )
        super().__init__(path, "too large", detail)


def check_pixels(name: str | os.PathLike, size: tuple[int, int], max_pixels: int | None) -> None:
    """Raise :class:`ImageTooLargeError` when a ``(width, height)`` image has more than ``max_pixels`` pixels."""
    if max_pixels is not None and size[0] * size[1] > max_pixels:
        raise ImageTooLargeError(name, size, max_pixels)


def read_image(path: str | os.PathLike, *, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB with its EXIF orientation applied.

    ``max_pixels`` (None: only Pillow's decompression-bomb guard) refuses larger files from their header,
    before their pixels are decoded.
    """
    image, _ = open_rgb(path, max_pixels=max_pixels)
    return np.asarray(image)


def open_rgb(
    source: str | os.PathLike | bytes,
    *,
    reduce_to: int | None = None,
    name: str | None = None,
    max_pixels: int | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode ``source`` (a path or the file's bytes) into an upright RGB PIL image.

    ``reduce_to`` lets the JPEG decoder skip detail it would throw away anyway: it decodes at 1/2, 1/4
    or 1/8 scale as long as both sides stay >= ``reduce_to`` (Pillow's ``draft``), which makes large
    photos several times faster to shrink. Returns the image and the file's full-resolution (width,
    height), upright, so that callers can judge the true size of the photo. ``max_pixels`` refuses a
    file with more pixels (:class:`ImageTooLargeError`) once its header is read, before decoding; when
    it is given it also replaces Pillow's decompression-bomb warning, which it makes redundant.
    """
    name = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        with warnings.catch_warnings():
            if max_pixels is not None:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except FileNotFoundError as e:
        raise ImageError(name, "unreadable", "no such file") from e
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError...) on bad bytes
        raise ImageError(name, _classify(e), f"{type(e).__name__}: {e}") from e
    try:
        check_pixels(name, image.size, max_pixels)
    except ImageTooLargeError:
        image.close()
        raise
    try:
        with warnings.catch_warnings():
            # Pillow warns about odd EXIF or palette transparency; such files are still fine to use.
            warnings.simplefilter("ignore")
            full_size = image.size
            if reduce_to is not None and image.format == "JPEG":
                image.draft(None, (reduce_to, reduce_to))
            image.load()
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError...) on bad bytes
        raise ImageError(name, _classify(e), f"{type(e).__name__}: {e}") from e
    image, full_size = _upright(image, full_size)
    return to_rgb(image), full_size


def _upright(image: Image.Image, full_size: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """Apply the EXIF orientation tag; a damaged EXIF block leaves the pixels as stored."""
    try:
        orientation = image.getexif().get(0x0112, 1)
        if orientation == 1:  # upright already: exif_transpose would return a full copy
            return image, full_size
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
