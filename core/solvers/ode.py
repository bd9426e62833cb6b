"""Generic ODE solvers of the probability-flow ODE: Euler and Heun in the path's own time, and an
adaptive Dormand-Prince RK45 in angle coordinates (also used for likelihoods).

The probability-flow drift is dx/dt = alpha' D + sigma' eps-hat (``drift``). For the adaptive solver we
integrate in the angle phi = arctan(sigma/alpha) with the state z = x / sqrt(alpha^2 + sigma^2), where
dz/dphi = cos(phi) eps-hat - sin(phi) D: both ends (data at phi = 0, pure noise at phi = pi/2) are
finite on every path, which the t-parameterisation of VP and flow paths is not.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

from .base import Context, register
from .exponential import _first_order

Tensor = torch.Tensor


def drift(ctx: Context, x: Tensor, D: Tensor, t: Tensor) -> Tensor:
    """Probability-flow velocity alpha' D + sigma' (x - alpha D)/sigma at time row t."""
    a, s = ctx.path.alpha(t), ctx.path.sigma(t)
    da, ds = ctx.path.d_alpha(t), ctx.path.d_sigma(t)
    return ctx.lin((ds / s, x), (da - ds * a / s, D))


@register("euler", nfe_per_step=1, order=1)
def euler(ctx: Context, x: Tensor) -> Tensor:
    """Euler's method on the probability-flow ODE in the path's time t.

    A step onto sigma = 0 returns alpha_t D (Euler in EDM's (x/alpha, sigma/alpha)): Euler in t would
    stop half-way there on VP paths, at (x + alpha D) / 2, since sigma'/sigma ~ 1/(2t) near t = 0.
    """
    for i in range(ctx.n):
        D = ctx.denoise(x, i)
        if ctx.ends_at_data[i]:
            x = _first_order(ctx, i, x, D)
        else:
            v = drift(ctx, x, D, ctx.t[i])
            x = x + ctx.c(ctx.t[i + 1] - ctx.t[i]) * v
        ctx.report(i, x, D)
    return x


@register("heun", nfe_per_step=2, order=2)
def heun(ctx: Context, x: Tensor) -> Tensor:
    """Heun's second-order method in the path's time t; the last step to sigma = 0 returns alpha D."""
    for i in range(ctx.n):
        D = ctx.denoise(x, i)
        if ctx.ends_at_data[i]:
            x = _first_order(ctx, i, x, D)
        else:
            dt = ctx.c(ctx.t[i + 1] - ctx.t[i])
            v = drift(ctx, x, D, ctx.t[i])
            x_e = x + dt * v
            D2 = ctx.denoise(x_e, i, ctx.t[i + 1])
            v2 = drift(ctx, x_e, D2, ctx.t[i + 1])
            x = x + (0.5 * dt) * (v + v2)
        ctx.report(i, x, D)
    return x


# ------------------------------------------------------------------ adaptive Dormand-Prince 5(4)
_DP_C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
_DP_A = [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
         [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
         [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
         [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]]
_DP_B5 = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
_DP_B4 = [5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40]


def odeint_dopri5(f: Callable[[float, Tensor], Tensor], y0: Tensor, s0: float, s1: float, *,
                  rtol: float = 1e-5, atol: float = 1e-5, first_step: Optional[float] = None,
                  max_steps: int = 10_000) -> Tuple[Tensor, int]:
    """Integrate dy/ds = f(s, y) from s0 to s1 with Dormand-Prince 5(4) and PI step control.

    Returns (y(s1), number of f evaluations). The error norm is the RMS over the whole state, so
    the batch shares one step size (one host sync per step: adaptivity needs it).
    (Dormand & Prince 1980; Hairer, Norsett & Wanner, "Solving ODEs I", II.4 for the controller.)
    """
    direction = 1.0 if s1 > s0 else -1.0
    span = abs(s1 - s0)
    h = first_step if first_step is not None else span / 20
    s, y = s0, y0
    k1 = f(s, y)
    if not bool(torch.isfinite(k1).all()):
        raise FloatingPointError(f"the ODE's derivative is NaN or inf at the start (s={s0:.6g}); check the denoiser")
    nfe, steps, err_prev, bad = 1, 0, 1.0, 0
    while direction * (s1 - s) > 1e-12 * max(1.0, span):
        if steps >= max_steps:
            raise RuntimeError(f"rk45 exceeded {max_steps} steps; loosen rtol/atol")
        h = min(h, abs(s1 - s))
        ks = [k1]
        for j in range(1, 7):
            yj = y
            for a, k in zip(_DP_A[j], ks):
                if a != 0.0:
                    yj = yj + (direction * h * a) * k
            ks.append(f(s + direction * h * _DP_C[j], yj))
        nfe += 6
        y_new = y
        for b, k in zip(_DP_B5, ks):
            if b != 0.0:
                y_new = y_new + (direction * h * b) * k
        diff = None
        for b5, b4, k in zip(_DP_B5, _DP_B4, ks):
            if b5 != b4:
                term = (direction * h * (b5 - b4)) * k
                diff = term if diff is None else diff + term
        scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        err = float(torch.sqrt(torch.mean((diff / scale).double() ** 2)))
        steps += 1
        if not math.isfinite(err):
            bad += 1            # a stage left the region where the field is finite: shrink, a few times
            if bad > 30:
                raise FloatingPointError(f"the ODE's derivative stays NaN or inf near s={s:.6g} even with step "
                                         f"{h:.3g}; check the denoiser")
            h *= 0.2
            continue
        if err <= 1.0:
            s, y, k1 = s + direction * h, y_new, ks[6]      # FSAL: last stage is f at the new point
            factor = 0.9 * err ** -0.14 * err_prev ** 0.08 if err > 0 else 5.0  # PI control
            err_prev = max(err, 1e-4)
            h *= min(5.0, max(0.2, factor))
        else:
            h *= max(0.2, 0.9 * err ** -0.2)
    return y, nfe


def _angle_field(ctx: Context, step_for_checks: int):
    """dz/dphi at (phi, z) for the trig state z = x / sqrt(alpha^2 + sigma^2)."""
    def f(phi: float, z: Tensor) -> Tensor:
        lam = torch.tensor([-math.log(math.tan(phi))] if phi > 0 else [math.inf], dtype=torch.float64)
        t = ctx.time_at_logsnr(lam.to(ctx.cdev))
        a, s = ctx.path.alpha(t), ctx.path.sigma(t)
        norm = torch.sqrt(a * a + s * s)
        x = z * ctx.c(norm)
        D = ctx.denoise(x, step_for_checks, t)
        eps = ctx.lin((1 / s, x), (-a / s, D))
        return ctx.lin((torch.full_like(a, math.cos(phi)), eps), (torch.full_like(a, -math.sin(phi)), D))
    return f


def phi_of(ctx: Context, t: Tensor) -> float:
    a, s = ctx.path.alpha(t), ctx.path.sigma(t)
    return float(torch.atan2(s, a).reshape(-1)[0])


@register("rk45", nfe_per_step=0, order=5)
def rk45(ctx: Context, x: Tensor, rtol: float = 1e-5, atol: float = 1e-5, sigma_stop: float = 1e-4) -> Tensor:
    """Adaptive Dormand-Prince RK45 on the probability-flow ODE (in angle coordinates).

    Integrates from the first to the last grid time (the grid's interior is ignored; ``steps`` only
    sets the first trial step). If the last time is at sigma = 0 it stops where sigma/alpha =
    ``sigma_stop`` and finishes with a DDIM step (one more evaluation). Needs a grid shared by the batch.
    """
    if not ctx.shared:
        raise ValueError("rk45 needs a grid shared by the whole batch (adaptive steps are global)")
    phi0 = phi_of(ctx, ctx.t[0])
    a0, s0 = ctx.alpha[0], ctx.sigma[0]
    z = x / ctx.c(torch.sqrt(a0 * a0 + s0 * s0))
    end = ctx.n
    if ctx.ends_at_data[-1]:
        phi1 = math.atan(sigma_stop)
    else:
        phi1 = phi_of(ctx, ctx.t[end])
    z, _ = odeint_dopri5(_angle_field(ctx, 0), z, phi0, phi1, rtol=rtol, atol=atol,
                         first_step=abs(phi1 - phi0) / max(ctx.n, 1))
    lam1 = torch.tensor([-math.log(math.tan(phi1))], dtype=torch.float64)
    t1 = ctx.time_at_logsnr(lam1)
    a1, s1 = ctx.path.alpha(t1), ctx.path.sigma(t1)
    x = z * ctx.c(torch.sqrt(a1 * a1 + s1 * s1))
    if ctx.ends_at_data[-1]:
        D = ctx.denoise(x, end - 1, t1)
        a_e, s_e = ctx.alpha[end], ctx.sigma[end]
        x = ctx.lin((s_e / s1, x), (a_e - s_e * a1 / s1, D))
        ctx.report(end - 1, x, D)
    return x
