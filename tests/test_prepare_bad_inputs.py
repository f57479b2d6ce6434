"""Bad input never crashes prepare and never vanishes: every file is cached, or counted and reported."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceage.cli import main
from faceage.data.cache import open_cache


def _save(path: Path, array: np.ndarray, mode: str | None = None, **kw) -> None:
    Image.fromarray(array, mode).save(path, **kw) if mode else Image.fromarray(array).save(path, **kw)


@pytest.fixture
def zoo(tmp_path, astronaut) -> Path:
    """A folder with one of every kind of file we have met, and labels.csv listing them."""
    d = tmp_path / "zoo"
    d.mkdir()
    face = np.asarray(Image.fromarray(astronaut[:256, 128:384]).resize((96, 96)))
    _save(d / "good.jpg", face, quality=90)
    _save(d / "gray.jpg", np.asarray(Image.fromarray(face).convert("L")))
    Image.fromarray(face).convert("CMYK").save(d / "cmyk.jpg")
    rgba = np.dstack([face, np.full(face.shape[:2], 255, np.uint8)])
    rgba[:, :10, 3] = 0
    _save(d / "rgba.png", rgba, "RGBA")
    _save(d / "deep.png", np.full((64, 64), 32768, np.uint16))
    upright = np.zeros((40, 80, 3), np.uint8)  # stored sideways: red left half, blue right half
    upright[:, :40, 0] = 255
    upright[:, 40:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(upright).save(d / "rotated.jpg", exif=exif.tobytes(), quality=95)
    _save(d / "tiny.jpg", face[:10, :10].copy())
    data = (d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "garbage.jpg").write_bytes(np.random.default_rng(0).bytes(3000))
    shutil.copy(d / "good.jpg", d / "copy.jpg")
    _save(d / "twin_a.jpg", face[:, ::-1].copy())
    shutil.copy(d / "twin_a.jpg", d / "twin_b.jpg")
    rows = [
        ["good.jpg", 30, "a"],
        ["gray.jpg", 31, "b"],
        ["cmyk.jpg", 32, "c"],
        ["rgba.png", 33, "d"],
        ["deep.png", 34, "e"],
        ["rotated.jpg", 35, "f"],
        ["tiny.jpg", 36, "g"],
        ["truncated.jpg", 37, "h"],
        ["garbage.jpg", 38, "i"],
        ["copy.jpg", 30, "a"],
        ["twin_a.jpg", 20, "j"],
        ["twin_b.jpg", 60, "j"],
        ["good.jpg", "thirty", "a"],
        ["missing.jpg", 40, "k"],
    ]
    with open(d / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "age", "identity"])
        w.writerows(rows)
    return d


def test_every_kind_of_bad_input_is_counted_and_reported(zoo, tmp_path, capsys):
    out = tmp_path / "cache"
    argv = ["prepare", "--dataset", "csv", "--root", str(zoo / "labels.csv"), "--out", str(out)]
    assert main([*argv, "--size", "32", "--quiet", "--workers", "2"]) == 0
    summary = capsys.readouterr().out
    assert "14 files -> 6 images" in summary and "8 skipped" in summary
    expected = {
        ("truncated.jpg", "truncated"),
        ("garbage.jpg", "unreadable"),
        ("tiny.jpg", "too small"),
        ("good.jpg", "duplicate"),  # the first copy in path order, copy.jpg, is kept
        ("twin_a.jpg", "duplicate, conflicting labels"),
        ("twin_b.jpg", "duplicate, conflicting labels"),
        ("labels.csv:14", "malformed label"),
        ("labels.csv:15", "missing file"),
    }
    with open(out / "skipped.csv", newline="") as f:
        report = list(csv.DictReader(f))
    assert {(Path(r["file"]).name, r["reason"]) for r in report} == expected
    assert all(r["detail"] for r in report)
    for reason, count in [("duplicate, conflicting labels", 2), ("truncated", 1), ("too small", 1)]:
        assert f"skipped {count:6d}  {reason}" in summary

    cache = open_cache(out)
    names = [Path(p).name for p in cache.paths]
    assert names == ["cmyk.jpg", "copy.jpg", "deep.png", "gray.jpg", "rgba.png", "rotated.jpg"]
    rotated = cache.images[names.index("rotated.jpg")].astype(int)
    assert rotated[:12, :, 0].mean() > 200 and rotated[:12, :, 2].mean() < 60  # upright: red on top
    assert rotated[-12:, :, 2].mean() > 200 and rotated[-12:, :, 0].mean() < 60
    deep = cache.images[names.index("deep.png")]
    assert np.abs(deep.astype(int) - 128).max() <= 1  # 16-bit mid-grey scaled, not clipped to white
    gray = cache.images[names.index("gray.jpg")]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    good = cache.images[names.index("copy.jpg")].astype(int)
    assert np.abs(cache.images[names.index("cmyk.jpg")].astype(int) - good).mean() < 8
    assert (cache.images[names.index("rgba.png")][:, :2] > 245).all()  # transparent strip is white


def test_utkface_folder_with_broken_files(tmp_path, astronaut):
    d = tmp_path / "utk"
    d.mkdir()
    face = np.asarray(Image.fromarray(astronaut).resize((64, 64)))
    for i, name in enumerate(["25_0_0_20170101000000001", "40_1_2_20170101000000002", "61_1_20170109150557335"]):
        _save(d / f"{name}.jpg.chip.jpg", np.roll(face, i * 7, axis=1).copy())
    data = (d / "25_0_0_20170101000000001.jpg.chip.jpg").read_bytes()
    (d / "30_0_0_20170101000000003.jpg.chip.jpg").write_bytes(data[:500])
    (d / "31_0_0_20170101000000004.jpg.chip.jpg").write_bytes(b"")
    (d / "README.txt").write_text("UTKFace")
    out = tmp_path / "cache"
    argv = ["prepare", "--dataset", "utkface", "--root", str(d), "--out", str(out), "--size", "32", "--quiet"]
    assert main(argv) == 0
    manifest_counts = open_cache(out).manifest["counts"]
    assert manifest_counts["files"] == 6
    assert manifest_counts["skipped"] == {
        "truncated": 1,
        "unreadable": 1,
        "malformed label": 1,
        "not an image file": 1,
    }
    assert len(open_cache(out)) == 2
