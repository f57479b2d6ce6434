"""``faceage info``: versions, device, CPU, what ``--precision auto`` picks and why, and search paths."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print versions, device, what --precision auto picks, and search paths")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def collect() -> dict:
    import torch

    from faceage import __version__, paths
    from faceage.precision import cpu_flags, resolve_precision

    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} device(s))"
    else:
        device = f"cpu ({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()})"
    versions = {"faceage": __version__, "python": _python_version(), "torch": torch.__version__}
    for dist in ["numpy", "pillow", "dlib-bin", "onnxruntime", "safetensors"]:
        versions[dist] = _version(dist)
    return {
        "versions": versions,
        "device": device,
        "cpu": {"model": _cpu_model(), "bf16_units": sorted(cpu_flags() & {"amx_bf16", "avx512_bf16"})},
        "precision_auto": dict(zip(("precision", "why"), resolve_precision("auto"), strict=True)),
        "data_root": str(paths.data_root()),
        "models_dirs": [str(p) for p in paths.models_dirs()],
        "configs_dir": str(paths.CONFIGS_DIR),
    }


def _cpu_model() -> str:
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _python_version() -> str:
    import platform

    return platform.python_version()


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print("versions:")
    for k, v in info["versions"].items():
        print(f"  {k:12s} {v or 'not installed'}")
    print(f"device:      {info['device']}")
    units = ", ".join(info["cpu"]["bf16_units"]) or "none"
    print(f"cpu:         {info['cpu']['model']} (bf16 units: {units})")
    auto = info["precision_auto"]
    print(f"precision:   auto picks {auto['precision']} ({auto['why'].removeprefix('auto: ')}); --precision overrides")
    print(f"data root:   {info['data_root']}  (set FACEAGE_DATA to change)")
    print("models in:   " + "\n             ".join(info["models_dirs"]) + "  (set FACEAGE_HOME to change)")
    print(f"configs in:  {info['configs_dir']}")
    return 0
