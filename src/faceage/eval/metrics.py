"""Pure metric functions on NumPy arrays: Fréchet distance, KID, verification thresholds and rates.

Everything here is deterministic given its inputs (KID takes a seed) and knows nothing about models,
so each function is tested on synthetic arrays with known answers.
"""

from __future__ import annotations

import numpy as np

# The threshold dlib's authors use for "same person" with their 128-D face descriptor.
DLIB_SAME_PERSON_THRESHOLD = 0.6


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of ``features`` [N, D]; needs at least two rows."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"feature_stats needs an [N>=2, D] array, got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance_from_stats(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Squared Fréchet (2-Wasserstein) distance between the Gaussians N(mu1, cov1) and N(mu2, cov2).

    ``Tr(sqrt(cov1 cov2))`` is computed as the trace of ``sqrt(s1 cov2 s1)`` with ``s1 = sqrt(cov1)``, a
    symmetric PSD matrix, so the result is real and stable even for singular covariances (few samples).
    """
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape} vs {mu2.shape}")
    s1 = _psd_sqrt(cov1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(s1 @ cov2 @ s1), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * cross, 0.0))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Squared Fréchet distance between Gaussians fitted to feature sets ``a`` [N, D] and ``b`` [M, D].

    With fewer samples than dimensions (2048-D Inception features of a few hundred faces) it avoids the
    D x D matrix square root: writing ``cov_i = Y_i^T Y_i`` with ``Y_i`` the centred samples divided by
    ``sqrt(n_i - 1)``, ``Tr(sqrt(cov1 cov2))`` is the nuclear norm of the small matrix ``Y1 Y2^T``.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if min(len(a), len(b)) >= a.shape[-1]:
        return frechet_distance_from_stats(*feature_stats(a), *feature_stats(b))
    for x in (a, b):
        if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] != a.shape[1]:
            raise ValueError(f"frechet_distance needs two [N>=2, D] arrays with the same D, got {a.shape}, {b.shape}")
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    y1 = (a - mu1) / np.sqrt(len(a) - 1)
    y2 = (b - mu2) / np.sqrt(len(b) - 1)
    cross = np.linalg.svd(y1 @ y2.T, compute_uv=False).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + (y1 * y1).sum() + (y2 * y2).sum() - 2.0 * cross, 0.0))


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: unbiased MMD² with the cubic polynomial kernel, mean and std over random subsets.

    Follows Bińkowski et al. 2018 (and the common reference implementations): ``k(x, y) = (x·y / D + 1)³``,
    subsets of ``min(subset_size, N, M)`` rows drawn without replacement from each set.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"KID needs two [N, D] arrays with the same D, got {a.shape} and {b.shape}")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    d = a.shape[1]
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))


def impostor_distances(embeddings: np.ndarray, identities: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distances of all different-person pairs among ``embeddings`` [N, D].

    Without ``identities`` every row is taken to be a different person (UTKFace has no identity labels,
    so the rare same-person pair counts as an impostor, which makes a calibrated threshold stricter).
    """
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or len(e) < 2:
        raise ValueError(f"need an [N>=2, D] array of embeddings, got shape {e.shape}")
    sq = (e * e).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (e @ e.T)
    i, j = np.triu_indices(len(e), k=1)
    dist = np.sqrt(np.clip(d2[i, j], 0.0, None))
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
