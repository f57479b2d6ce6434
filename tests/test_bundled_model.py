"""The bundled models (the default RAGAN and AcGAN): what ships, ageing the bundled photo, and ageing real test
faces."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from faceage import paths
from faceage.cli import main
from faceage.infer.resolve import resolve_model

ROOT = paths.PACKAGE_DIR.parents[1]


def test_bundled_model_and_judge_ship_small_with_a_model_card():
    model = resolve_model(None)
    assert model == paths.BUNDLED_WEIGHTS_DIR / "default"
    shipped = [p for p in paths.BUNDLED_WEIGHTS_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in shipped) <= 25 * 2**20
    meta = json.loads((model / "config.json").read_text())
    assert meta["model"] == "ragan" and meta["image_size"] == 128 and meta["scheme"]["name"] == "ffhq10"
    assert meta["align"]["preset"] == "utkface"  # trained on crops aligned the way `faceage age` aligns photos
    card = (ROOT / "MODEL_CARD.md").read_text()
    assert "non-commercial" in card and "faceage eval" in card


def test_demo_ages_the_bundled_photo_and_leaves_the_background_alone(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    written = {p.name for p in tmp_path.iterdir()}
    assert written == {f"astronaut_to{a}.png" for a in (5, 20, 40, 70)} | {"astronaut_progression.png"}
    photo = np.asarray(Image.open(paths.EXAMPLE_PHOTO).convert("RGB")).astype(np.int16)
    young, old = (np.asarray(Image.open(tmp_path / f"astronaut_to{a}.png")).astype(np.int16) for a in (5, 70))
    for aged in (young, old):
        assert aged.shape == photo.shape
        changed = np.abs(aged - photo).max(axis=2) > 0
        assert changed.mean() < 0.25  # only the face region is replaced
        rows, cols = np.nonzero(changed)
        assert rows.min() > 40 and rows.max() < 220 and cols.min() > 130 and cols.max() < 320  # the face only
    face = np.abs(old - young).max(axis=2) > 0
    assert np.abs(old - young)[face].mean() > 8  # 5 and 70 give visibly different faces (17 measured)


@pytest.fixture(scope="module")
def held_out_faces(utkface_dir):
    """64 UTKFace chips (all ages) outside the training split of the bundled model and judge: (ages, images)."""
    from faceage.nn.age_estimator import training_ids

    trained = training_ids(paths.BUNDLED_WEIGHTS_DIR / "age-estimator")
    names = sorted(n for n in os.listdir(utkface_dir) if n.count("_") == 3 and n.endswith(".jpg.chip.jpg"))
    picked = [n for n in names if n not in trained][::60][:64]
    ages = np.array([int(n.split("_")[0]) for n in picked])
    return ages, [np.asarray(Image.open(utkface_dir / n).convert("RGB")) for n in picked]


@pytest.fixture(scope="module")
def estimated_ages():
    """The bundled judge as a function: uint8 faces [N,H,W,3] -> estimated ages [N]."""
    from faceage.eval.runner import _judge_input
    from faceage.nn.age_estimator import load_estimator

    estimator, _ = load_estimator(paths.BUNDLED_WEIGHTS_DIR / "age-estimator")
    return lambda images: estimator.predict(_judge_input(np.stack(images), 128, "cpu"))[0].numpy()


def test_bundled_age_estimator_judges_held_out_faces(held_out_faces, estimated_ages):
    ages, images = held_out_faces
    assert np.abs(estimated_ages(images) - ages).mean() < 8  # its test MAE is 5.6 years


def _age_adults(model: str | None, held_out_faces, targets: list[str]):
    """Up to 24 held-out faces aged 20-50 in which the photo path finds a face, aged to the two ``targets``:
    (inputs, young outputs, old outputs)."""
    import faceage
    from faceage.infer import NoFaceError

    ager = faceage.load(model, device="cpu")
    inputs, young, old = [], [], []
    for age, chip in zip(*held_out_faces, strict=True):
        if not 20 <= age <= 50 or len(inputs) == 24:
            continue
        try:
            y, o = ager.transform(chip, targets, largest=True).images
        except NoFaceError:
            continue
        inputs.append(chip)
        young.append(np.asarray(y))
        old.append(np.asarray(o))
    assert len(inputs) >= 15
    return inputs, young, old


def _verified(inputs: list[np.ndarray], outputs: list[np.ndarray]) -> int:
    """How many outputs dlib verifies as their input's person (< 0.6); an output with no face for dlib is not."""
    from faceage.face.identity import dlib_embeddings, embedding_distance, face_chip

    found = [i for i, image in enumerate(outputs) if face_chip(image) is not None]
    distance = embedding_distance(
        dlib_embeddings([inputs[i] for i in found], aligned=False),
        dlib_embeddings([outputs[i] for i in found], aligned=False),
    )
    return int((distance < 0.6).sum())


