"""Mean-reverting paths (Grad-TTS, SGMSE+'s OUVE) against exact answers.

x_t = alpha x0 + (1 - alpha) mu + sigma eps. For Gaussian data x0 ~ N(m, s^2 I) and a fixed mean mu,
x_t is Gaussian, so E[x0 | x_t], the score and the probability-flow ODE map are closed form; the
coefficients are checked against numerical integration of the papers' SDE moment equations; every
registered solver is checked to run the mean-reverting model exactly as the Gaussian model of the
shifted state; guidance, the Denoiser conversions and the training loss's minimiser are checked
against closed forms.
"""
from __future__ import annotations

import math

import pytest
import torch

from polydiff.core import Denoiser, guidance, losses, mean_reverting, sample, solvers
from polydiff.core import paths as P

F64 = torch.float64
M, S = 0.7, 0.5            # data x0 ~ N(M, S^2 I)
PATHS = {"grad_tts": P.MeanRevertingVP(), "ouve": P.OUVE()}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def coef(path: P.Path, t, x: torch.Tensor):
    """alpha, sigma at t (scalar or (B,)) broadcast onto x."""
    t = torch.as_tensor(t, dtype=F64)
    a, s = path.alpha(t), path.sigma(t)
    shape = (-1,) + (1,) * (x.dim() - 1) if t.dim() else ()
    return a.reshape(shape).to(x), s.reshape(shape).to(x)


def exact_denoiser(path: P.Path, m: float = M, s: float = S):
    """E[x0 | x_t = x] for x0 ~ N(m, s^2): x_t ~ N(a m + (1 - a) mu, a^2 s^2 + sigma^2), Cov(x0, x_t) = a s^2."""
    def D(x, t, mu, **_):
        a, sg = coef(path, t, x)
        v = a * a * s * s + sg * sg
        return m + a * s * s / v * (x - a * m - (1 - a) * mu)
    return D


def exact_score(path: P.Path, x, t, mu, m: float = M, s: float = S):
    a, sg = coef(path, t, x)
    return -(x - a * m - (1 - a) * mu) / (a * a * s * s + sg * sg)


def flow_map(path: P.Path, x1, mu, t_end: float = 0.0, m: float = M, s: float = S):
    """Exact probability-flow ODE map from x_1 to x_{t_end} for Gaussian data: the standardised
    deviation z = (x - mean_t) / std_t is constant along the flow."""
    a1, s1 = (float(v) for v in coef(path, 1.0, x1))
    a, sg = (float(v) for v in coef(path, t_end, x1))
    z = (x1 - a1 * m - (1 - a1) * mu) / math.sqrt(a1 * a1 * s * s + s1 * s1)
    return a * m + (1 - a) * mu + math.sqrt(a * a * s * s + sg * sg) * z


def exact_start(path: P.Path, B: int, d: int, g: torch.Generator, mu_scale: float = 2.0):
    """(mu, x_1 from the exact marginal, the noise z of x_1)."""
    mu = mu_scale * torch.randn(B, d, generator=g, dtype=F64)
    a1, s1 = (float(v) for v in coef(path, 1.0, mu))
    z = torch.randn(B, d, generator=g, dtype=F64)
    x1 = a1 * M + (1 - a1) * mu + math.sqrt(a1 * a1 * S * S + s1 * s1) * z
    return mu, x1, z


# ------------------------------------------------------------------ coefficients
def paper_sde(name: str, t: float) -> tuple[float, float]:
    """(f, g^2) of dx = f (x - mu) dt + g dW as written in the papers."""
    if name == "grad_tts":      # Popov et al. 2021: dX = 1/2 (mu - X) beta dt + sqrt(beta) dW
        beta = 0.05 + t * (20.0 - 0.05)
        return -0.5 * beta, beta
    # Richter et al. 2023: dx = gamma (y - x) dt + sigma_min (sigma_max/sigma_min)^t sqrt(2 log(sigma_max/sigma_min)) dW
    g = 0.05 * (0.5 / 0.05) ** t * math.sqrt(2 * math.log(0.5 / 0.05))
    return -1.5, g * g


