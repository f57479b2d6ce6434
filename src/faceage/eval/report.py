"""Writing an evaluation: ``metrics.json``, ``report.md`` and four PNG plots (matplotlib, Agg backend).

The report opens with who judged what ("trained against: ...; judged by: ...") and a summary table in which every
figure stands next to what the same judge gives for real faces and for returning the input unchanged.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from faceage.eval.runner import EvalResult, gap_line
from faceage.utils import atomic_write_bytes, atomic_write_text

NO_CRITICS_RECORDED = (
    "none recorded (the model's config has no `critics` list; faceage's training loop uses no frozen age or gender "
    "network: age is learnt from the model's own discriminator's classifier only)"
)
PLOTS = ("age_distribution.png", "age_sweep.png", "identity_distance.png", "samples.png", "attention.png")


def write_evaluation(result: EvalResult, out: str | Path) -> list[Path]:
    """Write metrics, report and plots to ``out``; returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(result.metrics, indent=2, default=_json_default) + "\n")
    atomic_write_bytes(out / "age_distribution.png", plot_ages(result))
    if result.metrics.get("age_sweep"):
        atomic_write_bytes(out / "age_sweep.png", plot_sweep(result))
    atomic_write_bytes(out / "identity_distance.png", plot_identity(result))
    if result.grid is not None:
        atomic_write_bytes(out / "samples.png", plot_grid(result))
    if result.attention is not None:
        atomic_write_bytes(out / "attention.png", plot_attention(result))
    markdown = render_markdown(
        result.metrics, has_grid=result.grid is not None, has_attention=result.attention is not None
    )
    atomic_write_text(out / "report.md", markdown)
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
    """Box plots of the outputs' estimated ages per target, the age band of the target's group and real faces' mean."""
    plt = _figure()
    groups = [t["group"] for t in result.metrics["targets"]]
    positions = [t["position"] for t in result.metrics["targets"]]
    labels = [t["label"] for t in result.metrics["targets"]]
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(groups) + 2), 4.5))
    lower = result.metrics["model"]["scheme"]["lower"]
    for i, g in enumerate(groups):
        hi = lower[g + 1] if g + 1 < len(lower) else max(100, lower[g] + 10)  # ages in [lower, next lower)
        ax.add_patch(plt.Rectangle((i + 0.6, lower[g]), 0.8, hi - lower[g], color="tab:green", alpha=0.15, lw=0))
    ax.boxplot([result.output_ages[p] for p in positions], positions=range(1, len(groups) + 1), widths=0.5)
    real = [(i + 1, result.real_ages[p].mean()) for i, p in enumerate(positions) if len(result.real_ages[p])]
    if real:
        ax.scatter(*zip(*real, strict=True), marker="D", color="tab:red", zorder=3, label="real faces (mean)")
        ax.legend(loc="upper left")
    ax.set_xticks(range(1, len(groups) + 1), labels)
    ax.set_xlabel("target (green: the age range of its group)")
    ax.set_ylabel("estimated age of outputs (years)")
    ax.set_title("Estimated age of aged faces per target")
    return _png(fig)


def plot_sweep(result: EvalResult) -> bytes:
    """The age sweep: each face's estimated age over the target ages (thin), their mean ± std, the diagonal."""
    plt = _figure()
    sweep = result.metrics["age_sweep"]
    ages, means, stds = (np.asarray(sweep[k]) for k in ("ages", "means", "stds"))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if result.sweep is not None:
        for row in result.sweep[:50]:
            ax.plot(ages, row, color="tab:blue", alpha=0.12, lw=0.8)
    ax.fill_between(ages, means - stds, means + stds, color="tab:blue", alpha=0.2, lw=0, label="mean ± std")
    ax.plot(ages, means, "o-", color="tab:blue", label=f"mean of {sweep['n_faces']} faces")
    ax.plot(ages, ages, "k--", lw=1, label="estimate = target")
    ax.axhline(sweep["inputs_mean"], color="tab:gray", ls=":", label="unchanged inputs (mean)")
    ax.set_xlabel("target age (years; fed as a continuous group position)")
    ax.set_ylabel("estimated age of outputs (years)")
    ax.set_title(
        f"Age sweep: Spearman {_f(sweep['spearman'], '.3f')}, means strictly rising: {_yes(sweep['monotonic'])}"
    )
    ax.legend(loc="upper left")
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
    return _image_grid(result.grid, ["input"] + [t["label"] for t in result.metrics["targets"]])


