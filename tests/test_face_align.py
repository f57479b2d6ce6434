"""Alignment, its inverse, and the face mask, on the astronaut, Grace Hopper and UTKFace chips."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from faceage.face import (
    PRESETS,
    align,
    align_for_cache,
    alignment_matrix,
    detect,
    face_mask,
    invert_matrix,
    paste_back,
    transform_points,
    unalign,
)
from faceage.face.detection import landmarks_in_box


@pytest.fixture(scope="module")
def astronaut_face(astronaut):
    return detect(astronaut, largest=True)[0]


def _blobs(shape: tuple[int, int], points: np.ndarray, sigma: float) -> np.ndarray:
    """A grey image with a small Gaussian spot at each point (x, y)."""
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    spots = sum(np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)) for x, y in points)
    grey = (255 * spots / spots.max()).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _centres(image: np.ndarray, points: np.ndarray, radius: int) -> np.ndarray:
    """Intensity centroid of ``image`` around each expected point."""
    out = []
    for x, y in points:
        x0, y0 = int(round(x)) - radius, int(round(y)) - radius
        patch = image[y0 : y0 + 2 * radius + 1, x0 : x0 + 2 * radius + 1].astype(np.float64)
        patch = np.clip(patch - 0.2 * patch.max(), 0, None)
        cy, cx = ndimage.center_of_mass(patch)
        out.append((x0 + cx, y0 + cy))
    return np.array(out)


@pytest.mark.parametrize("size, preset", [(64, "ffhq"), (512, "ffhq"), (256, "utkface")])
def test_pixels_land_where_the_matrix_says(astronaut, astronaut_face, size, preset):
    """Spots drawn at landmarks appear at the aligned landmarks, and unalign puts them back within 1 px."""
    points = astronaut_face.landmarks[[36, 45, 30, 48, 54]]  # eye corners, nose tip, mouth corners
    spots = _blobs(astronaut.shape[:2], points, sigma=2.0)
    aligned = align(spots, astronaut_face.landmarks, size, preset)
    in_crop = transform_points(points, aligned.matrix)
    assert np.allclose(in_crop, aligned.landmarks[[36, 45, 30, 48, 54]])
    radius = max(3, round(2.5 * 2.0 * size / 256 * (1.6 if preset == "utkface" else 1.0)))
    assert np.abs(_centres(aligned.image[:, :, 0], in_crop, radius) - in_crop).max() < 0.3
    pixels, coverage = unalign(aligned.image, aligned.matrix, astronaut.shape)
    assert pixels.shape == astronaut.shape and coverage.shape == astronaut.shape[:2]
    assert np.abs(_centres(pixels[:, :, 0], points, 6) - points).max() < 1.0


def test_align_then_unalign_returns_landmarks(astronaut, astronaut_face):
    lm = astronaut_face.landmarks
    aligned = align(astronaut, lm, 256)
    assert aligned.image.shape == (256, 256, 3) and aligned.image.dtype == np.uint8
    assert np.abs(transform_points(aligned.landmarks, invert_matrix(aligned.matrix)) - lm).max() < 1e-6
    # Pixels: the unaligned crop reproduces the photo where it covers it...
    pixels, coverage = unalign(aligned.image, aligned.matrix, astronaut.shape)
    inside = coverage > 0.999
    assert inside.sum() > 100 * 100 and coverage.max() == 1.0 and coverage.min() == 0.0
    assert np.abs(pixels[inside] - astronaut[inside]).mean() < 2.0
    # ...so dlib finds the same landmarks on the photo with the crop pasted back (dlib's points are integers).
    back = paste_back(astronaut, aligned.image, aligned.matrix)
    found = landmarks_in_box(back, astronaut_face.box)
    assert np.abs(found - lm).mean() < 1.0 and np.abs(found - lm).max() <= 2.0


def test_alignment_is_a_similarity_that_levels_the_eyes(astronaut_face):
    lm = astronaut_face.landmarks
    m = alignment_matrix(lm, 128, "ffhq")
    a = m[:, :2]
    assert np.allclose(a @ a.T, np.eye(2) * (a[0] @ a[0]))  # rotation times scale
    crop = transform_points(lm, m)
    eyes = crop[36:42].mean(0), crop[42:48].mean(0)
    assert abs(eyes[0][1] - eyes[1][1]) < 2.0 and eyes[0][0] < eyes[1][0]
    tight = transform_points(lm, alignment_matrix(lm, 128, "utkface"))
    assert np.ptp(tight[:, 0]) > 1.4 * np.ptp(crop[:, 0]), "utkface crops closer than ffhq"
    with pytest.raises(ValueError, match="unknown alignment preset"):
        alignment_matrix(lm, 128, "celeba")


def test_five_point_alignment_is_close_to_68_point(astronaut):
    m68 = alignment_matrix(detect(astronaut, largest=True)[0].landmarks, 256, "ffhq")
    m5 = alignment_matrix(detect(astronaut, largest=True, landmarks=5)[0].landmarks, 256, "ffhq")
    corners = np.array([[0, 0], [255, 0], [0, 255], [255, 255]], dtype=np.float64)
    shift = transform_points(transform_points(corners, invert_matrix(m68)), m5) - corners
    assert np.abs(shift).max() < 0.1 * 256


def test_utkface_preset_reproduces_the_chips(utkface_dir):
    """Re-aligning a UTKFace chip with the preset leaves its landmarks where they were, on average."""
    files = sorted(utkface_dir.glob("*.jpg"))[3::311][:40]
    errors, offsets = [], []
    for path in files:
        chip = np.asarray(Image.open(path).convert("RGB"))
        faces = detect(chip, largest=True)
        if faces:
            moved = align(chip, faces[0].landmarks, chip.shape[0], "utkface").landmarks - faces[0].landmarks
            errors.append(np.abs(moved).mean())
            offsets.append(moved.mean(0))
    assert len(errors) >= 35
    assert np.abs(np.mean(offsets, axis=0)).max() < 3.0, f"mean landmark shift {np.mean(offsets, axis=0)} px"
    assert np.median(errors) < 5.0, f"median landmark error {np.median(errors):.2f} px on 200 px chips"


def test_aligning_an_aligned_chip_again_leaves_the_landmarks_in_place(astronaut, hopper):
    """A 200 px utkface-preset chip of a photo is (nearly) a fixed point of detect-and-align: two people, each
    also mirrored, held to the bounds the UTKFace test sets on real chips."""
    errors, offsets = [], []
    for photo in (astronaut, hopper):
        for image in (photo, np.ascontiguousarray(photo[:, ::-1])):
            chip = align(image, detect(image, largest=True)[0].landmarks, 200, "utkface").image
            found = detect(chip, largest=True)[0].landmarks
            moved = align(chip, found, 200, "utkface").landmarks - found
            errors.append(np.abs(moved).mean())
            offsets.append(moved.mean(0))
    assert np.abs(np.mean(offsets, axis=0)).max() < 3.0, f"mean landmark shift {np.mean(offsets, axis=0)} px"
    assert np.median(errors) < 5.0, f"median landmark error {np.median(errors):.2f} px on 200 px chips"


def test_face_mask_covers_the_face(astronaut, astronaut_face):
    aligned = align(astronaut, astronaut_face.landmarks, 256, "ffhq")
    mask = face_mask(aligned.landmarks, 256)
    assert mask.shape == (256, 256) and mask.dtype == np.float32
    assert mask.min() >= 0 and mask.max() <= 1
    at_landmarks = ndimage.map_coordinates(mask, aligned.landmarks[:, ::-1].T, order=1)
    assert at_landmarks.min() > 0.9
    assert max(mask[0, 0], mask[0, -1], mask[-1, 0], mask[-1, -1]) < 0.01
    lm = aligned.landmarks
    forehead = (lm[19] + lm[24]) / 2 + 0.3 * (lm[27] - lm[8])  # above the eyebrows
    assert mask[int(forehead[1]), int(forehead[0])] > 0.9
    values = np.unique(np.round(mask, 2))
    assert len(values) > 20, "the edge is feathered, not binary"
    with pytest.raises(ValueError, match="68x2"):
        face_mask(lm[:5], 256)


def test_align_for_cache(astronaut):
    crop, mask = align_for_cache(astronaut, 128, "utkface")
    assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
    assert mask.shape == (128, 128) and mask.dtype == np.uint8 and mask.max() == 255 and mask[0, 0] == 0
    assert align_for_cache(np.full((200, 200, 3), 127, np.uint8), 128) is None


def test_paste_back_through_a_mask_changes_only_the_face(astronaut, astronaut_face):
    aligned = align(astronaut, astronaut_face.landmarks, 128, "ffhq")
    mask = face_mask(aligned.landmarks, 128)
    out = paste_back(astronaut, np.zeros_like(aligned.image), aligned.matrix, mask)
    changed = np.abs(out.astype(int) - astronaut).sum(axis=2) > 30
    x0, y0, x1, y1 = astronaut_face.box
    assert changed[int(y0) + 20 : int(y1) - 20, int(x0) + 20 : int(x1) - 20].mean() > 0.95
    assert not changed[:45].any() and not changed[:, :100].any()


def test_presets_are_listed():
    assert set(PRESETS) >= {"utkface", "ffhq"}
    assert PRESETS["ffhq"].scale > PRESETS["utkface"].scale