@pytest.mark.parametrize("name", PATHS)
def test_coefficients_match_integrated_moment_odes(name):
    """alpha, 1 - alpha and sigma^2 against RK4 integration of dm/dt = f (m - mu), dv/dt = 2 f v + g^2."""
    path = PATHS[name]

    def rhs(t, y):          # y = (mean with x0 = 1, mu = 0; mean with x0 = 0, mu = 1; variance)
        f, g2 = paper_sde(name, t)
        return torch.tensor([f * y[0], f * (y[1] - 1.0), 2 * f * y[2] + g2], dtype=F64)

    n, y, t = 4000, torch.tensor([1.0, 0.0, 0.0], dtype=F64), 0.0
    h = 1.0 / n
    checks = {int(n * c): c for c in (0.01, 0.1, 0.3, 0.5, 0.8, 1.0)}
    for i in range(1, n + 1):
        k1 = rhs(t, y)
        k2 = rhs(t + h / 2, y + h / 2 * k1)
        k3 = rhs(t + h / 2, y + h / 2 * k2)
        k4 = rhs(t + h, y + h * k3)
        y, t = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), t + h
        if i in checks:
            tt = torch.tensor(checks[i], dtype=F64)
            assert float(path.alpha(tt)) == pytest.approx(float(y[0]), abs=1e-10)
            assert float(path.mean_weight(tt)) == pytest.approx(float(y[1]), abs=1e-10)
            assert float(path.sigma(tt)) ** 2 == pytest.approx(float(y[2]), abs=1e-10)
    # the SDE the path reports is the paper's
    for tv in (0.0, 0.2, 0.9):
        f, g2 = path.sde(torch.tensor(tv, dtype=F64))
        pf, pg2 = paper_sde(name, tv)
        assert float(f) == pytest.approx(pf, rel=1e-12) and float(g2) == pytest.approx(pg2, rel=1e-12)
    assert float(path.alpha(0.0)) == 1.0 and float(path.sigma(0.0)) == 0.0


