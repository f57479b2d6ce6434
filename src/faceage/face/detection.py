"""Face detection and landmarks with dlib: HOG (default) or the MMOD CNN, 68- or 5-point shapes.

Big photos are searched on a downscaled copy (long side at most ``max_side``) and the boxes mapped
back; landmarks are then fitted on the full-resolution image. Small images are upsampled (dlib's
pyramid) so that faces down to about ``min_face`` pixels are found, within a pixel budget.

Not every detection is a face (the mission patch on the astronaut's suit scores 0.1-0.2 with HOG, real
faces mostly 0.5-1.9): a detection is kept when its score reaches ``threshold``, its landmarks have a face's
geometry (:func:`plausible_landmarks`) and, when HOG is unsure of it (score below ``SURE_SCORE``), dlib's
MMOD CNN detector finds a face in its aligned crop too (:func:`confirmed_by_cnn`).
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
# HOG detections scoring at least this are faces without a second opinion; weaker ones must be confirmed by
# the CNN. On 272 UTKFace chips 17% of the faces score below it; the suit patch scores 0.1-0.2.
SURE_SCORE = 0.5
# The CNN looks at a crop this big, FFHQ framing (the face ~110 px, above the CNN's 80 px window).
_CONFIRM_SIZE = 160
# Landmark geometry of a face, in eye-to-eye distances, in the frame of the eye line (y down): the range of
# 300 UTKFace faces with a wide margin (measured: eyes/box width 0.30-0.57, roll within 21 degrees, nose tip
# 0.19-0.90 below the eyes and 0.54 to the side, mouth 0.71-1.63 below and 0.28 aside, chin 1.15-2.60).
_EYES_PER_BOX = (0.2, 0.8)
_MAX_ROLL_DEG = 45.0
_NOSE_BELOW = (0.1, 1.3)
_MOUTH_BELOW = (0.5, 2.2)
_CHIN_BELOW = (0.9, 3.2)
_MAX_NOSE_ASIDE = 0.8
_MAX_MOUTH_ASIDE = 0.5


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
    verify: bool = True,
) -> list[Face]:
    """Find faces in an RGB image (grayscale and RGBA accepted), largest first; an empty list when none.

    ``min_face`` is the smallest face side (pixels of the searched copy) worth upsampling for,
    ``max_side`` the long side of that copy for big photos, ``threshold`` the score a detection needs (dlib's
    detection threshold: HOG's SVM score or the CNN's confidence). With ``verify`` (the default) detections
    that are not faces are dropped: landmarks without a face's geometry, and HOG detections below
    ``SURE_SCORE`` that the CNN does not confirm (about 0.3 s each on one CPU core).
    """
    image = as_rgb(image)
    small, scale = _downscaled(image, max_side)
    found = _run_detector(small, detector, _upsamples(small.shape, min_face), threshold)
    boxes = [(tuple((float(v) + 0.5) / scale - 0.5 for v in b[:4]), float(b[4])) for b in found]
    boxes.sort(key=lambda b: (b[0][2] - b[0][0]) * (b[0][3] - b[0][1]), reverse=True)
    faces = []
    for box, score in boxes:
        face = Face(box, landmarks_in_box(image, box, landmarks), score)
        if verify and not is_face(image, face, detector):
            continue
        faces.append(face)
        if largest:
            break
    return faces


def is_face(image: np.ndarray, face: Face, detector: str = "hog") -> bool:
    """Whether a detection is a face: plausible landmarks and, for a HOG score below ``SURE_SCORE``, the CNN agrees."""
    if not plausible_landmarks(face.landmarks, face.box):
        return False
    return detector != "hog" or face.score >= SURE_SCORE or confirmed_by_cnn(image, face.landmarks)


def plausible_landmarks(landmarks: np.ndarray, box: tuple[float, float, float, float]) -> bool:
    """Whether 68 (or 5) landmarks are laid out like a face's: eyes a plausible part of the box apart, the face
    not rolled past 45 degrees, nose, mouth and chin below the eyes in that order and near the face's midline,
    eyebrows above, every point within the box grown by half its width."""
    lm = np.asarray(landmarks, dtype=np.float64)
    x0, y0, x1, y1 = box
    width = max(x1 - x0, 1e-6)
    grown = (lm[:, 0] >= x0 - width / 2) & (lm[:, 0] <= x1 + width / 2)
    grown &= (lm[:, 1] >= y0 - width / 2) & (lm[:, 1] <= y1 + width / 2)
    five = lm.shape == (5, 2)
    eye_l, eye_r = (lm[2:4].mean(0), lm[0:2].mean(0)) if five else (lm[36:42].mean(0), lm[42:48].mean(0))
    across = eye_r - eye_l
    d = float(np.hypot(*across))
    if not grown.all() or not _EYES_PER_BOX[0] <= d / width <= _EYES_PER_BOX[1]:
        return False
    if abs(np.degrees(np.arctan2(across[1], across[0]))) > _MAX_ROLL_DEG:
        return False
    ux = across / d
    frame = np.array([ux, [-ux[1], ux[0]]])  # rows: along the eye line, down the face

    def where(point: np.ndarray) -> np.ndarray:
        return frame @ (point - (eye_l + eye_r) / 2) / d

    nose = where(lm[4] if five else lm[30])
    if not (_NOSE_BELOW[0] < nose[1] < _NOSE_BELOW[1] and abs(nose[0]) <= _MAX_NOSE_ASIDE):
        return False
    if five:
        return True
    mouth, chin, brows = where(lm[48:68].mean(0)), where(lm[8]), where(lm[17:27].mean(0))
    return bool(
        _MOUTH_BELOW[0] < mouth[1] < _MOUTH_BELOW[1]
        and abs(mouth[0]) <= _MAX_MOUTH_ASIDE
        and _CHIN_BELOW[0] < chin[1] < _CHIN_BELOW[1]
        and brows[1] < 0 < nose[1] < mouth[1] < chin[1]
    )


def confirmed_by_cnn(image: np.ndarray, landmarks: np.ndarray) -> bool:
    """Whether dlib's MMOD CNN finds a face in the middle of the face's aligned crop (FFHQ framing, 160 px).

    The crop puts a real face upright at the CNN's favourite size, so the CNN finds it even where HOG was
    unsure (it did on 150 of 150 UTKFace chips); a face-like pattern that fooled HOG is not found.
    """
    from faceage.face.alignment import align

    crop = align(image, landmarks, _CONFIRM_SIZE, preset="ffhq").image
    centre = np.array([0.5, 0.6]) * _CONFIRM_SIZE  # where FFHQ framing puts the middle of the face
    for m in _cnn()(crop, 0):
        r = m.rect
        middle = np.array([(r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2])
        if np.hypot(*(middle - centre)) < 0.25 * _CONFIRM_SIZE:
            return True
    return False