def test_bundled_model_ages_real_faces_older_and_younger_keeping_identity(held_out_faces, estimated_ages):
    inputs, young, old = _age_adults(None, held_out_faces, ["5", "70"])
    before, younger, older = (estimated_ages(images).mean() for images in (inputs, young, old))
    assert younger < before - 10 and older > before + 20  # measured: 25.5 years -> 9.9 (to 5), 53.5 (to 70)
    assert _verified(inputs, old) >= 0.8 * len(old)  # measured 22 of 24 (one output has no face for dlib)


def _ages_the_photo_inside_the_face_only(model: str, young_age: int, old_age: int, tmp_path) -> None:
    """`faceage age` on the bundled photo with ``model`` changes only the face box, and the two ages differ."""
    argv = ["age", str(paths.EXAMPLE_PHOTO), "--model", model, "--to", str(young_age), "--to", str(old_age)]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    photo = np.asarray(Image.open(paths.EXAMPLE_PHOTO).convert("RGB")).astype(np.int16)
    young, old = (
        np.asarray(Image.open(tmp_path / f"astronaut_to{a}.png")).astype(np.int16) for a in (young_age, old_age)
    )
    for aged in (young, old):
        changed = np.abs(aged - photo).max(axis=2) > 0
        rows, cols = np.nonzero(changed)
        assert rows.min() > 40 and rows.max() < 220 and cols.min() > 130 and cols.max() < 320  # the face only
    face = np.abs(old - young).max(axis=2) > 0
    assert np.abs(old - young)[face].mean() > 3  # different faces


def test_bundled_acgan_ships_small_and_ages_the_bundled_photo_inside_the_face_only(tmp_path):
    """`--model acgan`: the AcGAN trained on UTKFace (see MODEL_CARD.md), through the photo pipeline."""
    assert resolve_model("acgan") == paths.BUNDLED_WEIGHTS_DIR / "acgan"
    meta = json.loads((paths.BUNDLED_WEIGHTS_DIR / "acgan" / "config.json").read_text())
    assert meta["model"] == "acgan" and meta["image_size"] == 128 and meta["scheme"]["name"] == "acgan5"
    assert meta["align"]["preset"] == "utkface" and meta["model_config"]["w_bg"] > 0
    _ages_the_photo_inside_the_face_only("acgan", 10, 60, tmp_path)


def test_bundled_acgan_ages_real_faces_in_order_keeping_identity(held_out_faces, estimated_ages):
    inputs, young, old = _age_adults("acgan", held_out_faces, ["0-20", "51+"])
    before, younger, older = (estimated_ages(images).mean() for images in (inputs, young, old))
    assert younger < before - 6 and older > before + 10  # measured: 25.5 years -> 13.7 (to 0-20), 43.9 (to 51+)
    assert _verified(inputs + inputs, young + old) >= 0.8 * 2 * len(inputs)  # measured 44 of 48


def test_bundled_cycle_ships_in_float16_and_ages_the_bundled_photo_inside_the_face_only(tmp_path):
    """`--model cycle`: the cycle age-modulator GAN trained on UTKFace (see MODEL_CARD.md), its forward generator
    stored as float16 to fit the package, through the photo pipeline."""
    from safetensors.torch import load_file

    folder = paths.BUNDLED_WEIGHTS_DIR / "cycle"
    assert resolve_model("cycle") == folder
    meta = json.loads((folder / "config.json").read_text())
    assert meta["model"] == "cycle" and meta["image_size"] == 128 and meta["scheme"]["name"] == "utk14"
    assert meta["align"]["preset"] == "utkface" and meta["model_config"]["w_rec"] > 0
    assert meta["model_config"]["age_sigma"] > 0  # the stages in MODEL_CARD.md
    stored = load_file(str(folder / "model.safetensors"))
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    _ages_the_photo_inside_the_face_only("cycle", 8, 65, tmp_path)


def test_bundled_cycle_ages_real_faces_in_order_keeping_identity(held_out_faces, estimated_ages):
    inputs, young, old = _age_adults("cycle", held_out_faces, ["6-10", "81-90"])
    before, younger, older = (estimated_ages(images).mean() for images in (inputs, young, old))
    assert younger < before - 3 and older > before + 10  # measured: 25.5 years -> 20.0 (to 6-10), 42.4 (to 81-90)
    assert _verified(inputs + inputs, young + old) >= 0.8 * 2 * len(inputs)  # measured 48 of 48
