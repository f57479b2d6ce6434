"""``faceage train``: train a face-aging model on a prepared cache (single process or under torchrun)."""

from __future__ import annotations

import argparse
import os

from faceage.cli import CLIError, add_overrides_argument


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a face-aging model (RAGAN) on a prepared cache",
        description=(
            "Train a model on a cache made by `faceage prepare`. The run folder gets config.yaml (the resolved "
            "config), checkpoints/last.pt, samples/*.png (validation faces x age groups), metrics.jsonl and "
            "tensorboard/. Ctrl-C or SIGTERM writes a checkpoint before stopping; --resume continues from it "
            "(and starts a new run when there is none yet, so one command serves every session). "
            "Several processes: torchrun --nproc_per_node=N -m faceage train ..."
        ),
    )
    p.add_argument("--config", metavar="NAME_OR_PATH", help="a preset (ragan_utk128, tiny) or a YAML file")
    p.add_argument("--data", required=True, metavar="CACHE", help="cache folder written by faceage prepare")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to create (or resume)")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.pt if it exists")
    add_overrides_argument(p, "train.batch_size=32")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        help="compute precision (same as --set train.precision=P; the preset's is auto: bf16 autocast on CUDA "
        "and AMX CPUs, fp32 elsewhere; `faceage info` says what auto picks here)",
    )
    p.add_argument("--steps", type=int, help="total steps of the run (same as --set train.steps=N)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from faceage.data.cache import CacheError
    from faceage.train.loop import train

    overrides = list(args.overrides)
    if args.precision is not None:
        overrides.append(f"train.precision={args.precision}")
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    try:
        cfg = resolve_config(args.config, args.out, args.resume, overrides)
        step = train(cfg, args.data, args.out, resume=args.resume)
    except (ValueError, CacheError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    if os.environ.get("RANK", "0") == "0":
        print(f"stopped at step {step} of {cfg.train.steps}; checkpoint: {args.out}/checkpoints/last.pt")
    return 0


def resolve_config(config: str | None, out: str, resume: bool, overrides: list[str]):
    """The run's config: ``config`` + overrides for a new run; the checkpoint's (+ overrides) when resuming."""
    from faceage.train.checkpoint import load_checkpoint
    from faceage.train.config import apply_overrides, check_resumable, from_dict, load_config
    from faceage.train.loop import checkpoint_path

    last = checkpoint_path(out)
    if not last.is_file():
        if config is None:
            raise CLIError(f"--config is needed to start a new run ({last} does not exist)")
        return load_config(config, overrides)
    if not resume:
        raise CLIError(f"{out} already holds a run ({last}); pass --resume to continue it, or choose another --out")
    saved = from_dict(load_checkpoint(last)["config"])
    new = load_config(config, overrides) if config else from_dict(apply_overrides(saved.to_dict(), overrides))
    check_resumable(saved, new, out)
    return new
