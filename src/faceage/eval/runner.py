"""``faceage eval``'s engine: age test faces to every target group and measure age, identity and realism.

The run has three phases, each with a progress bar:

1. **reference**: every real face of the split (or a seeded cap of them) is judged by the age estimator
   and embedded by the face recogniser; these give the real-face ages per group (the "generic" column
   of the AcGAN table), the real-face distributions the Fréchet distances compare with, and the
   different-person pairs that calibrate the FAR = 0.1 % verification threshold;
2. **generation**: each source face is aged to each target group; every output is quantised to uint8
   (what a user would save) before it is judged, embedded and searched for a face;
3. **metrics**: plain NumPy on the collected arrays (``faceage.eval.metrics``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from faceage.eval import metrics as M
from faceage.eval.age_estimator import AgeEstimator, sample_ids
from faceage.eval.train_estimator import to_input
from faceage.groups import AgeScheme

# Different-person pairs grow as n²: 3,000 faces already give 4.5 M pairs, plenty for FAR = 0.1 %.
MAX_CALIBRATION_FACES = 3000

# uint8 images [N,S,S,3] -> (face descriptors [N,128], face detected [N] bool)
FaceFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class EvalConfig:
    """What to evaluate and how; stored in ``metrics.json``."""

    split: str = "test"
    n: int | None = None  # source faces (seeded sample); None = the whole split
    targets: list[int | str] | None = None  # groups (index, age or label like "30-39"); None = all groups
    n_reference: int | None = None  # real faces for reference statistics; None = the whole split
    batch_size: int = 32
    seed: int = 0
    far: float = 1e-3
    bf16: bool = True
    grid_faces: int = 6


@dataclass
class Judges:
    """The frozen helpers that score outputs, with the names the report gives them."""

    estimator: AgeEstimator
    faces: FaceFn
    faces_name: str
    detector_name: str
    estimator_size: int
    estimator_train_ids: set[str] | None = None
    fid: torch.nn.Module | None = None


@dataclass
class EvalResult:
    """``metrics`` (plain data for ``metrics.json``) and the arrays the plots are drawn from."""

    metrics: dict
    grid: np.ndarray | None  # [faces, 1 + targets, S, S, 3]: input then one output per target
    output_ages: dict[int, np.ndarray]  # target group -> estimated ages of its outputs
    real_ages: dict[int, np.ndarray]  # group -> estimated ages of real faces of that group
    output_distances: np.ndarray  # identity distance input -> output, reconstructions left out
    impostor_distances: np.ndarray  # different-person pairs of real faces


@dataclass
class _Collected:
    """Per-output arrays gathered during generation (one row per (source, target) pair)."""

    source: list[np.ndarray] = field(default_factory=list)  # index into the source list
    target: list[np.ndarray] = field(default_factory=list)
    age: list[np.ndarray] = field(default_factory=list)
    feat: list[np.ndarray] = field(default_factory=list)
    emb: list[np.ndarray] = field(default_factory=list)
    detected: list[np.ndarray] = field(default_factory=list)
    l1: list[np.ndarray] = field(default_factory=list)
    fid: list[np.ndarray] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.__dict__.items() if v}


def _sample(indices: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    if n is None or n >= len(indices):
        return indices
    return np.sort(np.random.default_rng(seed).choice(indices, n, replace=False))


def _to_uint8(y: torch.Tensor) -> np.ndarray:
    """Generator output [B,3,S,S] in [-1,1] -> uint8 [B,S,S,3], rounded like a saved image."""
    return ((y.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _judge_input(images: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    x = to_input(images, device)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


class Evaluator:
    """One evaluation of ``generator`` on ``cache``: ``run()`` returns an :class:`EvalResult`."""

    def __init__(
        self,
        generator: torch.nn.Module,
        meta: dict,
        cache,
        judges: Judges,
        config: EvalConfig,
        device: torch.device | str = "cpu",
    ) -> None:
        self.G, self.meta, self.cache, self.judges, self.cfg = generator, meta, cache, judges, config
        self.scheme = AgeScheme.from_dict(meta["scheme"])
        self.device = torch.device(device)
        self.est_size = judges.estimator_size
        if int(meta["image_size"]) != cache.size:
            raise ValueError(
                f"the model works at {meta['image_size']} px but the cache holds {cache.size} px faces; "
                f"prepare a cache with --size {meta['image_size']}"
            )
        self.targets = parse_targets(self.scheme, config.targets)
        self.groups = np.array([self.scheme.group(float(a)) for a in cache.ages])
        self.timing: dict[str, float] = {}
        self.warnings: list[str] = []
        if (meta.get("align") or None) != (cache.align or None):
            self.warnings.append(
                f"the model was trained on faces aligned as {meta.get('align')} but this cache's faces are aligned "
                f"as {cache.align}; the model may do better on faces prepared like its training data"
            )

    # -- phase 1 ------------------------------------------------------------------------------------
    def reference(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Estimator ages/features, embeddings (and Inception features) of real faces ``rows``."""
        out: dict[str, list] = {"age": [], "feat": [], "emb": [], "detected": [], "fid": []}
        bs = self.cfg.batch_size
        for start in tqdm(range(0, len(rows), bs), desc="eval: real faces", unit="batch", dynamic_ncols=True):
            imgs = np.asarray(self.cache.images[rows[start : start + bs]])
            age, feat = self.judges.estimator.predict(
                _judge_input(imgs, self.est_size, self.device), bf16=self.cfg.bf16
            )
            out["age"].append(age.cpu().numpy())
            out["feat"].append(feat.cpu().numpy())
            emb, found = self.judges.faces(imgs)
            out["emb"].append(emb)
            out["detected"].append(found)
            if self.judges.fid is not None:
                out["fid"].append(self._fid_features(imgs))
        return {k: np.concatenate(v) for k, v in out.items() if v}

    def _fid_features(self, imgs: np.ndarray) -> np.ndarray:
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            return self.judges.fid(to_input(imgs, self.device)).float().cpu().numpy()

    # -- phase 2 ------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, sources: np.ndarray, grid: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
        """Age every source to every target (plus its own group for reconstruction) and judge the outputs."""
        col = _Collected()
        bs = self.cfg.batch_size
        bar = tqdm(total=len(sources), desc="eval: ageing", unit="face", dynamic_ncols=True)
        for start in range(0, len(sources), bs):
            pos = np.arange(start, min(start + bs, len(sources)))
            imgs = np.asarray(self.cache.images[sources[pos]])
            x = to_input(imgs, self.device).contiguous(memory_format=torch.channels_last)
            src_group = self.groups[sources[pos]]
            for t in sorted(set(self.targets) | set(src_group.tolist())):
                # A target outside --targets is generated only for the faces it reconstructs.
                keep = np.ones(len(pos), bool) if t in self.targets else src_group == t
                self._one_target(col, x[torch.from_numpy(keep)], imgs[keep], pos[keep], t, grid)
            bar.update(len(pos))
        bar.close()
        return col.arrays()

    def _one_target(self, col: _Collected, x, imgs, pos, t: int, grid: dict[int, np.ndarray]) -> None:
        target = torch.full((len(pos),), t, dtype=torch.int64, device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            y = self.G(x, target)
        assert y.shape == x.shape, (y.shape, x.shape)
        out = _to_uint8(y)
        age, feat = self.judges.estimator.predict(_judge_input(out, self.est_size, self.device), bf16=self.cfg.bf16)
        col.source.append(pos)
        col.target.append(np.full(len(pos), t))
        col.age.append(age.cpu().numpy())
        col.feat.append(feat.cpu().numpy())
        emb, found = self.judges.faces(out)
        col.emb.append(emb)
        col.detected.append(found)
        col.l1.append(np.abs(out.astype(np.float32) - imgs.astype(np.float32)).mean(axis=(1, 2, 3)) / 255.0)
        if self.judges.fid is not None:
            col.fid.append(self._fid_features(out))
        if t in self.targets:
            ti = self.targets.index(t)
            for p, o in zip(pos, out, strict=True):
                if p in grid:
                    grid[p][ti + 1] = o

    # -- the whole run ------------------------------------------------------------------------------
    def run(self) -> EvalResult:
        t0 = time.perf_counter()
        split_rows = np.asarray(self.cache.indices(self.cfg.split))
        if len(split_rows) < 2:
            raise ValueError(
                f"split {self.cfg.split!r} of the cache has {len(split_rows)} faces; eval needs at least 2"
            )
        sources = _sample(split_rows, self.cfg.n, self.cfg.seed)
        rest = np.setdiff1d(split_rows, sources)
        n_extra = None if self.cfg.n_reference is None else max(0, self.cfg.n_reference - len(sources))
        reference = np.sort(np.concatenate([sources, _sample(rest, n_extra, self.cfg.seed + 1)]))
        pairs = len(reference) * (len(reference) - 1) // 2
        if pairs * self.cfg.far < 1:
            raise ValueError(
                f"{len(reference)} real faces give {pairs} different-person pairs, too few to calibrate "
                f"FAR={self.cfg.far:g} (needs {int(np.ceil(1 / self.cfg.far))}); use a larger split or a higher --far"
            )
        ref = self.reference(reference)
        self.timing["reference_s"] = time.perf_counter() - t0

        grid = self._grid_slots(sources)
        t1 = time.perf_counter()
        out = self.generate(sources, grid)
        self.timing["generate_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        metrics, dists = self.summarise(sources, reference, ref, out)
        self.timing["metrics_s"] = time.perf_counter() - t2
        self.timing["total_s"] = time.perf_counter() - t0
        metrics["timing"] = {k: round(v, 2) for k, v in self.timing.items()}
        ages = {g: out["age"][out["target"] == g] for g in self.targets}
        real_ages = {g: ref["age"][self.groups[reference] == g] for g in self.targets}
        return EvalResult(
            metrics,
            np.stack(list(grid.values())) if grid else None,
            ages,
            real_ages,
            dists["output"],
            dists["impostor"],
        )

    def _grid_slots(self, sources: np.ndarray) -> dict[int, np.ndarray]:
        """Source position -> [1 + targets, S, S, 3] rows of the sample grid (input filled in), youngest first.

        The grid shows faces spread evenly over the sources' ages, not just the first few of the cache.
        """
        by_age = np.argsort(self.cache.ages[sources], kind="stable")
        spread = np.linspace(0, len(sources) - 1, min(self.cfg.grid_faces, len(sources))).round().astype(int)
        grid = {}
        for p in by_age[np.unique(spread)]:
            grid[int(p)] = np.zeros((len(self.targets) + 1, *self.cache.images.shape[1:]), np.uint8)
            grid[int(p)][0] = self.cache.images[sources[p]]
        return grid

    # -- phase 3 ------------------------------------------------------------------------------------
    def summarise(self, sources: np.ndarray, reference: np.ndarray, ref: dict, out: dict) -> tuple[dict, dict]:
        """Every metric of the report from the collected arrays; plain floats and lists only."""
        t = tqdm(total=3 + len(self.targets), desc="eval: metrics", unit="step", dynamic_ncols=True)
        src_in_ref = np.searchsorted(reference, sources)
        ref_groups = self.groups[reference]
        identity = self._identity(reference, ref["emb"])
        t.update(1)
        dist = np.linalg.norm(out["emb"] - ref["emb"][src_in_ref][out["source"]], axis=1)
        recon = out["target"] == self.groups[sources][out["source"]]
        main = np.isin(out["target"], self.targets)
        thresholds = {"0.6": M.DLIB_SAME_PERSON_THRESHOLD, "far": identity["threshold_far"]}
        per_target = []
        for g in self.targets:
            per_target.append(
                self._target_metrics(g, out, out["target"] == g, dist, ref, ref_groups, src_in_ref, thresholds)
            )
            t.update(1)
        result = {
            "model": {k: self.meta.get(k) for k in ("model", "image_size", "scheme")},
            "config": {**self.cfg.__dict__, "targets": self.targets},
            "data": self._data_summary(sources, reference, ref, ref_groups),
            "judges": {"embedding": self.judges.faces_name, "detector": self.judges.detector_name},
            "warnings": self.warnings,
            "identity": identity,
            "targets": per_target,
            "overall": self._overall(out, main, dist, thresholds),
            "reconstruction": self._reconstruction(out, recon, dist, thresholds),
        }
        t.update(2)
        t.close()
        return result, {"output": dist[main & ~recon], "impostor": identity.pop("_impostor")}

    def _identity(self, reference: np.ndarray, emb: np.ndarray) -> dict:
        ids = self.cache.identities
        rows = np.arange(len(reference))
        if len(rows) > MAX_CALIBRATION_FACES:
            rows = np.sort(np.random.default_rng(self.cfg.seed + 2).choice(rows, MAX_CALIBRATION_FACES, replace=False))
        impostor = M.impostor_distances(emb[rows], None if ids is None else ids[reference[rows]])
        thr, achieved = M.calibrate_threshold(impostor, self.cfg.far)
        return {
            "threshold_dlib": M.DLIB_SAME_PERSON_THRESHOLD,
            "far_target": self.cfg.far,
            "threshold_far": thr,
            "far_achieved": achieved,
            "impostor_pairs": int(len(impostor)),
            "calibration_faces": int(len(rows)),
            "identity_labels": ids is not None,
            "impostor_far_at_0.6": float(np.mean(impostor < M.DLIB_SAME_PERSON_THRESHOLD)),
            "_impostor": impostor,
        }

    def _target_metrics(self, g, out, rows, dist, ref, ref_groups, src_in_ref, thresholds) -> dict:
        real = ref_groups == g
        ages = out["age"][rows]
        m: dict = {"group": g, "label": self.scheme.label(g), "n_outputs": int(rows.sum()), "n_real": int(real.sum())}
        m["est_age_mean"], m["est_age_std"] = M.mean_std(ages)
        m["group_accuracy"] = float(np.mean(_groups_of(self.scheme, ages) == g))
        m["real_est_age_mean"] = float(ref["age"][real].mean()) if real.any() else None
        m["real_group_accuracy"] = (
            float(np.mean(_groups_of(self.scheme, ref["age"][real]) == g)) if real.any() else None
        )
        m["id_distance_mean"], m["id_distance_std"] = M.mean_std(dist[rows])
        for name, thr in thresholds.items():
            m[f"verification_{name}"] = M.verification_rate(dist[rows], thr)
        m["detected"] = float(out["detected"][rows].mean())
        m["real_detected"] = float(ref["detected"][real].mean()) if real.any() else None
        enough = real.sum() >= 2 and rows.sum() >= 2
        m["fd_dlib"] = M.frechet_distance(out["emb"][rows], ref["emb"][real]) if enough else None
        m["fd_age"] = M.frechet_distance(out["feat"][rows], ref["feat"][real]) if enough else None
        # What a generator that returns its input unchanged would score: context for the two above.
        m["fd_dlib_inputs"] = M.frechet_distance(ref["emb"][src_in_ref], ref["emb"][real]) if enough else None
        m["fd_age_inputs"] = M.frechet_distance(ref["feat"][src_in_ref], ref["feat"][real]) if enough else None
        if "fid" in out:
            m["fid"] = M.frechet_distance(out["fid"][rows], ref["fid"][real]) if enough else None
            m["kid"] = M.kernel_inception_distance(out["fid"][rows], ref["fid"][real])[0] if enough else None
        return m

    def _overall(self, out, rows, dist, thresholds) -> dict:
        m = {"n_outputs": int(rows.sum())}
        m["group_accuracy"] = float(np.mean(_groups_of(self.scheme, out["age"][rows]) == out["target"][rows]))
        m["id_distance_mean"], m["id_distance_std"] = M.mean_std(dist[rows])
        for name, thr in thresholds.items():
            m[f"verification_{name}"] = M.verification_rate(dist[rows], thr)
        m["detected"] = float(out["detected"][rows].mean())
        return m

    def _reconstruction(self, out, rows, dist, thresholds) -> dict:
        m = {"n": int(rows.sum()), "l1": float(out["l1"][rows].mean())}
        m["id_distance_mean"], m["id_distance_std"] = M.mean_std(dist[rows])
        for name, thr in thresholds.items():
            m[f"verification_{name}"] = M.verification_rate(dist[rows], thr)
        return m

    def _data_summary(self, sources, reference, ref, ref_groups) -> dict:
        d = {
            "cache": str(getattr(self.cache, "path", "")),
            "split": self.cfg.split,
            "n_sources": int(len(sources)),
            "n_reference": int(len(reference)),
            "real_per_group": {
                self.scheme.label(g): int((ref_groups == g).sum()) for g in range(self.scheme.num_groups)
            },
            "estimator_mae_on_reference": float(np.abs(ref["age"] - self.cache.ages[reference]).mean()),
            "real_detected": float(ref["detected"].mean()),
        }
        if self.judges.estimator_train_ids is not None:
            ids = set(sample_ids(self.cache, reference))
            d["estimator_trained_on_reference_faces"] = len(ids & self.judges.estimator_train_ids)
        return d


def parse_targets(scheme: AgeScheme, targets: list[int | str] | None) -> list[int]:
    """Group indices (sorted, unique) from indices, ages ("70") or labels ("30-39"); None means all groups."""
    if targets is None:
        return list(range(scheme.num_groups))
    groups = set()
    for t in targets:
        if isinstance(t, int) and not 0 <= t < scheme.num_groups:
            raise ValueError(f"target group {t} out of range for scheme {scheme.name!r}")
        groups.add(t if isinstance(t, int) else scheme.parse(t))
    return sorted(groups)


def _groups_of(scheme: AgeScheme, ages: np.ndarray) -> np.ndarray:
    """Vectorised ``scheme.group`` (negative estimates count as age 0)."""
    return np.searchsorted(np.asarray(scheme.lower), np.clip(ages, 0, None), side="right") - 1
