"""``faceage face``: face descriptors and same-person checks with dlib's recogniser (or its PyTorch port)."""

from __future__ import annotations

import argparse
import json
import sys

from faceage.cli import CLIError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("face", help="face descriptors (embed) and same-person checks (verify)")
    which = p.add_subparsers(dest="face_command", metavar="ACTION", required=True)

    e = which.add_parser(
        "embed",
        help="print the 128-D descriptor of the largest face in each image",
        description="Print dlib's 128-D descriptor of the largest face in each image. Exit status 2 if any failed.",
    )
    e.add_argument("images", nargs="+", metavar="IMAGE")
    _common(e)
    e.add_argument("--json", action="store_true", help='print a JSON array of {"input", "embedding", "ok", "error"}')
    e.set_defaults(func=run_embed)

    v = which.add_parser(
        "verify",
        help="say whether two images show the same person",
        description="Print the descriptor distance between the largest faces of A and B, and whether it is "
        "below the threshold (dlib's 0.6): 'same' or 'different'. Exit status 2 if a face is missing.",
    )
    v.add_argument("a", metavar="A")
    v.add_argument("b", metavar="B")
    _common(v)
    v.add_argument("--threshold", type=float, default=0.6, help="same person below this distance (default 0.6)")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.set_defaults(func=run_verify)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend", choices=["dlib", "torch"], default="dlib",
        help="dlib's own network (default) or faceage's PyTorch port of it (same descriptors, batched)",
    )  # fmt: skip
    p.add_argument("--aligned", action="store_true", help="each image is already a face crop: use all of it")
    p.add_argument("--detector", choices=["hog", "cnn"], default="hog", help="dlib face detector (default hog)")


def _chips(paths: list[str], aligned: bool, detector: str) -> list[tuple[str, object, str | None]]:
    """``(path, 150x150 chip or None, error)`` per input; errors name the file and say what to do."""
    from faceage.data.imageio import ImageError, read_image
    from faceage.face.identity import face_chip

    out = []
    for path in paths:
        try:
            chip = face_chip(read_image(path), aligned=aligned, detector=detector)
        except ImageError as e:
            out.append((path, None, str(e)))
            continue
        error = None if chip is not None else f"{path}: no face found (pass --aligned if it is a face crop)"
        out.append((path, chip, error))
    return out


def _embed(chips: list, backend: str):
    from faceage.face.identity import dlib_chip_embeddings, torch_chip_embeddings

    if backend == "dlib":
        return dlib_chip_embeddings(chips)
    from faceage.face.resnet import DlibResNet

    return torch_chip_embeddings(chips, DlibResNet.from_dlib())


def run_embed(args: argparse.Namespace) -> int:
    items = _chips(args.images, args.aligned, args.detector)
    found = [chip for _, chip, _ in items if chip is not None]
    embeddings = iter(_embed(found, args.backend)) if found else iter(())
    results = []
    for path, chip, error in items:
        vector = next(embeddings) if chip is not None else None
        results.append(
            {
                "input": path,
                "embedding": None if vector is None else [float(v) for v in vector],
                "ok": error is None,
                "error": error,
            }
        )
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            print(f"{r['input']}: " + (" ".join(f"{v:.4f}" for v in r["embedding"]) if r["ok"] else "FAILED"))
    for r in results:
        if not r["ok"]:
            print(f"faceage face embed: error: {r['error']}", file=sys.stderr)
    return 0 if all(r["ok"] for r in results) else 2


def run_verify(args: argparse.Namespace) -> int:
    from faceage.face.identity import embedding_distance

    items = _chips([args.a, args.b], args.aligned, args.detector)
    errors = [error for _, _, error in items if error]
    if errors:
        raise CLIError("; ".join(errors))
    a, b = _embed([chip for _, chip, _ in items], args.backend)
    distance = float(embedding_distance(a, b))
    same = distance < args.threshold
    if args.json:
        print(json.dumps({"a": args.a, "b": args.b, "distance": distance, "threshold": args.threshold, "same": same}))
    else:
        print(f"distance {distance:.4f}: {'same' if same else 'different'} (threshold {args.threshold})")
    return 0
