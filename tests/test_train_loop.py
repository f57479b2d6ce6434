"""The training loop on generated faces with the tiny preset: outputs, checkpoints, resume, determinism,
signals and the data order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from faceage.cli import main
from faceage.models.pretrained import load_generator
from faceage.provenance import read_provenance
from faceage.train.checkpoint import load_checkpoint
from faceage.train.config import load_config
from faceage.train.data import EpochSampler
from faceage.train.loop import checkpoint_path, train
from faceage.train.samples import HEADER

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread per process is fastest
pytestmark = pytest.mark.usefixtures("one_thread")


def _train(cache, out, steps: int, *overrides: str, resume: bool = False) -> int:
    return train(load_config("tiny", [f"train.steps={steps}", *overrides]), cache, out, resume=resume)


def _assert_same_state(a: dict, b: dict) -> None:
    for name in a["networks"]:
        for key, value in a["networks"][name].items():
            torch.testing.assert_close(b["networks"][name][key], value, rtol=1e-5, atol=1e-6, msg=f"{name}.{key}")
    for name in a["optimizers"]:
        for pid, state in a["optimizers"][name]["state"].items():
            for key, value in state.items():
                torch.testing.assert_close(b["optimizers"][name]["state"][pid][key], value, rtol=1e-5, atol=1e-6)


def test_run_writes_config_checkpoint_grids_metrics_and_tensorboard(synth_cache32, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--config", "tiny", "--data", str(synth_cache32), "--out", str(out), "--steps", "4"]) == 0
    assert load_config(out / "config.yaml").train.steps == 4
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(m["img_per_s"] > 0 and 0 < m["d_adv"] < 5 for m in metrics)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    grids = sorted((out / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["step_0000002.png", "step_0000004.png"]
    # 2 validation faces (rows) x (input + 4 age groups) (columns) of 32 px, under a label strip
    assert Image.open(grids[-1]).size == (5 * 32, HEADER + 2 * 32)
    label = read_provenance(grids[-1])  # a grid of generated faces says so in the file
    assert label["digital_source_type"].endswith("trainedAlgorithmicMedia"), label
    assert label["faceage:model"] == "ragan run run at step 4", label

    state = load_checkpoint(checkpoint_path(out))  # weights_only=True
    assert state["step"] == 4 and state["model"] == "ragan" and state["image_size"] == 32
    assert set(state["networks"]) == {"generator", "discriminator", "generator_ema"}
    assert set(state["optimizers"]) == {"generator", "discriminator"}
    assert set(state["rng"][0]) == {"torch", "cuda", "numpy", "python"}
    assert state["scheme"] == {"name": "custom:0,20,40,60", "lower": [0, 20, 40, 60]}

    generator, meta = load_generator(checkpoint_path(out))  # the EMA generator
    assert meta["model_config"] == state["model_config"]
    for key, value in generator.state_dict().items():
        assert torch.equal(value, state["networks"]["generator_ema"][key])


def test_resumed_run_matches_an_uninterrupted_one(synth_cache32, tmp_path):
    assert _train(synth_cache32, tmp_path / "straight", 5) == 5
    assert _train(synth_cache32, tmp_path / "resumed", 3) == 3
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:  # as if it had run on past its checkpoint
        f.write(json.dumps({"step": 4, "img_per_s": 1.0}) + "\n")
    assert _train(synth_cache32, tmp_path / "resumed", 5, resume=True) == 5
    logged = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5]
    straight = load_checkpoint(checkpoint_path(tmp_path / "straight"))
    resumed = load_checkpoint(checkpoint_path(tmp_path / "resumed"))
    assert resumed["step"] == 5
    _assert_same_state(straight, resumed)


def test_same_seed_same_weights_other_seed_other_weights(synth_cache32, tmp_path):
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        _train(synth_cache32, tmp_path / name, 2, f"train.seed={seed}")
    a, b, c = (load_checkpoint(checkpoint_path(tmp_path / n)) for n in "abc")
    _assert_same_state(a, b)
    ga, gc = a["networks"]["generator"], c["networks"]["generator"]
    assert not any(torch.equal(ga[k], gc[k]) for k in ga if k.endswith("weight"))


def test_an_existing_run_needs_resume_and_resume_cannot_change_the_model(synth_cache32, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--config", "tiny", "--data", str(synth_cache32), "--out", str(out)]
    assert main([*args, "--steps", "1"]) == 0
    assert main([*args, "--steps", "2"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main([*args, "--resume", "--set", "model.channels=4"]) == 2
    assert "cannot change model on resume (changed: channels)" in capsys.readouterr().err
    assert main(["train", "--data", str(synth_cache32), "--out", str(out), "--resume", "--steps", "2"]) == 0
    assert load_checkpoint(checkpoint_path(out))["step"] == 2


def test_sigterm_checkpoints_before_exit_and_the_run_resumes(synth_cache32, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "faceage", "train", "--config", "tiny", "--data", str(synth_cache32)]
    cmd += ["--out", str(out)]
    cmd += ["--steps", "100000", "--set", "train.checkpoint_every=100000", "--set", "train.sample_every=100000"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    step = load_checkpoint(checkpoint_path(out))["step"]
    assert 3 <= step < 100000 and f"stopped at step {step} of 100000" in stdout
    assert (out / "samples" / f"step_{step:07d}.png").is_file()  # a last grid at the stop
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == step
    assert _train(synth_cache32, out, step + 1, resume=True) == step + 1


def test_epoch_order_depends_only_on_seed_and_epoch_and_ranks_share_it_out():
    def order(**kw) -> list[int]:
        return list(EpochSampler(10, **kw))

    assert order(seed=0, epoch=1) == order(seed=0, epoch=1) != order(seed=0, epoch=2)
    assert sorted(order(seed=0, epoch=1)) == list(range(10))
    assert order(seed=0, epoch=1, start=4) == order(seed=0, epoch=1)[4:]
    r0, r1 = order(seed=0, epoch=1, rank=0, world=2), order(seed=0, epoch=1, rank=1, world=2)
    assert len(r0) == len(r1) == 5 and not set(r0) & set(r1)
    three = [order(seed=0, epoch=0, rank=r, world=3) for r in range(3)]
    assert [len(o) for o in three] == [3, 3, 3]  # the uneven tail is dropped
