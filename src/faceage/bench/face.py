"""``faceage bench face``: face-recogniser throughput (dlib vs the PyTorch port) and detection + alignment latency.

Embeddings/s are measured on batches of 150x150 chips (the astronaut's face, repeated: speed does not
depend on the face) for dlib's own ``compute_face_descriptor`` and for ``DlibResNet`` in fp32 and in
bf16 autocast, each with contiguous and channels_last tensors; the fastest port variant is compared
with dlib. Detection + alignment is timed on a 1024x768 photo (the astronaut upscaled and padded):
HOG detection with 68 landmarks, then alignment and the face mask for every face found.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from faceage.bench import time_ms
from faceage.cli import CLIError

PHOTO_SIZE = (1024, 768)  # width, height


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=32, help="faces per batch (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per figure; the median is reported")
    p.add_argument("--size", type=int, default=256, help="aligned crop size for the alignment figure (default 256)")
    p.add_argument("--preset", default="utkface", help="alignment preset (default utkface)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _photo() -> np.ndarray:
    """The astronaut (512x512) upscaled to 768x768 and edge-padded to 1024x768."""
    try:
        from skimage.data import astronaut
    except ImportError:
        raise CLIError("this benchmark uses scikit-image's astronaut photo: pip install scikit-image") from None
    from PIL import Image

    w, h = PHOTO_SIZE
    face = np.asarray(Image.fromarray(astronaut()).resize((h, h), Image.Resampling.BICUBIC))
    left = (w - h) // 2
    return np.pad(face, ((0, 0), (left, w - h - left), (0, 0)), mode="edge")


def _recogniser_figures(chips: np.ndarray, repeats: int) -> dict:
    import torch

    from faceage.face.identity import chips_to_tensor, dlib_chip_embeddings
    from faceage.face.resnet import DlibResNet

    n = len(chips)
    dlib_chip_embeddings(chips[:1])  # dlib is slow: warm it up on one face, not a whole batch
    figures = {"dlib": 1000 * n / time_ms(lambda: dlib_chip_embeddings(chips), repeats, warmup=0)[0]}
    x = chips_to_tensor(chips)
    for layout in ("contiguous", "channels_last"):
        net = DlibResNet.from_dlib()
        if layout == "channels_last":
            net = net.to(memory_format=torch.channels_last)
        for precision in ("fp32", "bf16"):

            def step(net=net, precision=precision) -> None:
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    net(x)

            figures[f"torch {precision} {layout}"] = 1000 * n / time_ms(step, repeats)[0]
    return figures


def _photo_ms(photo: np.ndarray, size: int, preset: str, repeats: int) -> tuple[float, int]:
    from faceage.face import align, detect, face_mask

    found = []

    def step() -> None:
        faces = detect(photo)
        for face in faces:
            aligned = align(photo, face.landmarks, size, preset)
            face_mask(aligned.landmarks, size)
        found[:] = faces

    return time_ms(step, repeats)[0], len(found)


def run(args: argparse.Namespace) -> int:
    import torch

    from faceage.face import detect
    from faceage.face.identity import face_chip
    from faceage.precision import resolve_precision

    photo = _photo()
    chip = face_chip(photo)
    if chip is None:
        raise CLIError("no face found in the benchmark photo")
    chips = np.repeat(chip[None], args.batch, axis=0)
    detect(photo)  # loads the detector and the landmark model outside the timings
    rates = _recogniser_figures(chips, args.repeats)
    best = max((k for k in rates if k != "dlib"), key=rates.get)
    ms, faces = _photo_ms(photo, args.size, args.preset, args.repeats)
    result = {
        "device": f"cpu, {torch.get_num_threads()} torch threads; auto precision {resolve_precision('auto', 'cpu')[0]}",
        "batch": args.batch,
        "embeddings_per_s": {k: round(v, 1) for k, v in rates.items()},
        "port_best": best,
        "port_speedup_vs_dlib": round(rates[best] / rates["dlib"], 2),
        "photo": f"{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} astronaut, {faces} face(s), {args.preset} {args.size} px",
        "detect_align_ms": round(ms, 1),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"device: {result['device']}")
    print(f"embeddings/s at batch {args.batch}:")
    for name, rate in result["embeddings_per_s"].items():
        print(f"  {name:28s} {rate:8.1f}")
    print(f"port ({best}) vs dlib: {result['port_speedup_vs_dlib']}x")
    print(f"detection + alignment + mask, {result['photo']}: {ms:.1f} ms")
    return 0
