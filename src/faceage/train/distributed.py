"""Data-parallel training through ``torchrun``: process group, parameter broadcast, gradient averaging.

Gradients are averaged by hand after each phase's backward pass (as StyleGAN2-ADA does) rather than by
``DistributedDataParallel``: a phase trains only some networks and freezes the others, which DDP's
reducer does not expect. A single process (no ``torchrun``) runs the same code with ``world == 1``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, world size and device."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> Dist:
    """Join the ``torchrun`` process group if there is one (NCCL on CUDA, gloo on CPU) and pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Dist(rank, world, dev)


def teardown(*, together: bool = True) -> None:
    """Leave the process group. ``together`` (a run that ended normally) first waits for every process, so none
    closes its connections while another is still saving or in a collective: a process that tore gloo down
    early was seen to abort (``terminate called without an active exception``). After an error, a barrier
    could wait for a process that will never come, so the group is left at once."""
    if dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process (processes start from different seeds)."""
    if dist.is_initialized():
        for tensor in module.state_dict().values():
            buffer = tensor.contiguous()  # channels-last weights are not contiguous; collectives need them to be
            dist.broadcast(buffer, src=0)
            tensor.copy_(buffer)


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Average the gradients of ``params`` over all processes, in one flattened all-reduce.

    A parameter that has no gradient on any process (unused in this phase) keeps ``grad = None``, as with
    ``world == 1``, so Adam skips it instead of stepping it on stale momentum. One that has a gradient on
    some processes only (a head only some batches use) counts as zeros on the others, which is what one
    process would compute on the combined batch. A cheap all-reduce of a presence mask decides, so every
    process sends the same tensors.
    """
    if world == 1 or not params:
        return
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device)
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    used = [p for p, on in zip(params, present.tolist(), strict=True) if on]
    if not used:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in used])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in used:
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every process when ``flag`` is true on any (so all processes stop at the same step)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather(obj: object, world: int) -> list[object]:
    """``obj`` from every process, in rank order (e.g. RNG states for a checkpoint)."""
    if world == 1 or not dist.is_initialized():
        return [obj]
    out: list[object] = [None] * world
    dist.all_gather_object(out, obj)
    return out
