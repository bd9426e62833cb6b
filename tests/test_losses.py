"""Training losses: exact minimisers, the x0-space conversion identity, weightings, time samplers."""
import math

import pytest
import torch

from polydiff.core import analytic, paths
from polydiff.core.denoiser import (PREDICTIONS, Denoiser, coefficients, edm_scalings, eps_from_x0, target_from_x0,
                                    x0_error_factor)
from polydiff.core.losses import (TIME_SAMPLERS, WEIGHTINGS, DiffusionLoss, LogitNormalTime, LogNormalTime,
                                  UniformTime)

torch.set_num_threads(2)

RING = analytic.ring_mixture(2)
RING_UNIT = analytic.GaussianMixture(RING.means / 4, (0.3 / 4) ** 2, RING.weights)  # radius 1
SD = 0.5


def exact_net(gm, path, kind, sigma_data=SD):
    """The mixture's exact denoiser written as a network that predicts ``kind``."""
    D = gm.denoiser(path)

    def net(x_in, t_in):
        if kind == "edm":  # invert EDM's network inputs: c_noise = -lambda / 4, x_in = c_in x
            t = path.t_from_logsnr(-4.0 * t_in.double())
            a, s = path.alpha(t)[:, None], path.sigma(t)[:, None]
            skip, c_out, c_in = edm_scalings(a, s, sigma_data)
            x = x_in / c_in
            return (D(x, t) - skip * x) / c_out
        a, s, da, ds = coefficients(path, t_in, x_in)
        x0 = D(x_in, t_in)
        return target_from_x0(kind, x_in, x0, eps_from_x0(x_in, x0, a, s), a, s, da, ds)
    return net


def perturbed(net, scale=0.3):
    return lambda x, t: net(x, t) + scale * torch.sin(3 * x + t[:, None])


