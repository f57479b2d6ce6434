"""FFHQ-style face alignment, its exact inverse, and a soft face mask.

A similarity transform is built from the eye and mouth landmarks the way the FFHQ dataset script
does it: the eye-to-eye and eye-to-mouth vectors give the crop's rotation, its size
(``max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)`` times a preset scale) and its centre (the eye midpoint
moved ``shift`` along the eye-to-mouth vector). Coordinates follow dlib and numpy: pixel (i, j) has
its centre at x=j, y=i. ``matrix`` maps original-image points to crop points, so
``unalign`` (and ``paste_back``) can put an edited crop back exactly where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from faceage.face.detection import as_rgb


@dataclass(frozen=True)
class AlignPreset:
    """How a face is framed: crop half-side = ``scale`` x FFHQ's, centre = eye midpoint + ``shift`` x eye-to-mouth."""

    name: str
    scale: float
    shift: float
    description: str = ""
    chip_box: tuple[float, float, float, float] | None = None  # where dlib's 150 px chip lies, as crop fractions


# "utkface" was fitted on 578 UTKFace chips (200 px; median of each chip's own scale and shift): detecting
# and re-aligning a chip with it puts the 68 landmarks where they were in the chip, on average
# (tests/test_face_align.py checks it). Chip to chip the framing varies by about 5% in scale.
# ``chip_box`` is the mean box of dlib.get_face_chip_details (150 px, padding 0.25) inside crops of the
# preset, measured on 244 UTKFace faces; for "utkface" it is the whole crop to within 4%.
PRESETS: dict[str, AlignPreset] = {
    "ffhq": AlignPreset(
        "ffhq", 1.0, 0.1, "FFHQ / FFHQ-Aging framing: the whole head with hair", (0.16, 0.26, 0.85, 0.95)
    ),
    "utkface": AlignPreset("utkface", 0.64, 0.5, "UTKFace chips: tight, eyebrows to chin", None),
}

# 5-point landmarks have no mouth: it is put this far along the eye-midpoint-to-nose vector (the median
# ratio measured with both models on the same 578 UTKFace chips).
_MOUTH_FROM_NOSE = 1.35


