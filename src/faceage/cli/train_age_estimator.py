"""``faceage train-age-estimator``: train an age (and gender) estimator: a judge for ``faceage eval``, or a critic a
model trains against (never both for one model)."""

from __future__ import annotations

import argparse
import sys

from faceage.cli import CLIError, add_precision_argument


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 32,64,128,256, got {text!r}"
        ) from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-age-estimator",
        help="train a CNN age and gender estimator (a judge for `faceage eval`, or a training critic)",
        description=(
            "Train a compact CNN age estimator with a gender head on the cache's train split only (val picks the "
            "best epoch), report its MAE and gender accuracy on the test split, and save weights (safetensors), "
            "config.json and the ids of every training face to --out. A judge must differ from every critic a model "
            "trained against: give it another architecture (--block, --stem, --widths, --input-size) and --seed. "
            "An interrupted run continues with --resume."
        ),
    )
    p.add_argument("--data", required=True, metavar="CACHE", help="a cache written by `faceage prepare`")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the estimator to")
    p.add_argument("--epochs", type=int, default=12, help="passes over the train split (default 12)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (default 3e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation, order and augmentation")
    add_precision_argument(p)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: the cores the load average leaves idle)",
    )
    p.add_argument(
        "--widths", type=_ints, default=(32, 64, 128, 256), help="channels per stage (default 32,64,128,256)"
    )
    p.add_argument("--blocks", type=_ints, default=(2, 2, 2, 2), help="residual blocks per stage (default 2,2,2,2)")
    p.add_argument("--block", choices=["basic", "bottleneck"], default="basic", help="residual block (default basic)")
    p.add_argument(
        "--stem",
        choices=["conv5-pool", "conv3x2"],
        default="conv5-pool",
        help="stride-4 stem: 5x5 conv + max-pool, or two 3x3 stride-2 convs (default conv5-pool)",
    )
    p.add_argument(
        "--input-size", type=int, default=None, help="side the network sees, faces resized to it (default: the cache's)"
    )
    p.add_argument("--no-gender", action="store_true", help="train no gender head")
    p.add_argument(
        "--gender-weight", type=float, default=2.0, help="weight of the gender loss next to the age loss (default 2)"
    )
    p.add_argument(
        "--gender-probe",
        action="store_true",
        help="instead of an estimator: fit the gender probe that training critics use (logistic regression on dlib "
        "face descriptors, train split only) and save it to --out",
    )
    p.add_argument("--resume", action="store_true", help="continue from --out's training_state.pt (same options)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (for quick checks)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from faceage.data.cache import CacheError, open_cache
    from faceage.eval.cpu import set_threads
    from faceage.eval.train_estimator import EstimatorTrainConfig, train_age_estimator
    from faceage.nn.age_estimator import AgeEstimatorConfig
    from faceage.precision import resolve_precision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        print(set_threads(args.threads), file=sys.stderr)
    precision, why = resolve_precision(args.precision, device)
    print(f"precision: {precision} ({why})", file=sys.stderr)
    try:
        cache = open_cache(args.data)
        if args.gender_probe:
            from faceage.critics import fit_gender_probe

            info = fit_gender_probe(cache, args.out, seed=args.seed)
            print(
                f"gender probe saved to {args.out}: test accuracy {info['test_accuracy']:.1%} "
                f"on {info['num_test']} test faces"
            )
            return 0
        model = AgeEstimatorConfig(
            widths=args.widths, blocks=args.blocks, block=args.block, stem=args.stem, gender=not args.no_gender
        )
        cfg = EstimatorTrainConfig(
            epochs=args.epochs,
            batch_size=args.batch,
            lr=args.lr,
            bf16=precision == "bf16",  # resolved: config.json records what ran
            seed=args.seed,
            max_steps=args.max_steps,
            gender_weight=args.gender_weight,
            input_size=args.input_size,
        )
        info = train_age_estimator(cache, args.out, cfg, model, device=device, resume=args.resume)
    except (CacheError, ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    m = info.metrics
    gender = "" if m["test_gender_accuracy"] is None else f", gender accuracy {m['test_gender_accuracy']:.1%}"
    print(
        f"age estimator saved to {args.out}: test MAE {m['test_mae']:.2f} years{gender} on {m['num_test']} test "
        f"faces (val MAE {m['val_mae']:.2f}, best epoch {m['best_epoch']}, {info.num_train_ids} training faces, "
        f"{info.training['seconds']:.0f} s)"
    )
    return 0
