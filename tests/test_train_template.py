"""The template model: a critic trained n times per generator step runs through the unchanged loop."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_train

import faceage.models.template  # noqa: F401  (registers "template")
from faceage.models.pretrained import load_generator
from faceage.train.checkpoint import load_checkpoint
from faceage.train.config import from_dict
from faceage.train.loop import checkpoint_path, train

TRAIN = tiny_train("0,20,40,60", 3)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("n_critic", [1, 3])
def test_n_critic_phases_step_the_critic_n_times_per_generator_step(synth_cache32, tmp_path, n_critic):
    cfg = from_dict({"model": {"name": "template", "n_critic": n_critic}, "train": TRAIN})
    out = tmp_path / "run"
    assert train(cfg, synth_cache32, out) == 3
    state = load_checkpoint(checkpoint_path(out))
    assert set(state["networks"]) == {"generator", "critic", "generator_ema"}
    critic_steps = [float(s["step"]) for s in state["optimizers"]["critic"]["state"].values()]
    generator_steps = [float(s["step"]) for s in state["optimizers"]["generator"]["state"].values()]
    assert set(critic_steps) == {3.0 * n_critic} and set(generator_steps) == {3.0}
    generator, meta = load_generator(checkpoint_path(out))
    assert meta["model"] == "template"
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert generator(x, torch.tensor([0, 3])).shape == x.shape
