"""Sampling: ``sample(denoiser, noise, path=..., solver=..., steps=..., grid=...)`` and the solver registry.

Every solver is a pure function of (denoiser, starting noise, path, time grid, options); see
``solvers()`` for the list with each one's cost per step, order and options.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Union

import torch

from ..grids import resolve_grid
from .. import mean_reverting as _mr
from ..paths import Path, get_path
from . import exponential, fitted, ode, stochastic  # noqa: F401  (registers the solvers)
from .base import Context, SolverInfo, get_solver, register, solvers
from .variance import X0Variance

Tensor = torch.Tensor


def sample(denoiser: Callable[..., Tensor], noise: Tensor, *, path: Union[Path, str, Any],
           solver: Optional[str] = None, steps: Optional[int] = None, grid: Union[str, Tensor, None] = None,
           t_start: float = 1.0, t_end: float = 0.0, x_init: Optional[Tensor] = None,
           cond: Optional[Dict[str, Any]] = None, generator: Optional[torch.Generator] = None,
           callback: Optional[Callable[[int, Any, Tensor, Tensor], Any]] = None,
           check_finite: bool = True, grid_options: Optional[Dict[str, Any]] = None,
           **options: Any) -> Tensor:
    """Draw samples by integrating from noise (t_start) to data (t_end) with a named solver.

    denoiser: any D(x, t, **cond) -> E[x0 | x_t = x], t of shape (B,) (wrap other networks in
        ``Denoiser``). noise: standard normal of the output shape (B, ...); the start is
        sigma(t_start) * noise, or ``x_init`` if given (e.g. to start part-way, SDEdit-style).
    steps: solver steps; each solver spends ``solvers()[name].nfe(steps)`` evaluations.
    grid: "uniform", "quadratic", "logsnr", "karras", "sigma" or a decreasing tensor of times (N + 1,) or
        (N + 1, B) for per-sample grids (then ``steps`` may be None). The columns of a per-sample
        grid must reach sigma = 0 at the same step; where only some start a step at zero SNR,
        edm, euler_maruyama and pc take their zero-SNR step for the whole batch.
    generator: the only source of randomness of stochastic solvers.
    callback: called as callback(i, t, x, x0_hat) after every step.
    options: the solver's own options (``solvers()[name].options()``).
    Returns the samples in the dtype and device of ``noise``.

    Defaults: solver "dpmpp_2m" and grid "logsnr" on a Gaussian path.

    Mean-reverting paths (``paths.MeanReverting``: x_t = alpha x0 + (1 - alpha) mu + sigma eps): the
    prior mean is ``cond["mu"]`` (shaped like noise, or broadcastable), the denoiser is called as
    D(x, t, mu=mu, **cond) in the original coordinates, the start is mu + sigma(t_start) * noise
    (or ``x_init``), and the callback sees original-coordinate states. Every solver runs unchanged
    on x~ = x - (1 - alpha) mu (``polydiff.core.mean_reverting``); the result is x at t_end (x0 at 0).

    Discrete processes: when ``path`` is a ``polydiff.core.discrete.Process``, ``noise`` is the
    starting tokens x1 (B, L) int64 (``path.prior_sample``), the denoiser returns logits (B, L, V)
    over x0, the solvers are ``discrete.solvers()`` ("ancestral" by default, "tau_leaping",
    "first_hitting", "remdm", "pc", "svdd"), grids are "uniform" (default), "quadratic" or a tensor,
    callback(i, t, x, x0_probs), and the result is int64 tokens. x_init and grid_options do not apply.
    See ``polydiff.core.discrete.samplers.sample_discrete``.
    """
    from .. import discrete as _discrete   # imported here: discrete does not import solvers

    if isinstance(path, _discrete.Process):
        if x_init is not None:
            raise ValueError("x_init is for Gaussian paths; for a discrete process pass the starting tokens "
                             "as noise (e.g. partially masked tokens with t_start < 1)")
        return _discrete.sample_discrete(denoiser, noise, process=path, solver=solver, steps=steps, grid=grid,
                                         t_start=t_start, t_end=t_end, cond=cond, generator=generator,
                                         callback=callback, check_finite=check_finite,
                                         grid_options=grid_options, **options)
    solver = "dpmpp_2m" if solver is None else solver
    grid = "logsnr" if grid is None else grid
    if isinstance(solver, str) and solver not in solvers() and solver in _discrete.solvers():
        raise ValueError(f"solver {solver!r} is a discrete solver; it needs path=<a polydiff.core.discrete "
                         f"Process>, got path={path!r}")
    info = get_solver(solver)
    allowed = info.options()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"solver {solver!r} has no option(s) {unknown}; its options: {allowed or 'none'}")
    path = get_path(path)
    if not isinstance(noise, Tensor) or noise.dim() < 1 or noise.shape[0] < 1:
        raise ValueError("noise must be a tensor of shape (B, ...) with B >= 1")
    if not noise.is_floating_point():
        raise ValueError(f"noise must be floating point, got {noise.dtype}")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    g = resolve_grid(grid, steps, path, noise.shape[0], t_start, t_end, **(grid_options or {}))
    cond = cond or {}
    mu = None
    if _mr.is_mean_reverting(path):             # run on x~ = x - (1 - alpha) mu, a Gaussian path
        mu = _mr.check_mean(path, cond, noise, "sample")
        cond = {**cond, _mr.MEAN_KEY: mu}
        denoiser = _mr.GaussianView(denoiser, path)
        if callback is not None:
            user_callback = callback

            def callback(i, t, x, x0):
                return user_callback(i, t, _mr.from_gaussian(path, x, mu, t), x0)
    ctx = Context(denoiser, path, g, noise, cond, generator, callback, check_finite)
    if x_init is not None:
        if x_init.shape != noise.shape:
            raise ValueError(f"x_init shape {tuple(x_init.shape)} differs from noise shape {tuple(noise.shape)}")
        x = x_init.to(noise.dtype, copy=True)     # solvers may overwrite their state in place
        if mu is not None:
            x = x.sub_(ctx.c(1.0 - ctx.alpha[0]) * mu)
    elif mu is not None:                        # x_start = mu + sigma noise  =>  x~ = alpha mu + sigma noise
        x = noise * ctx.c(ctx.sigma[0]) + ctx.c(ctx.alpha[0]) * mu
    else:
        x = noise * ctx.c(ctx.sigma[0])
    x = ctx.finish(info.fn(ctx, x, **options))
    if mu is not None:
        x = x + ctx.c(1.0 - ctx.alpha[-1]) * mu
    return x


__all__ = ["sample", "solvers", "get_solver", "register", "Context", "SolverInfo", "X0Variance"]
