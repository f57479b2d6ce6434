"""Data-parallel training: torchrun with two CPU processes (gloo), and two processes stepping exactly like one
process on their combined batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from faceage.models.base import FaceAgingModel, Phase
from faceage.train.checkpoint import load_checkpoint
from faceage.train.config import load_config
from faceage.train.distributed import average_gradients
from faceage.train.loop import checkpoint_path, run_phases

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread per process is fastest
SPARE_GROUP = 3  # only rows of this group use the spare head


def test_torchrun_two_cpu_processes(synth_cache32, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "faceage"]
    cmd += ["train", "--config", "tiny", "--data", str(synth_cache32), "--out", str(out), "--steps", "3"]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(checkpoint_path(out))
    assert state["step"] == 3 and len(state["rng"]) == 2  # one RNG state per process
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # seed + rank
    metrics = (out / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 3  # only rank 0 writes
    assert json.loads(metrics[0])["img_per_s"] > 0
    assert result.stdout.count("stopped at step 3") == 1


class _Deterministic(FaceAgingModel):
    """A model whose step draws nothing at random and uses no batch statistics, so a mean loss over a batch
    split between processes has exactly the gradient of the mean loss over the whole batch.

    Its ``head`` has a spare output used only by rows of ``SPARE_GROUP``: a batch without such rows leaves the
    spare parameters with no gradient on any rank; one whose such rows all sit in rank 0's half gives them a
    gradient on rank 0 only.
    """

    def __init__(self) -> None:
        super().__init__(None)
        self.generator = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 3, padding=1))
        self.head = nn.ModuleDict({"age": nn.Linear(3, 1), "spare": nn.Linear(3, 1)})

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> list[Phase]:
        x, age, group = batch["image"], batch["age"], batch["group"]

        def generator_loss() -> dict[str, torch.Tensor]:
            y = self.generator(x)
            return {"loss": (y - x.flip(-1)).pow(2).mean() + self.head["age"](y.mean((2, 3))).mean()}

        def head_loss() -> dict[str, torch.Tensor]:
            pooled = self.generator(x).detach().mean((2, 3))
            loss = (self.head["age"](pooled).squeeze(1) - age).pow(2).mean()
            spare = group == SPARE_GROUP
            if spare.any():  # summed and divided by the whole batch: a share of the batch mean
                loss = loss + self.head["spare"](pooled[spare]).pow(2).sum() / len(x)
            return {"loss": loss}

        return [Phase("G", "generator", ("generator",), generator_loss), Phase("H", "head", ("head",), head_loss)]


def _combined_batches() -> list[dict[str, torch.Tensor]]:
    """Two steps of 8 faces: in the first only rows 0-3 (rank 0's half) hold the spare group, in the second none."""
    g = torch.Generator().manual_seed(7)
    groups = [torch.tensor([3, 0, 3, 1, 0, 1, 2, 2]), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])]
    return [
        {"image": torch.rand(8, 3, 8, 8, generator=g) * 2 - 1, "age": torch.rand(8, generator=g) * 80, "group": group}
        for group in groups
    ]


