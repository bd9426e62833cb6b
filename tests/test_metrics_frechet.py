"""The core's Fréchet distances: from features and from precomputed statistics, against closed forms."""
import numpy as np
import pytest
import torch

from polydiff.core.metrics import frechet_distance, gaussian_frechet_distance


def test_gaussian_frechet_distance_closed_forms():
    # commuting (diagonal) covariances: |m|^2 + sum (sqrt a - sqrt b)^2
    ca, cb = np.diag([4.0, 1.0, 9.0]), np.diag([1.0, 1.0, 4.0])
    mu_a, mu_b = np.array([1.0, 0.0, 2.0]), np.zeros(3)
    assert gaussian_frechet_distance(mu_a, ca, mu_b, cb) == pytest.approx(5.0 + 1.0 + 0.0 + 1.0, rel=1e-12)
    # non-commuting 2x2: tr sqrt(A^1/2 B A^1/2) computed from its eigenvalues by hand
    A = np.array([[2.0, 0.5], [0.5, 1.0]])
    B = np.array([[1.0, -0.3], [-0.3, 3.0]])
    w, q = np.linalg.eigh(A)
    ra = q @ np.diag(np.sqrt(w)) @ q.T
    M = ra @ B @ ra
    tr_m, det_m = np.trace(M), np.linalg.det(M)
    trace_sqrt = np.sqrt(tr_m + 2.0 * np.sqrt(det_m))          # tr sqrt(M) for a 2x2 SPD M
    exact = np.trace(A) + np.trace(B) - 2.0 * trace_sqrt
    assert gaussian_frechet_distance(np.zeros(2), A, np.zeros(2), B) == pytest.approx(exact, rel=1e-12)
    assert gaussian_frechet_distance(np.zeros(2), A, np.zeros(2), A) == pytest.approx(0.0, abs=1e-12)


def test_feature_and_statistics_routes_agree():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64)
    b = torch.randn(150, 5, generator=g, dtype=torch.float64) + 0.5
    stats = [(x.mean(0).numpy(), np.cov(x.numpy(), rowvar=False)) for x in (a, b)]
    assert frechet_distance(a, b) == pytest.approx(gaussian_frechet_distance(*stats[0], *stats[1]), rel=1e-9)


def test_gaussian_frechet_distance_bad_input():
    with pytest.raises(ValueError, match="shape"):
        gaussian_frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        gaussian_frechet_distance(np.array([np.nan, 0.0]), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="feature dimensions differ"):
        frechet_distance(torch.zeros(3, 2), torch.zeros(3, 4))
