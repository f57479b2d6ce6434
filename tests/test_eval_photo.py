"""Eval's checks through the public inference API (grayscale in -> out, fine detail kept), on stand-in agers
with known behaviour and on the bundled example photo (public domain, ships with faceage)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from faceage import paths
from faceage.eval import photo_checks as P


class _Ager:
    """A stand-in for ``faceage.load(...)``: ``age`` applies ``change`` to the whole image, at ``image_size``."""

    image_size = 32

    def __init__(self, change) -> None:
        self.change, self.calls = change, []

    def age(self, image, to, *, aligned: bool = False, largest: bool = False) -> Image.Image:
        self.calls.append((to, aligned))
        return Image.fromarray(self.change(np.asarray(image)))


def _tint(x: np.ndarray) -> np.ndarray:
    return np.clip(x.astype(int) + np.array([6, 0, -2]), 0, 255).astype(np.uint8)


def _soft(x: np.ndarray) -> np.ndarray:
    """A face pasted back at 32 px: the whole image down to a quarter and back up."""
    h, w = x.shape[:2]
    small = Image.fromarray(x).resize((w // 4, h // 4), Image.Resampling.LANCZOS)
    return np.asarray(small.resize((w, h), Image.Resampling.LANCZOS))


@pytest.fixture(scope="module")
def faces(astronaut):
    from conftest import ASTRONAUT_BOX, photo_chip

    return np.stack([photo_chip(astronaut, ASTRONAUT_BOX, 32, zoom=z) for z in (1.3, 1.6, 1.9)])


def test_grayscale_check_passes_grey_outputs_and_catches_a_tint(faces):
    keep = _Ager(lambda x: x)
    m = P.grayscale_check(keep, faces, ["0-20", "51+"])
    assert m["outputs"] == 6 and m["max_chroma"] == 0 and m["share_gray"] == 1.0 and m["inputs_max_chroma"] == 0
    assert m["real_faces_median_max_chroma"] > 20  # the colour originals
    assert keep.calls == [("0-20", True), ("51+", True)] * 3  # aligned crops, one call per target
    m = P.grayscale_check(_Ager(_tint), faces, ["51+"])
    assert m["max_chroma"] == 8 and m["share_gray"] == 0.0


def test_detail_check_keeps_detail_of_a_full_resolution_paste_not_of_a_soft_one():
    side = 512  # the example photo as it ships: small enough for a test, same code path as 2048
    keep = P.detail_check(_Ager(lambda x: x), paths.EXAMPLE_PHOTO, ["5", "70"], side=side)
    x0, y0, x1, y1 = keep["face_box"]
    assert 0 <= x0 < x1 <= side and 0 <= y0 < y1 <= side and (x1 - x0) > 40
    for variant in ("upscaled", "upscaled_grain"):
        assert keep[variant]["per_target"] == {"5": pytest.approx(1.0), "70": pytest.approx(1.0)}
        assert keep[variant]["unchanged"] == pytest.approx(1.0) and keep[variant]["round_trip_size"] == 32
    # Grain is detail a 32 px round trip of the face cannot keep; the plain photo has more of its own at 512 px.
    assert keep["upscaled_grain"]["round_trip"] < 0.5
    soft = P.detail_check(_Ager(_soft), paths.EXAMPLE_PHOTO, ["70"], side=side)
    assert soft["upscaled_grain"]["min"] < 0.5 < P.DETAIL_TARGET < keep["upscaled_grain"]["min"]
    with pytest.raises(ValueError, match="no face"):
        P.detail_check(_Ager(lambda x: x), np.full((300, 300, 3), 128, np.uint8), ["70"], side=300)


def test_upscale_and_grain_are_what_they_say():
    photo = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    assert P.upscale(photo, 120).shape == (80, 120, 3)
    grey = np.full((64, 64, 3), 128, np.uint8)
    grainy = P.add_grain(grey, 6.0)
    assert np.array_equal(grainy, P.add_grain(grey, 6.0)) and 4 < grainy[..., 0].std() < 8
    assert (grainy[..., 0] == grainy[..., 2]).all()  # grey grain: no colour added
