"""``faceage prepare``: turn a face dataset folder into a cache that training reads fast."""

from __future__ import annotations

import argparse

from faceage.cli import CLIError

DATASETS = ["utkface", "ffhq-aging", "cacd", "morph", "imdb-wiki", "csv"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="decode, resize and split a dataset into a fast cache",
        description=(
            "Decode every labelled photo of a dataset, resize it (or align it, with --align), split it "
            "train/val/test and write a memory-mapped cache. Re-running with the same inputs does nothing; "
            "an interrupted run resumes; files that cannot be used are counted by reason and listed in "
            "CACHE/skipped.csv. With --from-cache, resample a finished cache to another --size instead."
        ),
    )
    p.add_argument("--dataset", choices=DATASETS, help="how the dataset labels its photos")
    p.add_argument("--root", help="the dataset folder (or its label file: CSV or .mat)")
    p.add_argument(
        "--from-cache", metavar="CACHE",
        help="instead of --dataset and --root: resample this finished cache to --size (antialiased, masks too), "
        "keeping every face, label and split; no photo is decoded or face detected again",
    )  # fmt: skip
    p.add_argument("--out", required=True, metavar="CACHE", help="cache folder to create or update")
    p.add_argument("--size", type=int, default=128, help="output side in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split (default 0)")
    p.add_argument(
        "--split", default="0.8,0.1,0.1", help="train,val,test fractions (default 0.8,0.1,0.1); kept per identity"
    )
    p.add_argument("--workers", type=int, default=2, help="decoding processes (default 2)")
    p.add_argument("--min-size", type=int, default=32, help="skip photos whose short side is below this (default 32)")
    p.add_argument("--align", action="store_true", help="detect and align each face, store soft face masks")
    p.add_argument("--align-preset", default="utkface", help="with --align: utkface (default, tight) or ffhq")
    p.add_argument("--chunk-size", type=int, default=128, help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def transform_from_args(args: argparse.Namespace) -> tuple[str, dict]:
    """The per-image transform and its options chosen by the command line (see faceage.data.transforms)."""
    if args.align:
        return "align", {"preset": args.align_preset}
    return "resize", {}


def run(args: argparse.Namespace) -> int:
    if args.from_cache is not None:
        if args.dataset or args.root:
            raise CLIError("give --from-cache CACHE or --dataset and --root, not both")
        if args.align or args.seed != 0 or args.split != "0.8,0.1,0.1":
            raise CLIError(
                "--from-cache keeps the source cache's alignment and split: leave out --align, --seed, --split"
            )
        return _resample(args)
    if not args.dataset or not args.root:
        raise CLIError("give --dataset and --root (a dataset to prepare), or --from-cache CACHE (a cache to resample)")
    from faceage.data.cache import CacheError
    from faceage.data.prepare import PrepareConfig, prepare
    from faceage.data.records import DatasetError

    try:
        split = tuple(float(v) for v in args.split.split(","))
    except ValueError:
        raise CLIError(f"--split {args.split!r}: expected three fractions like 0.8,0.1,0.1") from None
    transform, options = transform_from_args(args)
    cfg = PrepareConfig(
        dataset=args.dataset,
        root=args.root,
        out=args.out,
        size=args.size,
        seed=args.seed,
        split=split,
        min_size=args.min_size,
        transform=transform,
        transform_options=options,
        workers=args.workers,
        chunk_size=args.chunk_size,
        progress=not args.quiet,
    )
    try:
        result = prepare(cfg)
    except (DatasetError, CacheError, ValueError) as e:
        raise CLIError(str(e)) from None
    if result.status == "up to date":
        print(f"cache up to date, nothing to do: {result.images} images in {result.cache}")
        return 0
    splits = ", ".join(f"{k} {v}" for k, v in result.splits.items())
    skipped = sum(result.skipped.values())
    print(f"{result.status} {result.cache} in {result.seconds:.1f} s")
    print(f"  {result.files} files -> {result.images} images ({splits}), {skipped} skipped")
    if result.reused:
        print(f"  {result.decoded} decoded, {result.reused} reused from the previous cache")
    for reason, count in result.skipped.items():
        print(f"  skipped {count:6d}  {reason}")
    if skipped:
        print(f"  list of skipped files: {result.report}")
    return 0


def _resample(args: argparse.Namespace) -> int:
    from faceage.data.cache import CacheError
    from faceage.data.prepare import resample_cache

    try:
        result = resample_cache(args.from_cache, args.out, args.size)
    except (CacheError, ValueError) as e:
        raise CLIError(str(e)) from None
    if result.status == "up to date":
        print(f"cache up to date, nothing to do: {result.images} images in {result.cache}")
        return 0
    splits = ", ".join(f"{k} {v}" for k, v in result.splits.items())
    print(f"{result.status} {result.cache} in {result.seconds:.1f} s: {result.images} images at {args.size} px")
    print(f"  resampled from {args.from_cache} ({splits}); no face detected again")
    return 0
