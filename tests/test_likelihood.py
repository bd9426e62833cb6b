"""Probability-flow likelihoods against exact Gaussian-mixture log-densities."""
import math

import pytest
import torch

from polydiff.core import analytic, paths
from polydiff.core.likelihood import SIGMA_EPS, nll

torch.set_num_threads(2)

RING = analytic.ring_mixture(2)
X_RING = RING.sample(500, torch.Generator().manual_seed(0))


def _t_eps(path):
    return float(path.t_from_sigma_ve(SIGMA_EPS))


def _prior_gap(gm, path, latent):
    """log p_1(x_1) - log N(x_1; 0, (alpha(1)^2 + sigma(1)^2) I): the per-sample error of the prior."""
    one = torch.tensor(1.0, dtype=torch.float64)
    var = float(path.alpha(one) ** 2 + path.sigma(one) ** 2)
    d = latent.shape[1]
    log_prior = -0.5 * (latent ** 2).sum(1) / var - 0.5 * d * math.log(2 * math.pi * var)
    return gm.marginal_log_prob(latent, 1.0, path) - log_prior


@pytest.fixture(scope="module")
def flow_exact():
    path = paths.Flow()
    return path, nll(RING.denoiser(path), X_RING, path=path)


def test_flow_ring_exact_divergence(flow_exact):
    path, res = flow_exact
    exact = -RING.marginal_log_prob(X_RING, _t_eps(path), path)
    assert abs(float(res.nats.mean() - exact.mean())) < 0.01          # the requirement
    assert float((res.nats - exact).abs().max()) < 0.01                 # every sample, not just the mean
    assert float(_prior_gap(RING, path, res.latent).abs().max()) < 1e-10  # alpha(1) = 0: exact prior
    assert torch.equal(res.stderr, torch.zeros(500, dtype=torch.float64))
    assert 50 < res.nfe < 300


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_vp_ring_exact_divergence(schedule):
    path = paths.VP(schedule)
    res = nll(RING.denoiser(path), X_RING, path=path)
    exact = -RING.marginal_log_prob(X_RING, _t_eps(path), path)
    # the N(0, I) prior is exact only where alpha(1) = 0; its per-sample error is known exactly here
    gap = _prior_gap(RING, path, res.latent)
    tol = 0.01 + float(gap.mean().abs())
    assert abs(float(res.nats.mean() - exact.mean())) < tol
    assert float((res.nats - gap - exact).abs().max()) < 0.01
    if schedule == "linear":
        assert 1e-5 < float(gap.mean()) < 1e-3  # alpha(1) = 0.0066: small but visible


def test_hutchinson_unbiased_with_stated_error(flow_exact):
    path, res = flow_exact
    h = nll(RING.denoiser(path), X_RING, path=path, divergence="hutchinson", probes=4,
            generator=torch.Generator().manual_seed(1))
    diff = h.nats - res.nats
    se = float(diff.std()) / math.sqrt(diff.numel())
    assert abs(float(diff.mean())) < 3 * se
    # the reported per-sample error matches the actual one: E[stderr^2] = E[(nats - exact)^2]
    ratio = float((h.stderr ** 2).mean() / (diff ** 2).mean())
    assert 0.7 < ratio < 1.4


def test_hutchinson_probes_come_from_the_generator():
    path, x = paths.Flow(), X_RING[:16]
    run = lambda seed, probes=2: nll(RING.denoiser(path), x, path=path, divergence="hutchinson",  # noqa: E731
                                     probes=probes, generator=torch.Generator().manual_seed(seed))
    first = run(0)
    assert torch.equal(first.nats, run(0).nats) and not torch.equal(first.nats, run(1).nats)
    assert bool(torch.isfinite(first.stderr).all()) and bool(torch.isnan(run(0, probes=1).stderr).all())


def test_single_gaussian_full_covariance_closed_form():
    g = torch.Generator().manual_seed(3)
    A = torch.randn(5, 5, generator=g, dtype=torch.float64)
    cov = A @ A.T / 5 + 0.1 * torch.eye(5, dtype=torch.float64)
    mu = torch.randn(1, 5, generator=g, dtype=torch.float64)
    gm = analytic.GaussianMixture(mu, cov[None])
    path = paths.VP("cosine")
    x = gm.sample(64, g)
    t_eps = 0.01
    res = nll(gm.denoiser(path), x, path=path, t_eps=t_eps, rtol=1e-7, atol=1e-7)
    assert res.nfe < 150
    t = torch.tensor(t_eps, dtype=torch.float64)
    a, s = path.alpha(t), path.sigma(t)
    closed = torch.distributions.MultivariateNormal(a * mu[0], a * a * cov + s * s * torch.eye(5, dtype=torch.float64))
    torch.testing.assert_close(res.nats, -closed.log_prob(x), rtol=0, atol=1e-6)
    # bits per dimension is exactly nats / (d ln 2)
    assert torch.equal(res.bits_per_dim, res.nats / (5 * math.log(2)))


def test_any_trailing_shape():
    path = paths.Flow()
    x = X_RING[:32]
    D = RING.denoiser(path)
    flat = nll(D, x, path=path)
    shaped = nll(lambda y, t, scale: D(y.reshape(32, 2) / scale, t).reshape(y.shape) * scale,
                 x.reshape(32, 1, 2), path=path, cond={"scale": 1.0})
    torch.testing.assert_close(shaped.nats, flat.nats, rtol=0, atol=1e-12)
    assert shaped.latent.shape == (32, 1, 2)
    torch.testing.assert_close(shaped.bits_per_dim, flat.nats / (2 * math.log(2)), rtol=1e-15, atol=0)


def test_bad_input():
    path = paths.Flow()
    D = RING.denoiser(path)
    x = X_RING[:4].clone()
    with pytest.raises(ValueError, match="valid: \\('exact', 'hutchinson'\\)"):
        nll(D, x, path=path, divergence="trace")
    with pytest.raises(ValueError, match="probes"):
        nll(D, x, path=path, divergence="hutchinson", probes=0)
    with pytest.raises(ValueError, match="t_eps"):
        nll(D, x, path=path, t_eps=0.0)  # sigma(0) = 0 on the flow path
    with pytest.raises(ValueError, match="shape \\(B, d"):
        nll(D, x[0], path=path)
    x[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        nll(D, x, path=path)
    with pytest.raises(ValueError, match="denoiser returned shape"):
        nll(lambda y, t: y[:, :1], X_RING[:4], path=path)
