"""Stochastic samplers: EDM's Heun with churn, Euler-Maruyama on the reverse SDE, and predictor-corrector.

The reverse SDE of a path with forward SDE dx = f x dt + g dW is
    dx = [f x - g^2 score] dt + g dW-bar,   score = -eps-hat / sigma,
with f = alpha'/alpha and g^2 = -2 sigma^2 lambda' (Song et al., ICLR 2021). A step that starts
where alpha = 0 (zero SNR, f infinite) is taken as an exact ancestral step instead; a step that ends
at sigma = 0 returns alpha * D (Tweedie's denoised estimate) without adding noise.
"""
from __future__ import annotations

import math

import torch

from .base import Context, register
from .exponential import _ddim_step, _dpm2_step, _first_order

Tensor = torch.Tensor


def _em_step(ctx: Context, i: int, x: Tensor, D: Tensor) -> Tensor:
    """One Euler-Maruyama step of the reverse SDE from grid point i to i+1."""
    if ctx.ends_at_data[i]:
        return _first_order(ctx, i, x, D)
    t = ctx.t[i]
    if ctx.starts_at_zero_snr[i]:
        return _ddim_step(ctx, i, x, D, eta=1.0)
    a, s = ctx.alpha[i], ctx.sigma[i]
    f = ctx.path.d_alpha(t) / a
    g2 = -2.0 * s * s * ctx.path.d_logsnr(t)
    dt = ctx.t[i] - ctx.t[i + 1]              # > 0, time runs backwards
    # x - dt (f x + g^2 eps/sigma) + sqrt(g^2 dt) z, with eps = (x - a D)/s
    cx = 1.0 - dt * (f + g2 / (s * s))
    cD = dt * g2 * a / (s * s)
    return ctx.lin((cx, x), (cD, D), (torch.sqrt(g2 * dt), ctx.randn(x)))


@register("euler_maruyama", nfe_per_step=1, order=1, stochastic=True)
def euler_maruyama(ctx: Context, x: Tensor) -> Tensor:
    """Euler-Maruyama on the reverse-time SDE (Song et al. 2021)."""
    for i in range(ctx.n):
        D = ctx.denoise(x, i)
        x = _em_step(ctx, i, x, D)
        ctx.report(i, x, D)
    return x


@register("pc", nfe_per_step=2, order=1, stochastic=True)
def pc(ctx: Context, x: Tensor, snr: float = 0.16, corrector_steps: int = 1) -> Tensor:
    """Predictor-corrector (Song et al. 2021, Alg. 1-2): Langevin corrector(s) then a reverse-SDE
    predictor at each grid point (the order of Song et al.'s code).

    Langevin step size eps = 2 (snr sigma_t)^2: Song et al.'s rule eps = 2 (snr |z| / |score|)^2 with
    |z|^2 and |score|^2 replaced by their expectations d and d / sigma_t^2 (an upper bound on the
    Fisher information, reached at low noise). A step size that does not depend on the state keeps
    the corrector a proper Langevin step and per-sample; the ratio of the sample's own norms blows up
    in low dimensions, where |score| is often near 0.
    """
    if snr <= 0 or corrector_steps < 0:
        raise ValueError("pc needs snr > 0 and corrector_steps >= 0")
    for i in range(ctx.n):
        a, s = ctx.alpha[i], ctx.sigma[i]
        step = 2.0 * (snr * s) ** 2
        for _ in range(corrector_steps):
            D = ctx.denoise(x, i)
            # x + step * score + sqrt(2 step) z, score = (alpha D - x) / sigma^2
            x = ctx.lin((1.0 - step / (s * s), x), (step * a / (s * s), D), (torch.sqrt(2.0 * step), ctx.randn(x)))
        D = ctx.denoise(x, i)
        x = _em_step(ctx, i, x, D)
        ctx.report(i, x, D)
    return x


@register("edm", nfe_per_step=2, order=2, stochastic=True)
def edm(ctx: Context, x: Tensor, s_churn: float = 40.0, s_tmin: float = 0.05, s_tmax: float = 50.0,
        s_noise: float = 1.003) -> Tensor:
    """EDM stochastic sampler (Karras et al. 2022, Alg. 2): churn, then Heun in (x/alpha, sigma/alpha).

    Noise levels are EDM's sigma = sigma/alpha of the path; the defaults are EDM's ImageNet-64
    settings and s_churn = 0 gives the deterministic EDM Heun sampler. A step from zero SNR (where
    EDM's sigma is infinite) is a DPM-Solver++(2S) step instead: second order, two evaluations too.
    """
    if s_churn < 0 or s_noise < 0:
        raise ValueError("s_churn and s_noise must be >= 0")
    gamma_max = math.sqrt(2.0) - 1.0
    t_top = torch.ones_like(ctx.t[0])
    for i in range(ctx.n):
        a_i, s_i = ctx.alpha[i], ctx.sigma[i]
        if ctx.starts_at_zero_snr[i]:
            D = ctx.denoise(x, i)
            x = _first_order(ctx, i, x, D) if ctx.ends_at_data[i] else _dpm2_step(ctx, i, x, D)
            ctx.report(i, x, D)
            continue
        sig = s_i / a_i
        inside = (sig >= s_tmin) & (sig <= s_tmax)
        gamma = torch.where(inside, torch.full_like(sig, min(s_churn / ctx.n, gamma_max)), torch.zeros_like(sig))
        # raised noise level, capped at the path's top (t = 1)
        sig_hat = torch.minimum(sig * (1 + gamma), ctx.path.sigma_ve(t_top))
        t_hat = torch.where(gamma > 0, ctx.time_at_logsnr(-torch.log(sig_hat)), ctx.t[i])
        sig_hat = torch.where(gamma > 0, ctx.path.sigma_ve(t_hat), sig)
        a_hat = ctx.path.alpha(t_hat)
        y = x / ctx.c(a_i)
        if s_churn > 0:
            y = y + ctx.c(torch.sqrt((sig_hat ** 2 - sig ** 2).clamp_min(0)) * s_noise) * ctx.randn(x)
        D = ctx.denoise(y * ctx.c(a_hat), i, t_hat)
        d = (y - D) / ctx.c(sig_hat)
        sig_next = ctx.sigma[i + 1] / ctx.alpha[i + 1]
        y_next = y + ctx.c(sig_next - sig_hat) * d
        if not ctx.ends_at_data[i]:
            D2 = ctx.denoise(y_next * ctx.c(ctx.alpha[i + 1]), i, ctx.t[i + 1])
            d2 = (y_next - D2) / ctx.c(sig_next)
            y_next = y + ctx.c(0.5 * (sig_next - sig_hat)) * (d + d2)
        x = y_next * ctx.c(ctx.alpha[i + 1])
        ctx.report(i, x, D)
    return x


__all__ = ["euler_maruyama", "pc", "edm"]
