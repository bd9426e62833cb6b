"""Solvers that use the semi-linear structure of diffusion ODEs (exponential integrators and kin).

All are written for any Gaussian path through alpha, sigma and lambda = log(alpha/sigma). With
h = lambda_t - lambda_s > 0 for a step from s to t (t closer to data), the exact solution of the
probability-flow ODE in data prediction is
    x_t = (sigma_t / sigma_s) x_s + sigma_t * int_{lambda_s}^{lambda_t} e^lambda D(lambda) d lambda,
and the methods differ in how they approximate D along the step. A step that ends at sigma = 0
returns alpha_t * D (the limit of every method), so no solver evaluates the denoiser at sigma = 0.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from .base import Context, register

Tensor = torch.Tensor


def _phis(h: Tensor):
    """phi_1 = e^{-h} - 1, phi_2 = phi_1/h + 1, phi_3 = phi_2/h - 1/2 (DPM-Solver++ notation)."""
    p1 = torch.expm1(-h)
    p2 = p1 / h + 1.0
    p3 = p2 / h - 0.5
    return p1, p2, p3


def _first_order(ctx: Context, i: int, x: Tensor, D: Tensor, overwrite: bool = False) -> Tensor:
    """DDIM / DPM-Solver-1: x_t = (sigma_t/sigma_s) x_s + alpha_t (1 - e^{-h}) D.

    overwrite: the caller no longer needs x, so the result may be written into it (``Context.lin``).
    """
    if ctx.ends_at_data[i]:
        return ctx.lin((ctx.alpha[i + 1], D))
    return ctx.lin((ctx.sigma[i + 1] / ctx.sigma[i], x), (ctx.alpha[i + 1] * (1 - ctx.exp_neg_h(i)), D),
                   into=x if overwrite else None)


@register("ddim", nfe_per_step=1, order=1)
def ddim(ctx: Context, x: Tensor, eta: float = 0.0, x0_var: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """DDIM (Song, Meng & Ermon, ICLR 2021); eta = 0 deterministic, eta = 1 is ancestral DDPM.

    x0_var: the per-dimension posterior variance v(t) of x0 (``X0Variance``); each step then adds
    the moment-matched spread b^2 v(s) of Analytic-DPM (Bao et al., ICLR 2022), the last step too.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    for i in range(ctx.n):
        D = ctx.denoise(x, i)
        if x0_var is not None:
            x = _ddim_step(ctx, i, x, D, eta, x0_var(ctx.t[i]))
        elif ctx.ends_at_data[i] or eta == 0:
            x = _first_order(ctx, i, x, D, True)
        else:
            x = _ddim_step(ctx, i, x, D, eta)
        ctx.report(i, x, D)
    return x


def _ddim_step(ctx: Context, i: int, x: Tensor, D: Tensor, eta: float, v: Optional[Tensor] = None) -> Tensor:
    """x_t = alpha_t D + sqrt(sigma_t^2 - c^2) eps-hat + c z with c = eta sigma_t sqrt(1 - e^{-2h});
    eta = 1 is the exact ancestral step q(x_t | x_s, x0 = D), valid from zero SNR too. With the
    posterior variance v of x0 at s, the noise grows to sqrt(c^2 + b^2 v), b the coefficient on D."""
    a_s, s_s, a_t, s_t = ctx.alpha[i], ctx.sigma[i], ctx.alpha[i + 1], ctx.sigma[i + 1]
    e = ctx.exp_neg_h(i)
    c = (eta * s_t * torch.sqrt((1 - e * e).clamp_min(0))).clamp(max=s_t)
    keep = torch.sqrt((s_t * s_t - c * c).clamp_min(0))
    b = a_t - keep * a_s / s_s
    noise = c if v is None else torch.sqrt(c * c + b * b * torch.as_tensor(v, dtype=c.dtype, device=c.device))
    return ctx.lin((keep / s_s, x), (b, D), (noise, ctx.randn(x)))