def plot_attention(result: EvalResult) -> bytes:
    """The attention figure: one row per grid face, its input then A, C and the output for every target."""
    att = result.attention
    faces, targets = att.shape[:2]
    tiles = np.concatenate([result.grid[:, :1], att.reshape(faces, targets * 3, *att.shape[3:])], axis=1)
    labels = ["input"] + [f"{k} {t['label']}" for t in result.metrics["targets"] for k in ("A", "C", "out")]
    return _image_grid(tiles, labels)


def _image_grid(grid: np.ndarray, labels: list[str]) -> bytes:
    """uint8 tiles [rows, cols, S, S, 3] as one figure, ``labels`` over the columns."""
    plt = _figure()
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


def render_markdown(m: dict, has_grid: bool = True, has_attention: bool = False) -> str:
    """``report.md``: setup, the per-group tables (age, identity, realism), reconstruction and caveats."""
    data, over = m["data"], m["overall"]
    head = [
        "# faceage evaluation",
        "",
        f"Model `{m['model']['model']}` ({m['model']['image_size']} px, scheme `{m['model']['scheme']['name']}`); "
        f"cache `{data['cache']}`, split `{data['split']}`: {data['n_sources']} source faces aged to "
        f"{len(m['targets'])} targets ({over['n_outputs']} outputs), {data['n_reference']} real reference "
        f"faces. Wall time {m['timing']['total_s']:.0f} s.",
        "",
        judged_line(m),
        *_latent_fitting_line(m),
        *[f"\n> **Warning:** {w}" for w in m.get("warnings", [])],
    ]
    plots = [
        "## Plots",
        "",
        "![estimated ages](age_distribution.png)",
        "",
        "![identity distances](identity_distance.png)",
    ]
    if m.get("age_sweep"):
        plots[3:3] = ["", "![age sweep](age_sweep.png)"]
    if has_grid:
        plots += ["", "![samples](samples.png)"]
    if has_attention:
        plots += [
            "",
            "Attention: for each face (rows) and target, the attention mask A (white keeps the input), the colour "
            "mask C and the output (1 − A)·C + A·x.",
            "",
            "![attention](attention.png)",
        ]
    timing = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in m["timing"].items())
    sections = [
        head,
        _summary_section(m),
        _age_section(m),
        _sweep_section(m),
        _gender_section(m),
        _identity_section(m),
        _pairs_section(m),
        _colour_section(m),
        _background_section(m),
        _photo_section(m),
        _realism_section(m),
        _reconstruction_section(m),
        _round_trip_section(m),
        _latent_section(m),
        plots,
    ]
    return "\n".join(line for section in sections for line in [*section, ""]) + f"Timing: {timing}.\n"


def _age_section(m: dict) -> list[str]:
    rows = [
        [
            r["label"],
            f"{r['position']:.2f} ({r['group_label']})",
            str(r["n_outputs"]),
            f"{r['est_age_mean']:.1f} ± {r['est_age_std']:.1f}",
            _f(r["group_accuracy"], ".1%"),
            str(r["n_real"]),
            _f(r["real_est_age_mean"], ".1f"),
            _f(None if r["real_est_age_mean"] is None else r["est_age_mean"] - r["real_est_age_mean"], "+.1f"),
            _f(r["real_group_accuracy"], ".1%"),
        ]
        for r in m["targets"]
    ]
    header = ["target", "position (group)", "outputs", "est. age (mean ± std)", "group acc.", "real faces"]
    header += ["real est. age", "difference", "real acc."]
    return [
        "## Age",
        "",
        "Estimated by the judge (expected value over 0–100 years): generated faces next to real "
        "faces of the same group, as in the AcGAN paper's table. The generator is given each target as a group "
        "position: a group label is its index, an age in years lies between the two groups whose representative "
        "ages bracket it. A target is judged against the group its age lies in (group accuracy, real faces)."
        + _age_targets_line(m),
        "",
        _table(header, rows),
        "",
        f"All outputs: group accuracy {m['overall']['group_accuracy']:.1%}. {_gap_sentence(m)}{_estimator_line(m)}",
    ]


