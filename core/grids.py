"""Time grids: where a solver evaluates the denoiser, from t_start (noise) down to t_end (data).

Named grids are defined by noise level, so they mean the same thing on every path: "uniform" and
"quadratic" are spaced in the path's own t, "logsnr" uniformly in lambda = log(alpha/sigma) (DPM-Solver's
default), "karras" in sigma^(1/rho) with sigma = exp(-lambda) (EDM's rho = 7), "sigma" uniformly in
sigma = sigma/alpha itself (karras with rho = 1: deepinv's DDRM levels, most steps at high noise). lambda-based grids
span the path's own noise range from t_start to t_end; an end with infinite lambda is replaced by
sigma_max (zero SNR, e.g. flow at t = 1) or sigma_min (sigma = 0, e.g. VP at t = 0), defaults EDM's
80 and 0.002. They always start exactly at t_start and end exactly at t_end (a t_end at sigma = 0
is an extra last point after the one at sigma_min).

``fit_grid`` fits a grid to a model for a step budget (see its docstring); ``solvers.fitted.fit_solver``
fits the grid and the solver's coefficients together, against the same ``ode_reference``. Any user grid works too:
a decreasing 1-D tensor of N + 1 times in [0, 1], or (N + 1, B) for per-sample grids.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Union

import torch

from .paths import LOGSNR_CLIP, Path

Tensor = torch.Tensor
GRIDS = ("uniform", "quadratic", "logsnr", "karras", "sigma")


def _lambda_range(path: Path, t_start: float, t_end: float, sigma_min: float, sigma_max: float):
    """(lambda at the noisy end, lambda at the clean end, whether t_end is at sigma = 0).

    Only an infinite end is replaced (zero SNR by sigma_max, zero noise by sigma_min): a finite end
    is kept, so that every step of the grid shrinks as the number of steps grows.
    """
    lam_start = float(path.logsnr(torch.tensor(t_start, dtype=torch.float64)))
    lam_end = float(path.logsnr(torch.tensor(t_end, dtype=torch.float64)))
    lo = lam_start if math.isfinite(lam_start) else -math.log(sigma_max)   # noisy end
    hi = lam_end if math.isfinite(lam_end) else -math.log(sigma_min)       # clean end
    if not lo < hi:
        raise ValueError(f"empty noise range: lambda from {lam_start:.3g} to {lam_end:.3g}, infinite ends "
                         f"replaced by sigma in [{sigma_min}, {sigma_max}]")
    # a data end at sigma = 0 gets its own final point after the one at sigma_min
    return lo, hi, math.isinf(lam_end)


def make_grid(name: str, steps: int, path: Path, t_start: float = 1.0, t_end: float = 0.0, *,
              rho: float = 7.0, sigma_min: float = 0.002, sigma_max: float = 80.0) -> Tensor:
    """A decreasing float64 grid of ``steps + 1`` times from t_start to t_end."""
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; valid: {list(GRIDS)} or a tensor of times")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not 0.0 <= t_end < t_start <= 1.0:
        raise ValueError(f"need 0 <= t_end < t_start <= 1, got t_start={t_start}, t_end={t_end}")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if name == "uniform":
        return t_start + (t_end - t_start) * u
    if name == "quadratic":
        return t_end + (t_start - t_end) * (1.0 - u) ** 2
    lo, hi, extra_end = _lambda_range(path, t_start, t_end, sigma_min, sigma_max)
    n = steps if extra_end else steps + 1
    if steps == 1 and extra_end:
        return torch.tensor([t_start, t_end], dtype=torch.float64)
    v = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    if name == "logsnr":
        lam = lo + (hi - lo) * v
    else:  # karras: uniform in sigma^(1/rho), sigma = exp(-lambda); "sigma" is rho = 1
        rho = 1.0 if name == "sigma" else rho
        s_hi, s_lo = math.exp(-lo / rho), math.exp(-hi / rho)
        lam = -rho * torch.log(s_hi + (s_lo - s_hi) * v)
    t = path.t_from_logsnr(lam.clamp(-LOGSNR_CLIP, LOGSNR_CLIP)).to(torch.float64)
    if extra_end:
        t = torch.cat([t, torch.tensor([t_end], dtype=torch.float64)])
    t[0], t[-1] = t_start, t_end
    return t


def check_grid(grid: Tensor, batch: int) -> Tensor:
    """Validate a user grid: (N + 1,) or (N + 1, batch), strictly decreasing, inside [0, 1]."""
    g = torch.as_tensor(grid, dtype=torch.float64).detach().cpu()
    if g.dim() not in (1, 2) or g.shape[0] < 2 or (g.dim() == 2 and g.shape[1] != batch):
        raise ValueError(f"a grid must have shape (N+1,) or (N+1, {batch}) with N >= 1, got {tuple(g.shape)}")
    if not torch.isfinite(g).all() or (g < 0).any() or (g > 1).any():
        raise ValueError("grid times must be finite and inside [0, 1]")
    if not (g[1:] < g[:-1]).all():
        raise ValueError("grid times must be strictly decreasing (from noise at t=1 towards data at t=0)")
    return g


def resolve_grid(grid: Union[str, Tensor], steps: Optional[int], path: Path, batch: int,
                 t_start: float = 1.0, t_end: float = 0.0, **grid_options: Any) -> Tensor:
    """A named grid or a user tensor, as a float64 CPU tensor of shape (N + 1, 1) or (N + 1, B)."""
    if isinstance(grid, str):
        if steps is None:
            raise ValueError("steps is required with a named grid")
        g = make_grid(grid, steps, path, t_start, t_end, **grid_options)
    else:
        g = check_grid(grid, batch)
        if steps is not None and g.shape[0] != steps + 1:
            raise ValueError(f"grid has {g.shape[0] - 1} steps but steps={steps}")
    return g if g.dim() == 2 else g[:, None]


def ode_reference(denoiser: Callable[..., Tensor], noise: Tensor, *, path: Path, solver: str = "dpmpp_3m",
                  steps: int = 400, cond: Optional[dict] = None) -> Tensor:
    """An accurate probability-flow ODE solution from ``noise`` (the target of ``fit_grid`` and ``fit_solver``).

    By default DPM-Solver++(3M) on 400 log-SNR steps: on the benchmark's ring mixtures its mean squared
    distance to a tight adaptive (rk45) solution is about 1e-6 (2-D) and 1e-5 (16-D), far under the
    errors the fits reduce.
    """
    from .solvers import sample  # solvers import grids; import here to avoid a cycle

    with torch.no_grad():
        return sample(denoiser, noise, path=path, solver=solver, steps=steps, grid="logsnr", cond=cond or {})


def fit_grid(denoiser: Callable[..., Tensor], noise: Tensor, *, path: Path, solver: str, steps: int,
             init: str = "logsnr", reference_steps: int = 400, reference_solver: str = "dpmpp_3m",
             max_evals: int = 600, sigma_min: float = 1e-4, sigma_max: float = 80.0,
             cond: Optional[dict] = None, **solver_options: Any) -> Tensor:
    """Fit a ``steps``-step grid for ``solver`` to a model (in the spirit of Align Your Steps).

    Sabour et al. ("Align Your Steps", ICML 2024) and Tong et al. ("Learning to Discretize Denoising
    Diffusion ODEs", ICLR 2025) optimise the time steps of a fixed solver for a given model. We
    minimise the mean squared distance between the few-step solution and an accurate reference
    solution of the probability-flow ODE from the same noise (the global error the grid controls).
    The free parameters are the log-SNR gaps between consecutive evaluation points (a softmax over
    the range from sigma_max to sigma_min, so the grid stays ordered); the grid starts at t = 1 and
    ends at t = 0 as usual. Powell's derivative-free method makes it work with any solver, including
    stochastic-free ones that are not differentiable. ``noise`` is a batch of standard-normal starts
    (a few hundred is plenty; use other noise than the one you evaluate on). ``fit_solver`` goes
    further and fits the solver's coefficients too.
    """
    target = ode_reference(denoiser, noise, path=path, solver=reference_solver, steps=reference_steps, cond=cond)
    return _fit_grid_to(denoiser, noise, target, path=path, solver=solver, steps=steps, init=init,
                        max_evals=max_evals, sigma_min=sigma_min, sigma_max=sigma_max, cond=cond, **solver_options)


def _fit_grid_to(denoiser: Callable[..., Tensor], noise: Tensor, target: Tensor, *, path: Path, solver: str,
                 steps: int, init: str = "logsnr", max_evals: int = 600, sigma_min: float = 1e-4,
                 sigma_max: float = 80.0, cond: Optional[dict] = None, **solver_options: Any) -> Tensor:
    """``fit_grid`` against a given target (the ODE solution from ``noise``): Powell on log-SNR gaps."""
    import scipy.optimize

    from .solvers import sample  # solvers import grids; import here to avoid a cycle

    cond = cond or {}
    lam_lo, lam_end, extra_end = _lambda_range(path, 1.0, 0.0, sigma_min, sigma_max)
    if steps < 2:
        return make_grid(init, steps, path)
    base = make_grid(init, steps, path, sigma_max=sigma_max)
    lam0 = path.logsnr(base[1: steps]).clamp(lam_lo + 1e-6, lam_end - 1e-6)
    pts = torch.cat([torch.tensor([lam_lo], dtype=torch.float64), lam0,
                     torch.tensor([lam_end], dtype=torch.float64)])
    theta0 = torch.log(torch.diff(pts).clamp_min(1e-3)).numpy()

    def grid_from(theta) -> Tensor:
        w = torch.softmax(torch.as_tensor(theta, dtype=torch.float64), 0)
        lam = lam_lo + (lam_end - lam_lo) * torch.cumsum(w, 0)[:-1]
        t = torch.cat([torch.ones(1, dtype=torch.float64), path.t_from_logsnr(lam).to(torch.float64),
                       torch.zeros(1, dtype=torch.float64)])
        return t

    def loss(theta) -> float:
        g = grid_from(theta)
        if not (g[1:] < g[:-1]).all():
            return 1e6
        with torch.no_grad():
            out = sample(denoiser, noise, path=path, solver=solver, grid=g, cond=cond, **solver_options)
        err = ((out - target) ** 2).flatten(1).sum(1).mean()
        return float(err) if torch.isfinite(err) else 1e6

    res = scipy.optimize.minimize(loss, theta0, method="Powell",
                                  options={"maxfev": max_evals, "xtol": 1e-3, "ftol": 1e-4})
    best = res.x if res.fun <= loss(theta0) else theta0
    return grid_from(best)


__all__ = ["GRIDS", "make_grid", "check_grid", "resolve_grid", "fit_grid", "ode_reference"]
