"""The photo pipeline: the model's change applied at the photo's own resolution, grayscale in and out, non-faces
left alone, and outputs still made one at a time."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import HOPPER_BOX, photo_chip
from PIL import Image

import faceage
from faceage.eval.metrics import highpass_correlation, max_chroma
from faceage.face import detect, face_mask, unalign
from faceage.face.detection import confirmed_by_cnn, plausible_landmarks
from faceage.infer import Ager, NoFaceError, load
from faceage.infer.ager import is_gray
from faceage.infer.paste import MIN_ALPHA, match_colour, paste_faces_to_image
from faceage.paths import EXAMPLE_PHOTO


@pytest.fixture(scope="module")
def ager(tiny_ragan_dir):
    return faceage.load(tiny_ragan_dir, device="cpu")


@pytest.fixture(scope="module")
def gentle(ager):
    """The tiny random model with its change cut to a tenth: an 'ageing' that is small but not nothing."""
    backend = ager.backend
    return Ager(lambda x, t: x + 0.1 * (backend(x, t) - x), ager.meta)


def _box(face) -> tuple[slice, slice]:
    x0, y0, x1, y1 = (int(round(v)) for v in face.box)
    return np.s_[max(y0, 0) : y1, max(x0, 0) : x1]


def test_a_large_face_keeps_its_fine_detail(gentle, hopper):
    """Grace Hopper's 215 px face through a 32 px model: the change is added, her own detail is kept."""
    faces = detect(hopper, largest=True)
    out = np.asarray(gentle.age(hopper, 70, faces=faces))
    box = _box(faces[0])
    kept = highpass_correlation(hopper[box], out[box])
    assert kept > 0.95, kept
    change = np.abs(out[box].astype(int) - hopper[box]).mean()
    assert change > 1.0, "the face must still be changed"
    # Pasting the model's 32 px output itself (the old way) loses that detail.
    prepared = gentle._prepare(hopper, "RGB", aligned=False, largest=True, faces=faces)
    generated = gentle.generate(prepared.crops, [gentle.group(70)])[:, 0]
    a, m = prepared.aligned[0], prepared.masks[0]
    pasted = np.asarray(paste_faces_to_image(hopper, [(a.matrix, m, match_colour(generated[0], a.image, m))]))
    assert highpass_correlation(hopper[box], pasted[box]) < kept - 0.3


def test_pixels_outside_the_mask_are_unchanged(ager, hopper):
    faces = detect(hopper, largest=True)
    out = np.asarray(ager.age(hopper, 70, faces=faces))
    prepared = ager._prepare(hopper, "RGB", aligned=False, largest=True, faces=faces)
    a = prepared.aligned[0]
    mask = face_mask(a.landmarks, ager.image_size)
    warped, coverage = unalign(mask, a.matrix, hopper.shape)
    outside = warped[..., 0] * coverage < MIN_ALPHA
    np.testing.assert_array_equal(out[outside], hopper[outside])
    assert (out[~outside] != hopper[~outside]).any(axis=1).mean() > 0.5, "inside the mask the face is aged"


def test_a_large_aligned_chip_gets_the_change_at_its_own_size(gentle, hopper):
    chip = photo_chip(hopper, HOPPER_BOX, 256)
    out = np.asarray(gentle.age(chip, 70, aligned=True))
    assert out.shape == chip.shape
    assert highpass_correlation(chip, out) > 0.95
    assert np.abs(out.astype(int) - chip).mean() > 1.0
    small = photo_chip(hopper, HOPPER_BOX, 32)  # at the model's size: the generator's output, as before
    expected = np.clip(np.rint(gentle.generate(small[None], [gentle.group(70)])[0, 0]), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(gentle.age(small, 70, aligned=True)), expected)


def test_grayscale_in_grayscale_out(ager, hopper, tmp_path):
    gray = Image.fromarray(hopper).convert("L")
    rgb = np.asarray(gray.convert("RGB"))
    assert is_gray(rgb) and not is_gray(hopper)
    out = ager.age(gray, 70)  # a PIL "L" image comes back as one
    assert out.mode == "L" and out.size == gray.size
    assert (np.asarray(out) != np.asarray(gray)).any(), "the face is aged"
    for image in (rgb, gray.convert("LA")):
        aged = ager.age(image, 70)
        assert max_chroma(np.asarray(aged.convert("RGB"))) <= 3
    np.testing.assert_array_equal(np.asarray(ager.age(rgb, 70))[..., 0], np.asarray(out))
    gray.convert("RGB").save(tmp_path / "gray.jpg", quality=90)  # JPEG chroma noise is still grayscale
    assert max_chroma(np.asarray(ager.age(tmp_path / "gray.jpg", 70))) <= 3
    chip = np.asarray(Image.fromarray(photo_chip(hopper, HOPPER_BOX, 96)).convert("L").convert("RGB"))
    assert max_chroma(np.asarray(ager.age(chip, 70, aligned=True))) <= 3
    assert max_chroma(np.asarray(ager.age(chip[:32, :32], 70, aligned=True))) <= 3
    strip = ager.progression(gray)
    assert strip.mode == "L"