@register("ddpm", nfe_per_step=1, order=1, stochastic=True)
def ddpm(ctx: Context, x: Tensor, x0_var: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """Ancestral sampling with the exact Gaussian posterior q(x_t | x_s, x0 = D) (Ho et al. 2020).

    x0_var: the posterior variance of x0 (``X0Variance``) for Analytic-DPM's moment-matched steps.
    """
    return ddim(ctx, x, eta=1.0, x0_var=x0_var)


@register("dpmpp_2m", nfe_per_step=1, order=2)
def dpmpp_2m(ctx: Context, x: Tensor) -> Tensor:
    """DPM-Solver++(2M), multistep data prediction (Lu et al. 2022, arXiv 2211.01095, Alg. 2)."""
    D_prev = None
    for i in range(ctx.n):
        D = ctx.denoise(x, i)
        if D_prev is None or ctx.ends_at_data[i]:
            x_new = _first_order(ctx, i, x, D, True)
        else:
            h = ctx.lam[i + 1] - ctx.lam[i]
            r = (ctx.lam_stage[i] - ctx.lam_stage[i - 1]) / (ctx.lam_stage[i + 1] - ctx.lam_stage[i])
            w = ctx.alpha[i + 1] * (-torch.expm1(-h))
            x_new = ctx.lin((ctx.sigma[i + 1] / ctx.sigma[i], x), (w * (1 + 0.5 / r), D), (-w * 0.5 / r, D_prev),
                            into=x)
        x, D_prev = x_new, D
        ctx.report(i, x, D)
    return x


def _taylor_step(ctx: Context, i: int, x: Tensor, Ds: list, order: int) -> Tensor:
    """Exponential-integrator step of the given order from backward differences of D in lambda.

    Ds = [D_i, D_{i-1}, D_{i-2}]; the combination of D's is formed on the host as coefficients.
    """
    h = ctx.lam[i + 1] - ctx.lam[i]
    hs = ctx.lam_stage[i + 1] - ctx.lam_stage[i]
    p1, _, _ = _phis(h)
    _, p2, p3 = _phis(hs)
    a_t = ctx.alpha[i + 1]
    coef = [-a_t * p1, torch.zeros_like(h), torch.zeros_like(h)]
    if order == 2:
        r0 = (ctx.lam_stage[i] - ctx.lam_stage[i - 1]) / hs
        # D1 = (D0 - D1) / r0, term + alpha_t phi_2 D1
        coef[0] = coef[0] + a_t * p2 / r0
        coef[1] = coef[1] - a_t * p2 / r0
    elif order == 3:
        r0 = (ctx.lam_stage[i] - ctx.lam_stage[i - 1]) / hs
        r1 = (ctx.lam_stage[i - 1] - ctx.lam_stage[i - 2]) / hs
        # D1_0 = (D0 - Dp)/r0, D1_1 = (Dp - Dpp)/r1, D1 = D1_0 + r0/(r0+r1) (D1_0 - D1_1) ~ h D',
        # D2 = (D1_0 - D1_1)/(r0+r1) ~ h^2 D''/2. The exact step has -alpha_t phi_3 h^2 D'', so D2 enters
        # twice: with D2 once (as in the reference code of Lu et al.) the step is only second order.
        d10 = [1 / r0, -1 / r0, torch.zeros_like(h)]
        d11 = [torch.zeros_like(h), 1 / r1, -1 / r1]
        k = r0 / (r0 + r1)
        for j in range(3):
            d1 = d10[j] + k * (d10[j] - d11[j])
            d2 = (d10[j] - d11[j]) / (r0 + r1)
            coef[j] = coef[j] + a_t * p2 * d1 - 2.0 * a_t * p3 * d2
    terms = [(ctx.sigma[i + 1] / ctx.sigma[i], x)] + [(coef[j], Ds[j]) for j in range(order)]
    return ctx.lin(*terms, into=x)     # the caller (dpmpp_3m) no longer needs x


@register("dpmpp_3m", nfe_per_step=1, order=3)
def dpmpp_3m(ctx: Context, x: Tensor) -> Tensor:
    """DPM-Solver++(3M), third-order multistep data prediction (Lu et al. 2022), warm-started at orders 1, 2."""
    hist: list = []
    for i in range(ctx.n):
        D = ctx.denoise(x, i)
        hist = [D] + hist[:2]
        if ctx.ends_at_data[i]:
            x = _first_order(ctx, i, x, D)
        else:
            order = min(3, len(hist))
            x = _first_order(ctx, i, x, D, True) if order == 1 else _taylor_step(ctx, i, x, hist, order)
        ctx.report(i, x, D)
    return x


@register("dpmpp_2m_sde", nfe_per_step=1, order=1, stochastic=True)
def dpmpp_2m_sde(ctx: Context, x: Tensor, eta: float = 1.0) -> Tensor:
    """SDE-DPM-Solver++(2M) with a midpoint second-order term (Lu et al. 2022; Gonzalez et al. 2023).

    eta = 0 gives DPM-Solver++(2M); eta = 1 follows the reverse SDE.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    D_prev = None
    for i in range(ctx.n):
        D = ctx.denoise(x, i)
        if ctx.ends_at_data[i]:
            x = _first_order(ctx, i, x, D)
        else:
            h = ctx.lam[i + 1] - ctx.lam[i]
            e_eta = torch.exp(-eta * h)
            w = ctx.alpha[i + 1] * (-torch.expm1(-(1 + eta) * h))
            terms = [(ctx.sigma[i + 1] / ctx.sigma[i] * e_eta, x), (w, D)]
            if D_prev is not None:
                r = (ctx.lam_stage[i] - ctx.lam_stage[i - 1]) / (ctx.lam_stage[i + 1] - ctx.lam_stage[i])
                terms += [(0.5 * w / r, D), (-0.5 * w / r, D_prev)]
            if eta > 0:
                terms.append((ctx.sigma[i + 1] * torch.sqrt(-torch.expm1(-2 * eta * h)), ctx.randn(x)))
            x = ctx.lin(*terms)
        D_prev = D
        ctx.report(i, x, D)
    return x


def _stage(ctx: Context, i: int, frac: float):
    """Time row, alpha, sigma and stage-lambda of an intermediate point at lambda_s + frac * h."""
    lam = ctx.lam_stage[i] + frac * (ctx.lam_stage[i + 1] - ctx.lam_stage[i])
    t = ctx.time_at_logsnr(lam)
    return t, ctx.path.alpha(t), ctx.path.sigma(t)


def _step_to(ctx: Context, i: int, x: Tensor, a_u: Tensor, s_u: Tensor, D: Tensor) -> Tensor:
    """First-order move from grid point i to an intermediate point u."""
    e = (ctx.alpha[i] * s_u) / (ctx.sigma[i] * a_u)
    return ctx.lin((s_u / ctx.sigma[i], x), (a_u * (1 - e), D))


@register("dpm_solver_2", nfe_per_step=2, order=2)
def dpm_solver_2(ctx: Context, x: Tensor, r1: float = 0.5) -> Tensor:
    """DPM-Solver++(2S), singlestep second order in data prediction (Lu et al. 2022, Alg. 1)."""
    if not 0 < r1 < 1:
        raise ValueError(f"r1 must be in (0, 1), got {r1}")
    for i in range(ctx.n):
        D = ctx.denoise(x, i)
        x = _first_order(ctx, i, x, D) if ctx.ends_at_data[i] else _dpm2_step(ctx, i, x, D, r1)
        ctx.report(i, x, D)
    return x


def _dpm2_step(ctx: Context, i: int, x: Tensor, D: Tensor, r1: float = 0.5) -> Tensor:
    """One DPM-Solver++(2S) step from grid point i (D = denoiser at x) to i+1: one more evaluation."""
    t_u, a_u, s_u = _stage(ctx, i, r1)
    u = _step_to(ctx, i, x, a_u, s_u, D)
    D_u = ctx.denoise(u, i, t_u)
    h = ctx.lam[i + 1] - ctx.lam[i]
    w = ctx.alpha[i + 1] * (-torch.expm1(-h))
    return ctx.lin((ctx.sigma[i + 1] / ctx.sigma[i], x), (w * (1 - 0.5 / r1), D), (w * 0.5 / r1, D_u))


@register("dpm_solver_3", nfe_per_step=3, order=3)
def dpm_solver_3(ctx: Context, x: Tensor, r1: float = 1 / 3, r2: float = 2 / 3) -> Tensor:
    """DPM-Solver++(3S), singlestep third order in data prediction (Lu et al. 2022; stages at r1, r2)."""
    if not 0 < r1 < r2 < 1:
        raise ValueError(f"need 0 < r1 < r2 < 1, got {r1}, {r2}")
    for i in range(ctx.n):
        D = ctx.denoise(x, i)
        if ctx.ends_at_data[i]:
            x = _first_order(ctx, i, x, D)
        else:
            hs = ctx.lam_stage[i + 1] - ctx.lam_stage[i]
            t1, a1, s1 = _stage(ctx, i, r1)
            u1 = _step_to(ctx, i, x, a1, s1, D)
            D1 = ctx.denoise(u1, i, t1)
            t2, a2, s2 = _stage(ctx, i, r2)
            e2 = (ctx.alpha[i] * s2) / (ctx.sigma[i] * a2)
            phi22 = torch.expm1(-r2 * hs) / (r2 * hs) + 1.0
            u2 = ctx.lin((s2 / ctx.sigma[i], x), (a2 * (1 - e2) - (r2 / r1) * a2 * phi22, D),
                         ((r2 / r1) * a2 * phi22, D1))
            D2 = ctx.denoise(u2, i, t2)
            h = ctx.lam[i + 1] - ctx.lam[i]
            _, p2, _ = _phis(hs)
            a_t = ctx.alpha[i + 1]
            x = ctx.lin((ctx.sigma[i + 1] / ctx.sigma[i], x), (a_t * (-torch.expm1(-h)) - a_t * p2 / r2, D),
                        (a_t * p2 / r2, D2))
        ctx.report(i, x, D)
    return x


@register("unipc", nfe_per_step=1, order=4)
def unipc(ctx: Context, x: Tensor, order: int = 3, variant: str = "bh2", corrector: bool = True) -> Tensor:
    """UniPC: UniP predictor + UniC corrector, data prediction (Zhao et al., NeurIPS 2023).

    The corrector re-uses the evaluation at the predicted point, so it costs no extra NFE, and raises
    the order by one (Zhao et al., Thm 3.3): UniP-3 + UniC is order 4 once the history is full, and
    the warm-up steps (UniP-1 + UniC, UniP-2 + UniC) keep the global error O(h^3). Orders warm up
    from 1 and fall back to first order on a step that ends at sigma = 0.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"unipc order must be 1, 2 or 3, got {order}")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"unipc variant must be 'bh1' or 'bh2', got {variant!r}")
    hist: list = []      # D at previous grid points, newest first
    prev = None          # (x_s, i_s, order, hist_at_s) of the last predictor step, for the corrector
    for i in range(ctx.n):
        D = ctx.denoise(x, i)
        if corrector and prev is not None:
            x = _unipc_update(ctx, prev[1], prev[0], prev[3], prev[2], variant, D_t=D)
        hist = [D] + hist[: order - 1]
        if ctx.ends_at_data[i]:
            x_new = _first_order(ctx, i, x, D)
            prev = None
        else:
            p = min(order, len(hist))
            x_new = _unipc_update(ctx, i, x, hist, p, variant)
            prev = (x, i, p, hist)
        x = x_new
        ctx.report(i, x, D)
    return x


