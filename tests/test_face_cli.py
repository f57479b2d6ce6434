"""``faceage face embed`` and ``faceage face verify`` on real images, including bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ASTRONAUT_BOX, HOPPER_BOX, photo_chip
from PIL import Image

from faceage.cli import main


@pytest.fixture(scope="module")
def images(astronaut, hopper, tmp_path_factory):
    folder = tmp_path_factory.mktemp("faces")
    paths = {
        "astronaut": folder / "astronaut.png",
        "astronaut_grey": folder / "astronaut_grey.jpg",
        "hopper": folder / "hopper.jpg",
        "astronaut_chip": folder / "astronaut_chip.jpg",
        "hopper_chip": folder / "hopper_chip.jpg",
        "blank": folder / "blank.png",
        "broken": folder / "broken.jpg",
    }
    Image.fromarray(astronaut).save(paths["astronaut"])
    Image.fromarray(astronaut).convert("L").save(paths["astronaut_grey"], quality=90)
    Image.fromarray(hopper).save(paths["hopper"], quality=90)
    Image.fromarray(photo_chip(astronaut, ASTRONAUT_BOX, 200)).save(paths["astronaut_chip"], quality=90)
    Image.fromarray(photo_chip(hopper, HOPPER_BOX, 200, flip=True)).save(paths["hopper_chip"], quality=90)
    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(paths["blank"])
    paths["broken"].write_bytes(b"not a jpeg at all")
    return {k: str(v) for k, v in paths.items()}


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["face", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_embed_json_reports_each_image(capsys, images):
    argv = [images["astronaut"], images["blank"], images["broken"], images["astronaut_grey"], "--json"]
    rc, out, err = _run(capsys, "embed", *argv)
    assert rc == 2, "some inputs failed"
    results = json.loads(out)
    assert [r["input"] for r in results] == argv[:-1]
    assert [r["ok"] for r in results] == [True, False, False, True]
    assert len(results[0]["embedding"]) == 128 and results[0]["error"] is None
    assert results[1]["embedding"] is None and "blank.png" in results[1]["error"] and "no face" in results[1]["error"]
    assert "broken.jpg" in results[2]["error"] and "blank.png" in err
    distance = np.linalg.norm(np.subtract(results[0]["embedding"], results[3]["embedding"]))
    assert distance < 0.6, "the grey copy is the same person"


def test_embed_backends_agree_and_aligned_takes_the_whole_image(capsys, images):
    chips = [images["astronaut_chip"], images["hopper_chip"]]  # UTKFace-like 200 px chips
    rc, out, _ = _run(capsys, "embed", *chips, "--aligned", "--json")
    assert rc == 0
    dlib_vectors = np.array([r["embedding"] for r in json.loads(out)])
    rc, out, _ = _run(capsys, "embed", *chips, "--aligned", "--backend", "torch", "--json")
    assert rc == 0
    torch_vectors = np.array([r["embedding"] for r in json.loads(out)])
    assert np.abs(dlib_vectors - torch_vectors).max() < 1e-3


def test_verify(capsys, images):
    rc, out, _ = _run(capsys, "verify", images["astronaut"], images["astronaut_grey"])
    assert rc == 0 and "same" in out and "threshold 0.6" in out
    rc, out, _ = _run(capsys, "verify", images["astronaut"], images["hopper"], "--json")
    result = json.loads(out)
    assert rc == 0 and result["same"] is False and result["distance"] > 0.6
    rc, _, err = _run(capsys, "verify", images["astronaut"], images["blank"])
    assert rc == 2 and "blank.png" in err and "no face" in err
