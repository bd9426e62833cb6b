"""The denoiser contract (polydiff.core.denoiser): every prediction kind, fed its exact target computed
from the analytic mixture, must give back the exact E[x0 | x_t]."""
from __future__ import annotations

import math

import pytest
import torch

from polydiff.core import Denoiser, NFECounter
from polydiff.core import paths as P
from polydiff.core.analytic import GaussianMixture
from polydiff.core.denoiser import (PREDICTIONS, coefficients, edm_scalings, target_from_x0, x0_error_factor,
                                    x0_from)

F64 = torch.float64
MIX = GaussianMixture(torch.tensor([[1.0, -0.5, 0.0], [-1.5, 1.0, 2.0]], dtype=F64),
                      torch.tensor([[0.3, 0.2, 0.5], [0.4, 0.1, 0.2]], dtype=F64),
                      torch.tensor([0.3, 0.7], dtype=F64))
PATHS = [P.VP(), P.VP("cosine"), P.SubVP(), P.VE(), P.EDM(), P.Flow(), P.ZeroTerminalSNR(P.VP()),
         P.Shifted(P.Flow(), 3.0)]
SIGMA_DATA = 0.7


def exact_net(path: P.Path, kind: str):
    """A 'network' of the given kind that outputs its exact target, written from the analytic mixture."""
    def net(x_in: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
        if kind == "edm":
            # EDM (Karras et al. 2022, Table 1) in x_ve = x / alpha, s = sigma / alpha, multiplied out to
            # stay finite at alpha = 0: c_skip x_ve = sd^2 alpha x / (sigma^2 + alpha^2 sd^2),
            # c_out = sigma sd / sqrt(sigma^2 + alpha^2 sd^2), c_in x_ve = x / sqrt(sigma^2 + alpha^2 sd^2).
            # The inputs are c_in x_ve and c_noise = log(s) / 4, from which x and t are recovered.
            t = path.t_from_logsnr(-4 * t_in.to(F64))
            a, sg = path.alpha(t)[:, None], path.sigma(t)[:, None]
            norm = torch.sqrt(sg * sg + a * a * SIGMA_DATA ** 2)
            x = x_in * norm
            D = MIX.denoise(x, a[:, 0], sg[:, 0])
            return (D - SIGMA_DATA ** 2 * a * x / norm ** 2) / (sg * SIGMA_DATA / norm)
        x, t = x_in, t_in
        a, s = path.alpha(t), path.sigma(t)
        da, ds = path.d_alpha(t)[:, None], path.d_sigma(t)[:, None]
        D, eps = MIX.denoise(x, a, s), MIX.eps(x, a, s)
        if kind == "x0":
            return D
        if kind == "eps":
            return eps
        if kind == "v":
            return a[:, None] * eps - s[:, None] * D
        if kind == "velocity":
            return da * D + ds * eps
        assert kind == "score"
        return MIX.score(x, a, s)
    return net


@pytest.mark.parametrize("path", PATHS, ids=repr)
@pytest.mark.parametrize("kind", PREDICTIONS)
def test_exact_target_gives_exact_denoiser(path, kind):
    gen = torch.Generator().manual_seed(0)
    t = torch.tensor([0.05, 0.2, 0.5, 0.8, 0.95, 0.6], dtype=F64)
    eps = torch.randn(6, 3, generator=gen, dtype=F64)
    x = path.alpha(t)[:, None] * MIX.sample(6, gen) + path.sigma(t)[:, None] * eps
    D = Denoiser(exact_net(path, kind), path, kind, sigma_data=SIGMA_DATA)
    assert torch.allclose(D(x, t), MIX.denoise(x, path.alpha(t), path.sigma(t)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["x0", "v", "velocity", "edm"])
@pytest.mark.parametrize("path", [P.Flow(), P.VP("cosine"), P.ZeroTerminalSNR(P.VP())], ids=repr)
def test_zero_snr_kinds_are_exact_at_pure_noise(path, kind):
    """At alpha = 0 (t = 1) E[x0 | x] is the data mean; these kinds (EDM's preconditioning included) get it."""
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    t = torch.ones(4, dtype=F64)
    assert path.alpha(t).eq(0).all()
    out = Denoiser(exact_net(path, kind), path, kind, sigma_data=SIGMA_DATA)(x, t)
    mean = (MIX.weights[:, None] * MIX.means).sum(0)
    assert torch.allclose(out, mean.expand(4, 3), atol=1e-12)


def test_edm_preconditioning_is_finite_at_zero_snr():
    path = P.Flow()
    seen = {}

    def net(x_in, c_noise):
        seen["x"], seen["c"] = x_in, c_noise
        return torch.ones_like(x_in)
    x = 3.0 * torch.ones(2, 3, dtype=F64)
    out = Denoiser(net, path, "edm", sigma_data=0.5)(x, torch.ones(2, dtype=F64))
    # alpha = 0: c_skip = 0, c_out = sigma_data, c_in = 1 / sigma, c_noise = LOGSNR_CLIP / 4
    assert torch.equal(out, torch.full((2, 3), 0.5, dtype=F64))
    assert torch.equal(seen["x"], x) and torch.equal(seen["c"], torch.full((2,), 10.0, dtype=F64))
    skip, c_out, c_in = edm_scalings(torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64), 0.5)
    assert (float(skip), float(c_out), float(c_in)) == (0.0, 0.5, 1.0)


@pytest.mark.parametrize("path", PATHS, ids=repr)
@pytest.mark.parametrize("kind", ["eps", "x0", "v", "velocity", "score"])
def test_target_and_x0_conversions_invert_each_other(path, kind):
    gen = torch.Generator().manual_seed(2)
    t = torch.tensor([0.1, 0.4, 0.7, 0.9], dtype=F64)
    x0, eps = torch.randn(4, 3, generator=gen, dtype=F64), torch.randn(4, 3, generator=gen, dtype=F64)
    a, s, da, ds = coefficients(path, t, x0)
    x = a * x0 + s * eps
    target = target_from_x0(kind, x, x0, eps, a, s, da, ds)
    assert torch.allclose(x0_from(kind, target, x, a, s, da, ds), x0, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("path", PATHS, ids=repr)
@pytest.mark.parametrize("kind", PREDICTIONS)
def test_x0_error_factor_against_an_explicit_perturbation(path, kind):
    """|target(x0 + d) - target(x0)|^2 = k(t) |d|^2 at fixed x_t (eps follows x0: eps = (x - alpha x0)/sigma)."""
    gen = torch.Generator().manual_seed(3)
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=F64)
    x0, eps = torch.randn(5, 3, generator=gen, dtype=F64), torch.randn(5, 3, generator=gen, dtype=F64)
    d = 1e-3 * torch.randn(5, 3, generator=gen, dtype=F64)
    a, s, da, ds = coefficients(path, t, x0)
    x = a * x0 + s * eps

    def target(x0_hat):
        return target_from_x0(kind, x, x0_hat, (x - a * x0_hat) / s, a, s, da, ds)
    lhs = ((target(x0 + d) - target(x0)) ** 2).sum(1)
    k = x0_error_factor(kind, path.alpha(t), path.sigma(t), path.d_alpha(t), path.d_sigma(t))
    assert torch.allclose(lhs, k * (d ** 2).sum(1), rtol=1e-8)


def test_denoiser_time_handling_and_errors():
    path = P.VP()
    net = exact_net(path, "eps")
    D = Denoiser(net, path, "eps")
    x = torch.randn(3, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    # a Python number is taken in x's dtype (float64 here), not rounded through float32
    assert torch.equal(D(x, 0.3), D(x, torch.full((3,), 0.3, dtype=F64)))
    with pytest.raises(ValueError, match="shape"):
        D(x, torch.ones(2, dtype=F64))
    with pytest.raises(ValueError, match="valid"):
        Denoiser(net, path, "noise")
    for fn in (x0_from, x0_error_factor):
        with pytest.raises(ValueError, match="valid"):
            fn("noise", *([torch.ones(1)] * (4 if fn is x0_from else 2)))


def test_nfe_counter_counts_and_forwards():
    calls = []

    def D(x, t, **cond):
        calls.append(cond)
        return 2 * x
    c = NFECounter(D)
    x = torch.ones(2, 2)
    for _ in range(3):
        assert torch.equal(c(x, torch.zeros(2), label=1), 2 * x)
    assert c.nfe == 3 and calls == [{"label": 1}] * 3


def test_edm_scalings_match_karras_table_1():
    """For alpha = 1 the scalings are EDM's c_skip, c_out, c_in at sigma."""
    s = torch.tensor([0.01, 0.5, 3.0, 80.0], dtype=F64)
    skip, out, inp = edm_scalings(torch.ones_like(s), s, 0.5)
    assert torch.allclose(skip, 0.25 / (s * s + 0.25), rtol=1e-15)
    assert torch.allclose(out, s * 0.5 / torch.sqrt(s * s + 0.25), rtol=1e-15)
    assert torch.allclose(inp, 1 / torch.sqrt(s * s + 0.25), rtol=1e-15)
    assert math.isclose(float(edm_scalings(torch.tensor(2.0), torch.tensor(1.0), 0.5)[0]),
                        0.25 * 2 / (1 + 4 * 0.25), rel_tol=1e-7)
