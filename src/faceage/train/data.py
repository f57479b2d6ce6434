"""Training batches whose order is a function of (seed, epoch) alone, so a resumed run reads what an
uninterrupted one would have read.

``faceage.data.loader.make_loader`` shuffles with a generator that has moved on by the time a run stops;
here the permutation of epoch ``e`` is drawn from ``seed`` and ``e`` only, and a run resumed at step
``k`` starts epoch ``k // steps_per_epoch`` at its ``k % steps_per_epoch``-th batch without reading the
batches before it. Augmentation (the data package's flip and zoom-crop) is drawn in the training process
from the global torch RNG, which checkpoints save and restore; data-loading workers only read pixels.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from faceage.data.loader import Augment, FaceDataset, FaceLoader, augment_batch


class EpochSampler(Sampler[int]):
    """One epoch's indices for one process: a permutation fixed by (seed, epoch), split across processes.

    Process ``rank`` of ``world`` takes every ``world``-th index of the permutation (the tail that does
    not divide evenly is dropped, so all processes run the same number of steps), from ``start`` on.
    """

    def __init__(self, n: int, *, seed: int, epoch: int, rank: int = 0, world: int = 1, start: int = 0) -> None:
        self.n, self.seed, self.epoch, self.rank, self.world, self.start = n, seed, epoch, rank, world, start

    @staticmethod
    def per_process(n: int, world: int) -> int:
        return n // world

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)[: self.per_process(self.n, self.world) * self.world]
        return iter(perm[self.rank :: self.world][self.start :].tolist())

    def __len__(self) -> int:
        return self.per_process(self.n, self.world) - self.start


def steps_per_epoch(n: int, batch_size: int, world: int) -> int:
    """Full batches per process per epoch (the last partial batch is dropped)."""
    return EpochSampler.per_process(n, world) // batch_size


def batches(
    dataset: FaceDataset,
    *,
    batch_size: int,
    seed: int,
    start_step: int,
    rank: int = 0,
    world: int = 1,
    num_workers: int = 0,
    device: torch.device | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless float batches for steps ``start_step``, ``start_step + 1``, ... (see the module docstring)."""
    per_epoch = steps_per_epoch(len(dataset), batch_size, world)
    if per_epoch == 0:
        raise ValueError(
            f"the training split has {len(dataset)} faces: too few for one batch of {batch_size} "
            f"on each of {world} process(es); lower train.batch_size or prepare more data"
        )
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        sampler = EpochSampler(len(dataset), seed=seed, epoch=epoch, rank=rank, world=world, start=skip * batch_size)
        loader = FaceLoader(
            dataset,
            device=device,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(seed),
            worker_init_fn=_ignore_interrupts,
            pin_memory=device is not None and device.type == "cuda",
        )
        yield from loader
        epoch, skip = epoch + 1, 0


def augment(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch with each image (and mask) flipped and zoom-cropped at random, from the global torch RNG."""
    images, masks = augment_batch(batch["image"], batch.get("mask"), Augment())
    out = {**batch, "image": images}
    if masks is not None:
        out["mask"] = masks
    return out


def _ignore_interrupts(worker_id: int) -> None:
    """Workers leave Ctrl-C and SIGTERM to the training process, which checkpoints before it exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
