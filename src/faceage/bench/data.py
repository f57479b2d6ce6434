"""``faceage bench data``: how fast faces are prepared and how fast training can read them.

Two figures: the wall time of ``faceage prepare`` on a dataset folder (a fresh cache in a temporary
folder, UTKFace by default), and the loader's steady-state images per second from a cache (the one
just built, or ``--cache``) with augmentation on, after a warm-up that starts the workers.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from faceage.cli import CLIError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, help="dataset folder to prepare (default: DATA_ROOT/utkface)")
    p.add_argument("--dataset", default="utkface", help="dataset reader for --root (default utkface)")
    p.add_argument("--cache", type=Path, help="time the loader on this cache and skip the prepare figure")
    p.add_argument("--size", type=int, default=128, help="image size in px (default 128)")
    p.add_argument("--workers", type=int, default=2, help="processes for prepare and the loader (default 2)")
    p.add_argument("--batch-size", type=int, default=64, help="loader batch size (default 64)")
    p.add_argument("--batches", type=int, default=200, help="timed loader batches (default 200)")
    p.add_argument("--no-augment", action="store_true", help="time the loader without augmentation")


def run(args: argparse.Namespace) -> int:
    print(f"CPU: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start (figures are noisy when busy)")
    if args.cache is not None:
        _loader(args, args.cache)
        return 0
    with tempfile.TemporaryDirectory(prefix="faceage-bench-") as tmp:
        cache = _prepare(args, Path(tmp) / "cache")
        _loader(args, cache)
    return 0


def _prepare(args: argparse.Namespace, out: Path) -> Path:
    from faceage import paths
    from faceage.data.prepare import PrepareConfig, prepare

    root = args.root or paths.data_root() / "utkface"
    if not root.exists():
        raise CLIError(f"{root} does not exist; pass --root DIR (a dataset folder) or --cache CACHE")
    cfg = PrepareConfig(dataset=args.dataset, root=root, out=out, size=args.size, workers=args.workers)
    start = time.perf_counter()
    result = prepare(cfg, log=lambda message: None)
    seconds = time.perf_counter() - start
    print(
        f"prepare {seconds:6.1f} s    ({result.files} files -> {result.images} images, {args.size} px, "
        f"{args.workers} workers, {args.dataset} at {root})"
    )
    return out


def _loader(args: argparse.Namespace, cache: Path) -> None:
    import torch

    from faceage.data.cache import CacheError, open_cache
    from faceage.data.loader import make_loader

    try:
        faces = open_cache(cache)
    except CacheError as e:
        raise CLIError(str(e)) from None
    augment = not args.no_augment
    loader = make_loader(
        faces, "all", "utk14", args.batch_size, augment=augment, shuffle=True, num_workers=args.workers, drop_last=True
    )
    if len(loader) == 0:
        raise CLIError(f"{cache} holds {len(faces)} faces, fewer than one batch of {args.batch_size}")
    batches = _forever(loader)
    for _ in range(min(10, len(loader))):  # start the workers and warm the page cache
        next(batches)
    images = 0
    start, cpu = time.perf_counter(), _cpu_seconds()
    for _ in range(args.batches):
        batch = next(batches)
        images += batch["image"].shape[0]
    assert batch["image"].dtype == torch.float32, batch["image"].dtype
    rate = images / (time.perf_counter() - start)
    mode = "augment" if augment else "no augment"
    print(f"loader  {rate:6.0f} img/s  ({faces.size} px, batch {args.batch_size}, {args.workers} workers, {mode})")
    cpu_ms = 1000 * (_cpu_seconds() - cpu) / args.batches
    if cpu_ms > 0:  # what the machine could do if nothing else ran: CPU time per batch, all processes
        cores = min(os.cpu_count() or 1, args.workers + 1)
        print(
            f"        {cpu_ms:.1f} CPU ms per batch in the loader's processes: "
            f"~{cores * args.batch_size * 1000 / cpu_ms:.0f} img/s on {cores} free cores"
        )


def _cpu_seconds() -> float:
    """CPU time of this process and its children (the loader's workers), from /proc; 0 where absent."""
    if not Path("/proc/self/stat").exists():
        return 0.0
    me, tick, total = os.getpid(), os.sysconf("SC_CLK_TCK"), 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == me or stat.parent.name == str(me):  # parent pid, or this process
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def _forever(loader):
    while True:
        yield from loader
