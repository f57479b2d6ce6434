"""``faceage eval``'s engine: age test faces to every target group and measure age, gender, identity, colour
and realism.

The run has three phases, each with a progress bar:

1. **reference**: every real face of the split (or a seeded cap of them) is judged by the judge (age,
   gender, features) and embedded by the face recogniser; these give the real-face ages and gender
   accuracy per group (the "generic" column of the AcGAN table), the real-face distributions the Fréchet
   distances compare with, and the different-person pairs that calibrate the FAR = 0.1 % threshold;
2. **generation**: each source face is aged to each target; every output is quantised to uint8
   (what a user would save) before it is judged, embedded, searched for a face and scored for colour
   blotches against its input. A target is a group label (that group) or an age in years, fed to the
   generator as its continuous group position (``AgeScheme.position``) and compared with the real faces of
   the group that age lies in; then the **age sweep**: a seeded subset of the sources aged to 0, 5, ..., 80
   years, judged for age only (does the estimated age rise with the asked age, between groups too?);
3. **metrics**: plain NumPy on the collected arrays (``faceage.eval.metrics``).

Every figure comes with what the same judge gives for real faces and for the unchanged input.

A generator with the latent contract (``encode_faces`` / ``render``: Age-cGAN) has each face encoded once, at
its labelled age, and rendered at every target; such a generator also gets the paper's **latent reconstruction**
table (:meth:`Evaluator.latent_reconstruction`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from faceage.eval import metrics as M
from faceage.eval.train_estimator import to_input
from faceage.groups import AgeScheme
from faceage.infer.backends import fits_latents
from faceage.nn.age_estimator import AgeEstimator, sample_ids

# Blotches covering at least this share of the face region are "large" (reported beside any blotch at all).
LARGE_BLOTCH = 0.01
# Different-person pairs grow as n²: 3,000 faces already give 4.5 M pairs, plenty for FAR = 0.1 %.
MAX_CALIBRATION_FACES = 3000

# The age sweep's target ages in years: every 5 years from a newborn to 80, between and across the groups.
SWEEP_AGES = tuple(float(a) for a in range(0, 81, 5))

# Age-cGAN's latent fitting modes, as its paper names the latents they give (Antipov et al. 2017, Table 1).
PAPER_LATENTS = {"none": "z0 = E(x)", "pixel": "z*pixel", "identity": "z*IP"}

# uint8 images [N,S,S,3] -> (face descriptors [N,128], face detected [N] bool)
FaceFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Target:
    """One target of an evaluation: how it was given, the generator's condition, and the group it is judged by."""

    label: str  # as given: an age in years ("45") or a group label ("41-50")
    position: float  # the generator's float group position (AgeScheme.position; a label: its index)
    group: int  # the group the target's age lies in: its real faces and age band are the comparison


@dataclass
class EvalConfig:
    """What to evaluate and how; stored in ``metrics.json``."""

    split: str = "test"
    n: int | None = None  # source faces (seeded sample); None = the whole split
    # Group labels ("30-39"), ages in years ("45", 45.0: a continuous position) or group indices (int); None: all.
    targets: list[int | float | str] | None = None
    n_reference: int | None = None  # real faces for reference statistics; None = the whole split
    batch_size: int = 32
    seed: int = 0
    far: float = 1e-3
    bf16: bool = True
    grid_faces: int = 6
    gray_faces: int = 16  # faces for the grayscale check through faceage.load(model).age; 0 skips it
    detail_side: int = 2048  # side of the upscaled photo of the fine-detail check; 0 skips it
    detail_photo: str | None = None  # that photo; None: the bundled astronaut
    sweep_faces: int = 200  # sources (a seeded subset) aged to every age of sweep_ages; 0 skips the sweep
    sweep_ages: tuple[float, ...] = SWEEP_AGES
    recon_faces: int = 100  # Age-cGAN: faces (a seeded subset) of the latent reconstruction table; 0 skips it
    round_trip_faces: int = 200  # faces (a seeded subset) aged to the farthest group and back; 0 skips it


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
    estimator_name: str = "age estimator"


@dataclass
class EvalResult:
    """``metrics`` (plain data for ``metrics.json``) and the arrays the plots are drawn from."""

    metrics: dict
    grid: np.ndarray | None  # [faces, 1 + targets, S, S, 3]: input then one output per target
    output_ages: dict[float, np.ndarray]  # target position -> estimated ages of its outputs
    real_ages: dict[float, np.ndarray]  # target position -> estimated ages of real faces of the target's group
    output_distances: np.ndarray  # identity distance input -> output, reconstructions left out
    impostor_distances: np.ndarray  # different-person pairs of real faces
    sweep: np.ndarray | None = None  # [faces, sweep ages] estimated ages of the age sweep's outputs
    # [faces, targets, 3, S, S, 3]: attention A (grey), colour C and output per grid face and target, for a
    # generator with attention masks (``masks(x, target) -> (A, C, output)``: AcGAN); else None
    attention: np.ndarray | None = None


