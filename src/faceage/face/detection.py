"""Face detection and landmarks with dlib: HOG (default) or the MMOD CNN, 68- or 5-point shapes.

Big photos are searched on a downscaled copy (long side at most ``max_side``) and the boxes mapped
back; landmarks are then fitted on the full-resolution image. Small images are upsampled (dlib's
pyramid) so that faces down to about ``min_face`` pixels are found, within a pixel budget.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

DETECTORS = ("hog", "cnn")
# Both dlib detectors reliably find faces from about this size (pixels) at their input scale.
_DETECTOR_WINDOW = 80
# The most pixels a detector pass may see after upsampling (HOG takes ~0.3 s per megapixel here).
_MAX_DETECT_PIXELS = 1.2e6


@dataclass
class Face:
    """One detected face: box (x0, y0, x1, y1), landmarks (68x2 or 5x2, x/y image coordinates), score."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as a C-contiguous HxWx3 uint8 array (grayscale replicated, alpha dropped)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}; read it with faceage.data.imageio")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image, got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


@functools.cache
def _hog():
    import dlib

    return dlib.get_frontal_face_detector()


@functools.cache
def _cnn():
    import dlib
    import face_recognition_models

    return dlib.cnn_face_detection_model_v1(face_recognition_models.cnn_face_detector_model_location())


@functools.cache
def shape_predictor(points: int = 68):
    """dlib's 68-point (non-commercial licence) or 5-point landmark model."""
    import dlib
    import face_recognition_models as frm

    if points == 68:
        return dlib.shape_predictor(frm.pose_predictor_model_location())
    if points == 5:
        return dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    raise ValueError(f"landmarks must be 68 or 5, got {points}")


def _downscaled(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """A copy with long side <= max_side (and the scale used), or the image itself when small enough."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale == 1.0:
        return image, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(small), size[0] / w


def _upsamples(shape: tuple[int, ...], min_face: float) -> int:
    """How many 2x pyramid steps let the detector see ``min_face``-pixel faces, within the pixel budget."""
    wanted = max(0, math.ceil(math.log2(_DETECTOR_WINDOW / max(min_face, 1.0)) - 1e-9))
    n = 0
    while n < wanted and shape[0] * shape[1] * 4 ** (n + 1) <= _MAX_DETECT_PIXELS:
        n += 1
    return n


def _run_detector(image: np.ndarray, detector: str, upsample: int, threshold: float) -> list[tuple]:
    if detector == "hog":
        rects, scores, _ = _hog().run(image, upsample, threshold)
        return [(r.left(), r.top(), r.right(), r.bottom(), s) for r, s in zip(rects, scores, strict=True)]
    if detector == "cnn":
        found = _cnn()(image, upsample)
        return [(m.rect.left(), m.rect.top(), m.rect.right(), m.rect.bottom(), m.confidence) for m in found]
    raise ValueError(f"unknown detector {detector!r}; known: {', '.join(DETECTORS)}")


def landmarks_in_box(image: np.ndarray, box: tuple[float, float, float, float], points: int = 68) -> np.ndarray:
    """Fit dlib's landmark model to the face in ``box`` (x0, y0, x1, y1); returns points x 2 float64."""
    import dlib

    rect = dlib.rectangle(*(int(round(v)) for v in box))
    shape = shape_predictor(points)(as_rgb(image), rect)
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def detect(
    image: np.ndarray,
    *,
    detector: str = "hog",
    largest: bool = False,
    landmarks: int = 68,
    min_face: float = 40.0,
    max_side: int = 1024,
    threshold: float = 0.0,
) -> list[Face]:
    """Find faces in an RGB image (grayscale and RGBA accepted), largest first; an empty list when none.

    ``min_face`` is the smallest face side (pixels of the searched copy) worth upsampling for,
    ``max_side`` the long side of that copy for big photos, ``threshold`` dlib's detection threshold.
    """
    image = as_rgb(image)
    small, scale = _downscaled(image, max_side)
    found = _run_detector(small, detector, _upsamples(small.shape, min_face), threshold)
    faces = []
    for x0, y0, x1, y1, score in found:
        box = tuple((float(v) + 0.5) / scale - 0.5 for v in (x0, y0, x1, y1))
        faces.append(Face(box, landmarks_in_box(image, box, landmarks), float(score)))
    faces.sort(key=lambda f: f.area, reverse=True)
    return faces[:1] if largest else faces
