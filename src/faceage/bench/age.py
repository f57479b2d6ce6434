"""``faceage bench age``: how fast faceage ages faces on this machine.

Prints ms per face at the model's resolution for eager fp32, eager bf16 (autocast) and onnxruntime at
batch 1 and 16 (targets at random continuous group positions, as ages in years give), then the latency of
ageing a whole 1024x768 photo to 37 years (detection, alignment, generator, colour match and paste-back) at
``--precision`` (auto by default, as ``faceage age`` runs). Without
``--model`` it times a randomly initialised generator of the default training preset (RAGAN) at ``--size``
px: speed does not depend on the weights.

``--rss`` adds the peak resident memory of ``faceage age PHOTO --to ...`` on a ``--photo-mp`` megapixel
photo (the bundled astronaut upscaled, or ``--photo``) for each count of ``--rss-targets``, each in a fresh
process: the figure that shows whether memory grows with the number of targets.

``--quality`` prints what the photo pipeline keeps and changes instead of speed, for ``--model`` (default:
the bundled model): the faces found in the bundled astronaut photo (one: her mission patch is no face) at
its size and Lanczos-upscaled to 2048 px; the fine detail of the face kept when that 2048 px photo is aged
(``faceage.eval.metrics.highpass_correlation`` of input and output over the face's box, sigma 1 px: 1.0 is
every pore and hair kept; a plain round trip through the model's resolution for reference); and the largest
chroma of grayscale photos aged to 70 (0 when they come back grayscale): the astronaut's and Grace Hopper's
portraits at three scales, mirrored, or the images in ``--gray-photos DIR``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from faceage.bench import time_ms
from faceage.cli import CLIError, add_precision_argument

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

PHOTO_SIZE = (1024, 768)  # width, height of the whole-photo benchmark
MAX_RSS_TARGETS = 100  # distinct whole-year target ages 1..100
QUALITY_SIDE = 2048  # --quality: the astronaut photo is upscaled to this many pixels a side
QUALITY_GRAY_PHOTOS = 12  # --quality: grayscale photos aged (the most taken from --gray-photos)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model name or path (default: a random RAGAN at --size)")
    p.add_argument("--size", type=int, default=256, help="resolution of the random model (default 256)")
    p.add_argument(
        "--preset", default="ragan_utk128", help="training preset of the random model (default: %(default)s)"
    )
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="batch sizes (default 1 16)")
    p.add_argument(
        "--backends", nargs="+", default=["fp32", "bf16", "onnx"], choices=["fp32", "bf16", "onnx"],
        help="what to time (default: all three)",
    )  # fmt: skip
    p.add_argument("--repeats", type=int, default=5, help="timed runs per figure; the median is reported")
    p.add_argument("--photo", type=Path, help=f"photo for the whole-photo figure (default: astronaut on {PHOTO_SIZE})")
    add_precision_argument(p)
    p.add_argument(
        "--rss",
        action="store_true",
        help="also print the peak RSS of `faceage age` (at --precision) on a --photo-mp photo, "
        "for each --rss-targets count",
    )
    p.add_argument(
        "--photo-mp", type=float, default=24.0, metavar="MP",
        help="--rss: megapixels of the 3:2 test photo, made from --photo or the astronaut (default 24: 6000x4000)",
    )  # fmt: skip
    p.add_argument(
        "--rss-targets", type=int, nargs="+", default=[1, 10], metavar="N",
        help="--rss: numbers of --to targets to measure, each in a fresh process (default 1 10)",
    )  # fmt: skip
    p.add_argument(
        "--quality", action="store_true",
        help="print quality figures instead of speed: faces found in the astronaut, fine detail kept at 2048 px, "
        "chroma of aged grayscale photos (model: --model, default the bundled one)",
    )  # fmt: skip
    p.add_argument(
        "--quality-targets", nargs="+", default=["70", "5"], metavar="AGE",
        help="--quality: ages the 2048 px astronaut is aged to (default 70 5)",
    )  # fmt: skip
    p.add_argument(
        "--gray-photos", type=Path, metavar="DIR",
        help=f"--quality: age grayscale versions of the first {QUALITY_GRAY_PHOTOS} images here (default: the "
        "astronaut and Grace Hopper, three scales, mirrored)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _generator(args: argparse.Namespace):
    """``(generator in fp32 on CPU, meta, what it is)`` for the given model or a random RAGAN of ``--preset``."""
    import dataclasses

    import torch

    from faceage.models.pretrained import load_generator
    from faceage.models.registry import get_model

    if args.model:
        from faceage.infer.resolve import resolve_model

        path = resolve_model(args.model)
        generator, meta = load_generator(path, "cpu")
        return generator, meta, str(path)
    from faceage.train.config import load_config

    run = load_config(args.preset, [f"train.image_size={args.size}"])
    config = json.loads(json.dumps(dataclasses.asdict(run.model_config)))  # tuples -> lists, as in config.json
    torch.manual_seed(0)
    generator = get_model(run.model).build_generator(config).eval()
    meta = {"model": run.model, "model_config": config, "scheme": run.scheme.to_dict(), "image_size": args.size}
    what = f"random {run.model} ({args.preset} preset at {args.size}px, {run.scheme.name})"
    return generator, {**meta, "align": None}, what


def _backends(generator, meta: dict, names: list[str], workdir: Path) -> dict:
    from faceage.infer.backends import OnnxBackend, TorchBackend

    backends = {}
    for name in names:
        if name == "onnx":
            from faceage.infer.export import export_onnx

            backends["onnxruntime"] = OnnxBackend(export_onnx(generator, meta, workdir / "model.onnx"))
        else:
            backends[f"eager {name}"] = TorchBackend(generator, name)
    return backends


def _photo(path: Path | None) -> np.ndarray:
    """The benchmark photo: ``path``, or skimage's astronaut scaled to 768 px on a 1024x768 canvas."""
    import numpy as np

    if path is not None:
        from faceage.data.imageio import read_image

        return read_image(path)
    from PIL import Image
    from skimage.data import astronaut

    w, h = PHOTO_SIZE
    face = np.asarray(Image.fromarray(astronaut()).resize((h, h), Image.Resampling.BICUBIC))
    return np.pad(face, (((0, 0), ((w - h) // 2, (w - h) - (w - h) // 2), (0, 0))), mode="edge")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from faceage.infer.ager import Ager
    from faceage.infer.backends import TorchBackend

    if args.quality:
        report = _quality(args)
        _print_quality(report, args.json)
        return 0
    if args.rss and not (0 < args.photo_mp <= 500 and all(1 <= n <= MAX_RSS_TARGETS for n in args.rss_targets)):
        raise CLIError(f"--photo-mp must be in (0, 500] and --rss-targets in 1..{MAX_RSS_TARGETS}")
    try:
        generator, meta, what = _generator(args)
    except (FileNotFoundError, ValueError) as e:  # ModelNotFoundError is a FileNotFoundError
        raise CLIError(str(e)) from None
    size, groups = int(meta["image_size"]), len(meta["scheme"]["lower"])
    report: dict = {
        "model": what,
        "image_size": size,
        "threads": torch.get_num_threads(),
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "ms_per_face": {},
        "ms_per_face_best": {},
    }
    print(f"faceage bench age: {what}, {torch.get_num_threads()} threads", file=sys.stderr)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="faceage-bench-") as tmp:
        backends = _backends(generator, meta, args.backends, Path(tmp))
        for name, backend in backends.items():
            for batch in args.batches:
                x = rng.uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)
                t = rng.uniform(0, groups - 1, batch).astype(np.float32)  # continuous positions, as ages give
                median, best = time_ms(lambda b=backend, x=x, t=t: b(x, t), args.repeats, warmup=2)
                report["ms_per_face"][f"{name} batch {batch}"] = round(median / batch, 2)
                report["ms_per_face_best"][f"{name} batch {batch}"] = round(best / batch, 2)
                print(f"  {name:12s} batch {batch:3d}: {median / batch:8.2f} ms/face", file=sys.stderr)
        photo_backend = TorchBackend(generator, args.precision)
        name = f"eager {photo_backend.precision} ({photo_backend.precision_why})"
        report.update(_whole_photo(Ager(photo_backend, meta), args, name))
        if args.rss:
            report.update(_peak_rss(args, generator, meta, Path(tmp)))
    _print(report, args.json)
    return 0


def _whole_photo(ager, args: argparse.Namespace, backend: str) -> dict:
    """Latency of ageing a whole photo end to end, and of face detection alone."""
    from faceage.face import detect

    photo = _photo(args.photo)
    faces = len(detect(photo))
    if faces == 0:
        raise CLIError(f"no face found in the benchmark photo {args.photo or 'astronaut'}; pass --photo PATH")
    detect_ms = time_ms(lambda: detect(photo), args.repeats, warmup=2)
    total_ms = time_ms(lambda: ager.age(photo, 37), args.repeats, warmup=2)  # an age between groups
    return {
        "photo": f"{photo.shape[1]}x{photo.shape[0]}, {faces} face(s)",
        "photo_backend": backend,
        "photo_detect_ms": [round(v, 1) for v in detect_ms],
        "photo_total_ms": [round(v, 1) for v in total_ms],
    }


def _quality(args: argparse.Namespace) -> dict:
    """The ``--quality`` figures (see the module's docstring)."""
    import numpy as np
    import torch
    from PIL import Image

    from faceage.data.imageio import read_image
    from faceage.eval.metrics import highpass_correlation
    from faceage.infer import ModelNotFoundError, load
    from faceage.paths import EXAMPLE_PHOTO

    try:
        ager = load(args.model, "cpu", precision=args.precision)
    except (ModelNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None
    print(f"faceage bench age --quality: {ager}, {torch.get_num_threads()} threads", file=sys.stderr)
    photo = read_image(args.photo or EXAMPLE_PHOTO)
    scale = QUALITY_SIDE / max(photo.shape[:2])
    size = (round(photo.shape[1] * scale), round(photo.shape[0] * scale))
    big = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS))
    faces = ager.detect(big)
    if not faces:
        raise CLIError(f"no face found in {args.photo or EXAMPLE_PHOTO} at {size[0]}x{size[1]}; pass --photo PATH")
    x0, y0, x1, y1 = (int(round(v)) for v in faces[0].box)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size[0]), min(y1, size[1])
    box = np.s_[y0:y1, x0:x1]
    s = ager.image_size
    round_trip = np.asarray(
        Image.fromarray(big[box]).resize((s, s), Image.Resampling.LANCZOS).resize((x1 - x0, y1 - y0))
    )
    detail, change = {}, {}
    for to in args.quality_targets:
        out = np.asarray(ager.age(big, to, faces=faces[:1]))
        detail[str(to)] = round(highpass_correlation(big[box], out[box]), 3)
        change[str(to)] = round(float(np.abs(out[box].astype(np.int16) - big[box]).mean()), 2)
        del out
    return {
        "model": str(ager),
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "faces_found": {
            f"{photo.shape[1]}x{photo.shape[0]}": len(ager.detect(photo)),
            f"{size[0]}x{size[1]}": len(faces),
        },
        "face_box": [x0, y0, x1, y1],
        "detail_kept": detail,
        "detail_kept_round_trip": round(highpass_correlation(big[box], round_trip), 3),
        "mean_change": change,
        "gray_max_chroma": _gray_chroma(ager, args.gray_photos),
    }


