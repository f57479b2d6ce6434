"""``faceage eval``: age test faces to every target group and report age, gender, identity, colour and realism,
judged by a network the model never trained against; then sweep a subset of them over 0, 5, ..., 80 years."""

from __future__ import annotations

import argparse
import sys
import time

from faceage.cli import CLIError, add_precision_argument

SWEEP_AGES_TEXT = ",".join(str(a) for a in range(0, 81, 5))


def _ages(text: str) -> tuple[float, ...]:
    """An argparse type: at least two comma-separated ages in years from 0 to 120, e.g. ``0,5,10``."""
    try:
        ages = tuple(float(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: ages must be numbers of years, e.g. 0,20,40,60,80") from None
    if len(ages) < 2 or any(not 0 <= a <= 120 for a in ages):
        raise argparse.ArgumentTypeError(f"{text!r}: give at least two ages from 0 to 120 years, e.g. 0,20,40,60,80")
    return ages


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model: age accuracy, identity preservation, realism; writes a report",
        description=(
            "Age every face of a cache split (or a seeded sample of --n) to every target group and measure, each "
            "next to what the same judge gives for real faces and for the unchanged input: the outputs' estimated "
            "ages (group accuracy, Spearman with the target, monotone means, spread vs. real faces); gender kept; "
            "identity (face-descriptor distance, verification at 0.6 and at FAR 0.1%); colour blotches; realism "
            "(Fréchet distances in face-descriptor and judge feature space; FID/KID only with --inception-weights); "
            "reconstruction; and, through faceage.load(model).age, grayscale in -> grayscale out and fine detail "
            "kept on a high-resolution photo; then the age sweep: --sweep-faces of the faces aged to every age of "
            "--sweep-ages (fed as continuous group positions) with the judge's mean estimate per age, Spearman and "
            "whether the means rise strictly. The judge may not be a network the model trained against (its "
            "config's `critics`, or --critic). Age-cGAN: each face's latent is fitted once, at its labelled age, and "
            "decoded at every target; --recon-faces of them also give the paper's latent reconstruction table. "
            "Other models: --round-trip-faces of the faces aged to the group farthest from theirs and back. "
            "Writes report.md, metrics.json and PNG plots to --out."
        ),
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="M",
        help="a model name, an exported model folder or a training checkpoint .pt (default: the bundled model)",
    )
    p.add_argument("--data", required=True, metavar="CACHE", help="a cache written by `faceage prepare`")
    p.add_argument(
        "--split", default="test", choices=["train", "val", "test", "all"], help="faces to age (default test)"
    )
    p.add_argument("--n", type=int, default=None, help="age a seeded sample of N faces (default: the whole split)")
    p.add_argument(
        "--targets",
        default="all",
        help="'all' (every group) or a comma list of group labels and ages in years, e.g. 0-2,30-39 or 5,25,45,70; "
        "an age is fed to the generator as its continuous group position (the report lists them) and judged "
        "against the group it lies in",
    )
    p.add_argument(
        "--sweep-faces",
        type=int,
        default=200,
        metavar="N",
        help="faces (a seeded subset of those aged) for the age sweep; 0 skips it (default 200: 3,400 outputs at "
        "the 17 default ages, judged for age only, ~100 s on one CPU thread at 128 px)",
    )
    p.add_argument(
        "--sweep-ages",
        type=_ages,
        default=SWEEP_AGES_TEXT,
        metavar="AGES",
        help=f"the sweep's target ages in years, comma-separated (default {SWEEP_AGES_TEXT})",
    )
    p.add_argument(
        "--recon-faces",
        type=int,
        default=100,
        metavar="N",
        help="Age-cGAN only: faces (a seeded subset of those aged) for the paper's latent reconstruction table, "
        "dlib verification of each face against its reconstruction and its aged outputs for z0 = E(x), z*pixel "
        "and z*IP; 0 skips it (default 100; identity fitting costs ~1.5 s a face on a CPU)",
    )
    p.add_argument(
        "--round-trip-faces",
        type=int,
        default=200,
        metavar="N",
        help="faces (a seeded subset of those aged) aged to the group farthest from their own and back to it by the "
        "same generator: L1 and dlib verification of the return against the input; 0 skips it (default 200)",
    )
    p.add_argument(
        "--judge",
        "--estimator",
        dest="judge",
        metavar="DIR",
        default=None,
        help="the judging age/gender estimator folder (train-age-estimator; default: the bundled judge)",
    )
    p.add_argument(
        "--critic",
        action="append",
        default=None,
        metavar="DIR|SHA256",
        help="a network the model trained against (estimator folder or weights digest), besides its config's "
        "`critics`; eval refuses to be judged by it (repeatable)",
    )
    p.add_argument(
        "--gray-faces", type=int, default=16, help="faces for the grayscale-in/out check (default 16; 0 skips it)"
    )
    p.add_argument(
        "--detail-side",
        type=int,
        default=2048,
        help="side of the upscaled photo for the fine-detail check (default 2048; 0 skips it)",
    )
    p.add_argument("--out", metavar="DIR", default="eval", help="report folder (default ./eval)")
    p.add_argument("--batch", type=int, default=32, help="faces per batch (default 32)")
    p.add_argument("--n-reference", type=int, default=None, help="cap on real reference faces (default: whole split)")
    p.add_argument("--far", type=float, default=1e-3, help="false-accept rate to calibrate on (default 0.001)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --n sample (default 0)")
    add_precision_argument(p)
    p.add_argument(
        "--inception-weights", metavar="PATH", default=None, help="pytorch-fid's pt_inception .pth for FID/KID"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: the cores the load average leaves idle)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from faceage.data.cache import CacheError
    from faceage.eval.cpu import set_threads
    from faceage.eval.evaluate import evaluate
    from faceage.eval.runner import EvalConfig, gap_line
    from faceage.infer.resolve import resolve_model
    from faceage.precision import resolve_precision

    t0 = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        print(set_threads(args.threads), file=sys.stderr)
    precision, why = resolve_precision(args.precision, device)
    print(f"precision: {precision} ({why})", file=sys.stderr)
    if args.n is not None and args.n < 2:
        raise CLIError(f"--n must be at least 2, got {args.n}")
    if args.sweep_faces < 0:
        raise CLIError(f"--sweep-faces must be 0 (no sweep) or more, got {args.sweep_faces}")
    if args.round_trip_faces < 0:
        raise CLIError(f"--round-trip-faces must be 0 (no round trip) or more, got {args.round_trip_faces}")
    if args.recon_faces < 0:
        raise CLIError(f"--recon-faces must be 0 (no latent reconstruction table) or more, got {args.recon_faces}")
    try:
        model = resolve_model(args.model)
        if model.suffix == ".onnx":
            raise CLIError(f"{model}: eval runs the PyTorch generator; pass its exported folder or checkpoint .pt")
        targets = None if args.targets.strip() == "all" else [t for t in args.targets.split(",") if t.strip()]
        cfg = EvalConfig(
            split=args.split,
            n=args.n,
            targets=targets,
            n_reference=args.n_reference,
            batch_size=args.batch,
            seed=args.seed,
            far=args.far,
            bf16=precision == "bf16",
            gray_faces=args.gray_faces,
            detail_side=args.detail_side,
            sweep_faces=args.sweep_faces,
            sweep_ages=args.sweep_ages,
            recon_faces=args.recon_faces,
            round_trip_faces=args.round_trip_faces,
        )
        result = evaluate(
            model,
            args.data,
            cfg,
            estimator=args.judge,
            critics=args.critic,
            out=args.out,
            inception_weights=args.inception_weights,
            device=device,
        )
    except (CacheError, FileNotFoundError, ValueError, KeyError) as e:
        raise CLIError(str(e)) from None
    m = result.metrics
    o = m["overall"]
    print(
        f"{m['data']['n_sources']} faces x {len(m['targets'])} targets = {o['n_outputs']} outputs: "
        f"group accuracy {o['group_accuracy']:.1%}, verified @0.6 {o['verification_0.6']:.1%}, "
        f"@FAR {o['verification_far']:.1%}, face detected {o['detected']:.1%}; judged by {m['judge']['path']}",
        file=sys.stderr,
    )
    if m.get("age_accuracy_gap"):
        print(f"age accuracy (estimate inside the target group): {gap_line(m['age_accuracy_gap'])}", file=sys.stderr)
    if m["age_sweep"]:
        print(sweep_line(m["age_sweep"]), file=sys.stderr)
    if m.get("latent_reconstruction"):
        print(latent_line(m["latent_reconstruction"]), file=sys.stderr)
    print(f"report: {args.out}/report.md")
    print(f"eval wall time: {time.perf_counter() - t0:.1f} s")
    return 0


def latent_line(lat: dict) -> str:
    """Age-cGAN's latent reconstruction table in one line: verified reconstructions / aged outputs per latent."""
    columns = ", ".join(
        f"{c['latent']} {c['reconstruction_verified']:.0%} / "
        + ("–" if c["aged_verified"] is None else f"{c['aged_verified']:.0%}")
        for c in lat["modes"].values()
    )
    return f"latent reconstruction on {lat['n_faces']} faces, dlib-verified reconstructions / aged outputs: {columns}"


def sweep_line(sweep: dict) -> str:
    """The age sweep in one line: the mean estimate at each end, Spearman, strictly rising or not."""
    rising = "yes" if sweep["monotonic"] else "no"
    spearman = "–" if sweep["spearman"] is None else f"{sweep['spearman']:.3f}"
    return (
        f"age sweep {sweep['ages'][0]:g}-{sweep['ages'][-1]:g} years on {sweep['n_faces']} faces: mean estimate "
        f"{sweep['means'][0]:.1f} -> {sweep['means'][-1]:.1f}, Spearman {spearman}, means strictly rising: {rising}"
    )