def get_preset(preset: str | AlignPreset) -> AlignPreset:
    if isinstance(preset, AlignPreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown alignment preset {preset!r}; known: {', '.join(PRESETS)}")
    return PRESETS[preset]


@dataclass
class Aligned:
    """An aligned face: ``image`` (size x size x 3 uint8), ``matrix`` (2x3, original -> crop), ``landmarks`` in crop."""

    image: np.ndarray
    matrix: np.ndarray
    landmarks: np.ndarray


def eyes_and_mouth(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left eye centre, right eye centre (image left/right) and mouth centre from 68 or 5 dlib landmarks."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape == (68, 2):
        return lm[36:42].mean(0), lm[42:48].mean(0), (lm[48] + lm[54]) / 2
    if lm.shape == (5, 2):
        # dlib's 5-point model: 0-1 corners of the eye on the image right, 2-3 the other eye, 4 below the nose.
        eye_left, eye_right = lm[2:4].mean(0), lm[0:2].mean(0)
        eye_avg = (eye_left + eye_right) / 2
        return eye_left, eye_right, eye_avg + (lm[4] - eye_avg) * _MOUTH_FROM_NOSE
    raise ValueError(f"expected 68x2 or 5x2 landmarks, got shape {lm.shape}")


def alignment_matrix(landmarks: np.ndarray, size: int, preset: str | AlignPreset = "utkface") -> np.ndarray:
    """The 2x3 similarity matrix taking original-image points to the size x size aligned crop."""
    p = get_preset(preset)
    eye_left, eye_right, mouth = eyes_and_mouth(landmarks)
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye, eye_to_mouth = eye_right - eye_left, mouth - eye_avg
    x = eye_to_eye + np.array([eye_to_mouth[1], -eye_to_mouth[0]])  # FFHQ: eye_to_eye - rot90(eye_to_mouth)
    x /= np.hypot(*x)
    half = p.scale * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    centre = eye_avg + eye_to_mouth * p.shift
    a = (size / (2 * half)) * np.array([[x[0], x[1]], [-x[1], x[0]]])
    return np.hstack([a, ((size - 1) / 2 - a @ centre)[:, None]])


def invert_matrix(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix."""
    a_inv = np.linalg.inv(matrix[:, :2])
    return np.hstack([a_inv, (-a_inv @ matrix[:, 2])[:, None]])


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to N x 2 points."""
    return np.asarray(points, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2x3 matrix applying ``inner`` then ``outer``."""
    return np.hstack([outer[:, :2] @ inner[:, :2], (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]])


def _pil_affine(inverse: np.ndarray) -> tuple[float, ...]:
    """PIL's AFFINE data for a destination -> source matrix in pixel-centre coordinates.

    PIL works in pixel-corner coordinates (centre of pixel 0 at 0.5) on both sides.
    """
    a, t = inverse[:, :2], inverse[:, 2]
    t = t + 0.5 - a @ np.array([0.5, 0.5])
    return (a[0, 0], a[0, 1], t[0], a[1, 0], a[1, 1], t[1])


def _soften_padding(work: np.ndarray, inside: tuple[int, int, int, int], crop_side: float) -> np.ndarray:
    """FFHQ's treatment of padded borders: blur and fade towards the median colour away from the real image."""
    x0, y0, x1, y1 = inside
    h, w = work.shape[:2]
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    dist = np.maximum(np.maximum(x0 - xs, xs - (x1 - 1)), np.maximum(y0 - ys, ys - (y1 - 1)))
    dist = np.maximum(dist, 0)[:, :, None]
    img = work.astype(np.float32)
    sigma = max(1.0, 0.025 * crop_side)
    blurred = ndimage.gaussian_filter(img, (sigma, sigma, 0))
    img += (blurred - img) * np.clip(dist / sigma, 0, 1)
    median = np.median(work[y0:y1, x0:x1].reshape(-1, 3), axis=0)
    img += (median - img) * np.clip(dist / max(1.0, 0.3 * crop_side), 0, 1)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _source_region(image: np.ndarray, matrix: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The part of ``image`` the crop needs, shrunk when the crop downsamples a lot, padded past the borders.

    Returns the working array and the 2x3 matrix taking original points to working-array points.
    """
    inverse = invert_matrix(matrix)
    src_per_px = float(np.hypot(*inverse[0, :2]))
    edge = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]])
    corners = transform_points(edge, inverse)
    margin = 2.0 * max(1.0, src_per_px) + 2.0
    x0, y0 = np.floor(corners.min(0) - margin).astype(int)
    x1, y1 = np.ceil(corners.max(0) + margin).astype(int)
    h, w = image.shape[:2]
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if ix1 - ix0 < 2 or iy1 - iy0 < 2:
        raise ValueError(f"the face crop {corners.round(1).tolist()} lies outside the {w}x{h} image")
    work = image[iy0:iy1, ix0:ix1]
    rx = ry = 1.0
    if src_per_px > 2.0:  # shrink first (antialiased), as FFHQ does, so the final warp does not alias
        shrink = 1.5 / src_per_px
        new = (max(2, round(work.shape[1] * shrink)), max(2, round(work.shape[0] * shrink)))
        rx, ry = new[0] / work.shape[1], new[1] / work.shape[0]
        work = np.asarray(Image.fromarray(work).resize(new, Image.Resampling.LANCZOS, reducing_gap=3.0))
    pads = [
        int(np.ceil((ix0 - x0) * rx)),
        int(np.ceil((iy0 - y0) * ry)),
        int(np.ceil((x1 - ix1) * rx)),
        int(np.ceil((y1 - iy1) * ry)),
    ]
    to_work = np.array([[rx, 0, (0.5 - ix0) * rx - 0.5 + pads[0]], [0, ry, (0.5 - iy0) * ry - 0.5 + pads[1]]])
    if any(pads):
        inner = work.shape[:2]
        mode = "reflect" if min(inner) > 1 else "edge"
        work = np.pad(work, ((pads[1], pads[3]), (pads[0], pads[2]), (0, 0)), mode=mode)
        inside = (pads[0], pads[1], pads[0] + inner[1], pads[1] + inner[0])
        work = _soften_padding(work, inside, size * src_per_px * rx)
    return np.ascontiguousarray(work), to_work


def align(image: np.ndarray, landmarks: np.ndarray, size: int, preset: str | AlignPreset = "utkface") -> Aligned:
    """Crop, rotate and scale the face given by 68 (or 5) landmarks to a size x size image."""
    image = as_rgb(image)
    matrix = alignment_matrix(landmarks, size, preset)
    work, to_work = _source_region(image, matrix, size)
    crop_from_work = _compose(matrix, invert_matrix(to_work))
    data = _pil_affine(invert_matrix(crop_from_work))
    crop = Image.fromarray(work).transform((size, size), Image.Transform.AFFINE, data, Image.Resampling.BICUBIC)
    return Aligned(np.asarray(crop), matrix, transform_points(landmarks, matrix))


def _footprint(matrix: np.ndarray, crop_shape: tuple[int, int], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Integer box (x0, y0, x1, y1) of the original image that the crop covers, clipped to the image."""
    ch, cw = crop_shape
    edge = np.array([[-0.5, -0.5], [cw - 0.5, -0.5], [-0.5, ch - 0.5], [cw - 0.5, ch - 0.5]])
    corners = transform_points(edge, invert_matrix(matrix))
    x0, y0 = np.floor(corners.min(0)).astype(int)
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 1
    return max(x0, 0), max(y0, 0), min(x1, shape[1]), min(y1, shape[0])


def _warp_back(crop: np.ndarray, matrix: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Crop pixels and their coverage on the original-image grid inside ``box``."""
    x0, y0, x1, y1 = box
    ch, cw = crop.shape[:2]
    shifted = matrix.copy()
    shifted[:, 2] += matrix[:, :2] @ np.array([x0, y0], dtype=np.float64)  # region pixel -> crop point
    data = _pil_affine(shifted)
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(crop[:, :, c], dtype=np.float32), mode="F").transform(
                (x1 - x0, y1 - y0), Image.Transform.AFFINE, data, Image.Resampling.BICUBIC
            )
        )
        for c in range(crop.shape[2])
    ]
    # Coverage: how far each pixel centre lies inside the crop's edges, in original pixels, plus one half.
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    u = matrix[0, 0] * xs + matrix[0, 1] * ys + np.float32(matrix[0, 2])
    v = matrix[1, 0] * xs + matrix[1, 1] * ys + np.float32(matrix[1, 2])
    inside = np.minimum(np.minimum(u + 0.5, cw - 0.5 - u), np.minimum(v + 0.5, ch - 0.5 - v))
    coverage = np.clip(inside / np.float32(np.hypot(*matrix[0, :2])) + 0.5, 0, 1).astype(np.float32)
    pixels = np.stack(channels, axis=2)
    pixels[coverage == 0] = 0
    return pixels, coverage


def unalign(crop: np.ndarray, matrix: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Warp a crop back onto the original image grid: (pixels HxWxC float32, coverage HxW float32 in [0, 1])."""
    crop = np.asarray(crop, dtype=np.float32)
    if crop.ndim == 2:
        crop = crop[:, :, None]
    h, w = shape[:2]
    pixels = np.zeros((h, w, crop.shape[2]), np.float32)
    coverage = np.zeros((h, w), np.float32)
    box = _footprint(matrix, crop.shape[:2], (h, w))
    if box[2] > box[0] and box[3] > box[1]:
        x0, y0, x1, y1 = box
        pixels[y0:y1, x0:x1], coverage[y0:y1, x0:x1] = _warp_back(crop, matrix, box)
    return pixels, coverage


def paste_back(image: np.ndarray, crop: np.ndarray, matrix: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Blend an (edited) crop back into ``image`` through ``mask`` (crop-sized, in [0, 1]; default: all of it)."""
    out = as_rgb(image).copy()
    box = _footprint(matrix, crop.shape[:2], out.shape[:2])
    if box[2] <= box[0] or box[3] <= box[1]:
        return out
    x0, y0, x1, y1 = box
    if mask is None:
        mask = np.ones(crop.shape[:2], np.float32)
    stacked = np.concatenate([np.asarray(crop, np.float32), np.asarray(mask, np.float32)[:, :, None]], axis=2)
    warped, coverage = _warp_back(stacked, matrix, box)
    alpha = (np.clip(warped[:, :, 3], 0, 1) * coverage)[:, :, None]
    region = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(region + (warped[:, :, :3] - region) * alpha + 0.5, 0, 255).astype(np.uint8)
    return out


def face_mask(landmarks: np.ndarray, size: int, *, forehead: float = 0.4, feather: float = 0.04) -> np.ndarray:
    """A soft size x size mask (float32 in [0, 1]) of the face: landmark hull raised over the forehead, feathered.

    The eyebrows are lifted by ``forehead`` x the nose-bridge-to-chin distance to cover the forehead;
    the hull is grown by two blur widths (``feather`` x that distance) before blurring, so every
    landmark stays inside the mask (value > 0.9).
    """
    from scipy.spatial import ConvexHull

    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"face_mask needs 68x2 landmarks in crop coordinates, got shape {lm.shape}")
    up = lm[27] - lm[8]
    height = float(np.hypot(*up))
    points = np.vstack([lm, lm[17:27] + up * forehead])
    hull = points[ConvexHull(points).vertices]
    sigma = max(0.5, feather * height)
    outward = hull - hull.mean(0)
    hull = hull + outward / np.maximum(np.hypot(outward[:, 0], outward[:, 1]), 1e-9)[:, None] * 2 * sigma
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in hull], fill=255)
    mask = ndimage.gaussian_filter(np.asarray(canvas, np.float32) / 255.0, sigma)
    return np.clip(mask, 0.0, 1.0).astype(np.float32)
