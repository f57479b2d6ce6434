"""faceage prepare on generated UTKFace-named faces: cache contents, splits, idempotence, updates and resuming."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_synthetic_faces
from PIL import Image

from faceage.cli import main
from faceage.data import prepare as prepare_module
from faceage.data.cache import open_cache
from faceage.data.imageio import read_image
from faceage.data.prepare import PrepareConfig, assign_splits, prepare
from faceage.data.records import Record

SIZE = 32


def _link_subset(source: Path, dest: Path, names: list[str]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        (dest / name).symlink_to(source / name)
    return dest


@pytest.fixture(scope="module")
def utk_dir(tmp_path_factory) -> Path:
    """240 generated faces named the UTKFace way, all ages, at UTKFace's 200 px chip size.

    At that size the JPEG decoder's reduced-scale draft and a full-size Lanczos resize agree as closely as
    they do on real chips (a mean error under 1 level at 32 px); at 64 px the draft's 1/2 scale does not.
    """
    return write_synthetic_faces(tmp_path_factory.mktemp("utk200px"), 240, size=200)


@pytest.fixture(scope="module")
def utk_names(utk_dir) -> list[str]:
    return sorted(os.listdir(utk_dir))


@pytest.fixture
def utk200(utk_dir, utk_names, tmp_path) -> Path:
    return _link_subset(utk_dir, tmp_path / "utk", utk_names[:200])


def _cfg(root: Path, out: Path, **kw) -> PrepareConfig:
    kw.setdefault("size", SIZE)
    kw.setdefault("workers", 1)
    return PrepareConfig(dataset=kw.pop("dataset", "utkface"), root=root, out=out, progress=False, **kw)


def _quiet(message: str) -> None:
    pass


def test_cache_holds_the_resized_faces_and_their_labels(utk200, tmp_path):
    result = prepare(_cfg(utk200, tmp_path / "cache", workers=2, chunk_size=16), log=_quiet)
    assert (result.status, result.files, result.images, result.decoded) == ("built", 200, 200, 200)
    assert result.skipped == {}
    cache = open_cache(tmp_path / "cache")
    assert len(cache) == 200 and cache.size == SIZE and cache.align is None and cache.masks is None
    assert cache.images.shape == (200, SIZE, SIZE, 3) and cache.images.dtype == np.uint8
    for i in (0, 57, 199):
        path = Path(cache.paths[i])
        age, gender, race = path.name.split("_")[:3]
        assert (cache.ages[i], cache.genders[i], cache.races[i]) == (float(age), int(gender), int(race))
        expected = np.asarray(Image.fromarray(read_image(path)).resize((SIZE, SIZE), Image.Resampling.LANCZOS))
        assert np.abs(cache.images[i].astype(int) - expected).mean() < 3, path
    assert cache.identities is None
    assert set(cache.splits) == {"train", "val", "test"}
    assert sorted(np.concatenate([cache.indices(s) for s in ("train", "val", "test")])) == list(range(200))
    assert (tmp_path / "cache" / "skipped.csv").read_text().splitlines() == ["file,reason,detail"]
    assert not (tmp_path / "cache" / ".partial").exists()


def test_second_run_does_nothing_and_says_so(utk200, tmp_path, capsys):
    out = tmp_path / "cache"
    argv = ["prepare", "--dataset", "utkface", "--root", str(utk200), "--out", str(out), "--size", str(SIZE)]
    assert main([*argv, "--quiet"]) == 0
    assert "200 files -> 200 images" in capsys.readouterr().out
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main([*argv, "--quiet"]) == 0
    assert "cache up to date, nothing to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_split_is_deterministic_and_follows_the_seed(utk200, tmp_path):
    splits = {}
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        prepare(_cfg(utk200, tmp_path / name, seed=seed), log=_quiet)
        splits[name] = open_cache(tmp_path / name).splits
    assert (splits["a"] == splits["b"]).all()
    assert (splits["a"] != splits["c"]).sum() > 20
    counts = {s: int((splits["a"] == s).sum()) for s in ("train", "val", "test")}
    assert 140 <= counts["train"] <= 180 and counts["val"] >= 8 and counts["test"] >= 8, counts


def test_split_keeps_each_identity_in_one_split(utk200, tmp_path):
    names = sorted(os.listdir(utk200))
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "age", "identity"])
        w.writerows([f"utk/{n}", n.split("_")[0], f"person{i % 40}"] for i, n in enumerate(names))
    prepare(_cfg(tmp_path / "labels.csv", tmp_path / "cache", dataset="csv"), log=_quiet)
    cache = open_cache(tmp_path / "cache")
    assert len(set(cache.identities)) == 40
    for identity in set(cache.identities):
        assert len(set(cache.splits[cache.identities == identity])) == 1, identity
    assert set(cache.splits) == {"train", "val", "test"}


def test_assign_splits_keeps_a_dataset_split():
    records = [Record(Path(f"{i}.png"), 30.0, split="test" if i % 2 else None) for i in range(100)]
    splits = assign_splits(records, [f"{i}.png" for i in range(100)], (0.8, 0.1, 0.1), seed=0)
    assert (splits[1::2] == "test").all()
    assert (splits[0::2] == "train").sum() > 30


def test_new_files_are_added_without_redoing_the_old(utk_dir, utk_names, tmp_path):
    root = _link_subset(utk_dir, tmp_path / "utk", utk_names[:150])
    prepare(_cfg(root, tmp_path / "cache"), log=_quiet)
    before = open_cache(tmp_path / "cache")
    old = dict(zip(before.relpaths, before.splits, strict=True))
    _link_subset(utk_dir, root, utk_names[150:190])
    result = prepare(_cfg(root, tmp_path / "cache"), log=_quiet)
    assert (result.status, result.images, result.reused, result.decoded) == ("updated", 190, 150, 40)
    after = open_cache(tmp_path / "cache")
    assert all(old[p] == s for p, s in zip(after.relpaths, after.splits, strict=True) if p in old)
    prepare(_cfg(root, tmp_path / "fresh"), log=_quiet)
    fresh = open_cache(tmp_path / "fresh")
    assert (fresh.images[:] == after.images[:]).all() and (fresh.splits == after.splits).all()


def test_changed_size_rebuilds_and_removes_the_old_arrays(utk200, tmp_path):
    prepare(_cfg(utk200, tmp_path / "cache"), log=_quiet)
    result = prepare(_cfg(utk200, tmp_path / "cache", size=16), log=_quiet)
    assert (result.status, result.reused, result.decoded) == ("updated", 0, 200)
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.u8")) == ["images_16.u8"]
    assert open_cache(tmp_path / "cache").images.shape == (200, 16, 16, 3)


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(utk200, tmp_path, monkeypatch):
    calls = []
    real = prepare_module._process_chunk

    def interrupt_on_third_chunk(task):
        calls.append(task[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(prepare_module, "_process_chunk", interrupt_on_third_chunk)
    messages = []
    with pytest.raises(KeyboardInterrupt):
        prepare(_cfg(utk200, tmp_path / "cache", chunk_size=20), log=messages.append)
    assert "interrupted: 2 of 10 chunks" in messages[-1] and "resume" in messages[-1]
    assert not (tmp_path / "cache" / "manifest.json").exists()
    monkeypatch.setattr(prepare_module, "_process_chunk", real)
    result = prepare(_cfg(utk200, tmp_path / "cache", chunk_size=20), log=messages.append)
    assert messages[-1] == "resuming: 2 of 10 chunks were already done"
    assert (result.status, result.images, result.resumed_chunks) == ("built", 200, 2)
    prepare(_cfg(utk200, tmp_path / "straight", chunk_size=20), log=_quiet)
    resumed, straight = open_cache(tmp_path / "cache"), open_cache(tmp_path / "straight")
    assert (resumed.images[:] == straight.images[:]).all()
    assert (resumed.relpaths == straight.relpaths).all() and (resumed.splits == straight.splits).all()


def test_ctrl_c_stops_the_command_and_the_next_run_resumes(utk_dir, utk_names, tmp_path):
    root = _link_subset(utk_dir, tmp_path / "utk", utk_names)
    out = tmp_path / "cache"
    argv = [sys.executable, "-m", "faceage", "prepare", "--dataset", "utkface", "--root", str(root), "--out", str(out)]
    argv += ["--size", str(SIZE), "--workers", "2", "--chunk-size", "4", "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(list((out / ".partial" / "chunks").glob("*.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, (stdout, stderr)
    assert "of 60 chunks are saved" in stderr and "run the same command again to resume" in stderr
    again = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "resuming:" in again.stderr and "240 files -> 240 images" in again.stdout
    assert len(open_cache(out)) == 240


def test_refuses_out_inside_the_dataset_or_a_foreign_folder(utk200, tmp_path, capsys):
    assert main(["prepare", "--dataset", "utkface", "--root", str(utk200), "--out", str(utk200 / "cache")]) == 2
    assert "inside the dataset folder" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    assert main(["prepare", "--dataset", "utkface", "--root", str(utk200), "--out", str(tmp_path / "mine")]) == 2
    assert "is not a faceage cache" in capsys.readouterr().err
    assert main(["prepare", "--dataset", "morph", "--root", str(utk200), "--out", str(tmp_path / "c")]) == 2
    assert "no MORPH CSV" in capsys.readouterr().err


def test_from_cache_resamples_faces_and_masks_keeping_labels_and_splits(synth_cache32, tmp_path, capsys):
    """A cache resampled to 16 px (no decoding, no detection) holds the same rows, labels and splits; its images
    are the source's shrunk with Lanczos; masks and the alignment's size follow; the manifest names the source."""
    import json
    import shutil

    source = tmp_path / "aligned32"
    shutil.copytree(synth_cache32, source)
    cache32 = open_cache(source)
    masks = np.random.default_rng(0).integers(0, 256, (cache32.n, 32, 32), dtype=np.uint8)
    masks.tofile(source / "masks_32.u8")  # an aligned cache's soft face masks
    manifest = json.loads((source / "manifest.json").read_text())
    manifest.update(masks=True, align={"preset": "utkface", "size": 32})
    (source / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "cache16"
    assert main(["prepare", "--from-cache", str(source), "--size", "16", "--out", str(out)]) == 0
    assert "16 px" in capsys.readouterr().out
    small, big = open_cache(out), open_cache(source)
    assert small.size == 16 and small.n == big.n and small.images.shape == (big.n, 16, 16, 3)
    for column in ("ages", "splits", "genders", "races", "hashes", "relpaths"):
        assert np.array_equal(getattr(small, column), getattr(big, column)), column
    assert [len(small.indices(s)) for s in ("train", "val", "test")] == [
        len(big.indices(s)) for s in ("train", "val", "test")
    ]
    lanczos = np.asarray(Image.fromarray(np.asarray(big.images[3])).resize((16, 16), Image.Resampling.LANCZOS))
    assert np.array_equal(small.images[3], lanczos)
    assert small.masks.shape == (big.n, 16, 16) and abs(float(small.masks[5].mean()) - float(masks[5].mean())) < 8
    assert small.align == {"preset": "utkface", "size": 16}
    origin = small.manifest["resampled_from"]
    assert origin["cache"] == str(source) and origin["size"] == 32
    assert main(["prepare", "--from-cache", str(source), "--size", "16", "--out", str(out)]) == 0
    assert "up to date" in capsys.readouterr().out


def test_from_cache_errors(synth_cache32, tmp_path, capsys):
    assert main(["prepare", "--from-cache", str(synth_cache32), "--size", "32", "--out", str(tmp_path / "o")]) == 2
    assert "already holds 32 px faces" in capsys.readouterr().err
    assert main(["prepare", "--from-cache", str(tmp_path), "--size", "16", "--out", str(tmp_path / "o")]) == 2
    assert "not a finished faceage cache" in capsys.readouterr().err
    assert main(["prepare", "--out", str(tmp_path / "o")]) == 2
    assert "give --dataset and --root" in capsys.readouterr().err
    assert (
        main(["prepare", "--from-cache", str(synth_cache32), "--size", "16", "--out", str(tmp_path / "o"), "--align"])
        == 2
    )
    assert "keeps the source cache's alignment and split" in capsys.readouterr().err