def _batch(n, seed, t_lo=0.05, t_hi=0.95):
    g = torch.Generator().manual_seed(seed)
    x0 = RING.sample(n, g)
    t = t_lo + (t_hi - t_lo) * torch.rand(n, generator=g, dtype=torch.float64)
    return x0, t, torch.randn(n, 2, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("kind", PREDICTIONS)
@pytest.mark.parametrize("weighting", ["uniform", "min_snr"])
def test_exact_model_minimises_expected_loss(kind, weighting):
    path = paths.VP("cosine")
    loss = DiffusionLoss(path, prediction=kind, weighting=weighting)
    x0, t, eps = _batch(4000, 1)
    net = exact_net(RING, path, kind)
    offset = torch.zeros(4000, 1, dtype=torch.float64, requires_grad=True)
    per_sample = loss.loss_at(lambda x, tt: net(x, tt) + offset, x0, t, eps)
    grad, = torch.autograd.grad(per_sample.sum(), offset)   # per-sample d loss / d offset at 0
    assert abs(float(grad.mean())) < 4 * float(grad.std()) / math.sqrt(4000)
    base = float(per_sample.detach().mean())
    for delta in (-0.2, 0.2):
        shifted = loss.loss_at(lambda x, tt: net(x, tt) + delta, x0, t, eps)
        assert float(shifted.mean()) > base


@pytest.mark.parametrize("kind", PREDICTIONS)
@pytest.mark.parametrize("path", [paths.Flow(), paths.VP("linear")], ids=["flow", "vp"])
def test_uniform_loss_is_error_factor_times_x0_mse(kind, path):
    x0, t, eps = _batch(256, 2, 1e-3, 0.999)
    net = perturbed(exact_net(RING, path, kind))
    a, s, da, ds = coefficients(path, t, x0)
    x = a * x0 + s * eps
    x0_hat = Denoiser(net, path, kind, SD)(x, t)
    x0_mse = ((x0_hat - x0) ** 2).mean(1)
    uniform = DiffusionLoss(path, prediction=kind)
    if kind != "edm":  # the loss is the plain MSE on the network's own target ...
        target = target_from_x0(kind, x, x0, eps, a, s, da, ds)
        torch.testing.assert_close(uniform.loss_at(net, x0, t, eps), ((net(x, t) - target) ** 2).mean(1))
    # ... which is x0_error_factor(t) times the x0-space MSE
    k = x0_error_factor(kind, path.alpha(t), path.sigma(t), path.d_alpha(t), path.d_sigma(t))
    torch.testing.assert_close(uniform.loss_at(net, x0, t, eps), k * x0_mse, rtol=1e-9, atol=0)
    # every weighting is its x0-space weight times the x0-space MSE, whatever the prediction kind
    for weighting in WEIGHTINGS:
        w = DiffusionLoss(path, prediction=kind, weighting=weighting)
        torch.testing.assert_close(w.loss_at(net, x0, t, eps), w.x0_weight(t) * x0_mse, rtol=1e-9, atol=0)


@pytest.mark.parametrize("kind", PREDICTIONS)
def test_weightings_in_x0_space(kind):
    path = paths.Flow()
    t = torch.linspace(1e-3, 0.999, 101, dtype=torch.float64)
    snr = ((1 - t) / t) ** 2
    torch.testing.assert_close(DiffusionLoss(path, kind, "min_snr", min_snr_gamma=5.0).x0_weight(t),
                               snr.clamp_max(5.0), rtol=1e-12, atol=0)
    torch.testing.assert_close(DiffusionLoss(path, kind, "snr").x0_weight(t), snr, rtol=1e-12, atol=0)
    s = t / (1 - t)  # EDM's sigma on this path
    torch.testing.assert_close(DiffusionLoss(path, kind, "edm", sigma_data=SD).x0_weight(t),
                               (s ** 2 + SD ** 2) / (s * SD) ** 2, rtol=1e-12, atol=0)
    # the weight on the network's own target: eps-MSE for "snr", Min-SNR's min(1, gamma/SNR) for eps
    if kind == "eps":
        torch.testing.assert_close(DiffusionLoss(path, kind, "snr").weight(t), torch.ones_like(t))
        torch.testing.assert_close(DiffusionLoss(path, kind, "min_snr").weight(t), (5.0 / snr).clamp_max(1.0))
    if kind == "v":  # Hang et al. 2023: min(SNR, gamma) / (SNR + 1) for v-prediction on a VP path
        vp = paths.VP("cosine")
        snr_vp = torch.exp(2 * vp.logsnr(t))
        torch.testing.assert_close(DiffusionLoss(vp, kind, "min_snr").weight(t), snr_vp.clamp_max(5.0) / (snr_vp + 1))


@pytest.mark.parametrize("path", [paths.EDM(), paths.VP("cosine")], ids=["edm", "vp_cosine"])
def test_edm_weighting_is_unit_weight_on_F(path):
    """Karras et al. 2022, Eq. 8: lambda(sigma) c_out^2 = 1, so the loss is |F - F_target|^2."""
    x0, t, eps = _batch(256, 3, 1e-3, 0.999)
    net = perturbed(exact_net(RING, path, "edm"))
    loss = DiffusionLoss(path, prediction="edm", weighting="edm", sigma_data=SD)
    # EDM's own variables: y = x0, n = sigma_ve eps, network input c_in (y + n), F target (Eq. 8)
    a, sg = path.alpha(t)[:, None], path.sigma(t)[:, None]
    s = sg / a
    c_skip = SD ** 2 / (s ** 2 + SD ** 2)
    c_out = s * SD / (s ** 2 + SD ** 2).sqrt()
    c_in = 1 / (s ** 2 + SD ** 2).sqrt()
    y_n = x0 + s * eps
    c_noise = torch.log(s[:, 0]) / 4
    F = net(c_in * y_n, c_noise)
    F_target = (x0 - c_skip * y_n) / c_out
    torch.testing.assert_close(loss.loss_at(net, x0, t, eps), ((F - F_target) ** 2).mean(1), rtol=1e-9, atol=0)


def test_time_sampler_moments_and_reproducibility():
    n, path = 200_000, paths.Flow()
    g = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    u = UniformTime(0.2, 0.6)(n, path, g(0))
    assert 0.2 <= float(u.min()) and float(u.max()) <= 0.6
    assert abs(float(u.mean()) - 0.4) < 4 * 0.4 / math.sqrt(12 * n)
    assert abs(float(u.var()) - 0.4 ** 2 / 12) < 1e-4
    t = LogitNormalTime(mean=0.5, std=0.8)(n, path, g(1))
    logit = torch.log(t / (1 - t))
    assert abs(float(logit.mean()) - 0.5) < 4 * 0.8 / math.sqrt(n)
    assert abs(float(logit.std()) - 0.8) < 0.01
    for p in (paths.Flow(), paths.VP("linear"), paths.EDM()):
        ln_sigma = torch.log(p.sigma_ve(LogNormalTime()(n, p, g(2))))
        assert abs(float(ln_sigma.mean()) + 1.2) < 4 * 1.2 / math.sqrt(n), p
        assert abs(float(ln_sigma.std()) - 1.2) < 0.01, p
    for name, cls in TIME_SAMPLERS.items():
        a, b, c = (cls()(1000, paths.VP("cosine"), g(s)) for s in (5, 5, 6))
        assert torch.equal(a, b) and not torch.equal(a, c), name
        assert a.dtype == torch.float64 and float(a.min()) >= 1e-5 and float(a.max()) <= 1 - 1e-5


def test_call_draws_from_generator():
    loss = DiffusionLoss(paths.Flow(), prediction="velocity", time_sampler="logit_normal")
    net = perturbed(exact_net(RING, paths.Flow(), "velocity"))
    x0 = RING.sample(64, torch.Generator().manual_seed(0))
    first = loss(net, x0, torch.Generator().manual_seed(7))
    assert first.shape == (64,)
    assert torch.equal(first, loss(net, x0, torch.Generator().manual_seed(7)))
    assert not torch.equal(first, loss(net, x0, torch.Generator().manual_seed(8)))
    with_cond = loss(lambda x, t, scale: net(x * scale, t), x0, torch.Generator().manual_seed(7), scale=1.0)
    assert torch.equal(first, with_cond)


class MLP(torch.nn.Module):
    def __init__(self, hidden=128):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, 2))

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None]], 1))


