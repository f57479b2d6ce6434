"""``faceage age``: age the faces in photos (or aligned face crops) to one or more target ages.

A target is an age in years (``--to 37``: 37 years, which the generator gets as a float position between the age
groups around it) or a group label of the model (``--to 30-39``: exactly that group). Outputs are
``OUT/<input stem>_to<AGE as given>.png`` and, with ``--progression`` (every group, or the ages of
``--progression-ages``), ``OUT/<input stem>_progression.png``. An output that would replace one of the inputs
is not written: that (input, target) fails with an error and the others go on. Two inputs with the same stem
(``a/x.jpg`` and ``b/x.png``) would write the same output: the second one fails the same way rather than
replacing the first's result. Exit status 0 when everything succeeded, 2 when anything failed.

Each input is decoded once (photos over ``--max-pixels`` are refused from their header) and its outputs are
made and written one target at a time, so ten targets of a 24 MP photo need no more memory than one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from faceage import MAX_PIXELS
from faceage.cli import CLIError, add_precision_argument

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
PROGRESSION = "progression"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "age",
        help="age the faces in photos to target ages",
        description="Age every face in each photo (or an aligned face crop with --aligned) to each --to age. "
        "An age in years is that age (37: between the model's age groups around it), a group label that group. "
        "Writes OUT/<stem>_to<AGE>.png, and OUT/<stem>_progression.png with --progression.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files (JPEG, PNG, WebP) or folders of them")
    p.add_argument(
        "--to", dest="targets", action="append", default=[], metavar="AGE",
        help="target age in years (37: between the model's age groups around it) or a group label of the model "
        "(30-39: exactly that group); repeatable",
    )  # fmt: skip
    p.add_argument("--model", help="model name, exported folder, checkpoint .pt or .onnx (default: bundled model)")
    p.add_argument("--aligned", action="store_true", help="inputs are aligned face crops: no detection or paste-back")
    p.add_argument("--out", type=Path, default=Path("aged"), help="output folder (default: ./aged)")
    p.add_argument("--json", action="store_true", help="print one JSON array of results on stdout")
    p.add_argument(
        "--progression", action="store_true", help="also write a labelled strip across every age group per input"
    )
    p.add_argument(
        "--progression-ages", type=target_list, metavar="AGES",
        help="the strip's targets instead of every group: ages or group labels, comma-separated (5,20,37,70); "
        "implies --progression",
    )  # fmt: skip
    p.add_argument("--largest", action="store_true", help="age only the largest face in each photo")
    p.add_argument(
        "--detect-threshold", type=float, default=0.0, metavar="SCORE",
        help="dlib HOG score a detection needs to be aged (default 0.0; weak ones below 0.5 must also be "
        "confirmed by dlib's CNN, and every face needs a face's landmark layout)",
    )  # fmt: skip
    p.add_argument(
        "--source-age", type=float, metavar="YEARS",
        help="Age-cGAN: the age of the faces in the inputs, at which each face is reconstructed (its latent fitted) "
        "before it is re-aged (default: the model's own, 29); other models age the photo directly and refuse it",
    )  # fmt: skip
    p.add_argument(
        "--latent-mode", metavar="MODE",
        help="Age-cGAN: how each face's latent is fitted from the encoder's E(x): none (E(x) as it is), pixel "
        "(pixelwise reconstruction) or identity (dlib descriptor distance; ~1.5 s a face on a CPU) "
        "(default: the model's own); other models and ONNX files refuse it",
    )  # fmt: skip
    p.add_argument("--latent-steps", type=int, metavar="N", help="Age-cGAN: Adam steps of the latent fitting per face")
    p.add_argument("--latent-lr", type=float, metavar="LR", help="Age-cGAN: step size of the latent fitting")
    p.add_argument("--backend", choices=["torch", "onnx"], help="default: onnx for an .onnx model, torch otherwise")
    add_precision_argument(p)
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument(
        "--max-pixels", type=positive_int, default=MAX_PIXELS, metavar="N",
        help=f"refuse photos with more pixels, before decoding them (default {MAX_PIXELS:_}: a 24 MP photo fits)",
    )  # fmt: skip
    p.set_defaults(func=run)


def positive_int(text: str) -> int:
    """An argparse type: a whole number > 0 (``64000000`` or ``64_000_000``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def target_list(text: str) -> list[str]:
    """An argparse type: comma-separated targets (``5,20,37,70`` or ``0-2,70+``), at least one."""
    targets = [t.strip() for t in text.split(",") if t.strip()]
    if not targets:
        raise argparse.ArgumentTypeError(f"{text!r} names no ages; write them comma-separated, e.g. 5,20,37,70")
    return targets


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
    """Writes PNGs atomically, each labelled synthetic (faceage.provenance), refusing to replace an input or an
    output already written in this run."""

    def __init__(self, inputs: list[Path], model: str, strip_labels: list[str]) -> None:
        self.inputs = {p.resolve() for p in inputs}
        self.written: dict[Path, Path] = {}
        self.model, self.strip_labels = model, strip_labels  # the model's name and the strip's tiles, for the labels

    def save(self, image, out: Path, source: Path, job: Job) -> None:
        from faceage.provenance import Provenance, save_png
        from faceage.utils import atomic_open

        resolved = out.resolve()
        if resolved in self.inputs:
            raise ValueError(f"output {out} would overwrite an input; choose another --out")
        if resolved in self.written:
            raise ValueError(f"output {out} was already written for {self.written[resolved]} (same file stem)")
        target, group = (", ".join(self.strip_labels), None) if job.target == PROGRESSION else (job.target, job.group)
        with atomic_open(out, "wb") as f:  # encoded straight to the file: no second copy in memory
            save_png(image, f, Provenance(model=self.model, target=str(target), group=group))
        self.written[resolved] = source


class Job(NamedTuple):
    """One output of an input: the target as given, the group its age falls in, the generator's group position."""

    target: str
    group: str
    position: float | None


def _jobs(ager, args: argparse.Namespace) -> list[Job]:
    """Every output of one input, the progression strip last."""
    jobs = [Job(t, ager.labels[ager.group(t)], round(ager.position(t), 4)) for t in args.targets]
    return jobs + [Job(PROGRESSION, "all", None)] if args.progression else jobs


def _result(
    path: Path, job: Job, *, output: Path | None = None, error: str | None = None, faces: int | None = None
) -> dict:
    """One JSON object of the ``--json`` array; ``error`` is prefixed with the input's path."""
    return {
        "input": str(path),
        "target": job.target,
        "group": job.group,
        "position": job.position,
        "output": None if output is None else str(output),
        "ok": error is None,
        "error": None if error is None else f"{path}: {error}",
        "faces": faces,
    }


def _process(ager, path: Path, args: argparse.Namespace, writer: _Writer) -> list[dict]:
    """All results for one input file, each output written as soon as it is made; failures are recorded."""
    from faceage.data.imageio import ImageError, read_image
    from faceage.infer import NoFaceError

    jobs = _jobs(ager, args)
    try:
        image = read_image(path, max_pixels=args.max_pixels)
        aged = ager.stream(image, args.targets, aligned=args.aligned, largest=args.largest) if args.targets else None
    except NoFaceError as e:
        return [_result(path, job, error=str(e), faces=0) for job in jobs]
    except ImageError as e:
        return [_result(path, job, error=e.reason + (f" ({e.detail})" if e.detail else "")) for job in jobs]
    except (OSError, ValueError) as e:
        return [_result(path, job, error=str(e)) for job in jobs]
    faces = aged.faces if aged is not None else 1
    results = []
    if aged is not None:
        for job in jobs[: len(args.targets)]:  # next() straight into _write: no name keeps the last output alive
            results.append(_write(writer, next(aged.images), path, job, args.out, faces))
    if args.progression:
        try:
            strip = ager.progression(image, args.progression_ages, aligned=args.aligned)
        except (OSError, ValueError) as e:
            return [*results, _result(path, jobs[-1], error=str(e), faces=0 if isinstance(e, NoFaceError) else faces)]
        results.append(_write(writer, strip, path, jobs[-1], args.out, faces))
    return results


def _write(writer: _Writer, image, path: Path, job: Job, out_dir: Path, faces: int) -> dict:
    out = out_dir / output_name(path.stem, job.target)
    try:
        writer.save(image, out, path, job)
    except (OSError, ValueError) as e:
        return _result(path, job, error=str(e), faces=faces)
    return _result(path, job, output=out, faces=faces)


def run(args: argparse.Namespace) -> int:
    args.progression = args.progression or args.progression_ages is not None
    if not args.targets and not args.progression:
        raise CLIError("give at least one --to AGE (e.g. --to 70 or --to 30-39), or --progression")
    if args.out.exists() and not args.out.is_dir():
        raise CLIError(f"--out {args.out} is a file; give a folder (it is created if missing)")
    from PIL import Image
    from tqdm import tqdm

    from faceage.infer import ModelNotFoundError, load

    # --max-pixels is the limit: Pillow's own decompression-bomb guard must not refuse a photo below it.
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < args.max_pixels:
        Image.MAX_IMAGE_PIXELS = args.max_pixels
    try:
        ager = load(
            args.model,
            args.device,
            backend=args.backend,
            precision=args.precision,
            max_pixels=args.max_pixels,
            detect_threshold=args.detect_threshold,
            source_age=args.source_age,
            latent_mode=args.latent_mode,
            latent_steps=args.latent_steps,
            latent_lr=args.latent_lr,
        )
    except (ModelNotFoundError, ValueError, ImportError) as e:
        raise CLIError(str(e)) from None
    except RuntimeError as e:  # weights that do not fit the architecture (another faceage version)
        raise CLIError(f"cannot load model {args.model or 'bundled'}: {str(e).splitlines()[0]}") from None
    for t in args.targets + (args.progression_ages or []):
        try:
            ager.position(t)
        except ValueError as e:
            raise CLIError(f"{e} (model {ager.source})") from None
    strip_labels = [ager.label(t) for t in args.progression_ages or ager.labels]
    print(f"faceage age: {ager}; precision {ager.backend.precision} ({ager.backend.precision_why})", file=sys.stderr)
    expanded = list(expand_inputs(args.inputs))
    writer = _Writer([p for p, err in expanded if err is None], args.model or "bundled default", strip_labels)
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
