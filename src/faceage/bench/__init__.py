"""Benchmarks behind ``faceage bench WHAT``: each module prints the figures the project promises."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, float]:
    """``(median, best)`` wall time of ``fn`` in ms; on a shared CPU the best run is the least disturbed one."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times), min(times)
