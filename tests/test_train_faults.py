"""Training survives faults. One `faceage train --resume` command line (the tiny preset on generated faces) is
killed with SIGKILL at random steps, once while it writes a checkpoint, and stopped with SIGINT and SIGTERM;
after each stop a checkpoint loads, and the same command, run again, goes on. The run ends with every network,
the EMA generator and the optimiser states bitwise equal to those of a run that was never interrupted."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from faceage.train.checkpoint import LAST, PREVIOUS, load_checkpoint
from faceage.train.loop import checkpoint_dir, checkpoint_path

STEPS = 50
KILLS = 5  # SIGKILLs at least; the first lands while a checkpoint is written (retried until one does)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # one thread: tiny steps are deterministic
TIMEOUT = 120  # seconds for one session to reach its step or stop


def _command(cache: Path, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "faceage", "train", "--config", "tiny", "--data", str(cache), "--out", str(out)]
    cmd += ["--resume", "--precision", "fp32", "--steps", str(STEPS)]
    return cmd + ["--set", "train.checkpoint_every=1", "--set", "train.sample_every=1000"]


def _logged_step(out: Path) -> int:
    """The last step in metrics.jsonl (0 before the first); a line being appended is skipped."""
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return json.loads(line)["step"]
        except ValueError:
            continue
    return 0


def _checkpoint_step(out: Path) -> int:
    """The step of the checkpoint a resume would take: last.pt must load, or be missing with a loadable prev.pt."""
    last, prev = checkpoint_dir(out) / LAST, checkpoint_dir(out) / PREVIOUS
    return load_checkpoint(last if last.is_file() else prev)["step"]


def _temp_files(out: Path) -> set[Path]:
    return set(checkpoint_dir(out).glob(f".{LAST}.*.tmp")) if checkpoint_dir(out).is_dir() else set()


class _Session:
    """One run of the command, its output in a log file."""

    def __init__(self, cmd: list[str], log: Path) -> None:
        self.log = log
        with open(log, "w") as f:
            self.proc = subprocess.Popen(cmd, env=ENV, stdout=f, stderr=subprocess.STDOUT, text=True)

    def wait_for(self, done, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not done():
            assert self.proc.poll() is None, f"exited ({self.proc.returncode}) before {what}:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {what} after {TIMEOUT} s:\n{self.output()}"
            time.sleep(0.002)

    def finish(self) -> int:
        return self.proc.wait(timeout=TIMEOUT)

    def output(self) -> str:
        return self.log.read_text()[-3000:]


def _interrupt(session: _Session, out: Path, how: str, rng: random.Random) -> bool:
    """Stop ``session`` ``how``; returns whether a SIGKILL landed in the middle of a checkpoint write."""
    if how == "SIGKILL-in-save":
        stale = _temp_files(out)  # left by an earlier kill; the session's first save removes them
        session.wait_for(lambda: _temp_files(out) - stale, "a checkpoint write")
        writing = _temp_files(out) - stale
        session.proc.send_signal(signal.SIGKILL)
        assert session.finish() == -signal.SIGKILL
        return any(p.exists() for p in writing)  # the process is gone and its temp file remains: killed mid-write
    if how == "SIGKILL":
        time.sleep(rng.uniform(0, 0.15))  # anywhere in the next step or so: training, logging or saving
        session.proc.send_signal(signal.SIGKILL)
        assert session.finish() == -signal.SIGKILL
        return False
    session.proc.send_signal(getattr(signal, how))  # a graceful stop: finish the step, checkpoint, exit 0
    assert session.finish() == 0, session.output()
    step = _checkpoint_step(out)
    assert f"stopped at step {step} of {STEPS}" in session.output() and _logged_step(out) == step
    return False


@pytest.mark.slow
def test_killed_and_resumed_training_ends_with_the_weights_of_an_uninterrupted_run(synth_cache32, tmp_path):
    rng = random.Random(15)
    straight = _Session(_command(synth_cache32, tmp_path / "straight"), tmp_path / "straight.log")  # alongside
    out = tmp_path / "run"
    plan = ["SIGKILL-in-save"] + ["SIGKILL"] * (KILLS - 1) + ["SIGINT", "SIGTERM"]
    in_save, kills, step = 0, 0, 0
    for i, how in enumerate(plan):
        target = _logged_step(out) + rng.randint(2, 4)  # beyond what earlier sessions logged, past a checkpoint
        session = _Session(_command(synth_cache32, out), tmp_path / f"session{i}.log")
        session.wait_for(lambda target=target: _logged_step(out) >= target, f"step {target}")
        landed = _interrupt(session, out, how, rng)
        kills += how.startswith("SIGKILL")
        in_save += landed
        if how == "SIGKILL-in-save" and not landed and plan.count(how) < 4:
            plan.insert(i + 1, how)  # the write ended before the signal did: try again in the next session
        new_step = _checkpoint_step(out)  # after every stop, a checkpoint loads ...
        assert new_step >= step, (how, new_step, step)  # ... and none is lost
        step = new_step
    assert kills >= KILLS and in_save >= 1, (kills, in_save)

    final = _Session(_command(synth_cache32, out), tmp_path / "final.log")
    assert final.finish() == 0, final.output()
    assert straight.finish() == 0, straight.output()
    assert f"stopped at step {STEPS} of {STEPS}" in final.output()
    assert not _temp_files(out) and not list(checkpoint_dir(out).glob("*.damaged"))
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == list(
        range(1, STEPS + 1)
    )

    a, b = load_checkpoint(checkpoint_path(out)), load_checkpoint(checkpoint_path(tmp_path / "straight"))
    assert (a["step"], a["images"]) == (b["step"], b["images"]) == (STEPS, STEPS * 4)
    assert a["networks"].keys() == b["networks"].keys() == {"generator", "discriminator", "generator_ema"}
    for name, weights in a["networks"].items():
        for key, value in weights.items():
            assert torch.equal(value, b["networks"][name][key]), f"{name}.{key}"
    for name, opt in a["optimizers"].items():
        assert opt["param_groups"] == b["optimizers"][name]["param_groups"]
        for pid, moments in opt["state"].items():
            for key, value in moments.items():
                assert torch.equal(value, b["optimizers"][name]["state"][pid][key]), f"{name}.{pid}.{key}"
