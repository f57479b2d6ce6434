"""Data-parallel training: torchrun with two CPU processes (gloo), and processes kept in sync."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import torch
import torch.multiprocessing as mp

from faceage.train.checkpoint import load_checkpoint
from faceage.train.config import load_config
from faceage.train.loop import checkpoint_path

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread per process is fastest


def test_torchrun_two_cpu_processes(utk_cache32, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "faceage"]
    cmd += ["train", "--config", "tiny", "--data", str(utk_cache32), "--out", str(out), "--steps", "3"]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(checkpoint_path(out))
    assert state["step"] == 3 and len(state["rng"]) == 2  # one RNG state per process
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # seed + rank
    metrics = (out / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 3  # only rank 0 writes
    assert json.loads(metrics[0])["img_per_s"] > 0
    assert result.stdout.count("stopped at step 3") == 1


def _ddp_worker(rank: int, port: int) -> None:
    """One of two gloo processes: different seeds and batches, yet identical weights after a step."""
    import torch.distributed as dist

    from faceage.models.ragan import RAGAN
    from faceage.train import distributed as ddp
    from faceage.train.loop import run_phases

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(rank)  # each process starts from its own random weights ...
    model = RAGAN(load_config("tiny").model_config)
    ddp.broadcast_module(model)  # ... until rank 0's are broadcast
    batch = {"image": torch.rand(4, 3, 32, 32) * 2 - 1, "group": torch.randint(0, 4, (4,))}  # its own batch
    run_phases(model, model.optimizers(0.002, (0.0, 0.99)), model.train_step(batch, 0), world=2)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    both = [torch.empty_like(flat) for _ in range(2)]
    dist.all_gather(both, flat)
    dist.destroy_process_group()
    assert torch.equal(both[0], both[1]), "processes drifted apart: gradients were not averaged"


def test_processes_stay_in_sync_through_broadcast_and_gradient_averaging():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(port,), nprocs=2, start_method="fork")
