"""How many CPU threads torch should use when other processes share the machine.

On this project's shared 2-core machine, ``faceage eval`` on 30 faces x 10 groups took 60 s with torch's
default 2 threads while another process kept a core busy, and 6.7 s with 1 thread: every parallel
region waits for its slowest thread, and a thread that shares its core with another process is slow.
So the default is to use only the cores the 1-minute load average leaves idle.
"""

from __future__ import annotations

import os

import torch


def auto_threads() -> tuple[int, str]:
    """``(threads, reason)``: torch's default thread count, reduced to the cores other processes leave idle."""
    default = torch.get_num_threads()
    cpus = os.cpu_count() or default
    try:
        load = os.getloadavg()[0]
    except OSError:
        return default, "torch's default"
    idle = max(1, min(default, round(cpus - load)))
    return idle, f"auto: load average {load:.1f} on {cpus} CPUs"


def set_threads(requested: int | None) -> str:
    """Set torch's CPU threads (``requested``, or :func:`auto_threads` when None); returns a line saying so."""
    threads, reason = (requested, "--threads") if requested else auto_threads()
    torch.set_num_threads(threads)
    return f"torch CPU threads: {threads} ({reason}; choose with --threads N)"