def _gap_sentence(m: dict) -> str:
    """ "Age accuracy (estimates inside the target group): synthetic faces X% vs real Y%: Z points lower. " """
    gap = m.get("age_accuracy_gap")
    if not gap:
        return ""
    return f"Age accuracy (estimates inside the target group) over {', '.join(gap['targets'])}: {gap_line(gap)}. "


def _age_targets_line(m: dict) -> str:
    """Which positions the targets given as ages map to, e.g. " Ages given: 45 → position 2.95 (41-50)."."""
    ages = [t for t in m["targets"] if t["label"] != t["group_label"]]  # a group label names its own group
    if not ages:
        return ""
    mapped = ", ".join(f"{t['label']} years → position {t['position']:.2f} (group {t['group_label']})" for t in ages)
    return f" Ages given: {mapped}."


def _sweep_section(m: dict) -> list[str]:
    sweep = m.get("age_sweep")
    if not sweep:
        return []
    rows = [
        [f"{a:g}", f"{p:.2f}", f"{mean:.1f} ± {std:.1f}"]
        for a, p, mean, std in zip(sweep["ages"], sweep["positions"], sweep["means"], sweep["stds"], strict=True)
    ]
    return [
        "## Age sweep",
        "",
        f"{sweep['n_faces']} source faces (a seeded subset) aged to every target age from {sweep['ages'][0]:g} to "
        f"{sweep['ages'][-1]:g} years, each fed to the generator as its continuous group position (between groups "
        f"too), and judged for age. Spearman over all {sweep['n_faces'] * len(sweep['ages'])} (target age, "
        f"estimate) pairs: **{_f(sweep['spearman'], '.3f')}**; mean estimate strictly rising with the target age: "
        f"**{_yes(sweep['monotonic'])}**. The unchanged inputs are estimated at {sweep['inputs_mean']:.1f} on "
        "average (a generator that does nothing: a flat line, Spearman 0)." + _clamped_line(sweep),
        "",
        _table(["target age", "position", "est. age (mean ± std)"], rows),
    ]


def _clamped_line(sweep: dict) -> str:
    """Which sweep ages are the same condition as the age before them (clamped past the end groups)."""
    same = sweep.get("same_as_previous") or []
    if not same:
        return ""
    ages = ", ".join(f"{a:g}" for a in same)
    return (
        f" {ages} years clamp to the same position as the age before (past the last or before the first group's "
        "representative age): the same condition, counted once for the rise."
    )


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
        f"Embeddings: {m['judges']['embedding']}.{_check_line(m)} Face detection: {m['judges']['detector']}."
        f"{_dlib_critic_warning(m)}",
    ]


def _pairs_section(m: dict) -> list[str]:
    """Verification at dlib's 0.6 per (source group, target): rows are source groups, columns targets."""
    cells = m.get("pairs") or []
    if not cells:
        return []
    sources = list(dict.fromkeys(c["source_group"] for c in cells))
    targets = [t["label"] for t in m["targets"]]
    at = {(c["source_group"], c["target"]): c for c in cells}

    def cell(s: str, t: str) -> str:
        c = at.get((s, t))
        return "—" if c is None else f"{c['verified']:.1%} ({c['n']})"

    worst = min(cells, key=lambda c: c["verified"])
    return [
        "## Identity per (source group, target)",
        "",
        "Share of outputs verified as their input's person (dlib distance < 0.6), by the source face's labelled "
        "group (rows) and the target (columns), outputs in brackets; a target in the source's own group is a "
        f"reconstruction and left out (—). Lowest cell: {worst['verified']:.1%}, {worst['source_group']} → "
        f"{worst['target']}.",
        "",
        _table(["source group", *targets], [[s, *(cell(s, t) for t in targets)] for s in sources]),
    ]


def _background_section(m: dict) -> list[str]:
    bg = m.get("background")
    if not bg:
        return []
    rows = [[label, f"{v:.2f}"] for label, v in bg["per_target"].items()]
    return [
        "## Background",
        "",
        f"Mean absolute change {bg['region']}, in 0–255 levels per output: **{bg['mean']:.2f}** over all targets "
        f"(95th percentile {bg['p95']:.2f}); an unchanged input scores 0, and the saved uint8 output rounds.",
        "",
        _table(["target", "mean change (levels)"], rows),
    ]


