"""``faceage bench train``: generator + discriminator training speed (img/s) and peak memory, fp32 and bf16.

Both precisions run in the same process, one after the other, on the same synthetic batch and the same
initial weights, through the training loop's own ``run_phases`` — so their ratio holds even on a busy
machine. Every phase a real step runs is timed (generator, discriminator, and the lazy R1 phase once
every ``r1_every`` steps). Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on a CPU the peak
resident set (``VmHWM``, reset before each precision through ``/proc/self/clear_refs``) and its rise
over the resident set before the run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from faceage.cli import CLIError

GB = 1024**3


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="ragan", help="registered model (default ragan)")
    p.add_argument("--config", help="preset or YAML (default: the MODEL_utk128 preset)")
    p.add_argument("--size", type=int, default=128, help="image size in px (default 128)")
    p.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--steps", type=int, default=16, help="timed steps per precision (default 16)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--precision", choices=["both", "fp32", "bf16"], default="both")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")


def run(args: argparse.Namespace) -> int:
    import torch

    from faceage.train.config import load_config

    config = args.config or f"{args.model}_utk128"
    try:
        cfg = load_config(config, [f"train.image_size={args.size}", f"train.batch_size={args.batch}"])
    except ValueError as e:
        raise CLIError(str(e)) from None
    if cfg.model != args.model:
        raise CLIError(f"config {config!r} is for model {cfg.model!r}, not {args.model!r}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at start"
    )
    print(
        f"{args.model} ({config}) at {args.size} px, batch {args.batch}, {args.steps} steps after {args.warmup} warm-up"
    )
    print(f"device: {where}  (speeds are noisy when others share the machine)")
    rates = {}
    for precision in ["fp32", "bf16"] if args.precision == "both" else [args.precision]:
        rate, peak, rise = _measure(cfg, device, precision == "bf16", args)
        rates[precision] = rate
        extra = f" (+{rise / GB:.2f} GB over idle)" if rise is not None else ""
        print(f"{precision}  {rate:7.1f} img/s  peak {peak / GB:.2f} GB{extra}", flush=True)
    if len(rates) == 2:
        print(f"bf16 / fp32: {rates['bf16'] / rates['fp32']:.2f}x")
    return 0


def _measure(cfg, device, bf16: bool, args: argparse.Namespace) -> tuple[float, int, int | None]:
    """(img/s, peak bytes, rise over the starting RSS or None on CUDA) for one precision."""
    import torch

    from faceage.models.registry import get_model
    from faceage.train.loop import run_phases

    torch.manual_seed(0)
    model = get_model(cfg.model)(cfg.model_config).to(device, memory_format=torch.channels_last)
    optimizers = model.optimizers(cfg.train.lr, cfg.train.betas)
    s, b = cfg.train.image_size, cfg.train.batch_size
    batch = {
        "image": (torch.rand(b, 3, s, s, device=device) * 2 - 1).contiguous(memory_format=torch.channels_last),
        "group": torch.randint(0, cfg.model_config.num_groups, (b,), device=device),
    }
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def steps(n: int) -> None:
        for step in range(n):
            run_phases(model, optimizers, model.train_step(batch, step), autocast=autocast)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    steps(args.warmup)
    before = _reset_peak(device)
    start = time.perf_counter()
    steps(args.steps)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _status_bytes("VmHWM")
    rise = None if device.type == "cuda" else peak - before
    return args.steps * b / seconds, peak, rise


def _reset_peak(device) -> int:
    """Reset the peak-memory counter; returns the resident set now (CPU) or 0 (CUDA)."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return 0
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS
    except OSError:
        pass
    return _status_bytes("VmRSS")


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise CLIError(f"/proc/self/status has no {field}: peak memory is only measured on Linux")
