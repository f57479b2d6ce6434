"""Face analysis for faceage: detection, landmarks, alignment and its inverse, masks, identity.

``detect`` finds faces with dlib; ``align`` crops one with an FFHQ-style similarity transform
(presets "utkface" and "ffhq"); ``unalign`` / ``paste_back`` put an edited crop back into the photo;
``face_mask`` gives a soft face mask in crop coordinates. Identity lives in ``faceage.face.identity``
(dlib's descriptors, the identity loss) and ``faceage.face.resnet`` (the PyTorch port of dlib's
recogniser); they import torch, so they are not imported here.
"""

from __future__ import annotations

import numpy as np

from faceage.face.alignment import (
    PRESETS,
    Aligned,
    AlignPreset,
    align,
    alignment_matrix,
    face_mask,
    get_preset,
    invert_matrix,
    paste_back,
    transform_points,
    unalign,
)
from faceage.face.detection import DETECTORS, Face, as_rgb, detect

__all__ = [
    "DETECTORS",
    "PRESETS",
    "AlignPreset",
    "Aligned",
    "Face",
    "align",
    "align_for_cache",
    "alignment_matrix",
    "as_rgb",
    "detect",
    "face_mask",
    "get_preset",
    "invert_matrix",
    "paste_back",
    "transform_points",
    "unalign",
]


def align_for_cache(
    rgb: np.ndarray, size: int, preset: str = "utkface", *, detector: str = "hog"
) -> tuple[np.ndarray, np.ndarray] | None:
    """Align the largest face for a training cache: (size x size x 3 uint8 crop, size x size uint8 mask), or None."""
    faces = detect(rgb, detector=detector, largest=True)
    if not faces:
        return None
    aligned = align(rgb, faces[0].landmarks, size, preset)
    mask = face_mask(aligned.landmarks, size)
    return aligned.image, np.round(mask * 255.0).astype(np.uint8)