def _dlib_critic_warning(m: dict) -> str:
    """A warning when the model trained against dlib's recogniser, the network these identity figures use."""
    nets = (m.get("critics") or {}).get("networks") or []
    if not any("dlib" in str(c.get("name", "")).lower() for c in nets):
        return ""
    return (
        " **Not an independent judge here**: this model trained against dlib's recogniser (a `w_face_id` critic), so "
        "identity distances and FD-dlib measure what it was pulled towards; age, gender and FD-judge are independent."
    )


def _realism_section(m: dict) -> list[str]:
    lines = [
        "## Realism",
        "",
        "Fréchet distance (squared, lower is better) between Gaussians fitted to the outputs aged to a group and "
        "to the real faces of that group: **FD-dlib** in face-descriptor space, **FD-judge** in the judge's pooled "
        "features (a network no model trained against). *Inputs* columns: the same distance for the unchanged "
        "source faces, what a generator that does nothing would score; *real halves*: two random halves of the "
        "group's real faces against each other (the floor, biased up by the halved sample). These are not FID; "
        "with few real faces in a group the estimate is biased upwards (see the counts).",
    ]
    if m["judges"].get("inception_weights"):
        lines[-1] += (
            " FID and KID (unbiased MMD², cubic kernel) use the Inception weights "
            f"`{m['judges']['inception_weights']}` in faceage's plain-PyTorch rebuild of pytorch-fid's network."
        )
    r = m.get("realism") or {}
    p = r.get("pooled")
    if p and p.get("ratio") is not None:
        lines += [
            "",
            f"**Pooled (the headline)**: a seeded half of the sources ({p['n_sources']} faces) against the "
            f"{p['n_real']} real faces outside it, so no face is compared with itself. FD-judge of that half's "
            f"outputs (targets {', '.join(p['targets'])} pooled) to the real faces reweighted to the same target mix: "
            f"{p['fd_outputs']:.4g}; of its unchanged inputs to the real faces as they are: {p['fd_inputs']:.4g} "
            f"(ratio **{p['ratio']:.2f}x**); of its own real faces of those groups, reweighted alike: "
            f"{_f(p['fd_real'], '.4g')} (what real faces of the target ages score).",
        ]
    if r.get("ratio") is not None:
        lines += [
            "",
            f"Per target, summed over {', '.join(r['targets'])}: FD-judge {r['fd_judge_sum']:.4g} for the outputs, "
            f"{r['fd_judge_inputs_sum']:.4g} for the unchanged inputs (all ages, so far from a target's real faces: "
            f"ratio {r['ratio']:.2f}x), real halves {_f(r['fd_judge_real_halves_sum'], '.4g')}.",
        ]
    return [*lines, "", _realism_table(m["targets"])]


def _latent_fitting_line(m: dict) -> list[str]:
    """For a model that fits a latent per face (Age-cGAN): how the outputs' latents were fitted."""
    fit = m.get("latent_fitting")
    if not fit:
        return []
    return [
        "",
        f"Each face's latent was fitted once, at its labelled age (latent mode `{fit['mode']}`, {fit['steps']} "
        "steps), and decoded at every target.",
    ]


def _latent_section(m: dict) -> list[str]:
    """Age-cGAN's identity table in the paper's form (Antipov et al. 2017, Table 1): one column per latent."""
    lat = m.get("latent_reconstruction")
    if not lat:
        return []
    modes = list(lat["modes"].values())

    def row(label: str, key: str, fmt: str) -> list[str]:
        return [label, *(_f(c[key], fmt) for c in modes)]

    rows = [
        row("reconstruction G(z, y_source): verified", "reconstruction_verified", ".1%"),
        row("aged G(z, y_target), y_target ≠ y_source: verified", "aged_verified", ".1%"),
        row("reconstruction: mean dlib distance", "reconstruction_distance", ".3f"),
        row("aged: mean dlib distance", "aged_distance", ".3f"),
        row("seconds (fitting, decoding, judging)", "seconds", ".1f"),
    ]
    return [
        "## Latent reconstruction (Age-cGAN)",
        "",
        f"{lat['n_faces']} faces, each encoded at its labelled age; the latent z is E(x) as it is or fitted to the "
        f"face ({lat['steps']} Adam steps, lr {lat['lr']:g}) in pixels or in dlib's descriptor space. Verified: the "
        f"share of faces (or face, target pairs) that dlib calls the same person as the input (distance < "
        f"{lat['threshold']:g}), as in the paper's table.",
        "",
        _table(["", *(c["latent"] for c in modes)], rows),
    ]


