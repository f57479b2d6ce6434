"""Training batches whose order is a function of (seed, epoch) alone, so a resumed run reads what an
uninterrupted one would have read.

``faceage.data.loader.make_loader`` shuffles with a generator that has moved on by the time a run stops;
here the permutation of epoch ``e`` is drawn from ``seed`` and ``e`` only. Each process reads one endless
stream of images, epoch after epoch, and a batch is the next ``batch_size`` images of it (the last batch
of an epoch takes the first images of the next). The position in the data is therefore a number of
images, which checkpoints record: a run resumed at image ``p`` starts epoch ``p // images_per_epoch`` at
image ``p % images_per_epoch`` without reading the images before it, whatever its batch size now.
Augmentation (the data package's flip and zoom-crop) is drawn in the training process from the global
torch RNG, which checkpoints save and restore; data-loading workers only read pixels.
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


class ImageStream(Sampler[int]):
    """One process's endless stream of indices: epoch 0 of :class:`EpochSampler`, then epoch 1, ..., from
    image ``start`` of the stream on."""

    def __init__(self, n: int, *, seed: int, rank: int = 0, world: int = 1, start: int = 0) -> None:
        self.n, self.seed, self.rank, self.world, self.start = n, seed, rank, world, start

    def __iter__(self) -> Iterator[int]:
        epoch, skip = divmod(self.start, EpochSampler.per_process(self.n, self.world))
        while True:
            yield from EpochSampler(self.n, seed=self.seed, epoch=epoch, rank=self.rank, world=self.world, start=skip)
            epoch, skip = epoch + 1, 0


def steps_per_epoch(n: int, batch_size: int, world: int) -> int:
    """Full batches per process per epoch (how epochs were cut before batches ran on across them)."""
    return EpochSampler.per_process(n, world) // batch_size


def position_of_step(step: int, batch_size: int, n: int, world: int) -> int:
    """The stream position of a checkpoint written before checkpoints recorded one (they only held ``step``).

    Those runs dropped each epoch's last partial batch, so that is the whole epochs done plus the batches
    read of the current one: the resumed run reads on exactly where the old one would have, to the epoch's end.
    """
    # max(1, ...): a cache now too small for one batch gets batches()' own error, not a division by zero
    epoch, batch = divmod(step, max(1, steps_per_epoch(n, batch_size, world)))
    return epoch * EpochSampler.per_process(n, world) + batch * batch_size


def batches(
    dataset: FaceDataset,
    *,
    batch_size: int,
    seed: int,
    start_image: int = 0,
    rank: int = 0,
    world: int = 1,
    num_workers: int = 0,
    device: torch.device | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless float batches, the first one starting at image ``start_image`` of this process's stream
    (see the module docstring)."""
    if EpochSampler.per_process(len(dataset), world) < batch_size:
        raise ValueError(
            f"the training split has {len(dataset)} faces: too few for one batch of {batch_size} "
            f"on each of {world} process(es); lower train.batch_size or prepare more data"
        )
    yield from FaceLoader(
        dataset,
        device=device,
        batch_size=batch_size,
        sampler=ImageStream(len(dataset), seed=seed, rank=rank, world=world, start=start_image),
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_ignore_interrupts,
        pin_memory=device is not None and device.type == "cuda",
    )


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
