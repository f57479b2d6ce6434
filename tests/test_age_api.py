"""The Python ageing API: model lookup, aligned crops, whole photos with paste-back, strips, batching."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import faceage
from faceage import paths
from faceage.infer import Ager, ModelNotFoundError, NoFaceError
from faceage.infer.backends import TorchBackend
from faceage.infer.paste import match_colour, paste_faces, paste_faces_to_image
from faceage.infer.strip import label_height
from faceage.models.pretrained import load_pretrained
from faceage.precision import resolve_precision


@pytest.fixture(scope="module")
def ager(tiny_ragan_dir):
    """fp32, so that outputs compare exactly: with bf16 autocast on AMX CPUs (what ``auto`` picks there) the
    kernels depend on the batch size, and a batch of two may round a pixel one level off a batch of one."""
    return faceage.load(tiny_ragan_dir, device="cpu", precision="fp32")


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_load_by_name_from_faceage_home(tiny_ragan_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FACEAGE_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mine").symlink_to(tiny_ragan_dir, target_is_directory=True)
    ager = faceage.load("mine", device="cpu")
    assert ager.image_size == 32 and ager.labels == ["0-20", "21-30", "31-40", "41-50", "51+"]


def test_missing_models_say_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEAGE_HOME", str(tmp_path))
    monkeypatch.setattr(paths, "BUNDLED_WEIGHTS_DIR", tmp_path / "weights")
    with pytest.raises(ModelNotFoundError, match="no bundled model is installed") as e:
        faceage.load()
    assert "faceage train" in str(e.value) and "faceage export" in str(e.value) and "--model PATH" in str(e.value)
    with pytest.raises(ModelNotFoundError, match=r"no model named 'nope' in .*available: none"):
        faceage.load("nope")
    with pytest.raises(ModelNotFoundError, match="no model at"):
        faceage.load(tmp_path / "missing.pt")


def test_load_checkpoint_prefers_ema(tiny_ragan_dir, tmp_path):
    generator, meta = load_pretrained(tiny_ragan_dir)
    ema = {k: v + 0.01 for k, v in generator.state_dict().items()}
    ckpt = {**meta, "networks": {"generator": generator.state_dict(), "generator_ema": ema}, "step": 3}
    torch.save(ckpt, tmp_path / "run.pt")
    loaded = faceage.load(tmp_path / "run.pt", device="cpu")
    weights = loaded.backend.generator.state_dict()
    assert all(torch.equal(weights[k], ema[k]) for k in ema)


def test_aligned_crop_is_the_generator_output_at_the_input_size(ager):
    crop = _noise(32, 32)
    out = ager.age(crop, 45, aligned=True)
    assert ager.position(45) == pytest.approx(2.95)  # acgan5: 31-40 stands for 35.5, 41-50 for 45.5
    x = crop.astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1
    y = TorchBackend(ager.backend.generator, "fp32")(x, np.array([2.95], np.float32))[0].transpose(1, 2, 0)
    expected = np.clip(np.rint((y + 1) * 127.5), 0, 255).astype(np.int16)
    # The same network on the same pixels; float sums in another order (thread count, batch) may round a value
    # that sits on a .5 boundary the other way, so a handful of pixels may differ by one level.
    diff = np.abs(np.asarray(out).astype(np.int16) - expected)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    resized = ager.age(Image.fromarray(_noise(50, 70)), "21-30", aligned=True)
    assert resized.size == (70, 50) and resized.mode == "RGB"


def test_pil_input_is_turned_upright_by_its_exif_orientation(ager, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8  # stored landscape, shown rotated 90 degrees counter-clockwise
    Image.fromarray(_noise(24, 40)).save(tmp_path / "phone.jpg", exif=exif)
    assert ager.age(Image.open(tmp_path / "phone.jpg"), 70, aligned=True).size == (24, 40)


def test_batched_form_matches_one_by_one(ager):
    images = [_noise(32, 32, 1), _noise(40, 36, 2)]
    many = ager.age_many(images, [10, "51+"], aligned=True)
    assert [len(row) for row in many] == [2, 2]
    for image, row in zip(images, many, strict=True):
        for target, out in zip([10, "51+"], row, strict=True):
            np.testing.assert_array_equal(np.asarray(out), np.asarray(ager.age(image, target, aligned=True)))
    assert not np.array_equal(np.asarray(many[0][0]), np.asarray(many[0][1])), "targets must change the output"


def test_stream_makes_one_output_at_a_time(ager):
    calls = []
    backend = ager.backend
    counting = Ager(lambda x, t: calls.append(len(t)) or backend(x, t), ager.meta, batch_size=2)
    crop = _noise(40, 40, 5)
    aged = counting.stream(crop, [10, 30, "41-50"], aligned=True)
    assert aged.faces == 1 and calls == [], "nothing is generated before an output is asked for"
    first = next(aged.images)
    assert calls == [2], "one batch serves as many targets as fit"
    rest = list(aged.images)
    assert calls == [2, 1] and len(rest) == 2
    for target, out in zip([10, 30, "41-50"], [first, *rest], strict=True):
        np.testing.assert_array_equal(np.asarray(out), np.asarray(ager.age(crop, target, aligned=True)))
    transformed = ager.transform(crop, [10, 30, "41-50"], aligned=True)
    assert transformed.faces == 1 and len(transformed.images) == 3


def test_pasting_into_a_pil_image_gives_the_same_pixels(astronaut):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    mask = np.clip(1.5 - np.hypot(yy - 15.5, xx - 15.5) / 10, 0, 1).astype(np.float32)
    pieces = []
    for scale, x, y in [(0.25, 150, 100), (0.3, 170, 120), (0.2, 500, 500)]:  # overlapping, and one at the edge
        matrix = np.array([[scale, 0.02, -scale * x], [-0.02, scale, -scale * y]])
        pieces.append((matrix, mask, rng.uniform(0, 255, (32, 32, 3)).astype(np.float32)))
    expected = paste_faces(astronaut, pieces)
    assert (expected != astronaut).any()
    np.testing.assert_array_equal(np.asarray(paste_faces_to_image(astronaut, pieces)), expected)


def test_precision_auto_is_resolved_and_shown(tiny_ragan_dir):
    ager = faceage.load(tiny_ragan_dir, device="cpu")
    picked, why = resolve_precision("auto", "cpu")
    assert ager.backend.precision == picked and ager.backend.precision_why == why and why.startswith("auto: ")
    assert f"backend=torch/{picked}" in repr(ager)
    assert faceage.load(tiny_ragan_dir, device="cpu", precision="bf16").backend.precision == "bf16"
    assert TorchBackend(load_pretrained(tiny_ragan_dir)[0]).precision == picked


def test_an_age_between_groups_blends_them_and_a_label_is_its_group(ager):
    """37 years is its own condition, not its group's: the output at a group label equals the generator's at that
    group's index exactly, and an age between two representative ages differs from both groups' outputs."""
    crop = _noise(32, 32, 3)
    assert ager.position("31-40") == 2.0 and ager.position(37) == pytest.approx(2.15)
    assert ager.labels[ager.group(37)] == "31-40" and ager.label(37) == "37" and ager.label("31-40") == "31-40"
    at_label, at_index = (np.asarray(ager.age(crop, t, aligned=True)) for t in ("31-40", 35.5))  # 35.5: 31-40's age
    np.testing.assert_array_equal(at_label, at_index)
    generated = ager.generate(crop[None], [2, 2.15, 3])[0]
    assert np.abs(generated[1] - generated[0]).max() > 1 and np.abs(generated[1] - generated[2]).max() > 1
    at_37 = np.clip(np.rint(generated[1]), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(ager.age(crop, 37, aligned=True)), at_37)
    np.testing.assert_array_equal(np.asarray(ager.age(crop, "37", aligned=True)), at_37)


def test_bad_target_names_the_groups(ager):
    with pytest.raises(ValueError, match="0-20, 21-30, 31-40, 41-50, 51\\+"):
        ager.age(_noise(32, 32), "old", aligned=True)


def test_progression_strip_has_one_labelled_tile_per_group(ager):
    strip = ager.progression(_noise(64, 64), aligned=True)
    assert strip.size == (5 * 32, 32 + label_height(32))
    band = np.asarray(strip)[32:]
    assert (band < 128).any(), "labels must be drawn in the band under the tiles"


def test_progression_strip_takes_any_list_of_ages(ager):
    crop = _noise(32, 32, 4)
    strip = np.asarray(ager.progression(crop, [5, 37, 37.5, "51+"], aligned=True))
    assert strip.shape == (32 + label_height(32), 4 * 32, 3)
    for i, target in enumerate([5, 37, 37.5, "51+"]):
        np.testing.assert_array_equal(
            strip[:32, 32 * i : 32 * (i + 1)], np.asarray(ager.age(crop, target, aligned=True))
        )
    assert not np.array_equal(strip[:32, 32:64], strip[:32, 64:96]), "37 and 37.5 years are different conditions"
    with pytest.raises(ValueError, match="bad target age 'old'"):
        ager.progression(crop, [5, "old"], aligned=True)


def test_whole_photo_changes_only_the_face(ager, astronaut):
    from faceage.face import align, detect, unalign

    out = np.asarray(ager.age(astronaut, 70))
    assert out.shape == astronaut.shape
    faces = detect(astronaut)  # every face is aged; the suit's mission patch is not one
    assert len(faces) == 1
    outside = np.ones(astronaut.shape[:2], dtype=bool)
    for face in faces:
        crop = align(astronaut, face.landmarks, 32, preset="utkface")
        outside &= unalign(np.ones((32, 32, 3), np.float32), crop.matrix, astronaut.shape)[1] <= 0
    assert outside.mean() > 0.8
    np.testing.assert_array_equal(out[outside], astronaut[outside])
    changed = (out != astronaut).any(axis=2)
    assert changed.sum() > 500, "the face itself must be aged"
    x0, y0, x1, y1 = (int(v) for v in faces[0].box)
    assert changed[y0:y1, x0:x1].mean() > 0.3


class _Unchanged(torch.nn.Module):
    """A generator that returns its input: its change is nothing, so the photo must come back as it was."""

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return x


class _Bump(torch.nn.Module):
    """A generator that brightens the middle of its crop (a Gaussian bump, nothing at the seam ring)."""

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        s = x.shape[-1]
        r = torch.arange(s, dtype=x.dtype) - (s - 1) / 2
        bump = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * (s / 10) ** 2))
        return (x + 0.5 * bump).clamp(-1, 1)


def test_unchanged_face_pastes_back_in_place(ager, astronaut):
    """The model's change lands where the face is: none for an identity model, a bump at the crop's centre."""
    from faceage.face import invert_matrix, transform_points

    meta = {**ager.meta, "image_size": 128}
    out = np.asarray(Ager(TorchBackend(_Unchanged()), meta).age(astronaut, 70, largest=True))
    np.testing.assert_array_equal(out, astronaut)
    bumped = Ager(TorchBackend(_Bump()), meta)
    out = np.asarray(bumped.age(astronaut, 70, largest=True)).astype(int)
    diff = (out - astronaut).sum(axis=2)
    assert diff.max() > 60 and diff.min() >= -3, "the bump brightens the face and darkens nothing"
    prepared = bumped._prepare(astronaut, "RGB", aligned=False, largest=True)
    centre = transform_points(np.array([[63.5, 63.5]]), invert_matrix(prepared.aligned[0].matrix))[0]
    ys, xs = np.nonzero(diff > 0)
    middle = np.average(np.stack([xs, ys], axis=1), axis=0, weights=diff[ys, xs])
    assert np.hypot(*(middle - centre)) < 2, (middle, centre)


def test_photo_without_a_face_raises(ager):
    with pytest.raises(NoFaceError, match="no face found"):
        ager.age(np.full((120, 160, 3), 127, np.uint8), 70)


def test_colour_match_aligns_the_seam_ring():
    rng = np.random.default_rng(0)
    original = rng.integers(60, 200, (32, 32, 3)).astype(np.uint8)
    generated = original.astype(np.float32) * 0.9 + 40
    yy, xx = np.mgrid[:32, :32]
    mask = np.clip(1.5 - np.hypot(yy - 15.5, xx - 15.5) / 8, 0, 1).astype(np.float32)
    ring = (mask > 0.1) & (mask < 0.9)
    matched = match_colour(generated, original, mask)
    np.testing.assert_allclose(matched[ring].mean(0), original[ring].mean(0), atol=0.5)
    assert np.abs(generated[ring].mean(0) - original[ring].mean(0)).min() > 20


def test_inference_imports_nothing_from_training(tiny_ragan_dir):
    code = (
        "import sys, json, numpy as np, faceage\n"
        f"a = faceage.load({str(tiny_ragan_dir)!r}, device='cpu')\n"
        "a.age(np.zeros((32, 32, 3), np.uint8), 70, aligned=True)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('faceage.'))))\n"
    )
    modules = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True).stdout)
    assert "faceage.infer.ager" in modules and "faceage.models.ragan" in modules
    assert not [m for m in modules if m.startswith(("faceage.train", "faceage.data.loader"))], modules
