"""Fitted few-step solvers: learned evaluation times and linear-multistep coefficients for one model.

Every deterministic solver with one evaluation per step is linear in the starting state x and in
the denoiser outputs D_0, ..., D_{N-1}: its k-th evaluation point and its output are

    y_k = C[k, 0] x + sum_{j<k} C[k, j+1] D_j,   D_k = D(y_k, t_k),   output = y_N,

with C lower-triangular ((N+1) x (N+1)) and fixed by the grid. ``FittedSolver.from_solver`` reads
C off any such registered solver (ddim, dpmpp_2m, dpmpp_3m, unipc, deis, ipndm, euler), so a fit
starts from a known good solver. ``fit_solver`` then learns the N - 1 interior times and the
(N+1)(N+2)/2 entries of C jointly, by minimising the global error (mean squared distance to an
accurate probability-flow ODE solution from the same noise) on fitting draws, with gradients
through the denoiser (torch autograd, float64, L-BFGS). It keeps the fit only if it beats its
initial solver on held-out draws. This is the approach of S4S (Frankel et al., "S4S: Solving for a
Diffusion Model Solver", ICML 2025: a full-history linear multistep method whose times and
coefficients are learned against a teacher ODE solution), Bespoke solvers (Shaul et al., "Bespoke
Solvers for Generative Flow Models", ICLR 2024) and LD3 (Tong et al., "Learning to Discretize
Denoising Diffusion ODEs", ICLR 2025: learned times, global-error objective, few parameters so
that ~1000 draws suffice). The form above covers predictor-corrector schemes (UniPC) too: their
evaluation points are the predicted states.

A fitted solver is tied to a model, a path and a step budget: it has no order of convergence.
Use it as ``sample(D, noise, path=path, solver="fitted", grid=fs.grid, coefficients=fs)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch

from ..paths import Path, get_path, require_gaussian
from .base import Context, get_solver, register

Tensor = torch.Tensor
FORMAT = "polydiff.fitted_solver/1"


def _mask(n: int) -> Tensor:
    """Row k of C may use x (column 0) and D_0..D_{k-1} (columns 1..k)."""
    return torch.tril(torch.ones(n + 1, n + 1, dtype=torch.float64))


@dataclass(frozen=True)
class FittedSolver:
    """A fitted N-step solver: its grid, its coefficient matrix and where it came from.

    grid: (N + 1,) float64, strictly decreasing; the denoiser is evaluated at grid[:N] and the
        output lies at grid[N] (usually t = 0, the data end).
    coefficients: (N + 1, N + 1) float64, lower-triangular: row k < N gives the k-th evaluation
        point from (x, D_0, ..., D_{k-1}), row N the output (see the module docstring); x is the
        starting state sigma(grid[0]) * noise.
    path: repr of the path it was fitted on (checked when sampling).
    init: the solver it started from. info: fit and validation errors, JSON-serialisable.
    """

    grid: Tensor
    coefficients: Tensor
    path: str
    init: str = ""
    info: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        g = torch.as_tensor(self.grid, dtype=torch.float64).detach().cpu().clone()
        c = torch.as_tensor(self.coefficients, dtype=torch.float64).detach().cpu().clone()
        if g.dim() != 1 or g.shape[0] < 2:
            raise ValueError(f"a fitted solver's grid must have shape (N+1,) with N >= 1, got {tuple(g.shape)}")
        n = g.shape[0] - 1
        if c.shape != (n + 1, n + 1):
            raise ValueError(f"coefficients must have shape ({n + 1}, {n + 1}) for a {n}-step grid, "
                             f"got {tuple(c.shape)}")
        if not (torch.isfinite(g).all() and torch.isfinite(c).all()):
            raise ValueError("a fitted solver's grid and coefficients must be finite (got NaN or inf)")
        if (g < 0).any() or (g > 1).any() or not (g[1:] < g[:-1]).all():
            raise ValueError("a fitted solver's grid must be strictly decreasing inside [0, 1]")
        if (c * (1 - _mask(n))).abs().max() > 0:
            raise ValueError("coefficients must be lower-triangular: step k may only use D_0..D_{k-1}")
        object.__setattr__(self, "grid", g)
        object.__setattr__(self, "coefficients", c)

    @property
    def steps(self) -> int:
        """Number of steps N (= denoiser evaluations)."""
        return self.grid.shape[0] - 1

    # ---------------------------------------------------------------- construction and storage
    @classmethod
    def from_solver(cls, solver: str, path: Union[Path, str], grid: Tensor, **options: Any) -> "FittedSolver":
        """The coefficients of a registered solver on a grid: it samples exactly like that solver.

        The solver is run once on a symbolic state: x is the unit vector e_0 and the k-th denoiser
        call returns e_{k+1}, so every state it forms is its coefficient row. It must be a
        deterministic solver with one evaluation per step at the grid times, linear in x and the D's
        (checked on a random nonlinear test model).
        """
        from . import sample   # the package imports this module first

        path = get_path(path)
        info = get_solver(solver)
        if info.stochastic or info.nfe_per_step != 1:
            raise ValueError(f"from_solver needs a deterministic solver with one evaluation per step; "
                             f"{solver!r} is {'stochastic' if info.stochastic else f'{info.nfe_per_step} per step'}")
        g = torch.as_tensor(grid, dtype=torch.float64).detach().cpu()
        if g.dim() != 1 or g.shape[0] < 2:
            raise ValueError(f"from_solver needs a grid shared by the batch, shape (N+1,), got {tuple(g.shape)}")
        n = g.shape[0] - 1
        rows, times = [], []

        def symbolic(x: Tensor, t: Tensor, **cond: Any) -> Tensor:
            k = len(rows)
            rows.append(x[0].clone())
            times.append(float(t[0]))
            out = torch.zeros_like(x)
            if k < n:
                out[0, k + 1] = 1.0
            return out

        e0 = torch.zeros(1, n + 1, dtype=torch.float64)
        e0[0, 0] = 1.0                                 # the starting state x
        out = sample(symbolic, e0, path=path, solver=solver, grid=g, x_init=e0, check_finite=False, **options)
        if len(rows) != n or any(abs(t - float(g[k])) > 1e-12 for k, t in enumerate(times)):
            raise ValueError(f"{solver!r} does not evaluate the denoiser once at each grid time on this grid "
                             f"(calls at {times}); from_solver cannot represent it")
        C = torch.stack(rows + [out[0]])
        if (C * (1 - _mask(n))).abs().max() > 0:
            raise ValueError(f"{solver!r} with options {options} is not linear in the state and the denoiser "
                             "outputs (it draws noise?); from_solver cannot represent it")
        fs = cls(g, C, repr(path), solver)
        _check_linear(fs, solver, path, options)
        return fs

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable dict; ``FittedSolver.from_dict`` inverts it exactly (floats as repr)."""
        return {"format": FORMAT, "grid": self.grid.tolist(), "coefficients": self.coefficients.tolist(),
                "path": self.path, "init": self.init, "info": self.info}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "FittedSolver":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"not a fitted solver dict (expected format {FORMAT!r})")
        try:
            return cls(torch.tensor(d["grid"], dtype=torch.float64),
                       torch.tensor(d["coefficients"], dtype=torch.float64),
                       str(d["path"]), str(d.get("init", "")), dict(d.get("info", {})))
        except (KeyError, TypeError) as e:
            raise ValueError(f"bad fitted solver dict: {e}") from None