def _unipc_update(ctx: Context, i: int, x: Tensor, hist: list, p: int, variant: str,
                  D_t: Tensor = None) -> Tensor:
    """UniP (D_t None) or UniC (D_t = model output at the predicted point) from grid point i to i+1."""
    h = ctx.lam[i + 1] - ctx.lam[i]
    hs = ctx.lam_stage[i + 1] - ctx.lam_stage[i]
    a_t = ctx.alpha[i + 1]
    hh = -hs
    h_phi_1 = torch.expm1(hh)
    B_h = hh if variant == "bh1" else torch.expm1(hh)
    rks = [(ctx.lam_stage[i - k] - ctx.lam_stage[i]) / hs for k in range(1, p)] + [torch.ones_like(h)]
    R, b = [], []
    h_phi_k, fact = h_phi_1 / hh - 1.0, 1.0
    for k in range(1, p + 1):
        R.append(torch.stack([r ** (k - 1) for r in rks], -1))
        b.append(h_phi_k * fact / B_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    R = torch.stack(R, -2)            # (Bg, p, p)
    b = torch.stack(b, -1)            # (Bg, p)
    D0 = hist[0]
    coef = {0: a_t * (-torch.expm1(-h))}   # first-order part on D0 with the exact h
    terms = [(ctx.sigma[i + 1] / ctx.sigma[i], x)]
    n_prev = p - 1
    if D_t is None:
        if n_prev == 0:
            rhos = []
        elif n_prev == 1:
            rhos = [torch.full_like(h, 0.5)]
        else:
            sol = torch.linalg.solve(R[..., :-1, :-1], b[..., :-1])
            rhos = [sol[..., k] for k in range(n_prev)]
    else:
        if p == 1:
            rhos = [torch.full_like(h, 0.5)]
        else:
            sol = torch.linalg.solve(R, b)
            rhos = [sol[..., k] for k in range(p)]
    # D1_k = (D_{-k} - D0) / r_k for the history, D1_t = D_t - D0 for the corrector
    extra = {}
    for k in range(min(n_prev, len(rhos))):
        w = -a_t * B_h * rhos[k] / rks[k]
        extra[k + 1] = extra.get(k + 1, 0) + w
        coef[0] = coef[0] - w
    out_terms = terms + [(coef[0], D0)] + [(w, hist[k]) for k, w in extra.items()]
    if D_t is not None:
        w = -a_t * B_h * rhos[-1]
        out_terms[1] = (coef[0] - w, D0)
        out_terms.append((w, D_t))
    return ctx.lin(*out_terms)


_GL_NODES, _GL_WEIGHTS = (torch.from_numpy(a).to(torch.float64) for a in np.polynomial.legendre.leggauss(16))


@register("deis", nfe_per_step=1, order=3)
def deis(ctx: Context, x: Tensor, order: int = 3, basis: str = "logsnr") -> Tensor:
    """DEIS, the Adams-Bashforth exponential integrator on eps (Zhang & Chen, ICLR 2023).

    In the scaled state y = x/alpha with rho = sigma/alpha, dy/drho = eps-hat; eps-hat is
    extrapolated by the Lagrange polynomial through the last ``order`` points in ``basis``
    ("t": the paper's tAB-DEIS; "logsnr": polynomial in lambda) and integrated in rho to machine
    precision (16-point Gauss-Legendre in lambda). First-order steps are DDIM steps, exact from zero SNR.
    """
    if order not in (1, 2, 3, 4):
        raise ValueError(f"deis order must be in 1..4, got {order}")
    if basis not in ("t", "logsnr"):
        raise ValueError(f"deis basis must be 't' or 'logsnr', got {basis!r}")
    nodes_src = ctx.t if basis == "t" else ctx.lam_stage
    hist: list = []  # (eps, grid index), newest first
    for i in range(ctx.n):
        D = ctx.denoise(x, i)
        eps = (x - ctx.c(ctx.alpha[i]) * D) / ctx.c(ctx.sigma[i]) if not ctx.ends_at_data[i] else None
        hist = [(eps, i)] + hist[: order - 1]
        p = len(hist)
        if ctx.ends_at_data[i] or p == 1:
            x = _first_order(ctx, i, x, D)
        else:
            # int eps d rho over the step, rho = e^{-lambda}, by Gauss-Legendre in lambda (the
            # integrand, polynomial in lambda or t times e^{-lambda}, is smooth there)
            lam_s, lam_t = ctx.lam[i], ctx.lam[i + 1]
            lam_q = 0.5 * (lam_t + lam_s) + 0.5 * (lam_t - lam_s) * _GL_NODES.to(lam_s)[:, None]   # (16, Bg)
            w_q = -0.5 * (lam_t - lam_s) * _GL_WEIGHTS.to(lam_s)[:, None] * torch.exp(-lam_q)
            u_q = ctx.time_at_logsnr(lam_q) if basis == "t" else lam_q
            pts = [nodes_src[j] for _, j in hist]
            terms = [(ctx.alpha[i + 1] / ctx.alpha[i], x)]
            for a, (e_a, _) in enumerate(hist):
                ell = torch.ones_like(u_q)
                for b_, pb in enumerate(pts):
                    if b_ != a:
                        ell = ell * (u_q - pb) / (pts[a] - pb)
                terms.append((ctx.alpha[i + 1] * (w_q * ell).sum(0), e_a))
            x = ctx.lin(*terms)
        ctx.report(i, x, D)
    return x


_AB = {1: [1.0], 2: [1.5, -0.5], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


@register("ipndm", nfe_per_step=1, order=4)
def ipndm(ctx: Context, x: Tensor, order: int = 4) -> Tensor:
    """Improved PNDM: fixed-coefficient Adams-Bashforth on eps in (x/alpha, sigma/alpha), warm-started
    at lower orders (Zhang & Chen 2023, App.; Liu et al., "Pseudo Numerical Methods", ICLR 2022).

    The coefficients are those of equal steps in sigma/alpha: order ``order`` on such grids, order 2
    on grids whose steps in sigma/alpha vary smoothly (logsnr, karras), like its warm-up."""
    if order not in _AB:
        raise ValueError(f"ipndm order must be in 1..4, got {order}")
    hist: list = []
    for i in range(ctx.n):
        D = ctx.denoise(x, i)
        if ctx.ends_at_data[i]:
            x = _first_order(ctx, i, x, D)
        else:
            eps = ctx.lin((1 / ctx.sigma[i], x), (-ctx.alpha[i] / ctx.sigma[i], D))
            hist = [eps] + hist[: order - 1]
            p = len(hist)
            if p == 1:
                x = _first_order(ctx, i, x, D)
            else:
                drho = ctx.sigma[i + 1] / ctx.alpha[i + 1] - ctx.sigma[i] / ctx.alpha[i]
                terms = [(ctx.alpha[i + 1] / ctx.alpha[i], x)]
                terms += [(ctx.alpha[i + 1] * drho * c, e) for c, e in zip(_AB[p], hist)]
                x = ctx.lin(*terms)
        ctx.report(i, x, D)
    return x

