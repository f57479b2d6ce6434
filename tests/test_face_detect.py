"""Face detection on real photos: the astronaut, Grace Hopper, chips cut from them and UTKFace's, small, huge, grey,
RGBA, border and empty inputs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ASTRONAUT_BOX, HOPPER_BOX, photo_chip
from PIL import Image

from faceage.face import align, detect, detection, invert_matrix, transform_points


def _resized(image: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC))


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_detects_the_astronaut_with_landmarks(astronaut):
    faces = detect(astronaut)
    assert faces, "no face found in the astronaut photo"
    face = detect(astronaut, largest=True)
    assert len(face) == 1 and _iou(face[0].box, ASTRONAUT_BOX) > 0.8
    lm = face[0].landmarks
    assert lm.shape == (68, 2) and lm.dtype == np.float64
    x0, y0, x1, y1 = face[0].box
    assert (lm[:, 0] > x0 - 10).all() and (lm[:, 0] < x1 + 10).all() and (lm[:, 1] < y1 + 15).all()
    assert lm[36:42, 0].mean() < lm[42:48, 0].mean(), "eye on the image left comes first, as in dlib's 68 points"
    assert [f.area for f in faces] == sorted((f.area for f in faces), reverse=True)


def test_five_point_landmarks(astronaut):
    five = detect(astronaut, largest=True, landmarks=5)[0].landmarks
    full = detect(astronaut, largest=True)[0].landmarks
    assert five.shape == (5, 2)
    assert np.abs(five[4] - full[33]).max() < 4, "point 4 sits under the nose"
    with pytest.raises(ValueError, match="68 or 5"):
        detect(astronaut, landmarks=7)


def _box_in_chip(box, size: int, zoom: float, shift: tuple[float, float], flip: bool) -> list[float]:
    """Where ``box`` of the photo lands in ``photo_chip(photo, box, size, zoom=zoom, shift=shift, flip=flip)``."""
    x0, y0, x1, y1 = box
    side, width = zoom * (x1 - x0), x1 - x0
    left = (x0 + x1) / 2 + shift[0] * width - side / 2
    top = (y0 + y1) / 2 + shift[1] * width - side / 2
    out = [(x0 - left) * size / side, (y0 - top) * size / side, (x1 - left) * size / side, (y1 - top) * size / side]
    return [size - out[2], out[1], size - out[0], out[3]] if flip else out


@pytest.mark.parametrize("person", ["astronaut", "hopper"])
def test_finds_the_face_in_utkface_like_chips_of_a_photo(person, request):
    """200 px chips like UTKFace's, zoomed, shifted and mirrored: the face is found where it was cut out."""
    photo, box = request.getfixturevalue(person), {"astronaut": ASTRONAUT_BOX, "hopper": HOPPER_BOX}[person]
    for zoom, shift, flip in [(1.2, (0, 0), False), (1.5, (0.1, -0.1), True), (1.8, (-0.1, 0.1), False)]:
        chip = photo_chip(photo, box, 200, zoom=zoom, shift=shift, flip=flip)
        faces = detect(chip, largest=True)
        assert faces, f"no face in the {zoom}x chip"
        assert _iou(faces[0].box, _box_in_chip(box, 200, zoom, shift, flip)) > 0.7, (zoom, faces[0].box)


def test_finds_faces_in_utkface_chips(utkface_dir):
    files = sorted(utkface_dir.glob("*.jpg"))[::1000][:20]
    found = [bool(detect(np.asarray(Image.open(f).convert("RGB")), largest=True)) for f in files]
    assert sum(found) >= 18, f"faces found in only {sum(found)} of {len(found)} UTKFace chips"


def test_small_faces_are_upsampled_for(astronaut):
    small = _resized(astronaut, 215, 215)  # the face is now about 38 px wide
    faces = detect(small, largest=True)
    assert faces, "a 38 px face was not found"
    assert _iou(faces[0].box, [v * 215 / 512 for v in ASTRONAUT_BOX]) > 0.6


def test_grayscale_and_rgba_are_accepted(astronaut):
    reference = detect(astronaut, largest=True)[0].landmarks
    grey = astronaut.mean(axis=2).astype(np.uint8)
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    for image in (grey, grey[:, :, None], rgba):
        faces = detect(image, largest=True)
        assert faces, f"no face in the {image.shape} version"
        assert np.abs(faces[0].landmarks - reference).mean() < 3
    with pytest.raises(ValueError, match="uint8"):
        detect(astronaut.astype(np.float32))


def test_no_face_gives_an_empty_list():
    rng = np.random.default_rng(0)
    assert detect(np.full((300, 400, 3), 128, np.uint8)) == []
    assert detect(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) == []


def test_huge_photo_is_searched_downscaled(astronaut, monkeypatch):
    big = np.full((4000, 6000, 3), 90, np.uint8)
    big[:, 1000:5000] = _resized(astronaut, 4000, 4000)
    seen = []
    run = detection._run_detector
    monkeypatch.setattr(detection, "_run_detector", lambda img, *a: seen.append(img.shape) or run(img, *a))
    faces = detect(big, largest=True)
    assert seen and max(seen[0][:2]) <= 1024, f"the detector ran on {seen}"
    assert faces, "no face found in the 6000x4000 photo"
    # Landmarks come from the full-resolution image: they match the small photo's, scaled, to a few pixels.
    expected = (detect(astronaut, largest=True)[0].landmarks + 0.5) * (4000 / 512) - 0.5 + [1000, 0]
    assert np.median(np.abs(faces[0].landmarks - expected)) < 12  # 12 px of a 700 px face


def test_face_touching_the_border(astronaut):
    cut = np.ascontiguousarray(astronaut[90:400, 195:500])  # the face is cut by the top-left corner
    faces = detect(cut, largest=True)
    assert faces and faces[0].box[0] < 0 and faces[0].box[1] < 0, "the face should extend past the border"
    for preset in ("utkface", "ffhq"):
        aligned = align(cut, faces[0].landmarks, 128, preset)
        assert aligned.image.shape == (128, 128, 3)
        grid = np.stack(np.meshgrid(np.arange(128), np.arange(128)), axis=2).reshape(-1, 2)
        source = transform_points(grid, invert_matrix(aligned.matrix))
        outside = ((source < -0.5) | (source > np.array(cut.shape[1::-1]) - 0.5)).any(axis=1)
        assert outside.mean() > 0.05, "this crop should reach past the photo's border"
        padded = aligned.image.reshape(-1, 3)[outside]
        assert padded.max(axis=1).min() > 0, "the padding is filled from the photo (reflected), not black"
        grad = np.abs(np.diff(aligned.image.astype(np.float32), axis=1)).sum(axis=2)
        far = outside.reshape(128, 128)[:, 1:]
        assert grad[far].mean() < 0.5 * grad[~far].mean(), "the padding is blurred"


@pytest.mark.slow
def test_cnn_detector(astronaut):
    patch = np.ascontiguousarray(astronaut[40:200, 140:300])  # 160 px around the face keeps the CNN quick
    faces = detect(patch, detector="cnn", largest=True)
    assert faces and _iou(faces[0].box, [v - o for v, o in zip(ASTRONAUT_BOX, (140, 40, 140, 40), strict=True)]) > 0.5
    with pytest.raises(ValueError, match="unknown detector"):
        detect(patch, detector="yolo")
