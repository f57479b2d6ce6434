"""``faceage bench train``: generator + discriminator training speed (img/s) and peak memory, fp32 and bf16.

Both precisions run in the same invocation, one right after the other, on the same synthetic batch and
the same initial weights, through the training loop's own ``run_phases`` — so their ratio holds even on
a busy machine. Every phase a real step runs is timed (generator, discriminator, and the lazy R1 phase
once every ``r1_every`` steps). Each precision runs in a fresh process so that its peak memory is its
own: on CUDA ``torch.cuda.max_memory_allocated``; on a CPU the peak resident set (``VmHWM``) and its rise
over the resident set before the model was built.

``--profile`` adds where a step's time goes, from ``torch.profiler`` over extra steps: convolution
forward, convolution backward and everything else (elementwise ops, casts, optimiser), per precision,
and how much faster bf16 runs each part — what bounds the bf16 / fp32 ratio.
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
    p.add_argument(
        "--profile", action="store_true", help="also split a step's time into conv forward / backward / the rest"
    )


def run(args: argparse.Namespace) -> int:
    import multiprocessing

    import torch

    from faceage.train.config import load_config

    config = args.config or f"{args.model}_utk128"
    try:
        cfg = load_config(config, [f"train.image_size={args.size}", f"train.batch_size={args.batch}"])
    except ValueError as e:
        raise CLIError(str(e)) from None
    if cfg.model != args.model:
        raise CLIError(f"config {config!r} is for model {cfg.model!r}, not {args.model!r}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    where = (
        torch.cuda.get_device_name(device)
        if device.startswith("cuda")
        else f"cpu, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at start"
    )
    print(
        f"{args.model} ({config}) at {args.size} px, batch {args.batch}, {args.steps} steps after {args.warmup} warm-up"
    )
    print(f"device: {where}  (speeds are noisy when others share the machine)", flush=True)
    rates, parts = {}, {}
    context = multiprocessing.get_context("spawn")  # a fresh process per precision: clean peak-memory figures
    with context.Pool(1, maxtasksperchild=1) as pool:
        for precision in ["fp32", "bf16"] if args.precision == "both" else [args.precision]:
            rate, peak, rise, split = pool.apply(
                _measure, (cfg, device, precision == "bf16", args.steps, args.warmup, args.profile)
            )
            rates[precision], parts[precision] = rate, split
            extra = f" (+{rise / GB:.2f} GB over the process before training)" if rise is not None else ""
            print(f"{precision}  {rate:7.1f} img/s  peak {peak / GB:.2f} GB{extra}", flush=True)
            if split:
                shares = ", ".join(f"{name} {ms:.0f} ms" for name, ms in split.items())
                print(f"{precision}  per step: {shares} (profiled; the profiler adds overhead)", flush=True)
    if len(rates) == 2:
        print(f"bf16 / fp32: {rates['bf16'] / rates['fp32']:.2f}x")
        if args.profile:
            speedups = ", ".join(f"{name} {parts['fp32'][name] / parts['bf16'][name]:.2f}x" for name in parts["bf16"])
            print(f"bf16 speed-up by part: {speedups}")
    return 0


def _measure(
    cfg, device: str, bf16: bool, steps: int, warmup: int, profile: bool
) -> tuple[float, int, int | None, dict[str, float] | None]:
    """(img/s, peak bytes, rise of the peak over the resident set before training or None on CUDA,
    ms per step by part when ``profile``)."""
    import torch

    from faceage.models.registry import get_model
    from faceage.train.cpu import keep_freed_memory
    from faceage.train.loop import run_phases

    device = torch.device(device)
    if device.type == "cpu":
        keep_freed_memory()  # as training does
        before = _status_bytes("VmRSS")
    else:
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = get_model(cfg.model)(cfg.model_config).to(device, memory_format=torch.channels_last)
    optimizers = model.optimizers(cfg.train.lr, cfg.train.betas)
    s, b = cfg.train.image_size, cfg.train.batch_size
    batch = {
        "image": torch.rand(b, 3, s, s, device=device) * 2 - 1,
        "group": torch.randint(0, cfg.model_config.num_groups, (b,), device=device),
    }
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def run_steps(n: int) -> None:
        for step in range(n):
            run_phases(model, optimizers, model.train_step(batch, step), autocast=autocast)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run_steps(warmup)
    start = time.perf_counter()
    run_steps(steps)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak, rise = torch.cuda.max_memory_allocated(device), None
    else:
        peak = _status_bytes("VmHWM")
        rise = peak - before
    return steps * b / seconds, peak, rise, _profile(run_steps, steps, device.type == "cuda") if profile else None


def _profile(run_steps, steps: int, cuda: bool) -> dict[str, float]:
    """Milliseconds per step in convolution forward, convolution backward and everything else: the ops' self
    time, on the CPU or, on CUDA, on the GPU."""
    import torch

    activities = [torch.profiler.ProfilerActivity.CUDA if cuda else torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
        run_steps(steps)
    totals = {"conv forward": 0.0, "conv backward": 0.0, "other": 0.0}
    for event in prof.key_averages():
        if not event.key.startswith("aten::"):  # leaf ops' self times add up to the step, counted once
            continue
        if event.key in _CONV_FORWARD:
            part = "conv forward"
        elif "convolution_backward" in event.key:
            part = "conv backward"
        else:
            part = "other"
        totals[part] += (event.self_device_time_total if cuda else event.self_cpu_time_total) / 1e3
    return {part: ms / steps for part, ms in totals.items()}


# The kernels behind F.conv2d's forward pass (oneDNN on CPU, cuDNN on CUDA, the fallback otherwise).
_CONV_FORWARD = {"aten::mkldnn_convolution", "aten::cudnn_convolution", "aten::_slow_conv2d_forward"}


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise CLIError(f"/proc/self/status has no {field}: peak memory is only measured on Linux")