def _check_linear(fs: FittedSolver, solver: str, path: Path, options: Dict[str, Any]) -> None:
    """The traced coefficients reproduce the solver on a nonlinear model, or the solver is not linear."""
    from . import sample

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(3, 2, generator=g, dtype=torch.float64)
    w = torch.randn(2, 2, generator=g, dtype=torch.float64)

    def model(x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        return torch.tanh(x @ w) * (1 + t[:, None])

    want = sample(model, noise, path=path, solver=solver, grid=fs.grid, **options)
    got = _run(fs.coefficients, fs.grid[:-1], model, noise * path.sigma(fs.grid[0]), {})
    if not torch.allclose(got, want, rtol=1e-9, atol=1e-9):
        raise ValueError(f"{solver!r} with options {options} is not linear in the state and the denoiser "
                         "outputs on this grid; from_solver cannot represent it")


def _run(C: Tensor, times: Tensor, denoiser: Callable[..., Tensor], x: Tensor, cond: Dict[str, Any],
         model_dtype: Optional[torch.dtype] = None) -> Tensor:
    """The fitted solver as a differentiable function of (C, times); x is the starting state.

    The arithmetic runs in x's dtype (float64 when fitting); the denoiser sees ``model_dtype``.
    """
    n = times.shape[0]
    ds = []
    b = x.shape[0]
    for k in range(n + 1):
        y = C[k, 0] * x
        for j in range(k):
            y = y + C[k, j + 1] * ds[j]
        if k == n:
            return y
        t = times[k].reshape(1).expand(b)
        inp = y if model_dtype is None else y.to(model_dtype)
        ds.append(denoiser(inp, t.to(inp.dtype), **cond).to(x.dtype))
    raise AssertionError("unreachable")


@register("fitted", nfe_per_step=1, order=0)
def fitted(ctx: Context, x: Tensor, coefficients: Optional[FittedSolver] = None) -> Tensor:
    """A solver fitted to a model by ``fit_solver`` (S4S / LD3-style); pass grid=fs.grid, coefficients=fs."""
    fs = coefficients
    if not isinstance(fs, FittedSolver):
        raise ValueError("solver 'fitted' needs coefficients=<FittedSolver> (from fit_solver or "
                         f"FittedSolver.from_dict), got {type(fs).__name__}")
    if not ctx.shared:
        raise ValueError("a fitted solver runs on its own grid, shared by the batch; per-sample grids do not apply")
    if ctx.n != fs.steps:
        raise ValueError(f"the fitted solver has {fs.steps} steps but the grid has {ctx.n}; pass grid=fs.grid")
    if not torch.allclose(ctx.t[:, 0], fs.grid, rtol=0, atol=1e-12):
        raise ValueError(f"grid mismatch: the fitted solver evaluates at its own times {fs.grid.tolist()}, "
                         f"got a grid {ctx.t[:, 0].tolist()}; pass grid=fs.grid")
    if repr(ctx.path) != fs.path:
        raise ValueError(f"the fitted solver was fitted on path {fs.path}, not {ctx.path!r}")
    C = fs.coefficients                    # float64 on the host: no device sync inside the loop
    ds: list = []
    for k in range(ctx.n):
        y = x if k == 0 and float(C[0, 0]) == 1.0 else ctx.lin((C[k, 0], x), *[(C[k, j + 1], ds[j]) for j in range(k)])
        if k > 0:
            ctx.report(k - 1, y, ds[-1])
        ds.append(ctx.denoise(y, k))
    out = ctx.lin((C[-1, 0], x), *[(C[-1, j + 1], ds[j]) for j in range(ctx.n)])
    ctx.report(ctx.n - 1, out, ds[-1])
    return out


# ---------------------------------------------------------------------------------------- fitting
def _time_params(grid: Tensor) -> Tuple[Tensor, float, float]:
    """Unconstrained parameters of the interior evaluation times grid[1:N] (start and end stay fixed).

    With s = (t - t_end) / (t_start - t_end), log s_k = sum_{j<=k} log sigmoid(theta_j): the times
    stay strictly decreasing inside (t_end, t_start), with resolution in log t near the data end.
    """
    t0, te = float(grid[0]), float(grid[-1])
    s = (grid[:-1] - te) / (t0 - te)
    return torch.logit(s[1:] / s[:-1]), t0, te


def _times_from(theta: Tensor, t0: float, te: float) -> Tensor:
    log_s = torch.cat([theta.new_zeros(1), torch.cumsum(torch.nn.functional.logsigmoid(theta), 0)])
    return te + (t0 - te) * torch.exp(log_s)


def _refine(fs: FittedSolver, denoiser: Callable[..., Tensor], path: Path, x: Tensor, target: Tensor,
            cond: Dict[str, Any], model_dtype: torch.dtype, max_iters: int) -> Tuple[FittedSolver, float]:
    """L-BFGS on (interior times, coefficients) from ``fs``; returns the best point seen and its loss."""
    n = fs.steps
    C0, g0 = fs.coefficients.to(x.device), fs.grid
    mask = _mask(n).to(x.device)
    tt = fs.grid.to(x.device)
    # scale of each row's terms (alpha + sigma at its time; x itself is sigma(t_0) * noise), so a unit
    # change of any parameter moves the state by a comparable amount
    row = (path.alpha(tt) + path.sigma(tt)).to(torch.float64)[:, None].expand(n + 1, n + 1).clone()
    row[:, 0] = row[:, 0] / path.sigma(tt[0]).to(torch.float64)
    theta_t0, t0, te = _time_params(g0)
    n_t, n_c = theta_t0.numel(), int(mask.sum())
    idx = mask.flatten().nonzero().flatten()
    theta = torch.zeros(n_t + n_c, dtype=torch.float64, device=x.device, requires_grad=True)

    def unpack(th: Tensor) -> Tuple[Tensor, Tensor]:
        times = _times_from(theta_t0.to(th.device) + th[:n_t], t0, te)
        dC = torch.zeros((n + 1) * (n + 1), dtype=torch.float64, device=th.device).index_put((idx,), th[n_t:])
        return C0 + row * dC.reshape(n + 1, n + 1), times

    best = {"loss": math.inf, "theta": theta.detach().clone()}

    def closure() -> Tensor:
        C, times = unpack(theta)
        out = _run(C, times, denoiser, x, cond, model_dtype)
        loss = ((out - target) ** 2).flatten(1).sum(1).mean()
        if not torch.isfinite(loss):
            theta.grad = torch.zeros_like(theta)
            return torch.tensor(1e30, dtype=torch.float64)
        (grad,) = torch.autograd.grad(loss, [theta])
        theta.grad = grad
        if float(loss.detach()) < best["loss"]:
            best["loss"], best["theta"] = float(loss.detach()), theta.detach().clone()
        return loss.detach()

    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iters, history_size=50, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-15)
    with torch.enable_grad():
        opt.step(closure)
    C, times = unpack(best["theta"])
    grid = torch.cat([times.detach().cpu(), fs.grid[-1:]])
    return FittedSolver(grid, C.detach().cpu(), fs.path, fs.init, dict(fs.info)), best["loss"]