def _gray_chroma(ager, folder: Path | None) -> list[int | None]:
    """The largest chroma of each grayscale photo aged to 70 (None: no face found in it)."""
    import numpy as np
    from matplotlib import cbook
    from PIL import Image

    from faceage.data.imageio import read_image
    from faceage.eval.metrics import max_chroma
    from faceage.infer import NoFaceError
    from faceage.paths import EXAMPLE_PHOTO

    if folder is not None:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
        grays = [Image.fromarray(read_image(f)).convert("L") for f in files[:QUALITY_GRAY_PHOTOS]]
    else:
        people = [read_image(EXAMPLE_PHOTO), read_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))]
        grays = []
        for person in people:
            gray = Image.fromarray(person).convert("L")
            for zoom in (1.0, 0.6, 1.5):
                scaled = gray.resize((round(gray.width * zoom), round(gray.height * zoom)), Image.Resampling.LANCZOS)
                grays += [scaled, scaled.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    chroma = []
    for gray in grays:
        rgb = np.asarray(gray.convert("RGB"))  # a grayscale photo as a 3-channel array, as a gray JPEG decodes
        try:
            chroma.append(max_chroma(np.asarray(ager.age(rgb, 70))))
        except NoFaceError:
            chroma.append(None)
    return chroma


def _print_quality(report: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    print(f"model: {report['model']}  ({report['cpu']})")
    print("faces found in the astronaut photo: " + ", ".join(f"{k}: {v}" for k, v in report["faces_found"].items()))
    x0, y0, x1, y1 = report["face_box"]
    print(f"fine detail kept at 2048 px (high-pass correlation, sigma 1 px, face box {x0},{y0},{x1},{y1}):")
    for to, value in report["detail_kept"].items():
        print(f"  aged to {to:>5s}: {value:.3f}   (mean |change| {report['mean_change'][to]:.1f} levels)")
    print(f"  reference, a round trip through the model's resolution: {report['detail_kept_round_trip']:.3f}")
    chroma = [c for c in report["gray_max_chroma"] if c is not None]
    print(
        f"grayscale photos aged to 70: {len(chroma)} with a face of {len(report['gray_max_chroma'])}; "
        f"max chroma {max(chroma, default=0)} (per photo {chroma}); grayscale (<= 3): {sum(c <= 3 for c in chroma)}"
    )


def _peak_rss(args: argparse.Namespace, generator, meta: dict, workdir: Path) -> dict:
    """Peak RSS of ``faceage age PHOTO --to ... --largest`` for each ``--rss-targets`` count, a fresh process each."""
    from faceage.cli.info import collect
    from faceage.models.pretrained import save_pretrained

    if args.model:
        from faceage.infer.resolve import resolve_model

        model = resolve_model(args.model)
    else:
        model = save_pretrained(workdir / "model", generator, meta)
    photo, (width, height) = _big_photo(args.photo, args.photo_mp, workdir)
    peaks = {}
    for n in args.rss_targets:
        ages = [1 + i * (MAX_RSS_TARGETS - 1) // max(1, n - 1) for i in range(n)]  # distinct ages: distinct files
        argv = [sys.executable, "-m", "faceage", "age", str(photo), "--largest", "--model", str(model)]
        argv += ["--out", str(workdir / f"aged{n}"), "--precision", args.precision, "--max-pixels", str(width * height)]
        peak = round(_child_peak_rss(argv + [f"--to={a}" for a in ages]) / 2**20)
        peaks[f"{n} target{'s' if n > 1 else ''}"] = peak
        print(f"  peak RSS of faceage age, {n:3d} target(s): {peak:6d} MiB", file=sys.stderr)
    return {
        "rss_photo": f"{width}x{height} ({width * height / 1e6:.1f} MP)",
        "rss_cpu": collect()["cpu"]["model"],
        "peak_rss_mib": peaks,
    }


def _big_photo(source: Path | None, megapixels: float, workdir: Path) -> tuple[Path, tuple[int, int]]:
    """A 3:2 JPEG of ``megapixels`` MP: ``source`` (default: the bundled astronaut) scaled to its height, padded."""
    import numpy as np
    from PIL import Image

    from faceage.data.imageio import read_image
    from faceage.paths import EXAMPLE_PHOTO

    height = round(math.sqrt(megapixels * 1e6 / 1.5))
    width = round(1.5 * height)
    image = read_image(source or EXAMPLE_PHOTO)
    scaled = Image.fromarray(image).resize((round(image.shape[1] * height / image.shape[0]), height), Image.BICUBIC)
    pixels = np.asarray(scaled)[:, :width]
    left = (width - pixels.shape[1]) // 2
    pixels = np.pad(pixels, ((0, 0), (left, width - pixels.shape[1] - left), (0, 0)), mode="edge")
    path = workdir / f"photo_{megapixels:g}mp.jpg"
    Image.fromarray(pixels).save(path, quality=90)
    return path, (width, height)


def _child_peak_rss(argv: list[str]) -> int:
    """Run ``argv`` and return its peak resident set size in bytes (its own, from ``wait4``); CLIError if it fails."""
    if not hasattr(os, "wait4"):
        raise CLIError("--rss needs os.wait4 (Linux or macOS)")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    if proc.returncode != 0:
        raise CLIError(f"`faceage age` on the benchmark photo failed ({proc.returncode}): {log.strip()[-500:]}")
    return usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux


def _print(report: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    print(f"model: {report['model']}  ({report['threads']} threads, {report['cpu']})")
    print(f"ms per face at {report['image_size']}px         median     best")
    for k, v in report["ms_per_face"].items():
        print(f"  {k:26s} {v:8.2f} {report['ms_per_face_best'][k]:8.2f}")
    print(f"whole photo {report['photo']} with {report['photo_backend']}, ms:")
    print(f"  detection                  {report['photo_detect_ms'][0]:8.1f} {report['photo_detect_ms'][1]:8.1f}")
    print(f"  total (detect+align+G+paste) {report['photo_total_ms'][0]:6.1f} {report['photo_total_ms'][1]:8.1f}")
    if "peak_rss_mib" in report:
        print(f"peak RSS of `faceage age PHOTO --largest` on a {report['rss_photo']} photo ({report['rss_cpu']}):")
        for k, v in report["peak_rss_mib"].items():
            print(f"  {k:26s} {v:8d} MiB")
