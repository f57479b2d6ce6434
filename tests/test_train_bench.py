"""``faceage bench train`` on the tiny preset: it prints speed and peak memory."""

from __future__ import annotations

from faceage.cli import main
from faceage.precision import resolve_precision


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


def test_bench_train_interleaves_the_precisions_and_prints_their_ratio(capsys):
    args = ["bench", "train", "--config", "tiny", "--size", "32", "--batch", "2", "--steps", "8", "--warmup", "1"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    rates = {line.split()[0]: float(line.split()[1]) for line in lines if "img/s" in line}
    assert set(rates) == {"fp32", "bf16"} and all(rate > 0 for rate in rates.values()), lines
    ratio = next(line for line in lines if line.startswith("bf16 / fp32:"))
    assert ratio.endswith("(median over 2 turns of 4 steps)") and float(ratio.split()[3].rstrip("x")) > 0, ratio
    auto = resolve_precision("auto", "cpu")[0]
    assert f"precision auto here: {auto} (" in lines[2], lines
    faster = "bf16" if float(ratio.split()[3].rstrip("x")) > 1 else "fp32"
    verdict = next(line for line in lines if line.startswith("auto picks"))
    assert verdict == (
        f"auto picks {auto}: the faster one"
        if auto == faster
        else f"auto picks {auto}: NOT the faster one ({faster} is)"
    )


def test_bench_train_auto_runs_the_precision_auto_resolves_to(capsys):
    args = ["bench", "train", "--config", "tiny", "--size", "32", "--batch", "2", "--steps", "1", "--warmup", "1"]
    assert main([*args, "--precision", "auto"]) == 0
    rates = [line.split()[0] for line in capsys.readouterr().out.splitlines() if "img/s" in line]
    assert rates == [resolve_precision("auto", "cpu")[0]]


def test_bench_train_takes_config_overrides_and_names_a_bad_one(capsys):
    args = ["bench", "train", "--config", "tiny", "--size", "32", "--batch", "2", "--steps", "1", "--warmup", "1"]
    assert main([*args, "--precision", "fp32", "--set", "model.to_rgb=deconv"]) == 2
    assert "to_rgb must be 'upsample' or 'pixel_shuffle', got 'deconv'" in capsys.readouterr().err
    assert main([*args, "--precision", "fp32", "--set", "model.to_rgb=pixel_shuffle"]) == 0
