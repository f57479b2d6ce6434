"""``faceage train``: train a face-aging model on a prepared cache (single process or under torchrun)."""

from __future__ import annotations

import argparse
import os
import warnings

from faceage.cli import CLIError, add_overrides_argument

DEFAULT_PRESET = "ragan_utk128"  # what a new run trains without --config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a face-aging model (RAGAN) on a prepared cache",
        description=(
            "Train a model on a cache made by `faceage prepare`. The run folder gets config.yaml (the resolved "
            "config), checkpoints/last.pt (and prev.pt, the one before), samples/*.png (validation faces x age "
            "groups), metrics.jsonl and tensorboard/. Ctrl-C or SIGTERM writes a checkpoint before stopping, and "
            "a kill at any moment leaves one that loads; --resume continues from it (and starts a new run when "
            "there is none yet, so one command serves every session). Resuming is exact: the same config ends "
            "with the weights of an uninterrupted run. Settings changed with --set on resume apply: lr and betas "
            "(the optimisers keep their moments), and batch_size (the run reads on from the image where it "
            "stopped). Several processes: torchrun --nproc_per_node=N -m faceage train ..."
        ),
    )
    p.add_argument(
        "--config",
        metavar="NAME_OR_PATH",
        help=f"a preset (ragan_utk128, tiny) or a YAML file; a new run without it uses {DEFAULT_PRESET}, a resumed "
        "run its own saved config",
    )
    p.add_argument("--data", required=True, metavar="CACHE", help="cache folder written by faceage prepare")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to create (or resume)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from RUN/checkpoints/last.pt if it exists (from prev.pt, with a warning, when last.pt is "
        "missing or damaged)",
    )
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
    """The run's config: ``config`` + overrides for a new run; the checkpoint's (+ overrides) when resuming.

    The checkpoint is the one training resumes from (faceage.train.checkpoint.load_latest: last.pt, or
    prev.pt when last.pt is missing or damaged)."""
    from faceage.train.checkpoint import has_checkpoint, load_latest
    from faceage.train.config import apply_overrides, check_resumable, from_dict, load_config
    from faceage.train.loop import checkpoint_dir

    folder = checkpoint_dir(out)
    if not has_checkpoint(folder):
        return load_config(config or DEFAULT_PRESET, overrides)
    if not resume:
        raise CLIError(f"{out} already holds a run ({folder}); pass --resume to continue it, or choose another --out")
    with warnings.catch_warnings():  # a fallback on prev.pt is announced once, by the trainer that loads it next
        warnings.simplefilter("ignore")
        _, state = load_latest(folder)
    saved = from_dict(state["config"])
    new = load_config(config, overrides) if config else from_dict(apply_overrides(saved.to_dict(), overrides))
    check_resumable(saved, new, out)
    return new
