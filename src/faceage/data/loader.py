"""Training batches from a prepared cache: a torch Dataset whose work is done a batch at a time.

A GPU eats thousands of 128 px faces a second, so the per-image cost must be tiny. The DataLoader
asks for a whole batch at once (``__getitems__``): one fancy index into the memory-mapped uint8
array, then augmentation on uint8 in channels-last layout, where torch's bilinear resize is
vectorised. ``make_loader``'s workers ship these uint8 batches (a quarter of the bytes of float32,
and moving bytes between processes costs more than computing them) and the main process, or the
GPU with ``device=``, turns them into float in [-1, 1].

Augmentation (``augment=True``): a horizontal flip with probability 0.5 and a random zoom-in crop,
its side 1/(1 + U(0, 0.1)) of the image at a random position, resized back to S. That is a shift of
up to ~5% and a scale jitter of up to 10% without inventing any border pixels; an unaugmented image
is one possible draw (zoom 1), so test-time faces stay inside the training distribution.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from faceage.data.cache import FaceCache, open_cache
from faceage.groups import AgeScheme, get_scheme


@dataclass(frozen=True)
class Augment:
    """Per-image random horizontal flip and zoom-in crop (shift and scale jitter)."""

    flip: float = 0.5  # probability of a horizontal flip
    zoom: float = 0.1  # crop side is S / (1 + U(0, zoom)), at a uniformly random position


class FaceDataset(Dataset):
    """One split of a prepared cache: dicts with image [3,S,S] in [-1, 1], age, group, index (and mask).

    ``index`` is the row in the cache (``cache.paths[index]`` is the source photo). ``group`` comes
    from ``scheme``: the dataset's own group label where it has one the scheme knows (FFHQ-Aging),
    otherwise the group of the age.
    """

    def __init__(
        self,
        cache: FaceCache | str | os.PathLike,
        split: str,
        scheme: AgeScheme | str,
        augment: bool | Augment = False,
    ) -> None:
        self.cache = cache if isinstance(cache, FaceCache) else open_cache(cache)
        self.scheme = get_scheme(scheme) if isinstance(scheme, str) else scheme
        self.split = split
        self.augment = Augment() if augment is True else (augment or None)
        self.rows = self.cache.indices(split)
        self.ages = torch.from_numpy(self.cache.ages[self.rows])
        self.groups = torch.from_numpy(group_indices(self.cache, self.scheme)[self.rows])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self._items([i])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """A batch of items (the DataLoader calls this once per batch instead of __getitem__ per item)."""
        return self._items(indices)

    def _items(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        batch = self.batch(indices)
        return [{k: v[j] for k, v in batch.items()} for j in range(len(indices))]

    def batch(self, indices: list[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """The items ``indices`` already stacked: image [B,3,S,S] float32 in [-1, 1], age, group, index."""
        return to_float(self.raw_batch(indices))

    def raw_batch(self, indices: list[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """Like :meth:`batch` but image (and mask) stay uint8 0-255: 4x less to move between processes."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        rows = self.rows[idx.numpy()]
        # uint8 B x S x S x 3 seen as B x 3 x S x S channels-last: no copy
        images = torch.from_numpy(self.cache.images[rows]).permute(0, 3, 1, 2)
        assert images.shape[1:] == (3, self.cache.size, self.cache.size), images.shape
        masks = self.cache.masks
        masks = torch.from_numpy(masks[rows])[:, None] if masks is not None else None
        if self.augment is not None:
            images, masks = augment_batch(images, masks, self.augment)
        out = {
            "image": images.contiguous(),
            "age": self.ages[idx],
            "group": self.groups[idx],
            "index": torch.from_numpy(rows),
        }
        if masks is not None:
            out["mask"] = masks.contiguous()
        return out


