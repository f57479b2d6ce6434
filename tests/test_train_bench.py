"""``faceage bench train`` on the tiny preset: it prints speed and peak memory."""

from __future__ import annotations

from faceage.cli import main


def test_bench_train_prints_speed_and_peak_memory(capsys):
    args = ["bench", "train", "--config", "tiny", "--size", "32", "--batch", "2", "--steps", "2", "--warmup", "1"]
    assert main([*args, "--precision", "bf16"]) == 0  # one precision: each runs in its own process
    out = capsys.readouterr().out
    assert "ragan (tiny) at 32 px, batch 2" in out
    line = next(line for line in out.splitlines() if line.startswith("bf16 "))
    rate, peak = float(line.split()[1]), float(line.split("peak")[1].split()[0])
    assert rate > 0 and peak > 0.05, line


def test_bench_train_profile_splits_a_step_into_convolutions_and_the_rest(capsys):
    args = ["bench", "train", "--config", "tiny", "--size", "32", "--batch", "2", "--steps", "1", "--warmup", "1"]
    assert main([*args, "--precision", "fp32", "--profile"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fp32  per step:"))
    parts = dict(part.rsplit(" ", 2)[:2] for part in line.split(": ", 1)[1].split(" (")[0].split(", "))
    assert set(parts) == {"conv forward", "conv backward", "other"}, line
    assert all(float(ms) > 0 for ms in parts.values()), line
