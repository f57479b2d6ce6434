"""Per-image transforms: what ``faceage prepare`` does to each decoded photo before caching it.

A transform turns one upright photo (H x W x 3 uint8 RGB) into the cache's S x S x 3 uint8 face and,
optionally, an S x S mask (float in [0, 1] or uint8 0-255) marking the face. The default, ``resize``,
centre-crops to a square and resizes. Face alignment plugs in the same way: a factory registered in
``TRANSFORMS`` under a name, e.g. ``"align": "faceage.face.prepare:align_transform"``, that returns an
:class:`ImageTransform` whose function detects and aligns the face, returns its mask, and raises
:class:`SkipImage` ("no face", ...) for photos it cannot use; prepare counts and reports those skips.

Factories are called as ``factory(size, **options)`` in every worker process, so options must be
plain JSON values; they are part of the cache's fingerprint, and ``ImageTransform.info`` is stored
in the cache as ``align`` (None for plain resizing).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

# name -> "module:factory"; imported lazily, inside the workers that use it.
TRANSFORMS: dict[str, str] = {
    "resize": "faceage.data.transforms:center_resize",
    "align": "faceage.face.prepare:align_transform",
}


class SkipImage(Exception):
    """Raised by a transform for a photo it cannot use; ``reason`` is counted, ``detail`` reported."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class ImageTransform:
    """A per-image function ``rgb -> (face, mask | None)`` plus what prepare needs to know about it."""

    fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
    masks: bool = False  # fn returns a mask for every image
    decode_size: int | None = None  # JPEGs may be decoded at reduced scale down to this size; None = full
    info: dict | None = None  # recorded in the cache manifest as "align"


def build_transform(name: str, size: int, options: dict | None = None) -> ImageTransform:
    """The transform registered as ``name``, built for output size ``size``."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown image transform {name!r}; known: {', '.join(TRANSFORMS)}")
    module, attr = TRANSFORMS[name].split(":")
    factory = getattr(importlib.import_module(module), attr)
    return factory(size, **(options or {}))


def center_resize(size: int) -> ImageTransform:
    """Crop the largest centred square and resize it to ``size`` with Lanczos resampling."""

    def fn(rgb: np.ndarray) -> tuple[np.ndarray, None]:
        h, w = rgb.shape[:2]
        side = min(h, w)
        x0, y0 = (w - side) // 2, (h - side) // 2
        if side == size and h == w:
            return rgb, None
        image = Image.fromarray(rgb)
        box = (x0, y0, x0 + side, y0 + side)
        return np.asarray(image.resize((size, size), Image.Resampling.LANCZOS, box=box)), None

    return ImageTransform(fn, masks=False, decode_size=size, info=None)
