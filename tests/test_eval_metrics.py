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