@pytest.mark.parametrize("path,kind,weighting,sampler", [
    (paths.VP("cosine"), "eps", "min_snr", "uniform"),
    (paths.Flow(), "velocity", "uniform", "logit_normal"),
    (paths.EDM(), "edm", "edm", "log_normal"),
], ids=["vp-eps-minsnr", "flow-velocity", "edm-edm"])
def test_training_decreases_loss(path, kind, weighting, sampler):
    """200 Adam steps remove a clear part of the loss above the exact model's (the irreducible part)."""
    torch.manual_seed(0)
    model = MLP()
    loss = DiffusionLoss(path, prediction=kind, weighting=weighting, time_sampler=sampler)
    data = RING_UNIT.sample(4096, torch.Generator().manual_seed(0)).float()
    evaluate = lambda net: float(loss(net, data[:2048], torch.Generator().manual_seed(123)).mean())  # noqa: E731
    best = evaluate(exact_net(RING_UNIT, path, kind))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        before = evaluate(model)
    for _ in range(200):
        idx = torch.randint(0, 4096, (256,), generator=g)
        opt.zero_grad()
        loss(model, data[idx], g).mean().backward()
        opt.step()
    with torch.no_grad():
        after = evaluate(model)
    assert after - best < 0.65 * (before - best), (before, after, best)


def test_bad_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid: .*'eps'.*'velocity'.*'edm'"):
        DiffusionLoss(paths.Flow(), prediction="noise")
    with pytest.raises(ValueError, match="valid: .*'uniform'.*'snr'.*'min_snr'.*'edm'"):
        DiffusionLoss(paths.Flow(), weighting="p2")
    with pytest.raises(ValueError, match="valid: .*'uniform'.*'logit_normal'.*'log_normal'"):
        DiffusionLoss(paths.Flow(), time_sampler="cosine")
    with pytest.raises(ValueError, match="valid: "):
        DiffusionLoss("nope")
    with pytest.raises(ValueError, match="t_min < t_max"):
        UniformTime(0.5, 0.2)
    loss = DiffusionLoss(paths.Flow())
    x0 = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="network returned shape"):
        loss(lambda x, t: x[:, :1], x0)
    with pytest.raises(ValueError, match="need t of shape"):
        loss.loss_at(lambda x, t: x, x0, torch.zeros(3), torch.zeros(4, 2))