def test_colour_photos_stay_colour(ager, hopper):
    assert max_chroma(np.asarray(ager.age(hopper, 70))) > 3


@pytest.mark.parametrize("source", ["bundled", "skimage"])
def test_the_astronaut_has_exactly_one_face(source, astronaut):
    photo = np.asarray(Image.open(EXAMPLE_PHOTO).convert("RGB")) if source == "bundled" else astronaut
    big = np.asarray(Image.fromarray(photo).resize((2048, 2048), Image.Resampling.LANCZOS))
    for image in (photo, big):
        faces = detect(image)
        assert len(faces) == 1, [(f.box, f.score) for f in faces]
        x0, y0, x1, y1 = faces[0].box
        assert y1 < 0.4 * image.shape[0], "the face, not the mission patch on the suit"
    found = detect(photo, verify=False)  # HOG alone takes the patch for a face
    assert len(found) == 2
    face, patch = found
    assert plausible_landmarks(face.landmarks, face.box) and confirmed_by_cnn(photo, face.landmarks)
    assert not confirmed_by_cnn(photo, patch.landmarks)


def test_landmarks_without_a_face_layout_are_rejected(astronaut):
    face = detect(astronaut, largest=True)[0]
    lm = face.landmarks
    assert plausible_landmarks(lm, face.box)
    upside_down = lm.copy()
    upside_down[:, 1] = 2 * lm[:, 1].mean() - lm[:, 1]
    assert not plausible_landmarks(upside_down, face.box), "mouth above the eyes"
    squeezed = lm.copy()
    squeezed[:, 0] = lm[:, 0].mean() + (lm[:, 0] - lm[:, 0].mean()) * 0.2
    assert not plausible_landmarks(squeezed, face.box), "eyes far too close for the box"
    assert not plausible_landmarks(lm + [200, 0], face.box), "landmarks outside the box"
    five = detect(astronaut, largest=True, landmarks=5)[0]
    assert plausible_landmarks(five.landmarks, five.box)


def test_detection_threshold_is_a_parameter(tiny_ragan_dir, astronaut):
    assert detect(astronaut, threshold=1.5) == []  # the astronaut's face scores about 1.2
    strict = load(tiny_ragan_dir, device="cpu", detect_threshold=1.5)
    with pytest.raises(NoFaceError):
        strict.age(astronaut, 70)
    assert faceage.load(tiny_ragan_dir, device="cpu").stream(astronaut, [70]).faces == 1


def test_stream_of_a_photo_makes_one_output_at_a_time(ager, hopper):
    calls = []
    backend = ager.backend
    counting = Ager(lambda x, t: calls.append(len(t)) or backend(x, t), ager.meta, batch_size=1)
    faces = detect(hopper, largest=True)
    aged = counting.stream(hopper, [10, 30, "41-50"], faces=faces)
    assert aged.faces == 1 and calls == []
    outputs = []
    for out in aged.images:
        outputs.append(np.asarray(out))
        assert len(calls) == len(outputs), "each output is made when it is asked for"
    for target, out in zip([10, 30, "41-50"], outputs, strict=True):
        np.testing.assert_array_equal(out, np.asarray(ager.age(hopper, target, faces=faces)))


def test_bench_age_quality_reports_the_photo_figures(tiny_ragan_dir, hopper, tmp_path, capsys):
    from faceage.cli import main

    for i, zoom in enumerate((1.0, 0.5)):
        gray = Image.fromarray(hopper).convert("L")
        gray.resize((round(gray.width * zoom), round(gray.height * zoom))).save(tmp_path / f"g{i}.png")
    argv = ["bench", "age", "--quality", "--model", str(tiny_ragan_dir), "--gray-photos", str(tmp_path), "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["faces_found"] == {"512x512": 1, "2048x2048": 1}
    assert set(report["detail_kept"]) == {"70", "5"} and all(0 < v <= 1 for v in report["detail_kept"].values())
    assert report["gray_max_chroma"] == [0, 0]