@dataclass
class _Collected:
    """Per-output arrays gathered during generation (one row per (source, target) pair)."""

    source: list[np.ndarray] = field(default_factory=list)  # index into the source list
    target: list[np.ndarray] = field(default_factory=list)  # the generator's group position
    group: list[np.ndarray] = field(default_factory=list)  # the group the target is judged by
    age: list[np.ndarray] = field(default_factory=list)
    female: list[np.ndarray] = field(default_factory=list)  # P(female); empty without a gender head
    artefact: list[np.ndarray] = field(default_factory=list)  # colour-blotch share of the face region
    feat: list[np.ndarray] = field(default_factory=list)
    emb: list[np.ndarray] = field(default_factory=list)
    detected: list[np.ndarray] = field(default_factory=list)
    l1: list[np.ndarray] = field(default_factory=list)
    background: list[np.ndarray] = field(default_factory=list)  # mean change outside the face mask, in 0-255 levels
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


def _judge_input(images: np.ndarray, size: int, device: torch.device | str) -> torch.Tensor:
    """uint8 faces -> the judge's input at ``size`` px (also used by tests/test_bundled_model.py)."""
    return to_input(images, device, size)


# The plain photo edit every colour score must leave alone: contrast x1.15 about mid-grey and +10 brightness.
def brightness_contrast(images: np.ndarray) -> np.ndarray:
    return np.clip((images.astype(np.float32) - 128) * 1.15 + 138, 0, 255).round().astype(np.uint8)


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
        self.positions = [t.position for t in self.targets]
        self.groups = np.array([self.scheme.group(float(a)) for a in cache.ages])
        self.latents = fits_latents(generator)
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
        out: dict[str, list] = {"age": [], "female": [], "feat": [], "emb": [], "detected": [], "fid": []}
        out["artefact_same"], out["artefact_edit"] = [], []
        bs = self.cfg.batch_size
        for start in tqdm(range(0, len(rows), bs), desc="eval: real faces", unit="batch", dynamic_ncols=True):
            batch = rows[start : start + bs]
            imgs = np.asarray(self.cache.images[batch])
            self._judge(out, imgs)
            out["artefact_same"].append(self._artefacts(imgs, imgs, batch))
            out["artefact_edit"].append(self._artefacts(imgs, brightness_contrast(imgs), batch))
            emb, found = self.judges.faces(imgs)
            out["emb"].append(emb)
            out["detected"].append(found)
            if self.judges.fid is not None:
                out["fid"].append(self._fid_features(imgs))
        return {k: np.concatenate(v) for k, v in out.items() if v}

    def _judge(self, out: dict[str, list], imgs: np.ndarray) -> None:
        """Append the judge's ages, P(female) and features of uint8 faces ``imgs`` to ``out``'s lists."""
        j = self.judges.estimator.judge(to_input(imgs, self.device, self.est_size), bf16=self.cfg.bf16)
        out["age"].append(j.age.cpu().numpy())
        out["feat"].append(j.features.cpu().numpy())
        if j.female is not None:
            out["female"].append(j.female.cpu().numpy())

    def _artefacts(self, sources: np.ndarray, outputs: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Colour-blotch share (:func:`metrics.colour_artefact_share`) of each output against its source, inside
        the cache's face mask when it has one."""
        masks = self.cache.masks
        return M.colour_artefact_shares(sources, outputs, None if masks is None else np.asarray(masks[rows]))

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
            faces = self._encode(imgs, sources[pos])
            src_group = self.groups[sources[pos]]
            for p in sorted(set(self.positions) | set(map(float, src_group.tolist()))):
                # A target outside --targets (a whole group) is generated only for the faces it reconstructs.
                keep = np.ones(len(pos), bool) if p in self.positions else src_group == p
                chosen = faces[torch.from_numpy(keep).to(faces.device)]
                self._one_target(col, chosen, imgs[keep], sources[pos[keep]], pos[keep], p, grid)
            bar.update(len(pos))
        bar.close()
        return col.arrays()

    def _encode(self, imgs: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        """Cache faces ``imgs`` (rows ``rows``) as :meth:`_generate` takes them: the generator's input, or with the
        latent contract their latents, fitted once per face at its labelled age."""
        x = to_input(imgs, self.device).contiguous(memory_format=torch.channels_last)
        if not self.latents:
            return x
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            return self.G.encode_faces(x, self._true_positions(rows))

    def _true_positions(self, rows: np.ndarray) -> torch.Tensor:
        """The group positions of the labelled ages of cache rows ``rows``."""
        positions = [self.scheme.position(float(a)) for a in self.cache.ages[rows]]
        return torch.tensor(positions, dtype=torch.float32, device=self.device)

    def _generate(self, faces: torch.Tensor, position: float | torch.Tensor) -> np.ndarray:
        """Faces from :meth:`_encode` aged to one group position (or one per face), as uint8 images."""
        target = torch.as_tensor(position, dtype=torch.float32, device=self.device).expand(len(faces))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            y = self.G.render(faces, target) if self.latents else self.G(faces, target)
        s = self.cache.size
        assert y.shape[1:] == (3, s, s), (y.shape, s)
        return _to_uint8(y)

    def _one_target(self, col: _Collected, x, imgs, rows, pos, p: float, grid: dict[int, np.ndarray]) -> None:
        out = self._generate(x, p)
        self._judge(col.__dict__, out)
        col.artefact.append(self._artefacts(imgs, out, rows))
        col.source.append(pos)
        col.target.append(np.full(len(pos), p))
        group = self.targets[self.positions.index(p)].group if p in self.positions else int(p)
        col.group.append(np.full(len(pos), group))
        emb, found = self.judges.faces(out)
        col.emb.append(emb)
        col.detected.append(found)
        col.l1.append(np.abs(out.astype(np.float32) - imgs.astype(np.float32)).mean(axis=(1, 2, 3)) / 255.0)
        if self.cache.masks is not None:
            col.background.append(M.background_change(imgs, out, np.asarray(self.cache.masks[rows])))
        if self.judges.fid is not None:
            col.fid.append(self._fid_features(out))
        if p in self.positions:
            ti = self.positions.index(p)
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
        self._reference_rows = reference
        ref = self.reference(reference)
        self.timing["reference_s"] = time.perf_counter() - t0

        grid = self._grid_slots(sources)
        t1 = time.perf_counter()
        out = self.generate(sources, grid)
        self.timing["generate_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        metrics, dists = self.summarise(sources, reference, ref, out)
        self.timing["metrics_s"] = time.perf_counter() - t2
        t3 = time.perf_counter()
        metrics["age_sweep"], sweep = self.sweep(sources) if self.cfg.sweep_faces else (None, None)
        self.timing["sweep_s"] = time.perf_counter() - t3
        t4 = time.perf_counter()
        trip = self.cfg.round_trip_faces and not self.latents
        metrics["round_trip"] = self.round_trip(sources, reference, ref["emb"]) if trip else None
        self.timing["round_trip_s"] = time.perf_counter() - t4
        metrics["latent_fitting"] = self._latent_fitting() if self.latents else None
        metrics["latent_reconstruction"] = None
        if self.cfg.recon_faces and self.latents and hasattr(self.G, "set_latent_fitting"):
            t5 = time.perf_counter()
            metrics["latent_reconstruction"] = self.latent_reconstruction(sources)
            self.timing["latent_reconstruction_s"] = time.perf_counter() - t5
        self.timing["total_s"] = time.perf_counter() - t0
        metrics["timing"] = {k: round(v, 2) for k, v in self.timing.items()}
        attention = self.attention_maps(sources[np.array(list(grid), dtype=int)]) if grid else None
        ages = {t.position: out["age"][out["target"] == t.position] for t in self.targets}
        real_ages = {t.position: ref["age"][self.groups[reference] == t.group] for t in self.targets}
        return EvalResult(
            metrics,
            np.stack(list(grid.values())) if grid else None,
            ages,
            real_ages,
            dists["output"],
            dists["impostor"],
            sweep,
            attention,
        )

    @torch.no_grad()
    def attention_maps(self, rows: np.ndarray) -> np.ndarray | None:
        """The AcGAN paper's attention figure for cache rows ``rows``: per target, the attention mask ``A`` (white:
        the input kept), the colour mask ``C`` and the output, uint8 [faces, targets, 3, S, S, 3]; None for a
        generator without ``masks``."""
        if not hasattr(self.G, "masks") or self.latents:
            return None
        x = self._encode(np.asarray(self.cache.images[rows]), rows)
        tiles = []
        for p in self.positions:
            target = torch.full((len(x),), p, dtype=torch.float32, device=self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
                attention, colour, out = self.G.masks(x, target)
            tiles.append(
                [_to_uint8(attention.float().expand(-1, 3, -1, -1) * 2 - 1), _to_uint8(colour), _to_uint8(out)]
            )
        return np.stack([np.stack(t, axis=1) for t in tiles], axis=1)

    @torch.no_grad()
    def sweep(self, sources: np.ndarray) -> tuple[dict, np.ndarray]:
        """The age sweep: a seeded subset of the sources aged to every age of ``sweep_ages`` (each at its continuous
        group position) and judged for age only. Returns :func:`sweep_summary` and the estimates [faces, ages]."""
        faces = _sample(sources, self.cfg.sweep_faces, self.cfg.seed + 6)
        ages = [float(a) for a in self.cfg.sweep_ages]
        positions = [self.scheme.position(a) for a in ages]
        est = np.empty((len(faces), len(ages)), np.float32)
        inputs = np.empty(len(faces), np.float32)
        bs = self.cfg.batch_size
        for start in tqdm(range(0, len(faces), bs), desc="eval: age sweep", unit="batch", dynamic_ncols=True):
            imgs = np.asarray(self.cache.images[faces[start : start + bs]])
            encoded = self._encode(imgs, faces[start : start + bs])
            inputs[start : start + len(imgs)] = self._ages(imgs)
            for j, p in enumerate(positions):
                est[start : start + len(imgs), j] = self._ages(self._generate(encoded, p))
        return {**sweep_summary(ages, positions, est), "inputs_mean": float(inputs.mean())}, est

    @torch.no_grad()
    def round_trip(self, sources: np.ndarray, reference: np.ndarray, ref_emb: np.ndarray) -> dict:
        """A seeded subset of the sources aged to the group farthest from their own (the oldest for the younger half
        of the groups, else the youngest), then aged back to their own group by the same generator: the cycle that a
        cycle-consistent model trains, run through the generator a user gets. L1 of the return to the input and
        dlib verification (< 0.6) of the far output and of the return against the input, whose descriptor the
        reference pass already has (``ref_emb``, rows of the sorted ``reference``, which holds every source)."""
        faces = _sample(sources, self.cfg.round_trip_faces, self.cfg.seed + 7)
        n, bs = self.scheme.num_groups, self.cfg.batch_size
        l1, far_dist, back_dist = [], [], []
        for start in tqdm(range(0, len(faces), bs), desc="eval: round trip", unit="batch", dynamic_ncols=True):
            rows = faces[start : start + bs]
            imgs = np.asarray(self.cache.images[rows])
            own = torch.from_numpy(self.groups[rows]).float()
            far = self._generate(self._encode(imgs, rows), torch.where(own < n / 2, n - 1.0, 0.0))
            back = self._generate(self._encode(far, rows), own)
            l1.append(np.abs(back.astype(np.float32) - imgs.astype(np.float32)).mean(axis=(1, 2, 3)) / 255.0)
            own_emb = ref_emb[np.searchsorted(reference, rows)]
            far_dist.append(np.linalg.norm(self.judges.faces(far)[0] - own_emb, axis=1))
            back_dist.append(np.linalg.norm(self.judges.faces(back)[0] - own_emb, axis=1))
        far_d, back_d = np.concatenate(far_dist), np.concatenate(back_dist)
        return {
            "n": int(len(faces)),
            "l1": float(np.concatenate(l1).mean()),
            "far_verified": M.verification_rate(far_d, M.DLIB_SAME_PERSON_THRESHOLD),
            "back_verified": M.verification_rate(back_d, M.DLIB_SAME_PERSON_THRESHOLD),
            "far_distance": float(far_d.mean()),
            "back_distance": float(back_d.mean()),
        }

    def _latent_fitting(self) -> dict:
        """How the outputs' latents were fitted: the generator's own knobs, at each face's labelled age."""
        knobs = {k: getattr(self.G, f"latent_{k}", None) for k in ("mode", "steps", "lr")}
        return {**knobs, "source": "each face's labelled age"}

    @torch.no_grad()
    def latent_reconstruction(self, sources: np.ndarray) -> dict:
        """Age-cGAN's identity table (Antipov et al. 2017, Table 1) on a seeded subset of the sources: for the latent
        each fitting mode finds at the face's labelled age (``none``: z0 = E(x), ``pixel``, ``identity``), the share
        of faces verified as the same person (dlib distance < 0.6) as their reconstruction G(z, y_source), and of
        (face, target) pairs verified as the face's outputs G(z, y_target) at targets outside its own group."""
        faces = _sample(sources, self.cfg.recon_faces, self.cfg.seed + 7)
        emb_in = self.judges.faces(np.asarray(self.cache.images[faces]))[0]
        kept_mode = getattr(self.G, "latent_mode", None)
        modes = {}
        try:
            for mode in PAPER_LATENTS:
                self.G.set_latent_fitting(mode=mode)
                modes[mode] = self._latent_mode_rates(mode, faces, emb_in)
        finally:
            self.G.set_latent_fitting(mode=kept_mode)
        return {
            "n_faces": int(len(faces)),
            "threshold": M.DLIB_SAME_PERSON_THRESHOLD,
            "steps": getattr(self.G, "latent_steps", None),
            "lr": getattr(self.G, "latent_lr", None),
            "source": "each face's labelled age",
            "modes": modes,
        }

    def _latent_mode_rates(self, mode: str, faces: np.ndarray, emb_in: np.ndarray) -> dict:
        """One column of :meth:`latent_reconstruction`: the generator fitting latents in ``mode``."""
        t0 = time.perf_counter()
        rec, aged, owner = [], [], []
        bs = self.cfg.batch_size
        for start in tqdm(range(0, len(faces), bs), desc=f"eval: latents, {mode}", unit="batch", dynamic_ncols=True):
            rows = faces[start : start + bs]
            z = self._encode(np.asarray(self.cache.images[rows]), rows)
            rec.append(self._generate(z, self._true_positions(rows)))
            for t in self.targets:
                other = np.flatnonzero(self.groups[rows] != t.group)
                if len(other):
                    aged.append(self._generate(z[torch.from_numpy(other).to(z.device)], t.position))
                    owner.append(start + other)
        rec_dist = np.linalg.norm(self.judges.faces(np.concatenate(rec))[0] - emb_in, axis=1)
        m = {
            "latent": PAPER_LATENTS[mode],
            "reconstruction_verified": M.verification_rate(rec_dist, M.DLIB_SAME_PERSON_THRESHOLD),
            "reconstruction_distance": float(rec_dist.mean()),
            "aged_verified": None,
            "aged_distance": None,
            "n_aged": int(sum(len(o) for o in owner)),
        }
        if owner:
            aged_dist = np.linalg.norm(
                self.judges.faces(np.concatenate(aged))[0] - emb_in[np.concatenate(owner)], axis=1
            )
            m["aged_verified"] = M.verification_rate(aged_dist, M.DLIB_SAME_PERSON_THRESHOLD)
            m["aged_distance"] = float(aged_dist.mean())
        return {**m, "seconds": round(time.perf_counter() - t0, 2)}

    def _ages(self, imgs: np.ndarray) -> np.ndarray:
        """The judge's estimated ages of uint8 faces."""
        j = self.judges.estimator.judge(to_input(imgs, self.device, self.est_size), bf16=self.cfg.bf16)
        return j.age.float().cpu().numpy()

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
        inputs = self._inputs_of(src_in_ref, ref, out)
        ref_groups = self.groups[reference]
        identity = self._identity(reference, ref["emb"])
        t.update(1)
        dist = np.linalg.norm(out["emb"] - ref["emb"][src_in_ref][out["source"]], axis=1)
        recon = out["target"] == self.groups[sources][out["source"]]
        main = np.isin(out["target"], self.positions)
        thresholds = {"0.6": M.DLIB_SAME_PERSON_THRESHOLD, "far": identity["threshold_far"]}
        per_target = []
        for target in self.targets:
            rows = out["target"] == target.position
            per_target.append(
                self._target_metrics(target, out, rows, dist, ref, ref_groups, src_in_ref, thresholds, inputs)
            )
            t.update(1)
        result = {
            "model": {k: self.meta.get(k) for k in ("model", "image_size", "scheme")},
            "config": {**self.cfg.__dict__, "targets": [dataclasses.asdict(t) for t in self.targets]},
            "data": self._data_summary(sources, reference, ref, ref_groups),
            "judges": {
                "estimator": self.judges.estimator_name,
                "embedding": self.judges.faces_name,
                "detector": self.judges.detector_name,
            },
            "warnings": self.warnings,
            "identity": identity,
            "targets": per_target,
            "age_accuracy_gap": age_accuracy_gap(per_target),
            "overall": self._overall(out, main, dist, thresholds, inputs),
            "age_order": self._age_order(out, main, ref, ref_groups, inputs),
            "realism": {**_realism_summary(per_target), **self._pooled_realism(sources, reference, ref, out, main)},
            "colour": self._colour_summary(out, main, ref),
            "reconstruction": self._reconstruction(out, recon, dist, thresholds),
            "pairs": self._pairs(out, main & ~recon, dist, sources),
            "background": self._background(out, main),
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

    def _target_metrics(self, target: Target, out, rows, dist, ref, ref_groups, src_in_ref, thresholds, inputs) -> dict:
        g = target.group
        real = ref_groups == g
        ages = out["age"][rows]
        m: dict = {"label": target.label, "position": target.position, "group": g, "group_label": self.scheme.label(g)}
        m["n_outputs"], m["n_real"] = int(rows.sum()), int(real.sum())
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
        m["fd_judge"] = M.frechet_distance(out["feat"][rows], ref["feat"][real]) if enough else None
        # What a generator that returns its input unchanged would score: context for the two above.
        m["fd_dlib_inputs"] = M.frechet_distance(ref["emb"][src_in_ref], ref["emb"][real]) if enough else None
        m["fd_judge_inputs"] = M.frechet_distance(ref["feat"][src_in_ref], ref["feat"][real]) if enough else None
        m["fd_judge_real_halves"] = self._split_half_fd(ref["feat"][real])
        m["artefact_share"] = float(np.mean(out["artefact"][rows] > 0))
        m["gender"] = self._gender(out, rows, inputs, ref, real)
        if "fid" in out:
            m["fid"] = M.frechet_distance(out["fid"][rows], ref["fid"][real]) if enough else None
            m["kid"] = M.kernel_inception_distance(out["fid"][rows], ref["fid"][real])[0] if enough else None
        return m

    def _inputs_of(self, src_in_ref: np.ndarray, ref: dict, out: dict) -> dict[str, np.ndarray | None]:
        """Per output row: its input's judged age, judged P(female) and labelled gender (-1 unknown)."""
        at = src_in_ref[out["source"]]
        female = ref.get("female")
        return {
            "age": ref["age"][at],
            "female": None if female is None else female[at],
            "label": self.cache.genders[self._reference_rows][at].astype(int),
        }

    def _gender(self, out: dict, rows: np.ndarray, inputs: dict, ref: dict, real: np.ndarray | None) -> dict | None:
        """Gender kept (the judge's verdict on output = on input) overall and per labelled input gender, the
        judge's accuracy against the labels on outputs, on their inputs and on real faces (``real`` rows)."""
        if "female" not in out or inputs["female"] is None:
            return None
        said_out, said_in = out["female"][rows] > 0.5, inputs["female"][rows] > 0.5
        label = inputs["label"][rows]
        kept = said_out == said_in
        m = {"kept": float(kept.mean()), "n": int(rows.sum())}
        for name, value in (("female", 1), ("male", 0)):
            mine = label == value
            m[f"kept_{name}_inputs"] = float(kept[mine].mean()) if mine.any() else None
            m[f"n_{name}_inputs"] = int(mine.sum())
        m["output_accuracy"] = _label_accuracy(said_out, label)
        m["input_accuracy"] = _label_accuracy(said_in, label)
        if real is not None:
            m["real_accuracy"] = _label_accuracy(
                ref["female"][real] > 0.5, self.cache.genders[self._reference_rows][real]
            )
        return m

    def _age_order(self, out: dict, main: np.ndarray, ref: dict, ref_groups: np.ndarray, inputs: dict) -> dict:
        """Do estimated ages follow the targets? Spearman(target, estimate), monotone means, spread of the means as a
        share of real faces' spread (youngest to oldest target), each also for real faces and unchanged inputs."""
        targets, ages = out["target"][main], out["age"][main]
        means = [float(ages[targets == p].mean()) for p in self.positions]
        input_means = [float(inputs["age"][main][targets == p].mean()) for p in self.positions]
        groups = [t.group for t in self.targets]
        real_rows = np.isin(ref_groups, groups)
        real_means = [float(ref["age"][ref_groups == g].mean()) if (ref_groups == g).any() else None for g in groups]
        young, old = self.targets[0], self.targets[-1]
        labels = self.cache.ages[self._reference_rows]
        label_means = [float(labels[ref_groups == g].mean()) if (ref_groups == g).any() else None for g in groups]
        label_spread = None if None in (label_means[0], label_means[-1]) else label_means[-1] - label_means[0]
        label_spread = label_spread if len(self.targets) >= 2 and label_spread and label_spread > 0 else None
        real_spread = None if None in (real_means[0], real_means[-1]) else real_means[-1] - real_means[0]
        usable = len(self.targets) >= 2 and real_spread is not None and real_spread > 0

        def spread(m: list[float]) -> float | None:
            return (m[-1] - m[0]) / real_spread if usable else None

        return {
            "targets": [t.label for t in self.targets],
            "youngest": young.label,
            "oldest": old.label,
            "spearman": _spearman_or_none(targets, ages),
            "means": means,
            "monotonic": _increasing(means),
            "spread": spread(means),
            "real_means": real_means,
            "real_spread_years": real_spread,
            "real_spearman": _spearman_or_none(ref_groups[real_rows], ref["age"][real_rows]),
            "real_monotonic": None not in real_means and _increasing(real_means),
            "real_label_means": label_means,
            "spread_vs_labels": (means[-1] - means[0]) / label_spread if label_spread else None,
            "inputs_spearman": _spearman_or_none(targets, inputs["age"][main]),
            "inputs_spread": spread(input_means),
        }

    def _colour_summary(self, out: dict, main: np.ndarray, ref: dict) -> dict:
        """Share of outputs with a colour blotch, next to the unchanged input and a brightness/contrast edit of it."""
        return {
            "threshold_chroma": M.ARTEFACT_CHROMA,
            "min_blob": M.ARTEFACT_MIN_BLOB,
            "region": "the cache's face masks" if self.cache.masks is not None else "central ellipse",
            "share": float(np.mean(out["artefact"][main] > 0)),
            "share_large": float(np.mean(out["artefact"][main] >= LARGE_BLOTCH)),
            "mean_area": float(out["artefact"][main].mean()),
            "inputs_share": float(np.mean(ref["artefact_same"] > 0)),
            "edit_share": float(np.mean(ref["artefact_edit"] > 0)),
            "edit": "contrast x1.15 about mid-grey, brightness +10",
        }

    def _pooled_realism(self, sources, reference, ref: dict, out: dict, main: np.ndarray) -> dict:
        """The headline realism figure, on disjoint halves so that the unchanged input is not compared with itself.

        A seeded half A of the sources is compared with the real faces B outside A: FD-judge of A's outputs (all
        targets pooled) to B reweighted to the outputs' target mix (each target group equal), next to A's unchanged
        inputs to B as it is (both natural mixes) and A's own real faces of the target groups, reweighted the same
        way, to B (what real faces of those ages score). ratio = outputs / unchanged inputs."""
        rng = np.random.default_rng(self.cfg.seed + 5)
        in_a = np.zeros(len(sources), bool)
        in_a[rng.permutation(len(sources))[: len(sources) // 2]] = True
        b = ~np.isin(reference, sources[in_a])
        groups_b, groups_a = self.groups[reference[b]], self.groups[sources[in_a]]
        kept = [t for t in self.targets if (groups_b == t.group).sum() >= 1 and (groups_a == t.group).sum() >= 1]
        targets = [t.group for t in kept]  # one entry per target: two targets in one group weigh it twice
        rows = main & in_a[out["source"]] & np.isin(out["target"], [t.position for t in kept])
        if len(targets) == 0 or in_a.sum() < 2 or b.sum() < 2 or rows.sum() < 2:
            return {"pooled": None}
        feats_a = ref["feat"][np.searchsorted(reference, sources[in_a])]
        real_a = np.isin(groups_a, targets)
        pooled = {
            "targets": [t.label for t in kept],
            "n_sources": int(in_a.sum()),
            "n_real": int(b.sum()),
            "fd_outputs": M.weighted_frechet_distance(out["feat"][rows], ref["feat"][b], None, _mix(groups_b, targets)),
            "fd_inputs": M.frechet_distance(feats_a, ref["feat"][b]),
            "fd_real": (
                M.weighted_frechet_distance(
                    feats_a[real_a], ref["feat"][b], _mix(groups_a[real_a], targets), _mix(groups_b, targets)
                )
                if real_a.sum() >= 2
                else None
            ),
        }
        pooled["ratio"] = pooled["fd_outputs"] / pooled["fd_inputs"] if pooled["fd_inputs"] > 0 else None
        return {"pooled": pooled}

    def _split_half_fd(self, feats: np.ndarray) -> float | None:
        """Fréchet distance between two seeded random halves of real faces: what real faces score against real
        faces (biased up by the halved sample; compare with care)."""
        if len(feats) < 4:
            return None
        order = np.random.default_rng(self.cfg.seed + 3).permutation(len(feats))
        half = len(feats) // 2
        return M.frechet_distance(feats[order[:half]], feats[order[half : 2 * half]])

    def _overall(self, out, rows, dist, thresholds, inputs: dict) -> dict:
        m = {"n_outputs": int(rows.sum())}
        m["gender"] = self._gender(out, rows, inputs, {}, None)
        m["artefact_share"] = float(np.mean(out["artefact"][rows] > 0))
        m["group_accuracy"] = float(np.mean(_groups_of(self.scheme, out["age"][rows]) == out["group"][rows]))
        m["id_distance_mean"], m["id_distance_std"] = M.mean_std(dist[rows])
        for name, thr in thresholds.items():
            m[f"verification_{name}"] = M.verification_rate(dist[rows], thr)
        m["detected"] = float(out["detected"][rows].mean())
        return m

    def _pairs(self, out: dict, rows: np.ndarray, dist: np.ndarray, sources: np.ndarray) -> list[dict]:
        """Verification (dlib distance < 0.6) per (source group, target) pair, the AcGAN paper's identity table: one
        entry per pair that has outputs, the reconstructions (target in the source's own group) left out."""
        src_groups = self.groups[sources][out["source"]]
        cells = []
        for g in np.unique(src_groups[rows]):
            for t in self.targets:
                mine = rows & (src_groups == g) & (out["target"] == t.position)
                if mine.any():
                    cells.append(
                        {
                            "source_group": self.scheme.label(int(g)),
                            "target": t.label,
                            "n": int(mine.sum()),
                            "verified": M.verification_rate(dist[mine], M.DLIB_SAME_PERSON_THRESHOLD),
                            "distance": float(dist[mine].mean()),
                        }
                    )
        return cells

    def _background(self, out: dict, main: np.ndarray) -> dict | None:
        """How far outputs moved outside the cache's face masks (mean absolute change in 0-255 levels per output),
        overall and per target; None when the cache has no masks. An unchanged input scores 0."""
        if "background" not in out:
            return None
        bg = out["background"]
        per_target = {t.label: float(bg[out["target"] == t.position].mean()) for t in self.targets}
        return {
            "mean": float(bg[main].mean()),
            "p95": float(np.percentile(bg[main], 95)),
            "per_target": per_target,
            "region": "outside the cache's face masks (mask value < 128)",
        }

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
            "estimator_gender_accuracy_on_reference": (
                _label_accuracy(ref["female"] > 0.5, self.cache.genders[reference]) if "female" in ref else None
            ),
            "real_detected": float(ref["detected"].mean()),
        }
        if self.judges.estimator_train_ids is not None:
            ids = set(sample_ids(self.cache, reference))
            d["estimator_trained_on_reference_faces"] = len(ids & self.judges.estimator_train_ids)
        return d


def parse_targets(scheme: AgeScheme, targets: list[int | float | str] | None) -> list[Target]:
    """:class:`Target` s sorted by position, one per position, from group indices (int), ages in years (``"45"``,
    45.0: the continuous position of :meth:`AgeScheme.position`) or group labels (``"30-39"``); None: all groups."""
    if targets is None:
        return [Target(scheme.label(g), float(g), g) for g in range(scheme.num_groups)]
    parsed: dict[float, Target] = {}
    for t in targets:
        if isinstance(t, int) and not isinstance(t, bool):
            if not 0 <= t < scheme.num_groups:
                raise ValueError(f"target group {t} out of range for scheme {scheme.name!r}")
            target = Target(scheme.label(t), float(t), t)
        else:
            position = scheme.parse_position(t)
            label = f"{t:g}" if isinstance(t, float) else str(t).strip()
            target = Target(label, position, scheme.group(scheme.age_at(position)))
        parsed.setdefault(target.position, target)
    return [parsed[p] for p in sorted(parsed)]


def sweep_summary(ages: list[float], positions: list[float], estimates: np.ndarray) -> dict:
    """The age sweep's figures from the judge's estimates ``[faces, ages]``: mean and std per target age, Spearman
    over every (target age, estimate) pair, and whether the means rise strictly with the target age.

    Ages beyond the first or last group's representative age clamp to the same position (``ffhq10``: 75 and 80 are
    both 70+), so the generator is given the same condition: such an age counts once for ``monotonic`` and is
    listed in ``same_as_previous``."""
    assert estimates.shape[1:] == (len(ages),), (estimates.shape, len(ages))
    means = [float(v) for v in estimates.mean(axis=0)]
    repeated = [i for i in range(1, len(ages)) if positions[i] == positions[i - 1]]
    return {
        "ages": list(ages),
        "positions": [round(p, 4) for p in positions],
        "n_faces": int(len(estimates)),
        "means": means,
        "stds": [float(v) for v in estimates.std(axis=0)],
        "spearman": _spearman_or_none(np.tile(np.asarray(ages), len(estimates)), estimates.ravel()),
        "monotonic": _increasing([m for i, m in enumerate(means) if i not in repeated]),
        "same_as_previous": [ages[i] for i in repeated],
    }


def age_accuracy_gap(per_target: list[dict]) -> dict | None:
    """The judge's group accuracy (estimates inside the target's group) on outputs next to real faces of the same
    groups, over the targets that have real faces, each weighted by its outputs: ``points`` is how much lower the
    synthetic faces score (the Age-cGAN paper's comparison). None when no target group has real faces."""
    rows = [t for t in per_target if t["real_group_accuracy"] is not None and t["n_outputs"]]
    if not rows:
        return None
    weights = [t["n_outputs"] for t in rows]
    synthetic = float(np.average([t["group_accuracy"] for t in rows], weights=weights))
    real = float(np.average([t["real_group_accuracy"] for t in rows], weights=weights))
    return {
        "synthetic": synthetic,
        "real": real,
        "points": 100 * (real - synthetic),
        "targets": [t["label"] for t in rows],
    }


def gap_line(gap: dict) -> str:
    """The age-accuracy gap in words: "synthetic faces 41.0% vs real 55.2%: 14.2 points lower"."""
    points = gap["points"]
    how = "the same" if abs(points) < 0.05 else f"{abs(points):.1f} points {'lower' if points > 0 else 'higher'}"
    return f"synthetic faces {gap['synthetic']:.1%} vs real {gap['real']:.1%}: {how}"


def _increasing(values: list[float]) -> bool:
    """Strictly increasing (and at least two values)."""
    return len(values) >= 2 and all(b > a for a, b in zip(values[:-1], values[1:], strict=True))


def _label_accuracy(said_female: np.ndarray, labels: np.ndarray) -> float | None:
    """Share of labelled rows (0 male, 1 female) where the judge's verdict matches; None when none is labelled."""
    known = (labels == 0) | (labels == 1)
    return float(np.mean(said_female[known] == (labels[known] == 1))) if known.any() else None


def _spearman_or_none(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 2:
        return None
    value = M.spearman(x, y)
    return None if np.isnan(value) else value


def _mix(groups: np.ndarray, targets: list[int]) -> np.ndarray:
    """Row weights giving each entry of ``targets`` (groups, repeats allowed) equal total weight (0 for other rows)."""
    w = np.zeros(len(groups))
    for g in targets:
        mine = groups == g
        if mine.any():
            w[mine] += 1.0 / mine.sum()
    return w


def _realism_summary(per_target: list[dict]) -> dict:
    """Fréchet distances in the judge's features summed over the targets that have both, outputs vs. unchanged
    inputs; the ratio is the headline (1.0: as close to real faces of the target as the input already was)."""
    rows = [t for t in per_target if t["fd_judge"] is not None and t["fd_judge_inputs"] is not None]
    fd = float(sum(t["fd_judge"] for t in rows)) if rows else None
    fd_inputs = float(sum(t["fd_judge_inputs"] for t in rows)) if rows else None
    halves = [t["fd_judge_real_halves"] for t in rows]
    return {
        "targets": [t["label"] for t in rows],
        "fd_judge_sum": fd,
        "fd_judge_inputs_sum": fd_inputs,
        "ratio": fd / fd_inputs if rows and fd_inputs > 0 else None,
        "fd_judge_real_halves_sum": float(sum(halves)) if rows and None not in halves else None,
    }


def _groups_of(scheme: AgeScheme, ages: np.ndarray) -> np.ndarray:
    """Vectorised ``scheme.group`` (negative estimates count as age 0)."""
    return np.searchsorted(np.asarray(scheme.lower), np.clip(ages, 0, None), side="right") - 1