def _reconstruction_section(m: dict) -> list[str]:
    rec = m["reconstruction"]
    return [
        "## Reconstruction (target = source group)",
        "",
        f"{rec['n']} outputs: L1 {rec['l1']:.4f} (pixels in [0, 1]); descriptor distance "
        f"{rec['id_distance_mean']:.3f} ± {rec['id_distance_std']:.3f}; Age-cGAN-style verification "
        f"{rec['verification_0.6']:.1%} at 0.6, {rec['verification_far']:.1%} at the FAR threshold.",
    ]


def _round_trip_section(m: dict) -> list[str]:
    trip = m.get("round_trip")
    if not trip:
        return []
    return [
        "## Round trip (the farthest group and back)",
        "",
        f"{trip['n']} faces aged to the group farthest from their own, then back to their own group by the same "
        f"generator: L1 of the return to the input {trip['l1']:.4f} (pixels in [0, 1]); dlib verification (< 0.6) "
        f"against the input {trip['far_verified']:.1%} for the far output (mean distance {trip['far_distance']:.3f}) "
        f"and {trip['back_verified']:.1%} for the return ({trip['back_distance']:.3f}). An unchanged input scores "
        "L1 0 and 100%.",
    ]


def _realism_table(t: list[dict]) -> str:
    header = ["target", "real faces", "FD-dlib", "FD-dlib inputs", "FD-judge", "FD-judge inputs", "real halves"]
    has_fid = any("fid" in r for r in t)
    if has_fid:
        header += ["FID", "KID"]
    rows = []
    for r in t:
        row = [r["label"], str(r["n_real"]), _f(r["fd_dlib"], ".4g"), _f(r["fd_dlib_inputs"], ".4g")]
        row += [_f(r["fd_judge"], ".4g"), _f(r["fd_judge_inputs"], ".4g"), _f(r.get("fd_judge_real_halves"), ".4g")]
        if has_fid:
            row += [_f(r.get("fid"), ".4g"), _f(r.get("kid"), ".4g")]
        rows.append(row)
    return _table(header, rows)


def judged_line(m: dict) -> str:
    """ "Trained against: X; judged by: Y (arch, seed, train-split hash)"."""
    critics, judge = m.get("critics") or {}, m.get("judge") or {}
    nets = critics.get("networks") or []
    if nets:
        against = "; ".join(f"`{c.get('name')}` (weights sha256 {c['weights_sha256'][:12]})" for c in nets)
    elif critics.get("recorded"):
        against = "no age or gender network (the model's config lists none)"
    else:
        against = NO_CRITICS_RECORDED
    return f"**Trained against:** {against}. **Judged by:** {judge.get('summary', 'an unnamed estimator')}."


def _pct(value, fmt: str = ".1%") -> str:
    return _f(value, fmt)


