"""``faceage export``: turn a checkpoint or released folder into an ONNX file and/or a released folder.

``--onnx OUT.onnx`` writes one self-contained ONNX file (meta inside) and checks it against eager torch;
``--safetensors DIR`` writes ``model.safetensors`` + ``config.json`` (a training checkpoint's EMA generator);
``--half`` stores its weights as float16, half the size (a bundled model that must fit the package).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from faceage.cli import CLIError

# fp32 ONNX must reproduce eager torch this closely.
ONNX_TOLERANCE = 1e-3


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to ONNX or to a released safetensors folder")
    p.add_argument("--model", help="model name, exported folder or checkpoint .pt (default: bundled model)")
    p.add_argument("--onnx", type=Path, metavar="OUT.onnx", help="write an ONNX file (meta stored inside)")
    p.add_argument("--safetensors", type=Path, metavar="DIR", help="write a released folder (safetensors + config)")
    p.add_argument("--half", action="store_true", help="--safetensors: store the weights as float16 (half the size)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.onnx is None and args.safetensors is None:
        raise CLIError("nothing to do: give --onnx OUT.onnx and/or --safetensors DIR")
    if args.onnx is not None and (args.onnx.suffix != ".onnx" or args.onnx.is_dir()):
        raise CLIError(f"--onnx {args.onnx}: the file name must end in .onnx (and not be a folder)")
    if args.half and args.safetensors is None:
        raise CLIError("--half applies to --safetensors DIR; give one")
    if args.safetensors is not None and args.safetensors.exists() and not args.safetensors.is_dir():
        raise CLIError(f"--safetensors {args.safetensors} is a file; give a folder (it is created if missing)")
    from faceage.infer.resolve import ModelNotFoundError, resolve_model
    from faceage.models.pretrained import load_generator, save_pretrained

    try:
        path = resolve_model(args.model)
        if path.suffix == ".onnx":
            raise CLIError(f"{path} is already an ONNX file; export from a checkpoint .pt or a released folder")
        generator, meta = load_generator(path, "cpu")
    except (ModelNotFoundError, ValueError, KeyError) as e:
        raise CLIError(str(e)) from None
    except RuntimeError as e:  # weights that do not fit the architecture (another faceage version)
        raise CLIError(f"cannot load model {path}: {str(e).splitlines()[0]}") from None
    written: dict[str, str | float] = {"model": str(path)}
    if args.safetensors is not None:
        save_pretrained(args.safetensors, generator, meta, half=args.half)
        written["safetensors"] = str(args.safetensors)
        print(f"faceage export: wrote {args.safetensors}", file=sys.stderr)
    if args.onnx is not None:
        written.update(_export_onnx(generator, meta, args.onnx, args.opset))
    print(json.dumps(written))
    return 0


def _export_onnx(generator, meta: dict, out: Path, opset: int) -> dict:
    from faceage.infer.export import export_onnx, onnx_max_error

    try:
        export_onnx(generator, meta, out, opset=opset)
    except ImportError as e:
        raise CLIError(str(e)) from None
    error = onnx_max_error(generator, out)
    print(f"faceage export: wrote {out}; max |onnx - torch| = {error:.2e} (fp32)", file=sys.stderr)
    if hasattr(generator, "set_latent_fitting"):
        print(
            f"faceage export: note: {out} ages each face from its encoder's latent only (E(x) decoded by G, latent "
            "mode none): the per-face latent fitting (pixel or identity) is autograd steps that stay in Python; "
            "age with the checkpoint or --safetensors folder for it",
            file=sys.stderr,
        )
    if error > ONNX_TOLERANCE:
        raise CLIError(f"{out}: ONNX output differs from torch by {error:.2e} > {ONNX_TOLERANCE}; do not use it")
    return {"onnx": str(out), "onnx_max_error": error}
