"""Mixed precision: when bf16 autocast is worth using on the current device."""

from __future__ import annotations

import torch


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matrix units (AMX-BF16 or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def bf16_status(device: torch.device | str | None = None) -> str:
    """One line saying whether bf16 autocast is supported and fast on ``device`` (default: best available)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "fast (CUDA, native bf16)"
        return "slow (CUDA device without native bf16; use --fp32)"
    if cpu_has_fast_bf16():
        return "fast (CPU with AMX-BF16 / AVX512-BF16)"
    return "supported but slow (CPU without bf16 units; use --fp32)"
