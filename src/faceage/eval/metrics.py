"""Pure metric functions: Fréchet distance, KID, verification thresholds and rates.

They take and return NumPy arrays and plain floats, are deterministic given their inputs (KID takes a
seed) and know nothing about models, so each is tested on synthetic arrays with known answers. The
linear algebra runs in torch (float64) rather than NumPy: torch follows ``torch.set_num_threads``,
while NumPy's OpenBLAS keeps its own threads, which on a shared CPU made a 256 x 256 ``eigh`` take
1 s instead of 10 ms.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# The threshold dlib's authors use for "same person" with their 128-D face descriptor.
DLIB_SAME_PERSON_THRESHOLD = 0.6


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _samples(x: np.ndarray, name: str) -> torch.Tensor:
    t = _t(x)
    if t.ndim != 2 or t.shape[0] < 2:
        raise ValueError(f"{name} needs an [N>=2, D] array, got shape {tuple(t.shape)}")
    return t


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of ``features`` [N, D]; needs at least two rows."""
    x = _samples(features, "feature_stats")
    return x.mean(0).numpy(), torch.cov(x.T).reshape(x.shape[1], x.shape[1]).numpy()


def _psd_sqrt(cov: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((cov + cov.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance_from_stats(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Squared Fréchet (2-Wasserstein) distance between the Gaussians N(mu1, cov1) and N(mu2, cov2).

    ``Tr(sqrt(cov1 cov2))`` is computed as the trace of ``sqrt(s1 cov2 s1)`` with ``s1 = sqrt(cov1)``, a
    symmetric PSD matrix, so the result is real and stable even for singular covariances (few samples).
    """
    mu1, cov1, mu2, cov2 = _t(mu1), _t(cov1), _t(mu2), _t(cov2)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape:
        raise ValueError(f"feature dimensions differ: {tuple(mu1.shape)} vs {tuple(mu2.shape)}")
    s1 = _psd_sqrt(cov1)
    cross = torch.linalg.eigvalsh(s1 @ cov2 @ s1).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + cov1.trace() + cov2.trace() - 2.0 * cross, 0.0))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Squared Fréchet distance between Gaussians fitted to feature sets ``a`` [N, D] and ``b`` [M, D].

    With fewer samples than dimensions (2048-D Inception features of a few hundred faces) it avoids the
    D x D matrix square root: writing ``cov_i = Y_i^T Y_i`` with ``Y_i`` the centred samples divided by
    ``sqrt(n_i - 1)``, ``Tr(sqrt(cov1 cov2))`` is the nuclear norm of the small matrix ``Y1 Y2^T``.
    """
    x, y = _samples(a, "frechet_distance"), _samples(b, "frechet_distance")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if min(len(x), len(y)) >= x.shape[1]:
        return frechet_distance_from_stats(*feature_stats(a), *feature_stats(b))
    mu1, mu2 = x.mean(0), y.mean(0)
    y1 = (x - mu1) / (len(x) - 1) ** 0.5
    y2 = (y - mu2) / (len(y) - 1) ** 0.5
    cross = torch.linalg.svdvals(y1 @ y2.T).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + (y1 * y1).sum() + (y2 * y2).sum() - 2.0 * cross, 0.0))


def weighted_feature_stats(features: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of ``features`` [N, D] with each row weighted by ``weights`` [N] (>= 0;
    None: equal), the unbiased reliability-weighted covariance; equal weights give :func:`feature_stats`."""
    x = _samples(features, "weighted_feature_stats")
    w = torch.ones(len(x), dtype=torch.float64) if weights is None else _t(weights).reshape(-1)
    if len(w) != len(x) or (w < 0).any() or (w > 0).sum() < 2:
        raise ValueError(f"weights must be [N={len(x)}] non-negative with at least two above 0, got {tuple(w.shape)}")
    w = w / w.sum()
    mu = w @ x
    xc = x - mu
    cov = (xc * w[:, None]).T @ xc / (1 - (w * w).sum())
    return mu.numpy(), cov.numpy()


def weighted_frechet_distance(
    a: np.ndarray, b: np.ndarray, a_weights: np.ndarray | None = None, b_weights: np.ndarray | None = None
) -> float:
    """Squared Fréchet distance between Gaussians fitted to weighted samples (e.g. real faces reweighted to the
    age-group mix of a set of outputs)."""
    return frechet_distance_from_stats(*weighted_feature_stats(a, a_weights), *weighted_feature_stats(b, b_weights))


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: unbiased MMD² with the cubic polynomial kernel, mean and std over random subsets.

    Follows Bińkowski et al. 2018 (and the common reference implementations): ``k(x, y) = (x·y / D + 1)³``,
    subsets of ``min(subset_size, N, M)`` rows drawn without replacement from each set.
    """
    x_all, y_all = _samples(a, "KID"), _samples(b, "KID")
    if x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"KID needs two [N, D] arrays with the same D, got {tuple(x_all.shape)}, {tuple(y_all.shape)}")
    m = min(subset_size, len(x_all), len(y_all))
    rng = np.random.default_rng(seed)
    d = x_all.shape[1]
    values = []
    for _ in range(subsets):
        x = x_all[torch.from_numpy(rng.choice(len(x_all), m, replace=False))]
        y = y_all[torch.from_numpy(rng.choice(len(y_all), m, replace=False))]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        mmd = (kxx.sum() - kxx.trace() + kyy.sum() - kyy.trace()) / (m * (m - 1)) - 2 * kxy.mean()
        values.append(float(mmd))
    return float(np.mean(values)), float(np.std(values))


def impostor_distances(embeddings: np.ndarray, identities: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distances of all different-person pairs among ``embeddings`` [N, D].

    Without ``identities`` every row is taken to be a different person (UTKFace has no identity labels,
    so the rare same-person pair counts as an impostor, which makes a calibrated threshold stricter).
    """
    e = _samples(embeddings, "impostor_distances")
    sq = (e * e).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (e @ e.T)
    i, j = np.triu_indices(len(e), k=1)
    dist = d2.numpy()[i, j].clip(min=0.0) ** 0.5
    if identities is not None:
        ids = np.asarray(identities)
        if len(ids) != len(e):
            raise ValueError(f"{len(ids)} identities for {len(e)} embeddings")
        dist = dist[ids[i] != ids[j]]
    return dist


def calibrate_threshold(impostor: np.ndarray, far: float = 1e-3) -> tuple[float, float]:
    """The largest distance threshold ``t`` with at most a ``far`` share of impostor distances below it.

    "Same person" means ``distance < t``. Returns ``(t, achieved FAR)``; needs at least ``1 / far``
    impostor pairs so that the quantile is not extrapolated.
    """
    d = np.sort(np.asarray(impostor, dtype=np.float64).ravel())
    if not 0 < far < 1:
        raise ValueError(f"far must be in (0, 1), got {far}")
    if len(d) < 1 / far:
        raise ValueError(
            f"calibrating FAR={far:g} needs at least {int(np.ceil(1 / far))} impostor pairs, got {len(d)}; "
            "use more reference faces"
        )
    k = int(np.floor(far * len(d)))
    threshold = float(d[k])
    return threshold, float(np.mean(d < threshold))


def verification_rate(distances: np.ndarray, threshold: float) -> float:
    """Share of genuine pairs accepted as the same person (``distance < threshold``)."""
    d = np.asarray(distances, dtype=np.float64).ravel()
    if len(d) == 0:
        raise ValueError("verification_rate got no distances")
    return float(np.mean(d < threshold))


def mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and population std of a non-empty array, as plain floats."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if len(v) == 0:
        raise ValueError("mean_std got an empty array")
    return float(v.mean()), float(v.std())


def max_chroma(image: np.ndarray) -> int:
    """The largest ``max(R, G, B) - min(R, G, B)`` of a uint8 HxWx3 image (0-255): 0 for a grayscale picture."""
    x = np.asarray(image)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"max_chroma needs an HxWx3 image, got shape {x.shape}")
    x = x.astype(np.int16)
    return int((x.max(axis=2) - x.min(axis=2)).max())


def highpass_correlation(a: np.ndarray, b: np.ndarray, sigma: float = 1.0) -> float:
    """Pearson correlation of the fine detail of two same-size images: luminance minus its Gaussian blur
    (``sigma`` px). 1.0 when ``b`` keeps ``a``'s pores, hair and edges; near 0 when it is a soft upscale."""
    from scipy.ndimage import gaussian_filter

    if np.shape(a) != np.shape(b) or np.ndim(a) not in (2, 3):
        raise ValueError(f"highpass_correlation needs two same-size images, got {np.shape(a)} and {np.shape(b)}")

    def detail(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        y = x @ np.array([0.299, 0.587, 0.114]) if x.ndim == 3 else x
        return (y - gaussian_filter(y, sigma)).ravel()

    da, db = detail(a), detail(b)
    denom = np.sqrt((da * da).sum() * (db * db).sum())
    return float((da * db).sum() / denom) if denom > 0 else 0.0


# Colour artefacts: chroma (Cb, Cr, BT.601, 0-255 scale) an output has that its input's colours do not explain.
ARTEFACT_CHROMA = 12.0  # residual chroma (after a global per-image colour fit, smoothed) counted as an artefact
ARTEFACT_MIN_BLOB = 0.003  # smallest blotch counted, as a share of the image's pixels (49 px at 128 px)
ARTEFACT_SIGMA = 1.0  # Gaussian smoothing (px at 128 px) of both chroma maps: lone noisy pixels do not count alone
ARTEFACT_REACH = 2  # px (at 128 px): an output colour found this close in the input is the input's colour


def chroma(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Cb and Cr (BT.601, centred on 0, 0-255 scale) of uint8 images [..., H, W, 3]: float32 [..., 2, H, W]. Green
    pushes both negative, purple both positive; a grey pixel is (0, 0) whatever its brightness."""
    x = torch.from_numpy(np.array(images, dtype=np.float32))
    if x.ndim < 3 or x.shape[-1] != 3:
        raise ValueError(f"chroma needs [..., H, W, 3] images, got shape {tuple(x.shape)}")
    y = x @ torch.tensor([0.299, 0.587, 0.114])
    return torch.stack([0.564 * (x[..., 2] - y), 0.713 * (x[..., 0] - y)], dim=-3)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur (scipy's: truncated at 4 sigma, reflected edges) over the last two axes of [N, C, H, W]."""
    from scipy.ndimage import gaussian_filter

    return torch.from_numpy(gaussian_filter(x.numpy(), (0, 0, sigma, sigma)))


def colour_residual(sources: np.ndarray, outputs: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Per-pixel chroma of each output that no global colour change of its source explains: [N, H, W] float32.

    uint8 [N, H, W, 3] sources and outputs, bool [N, H, W] face regions. Each chroma channel of an output is
    fitted, over its region, as ``a * source + b`` (least squares): a brightness, contrast, saturation or
    white-balance change is one such fit and leaves ~0. Both chroma maps are smoothed (``ARTEFACT_SIGMA``), and
    each output pixel is compared with the nearest colour among the fitted source's pixels within
    ``ARTEFACT_REACH`` of it, so a feature that moved a little (ageing reshapes a face) is no artefact; a blotch
    of green, purple or any colour the input did not have there stays.
    """
    if np.shape(sources) != np.shape(outputs) or np.ndim(sources) != 4:
        raise ValueError(
            f"colour_residual needs same-size [N,H,W,3] batches, got {np.shape(sources)}, {np.shape(outputs)}"
        )
    scale = np.shape(sources)[1] / 128
    cs, co = chroma(sources), chroma(outputs)
    w = torch.as_tensor(np.asarray(regions, dtype=bool)).float()[:, None]
    n = w.sum(dim=(2, 3), keepdim=True).clamp(min=1)
    ms, mo = (cs * w).sum(dim=(2, 3), keepdim=True) / n, (co * w).sum(dim=(2, 3), keepdim=True) / n
    var = (((cs - ms) ** 2) * w).sum(dim=(2, 3), keepdim=True)
    slope = (((cs - ms) * (co - mo)) * w).sum(dim=(2, 3), keepdim=True) / var.clamp(min=1e-6)
    fitted = _blur(slope * (cs - ms) + mo, ARTEFACT_SIGMA * scale)
    co = _blur(co, ARTEFACT_SIGMA * scale)
    reach = max(1, int(round(ARTEFACT_REACH * scale)))
    padded = F.pad(fitted, (reach,) * 4, mode="replicate")
    h, wd = co.shape[-2:]
    best = torch.full_like(co[:, 0], float("inf"))
    for dy in range(2 * reach + 1):
        for dx in range(2 * reach + 1):
            best = torch.minimum(best, ((co - padded[..., dy : dy + h, dx : dx + wd]) ** 2).sum(dim=1))
    return best.sqrt().numpy()


def colour_artefact_shares(
    sources: np.ndarray,
    outputs: np.ndarray,
    regions: np.ndarray | None = None,
    *,
    threshold: float = ARTEFACT_CHROMA,
    min_blob: float = ARTEFACT_MIN_BLOB,
) -> np.ndarray:
    """Share of each output's face region covered by colour blotches: connected pixels (8-neighbours) whose
    residual chroma (:func:`colour_residual`) exceeds ``threshold``, in blobs of at least ``min_blob`` of the
    image. An output counts as having a visible colour artefact when its share is above 0.

    uint8 [N, H, W, 3] sources and outputs; ``regions`` bool (or 0-255 masks, > 127 counts) [N, H, W] face
    regions, default the ellipse inscribed in the central 70 % of the image (an aligned face). Pixels clipped
    to near white or near black in either image have no defined colour and are never counted. Returns [N].
    """
    from scipy.ndimage import label

    src, out = np.asarray(sources), np.asarray(outputs)
    if src.ndim != 4 or src.shape != out.shape or src.shape[-1] != 3:
        raise ValueError(f"need two same-size [N,H,W,3] batches, got {src.shape} and {out.shape}")
    n, h, w = src.shape[:3]
    if regions is None:
        regions = np.broadcast_to(default_face_region(h, w), (n, h, w))
    regions = np.asarray(regions)
    regions = regions > 127 if regions.dtype == np.uint8 else regions.astype(bool)
    if regions.shape != (n, h, w) or (regions.sum(axis=(1, 2)) < 3).any():
        raise ValueError(f"face regions must be [N,H,W] masks of at least 3 pixels each, got shape {regions.shape}")
    clipped = ((src >= 250) | (out >= 250) | (src <= 5) | (out <= 5)).any(-1)
    hot = (colour_residual(src, out, regions) > threshold) & regions & ~clipped
    smallest = max(1, int(round(min_blob * h * w)))
    shares = np.zeros(n)
    for i in range(n):
        blobs, count = label(hot[i], structure=np.ones((3, 3), bool))
        if count:
            sizes = np.bincount(blobs.ravel())[1:]
            shares[i] = sizes[sizes >= smallest].sum() / regions[i].sum()
    return shares


def colour_artefact_share(source: np.ndarray, output: np.ndarray, region: np.ndarray | None = None) -> float:
    """:func:`colour_artefact_shares` of one uint8 HxWx3 pair (``region``: HxW, default the central ellipse)."""
    regions = None if region is None else np.asarray(region)[None]
    return float(colour_artefact_shares(np.asarray(source)[None], np.asarray(output)[None], regions)[0])


def default_face_region(h: int, w: int) -> np.ndarray:
    """The ellipse inscribed in the central 70 % of an HxW image: where an aligned face's skin is."""
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx + 0.5 - w / 2) / (0.35 * w)) ** 2 + ((yy + 0.5 - h / 2) / (0.35 * h)) ** 2 <= 1


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when either side is constant."""
    from scipy.stats import rankdata

    rx, ry = rankdata(np.asarray(x, np.float64)), rankdata(np.asarray(y, np.float64))
    if len(rx) != len(ry) or len(rx) < 2:
        raise ValueError(f"spearman needs two equal-length arrays of at least 2 values, got {len(rx)} and {len(ry)}")
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def background_change(sources: np.ndarray, outputs: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Mean absolute change outside the face, in 0-255 levels, per image: uint8 [N,H,W,3] sources and outputs,
    0-255 face masks [N,H,W] (a pixel with mask < 128 is background). NaN for an image with no background pixel."""
    if sources.shape != outputs.shape or masks.shape != sources.shape[:3]:
        raise ValueError(
            f"background_change needs sources and outputs [N,H,W,3] and masks [N,H,W] alike, got "
            f"{sources.shape}, {outputs.shape} and {masks.shape}"
        )
    background = (masks < 128)[..., None]
    diff = np.abs(outputs.astype(np.float32) - sources.astype(np.float32)) * background
    pixels = background.sum(axis=(1, 2, 3)) * sources.shape[3]
    with np.errstate(invalid="ignore", divide="ignore"):
        return diff.sum(axis=(1, 2, 3)) / pixels