def to_float(batch: dict[str, torch.Tensor], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Turn a raw uint8 batch into the float one (image in [-1, 1], mask in [0, 1]), on ``device`` if given."""
    out = {k: v.to(device, non_blocking=True) if device is not None else v for k, v in batch.items()}
    out["image"] = _scale(out["image"], 1 / 127.5, -1.0)  # 0 -> -1 and 255 -> 1 exactly
    if "mask" in out:
        out["mask"] = _scale(out["mask"], 1 / 255, 0.0)
    return out


def _scale(x: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    """float32 ``x * scale + shift`` of a uint8 tensor."""
    if x.device.type != "cpu":
        return x.float().mul_(scale).add_(shift)
    # On the CPU numpy does this single-threaded: torch would spread a few ms of work over threads that
    # spin-wait against the DataLoader's workers for the same cores.
    out = np.multiply(x.numpy(), np.float32(scale), dtype=np.float32)
    return torch.from_numpy(np.add(out, np.float32(shift), out=out))


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor | None, augment: Augment
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Flip and zoom-crop each image of a uint8 batch [B,C,S,S] (and its mask) with its own random draw."""
    b, c, s, _ = images.shape
    sides = (s / (1 + torch.rand(b) * augment.zoom)).round().long().clamp(1, s).tolist()
    xs, ys = torch.rand(b).tolist(), torch.rand(b).tolist()
    flips = (torch.rand(b) < augment.flip).tolist()
    # same (channels-last) layout as the input, so that each row below is a plain copy
    out = torch.empty_like(images)
    out_masks = torch.empty_like(masks) if masks is not None else None
    for i, side in enumerate(sides):
        x0, y0 = int(xs[i] * (s - side + 1)), int(ys[i] * (s - side + 1))
        out[i : i + 1] = _crop(images[i : i + 1], x0, y0, side, s, flips[i])
        if masks is not None:
            out_masks[i : i + 1] = _crop(masks[i : i + 1], x0, y0, side, s, flips[i])
    return out, out_masks


def _crop(x: torch.Tensor, x0: int, y0: int, side: int, size: int, flip: bool) -> torch.Tensor:
    x = x[:, :, y0 : y0 + side, x0 : x0 + side]
    if side != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return x.flip(-1) if flip else x


class FaceLoader(DataLoader):
    """A DataLoader whose workers ship uint8 batches, made float here: moving floats between processes
    costs more than computing them."""

    def __init__(self, dataset: FaceDataset, *, device: torch.device | str | None = None, **kwargs) -> None:
        super().__init__(_RawBatches(dataset), collate_fn=_first, **kwargs)
        self.device = device

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in super().__iter__():
            yield to_float(batch, self.device)


class _RawBatches(FaceDataset):
    """A FaceDataset whose ``__getitems__`` returns one already-stacked uint8 batch (for FaceLoader)."""

    def __init__(self, dataset: FaceDataset) -> None:
        self.__dict__.update(dataset.__dict__)

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        return [self.raw_batch(indices)]


def _first(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return batches[0]


def group_indices(cache: FaceCache, scheme: AgeScheme) -> np.ndarray:
    """Age group of every row of ``cache`` under ``scheme`` (int64 [N])."""
    groups = np.searchsorted(np.asarray(scheme.lower), cache.ages, side="right").astype(np.int64) - 1
    labels = set(scheme.labels)
    for label in set(cache.groups.tolist()) & labels:
        groups[cache.groups == label] = scheme.labels.index(label)
    return groups


def make_loader(
    cache: FaceCache | str | os.PathLike,
    split: str,
    scheme: AgeScheme | str,
    batch_size: int,
    *,
    augment: bool | Augment,
    shuffle: bool,
    num_workers: int = 2,
    drop_last: bool,
    seed: int = 0,
    distributed: bool = False,
    device: torch.device | str | None = None,
) -> DataLoader:
    """A DataLoader over one split of a cache; batches are dicts of stacked tensors.

    Shuffling and augmentation are reproducible from ``seed`` (workers are seeded from it). With
    ``distributed=True`` each rank reads its own shard through a DistributedSampler: call
    ``loader.sampler.set_epoch(epoch)`` every epoch, as with any DistributedSampler. Workers send
    uint8 batches; they become float in the main process, or on ``device`` when given (e.g. ``"cuda"``:
    a quarter of the bytes cross the bus, and the conversion runs on the GPU).
    """
    dataset = FaceDataset(cache, split, scheme, augment=augment)
    sampler = None
    rank = 0
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        rank = sampler.rank
    return FaceLoader(
        dataset,
        device=device,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed + rank),
        persistent_workers=num_workers > 0,
        pin_memory=device is not None and torch.device(device).type == "cuda",
    )
