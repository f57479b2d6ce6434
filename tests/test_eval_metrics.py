"""The pure metric functions of faceage.eval.metrics, on synthetic arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from faceage.eval import metrics as M


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    # For diagonal covariances the distance is |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = 1 + 0 + 4 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert M.frechet_distance_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)


def test_frechet_distance_of_samples():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 8))
    b = rng.normal(size=(4000, 8)) + 0.5
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert M.frechet_distance(a, b) == pytest.approx(8 * 0.25, rel=0.1)
    assert M.frechet_distance(a, b) == pytest.approx(M.frechet_distance(b, a), rel=1e-6)


def test_frechet_distance_few_samples_shortcut_equals_the_matrix_square_root():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(30, 64)) @ rng.normal(size=(64, 64))
    b = rng.normal(size=(20, 64)) + 0.3
    exact = M.frechet_distance_from_stats(*M.feature_stats(a), *M.feature_stats(b))
    assert M.frechet_distance(a, b) == pytest.approx(exact, rel=1e-6)


def test_frechet_distance_with_singular_covariance_is_finite():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 128)), rng.normal(size=(7, 128))  # fewer samples than dimensions
    d = M.frechet_distance(a, b)
    assert np.isfinite(d) and d > 0
    with pytest.raises(ValueError, match="N>=2"):
        M.frechet_distance(a[:1], b)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    same, _ = M.kernel_inception_distance(a, b, subsets=20, subset_size=200)
    shifted, _ = M.kernel_inception_distance(a, b + 1.0, subsets=20, subset_size=200)
    assert abs(same) < 0.05 < shifted


def test_impostor_distances_are_all_pairs_minus_same_identity():
    rng = np.random.default_rng(3)
    e = rng.normal(size=(10, 4))
    d = M.impostor_distances(e)
    assert len(d) == 45
    np.testing.assert_allclose(d, pdist(e), rtol=1e-9)
    ids = np.array(["a", "a", "b", "b", "b", "c", "d", "e", "f", "g"])
    assert len(M.impostor_distances(e, ids)) == 45 - 1 - 3


def test_calibrated_threshold_accepts_at_most_far_of_impostors():
    d = np.random.default_rng(4).uniform(0, 1, size=100_000)
    t, achieved = M.calibrate_threshold(d, far=1e-3)
    assert achieved <= 1e-3
    assert achieved > 0.9e-3
    assert t == pytest.approx(1e-3, abs=3e-4)
    assert M.verification_rate(d, t) == pytest.approx(achieved)
    with pytest.raises(ValueError, match="at least 1000 impostor pairs"):
        M.calibrate_threshold(d[:999], far=1e-3)


def test_verification_rate_counts_strictly_below():
    assert M.verification_rate(np.array([0.1, 0.6, 0.7, 0.59]), 0.6) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        M.verification_rate(np.array([]), 0.6)


def test_max_chroma_is_zero_for_grayscale_and_finds_one_coloured_pixel():
    from faceage.eval.metrics import max_chroma

    gray = np.repeat(np.arange(64, dtype=np.uint8).reshape(8, 8, 1), 3, axis=2)
    assert max_chroma(gray) == 0
    gray[3, 4] = (120, 100, 130)
    assert max_chroma(gray) == 30


def test_highpass_correlation_keeps_detail_and_not_a_soft_upscale():
    from PIL import Image

    from faceage.eval.metrics import highpass_correlation

    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    assert highpass_correlation(sharp, sharp) == pytest.approx(1.0)
    soft = np.asarray(Image.fromarray(sharp).resize((32, 32), Image.BILINEAR).resize((128, 128), Image.BICUBIC))
    assert highpass_correlation(sharp, soft) < 0.5
    brighter = np.clip(sharp.astype(int) + 10, 0, 255).astype(np.uint8)  # a colour change keeps the detail
    assert highpass_correlation(sharp, brighter) > 0.95


def test_spearman_ranks_ties_and_constants():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, 50), rng.normal(size=50)
    assert M.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert M.spearman([1, 2, 3], [10, 20, 35]) == pytest.approx(1.0)
    assert M.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(M.spearman([1, 1, 1], [1, 2, 3]))


@pytest.fixture(scope="module")
def face_chip(astronaut):
    from conftest import ASTRONAUT_BOX, photo_chip

    return photo_chip(astronaut, ASTRONAUT_BOX, 128)


def _blotch(image: np.ndarray, colour: tuple[int, int, int], at: tuple[int, int], side: int = 10) -> np.ndarray:
    """``image`` with a soft-edged patch of ``colour`` blended over the face (what a GAN's blotch looks like)."""
    out = image.astype(np.float32)
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    w = np.clip(1.5 - np.hypot(yy - at[0], xx - at[1]) / (side / 2), 0, 1)[..., None] * 0.7
    return (out * (1 - w) + np.array(colour, np.float32) * w).round().astype(np.uint8)


def _chroma_noise(image: np.ndarray, std: float, blur: float) -> np.ndarray:
    """``image`` plus seeded colour noise of ``std`` levels (spatially smoothed by ``blur`` px), brightness kept."""
    from scipy.ndimage import gaussian_filter

    n = np.random.default_rng(0).normal(0, 1, (*image.shape[:2], 2))
    if blur:
        n = np.stack([gaussian_filter(n[..., c], blur) for c in range(2)], axis=-1)
    n *= std / n.std()
    noisy = image.astype(float) + np.stack([n[..., 0], -n[..., 0] - n[..., 1], n[..., 1]], axis=-1)
    return noisy.clip(0, 255).astype(np.uint8)


def test_colour_artefacts_flag_blotches_and_colour_noise_not_plain_edits(face_chip):
    from faceage.eval.runner import brightness_contrast

    assert M.colour_artefact_share(face_chip, face_chip) == 0.0
    edits = [
        brightness_contrast(face_chip),
        np.clip(face_chip.astype(int) - 20, 0, 255).astype(np.uint8),  # darker
        np.clip((face_chip.astype(float) - 128) * 0.8 + 128, 0, 255).astype(np.uint8),  # flatter
        (face_chip.astype(float) @ np.diag([0.95, 1.0, 1.08])).clip(0, 255).astype(np.uint8),  # cooler white balance
        np.repeat(face_chip.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8),  # made grey
    ]
    for edit in edits:
        assert M.colour_artefact_share(face_chip, edit) == 0.0
    green = _blotch(face_chip, (60, 170, 60), (70, 50))
    purple = _blotch(face_chip, (170, 60, 180), (60, 80), side=12)
    assert M.colour_artefact_share(face_chip, green) > 0.005
    assert M.colour_artefact_share(face_chip, purple) > 0.005
    assert M.colour_artefact_share(face_chip, _chroma_noise(face_chip, 20, blur=1.5)) > 0.1  # blotchy colour noise
    assert M.colour_artefact_share(face_chip, _chroma_noise(face_chip, 8, blur=0)) == 0.0  # fine sensor grain
    shares = M.colour_artefact_shares(np.stack([face_chip] * 3), np.stack([face_chip, green, edits[0]]))
    assert shares[0] == shares[2] == 0 and shares[1] > 0
    ring = np.zeros((128, 128), bool)
    ring[:10] = True  # a face region away from the blotch
    assert M.colour_artefact_share(face_chip, green, ring) == 0.0
    with pytest.raises(ValueError, match="same-size"):
        M.colour_artefact_shares(face_chip[None], face_chip[None, :64])


def test_weighted_frechet_distance_reweights_a_mixture():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 3)), rng.normal(size=(300, 3)) + 1.0
    mu, cov = M.weighted_feature_stats(a, np.ones(400))
    np.testing.assert_allclose(mu, a.mean(0))
    np.testing.assert_allclose(cov, np.cov(a.T))
    assert M.weighted_frechet_distance(a, b) == pytest.approx(
        M.frechet_distance_from_stats(*M.feature_stats(a), *M.feature_stats(b))
    )
    # Weighting a 50/50 mix of the two to all-b makes it look like b.
    mix = np.concatenate([a, b])
    only_b = np.r_[np.zeros(400), np.ones(300)]
    assert M.weighted_frechet_distance(mix, b, only_b) == pytest.approx(0.0, abs=1e-9)
    assert M.weighted_frechet_distance(mix, b) > 0.2


def test_background_change_counts_only_pixels_outside_the_mask():
    src = np.full((2, 8, 8, 3), 100, np.uint8)
    out = src.copy()
    out[0, :4] = 110  # top half of image 0 moves by 10 levels
    out[1, 4:] = 200  # bottom half of image 1 moves by 100 levels, all inside its mask
    masks = np.zeros((2, 8, 8), np.uint8)
    masks[:, 4:] = 255  # the face is the bottom half
    assert M.background_change(src, out, masks) == pytest.approx([10.0, 0.0])
    with pytest.raises(ValueError, match="masks"):
        M.background_change(src, out, masks[:, :4])
