"""``faceage age``: age the faces in photos (or aligned face crops) to one or more target ages.

Outputs are ``OUT/<input stem>_to<AGE as given>.png`` and, with ``--progression``,
``OUT/<input stem>_progression.png``. An output that would replace one of the inputs is not written: that
(input, target) fails with an error and the others go on. Two inputs with the same stem (``a/x.jpg`` and
``b/x.png``) would write the same output: the second one fails the same way rather than replacing the
first's result. Exit status 0 when everything succeeded, 2 when anything failed.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from faceage.cli import CLIError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
PROGRESSION = "progression"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "age",
        help="age the faces in photos to target ages",
        description="Age every face in each photo (or an aligned face crop with --aligned) to each --to age. "
        "Writes OUT/<stem>_to<AGE>.png, and OUT/<stem>_progression.png with --progression.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files (JPEG, PNG, WebP) or folders of them")
    p.add_argument(
        "--to", dest="targets", action="append", default=[], metavar="AGE",
        help="target age in years (70) or a group label of the model (30-39); repeatable",
    )  # fmt: skip
    p.add_argument("--model", help="model name, exported folder, checkpoint .pt or .onnx (default: bundled model)")
    p.add_argument("--aligned", action="store_true", help="inputs are aligned face crops: no detection or paste-back")
    p.add_argument("--out", type=Path, default=Path("aged"), help="output folder (default: ./aged)")
    p.add_argument("--json", action="store_true", help="print one JSON array of results on stdout")
    p.add_argument(
        "--progression", action="store_true", help="also write a labelled strip across every age group per input"
    )
    p.add_argument("--largest", action="store_true", help="age only the largest face in each photo")
    p.add_argument("--backend", choices=["torch", "onnx"], help="default: onnx for an .onnx model, torch otherwise")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="torch precision (default fp32)")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.set_defaults(func=run)


def expand_inputs(inputs: list[str]) -> Iterator[tuple[Path, str | None]]:
    """Each input file, with folders replaced by their images (sorted); ``(path, error)`` for bad ones."""
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                yield path, "folder holds no JPEG, PNG or WebP images"
            yield from ((p, None) for p in images)
        elif path.is_file():
            yield path, None
        else:
            yield path, "no such file or folder"


def output_name(stem: str, target: str) -> str:
    """``<stem>_to<target>.png`` for a target as typed, or ``<stem>_progression.png``."""
    if target == PROGRESSION:
        return f"{stem}_{PROGRESSION}.png"
    return f"{stem}_to{target.strip()}.png"


class _Writer:
    """Writes PNGs atomically, refusing to replace an input or an output already written in this run."""

    def __init__(self, inputs: list[Path]) -> None:
        self.inputs = {p.resolve() for p in inputs}
        self.written: dict[Path, Path] = {}

    def save(self, image, out: Path, source: Path) -> None:
        from faceage.utils import atomic_write_bytes

        resolved = out.resolve()
        if resolved in self.inputs:
            raise ValueError(f"output {out} would overwrite an input; choose another --out")
        if resolved in self.written:
            raise ValueError(f"output {out} was already written for {self.written[resolved]} (same file stem)")
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        atomic_write_bytes(out, buf.getvalue())
        self.written[resolved] = source


def _jobs(ager, args: argparse.Namespace) -> list[tuple[str, str]]:
    """``(target as given, group label)`` for every output of one input, the progression strip last."""
    jobs = [(t, ager.labels[ager.group(t)]) for t in args.targets]
    return jobs + [(PROGRESSION, "all")] if args.progression else jobs


def _result(
    path: Path, job: tuple[str, str], *, output: Path | None = None, error: str | None = None, faces: int | None = None
) -> dict:
    """One JSON object of the ``--json`` array; ``error`` is prefixed with the input's path."""
    return {
        "input": str(path),
        "target": job[0],
        "group": job[1],
        "output": None if output is None else str(output),
        "ok": error is None,
        "error": None if error is None else f"{path}: {error}",
        "faces": faces,
    }


def _process(ager, path: Path, args: argparse.Namespace, writer: _Writer) -> list[dict]:
    """All results for one input file; failures are recorded, never raised."""
    from faceage.data.imageio import ImageError, read_image
    from faceage.infer import NoFaceError

    jobs = _jobs(ager, args)
    try:
        image = read_image(path)
        images, faces = [], 1
        if args.targets:
            aged = ager.transform(image, args.targets, aligned=args.aligned, largest=args.largest)
            images, faces = aged.images, aged.faces
        if args.progression:
            images.append(ager.progression(image, aligned=args.aligned))
    except NoFaceError as e:
        return [_result(path, job, error=str(e), faces=0) for job in jobs]
    except ImageError as e:
        return [_result(path, job, error=e.reason + (f" ({e.detail})" if e.detail else "")) for job in jobs]
    except (OSError, ValueError) as e:
        return [_result(path, job, error=str(e)) for job in jobs]
    results = []
    for job, img in zip(jobs, images, strict=True):
        out = args.out / output_name(path.stem, job[0])
        try:
            writer.save(img, out, path)
            results.append(_result(path, job, output=out, faces=faces))
        except (OSError, ValueError) as e:
            results.append(_result(path, job, error=str(e), faces=faces))
    return results


def run(args: argparse.Namespace) -> int:
    if not args.targets and not args.progression:
        raise CLIError("give at least one --to AGE (e.g. --to 70 or --to 30-39), or --progression")
    from tqdm import tqdm

    from faceage.infer import ModelNotFoundError, load

    try:
        ager = load(args.model, args.device, backend=args.backend, precision=args.precision)
    except (ModelNotFoundError, ValueError, ImportError) as e:
        raise CLIError(str(e)) from None
    except RuntimeError as e:  # weights that do not fit the architecture (another faceage version)
        raise CLIError(f"cannot load model {args.model or 'bundled'}: {str(e).splitlines()[0]}") from None
    for t in args.targets:
        try:
            ager.group(t)
        except ValueError as e:
            raise CLIError(f"{e} (model {ager.source})") from None
    print(f"faceage age: {ager}", file=sys.stderr)
    expanded = list(expand_inputs(args.inputs))
    writer = _Writer([p for p, err in expanded if err is None])
    results: list[dict] = []
    for path, error in tqdm(expanded, desc="ageing", unit="image", file=sys.stderr, disable=None):
        if error is None:
            results += _process(ager, path, args, writer)
        else:
            results += [_result(path, job, error=error) for job in _jobs(ager, args)]
    _report(results, args.json)
    return 0 if all(r["ok"] for r in results) else 2


def _report(results: list[dict], as_json: bool) -> None:
    for r in results:
        if not r["ok"]:
            print(f"faceage age: error: {r['error']}", file=sys.stderr)
        elif not as_json:
            print(r["output"])
    if as_json:
        print(json.dumps(results, indent=2))
    failed = sum(not r["ok"] for r in results)
    print(f"faceage age: {len(results) - failed} written, {failed} failed", file=sys.stderr)
