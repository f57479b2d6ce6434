"""Writing an evaluation: ``metrics.json``, ``report.md`` and three PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from faceage.eval.runner import EvalResult
from faceage.utils import atomic_write_bytes, atomic_write_text

PLOTS = ("age_distribution.png", "identity_distance.png", "samples.png")


def write_evaluation(result: EvalResult, out: str | Path) -> list[Path]:
    """Write metrics, report and plots to ``out``; returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(result.metrics, indent=2, default=_json_default) + "\n")
    atomic_write_bytes(out / "age_distribution.png", plot_ages(result))
    atomic_write_bytes(out / "identity_distance.png", plot_identity(result))
    if result.grid is not None:
        atomic_write_bytes(out / "samples.png", plot_grid(result))
    atomic_write_text(out / "report.md", render_markdown(result.metrics, has_grid=result.grid is not None))
    return [out / name for name in ("metrics.json", "report.md", *PLOTS) if (out / name).exists()]


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, set | tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to metrics.json")


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _figure().close(fig)
    return buf.getvalue()


def plot_ages(result: EvalResult) -> bytes:
    """Box plots of the outputs' estimated ages per target group, the group's age band and real faces' mean."""
    plt = _figure()
    targets = [t["group"] for t in result.metrics["targets"]]
    labels = [t["label"] for t in result.metrics["targets"]]
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(targets) + 2), 4.5))
    lower = result.metrics["model"]["scheme"]["lower"]
    for i, g in enumerate(targets):
        hi = lower[g + 1] if g + 1 < len(lower) else max(100, lower[g] + 10)  # ages in [lower, next lower)
        ax.add_patch(plt.Rectangle((i + 0.6, lower[g]), 0.8, hi - lower[g], color="tab:green", alpha=0.15, lw=0))
    ax.boxplot([result.output_ages[g] for g in targets], positions=range(1, len(targets) + 1), widths=0.5)
    real = [(i + 1, result.real_ages[g].mean()) for i, g in enumerate(targets) if len(result.real_ages[g])]
    if real:
        ax.scatter(*zip(*real, strict=True), marker="D", color="tab:red", zorder=3, label="real faces (mean)")
        ax.legend(loc="upper left")
    ax.set_xticks(range(1, len(targets) + 1), labels)
    ax.set_xlabel("target age group (green: the group's age range)")
    ax.set_ylabel("estimated age of outputs (years)")
    ax.set_title("Estimated age of aged faces per target group")
    return _png(fig)