def global_error(fs: FittedSolver, denoiser: Callable[..., Tensor], x: Tensor, target: Tensor,
                 cond: Optional[Dict[str, Any]] = None, model_dtype: Optional[torch.dtype] = None) -> float:
    """Mean squared distance between the fitted solver's output from state x and ``target``."""
    with torch.no_grad():
        out = _run(fs.coefficients.to(x), fs.grid[:-1].to(x), denoiser, x, cond or {}, model_dtype)
    err = float(((out.double() - target.double()) ** 2).flatten(1).sum(1).mean())
    return err if math.isfinite(err) else math.inf


def fit_solver(denoiser: Callable[..., Tensor], noise: Tensor, *, path: Union[Path, str], steps: int,
               init: Union[str, Sequence[str]] = ("dpmpp_3m", "ipndm"), grid: Union[str, Tensor] = "fit",
               holdout: float = 0.2, max_iters: int = 200, reference_solver: str = "dpmpp_3m",
               reference_steps: int = 400, grid_draws: int = 1024, cond: Optional[dict] = None) -> FittedSolver:
    """Fit a ``steps``-step solver (times and coefficients) to a model; see the module docstring.

    noise: standard-normal starts (B, ...); the last ``holdout`` fraction is held out for validation,
        the rest is fitted (use >= 1024 fitting draws: fewer over-fit the (N+1)(N+2)/2 + N - 1
        parameters). Use other noise than the one you evaluate on.
    init: one or more deterministic one-evaluation-per-step solvers to start from (e.g. "dpmpp_3m",
        "ipndm", "unipc", "deis"); each is fitted and the candidate (fitted or not) with the smallest
        global error on the held-out draws is returned, so the result never validates worse than
        its initial solver.
    grid: the initial grid: "fit" (``fit_grid`` for each init solver, on the first ``grid_draws``
        fitting draws), a named grid, or a tensor of times.
    max_iters: L-BFGS iterations. reference_solver/steps: the accurate ODE solution (``ode_reference``).
    cond: passed unchanged to every denoiser call (it must not depend on the batch).
    The fit computes in float64; the denoiser is called in ``noise``'s dtype. The returned object's
    ``info`` holds every candidate's fitting and validation errors.
    """
    from ..grids import _fit_grid_to, make_grid, ode_reference

    path = require_gaussian(get_path(path), "fit_solver")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not isinstance(noise, Tensor) or noise.dim() < 1 or not noise.is_floating_point():
        raise ValueError("noise must be a floating-point tensor of shape (B, ...)")
    if not torch.isfinite(noise).all():
        raise ValueError("noise contains NaN or inf")
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    n_val = max(1, int(round(holdout * noise.shape[0])))
    n_fit = noise.shape[0] - n_val
    if n_fit < 2:
        raise ValueError(f"too few draws: {noise.shape[0]} with holdout {holdout} leaves {n_fit} to fit")
    inits = [init] if isinstance(init, str) else list(init)
    if not inits:
        raise ValueError("init must name at least one solver")
    for name in inits:
        info = get_solver(name)
        if info.stochastic or info.nfe_per_step != 1:
            raise ValueError(f"init solver {name!r} must be deterministic with one evaluation per step; "
                             "valid: ddim, dpmpp_2m, dpmpp_3m, unipc, deis, ipndm, euler")
    if isinstance(grid, Tensor):
        g = torch.as_tensor(grid, dtype=torch.float64)
        if g.dim() != 1 or g.shape[0] != steps + 1:
            raise ValueError(f"grid mismatch: an initial grid for {steps} steps has shape ({steps + 1},), "
                             f"got {tuple(g.shape)}")
    elif grid != "fit":
        make_grid(grid, steps, path)        # validates the name
    cond = cond or {}
    model_dtype = noise.dtype
    z = noise.to(torch.float64)
    target = ode_reference(denoiser, noise, path=path, solver=reference_solver, steps=reference_steps,
                           cond=cond).to(torch.float64)
    if not torch.isfinite(target).all():
        raise FloatingPointError("the reference ODE solution is not finite; check the denoiser")
    z_fit, z_val, y_fit, y_val = z[:n_fit], z[n_fit:], target[:n_fit], target[n_fit:]
    candidates: Dict[str, Dict[str, Any]] = {}
    best: Tuple[float, Optional[FittedSolver], bool] = (math.inf, None, False)
    for name in inits:
        if isinstance(grid, str) and grid == "fit":
            m = min(grid_draws, n_fit)
            g = _fit_grid_to(denoiser, noise[:m], target[:m].to(noise.dtype), path=path, solver=name,
                             steps=steps, cond=cond)
        elif isinstance(grid, str):
            g = make_grid(grid, steps, path)
        else:
            g = torch.as_tensor(grid, dtype=torch.float64)
        base = FittedSolver.from_solver(name, path, g)
        x_fit = z_fit * path.sigma(base.grid[0]).to(z_fit)
        x_val = z_val * path.sigma(base.grid[0]).to(z_val)
        base_val = global_error(base, denoiser, x_val, y_val, cond, model_dtype)
        fitted_fs, fit_loss = _refine(base, denoiser, path, x_fit, y_fit, cond, model_dtype, max_iters)
        fit_val = global_error(fitted_fs, denoiser, x_val, y_val, cond, model_dtype)
        candidates[name] = {"init_val_error": base_val, "fit_error": fit_loss, "val_error": fit_val,
                            "init_grid": g.tolist()}
        for err, fs, is_fit in ((base_val, base, False), (fit_val, fitted_fs, True)):
            if err < best[0]:
                best = (err, fs, is_fit)
    err, fs, is_fit = best
    if fs is None:
        raise FloatingPointError("every candidate solver produced NaN or inf on the held-out draws")
    # fitted: False when no fit beat its initial solver on the held-out draws (the init is returned)
    info = {"val_error": err, "fitted": is_fit, "fit_draws": n_fit, "val_draws": n_val,
            "candidates": candidates}
    return FittedSolver(fs.grid, fs.coefficients, fs.path, fs.init, info)


__all__ = ["FittedSolver", "fit_solver", "global_error"]
