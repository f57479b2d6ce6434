"""Which precision to compute in: ``auto`` picks bf16 autocast only where it is faster than fp32.

Measured with ``faceage bench train --model ragan --size 128`` (bf16 / fp32 img/s):

* Intel Xeon with AMX-BF16: 2.0-2.6x — bf16 matrix tiles;
* Intel Xeon with AVX512-BF16 but no AMX (AMX hidden by the hypervisor): 0.76x, and a lone 3x3
  convolution's forward + backward 0.55x — oneDNN's AVX512-BF16 kernels lose to its fp32 ones here;
* AMD EPYC with AVX2 only: 0.09x — bf16 is emulated.

So on a CPU ``auto`` means bf16 only with AMX; on CUDA, bf16 where the device supports it natively.
"""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_flags() -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_amx_bf16() -> bool:
    """True when the CPU has AMX-BF16 matrix tiles (the only CPUs where bf16 training beats fp32)."""
    flags = cpu_flags()
    if flags:
        return "amx_bf16" in flags
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # no /proc/cpuinfo: ask torch
    return bool(probe is not None and probe())


def resolve_precision(requested: str, device: torch.device | str | None = None) -> tuple[str, str]:
    """``(precision, why)``: ``requested`` ("auto", "fp32" or "bf16") made concrete for ``device``."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; known: {', '.join(PRECISIONS)}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if requested != "auto":
        return requested, "asked for"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: CUDA device with native bf16"
        return "fp32", "auto: CUDA device without native bf16"
    if device.type == "cpu":
        if cpu_has_amx_bf16():
            return "bf16", "auto: CPU with AMX-BF16 (bf16 2-2.6x faster than fp32)"
        flags = cpu_flags()
        if "avx512_bf16" in flags:
            return "fp32", "auto: CPU with AVX512-BF16 but no AMX (bf16 measured 0.76x of fp32)"
        return "fp32", "auto: CPU without bf16 matrix units (bf16 is emulated: ~0.1x of fp32)"
    return "fp32", f"auto: {device.type} device"


def autocast(precision: str, device: torch.device | str) -> torch.autocast:
    """bf16 autocast on ``device`` when ``precision`` is "bf16" (already resolved), else a disabled one."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision {precision!r} must be resolved to fp32 or bf16 first (resolve_precision)")
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
