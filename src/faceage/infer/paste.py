"""Paste aged face crops back into the photo they came from.

Each generated crop is first colour-matched to the original crop inside the ring where the feathered
mask fades out (so no seam shows), then warped back with the exact inverse of the alignment and blended
with the warped mask. Pixels the mask does not reach are copied from the input untouched, bit for bit.

With ``residual=True`` a piece carries the model's *change* (aged crop minus input crop) instead of the aged
crop: the change is warped (upsampled) to the photo's own grid and added to the photo's pixels there, so a
face bigger than the model's resolution keeps its own skin and hair detail. ``gray=True`` keeps a grayscale
photo grayscale: each blended pixel becomes its luminance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

# Mask weights below this change no pixel after rounding (255 * w < 0.5), so they are treated as zero.
MIN_ALPHA = 1 / 512
# The seam ring: where the feathered mask is neither fully in nor fully out.
RING = (0.1, 0.9)
# Per-channel contrast correction is kept within these bounds so a small ring cannot wash out a face.
SCALE_LIMITS = (0.8, 1.25)
MIN_RING_PIXELS = 32
# ITU-R BT.601 luma, as Pillow's convert("L"): a grey pixel (R = G = B) keeps its value.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def match_colour(generated: np.ndarray, original: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift and scale each channel of ``generated`` so its mean/std in the seam ring match ``original``'s."""
    ring = (mask > RING[0]) & (mask < RING[1])
    if ring.sum() < MIN_RING_PIXELS:
        return generated
    gen, orig = generated[ring], original[ring].astype(np.float32)
    scale = np.clip(orig.std(0) / np.maximum(gen.std(0), 1e-3), *SCALE_LIMITS)
    return np.clip((generated - gen.mean(0)) * scale + orig.mean(0), 0, 255).astype(np.float32)


def face_window(matrix: np.ndarray, size: int, shape: tuple[int, ...], margin: int = 2) -> tuple[int, int, int, int]:
    """The ``(x0, y0, x1, y1)`` box of the photo that a ``size``-px aligned crop covers, clipped to the photo."""
    a, b = matrix[:, :2], matrix[:, 2]
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64)
    points = (corners - b) @ np.linalg.inv(a).T
    x0 = max(0, math.floor(points[:, 0].min()) - margin)
    y0 = max(0, math.floor(points[:, 1].min()) - margin)
    x1 = min(shape[1], math.ceil(points[:, 0].max()) + margin)
    y1 = min(shape[0], math.ceil(points[:, 1].max()) + margin)
    return x0, y0, x1, y1


Piece = tuple[np.ndarray, np.ndarray, np.ndarray]  # (matrix 2x3 photo -> crop, mask SxS, crop or change SxSx3)


def paste_faces(
    photo: np.ndarray, pieces: Sequence[Piece], *, residual: bool = False, gray: bool = False
) -> np.ndarray:
    """Blend aged crops into a copy of ``photo`` (HxWx3 uint8); each piece is ``(matrix, mask SxS, crop SxSx3 float)``.

    ``matrix`` maps photo coordinates to crop coordinates (``faceage.face.align``). Only the window each
    crop covers is warped, so the cost does not grow with the photo's size. With ``residual`` each crop is a
    change to add (aged minus input, in crop pixels), with ``gray`` the blended pixels are made gray.
    """
    result = photo.copy()
    for matrix, mask, crop in pieces:
        x0, y0, x1, y1 = face_window(matrix, mask.shape[0], photo.shape)
        if x1 > x0 and y1 > y0:
            blend_face(result[y0:y1, x0:x1], (x0, y0), matrix, mask, crop, residual=residual, gray=gray)
    return result


def paste_faces_to_image(
    photo: np.ndarray, pieces: Sequence[Piece], *, residual: bool = False, gray: bool = False
) -> Image.Image:
    """:func:`paste_faces` with the result as a PIL image: the same pixels, one full-size copy fewer.

    The photo is copied once, straight into Pillow's image; each face window is read back, blended and pasted.
    A NumPy copy turned into a PIL image would hold two full-size copies at once (72 + 96 MB for 24 MP).
    """
    image = Image.fromarray(photo)
    for matrix, mask, crop in pieces:
        x0, y0, x1, y1 = face_window(matrix, mask.shape[0], photo.shape)
        if x1 > x0 and y1 > y0:
            region = np.array(image.crop((x0, y0, x1, y1)))
            blend_face(region, (x0, y0), matrix, mask, crop, residual=residual, gray=gray)
            image.paste(Image.fromarray(region), (x0, y0))
    return image


def blend_face(
    region: np.ndarray,
    origin: tuple[int, int],
    matrix: np.ndarray,
    mask: np.ndarray,
    crop: np.ndarray,
    *,
    residual: bool = False,
    gray: bool = False,
) -> None:
    """Blend one aged crop, in place, into ``region``: the window of the photo whose top-left pixel is ``origin``.

    ``residual``: ``crop`` is the change to add, warped to the photo's grid (bicubic: smooth when it upsamples),
    so the photo's own pixels under the face are kept and only the model's change is added. ``gray``: the
    result is the luminance of the blend, in all three channels (a grayscale photo stays grayscale).
    """
    from faceage.face import unalign

    local = matrix.astype(np.float64).copy()
    local[:, 2] += local[:, :2] @ np.array(origin, dtype=np.float64)
    stacked = np.concatenate([crop, mask[..., None]], axis=2).astype(np.float32)
    warped, coverage = unalign(stacked, local, region.shape[:2])
    alpha = np.clip(warped[..., 3], 0, 1) * np.clip(coverage, 0, 1)
    inside = alpha >= MIN_ALPHA
    before = region[inside].astype(np.float32)
    change = warped[..., :3][inside] if residual else warped[..., :3][inside] - before
    blended = np.clip(before + change * alpha[inside][:, None], 0, 255)
    if gray:
        blended = np.repeat(blended @ LUMA[:, None], 3, axis=1)
    region[inside] = np.rint(blended).astype(np.uint8)
