"""``faceage bench WHAT``: benchmarks that print the figures the project promises.

Each benchmark lives in ``faceage.bench.<name>`` and defines ``add_arguments(parser)`` and
``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib

BENCHES: dict[str, tuple[str, str]] = {
    # name: (module, one-line help)
    "train": ("faceage.bench.train", "G+D training img/s in fp32 and bf16, and peak memory"),
    "data": ("faceage.bench.data", "prepare wall time for a dataset folder and loader images/s from its cache"),
    "face": ("faceage.bench.face", "embeddings/s (dlib vs PyTorch port) and detection + alignment ms"),
    "age": ("faceage.bench.age", "ms per face (eager fp32/bf16, onnxruntime) and whole-photo latency"),
    "web": ("faceage.web.bench", "p50 / p95 latency per photo for simulated users of a local `faceage web`"),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark and print its figures")
    which = p.add_subparsers(dest="bench", metavar="WHAT", required=True)
    for name, (module, help_) in BENCHES.items():
        mod = importlib.import_module(module)
        q = which.add_parser(name, help=help_)
        mod.add_arguments(q)
        q.set_defaults(func=mod.run)
