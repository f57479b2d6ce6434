"""``faceage prepare --align``: the per-image transform that detects, aligns and masks each face."""

from __future__ import annotations

import numpy as np

from faceage.data.transforms import ImageTransform, SkipImage
from faceage.face import align_for_cache, get_preset
from faceage.face.detection import DETECTORS

NO_FACE = "no face"


def align_transform(size: int, preset: str = "utkface", detector: str = "hog") -> ImageTransform:
    """Align the largest face of each photo with ``preset`` and keep its soft mask; skip photos without a face."""
    get_preset(preset)  # fail early, in the parent process, on a bad name
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; known: {', '.join(DETECTORS)}")

    def fn(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = align_for_cache(rgb, size, preset, detector=detector)
        if result is None:
            raise SkipImage(NO_FACE, f"dlib's {detector} detector found no face")
        return result

    info = {"preset": preset, "size": size, "detector": detector, "landmarks": 68, "mask": "face_mask"}
    # Detection works on at most 1024 px; decoding JPEGs at a reduced scale down to that (or 4x the crop) is free speed.
    return ImageTransform(fn, masks=True, decode_size=max(1024, 4 * size), info=info)
