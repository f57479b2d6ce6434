"""``faceage bench web``: several simulated users upload a photo and age it at once, against a local server.

The server is ``faceage web`` itself (``faceage.web.app.start``) on a free port of 127.0.0.1; each user is a
Gradio client with its own session that uploads a photo (the bundled astronaut, made unique per request so no
two uploads share a file), waits for its faces, and ages it. The latency of one photo is upload + detection +
ageing, as a user waits for it. Bounded in count (``--users`` x ``--photos``) and time (``--deadline``); it
prints the failures and the p50 / p95 latency.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import socket
import tempfile
import time
from pathlib import Path

from faceage.cli import CLIError

MAX_USERS = 32
MAX_PHOTOS = 10
TARGET_AGE = 70


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--users", type=int, default=8, help=f"simulated users at once (default 8, at most {MAX_USERS})")
    p.add_argument(
        "--photos", type=int, default=2, help=f"photos per user, one after another (default 2, ≤ {MAX_PHOTOS})"
    )
    p.add_argument("--photo", type=Path, help="photo to upload (default: the bundled astronaut)")
    p.add_argument("--model", help="method to age with (default: the bundled model)")
    p.add_argument("--concurrency", type=int, help="the server's requests at once (default: as `faceage web`)")
    p.add_argument("--deadline", type=float, default=300.0, help="seconds for the whole run (default 300)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.users <= MAX_USERS or not 1 <= args.photos <= MAX_PHOTOS:
        raise CLIError(f"--users must be 1..{MAX_USERS} and --photos 1..{MAX_PHOTOS}")
    try:
        from faceage.web.app import start
    except ImportError as e:
        raise CLIError(f"faceage bench web needs gradio ({e}): pip install 'faceage[web]'") from None
    from faceage.paths import EXAMPLE_PHOTO

    photo = args.photo or EXAMPLE_PHOTO
    server = start(host="127.0.0.1", port=_free_port(), model=args.model, concurrency=args.concurrency)
    try:
        with tempfile.TemporaryDirectory(prefix="faceage-bench-web-") as folder:
            uploads = _unique_copies(photo, Path(folder), args.users * args.photos)
            start_time = time.perf_counter()
            latencies, failures = _simulate(server.url, server.app.methods.default, uploads, args)
            wall = time.perf_counter() - start_time
    finally:
        server.close()
    report = _report(latencies, failures, wall, photo, server, args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return 0 if not failures else 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unique_copies(photo: Path, folder: Path, n: int) -> list[Path]:
    """``n`` copies of ``photo`` that differ only in a JPEG comment, so each upload is a file of its own."""
    from PIL import Image

    with Image.open(photo) as image:
        image = image.convert("RGB")
        copies = []
        for i in range(n):
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=95, comment=f"faceage bench web {i}".encode())
            copies.append(folder / f"{photo.stem}_{i}.jpg")
            copies[-1].write_bytes(buffer.getvalue())
    return copies


def _user(url: str, method: str, photos: list[Path]) -> list[tuple[float | None, str]]:
    """One simulated user: for each photo, ``(latency in s, "")`` or ``(None, what went wrong)``."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=False, analytics_enabled=False)
    results = []
    for path in photos:
        start = time.perf_counter()
        try:
            opened = client.predict(handle_file(str(path)), api_name="/upload")
            aged = client.predict(None, method, TARGET_AGE, api_name="/age")
        except Exception as e:  # a failed request is what this benchmark counts, whatever the cause
            results.append((None, f"{type(e).__name__}: {e}"))
            continue
        error = next((str(o[-1]) for o in (opened, aged) if str(o[-1]).startswith("⚠")), "")
        results.append(
            (None, error) if error or "faceage-after" not in str(aged[0]) else (time.perf_counter() - start, "")
        )
    client.close()
    return results


def _simulate(url: str, method: str, uploads: list[Path], args: argparse.Namespace) -> tuple[list[float], list[str]]:
    per_user = [uploads[i :: args.users] for i in range(args.users)]
    latencies: list[float] = []
    failures: list[str] = []
    pool = concurrent.futures.ThreadPoolExecutor(args.users)
    futures = [pool.submit(_user, url, method, photos) for photos in per_user]
    done, late = concurrent.futures.wait(futures, timeout=args.deadline)
    for future in done:
        for latency, error in future.result():
            if latency is None:
                failures.append(error)
            else:
                latencies.append(latency)
    failures += [f"not finished within the {args.deadline:g} s deadline"] * (len(late) * args.photos)
    pool.shutdown(wait=False, cancel_futures=True)
    return latencies, failures


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def _report(latencies: list[float], failures: list[str], wall: float, photo: Path, server, args) -> dict:
    import numpy as np

    from faceage.web.engine import cpu_cores

    lat = np.asarray(latencies, dtype=np.float64)
    return {
        "users": args.users,
        "photos_per_user": args.photos,
        "photo": photo.name,
        "method": server.app.methods.default,
        "target_age": TARGET_AGE,
        "concurrency": server.app.runner.workers,
        "requests": args.users * args.photos,
        "failed": len(failures),
        "errors": sorted(set(failures))[:5],
        "p50_s": float(np.percentile(lat, 50)) if len(lat) else None,
        "p95_s": float(np.percentile(lat, 95)) if len(lat) else None,
        "max_s": float(lat.max()) if len(lat) else None,
        "photos_per_s": len(lat) / wall,
        "wall_s": wall,
        "cpu": _cpu_model(),
        "cores": cpu_cores(),
    }


def _print(r: dict) -> None:
    print(
        f"faceage bench web: {r['users']} users x {r['photos_per_user']} photos ({r['photo']}, aged to "
        f"{r['target_age']} by {r['method']}) at once against a local server, {r['concurrency']} at a time"
    )
    print(f"  requests {r['requests']}, failed {r['failed']}" + "".join(f"\n    {e}" for e in r["errors"]))
    if r["p50_s"] is not None:
        print(
            f"  latency per photo (upload + detect + age): p50 {r['p50_s']:.2f} s, p95 {r['p95_s']:.2f} s, "
            f"max {r['max_s']:.2f} s"
        )
    print(f"  throughput {r['photos_per_s']:.2f} photos/s over {r['wall_s']:.1f} s")
    print(f"  CPU: {r['cpu']}, {r['cores']} cores")