def plot_identity(result: EvalResult) -> bytes:
    """Histogram of input->output descriptor distances next to different-person distances, with thresholds."""
    plt = _figure()
    ident = result.metrics["identity"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    bins = np.linspace(0, max(1.2, float(np.percentile(result.impostor_distances, 99.9))), 60)
    if len(result.output_distances):
        ax.hist(result.output_distances, bins=bins, density=True, alpha=0.6, label="input -> aged output")
    ax.hist(result.impostor_distances, bins=bins, density=True, alpha=0.5, label="different people (real faces)")
    ax.axvline(ident["threshold_dlib"], color="k", ls="--", label=f"dlib threshold {ident['threshold_dlib']}")
    ax.axvline(
        ident["threshold_far"],
        color="tab:red",
        ls=":",
        label=f"FAR {ident['far_target']:.1%}: {ident['threshold_far']:.3f}",
    )
    ax.set_xlabel("distance between 128-D face descriptors")
    ax.set_ylabel("density")
    ax.legend()
    ax.set_title("Identity: input vs. aged output")
    return _png(fig)


def plot_grid(result: EvalResult) -> bytes:
    """Sample grid: one row per source face, its input then one column per target group."""
    plt = _figure()
    grid = result.grid
    labels = ["input"] + [t["label"] for t in result.metrics["targets"]]
    rows, cols = grid.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows + 0.3), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(grid[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(labels[c], fontsize=9)
    fig.subplots_adjust(wspace=0.03, hspace=0.03)
    return _png(fig)


def _f(value, fmt: str = ".2f") -> str:
    return "–" if value is None else format(value, fmt)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def render_markdown(m: dict, has_grid: bool = True) -> str:
    """``report.md``: setup, the per-group tables (age, identity, realism), reconstruction and caveats."""
    data, over = m["data"], m["overall"]
    head = [
        "# faceage evaluation",
        "",
        f"Model `{m['model']['model']}` ({m['model']['image_size']} px, scheme `{m['model']['scheme']['name']}`); "
        f"cache `{data['cache']}`, split `{data['split']}`: {data['n_sources']} source faces aged to "
        f"{len(m['targets'])} target groups ({over['n_outputs']} outputs), {data['n_reference']} real reference "
        f"faces. Wall time {m['timing']['total_s']:.0f} s.",
        *[f"\n> **Warning:** {w}" for w in m.get("warnings", [])],
    ]
    plots = [
        "## Plots",
        "",
        "![estimated ages](age_distribution.png)",
        "",
        "![identity distances](identity_distance.png)",
    ]
    if has_grid:
        plots += ["", "![samples](samples.png)"]
    timing = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in m["timing"].items())
    sections = [head, _age_section(m), _identity_section(m), _realism_section(m), _reconstruction_section(m), plots]
    return "\n".join(line for section in sections for line in [*section, ""]) + f"Timing: {timing}.\n"


def _age_section(m: dict) -> list[str]:
    rows = [
        [
            r["label"],
            str(r["n_outputs"]),
            f"{r['est_age_mean']:.1f} ± {r['est_age_std']:.1f}",
            _f(r["group_accuracy"], ".1%"),
            str(r["n_real"]),
            _f(r["real_est_age_mean"], ".1f"),
            _f(r["real_group_accuracy"], ".1%"),
        ]
        for r in m["targets"]
    ]
    header = ["target", "outputs", "est. age (mean ± std)", "group acc.", "real faces", "real est. age", "real acc."]
    return [
        "## Age",
        "",
        "Estimated by faceage's age estimator (expected value over 0–100 years): generated faces next to real "
        "faces of the same group, as in the AcGAN paper's table.",
        "",
        _table(header, rows),
        "",
        f"All outputs: group accuracy {m['overall']['group_accuracy']:.1%}. {_estimator_line(m)}",
    ]


def _identity_section(m: dict) -> list[str]:
    ident, over, data = m["identity"], m["overall"], m["data"]

    def row(label: str, r: dict, real_detected: float | None) -> list[str]:
        return [
            label,
            f"{r['id_distance_mean']:.3f} ± {r['id_distance_std']:.3f}",
            _f(r["verification_0.6"], ".1%"),
            _f(r["verification_far"], ".1%"),
            _f(r["detected"], ".1%"),
            _f(real_detected, ".1%"),
        ]

    rows = [row(r["label"], r, r["real_detected"]) for r in m["targets"]] + [
        row("**all**", over, data["real_detected"])
    ]
    header = ["target", "distance (mean ± std)", "verified @0.6", "verified @FAR", "face detected", "real detected"]
    return [
        "## Identity",
        "",
        f"Distance between the 128-D face descriptors of input and output; same person when below dlib's "
        f"{ident['threshold_dlib']} or below {ident['threshold_far']:.3f}, the threshold at which "
        f"{ident['far_achieved']:.3%} of {ident['impostor_pairs']:,} different-person pairs of real "
        f"{data['split']} faces are accepted (target FAR {ident['far_target']:.1%}; at 0.6 that rate is "
        f"{ident['impostor_far_at_0.6']:.2%}). {_identity_caveat(ident)}",
        "",
        _table(header, rows),
        "",
        f"Embeddings: {m['judges']['embedding']}.{_check_line(m)} Face detection: {m['judges']['detector']}.",
    ]


def _realism_section(m: dict) -> list[str]:
    lines = [
        "## Realism",
        "",
        "Fréchet distance (squared, lower is better) between Gaussians fitted to the outputs aged to a group and "
        "to the real faces of that group: **FD-dlib** in face-descriptor space, **FD-age** in the age "
        "estimator's penultimate features. *Inputs* columns: the same distance for the unchanged source faces, "
        "what a generator that does nothing would score. These are not FID; with few real faces in a group the "
        "estimate is biased upwards (see the counts).",
    ]
    if m["judges"].get("inception_weights"):
        lines[-1] += (
            " FID and KID (unbiased MMD², cubic kernel) use the Inception weights "
            f"`{m['judges']['inception_weights']}` in faceage's plain-PyTorch rebuild of pytorch-fid's network."
        )
    return [*lines, "", _realism_table(m["targets"])]


def _reconstruction_section(m: dict) -> list[str]:
    rec = m["reconstruction"]
    return [
        "## Reconstruction (target = source group)",
        "",
        f"{rec['n']} outputs: L1 {rec['l1']:.4f} (pixels in [0, 1]); descriptor distance "
        f"{rec['id_distance_mean']:.3f} ± {rec['id_distance_std']:.3f}; Age-cGAN-style verification "
        f"{rec['verification_0.6']:.1%} at 0.6, {rec['verification_far']:.1%} at the FAR threshold.",
    ]


def _realism_table(t: list[dict]) -> str:
    header = ["target", "real faces", "FD-dlib", "FD-dlib inputs", "FD-age", "FD-age inputs"]
    has_fid = any("fid" in r for r in t)
    if has_fid:
        header += ["FID", "KID"]
    rows = []
    for r in t:
        row = [r["label"], str(r["n_real"]), _f(r["fd_dlib"], ".4g"), _f(r["fd_dlib_inputs"], ".4g")]
        row += [_f(r["fd_age"], ".4g"), _f(r["fd_age_inputs"], ".4g")]
        if has_fid:
            row += [_f(r.get("fid"), ".4g"), _f(r.get("kid"), ".4g")]
        rows.append(row)
    return _table(header, rows)


def _estimator_line(m: dict) -> str:
    est, data = m.get("estimator", {}), m["data"]
    line = f"Estimator MAE on these real faces: {data['estimator_mae_on_reference']:.2f} years"
    if est.get("test_mae") is not None:
        line += f" (estimator `{est['path']}`, its own test MAE {est['test_mae']:.2f})"
    if "estimator_trained_on_reference_faces" in data:
        n = data["estimator_trained_on_reference_faces"]
        line += f"; it was trained on {n} of the {data['n_reference']} real faces used here"
        if n:
            line += " — **its ages of real faces are optimistic**"
        elif not m["identity"]["identity_labels"]:
            line += " (without identity labels other photos of the same people may have been among them)"
    return line + "."


def _identity_caveat(ident: dict) -> str:
    if ident["identity_labels"]:
        return "Same-identity pairs were left out using the cache's identity labels."
    return (
        "The cache has no identity labels (UTKFace has none): every pair of distinct images is treated as two "
        "different people, so the odd same-person pair makes the calibrated threshold slightly stricter."
    )


def _check_line(m: dict) -> str:
    check = m["judges"].get("embedding_check")
    if not check:
        return ""
    return (
        f" Checked against dlib itself on {check['faces']} real faces: mean distance "
        f"{check['mean_distance']:.4f}, max {check['max_distance']:.4f}."
    )