def _summary_section(m: dict) -> list[str]:
    """One row per headline figure: the model, the same judge on real faces, the unchanged input, the target."""
    o, order, ident = m["overall"], m.get("age_order") or {}, m["identity"]
    young = m["targets"][0]
    g = o.get("gender")
    sweep = m.get("age_sweep")
    rows = [
        [
            f"Spearman(target, estimated age) over {', '.join(order.get('targets', []))}",
            _f(order.get("spearman"), ".3f"),
            _f(order.get("real_spearman"), ".3f"),
            _f(order.get("inputs_spearman"), ".3f"),
            "high",
        ],
        [
            "mean estimate per target strictly increasing",
            _yes(order.get("monotonic")) + " (" + ", ".join(f"{v:.1f}" for v in order.get("means", [])) + ")",
            _yes(order.get("real_monotonic"))
            + " ("
            + ", ".join(_f(v, ".1f") for v in order.get("real_means", []))
            + ")",
            "no",
            "yes",
        ],
        [
            f"spread of the means, {order.get('youngest')} → {order.get('oldest')}, % of real faces' spread",
            _pct(order.get("spread")),
            "100%" + (f" ({order['real_spread_years']:.1f} years)" if order.get("real_spread_years") else ""),
            _pct(order.get("inputs_spread")),
            "~100%",
        ],
        [
            "the same spread, % of the labelled ages' spread (real faces' true mean ages)",
            _pct(order.get("spread_vs_labels")),
            "100%"
            + (f" ({lm[-1] - lm[0]:.1f} years)" if (lm := order.get("real_label_means")) and None not in lm else ""),
            "0.0%",
            "~100%",
        ],
    ]
    gap = m.get("age_accuracy_gap")
    if gap:
        rows.append(
            [
                "age accuracy: judge's estimate inside the target group (" + gap_line(gap) + ")",
                _pct(gap["synthetic"]),
                _pct(gap["real"]),
                "–",
                "as real faces",
            ]
        )
    if sweep:
        rows.append(
            [
                f"age sweep {sweep['ages'][0]:g}–{sweep['ages'][-1]:g} years ({sweep['n_faces']} faces): Spearman; "
                "means strictly rising",
                f"{_f(sweep['spearman'], '.3f')}; {_yes(sweep['monotonic'])}",
                "–",
                "0; no",
                "high; yes",
            ]
        )
    rows += [
        ["identity verified (dlib < 0.6), all targets", _pct(o["verification_0.6"]), "–", "100%", "high"],
        [
            f"identity verified (dlib < 0.6), youngest target {young['label']}",
            _pct(young["verification_0.6"]),
            f"{ident['impostor_far_at_0.6']:.2%} of different people",
            "100%",
            "high",
        ],
    ]
    if g is not None:
        real_acc = m["data"].get("estimator_gender_accuracy_on_reference")
        rows.append(
            [
                "gender kept (judged output = judged input)",
                _pct(g["kept"]),
                f"judge's accuracy {_pct(real_acc)}",
                "100%",
                "high",
            ]
        )
        rows.append(
            ["gender kept, female / male inputs", f"{_pct(g['kept_female_inputs'])} / {_pct(g['kept_male_inputs'])}"]
            + ["–", "100% / 100%", "high"]
        )
        per = " · ".join(f"{t['label']} {_pct(t['gender']['kept'])}" for t in m["targets"] if t.get("gender"))
        rows.append(["gender kept per target", per, "–", "100%", "high"])
    else:
        rows.append(["gender kept", "not measured: the judge has no gender head", "–", "–", "–"])
    rows += _photo_rows(m.get("photo_checks") or {})
    p = (m.get("realism") or {}).get("pooled")
    if p and p.get("ratio") is not None:
        real = "–" if p["fd_real"] is None else f"{p['fd_real'] / p['fd_inputs']:.2f}x ({p['fd_real']:.4g})"
        rows.append(
            [
                "realism: FD-judge to held-out real faces, outputs / unchanged inputs (pooled, see Realism)",
                f"{p['ratio']:.2f}x ({p['fd_outputs']:.4g})",
                real,
                f"1.00x ({p['fd_inputs']:.4g})",
                "≤ 1.3x",
            ]
        )
    c = m.get("colour")
    if c:
        rows.append(
            [
                "outputs with a colour blotch (over 1% of the face)",
                f"{_pct(c['share'])} ({_pct(c.get('share_large'))})",
                f"{_pct(c['edit_share'])} of brightness/contrast edits",
                _pct(c["inputs_share"]),
                "0%",
            ]
        )
    header = ["figure", "model", "real faces (same judge)", "unchanged input", "target"]
    return ["## Summary", "", _table(header, rows)]


def _photo_rows(p: dict) -> list[list[str]]:
    rows = []
    gray = p.get("grayscale")
    if gray:
        rows.append(
            [
                f"grayscale in → out: max chroma over {gray['outputs']} outputs ({gray['faces']} faces)",
                f"{gray['max_chroma']} ({_pct(gray['share_gray'])} ≤ {gray['limit']})",
                f"colour originals: median {gray['real_faces_median_max_chroma']:.0f}",
                str(gray["inputs_max_chroma"]),
                f"≤ {gray['limit']}",
            ]
        )
    detail = p.get("detail")
    if detail:
        for key, name in (("upscaled", "upscaled"), ("upscaled_grain", f"upscaled + grain {detail.get('grain')}")):
            d = detail.get(key)
            if d:
                rows.append(
                    [
                        f"fine detail kept, astronaut at {detail['photo_side']} px ({name}), min over targets",
                        f"{d['min']:.3f}",
                        f"{d['round_trip_size']} px round trip: {d['round_trip']:.3f}",
                        f"{d['unchanged']:.3f}",
                        f"≥ {detail['target']}",
                    ]
                )
    return rows


def _yes(value) -> str:
    return "–" if value is None else ("yes" if value else "no")


