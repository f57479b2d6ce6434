"""``faceage prepare --align``: aligned faces and masks in the cache, photos without a face skipped and counted."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ASTRONAUT_BOX, HOPPER_BOX, photo_chip
from PIL import Image

from faceage.cli import main
from faceage.data.cache import open_cache
from faceage.face import align_for_cache


def test_prepare_align_stores_faces_and_masks(astronaut, hopper, tmp_path, capsys):
    root = tmp_path / "utk"
    root.mkdir()
    chips = [  # 12 UTKFace-like chips of two people: zoomed in and out, mirrored
        photo_chip(photo, box, 200, zoom=zoom, flip=flip)
        for photo, box in ((astronaut, ASTRONAUT_BOX), (hopper, HOPPER_BOX))
        for zoom in (1.2, 1.5, 1.8)
        for flip in (False, True)
    ]
    for i, chip in enumerate(chips):
        Image.fromarray(chip).save(root / f"{20 + 5 * i}_1_0_2019010100000{i:04d}.jpg.chip.jpg", quality=90)
    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(root / "30_0_0_20170101000000000.jpg.chip.jpg")
    out = tmp_path / "cache"
    argv = ["prepare", "--dataset", "utkface", "--root", str(root), "--out", str(out), "--size", "64"]
    assert main([*argv, "--align", "--align-preset", "ffhq", "--workers", "1", "--quiet"]) == 0
    assert "no face" in capsys.readouterr().out

    cache = open_cache(out)
    assert cache.align["preset"] == "ffhq" and cache.align["size"] == 64
    assert cache.masks is not None and cache.masks.shape == (len(cache), 64, 64) and cache.masks.dtype == np.uint8
    assert len(cache) == 12, "the blank image is skipped, every chip kept"
    assert not any("20170101000000000" in str(p) for p in cache.paths)
    row = 0
    expected = align_for_cache(np.asarray(Image.open(cache.paths[row]).convert("RGB")), 64, "ffhq")
    np.testing.assert_array_equal(cache.images[row], expected[0])
    np.testing.assert_array_equal(cache.masks[row], expected[1])


def test_prepare_align_refuses_an_unknown_preset(synthetic_utk_dir, tmp_path, capsys):
    argv = ["prepare", "--dataset", "utkface", "--root", str(synthetic_utk_dir), "--out", str(tmp_path / "c")]
    assert main([*argv, "--align", "--align-preset", "celeba"]) == 2
    assert "celeba" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["utkface", "ffhq"])
def test_align_transform_output(astronaut, preset):
    from faceage.data.transforms import SkipImage, build_transform

    transform = build_transform("align", 96, {"preset": preset})
    face, mask = transform.fn(astronaut)
    assert face.shape == (96, 96, 3) and mask.shape == (96, 96) and transform.masks
    assert transform.info["preset"] == preset
    with pytest.raises(SkipImage, match="no face"):
        transform.fn(np.full((120, 120, 3), 30, np.uint8))
