"""Latent posterior samplers (PSLD, ReSample) through a linear autoencoder, against the exact posterior.

Latent prior z ~ N(m, diag(v)) in R^4 (GaussianMixture, one component, exact denoiser on VP); decoder
x = W z + b onto 1x4x4 images, encoder W^+ (x - b) (so encode(decode(z)) = z); y = A x + sigma_y n with
A = random inpainting. The pixel posterior is W N(m_z, P_z) + b with (m_z, P_z) the Kalman update of
the latent prior by the matrix A W, so the exact posterior mean of the images is known. We score
rel = |mean(samples) - m| / |prior mean - m| (pixel space): a sampler that ignores y scores ~1
(checked below); PSLD and ReSample, like DPS, are approximate methods, so the bound is loose (0.35, the
core's bound for DPS) but still far from ~1. Statistical error at n = 400: rel ~ 0.03. Only 3 pixels are
observed, so A W has rank 3 < 4 and the prior matters. Measured (seed 0): psld 0.16, dps 0.16,
resample 0.07 (0.37 with pixel-space data consistency only, ``latent_below=0``), prior 0.98.
Covariances are not checked: DPS-style steps of fixed length leave the samples 1.7x too spread
(relative Frobenius error of the covariance 1.8 for psld and dps, 0.55 for resample).
"""
from __future__ import annotations

import pytest
import torch

from polydiff.core.analytic import GaussianMixture
from polydiff.core.inverse import MaskOperator, methods
from polydiff.core.paths import VP
from polydiff.domains.images.latent import (LatentOperator, latent_methods, latent_posterior_sample,
                                            stochastic_resample)
from polydiff.domains.images.operators import make_operator

torch.set_num_threads(1)
DT = torch.float64


class LinearAE:
    def __init__(self, W, b):
        self.W, self.b = W, b
        self.P = torch.linalg.pinv(W)

    def decode(self, z):
        return (z @ self.W.T + self.b).reshape(-1, 1, 4, 4)

    def encode(self, x):
        return (x.flatten(1) - self.b) @ self.P.T


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    k, sy, n = 4, 0.1, 400
    m = torch.tensor([[0.5, -0.5, 0.3, 0.0]], dtype=DT)
    v = torch.tensor([[0.6, 0.4, 0.3, 0.2]], dtype=DT)
    prior = GaussianMixture(m, v)
    W = 0.5 * torch.randn(16, k, generator=g, dtype=DT)
    b = 0.1 * torch.randn(16, generator=g, dtype=DT)
    ae = LinearAE(W, b)
    op = make_operator("inpaint-random", (1, 4, 4), p_missing=0.8, seed=14)   # 3 pixels: A W has rank 3 < 4
    M = op.dense()
    z_true = prior.sample(1, g)
    y = op.A(ae.decode(z_true)) + sy * torch.randn(1, op.d_y, generator=g, dtype=DT)
    post = prior.posterior(M @ W, y[0] - M @ b, sy)
    m_x = post.means[0] @ W.T + b
    prior_x = m[0] @ W.T + b
    path = VP()
    return dict(D=prior.denoiser(path), y=y.expand(n, -1), op=op, ae=ae, sy=sy, m_x=m_x, prior_x=prior_x,
                path=path, post=post, k=k)


def _rel(pb, x):
    return float((x.flatten(1).mean(0) - pb["m_x"]).norm() / (pb["prior_x"] - pb["m_x"]).norm())


