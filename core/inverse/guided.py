"""Gradient-guided posterior samplers: DPS, PiGDM, and their SMC corrections TDS and FK.

All are written as guided reverse steps on any path. A score correction delta ~ grad_x log p(y | x_t)
becomes a denoiser correction (sigma^2 / alpha) delta (Tweedie), and the step is the DDIM(eta)
step from (x_i, D) to grid point i + 1 (eta = 1: DDPM's ancestral kernel).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .base import Problem, log_normal, register, resample
from .operators import LinearOperator, SVDOperator, conjugate_gradient

Tensor = torch.Tensor


def _flat_norm(v: Tensor) -> Tensor:
    return v.flatten(1).norm(dim=1)


def _x0_weight(prob: Problem, i: int) -> float:
    """sigma^2 / alpha at grid point i (0 where alpha = 0: the guidance is dropped at zero SNR)."""
    a, s = prob.a[i], prob.s[i]
    return s * s / a if a > 0 else 0.0


# ============================================================================ DPS
@register("dps", level="forward", nfe_per_step=1, backward_per_step=1, noise_models=("gaussian", "poisson"))
def dps(prob: Problem, x: Tensor, scale: float = 0.3, eta: float = 1.0, ref_steps: Optional[int] = None) -> Tensor:
    """DPS: diffusion posterior sampling (Chung et al., ICLR 2023, Alg. 1 and 2).

    x_{i+1} = DDIM_eta(x_i, D(x_i)) - zeta grad_{x_i} ||y - A(D(x_i))|| with the non-squared norm of
    the official code (so the effective step is zeta / ||r|| times the gradient of ||r||^2 / 2).
    Poisson noise: the weighted norm ||y - A(D)||_Lambda, Lambda = diag(1 / (2 y)) (the paper's
    Alg. 2, y floored at 1/gain). Defaults: zeta = ``scale`` = 0.3 (official configs use 0.3-1.0 for
    1000 steps; on the MCGdiff mixture's development seeds 0.3 beats 1.0 at d = 8 and 80, and 3-30 are
    far worse), the same per step at any step count; the image restorations
    (``domains/images/restore.py``) pass 1.0. ``ref_steps`` = R rescales it to
    zeta_i = scale R (t_i - t_{i+1}) (R / steps on the uniform grid: the total guidance of R steps);
    on the MCGdiff mixture benchmark (development seeds) R = 1000 over-guides at 20 and 100 steps
    (the normalised step has a fixed length, so more of it means overshoot), hence off by default. Known to be biased (the likelihood is evaluated at the posterior
    mean, not integrated over p(x0 | x_t)). Cost: 1 NFE and 1 backward pass per step. Any
    differentiable operator, nonlinear included.
    """
    op = prob.op
    y = prob.y
    if prob.noise.name == "poisson":
        w = 1.0 / (2.0 * y.clamp_min(1.0 / prob.noise.gain))
        fn = lambda x0: ((y - op.A(x0)) ** 2 * w).flatten(1).sum(1).clamp_min(1e-30).sqrt()
    else:
        fn = lambda x0: _flat_norm(y - op.A(x0))
    if ref_steps is not None and not (isinstance(ref_steps, int) and ref_steps >= 1):
        raise ValueError(f"dps ref_steps must be None or an integer >= 1, got {ref_steps!r}")
    x = prob.s[0] * x
    for i in range(prob.n):
        x0, g, _ = prob.denoise_with_grad(x, i, fn)
        cx, c0, cn = prob.ddim_coefs(i, i + 1, eta)
        zeta = scale if ref_steps is None else scale * ref_steps * float(prob.t[i] - prob.t[i + 1])
        x = cx * x + c0 * x0 + cn * prob.randn(x.shape) - zeta * g
    return x


# ============================================================================ PiGDM
def _pigdm_solve(prob: Problem, e: Tensor, r2: float) -> Tensor:
    """(r2 A A^T + sigma_y^2 I)^{-1} e: closed form with an SVD, conjugate gradients otherwise."""
    op = prob.op
    s2 = prob.sigma_y ** 2
    if isinstance(op, SVDOperator):
        sv = op.singular_values.to(e.device, e.dtype)
        c = op.Ut(e)
        lam = torch.full((op.d_y,), s2, dtype=e.dtype, device=e.device)
        lam[: sv.shape[0]] += r2 * sv * sv
        inv = torch.where(lam > 0, 1.0 / torch.where(lam > 0, lam, torch.ones_like(lam)), torch.zeros_like(lam))
        return op.U(c * inv)
    return conjugate_gradient(lambda v: r2 * op.AAt(v) + s2 * v, e, torch.zeros_like(e), tol=1e-8, max_iter=100)


def _r2(prob: Problem, i: int, data_var: float) -> float:
    """Variance of the Gaussian approximation of p(x0 | x_t): data_var varsigma^2 / (data_var + varsigma^2)."""
    v = prob.ve[i]
    if not math.isfinite(v):
        return data_var
    return data_var * v * v / (data_var + v * v)


@register("pigdm", level="linear", nfe_per_step=1, backward_per_step=1)
def pigdm(prob: Problem, x: Tensor, eta: float = 1.0, scale: float = 1.0, data_var: float = 1.0) -> Tensor:
    """PiGDM: pseudo-inverse guided diffusion (Song, Vahdat, Mardani & Kautz, ICLR 2023).

    p(x0 | x_t) ~ N(D(x_t), r_t^2 I) with r_t^2 = data_var varsigma^2 / (data_var + varsigma^2)
    (varsigma = sigma/alpha; exact for a Gaussian prior with covariance data_var I), so
    grad log p(y | x_t) = (dD/dx)^T A^T (r_t^2 A A^T + sigma_y^2 I)^{-1} (y - A D), one
    vector-Jacobian product through the network. The correction enters the denoiser as
    (sigma^2/alpha) * scale * grad, followed by a DDIM(eta) step. The inverse is closed form with an
    SVD and conjugate gradients on A A^T otherwise (so a linear operator suffices; noiseless with
    A^+ it reduces to the paper's (A^+ y - A^+ A D) form). Defaults: eta = 1, scale = 1 (the
    paper's adaptive weight is exactly this Tweedie factor on a VP path); ~100 steps in the paper.
    Cost: 1 NFE and 1 backward pass per step.
    """
    op: LinearOperator = prob.op
    y = prob.y
    x = prob.s[0] * x
    for i in range(prob.n):
        r2 = _r2(prob, i, data_var)
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            x0 = prob.denoise(xr, i)
            with torch.no_grad():
                u = op.At(_pigdm_solve(prob, y - op.A(x0), r2))
            (g,) = torch.autograd.grad((x0 * u).sum(), xr)
        prob.backward += 1
        x0 = x0.detach() + scale * _x0_weight(prob, i) * g
        cx, c0, cn = prob.ddim_coefs(i, i + 1, eta)
        x = cx * x + c0 * x0 + cn * prob.randn(x.shape)
    return x


# ============================================================================ twisted SMC (TDS, FK)
def _twist(prob: Problem, data_var: float, y: Tensor,
           isotropic: bool = False) -> Callable[[int], Callable[[Tensor], Tensor]]:
    """log p~_i(y | x_i) as a function of x0 = D(x_i): Gaussian with covariance r_i^2 A A^T + sigma_y^2 I
    (SVD operators; exact for an isotropic Gaussian prior) or (r_i^2 + sigma_y^2) I (any operator)."""
    op = prob.op
    s2 = prob.sigma_y ** 2

    def at(i: int):
        r2 = _r2(prob, i, data_var) if prob.s[i] > 0 else 0.0
        if isinstance(op, SVDOperator) and not isotropic:
            sv = op.singular_values.to(prob.device, prob.dtype)
            lam = torch.full((op.d_y,), s2, dtype=prob.dtype, device=prob.device)
            lam[: sv.shape[0]] += r2 * sv * sv
            inv = torch.where(lam > 0, 1.0 / torch.where(lam > 0, lam, torch.ones_like(lam)), torch.zeros_like(lam))
            return lambda x0: -0.5 * (op.Ut(y - op.A(x0)) ** 2 * inv).sum(1)
        return lambda x0: -0.5 * ((y - op.A(x0)) ** 2).flatten(1).sum(1) / (r2 + s2)
    return at


def _check_smc(name: str, data_var: float, ess_threshold: float, eta: float, order: int) -> None:
    if not data_var > 0:
        raise ValueError(f"{name} needs data_var > 0, got {data_var}")
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"{name} needs ess_threshold in [0, 1], got {ess_threshold}")
    if not 0 < eta <= 1:
        raise ValueError(f"{name} needs eta in (0, 1], got {eta}")
    if order not in (1, 2):
        raise ValueError(f"{name} needs order 1 or 2, got {order!r}")


def _twisted_smc(prob: Problem, x: Tensor, data_var: float, ess_threshold: float, eta: float,
                 proposal: Callable[[int, Tensor, Tensor, Tensor], Tensor], isotropic: bool = False,
                 order: int = 2, correct_start: bool = True) -> Tensor:
    """SMC over the reverse chain with targets p_i(x) p~_i(y | x) and a guided proposal.

    proposal(i, x, x0, grad log p~_i) -> the proposal mean's denoiser correction (added to x0).
    The reverse kernel is the DDIM(eta) step, with the second-order multistep x0 estimate
    (``Problem.x0_multistep``) when order = 2; either is a Gaussian kernel of the particle's own
    history, so the weights stay exact. Weights: p(x'|x) p~_{i+1}(y|x') / (q(x'|x) p~_i(y|x)); the
    last step (to sigma = 0) is the unguided first-order x0 = D(x), weighted by the exact
    likelihood; ``correct_start`` adds ``Problem.start_log_weight`` at t_0. Systematic resampling
    when the ESS falls below ess_threshold * K; one sample per row drawn from the final weights.
    """
    B, K = prob.B, prob.K
    y = prob.expand(prob.y)
    twist = _twist(prob, data_var, y, isotropic)
    x = prob.s[0] * x
    x0, g, lp = prob.denoise_with_grad(x, 0, twist(0))
    logw = torch.zeros(B * K, dtype=prob.dtype, device=prob.device)
    if correct_start:
        logw = logw + prob.start_log_weight(x, x0)
    x0_prev = None
    final = None
    for i in range(prob.n):
        cx, c0, cn = prob.ddim_coefs(i, i + 1, eta)
        x0k = prob.x0_multistep(i, x0, x0_prev) if order == 2 else x0
        mu = cx * x + c0 * x0k
        if prob.s[i + 1] == 0 or cn == 0:
            x_new = mu
        else:
            mg = mu + c0 * proposal(i, x, x0, g)
            x_new = mg + cn * prob.randn(x.shape)
            v = cn * cn
            logw = logw + (log_normal(x_new, mu, torch.tensor(v)) - log_normal(x_new, mg, torch.tensor(v))).flatten(1).sum(1)
        if prob.s[i + 1] == 0:
            lp_new = prob.noise.log_likelihood(y, prob.op.A(x_new)) if prob.sigma_y > 0 else twist(i + 1)(x_new)
            logw = logw + lp_new - lp
            final = x_new
            break
        x0_new, g_new, lp_new = prob.denoise_with_grad(x_new, i + 1, twist(i + 1))
        logw = logw + lp_new - lp
        x, x0, g, lp, x0_prev = x_new, x0_new, g_new, lp_new, x0
        if i + 1 < prob.n:
            lw = logw.reshape(B, K)
            w = torch.softmax(lw, 1)
            if bool(((1.0 / (w * w).sum(1)) < ess_threshold * K).any()):
                idx = resample(lw, prob.generator, K)
                x, x0, g, lp, x0_prev = x[idx], x0[idx], g[idx], lp[idx], x0_prev[idx]
                logw = torch.zeros_like(logw)
    if final is None:   # a grid that does not reach sigma = 0: weight by the twist at the last point
        final = x
    return prob.finish(final, logw.reshape(B, K))


@register("tds", level="forward", particles=True, nfe_per_step=1, backward_per_step=1)
def tds(prob: Problem, x: Tensor, data_var: float = 1.0, ess_threshold: float = 0.5, eta: float = 1.0,
        order: int = 2, correct_start: bool = True) -> Tensor:
    """TDS: twisted diffusion sampler (Wu, Trippe, Naesseth, Blei & Cunningham, NeurIPS 2023).

    Twist p~_i(y | x_i) = N(y; A D(x_i), r_i^2 A A^T + sigma_y^2 I) with the PiGDM variance r_i^2
    (for operators without an SVD, (r_i^2 + sigma_y^2) I, the paper's isotropic form); the proposal
    is the reverse kernel with its mean shifted by (sigma^2/alpha) grad log p~ (Tweedie), and the
    importance weights make the particle system target the posterior exactly as K grows.
    Resampling when ESS < 0.5 K (paper). ``data_var`` sets r_i^2 = data_var varsigma^2 / (data_var +
    varsigma^2): the data's variance per coordinate keeps the twist flat at high noise, where the
    mode of a multimodal prior is not yet decided (on the MCGdiff mixture, data_var = 1 makes the
    first step's ESS about 1% of K; the prior's variance keeps it near K). Beyond the paper (off:
    order=1, correct_start=False), ``order`` = 2 uses the second-order multistep x0 estimate in the
    kernel and ``correct_start`` weights the N(0, sigma_0^2) start by p_{t_0} / N(0, sigma_0^2)
    (see ``mcgdiff``; both keep the target). Cost: K NFE and K backward passes per step per sample.
    """
    def prop(i, x, x0, g):
        return _x0_weight(prob, i) * g
    _check_smc("tds", data_var, ess_threshold, eta, order)
    return _twisted_smc(prob, x, data_var, ess_threshold, eta, prop, order=order, correct_start=correct_start)


@register("fk", level="forward", particles=True, nfe_per_step=1, backward_per_step=1)
def fk(prob: Problem, x: Tensor, scale: float = 1.0, data_var: float = 1.0, ess_threshold: float = 0.5,
       eta: float = 1.0, order: int = 2, correct_start: bool = True) -> Tensor:
    """FK-corrected DPS: DPS-guided particles reweighted to the posterior (Feynman-Kac correctors,
    Skreta et al., ICML 2025; discrete-time weights as in twisted SMC).

    Proposal: the DDPM(eta) kernel whose mean is moved along DPS's direction -grad ||y - A D(x_i)||
    (the non-squared norm: unit-length residual, as DPS), with a step that follows the noise level
    instead of DPS's constant zeta (a constant step is far larger than the kernel's noise late in
    the chain, which makes importance weights degenerate, so no particle count corrects it):
    step_i = scale * w_i / sqrt(r_i^2 + sigma_y^2), w_i = c0_i sigma_i^2 / alpha_i the Tweedie
    factor and r_i^2 the PiGDM variance (so for a residual of typical size the shift is the exact
    guided-score shift). Potential: p~_i(y | x) = N(y; A D(x_i), (r_i^2 + sigma_y^2) I), which needs
    only A (any differentiable operator). Weights: p(x'|x) p~_{i+1}(y|x') / (q(x'|x) p~_i(y|x)), the
    final step weighted by the exact likelihood, systematic resampling when ESS < 0.5 K; the
    particle system targets the posterior of the discretised model as K grows, for any ``scale``
    (which changes only the variance of the weights). With one backward pass per step both the
    DPS direction and the potential's gradient come out (grad ||r|| = -(c / ||r||) grad log p~).
    ``data_var``, ``order`` and ``correct_start`` as in ``tds``. Cost: K NFE and K backward passes
    per step per sample.
    """
    def prop(i, x, x0, g):
        # twist gradient g = grad log p~ = -(||r|| / c) grad ||r||; DPS direction -grad ||r|| = g c / ||r||
        r = (prob.expand(prob.y) - prob.op.A(x0)).flatten(1).norm(dim=1).clamp_min(1e-12)
        c = (_r2(prob, i, data_var) if prob.s[i] > 0 else 0.0) + prob.sigma_y ** 2
        step = scale * _x0_weight(prob, i) / math.sqrt(max(c, 1e-300))    # in x0 units (times c0 below)
        return step * g * (c / r).reshape((-1,) + (1,) * (g.dim() - 1))
    _check_smc("fk", data_var, ess_threshold, eta, order)
    return _twisted_smc(prob, x, data_var, ess_threshold, eta, prop, isotropic=True, order=order,
                        correct_start=correct_start)


__all__ = ["dps", "pigdm", "tds", "fk"]