@pytest.mark.parametrize("name", PATHS)
def test_derivatives_logsnr_and_inverse(name):
    path = PATHS[name]
    t = torch.linspace(0.02, 0.98, 25, dtype=F64)
    h = 1e-6
    for fn, dfn in ((path.alpha, path.d_alpha), (path.sigma, path.d_sigma), (path.logsnr, path.d_logsnr)):
        fd = (fn(t + h) - fn(t - h)) / (2 * h)
        torch.testing.assert_close(dfn(t), fd, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(path.logsnr(t), torch.log(path.alpha(t) / path.sigma(t)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(path.t_from_logsnr(path.logsnr(t)), t, rtol=0, atol=1e-9)
    torch.testing.assert_close(path.sigma_ve(t), path.sigma(t) / path.alpha(t))
    # the generic SDE formula g^2 = 2 sigma sigma' - 2 f sigma^2 agrees with the closed form
    f, g2 = path.sde(t)
    torch.testing.assert_close(f, path.d_alpha(t) / path.alpha(t))
    torch.testing.assert_close(g2, 2 * path.sigma(t) * path.d_sigma(t) - 2 * f * path.sigma(t) ** 2, rtol=1e-9, atol=0)
    # accurate near the data end: sigma^2 ~ g^2(0) t
    t0 = torch.tensor(1e-12, dtype=F64)
    assert float(path.sigma(t0)) ** 2 / 1e-12 == pytest.approx(float(path.sde(0.0)[1]), rel=1e-6)


def test_config_names_and_errors():
    for p in (P.MeanRevertingVP(), P.OUVE(gamma=2.0, sigma_min=0.1, sigma_max=0.7),
              P.MeanReverting(P.Shifted(P.Flow(), 2.0)), P.get_path("grad_tts"), P.get_path("ouve")):
        q = P.path_from_config(p.config())
        assert type(q) is type(p) and repr(q) == repr(p)
        t = torch.linspace(0.05, 0.95, 7, dtype=F64)
        torch.testing.assert_close(q.sigma(t), p.sigma(t), rtol=0, atol=0)
        assert mean_reverting.is_mean_reverting(q)
    assert P.MeanRevertingVP().variance_preserving and not P.OUVE().variance_preserving
    assert float(P.OUVE().alpha(1.0)) == pytest.approx(math.exp(-1.5))
    with pytest.raises(ValueError, match="already mean-reverting"):
        P.MeanReverting(P.OUVE())
    with pytest.raises(ValueError, match="Shifted"):
        P.Shifted(P.MeanRevertingVP(), 2.0)
    with pytest.raises(ValueError, match="ZeroTerminalSNR"):
        P.ZeroTerminalSNR(P.MeanRevertingVP())
    with pytest.raises(ValueError, match="gamma"):
        P.OUVE(gamma=0.0)
    with pytest.raises(ValueError, match="beta_min"):
        P.MeanRevertingVP(beta_min=30.0)


# ------------------------------------------------------------------ denoiser contract
@pytest.mark.parametrize("name", PATHS)
def test_denoiser_conversion_uses_shifted_state(name):
    """A network that outputs the exact score of x~ gives, through Denoiser, the exact E[x0 | x_t]."""
    path = PATHS[name]
    g = gen(1)
    x, mu = torch.randn(6, 3, generator=g, dtype=F64), 3 * torch.randn(6, 3, generator=g, dtype=F64)
    t = torch.rand(6, generator=g, dtype=F64) * 0.9 + 0.05
    seen = {}

    def net(xg, tt, mu):      # score of the Gaussian path x~ = a x0 + sigma eps
        seen["x"] = xg
        a, sg = coef(path, tt, xg)
        return -(xg - a * M) / (a * a * S * S + sg * sg)

    D = Denoiser(net, path, prediction="score")
    torch.testing.assert_close(D(x, t, mu=mu), exact_denoiser(path)(x, t, mu), rtol=1e-10, atol=1e-10)
    a, _ = coef(path, t, x)
    torch.testing.assert_close(seen["x"], x - (1 - a) * mu)
    # the score in original coordinates is the same function
    torch.testing.assert_close(net(x - (1 - a) * mu, t, mu), exact_score(path, x, t, mu))
    with pytest.raises(ValueError, match="mu"):
        D(x, t)


# ------------------------------------------------------------------ every solver
@pytest.mark.parametrize("solver", sorted(set(solvers()) - {"fitted"}))
def test_every_solver_is_the_gaussian_solver_on_the_shifted_state(solver):
    """sample on the mean-reverting path = the same solver on the Gaussian path of x~ with
    D~(x~) = E[x0 | x~] and the shifted start, to float64 round-off (stochastic ones with the same seed)."""
    path = PATHS["ouve"]
    base = path.base
    g = gen(2)
    mu, x1, _ = exact_start(path, 16, 3, g)
    a1 = float(path.alpha(1.0))

    def d_gauss(xg, t, **_):
        a, sg = coef(base, t, xg)
        return M + a * S * S / (a * a * S * S + sg * sg) * (xg - a * M)

    for t_end in (0.0, 0.3):
        a_end = float(path.alpha(t_end))
        got = sample(exact_denoiser(path), torch.zeros_like(x1), path=path, solver=solver, steps=6, t_end=t_end,
                     x_init=x1, cond={"mu": mu}, generator=gen(5))
        ref = sample(d_gauss, torch.zeros_like(x1), path=base, solver=solver, steps=6, t_end=t_end,
                     x_init=x1 - (1 - a1) * mu, generator=gen(5))
        torch.testing.assert_close(got, ref + (1 - a_end) * mu, rtol=1e-9, atol=1e-9)
    # the default start is mu + sigma(1) noise
    noise = torch.randn(16, 3, generator=g, dtype=F64)
    got = sample(exact_denoiser(path), noise, path=path, solver=solver, steps=6, cond={"mu": mu}, generator=gen(5))
    ref = sample(d_gauss, noise, path=base, solver=solver, steps=6, generator=gen(5),
                 x_init=a1 * mu + float(path.sigma(1.0)) * noise)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", PATHS)
@pytest.mark.parametrize("solver,order,tol", [("ddim", 1, 0.12), ("euler", 1, 0.2), ("heun", 2, 4e-3),
                                              ("dpmpp_2m", 2, 1e-2), ("unipc", 3, 1e-3), ("rk45", 5, 1e-4)])
def test_deterministic_solvers_reproduce_the_exact_flow_map(name, solver, order, tol):
    """From the exact marginal at t = 1, each sample lands on the exact ODE image m + s z, with the
    error falling at the solver's order (per-sample mu of scale 2: a wrong shift would be O(1))."""
    path = PATHS[name]
    mu, x1, z = exact_start(path, 128, 2, gen(3))
    exact = M + S * z
    torch.testing.assert_close(flow_map(path, x1, mu), exact)
    errs = []
    for steps in (20, 40):
        out = sample(exact_denoiser(path), torch.zeros_like(x1), path=path, solver=solver, steps=steps,
                     x_init=x1, cond={"mu": mu})
        errs.append(float((out - exact).abs().max()))
    assert errs[1] < tol
    if solver != "rk45":
        assert errs[0] / errs[1] > 1.7 ** min(order, 2), errs


@pytest.mark.parametrize("name", PATHS)
@pytest.mark.parametrize("solver", ["ddpm", "euler_maruyama", "dpmpp_2m_sde"])
def test_stochastic_solvers_reproduce_data_moments(name, solver):
    path = PATHS[name]
    B = 10_000
    mu, x1, _ = exact_start(path, B, 1, gen(4))
    out = sample(exact_denoiser(path), torch.zeros_like(x1), path=path, solver=solver, steps=200,
                 x_init=x1, cond={"mu": mu}, generator=gen(6))
    se = S / math.sqrt(B)
    assert abs(float(out.mean()) - M) < 5 * se
    assert abs(float(out.std()) - S) < 0.02
    # the samples do not remember their mean mu
    assert abs(float(torch.corrcoef(torch.stack([out[:, 0], mu[:, 0]]))[0, 1])) < 5 / math.sqrt(B)


def test_per_sample_grid_callback_and_errors():
    path = PATHS["grad_tts"]
    mu, x1, z = exact_start(path, 8, 2, gen(7))
    D = exact_denoiser(path)
    g1 = torch.linspace(1.0, 0.0, 31, dtype=F64) ** 1.5
    g2 = torch.linspace(1.0, 0.0, 31, dtype=F64)
    grid = torch.stack([g1 if i % 2 else g2 for i in range(8)], dim=1)
    got = sample(D, torch.zeros_like(x1), path=path, solver="dpmpp_3m", grid=grid, x_init=x1, cond={"mu": mu})
    for i, gi in ((0, g2), (1, g1)):
        ref = sample(D, torch.zeros_like(x1), path=path, solver="dpmpp_3m", grid=gi, x_init=x1, cond={"mu": mu})
        torch.testing.assert_close(got[i::2], ref[i::2], rtol=1e-9, atol=1e-9)
    # the callback sees original-coordinate states: they follow the exact flow map
    seen = []
    out = sample(D, torch.zeros_like(x1), path=path, solver="unipc", steps=80, x_init=x1,
                 cond={"mu": mu}, callback=lambda i, t, x, x0: seen.append((t, x.clone())))
    assert len(seen) == 80
    for t, x in seen[:-1]:
        torch.testing.assert_close(x, flow_map(path, x1, mu, t), rtol=0, atol=1e-3)
    torch.testing.assert_close(seen[-1][1], out)
    # errors
    with pytest.raises(ValueError, match="mu"):
        sample(D, x1, path=path, steps=3)
    with pytest.raises(ValueError, match="broadcast"):
        sample(D, x1, path=path, steps=3, cond={"mu": torch.zeros(3, 5, dtype=F64)})
    with pytest.raises(ValueError, match="NaN"):
        sample(D, x1, path=path, steps=3, cond={"mu": torch.full_like(x1, float("nan"))})
    with pytest.raises(ValueError, match="floating"):
        sample(D, x1, path=path, steps=3, cond={"mu": torch.zeros(8, 2, dtype=torch.long)})
    # mu of shape (1, d) broadcasts over the batch
    one = sample(D, x1, path=path, steps=3, cond={"mu": mu[:1]})
    full = sample(D, x1, path=path, steps=3, cond={"mu": mu[:1].expand_as(x1).clone()})
    torch.testing.assert_close(one, full)


# ------------------------------------------------------------------ guidance
def test_classifier_guidance_gives_the_exact_posterior():
    """With y = x0 + N(0, tau^2) and the exact log p(y | x_t), the guided denoiser is E[x0 | x_t, y] and
    the flow lands on the posterior N(m_y, s_y^2)."""
    path, tau = PATHS["ouve"], 0.3
    D = exact_denoiser(path)

    def log_p(x, t, mu, y):
        a, sg = coef(path, t, x)
        post_var = S * S * sg * sg / (a * a * S * S + sg * sg)     # Var[x0 | x_t]
        return (-0.5 * (y - D(x, t, mu)) ** 2 / (post_var + tau * tau)).sum(1)

    G = guidance.ClassifierGuidance(D, log_p, 1.0, path)
    g = gen(8)
    B = 64
    x, mu = torch.randn(B, 2, generator=g, dtype=F64), 2 * torch.randn(B, 2, generator=g, dtype=F64)
    y = torch.randn(B, 2, generator=g, dtype=F64)
    t = torch.rand(B, generator=g, dtype=F64) * 0.9 + 0.05
    a, sg = coef(path, t, x)
    prec = 1 / S ** 2 + a * a / sg ** 2 + 1 / tau ** 2
    exact = (M / S ** 2 + a * (x - (1 - a) * mu) / sg ** 2 + y / tau ** 2) / prec
    torch.testing.assert_close(G(x, t, mu=mu, y=y), exact, rtol=1e-9, atol=1e-9)
    # sampling: the exact flow of the posterior Gaussian
    mu, x1, _ = exact_start(path, B, 2, g)
    m_y = (M / S ** 2 + y / tau ** 2) / (1 / S ** 2 + 1 / tau ** 2)
    s_y = (1 / S ** 2 + 1 / tau ** 2) ** -0.5
    # start from the posterior marginal of x_1 (a1 = 0.22 is not negligible) for an exact target
    a1, s1 = (float(v) for v in coef(path, 1.0, x1))
    zq = (x1 - a1 * M - (1 - a1) * mu) / math.sqrt(a1 * a1 * S * S + s1 * s1)
    x1y = a1 * m_y + (1 - a1) * mu + math.sqrt(a1 * a1 * s_y ** 2 + s1 * s1) * zq
    out = sample(G, torch.zeros_like(x1), path=path, solver="unipc", steps=40, x_init=x1y, cond={"mu": mu, "y": y})
    torch.testing.assert_close(out, m_y + s_y * zq, rtol=0, atol=2e-3)


# ------------------------------------------------------------------ training loss
def test_grad_tts_loss_is_score_matching_on_the_path():
    """DiffusionLoss(MeanRevertingVP(), "score", "snr") equals Grad-TTS's || sqrt(lambda_t) s(x_t) + eps ||^2
    (per-element mean), with x_t and lambda_t written as in the paper."""
    loss = losses.DiffusionLoss(P.MeanRevertingVP(), prediction="score", weighting="snr")
    g = gen(9)
    x0, mu, eps = (torch.randn(5, 4, 3, generator=g, dtype=F64) for _ in range(3))
    t = torch.rand(5, generator=g, dtype=F64)
    cum = 0.05 * t + 0.5 * (20.0 - 0.05) * t * t                # int_0^t beta
    rho = (torch.exp(-0.5 * cum)[:, None, None] * x0 + (1 - torch.exp(-0.5 * cum))[:, None, None] * mu)
    lam = (1 - torch.exp(-cum))[:, None, None]
    xt = rho + lam.sqrt() * eps

    def estimator(x, mu, tt):                                   # any function of (x_t, mu, t)
        return torch.tanh(x) * 0.7 - 0.2 * mu * tt[:, None, None] + 0.1

    def net(xg, tt, mu):                                        # the same model fed the shifted state
        return estimator(xg + (1 - torch.exp(-0.5 * cum))[:, None, None] * mu, mu, tt)

    ref = ((lam.sqrt() * estimator(xt, mu, t) + eps) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(loss.loss_at(net, x0, t, eps, mu=mu), ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="mu"):
        loss.loss_at(net, x0, t, eps)
    with pytest.raises(ValueError, match="broadcast"):
        loss(net, x0, gen(0), mu=torch.zeros(2, 2, dtype=F64))


@pytest.mark.parametrize("name,prediction,weighting", [("grad_tts", "score", "snr"), ("ouve", "x0", "uniform"),
                                                       ("ouve", "edm", "edm")])
def test_loss_minimiser_is_the_exact_denoiser(name, prediction, weighting):
    """A network linear in (x~, mu, 1) at a fixed t: the exact denoiser is in the family, the loss is
    quadratic in the parameters, and one Newton step finds its minimiser; through Denoiser it must be
    E[x0 | x_t] within Monte-Carlo error."""
    path = PATHS[name]
    loss = losses.DiffusionLoss(path, prediction=prediction, weighting=weighting)
    g = gen(10)
    n, tval = 100_000, 0.35
    x0 = M + S * torch.randn(n, 1, generator=g, dtype=F64)
    mu = 2 * torch.randn(n, 1, generator=g, dtype=F64)
    eps = torch.randn(n, 1, generator=g, dtype=F64)
    t = torch.full((n,), tval, dtype=F64)

    def make_net(theta):
        return lambda x, tt, mu: theta[0] * x + theta[1] * mu + theta[2]

    def objective(theta):
        return loss.loss_at(make_net(theta), x0, t, eps, mu=mu).mean()

    theta0 = torch.zeros(3, dtype=F64)
    grad = torch.autograd.functional.jacobian(objective, theta0)
    hess = torch.autograd.functional.hessian(objective, theta0)
    theta = theta0 - torch.linalg.solve(hess, grad)
    D = Denoiser(make_net(theta), path, prediction=prediction, sigma_data=S)
    xs = torch.linspace(-2, 3, 11, dtype=F64)[:, None]
    mus = torch.linspace(3, -2, 11, dtype=F64)[:, None]
    tt = torch.full((11,), tval, dtype=F64)
    torch.testing.assert_close(D(xs, tt, mu=mus), exact_denoiser(path)(xs, tt, mus), rtol=0, atol=0.02)
    # the minimiser ignores mu once x is shifted: its mu coefficient is zero within MC error
    assert abs(float(theta[1])) < 0.02


def test_tools_without_mean_support_refuse_mean_reverting_paths():
    from polydiff.core import fit_solver, likelihood
    from polydiff.core.inverse import MatrixOperator, posterior_sample
    D = lambda x, t, **c: x  # noqa: E731
    x = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="posterior_sample does not support mean-reverting"):
        posterior_sample(D, torch.zeros(4, 2, dtype=torch.float64), MatrixOperator(torch.eye(2, dtype=torch.float64)),
                         path=P.OUVE(), method="dps", steps=2, sigma_y=0.1)
    with pytest.raises(ValueError, match="likelihood.nll does not support mean-reverting"):
        likelihood.nll(D, x, path=P.MeanRevertingVP())
    with pytest.raises(ValueError, match="fit_solver does not support mean-reverting"):
        fit_solver(D, x, path="grad_tts", steps=2)
