"""The ``faceage`` command line: one subcommand per module, each a thin layer over the Python API.

Every subcommand module defines ``add_parser(subparsers)``, which registers its parser and sets
``func`` to the function that runs it. Heavy imports (torch, dlib) happen inside those functions so
that ``faceage --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module; the order is the order shown in --help.
COMMANDS: dict[str, str] = {
    "info": "faceage.cli.info",
    "prepare": "faceage.cli.prepare",
    "train": "faceage.cli.train",
    "face": "faceage.cli.face",
    "age": "faceage.cli.age",
    "demo": "faceage.cli.demo",
    "web": "faceage.cli.web",
    "export": "faceage.cli.export",
    "eval": "faceage.cli.eval",
    "train-age-estimator": "faceage.cli.train_age_estimator",
    "bench": "faceage.cli.bench",
}


class CLIError(Exception):
    """An error the user can fix; printed without a traceback, exit status 2."""


def add_overrides_argument(p: argparse.ArgumentParser, example: str) -> None:
    """``--set SECTION.KEY=VALUE`` (repeatable) into ``args.overrides``, for commands that load a config."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"override a config value, e.g. --set {example} (repeatable)",
    )


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    """``--precision {auto,fp32,bf16}`` (default auto: bf16 only where it is faster; see faceage.precision)."""
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="compute precision (default auto: bf16 autocast on CUDA and on CPUs with AMX-BF16, else fp32; "
        "`faceage info` says what auto picks here)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faceage", description="Face age transformation: train, evaluate and age real photos."
    )
    from faceage import __version__

    parser.add_argument("--version", action="version", version=f"faceage {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"faceage {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"faceage {args.command}: interrupted", file=sys.stderr)
        return 130
