"""Exact Gaussian mixtures (polydiff.core.analytic) against brute force: explicit multivariate normal
densities, autograd scores, Tweedie's formula, and the probability-flow ODE for one Gaussian."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from polydiff.core import paths as P
from polydiff.core.analytic import GaussianMixture, ring_mixture

F64 = torch.float64
MEANS = torch.tensor([[1.0, -0.5, 0.0], [-1.5, 1.0, 2.0], [0.0, 2.0, -1.0]], dtype=F64)
WEIGHTS = torch.tensor([0.2, 0.5, 0.3], dtype=F64)


def spd(seed: int, d: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=F64)
    return a @ a.T / d + 0.05 * torch.eye(d, dtype=F64)


FULL = torch.stack([spd(1), spd(2), spd(3)])
COVS = {"full": FULL, "diag": torch.tensor([[0.3, 0.2, 0.5], [0.4, 0.1, 0.2], [1.0, 0.5, 0.05]], dtype=F64),
        "per_component": torch.tensor([0.3, 0.6, 0.1], dtype=F64), "scalar": 0.4}


def dense(covs) -> torch.Tensor:
    """The (K, d, d) covariances for any accepted covs argument."""
    c = torch.as_tensor(covs, dtype=F64)
    if c.dim() == 3:
        return c
    if c.dim() == 0:
        c = c.expand(3)
    if c.dim() == 1:
        c = c[:, None].expand(3, 3)
    return torch.diag_embed(c)


def brute_log_prob(x: torch.Tensor, covs, alpha: float, sigma: float) -> torch.Tensor:
    comps = [MultivariateNormal(alpha * MEANS[k], alpha ** 2 * dense(covs)[k] + sigma ** 2 * torch.eye(3, dtype=F64))
             for k in range(3)]
    return torch.logsumexp(torch.stack([torch.log(WEIGHTS[k]) + comps[k].log_prob(x) for k in range(3)], 1), 1)


def points(n: int = 16, seed: int = 0) -> torch.Tensor:
    return 2.0 * torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("kind", list(COVS))
@pytest.mark.parametrize("alpha,sigma", [(1.0, 0.0), (0.8, 0.6), (0.1, 1.5), (0.0, 1.0), (1.0, 3.0)])
def test_log_prob_score_denoise_eps_against_brute_force(kind, alpha, sigma):
    gm = GaussianMixture(MEANS, COVS[kind], WEIGHTS)
    x = points().requires_grad_(True)
    ref = brute_log_prob(x, COVS[kind], alpha, sigma)
    score_ref, = torch.autograd.grad(ref.sum(), x)
    x = x.detach()
    assert torch.allclose(gm.log_prob(x, alpha, sigma), ref.detach(), rtol=1e-11, atol=1e-11)
    score = gm.score(x, alpha, sigma)
    assert torch.allclose(score, score_ref, rtol=1e-9, atol=1e-9)
    if sigma > 0:   # eps = -sigma score, and Tweedie: alpha D = x + sigma^2 score
        assert torch.allclose(gm.eps(x, alpha, sigma), -sigma * score_ref, rtol=1e-9, atol=1e-9)
        if alpha > 0:
            tweedie = (x + sigma ** 2 * score_ref) / alpha
            assert torch.allclose(gm.denoise(x, alpha, sigma), tweedie, rtol=1e-9, atol=1e-9)
    resp = gm.responsibilities(x, alpha, sigma)
    assert torch.allclose(resp.sum(1), torch.ones(16, dtype=F64), atol=1e-14)


def test_denoise_at_zero_snr_is_the_data_mean():
    gm = GaussianMixture(MEANS, FULL, WEIGHTS)
    assert torch.allclose(gm.denoise(points(), 0.0, 1.0), (WEIGHTS[:, None] * MEANS).sum(0).expand(16, 3), atol=1e-15)


def test_per_sample_coefficients():
    gm = GaussianMixture(MEANS, FULL, WEIGHTS)
    x = points(4)
    a, s = torch.tensor([0.9, 0.5, 0.2, 1.0], dtype=F64), torch.tensor([0.3, 0.8, 1.2, 0.1], dtype=F64)
    batched = gm.denoise(x, a, s)
    for i in range(4):
        assert torch.allclose(batched[i], gm.denoise(x[i:i + 1], float(a[i]), float(s[i]))[0], rtol=1e-14)
    with pytest.raises(ValueError, match="shape"):
        gm.denoise(x, a[:3], s[:3])


def test_full_covariance_equals_diagonal():
    """Diagonal covariances given as (K, d), (K,) or a scalar and as (K, d, d) are the same model."""
    x = points()
    for kind in ("diag", "per_component", "scalar"):
        a = GaussianMixture(MEANS, COVS[kind], WEIGHTS)
        b = GaussianMixture(MEANS, dense(COVS[kind]), WEIGHTS)
        assert b.rot is not None and a.rot is None
        for fn in ("denoise", "eps", "score", "log_prob"):
            assert torch.allclose(getattr(a, fn)(x, 0.7, 0.5), getattr(b, fn)(x, 0.7, 0.5), rtol=1e-12, atol=1e-12)


def test_dtype_round_trip():
    gm = GaussianMixture(MEANS, FULL, WEIGHTS)
    x32 = points().float()
    for fn in ("denoise", "eps", "score", "log_prob"):
        out = getattr(gm, fn)(x32, 0.7, 0.5)
        assert out.dtype == torch.float32
        assert torch.allclose(out.double(), getattr(gm, fn)(x32.double(), 0.7, 0.5), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("path", [P.VP(), P.Flow(), P.EDM(), P.VP("cosine")], ids=repr)
def test_ode_map_solves_the_probability_flow_ode(path):
    """d/dt ode_map(x, s, t) = alpha'(t) D + sigma'(t) eps at x_t = ode_map(x, s, t), and it composes."""
    gm = GaussianMixture(MEANS[:1], FULL[:1])
    x = points(8)
    s = 0.9
    for t in (0.2, 0.5, 0.8):
        h = 1e-5
        fd = (-gm.ode_map(x, s, t + 2 * h, path) + 8 * gm.ode_map(x, s, t + h, path)
              - 8 * gm.ode_map(x, s, t - h, path) + gm.ode_map(x, s, t - 2 * h, path)) / (12 * h)
        xt = gm.ode_map(x, s, t, path)
        tt = torch.tensor(t, dtype=F64)
        a, sg = path.alpha(tt), path.sigma(tt)
        drift = path.d_alpha(tt) * gm.denoise(xt, a, sg) + path.d_sigma(tt) * gm.eps(xt, a, sg)
        assert torch.allclose(fd, drift, rtol=1e-7, atol=1e-8)
        via = gm.ode_map(gm.ode_map(x, s, 0.6, path), 0.6, t, path)
        assert torch.allclose(via, xt, rtol=1e-12, atol=1e-12)
    assert torch.allclose(gm.ode_map(x, s, s, path), x, rtol=0, atol=1e-14)


def test_ode_map_pushes_the_marginal_forward():
    """The ODE map of exact samples of x_s has the exact covariance of x_t (here t = 0, the data)."""
    gm = GaussianMixture(MEANS[:1], FULL[:1])
    path = P.VP()
    xs = torch.tensor(0.7, dtype=F64)
    cov_s = path.alpha(xs) ** 2 * FULL[0] + path.sigma(xs) ** 2 * torch.eye(3, dtype=F64)
    # whitened inputs, so that the map's linear part can be read off exactly
    L = torch.linalg.cholesky(cov_s)
    x = path.alpha(xs) * MEANS[0] + torch.eye(3, dtype=F64) @ L.T
    y = gm.ode_map(x, 0.7, 0.0, path) - MEANS[0]
    assert torch.allclose(y.T @ y, FULL[0], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="single Gaussian"):
        GaussianMixture(MEANS, FULL, WEIGHTS).ode_map(x, 0.7, 0.0, path)


def test_sample_mean_and_covariance():
    gm = GaussianMixture(MEANS, FULL, WEIGHTS)
    n = 200_000
    x = gm.sample(n, torch.Generator().manual_seed(5))
    mean = (WEIGHTS[:, None] * MEANS).sum(0)
    cov = (WEIGHTS[:, None, None] * (FULL + MEANS[:, :, None] * MEANS[:, None, :])).sum(0) - torch.outer(mean, mean)
    se = torch.sqrt(torch.diagonal(cov) / n)
    assert ((x.mean(0) - mean).abs() < 4.5 * se).all()
    emp = torch.cov(x.T)
    se_cov = torch.sqrt((torch.diagonal(cov)[:, None] * torch.diagonal(cov)[None, :] + cov ** 2) / n)
    assert ((emp - cov).abs() < 5 * se_cov).all(), (emp - cov).abs() / se_cov
    # component frequencies: the sample's nearest components follow the weights
    path = P.Flow()
    xt = gm.sample_marginal(n, 0.4, path, torch.Generator().manual_seed(6))
    tt = torch.tensor(0.4, dtype=F64)
    ref_cov = (WEIGHTS[:, None, None] * (path.alpha(tt) ** 2 * FULL + path.sigma(tt) ** 2 * torch.eye(3, dtype=F64)
                                         + (path.alpha(tt) ** 2) * MEANS[:, :, None] * MEANS[:, None, :])).sum(0)
    ref_cov -= path.alpha(tt) ** 2 * torch.outer(mean, mean)
    assert ((xt.mean(0) - path.alpha(tt) * mean).abs() < 4.5 * torch.sqrt(torch.diagonal(ref_cov) / n)).all()
    assert torch.allclose(torch.cov(xt.T), ref_cov, atol=0.03)
    assert torch.allclose(gm.responsibilities(xt, path.alpha(tt), path.sigma(tt)).mean(0), WEIGHTS, atol=0.005)


def test_denoiser_and_marginal_on_a_path():
    gm = GaussianMixture(MEANS, FULL, WEIGHTS)
    path = P.VP("cosine")
    x = points(5)
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=F64)
    D = gm.denoiser(path)(x, t)
    assert torch.allclose(D, gm.denoise(x, path.alpha(t), path.sigma(t)), rtol=1e-15)
    assert torch.allclose(gm.marginal_log_prob(x, 0.3, path),
                          brute_log_prob(x, FULL, float(path.alpha(torch.tensor(0.3, dtype=F64))),
                                         float(path.sigma(torch.tensor(0.3, dtype=F64)))), rtol=1e-11)


def test_ring_mixture_and_errors():
    gm = ring_mixture(dim=4, k=6, radius=3.0, std=0.2, seed=1)
    assert gm.means.shape == (6, 4) and torch.allclose(gm.means[:, :2].norm(dim=1), torch.full((6,), 3.0, dtype=F64))
    assert math.isclose(float(gm.weights.sum()), 1.0, rel_tol=1e-15)
    assert torch.allclose(gm.eig, torch.full((6, 4), 0.04, dtype=F64))
    with pytest.raises(ValueError):
        ring_mixture(dim=1)
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(torch.zeros(3))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(MEANS, 1.0, torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="covs shape"):
        GaussianMixture(MEANS, torch.ones(2, 3))
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixture(MEANS, torch.randn(3, 3, 3, generator=torch.Generator().manual_seed(0), dtype=F64))
    with pytest.raises(ValueError, match="x must be"):
        GaussianMixture(MEANS).denoise(torch.zeros(4, 2), 1.0, 1.0)
