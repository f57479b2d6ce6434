"""The loader over a prepared cache: shapes, dtypes, ranges, groups, augmentation, masks, seeding."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from faceage.data import transforms
from faceage.data.cache import open_cache
from faceage.data.loader import Augment, FaceDataset, group_indices, make_loader
from faceage.data.prepare import PrepareConfig, prepare
from faceage.groups import get_scheme


def test_items_are_the_cached_faces_in_minus_one_to_one(synth_cache32):
    cache = open_cache(synth_cache32)
    ds = FaceDataset(cache, "train", "utk14")
    assert len(ds) == len(cache.indices("train")) > 150
    scheme = get_scheme("utk14")
    for i in (0, len(ds) - 1):
        item = ds[i]
        row = cache.indices("train")[i]
        assert set(item) == {"image", "age", "group", "index"}
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
        assert item["age"].dtype == torch.float32 and item["age"].shape == ()
        assert item["group"].dtype == torch.int64 and item["index"].dtype == torch.int64
        assert int(item["index"]) == row
        expected = torch.from_numpy(cache.images[row].astype(np.float32)).permute(2, 0, 1) / 127.5 - 1
        torch.testing.assert_close(item["image"], expected)
        assert float(item["age"]) == cache.ages[row]
        assert int(item["group"]) == scheme.group(float(cache.ages[row]))
    everything = ds.batch(np.arange(len(ds)))["image"]
    assert everything.min() >= -1 and everything.max() <= 1 and everything.min() < -0.9 and everything.max() > 0.9


def test_plain_dataloader_with_default_collate(synth_cache32):
    ds = FaceDataset(synth_cache32, "val", "acgan5")
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["group"].shape == (4,)
    torch.testing.assert_close(batch["image"], ds.batch([0, 1, 2, 3])["image"])


def test_make_loader_with_workers(synth_cache32):
    loader = make_loader(
        synth_cache32, "train", "utk14", 16, augment=True, shuffle=True, num_workers=2, drop_last=True, seed=0
    )
    train_rows = set(open_cache(synth_cache32).indices("train").tolist())
    assert len(loader) == len(train_rows) // 16
    seen = []
    for batch in loader:
        assert batch["image"].shape == (16, 3, 32, 32) and batch["image"].dtype == torch.float32
        assert batch["image"].min() >= -1 and batch["image"].max() <= 1
        assert batch["age"].dtype == torch.float32 and batch["group"].dtype == torch.int64
        assert "mask" not in batch
        seen += batch["index"].tolist()
    assert len(seen) == len(set(seen)) == len(loader) * 16 and set(seen) <= train_rows


def test_loader_is_reproducible_from_its_seed(synth_cache32):
    def first(seed):
        loader = make_loader(
            synth_cache32, "train", "utk14", 8, augment=True, shuffle=True, num_workers=0, drop_last=True, seed=seed
        )
        torch.manual_seed(123)  # the augmentation draws from torch's RNG in the process that runs it
        return next(iter(loader))

    a, b, c = first(0), first(0), first(1)
    assert (a["index"] == b["index"]).all() and torch.equal(a["image"], b["image"])
    assert not (a["index"] == c["index"]).all()


def test_flip_is_an_exact_mirror(synth_cache32):
    plain = FaceDataset(synth_cache32, "test", "utk14")
    flipped = FaceDataset(synth_cache32, "test", "utk14", augment=Augment(flip=1.0, zoom=0.0))
    idx = list(range(8))
    torch.testing.assert_close(flipped.batch(idx)["image"], plain.batch(idx)["image"].flip(-1))


def test_zoom_crops_shift_and_scale_but_keep_the_face(synth_cache32):
    plain = FaceDataset(synth_cache32, "train", "utk14")
    zoomed = FaceDataset(synth_cache32, "train", "utk14", augment=Augment(flip=0.0, zoom=0.1))
    idx = list(range(32))
    torch.manual_seed(0)
    x, y = plain.batch(idx)["image"], zoomed.batch(idx)["image"]
    assert y.min() >= -1 and y.max() <= 1
    changed = (x - y).abs().flatten(1).mean(1) > 0.005
    assert changed.sum() >= 28  # nearly every draw zooms by at least one pixel
    corr = [np.corrcoef(a.flatten(), b.flatten())[0, 1] for a, b in zip(x.numpy(), y.numpy(), strict=True)]
    assert min(corr) > 0.6  # still the same face


def test_groups_use_the_datasets_own_labels_where_the_scheme_has_them():
    ffhq10 = get_scheme("ffhq10")
    fake = SimpleNamespace(
        ages=np.array([1.0, 4.5, 75.0, 34.5, 34.5], np.float32), groups=np.array(["0-2", "3-6", "70+", "30-39", ""])
    )
    np.testing.assert_array_equal(group_indices(fake, ffhq10), [0, 1, 9, 6, 6])
    np.testing.assert_array_equal(group_indices(fake, get_scheme("acgan5")), [0, 0, 4, 2, 2])


def test_dataset_pickles_without_its_images(synth_cache32):
    ds = FaceDataset(synth_cache32, "train", "utk14")
    ds.batch([0])  # opens the memory map
    data = pickle.dumps(ds)
    assert len(data) < 100_000  # a memmap would drag every image along
    torch.testing.assert_close(pickle.loads(data)[3]["image"], ds[3]["image"])


def test_distributed_loader_uses_a_distributed_sampler(synth_cache32, tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        loader = make_loader(
            synth_cache32,
            "train",
            "utk14",
            8,
            augment=False,
            shuffle=True,
            num_workers=0,
            drop_last=True,
            distributed=True,
        )
        assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.num_replicas == 1
        loader.sampler.set_epoch(1)
        assert next(iter(loader))["image"].shape == (8, 3, 32, 32)
    finally:
        torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------------------------------
# masks, through prepare's per-image transform hook (the way --align plugs in)


def _left_half_mask(size: int) -> transforms.ImageTransform:
    """Resize like the default, skip dark photos as 'no face', and mark the left half as the face."""
    resize = transforms.center_resize(size)

    def fn(rgb: np.ndarray):
        if rgb.mean() < 90:
            raise transforms.SkipImage("no face", f"mean brightness {rgb.mean():.0f}")
        mask = np.zeros((size, size), np.float32)
        mask[:, : size // 2] = 1.0
        return resize.fn(rgb)[0], mask

    return transforms.ImageTransform(fn, masks=True, decode_size=size, info={"preset": "left-half"})


@pytest.fixture
def masked_cache(synth_cache32, tmp_path, monkeypatch) -> Path:
    monkeypatch.setitem(transforms.TRANSFORMS, "left-half", f"{__name__}:_left_half_mask")
    root = Path(open_cache(synth_cache32).manifest["root"])
    out = tmp_path / "masked"
    cfg = PrepareConfig("utkface", root, out, size=32, workers=1, progress=False, transform="left-half")
    prepare(cfg, log=lambda message: None)
    return out


def test_transform_hook_writes_masks_and_skips(masked_cache, synth_cache32):
    cache = open_cache(masked_cache)
    assert cache.align == {"preset": "left-half"} and cache.masks.shape == (len(cache), 32, 32)
    dark = cache.manifest["counts"]["skipped"]["no face"]
    assert dark > 0 and len(cache) + dark == len(open_cache(synth_cache32))
    assert (cache.masks[:, :, :16] == 255).all() and (cache.masks[:, :, 16:] == 0).all()


def test_masks_follow_the_augmentation(masked_cache):
    ds = FaceDataset(masked_cache, "train", "utk14", augment=Augment(flip=1.0, zoom=0.0))
    item = ds[0]
    assert item["mask"].shape == (1, 32, 32) and item["mask"].dtype == torch.float32
    assert (item["mask"][..., 16:] == 1).all() and (item["mask"][..., :16] == 0).all()  # flipped with the image
    loader = make_loader(masked_cache, "train", "utk14", 4, augment=True, shuffle=False, num_workers=0, drop_last=True)
    mask = next(iter(loader))["mask"]
    assert mask.shape == (4, 1, 32, 32) and mask.min() >= 0 and mask.max() <= 1


def test_bench_data_prints_both_figures(synth_cache32, capsys):
    from faceage.cli import main

    root = open_cache(synth_cache32).manifest["root"]
    argv = ["bench", "data", "--root", root, "--size", "32", "--batch-size", "8", "--batches", "5", "--workers", "2"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("prepare ") and "240 files -> 240 images, 32 px, 2 workers" in line for line in lines)
    assert any(line.startswith("loader ") and "img/s  (32 px, batch 8, 2 workers, augment)" in line for line in lines)
