"""``faceage bench train``: generator + discriminator training speed (img/s) and peak memory, fp32 and bf16,
and whether ``--precision auto`` picks the faster of the two on this machine.

Each precision trains in a process of its own, on the same synthetic batch and the same initial weights,
through the training loop's own ``run_phases``, so that its peak memory is its own: on CUDA
``torch.cuda.max_memory_allocated``; on a CPU the peak resident set (``VmHWM``) and its rise over the
resident set before the model was built. The two processes take turns, four steps at a time, so that a
machine that slows down for a while (other jobs, a VM host taking cores back) slows both precisions
alike; the ratio printed is the median over turns, so a burst that hits one turn does not move it.
Every phase a real step runs is timed (generator, discriminator, and the lazy R1 phase once every
``r1_every`` steps).

``--profile`` adds where a step's time goes, from ``torch.profiler`` over extra steps: convolution
forward, convolution backward and everything else (elementwise ops, casts, optimiser), per precision,
and how much faster bf16 runs each part — what bounds the bf16 / fp32 ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from faceage.cli import CLIError, add_overrides_argument

GB = 1024**3


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="ragan", help="registered model (default ragan)")
    p.add_argument("--config", help="preset or YAML (default: the MODEL_utk128 preset)")
    add_overrides_argument(p, "model.channels=32")
    p.add_argument("--size", type=int, default=128, help="image size in px (default 128)")
    p.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--steps", type=int, default=24, help="timed steps per precision (default 24)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument(
        "--precision",
        choices=["both", "auto", "fp32", "bf16"],
        default="both",
        help="both (default: time fp32 and bf16 and say whether auto picks the faster), or one precision",
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--profile", action="store_true", help="also split a step's time into conv forward / backward / the rest"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from faceage.precision import resolve_precision
    from faceage.train.config import load_config

    config = args.config or f"{args.model}_utk128"
    try:
        overrides = [*args.overrides, f"train.image_size={args.size}", f"train.batch_size={args.batch}"]
        cfg = load_config(config, overrides)
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
    auto, why = resolve_precision("auto", device)
    print(f"precision auto here: {auto} ({why.removeprefix('auto: ')})", flush=True)
    precisions = ["fp32", "bf16"] if args.precision == "both" else [resolve_precision(args.precision, device)[0]]
    workers = {p: _Worker(cfg, device, p) for p in precisions}  # a fresh process each: clean peaks
    try:
        for worker in workers.values():
            worker.call("steps", args.warmup)
        turns: dict[str, list[float]] = {p: [] for p in precisions}  # seconds of each turn
        for done in range(0, args.steps, _TURN):
            for p in precisions:
                turns[p].append(workers[p].call("steps", min(_TURN, args.steps - done)))
        rates, parts = {}, {}
        for p in precisions:
            rates[p] = args.steps * args.batch / sum(turns[p])
            peak, rise = workers[p].call("memory")
            extra = f" (+{rise / GB:.2f} GB over the process before training)" if rise is not None else ""
            print(f"{p}  {rates[p]:7.1f} img/s  peak {peak / GB:.2f} GB{extra}", flush=True)
        for p in precisions if args.profile else []:
            parts[p] = workers[p].call("profile", args.steps)
            shares = ", ".join(f"{name} {ms:.0f} ms" for name, ms in parts[p].items())
            print(f"{p}  per step: {shares} (profiled; the profiler adds overhead)", flush=True)
    finally:
        for worker in workers.values():
            worker.close()
    if len(rates) == 2:
        # Turn k of each precision ran the same steps: the median of their ratios ignores a burst of load
        # that fell on one precision's turn.
        ratio = statistics.median(f / b for f, b in zip(turns["fp32"], turns["bf16"], strict=True))
        print(f"bf16 / fp32: {ratio:.2f}x (median over {len(turns['bf16'])} turns of {_TURN} steps)")
        faster = "bf16" if ratio > 1 else "fp32"
        verdict = "the faster one" if auto == faster else f"NOT the faster one ({faster} is)"
        print(f"auto picks {auto}: {verdict}")
        if args.profile:
            speedups = ", ".join(f"{name} {parts['fp32'][name] / parts['bf16'][name]:.2f}x" for name in parts["bf16"])
            print(f"bf16 speed-up by part: {speedups}")
    return 0


_TURN = 4  # steps a precision runs before the other takes its turn


class _Worker:
    """A spawned process that trains one precision when asked: ``call("steps", n)`` -> seconds,
    ``call("memory")`` -> (peak bytes, rise or None), ``call("profile", n)`` -> ms per step by part."""

    def __init__(self, cfg, device: str, precision: str) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, cfg, device, precision), daemon=True)
        self.process.start()
        child.close()

    def call(self, command: str, arg: int | None = None):
        self.conn.send((command, arg))
        ok, result = self.conn.recv()
        if not ok:
            raise RuntimeError(f"bench train worker failed:\n{result}")
        return result

    def close(self) -> None:
        if self.process.is_alive():
            self.conn.send(("stop", None))
        self.process.join()


def _serve(conn, cfg, device: str, precision: str) -> None:
    """The worker's loop: build the model once, then answer calls until ``stop``."""
    import traceback

    import torch

    from faceage.models.registry import get_model
    from faceage.precision import autocast as precision_autocast
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
    autocast = precision_autocast(precision, device)
    step = 0

    def run_steps(n: int) -> None:
        nonlocal step
        for _ in range(n):  # numbered on, so the lazy R1 phase comes once every r1_every steps
            run_phases(model, optimizers, model.train_step(batch, step), autocast=autocast)
            step += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(n: int) -> float:
        start = time.perf_counter()
        run_steps(n)
        return time.perf_counter() - start

    def memory() -> tuple[int, int | None]:
        if device.type == "cuda":
            return torch.cuda.max_memory_allocated(device), None
        peak = _status_bytes("VmHWM")
        return peak, peak - before

    answers = {
        "steps": timed,
        "memory": lambda _: memory(),
        "profile": lambda n: _profile(run_steps, n, device.type == "cuda"),
    }
    while True:
        command, arg = conn.recv()
        if command == "stop":
            return
        try:
            conn.send((True, answers[command](arg)))
        except Exception:
            conn.send((False, traceback.format_exc()))


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
