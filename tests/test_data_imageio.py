"""read_image turns every kind of photo into H x W x 3 uint8 RGB, and names the problem with bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from faceage.data.imageio import ImageError, open_rgb, read_image


def _two_tone(width: int = 40, height: int = 20) -> np.ndarray:
    """Left half red, right half blue."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 2, 0] = 255
    a[:, width // 2 :, 2] = 255
    return a


def test_real_utkface_chip(utkface_dir):
    image = read_image(utkface_dir / "100_0_0_20170112213500903.jpg.chip.jpg")
    assert image.shape == (200, 200, 3) and image.dtype == np.uint8
    assert 30 < image.mean() < 230  # a photo, not a blank


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to display
    Image.fromarray(_two_tone()).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    image = read_image(tmp_path / "rot.jpg")
    assert image.shape == (40, 20, 3)  # portrait once upright
    top, bottom = image[:15].mean((0, 1)), image[25:].mean((0, 1))
    assert top[0] > 200 and top[2] < 50, top  # the stored left (red) edge is now on top
    assert bottom[2] > 200 and bottom[0] < 50, bottom
    _, full_size = open_rgb(tmp_path / "rot.jpg")
    assert full_size == (20, 40)  # (width, height) upright


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (10, 1))
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png")
    assert image.shape == (10, 64, 3)
    assert (image[..., 0] == gray).all() and (image[..., 1] == gray).all() and (image[..., 2] == gray).all()


def test_cmyk_jpeg_keeps_its_colours(tmp_path, astronaut):
    Image.fromarray(astronaut).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    image = read_image(tmp_path / "cmyk.jpg")
    assert image.shape == astronaut.shape
    assert np.abs(image.astype(int) - astronaut).mean() < 6


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4] = (10, 20, 30, 255)  # opaque top half
    rgba[4:] = (10, 20, 30, 0)  # transparent bottom half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert (image[:4] == (10, 20, 30)).all()
    assert (image[4:] == 255).all()


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 64, 257 * 128, 65535]], np.uint16).repeat(4, 0)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    image = read_image(tmp_path / "deep.png")
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image[0, :, 0], [0, 64, 128, 255])


def test_palette_png(tmp_path):
    Image.fromarray(_two_tone()).convert("P").save(tmp_path / "p.png")
    image = read_image(tmp_path / "p.png")
    assert image.shape == (20, 40, 3) and image[0, 0, 0] > 200


def test_truncated_jpeg(tmp_path, astronaut):
    Image.fromarray(astronaut).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as e:
        read_image(tmp_path / "half.jpg")
    assert e.value.reason == "truncated"
    assert "half.jpg" in str(e.value)


@pytest.mark.parametrize("content", [b"", b"this is not an image" * 20, b"\xff\xd8\xff" + bytes(100)])
def test_garbage_is_unreadable(tmp_path, content):
    (tmp_path / "x.jpg").write_bytes(content)
    with pytest.raises(ImageError) as e:
        read_image(tmp_path / "x.jpg")
    assert e.value.reason in ("unreadable", "truncated")
    assert e.value.path.endswith("x.jpg")


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file") as e:
        read_image(tmp_path / "nope.jpg")
    assert e.value.reason == "unreadable"


def test_draft_decodes_large_jpeg_at_reduced_scale(tmp_path, astronaut):
    Image.fromarray(astronaut).resize((1024, 1024)).save(tmp_path / "big.jpg")
    image, full_size = open_rgb((tmp_path / "big.jpg").read_bytes(), reduce_to=128)
    assert full_size == (1024, 1024)
    assert image.size == (128, 128)  # 1/8 scale straight out of the decoder
    image, _ = open_rgb(tmp_path / "big.jpg", reduce_to=300)
    assert image.size == (512, 512)  # never below the requested size