def _run(pb, method, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    steps = kw.pop("steps", 50)
    return latent_posterior_sample(pb["D"], pb["y"], pb["op"], pb["ae"], latent_shape=(pb["k"],), path=pb["path"],
                                   method=method, steps=steps, sigma_y=pb["sy"], generator=g, **kw)


@pytest.mark.parametrize("method,kw", [("psld", {}), ("resample", {}), ("dps", {})])
def test_latent_methods_near_exact_posterior_mean(problem, method, kw):
    x = _run(problem, method, **kw)
    assert x.shape == (400, 1, 4, 4) and x.dtype == DT
    assert _rel(problem, x) < 0.35, (method, _rel(problem, x))


def test_ignoring_y_fails_the_check(problem):
    # PSLD with both guidance terms off is the unconditional prior: the check above must reject it
    x = _run(problem, "psld", omega=0.0, gamma=0.0)
    assert _rel(problem, x) > 0.7


def test_resample_is_consistent_with_measurement(problem):
    # noiseless measurement: the last step's latent-space data consistency (L-BFGS) makes the output exact
    pb = problem
    op = pb["op"]
    z = pb["post"].sample(1, torch.Generator().manual_seed(3))
    y = op.A(pb["ae"].decode(z)).expand(8, -1)
    x = latent_posterior_sample(pb["D"], y, op, pb["ae"], latent_shape=(4,), path=pb["path"], method="resample",
                                steps=30, sigma_y=0.0, generator=torch.Generator().manual_seed(0))
    assert float((op.A(x) - y).abs().max()) < 1e-5


def test_stochastic_resample_is_the_gaussian_product():
    g = torch.Generator().manual_seed(0)
    z0y = torch.full((40000, 2), 1.5, dtype=DT)
    zp = torch.full((40000, 2), -0.5, dtype=DT)
    a, s, var = 0.8, 0.6, 0.2
    out = stochastic_resample(z0y, zp, a, s, var, g)
    # N(a z0y, s^2) N(zp, var): precision 1/s^2 + 1/var, mean (a z0y / s^2 + zp / var) / precision
    prec = 1 / s ** 2 + 1 / var
    mean = (a * 1.5 / s ** 2 - 0.5 / var) / prec
    assert abs(float(out.mean()) - mean) < 0.01
    assert abs(float(out.var()) - 1 / prec) < 0.005


def test_interface():
    assert set(latent_methods()) == {"psld", "resample"}
    assert "psld" not in methods() and "resample" not in methods()     # the core registry is untouched
    assert latent_methods()["psld"].cost(10) == {"nfe": 10, "backward": 10}
    assert latent_methods()["resample"].options()["gamma"] == 40.0
    ae = LinearAE(torch.eye(16, 4, dtype=DT), torch.zeros(16, dtype=DT))
    op = MaskOperator(torch.ones(1, 4, 4, dtype=torch.bool))
    lop = LatentOperator(op, ae, (4,))
    assert lop.level == "forward" and lop.x_shape == (4,) and lop.y_shape == (16,)
    D = lambda z, t: 0.5 * z
    y = torch.zeros(2, 16, dtype=DT)
    kw = dict(latent_shape=(4,), path="vp", steps=2, sigma_y=0.1)
    with pytest.raises(ValueError, match="valid: \\['psld', 'resample'\\]"):
        latent_posterior_sample(D, y, op, ae, method="ddrmm", **kw)
    with pytest.raises(ValueError, match="forward-only"):
        latent_posterior_sample(D, y, op, ae, method="ddrm", **kw)
    with pytest.raises(ValueError, match="no option"):
        latent_posterior_sample(D, y, op, ae, method="psld", zeta=1.0, **kw)
    with pytest.raises(ValueError, match="encode"):
        LatentOperator(op, object(), (4,))
    with pytest.raises(ValueError, match="decoder returned"):
        LatentOperator(make_operator("colorize", (3, 4, 4)), ae, (4,)).A(torch.zeros(1, 4, dtype=DT))
    with pytest.raises(ValueError, match="NaN"):
        latent_posterior_sample(D, torch.full((2, 16), float("nan"), dtype=DT), op, ae, method="resample", **kw)
    with pytest.raises(ValueError, match="linear pixel operator"):
        latent_posterior_sample(D, torch.zeros(1, 1, 8, 8, dtype=DT), make_operator("phase-retrieval", (1, 4, 4)),
                                ae, method="psld", **kw)