def _half(batch: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    return {k: v[4 * rank : 4 * rank + 4] for k, v in batch.items()}


def _new_model(seed: int) -> _Deterministic:
    torch.manual_seed(seed)
    return _Deterministic()


def _grads(model: nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def _run(model: _Deterministic, batches: list[dict[str, torch.Tensor]], world: int) -> list[dict]:
    """Adam steps through the loop's ``run_phases``; the weights and Adam's step counts after each step."""
    optimizers = {n: torch.optim.Adam(net.parameters(), lr=0.01) for n, net in model.networks().items()}
    states = []
    for step, batch in enumerate(batches):
        run_phases(model, optimizers, model.train_step(batch, step), world=world)
        counts = {
            f"{name}.{pid}": int(s["step"])
            for name, opt in optimizers.items()
            for pid, s in opt.state_dict()["state"].items()
        }
        states.append({"weights": {k: v.clone() for k, v in model.state_dict().items()}, "adam_steps": counts})
    return states


def _gloo_worker(rank: int, port: int, out: Path) -> None:
    """One of two gloo processes, each with its own seed and its half of every combined batch."""
    import torch.distributed as dist

    from faceage.train import distributed as ddp

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        first = _combined_batches()[0]
        model = _new_model(seed=rank)  # each process starts from its own random weights ...
        ddp.broadcast_module(model)  # ... until rank 0's are broadcast
        head = model.train_step(_half(first, rank), 0)[1]
        head.loss()["loss"].backward()
        ddp.average_gradients(list(model.head.parameters()), world=2)
        averaged = _grads(model)

        model = _new_model(seed=rank)
        ddp.broadcast_module(model)
        states = _run(model, [_half(b, rank) for b in _combined_batches()], world=2)
        torch.save({"averaged": averaged, "states": states}, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    """What each of the two gloo processes saw: averaged gradients, then weights and Adam steps per step."""
    out = tmp_path_factory.mktemp("gloo")
    mp.start_processes(_gloo_worker, args=(_free_port(), out), nprocs=2, start_method="fork")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_two_processes_step_like_one_process_on_the_combined_batch(two_ranks):
    # Gradients: the average of the ranks' gradients is the gradient of the mean loss over all 8 faces.
    single = _new_model(seed=0)
    single.train_step(_combined_batches()[0], 0)[1].loss()["loss"].backward()
    expected = _grads(single)
    for r, got in enumerate(two_ranks):
        for name in ("head.age.weight", "head.age.bias", "head.spare.weight", "head.spare.bias"):
            assert got["averaged"][name] is not None, f"rank {r}: {name} has no gradient"
            torch.testing.assert_close(got["averaged"][name], expected[name], msg=f"rank {r}: {name}")
        assert all(got["averaged"][n] is None for n in expected if n.startswith("generator"))  # not in this phase

    # Weights after Adam steps, and Adam's step counts, match one process stepping on the combined batches.
    reference = _run(_new_model(seed=0), _combined_batches(), world=1)
    for step, want in enumerate(reference):
        for r, got in enumerate(two_ranks):
            state = got["states"][step]
            assert state["adam_steps"] == want["adam_steps"], f"rank {r}, step {step}"
            for name, value in want["weights"].items():
                torch.testing.assert_close(
                    state["weights"][name], value, rtol=1e-5, atol=1e-6, msg=f"{r} {step} {name}"
                )


def test_a_parameter_no_rank_used_keeps_no_gradient_and_adam_leaves_it_alone(two_ranks):
    for r, got in enumerate(two_ranks):
        first, second = got["states"]  # the second batch holds no spare-group row on either rank
        for name in ("head.spare.weight", "head.spare.bias"):
            assert torch.equal(second["weights"][name], first["weights"][name]), f"rank {r}: {name} moved"
        # head's parameters in order: age.weight, age.bias, spare.weight, spare.bias; spare stepped once only
        assert [second["adam_steps"][f"head.{i}"] for i in range(4)] == [2, 2, 1, 1], second["adam_steps"]


def test_average_gradients_is_a_no_op_for_one_process():
    p, q = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    p.grad = torch.full((3,), 2.0)
    average_gradients([p, q], world=1)
    assert torch.equal(p.grad, torch.full((3,), 2.0)) and q.grad is None


def _ragan_worker(rank: int, port: int) -> None:
    """One of two gloo processes: different seeds and batches, yet identical RAGAN weights after a step."""
    import torch.distributed as dist

    from faceage.models.ragan import RAGAN
    from faceage.train import distributed as ddp

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(rank)
    model = RAGAN(load_config("tiny").model_config)
    ddp.broadcast_module(model)
    batch = {"image": torch.rand(4, 3, 32, 32) * 2 - 1, "group": torch.randint(0, 4, (4,))}  # its own batch
    run_phases(model, model.optimizers(0.002, (0.0, 0.99)), model.train_step(batch, 0), world=2)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    both = [torch.empty_like(flat) for _ in range(2)]
    dist.all_gather(both, flat)
    dist.destroy_process_group()
    assert torch.equal(both[0], both[1]), "processes drifted apart: gradients were not averaged"


def test_ragan_processes_stay_in_sync_through_broadcast_and_gradient_averaging():
    mp.start_processes(_ragan_worker, args=(_free_port(),), nprocs=2, start_method="fork")