def _gender_section(m: dict) -> list[str]:
    if not any(t.get("gender") for t in m["targets"]):
        return ["## Gender", "", "Not measured: the judge has no gender head (an estimator trained before it had one)."]
    rows = []
    for t in m["targets"]:
        g = t["gender"]
        rows.append(
            [
                t["label"],
                _pct(g["kept"]),
                f"{_pct(g['kept_female_inputs'])} ({g['n_female_inputs']})",
                f"{_pct(g['kept_male_inputs'])} ({g['n_male_inputs']})",
                _pct(g["output_accuracy"]),
                _pct(g["input_accuracy"]),
                _pct(g.get("real_accuracy")),
            ]
        )
    header = ["target", "kept", "kept, female inputs (n)", "kept, male inputs (n)", "outputs = label"]
    header += ["inputs = label", "real faces = label"]
    return [
        "## Gender",
        "",
        "Kept: the judge's verdict (P(female) > 0.5) on the output equals its verdict on the input. Inputs are split "
        "by the dataset's gender label; the last three columns are the judge's agreement with that label on the "
        "outputs, on their (unchanged) inputs and on real faces of the target group.",
        "",
        _table(header, rows),
    ]


def _colour_section(m: dict) -> list[str]:
    c = m.get("colour")
    if not c:
        return []
    per = " · ".join(f"{t['label']} {_pct(t['artefact_share'])}" for t in m["targets"])
    return [
        "## Colour artefacts",
        "",
        f"An output has a colour blotch when, inside {c['region']}, a connected patch of at least "
        f"{c['min_blob']:.1%} of the image has a chroma (Cb, Cr) more than {c['threshold_chroma']:g} levels away "
        "from every colour of the input within 2 px (after fitting one global colour change per image, which "
        "absorbs brightness, contrast, saturation and white balance). "
        f"Outputs flagged: **{_pct(c['share'])}**, {_pct(c.get('share_large'))} with blotches over 1% of the face "
        f"region (mean blotch area {c['mean_area']:.2%}); "
        f"unchanged inputs: {_pct(c['inputs_share'])}; inputs after a plain edit ({c['edit']}): "
        f"{_pct(c['edit_share'])}.",
        "",
        f"Per target: {per}.",
    ]


def _photo_section(m: dict) -> list[str]:
    p = m.get("photo_checks") or {}
    if not p:
        return []
    lines = ["## Through `faceage.load(model).age` (the user's path)", ""]
    gray = p.get("grayscale")
    if gray:
        lines.append(
            f"**Grayscale in → grayscale out**: {gray['faces']} test faces made grey (L → RGB), aged with "
            f"`aligned=True` to {', '.join(gray['targets'])}: largest chroma (max − min of R, G, B) of any output "
            f"pixel {gray['max_chroma']} (limit {gray['limit']}), mean per output {gray['mean_max_chroma']:.1f}; "
            f"{_pct(gray['share_gray'])} of outputs stay grey. The grey inputs: {gray['inputs_max_chroma']}."
        )
        lines.append("")
    d = p.get("detail")
    if d:
        for key in ("upscaled", "upscaled_grain"):
            r = d.get(key)
            if not r:
                continue
            what = "upscaled (Lanczos)" if key == "upscaled" else f"upscaled, then grain of std {d['grain']} added"
            per = ", ".join(f"{t} {v:.3f}" for t, v in r["per_target"].items())
            lines.append(
                f"**Fine detail kept**, astronaut {what} to {d['photo_side']} px, aged in photo mode: high-pass "
                f"correlation (σ = 1 px) of input and output over the face box {d['face_box']}: {per} (target ≥ "
                f"{d['target']}); a {r['round_trip_size']} px round trip of the face box scores {r['round_trip']:.3f}, "
                f"the unchanged input {r['unchanged']:.3f}."
            )
            lines.append("")
    return lines[:-1]


def _estimator_line(m: dict) -> str:
    est, data = m.get("estimator", {}), m["data"]
    line = f"Judge's MAE on these real faces: {data['estimator_mae_on_reference']:.2f} years"
    if data.get("estimator_gender_accuracy_on_reference") is not None:
        line += f", gender accuracy {data['estimator_gender_accuracy_on_reference']:.1%}"
    if est.get("test_mae") is not None:
        line += f" (judge `{est['path']}`, its own test MAE {est['test_mae']:.2f})"
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
