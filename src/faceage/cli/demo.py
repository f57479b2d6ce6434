"""``faceage demo``: age the bundled example photo with the bundled model — the first thing to run.

It is ``faceage age`` on ``faceage/examples/astronaut.jpg`` (public domain) with a few target ages and a
progression strip, so everything it prints and writes is what ``faceage age`` would.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from faceage.cli import add_precision_argument

DEFAULT_AGES = ["5", "20", "40", "70"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="age the bundled example photo to several ages",
        description="Age the bundled example photo (astronaut Eileen Collins, NASA, public domain) to each --to "
        "age and write a progression strip across every age group: OUT/astronaut_to<AGE>.png and "
        "OUT/astronaut_progression.png.",
    )
    p.add_argument(
        "--to", dest="targets", action="append", default=None, metavar="AGE",
        help=f"target age or group label, repeatable (default: {' '.join(DEFAULT_AGES)})",
    )  # fmt: skip
    p.add_argument("--model", help="model name, exported folder, checkpoint .pt or .onnx (default: bundled model)")
    p.add_argument("--out", type=Path, default=Path("aged"), help="output folder (default: ./aged)")
    add_precision_argument(p)
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from faceage.cli import main
    from faceage.paths import EXAMPLE_PHOTO

    argv = ["age", str(EXAMPLE_PHOTO), "--progression", "--largest", "--out", str(args.out)]
    argv += ["--precision", args.precision]
    for age in args.targets or DEFAULT_AGES:
        argv += ["--to", age]
    argv += ["--model", args.model] if args.model else []
    return main(argv + (["--device", args.device] if args.device else []))
