"""Analytic-DPM's moment-matched ancestral steps (``x0_var``) and ``X0Variance`` against exact answers.

For isotropic Gaussian data N(m, s^2 I) the posterior of x0 given x_t is Gaussian with variance
v = s^2 sigma^2 / (alpha^2 s^2 + sigma^2) in every direction, so a DDPM or DDIM step widened by
b^2 v samples the exact marginal at any step count; the plain steps under-disperse."""
from __future__ import annotations

import math

import pytest
import torch

from polydiff.core import X0Variance, sample
from polydiff.core import paths as P
from polydiff.core.analytic import GaussianMixture

F64 = torch.float64
MEAN, S2, DIM = 1.0, 0.25, 2
GAUSS = GaussianMixture(torch.full((1, DIM), MEAN, dtype=F64), S2)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def exact_var(path: P.Path, t: torch.Tensor) -> torch.Tensor:
    a, s = path.alpha(t), path.sigma(t)
    return S2 * s * s / (a * a * S2 + s * s)


@pytest.mark.parametrize("solver", ["ddpm", "ddim"])
def test_exact_x0_variance_makes_five_ancestral_steps_exact(solver):
    """Flow path (zero SNR at t = 1, so the start is exact): 5 steps with the exact v give variance
    0.25 within 4 % (40 000 x 2 draws: standard error 0.5 %) and the mean within 5 standard errors;
    the same steps without v are far too narrow (DDIM's deterministic 5 steps land on the ODE map,
    whose variance is exact too, so the plain comparison is DDPM's)."""
    path = P.Flow()
    noise = torch.randn(40_000, DIM, generator=gen(1), dtype=F64)
    out = sample(GAUSS.denoiser(path), noise, path=path, solver=solver, steps=5, generator=gen(2),
                 x0_var=lambda t: exact_var(path, t))
    assert abs(float(out.var(0).mean()) / S2 - 1) < 0.04
    assert float((out.mean(0) - MEAN).abs().max()) < 5 * math.sqrt(S2 / 40_000)
    plain = sample(GAUSS.denoiser(path), noise, path=path, solver="ddpm", steps=5, generator=gen(2))
    assert float(plain.var(0).mean()) / S2 < 0.8


def test_per_sample_grids_take_the_variance_per_column():
    """A (N + 1, B) grid whose columns are the same grid gives the same draws as the shared grid."""
    path = P.VP()
    noise = torch.randn(64, DIM, generator=gen(3), dtype=F64)
    v = lambda t: exact_var(path, t)  # noqa: E731
    shared = sample(GAUSS.denoiser(path), noise, path=path, solver="ddpm", steps=6, grid="uniform",
                    generator=gen(4), x0_var=v)
    grid = torch.linspace(1.0, 0.0, 7, dtype=F64)[:, None].expand(7, 64)
    per = sample(GAUSS.denoiser(path), noise, path=path, solver="ddpm", grid=grid, generator=gen(4), x0_var=v)
    torch.testing.assert_close(per, shared)


def test_estimate_recovers_the_exact_posterior_variance():
    """From 20 000 data points and the exact denoiser: every table entry within 4 % of the exact v
    (standard error 0.5 %), and so are v between table points, beyond the clean end and at zero SNR
    (the interpolation is exact for Gaussian data)."""
    path = P.VP()
    data = GAUSS.sample(20_000, gen(5))
    est = X0Variance.estimate(GAUSS.denoiser(path), data, path, logsnr_range=(-8.0, 8.0), points=9,
                              generator=gen(6), batch=4096)
    exact = exact_var(path, path.t_from_logsnr(est.logsnr))
    assert float((est.var / exact - 1).abs().max()) < 0.04
    mid = (est.logsnr[1:] + est.logsnr[:-1]) / 2
    exact_mid = exact_var(path, path.t_from_logsnr(mid))
    assert float((est.at_logsnr(mid) / exact_mid - 1).abs().max()) < 0.04
    lam = torch.tensor([10.0, 14.0], dtype=F64)
    e = torch.exp(-2 * lam)                     # sigma^2 / alpha^2 at lambda = log(alpha / sigma)
    assert float((est.at_logsnr(lam) / (S2 * e / (S2 + e)) - 1).abs().max()) < 0.04
    # below the table: the data variance (pure noise at lambda = -inf)
    assert abs(float(est.at_logsnr(torch.tensor(-math.inf))) / S2 - 1) < 0.04


def test_sparse_table_interpolates_a_mixture():
    """Three-component mixture in 2-D (not Gaussian, so not interpolated exactly): the default
    41-point table matches an 81-point one from the same data within 4 % at the dense points (the
    knee where the components separate is the hardest part), and stays below the Gaussian bound v_G
    (the exact MMSE is at most the linear estimator's; 3 % of slack: 4 standard errors of one entry)."""
    path = P.VP()
    mix = GaussianMixture(torch.tensor([[1.0, 0.0], [-1.0, 1.5], [0.0, -2.0]], dtype=F64), 0.3,
                          torch.tensor([0.5, 0.3, 0.2], dtype=F64))
    data = mix.sample(20_000, gen(11))
    sparse, dense = (X0Variance.estimate(mix.denoiser(path), data, path, points=k, generator=gen(12),
                                         batch=20_000) for k in (41, 81))
    assert float((sparse.at_logsnr(dense.logsnr) / dense.var - 1).abs().max()) < 0.04
    e = torch.exp(-2 * dense.logsnr)
    assert bool((dense.var <= 1.03 * dense.data_var * e / (dense.data_var + e)).all())


def test_estimated_variance_fixes_ddpm_under_dispersion_at_eight_steps():
    """The whole route on VP: estimate v from data, then 8 DDPM steps reach variance 0.25 within 5 %,
    where plain DDPM at 8 steps is more than 20 % low."""
    path = P.VP()
    est = X0Variance.estimate(GAUSS.denoiser(path), GAUSS.sample(10_000, gen(7)), path, points=17,
                              generator=gen(8), batch=5000)
    noise = torch.randn(40_000, DIM, generator=gen(9), dtype=F64)
    out = sample(GAUSS.denoiser(path), noise, path=path, solver="ddpm", steps=8, generator=gen(10), x0_var=est)
    plain = sample(GAUSS.denoiser(path), noise, path=path, solver="ddpm", steps=8, generator=gen(10))
    assert abs(float(out.var(0).mean()) / S2 - 1) < 0.05
    assert float(plain.var(0).mean()) / S2 < 0.8


def test_bad_input_is_named():
    path = P.VP()
    D = GAUSS.denoiser(path)
    with pytest.raises(ValueError, match="floating-point tensor"):
        X0Variance.estimate(D, torch.ones(10, dtype=torch.int64), path)
    with pytest.raises(ValueError, match="NaN or inf"):
        X0Variance.estimate(D, torch.full((4, DIM), float("nan"), dtype=F64), path)
    with pytest.raises(ValueError, match="logsnr_range"):
        X0Variance.estimate(D, GAUSS.sample(4, gen(0)), path, logsnr_range=(3.0, -3.0))
    with pytest.raises(ValueError, match="mean-reverting"):
        X0Variance.estimate(D, GAUSS.sample(4, gen(0)), P.get_path("grad_tts"))
    with pytest.raises(ValueError, match="strictly increasing"):
        X0Variance(path, torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]), 1.0)
    with pytest.raises(ValueError, match="positive"):
        X0Variance(path, torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0]), 1.0)
    with pytest.raises(ValueError, match="no option"):
        sample(D, torch.randn(4, DIM, dtype=F64), path=path, solver="dpmpp_2m", steps=4, x0_var=lambda t: t)
