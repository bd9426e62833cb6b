"""Posterior sampling machinery: the method registry, ``posterior_sample`` and shared helpers.

A method is a function ``fn(prob, x, **options) -> x0`` registered with the operator level it needs.
``prob`` (a ``Problem``) holds everything about the call: denoiser, measurement, operator, noise,
the host-side float64 grid with alpha, sigma and log-SNR at every point, the generator and, for
particle methods, the particle count. Like the solvers, methods are pure functions: no state
survives a call, randomness comes only from ``prob.generator``.

Conventions: t = 0 data, t = 1 noise, x_t = alpha x0 + sigma eps; sigma_ve = sigma / alpha is the
noise level of the scaled state x / alpha (the "VE" view that DDRM, DiffPIR and DAPS are written in).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch

from ..grids import resolve_grid
from ..paths import Path, get_path, require_gaussian
from .operators import LEVELS, Operator, level_rank

Tensor = torch.Tensor


@dataclass(frozen=True)
class MethodInfo:
    """What the registry knows about a posterior sampler."""

    name: str
    fn: Callable[..., Tensor]
    level: str              # weakest operator level it accepts ("forward", "linear", "pinv", "svd")
    particles: bool         # a particle method (takes particles=K)
    nfe_per_step: int       # denoiser evaluations per step per sample (per particle)
    backward_per_step: int  # backward passes through the denoiser per step per sample (per particle)
    noise_models: Tuple[str, ...]
    summary: str
    default_grid: str = "uniform"

    def options(self) -> Dict[str, Any]:
        sig = inspect.signature(self.fn)
        return {k: p.default for k, p in list(sig.parameters.items())[2:]}

    def cost(self, steps: int, particles: Optional[int] = None, **options: Any) -> Dict[str, int]:
        """Denoiser evaluations and backward passes per returned sample (upper bound)."""
        k = particles or 1
        # daps: nfe_per_step is its default ode_steps; the actual count is the ode_steps option
        per_step = options.get("ode_steps", self.options()["ode_steps"]) if self.name == "daps" else self.nfe_per_step
        return {"nfe": steps * per_step * k, "backward": steps * self.backward_per_step * k}


_REGISTRY: Dict[str, MethodInfo] = {}


def register(name: str, *, level: str, particles: bool = False, nfe_per_step: int = 1, backward_per_step: int = 0,
             noise_models: Tuple[str, ...] = ("gaussian",), default_grid: str = "uniform"):
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}")

    def deco(fn):
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _REGISTRY[name] = MethodInfo(name, fn, level, particles, nfe_per_step, backward_per_step, noise_models,
                                     summary, default_grid)
        return fn
    return deco


def methods() -> Dict[str, MethodInfo]:
    """Every registered posterior sampler by name."""
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> MethodInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown posterior sampling method {name!r}; valid: {sorted(_REGISTRY)}") from None


# ============================================================================ noise models
class GaussianNoise:
    """y = A(x) + sigma_y n, n ~ N(0, I)."""

    name = "gaussian"

    def __init__(self, sigma_y: float) -> None:
        self.sigma_y = float(sigma_y)

    def sample(self, Ax: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return Ax + self.sigma_y * torch.randn(Ax.shape, generator=generator, dtype=Ax.dtype, device=Ax.device)

    def log_likelihood(self, y: Tensor, Ax: Tensor) -> Tensor:
        """log p(y | x) per sample, up to a constant (needs sigma_y > 0)."""
        return -0.5 * ((y - Ax) ** 2).flatten(1).sum(1) / self.sigma_y ** 2


class PoissonNoise:
    """y ~ Poisson(gain * A(x)) / gain (A(x) >= 0 expected; clamped at a small positive floor)."""

    name = "poisson"

    def __init__(self, gain: float = 1.0, floor: float = 1e-6) -> None:
        if not gain > 0:
            raise ValueError(f"PoissonNoise gain must be > 0, got {gain}")
        self.gain, self.floor = float(gain), float(floor)

    def sample(self, Ax: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return torch.poisson((self.gain * Ax).clamp_min(0), generator=generator) / self.gain

    def log_likelihood(self, y: Tensor, Ax: Tensor) -> Tensor:
        lam = (self.gain * Ax).clamp_min(self.floor)
        return (self.gain * y * torch.log(lam) - lam).flatten(1).sum(1)


# ============================================================================ the problem / context
class Problem:
    """One posterior-sampling call (see the module docstring)."""

    def __init__(self, denoiser, y: Tensor, op: Operator, path: Path, grid: Tensor, sigma_y: float,
                 noise, generator: Optional[torch.Generator], particles: Optional[int], cond: Dict[str, Any],
                 all_particles: bool = False) -> None:
        self.denoiser, self.y, self.op, self.path = denoiser, y, op, path
        self.all_particles = all_particles
        self.sigma_y, self.noise, self.generator, self.K, self.cond = sigma_y, noise, generator, particles, cond
        self.B = y.shape[0]
        self.dtype, self.device = y.dtype, y.device
        self.t = grid.reshape(-1).to(torch.float64)
        self.n = self.t.shape[0] - 1
        self.alpha = path.alpha(self.t).to(torch.float64)
        self.sigma = path.sigma(self.t).to(torch.float64)
        with torch.no_grad():
            pos = self.alpha > 0
            self.sve = torch.where(pos, self.sigma / torch.where(pos, self.alpha, torch.ones_like(self.alpha)),
                                   torch.full_like(self.alpha, math.inf))
        self.a = self.alpha.tolist()
        self.s = self.sigma.tolist()
        self.ve = self.sve.tolist()
        self.lam = [math.log(a / s) if a > 0 and s > 0 else (math.inf if s == 0 else -math.inf)
                    for a, s in zip(self.a, self.s)]
        self.nfe = 0
        self.backward = 0
        self._d0: Optional[Tensor] = None   # D(0, t_0), see denoise_zero

    @property
    def x_shape(self) -> Tuple[int, ...]:
        return self.op.x_shape

    def randn(self, shape) -> Tensor:
        return torch.randn(shape, generator=self.generator, dtype=self.dtype, device=self.device)

    def rand(self, shape) -> Tensor:
        return torch.rand(shape, generator=self.generator, dtype=self.dtype, device=self.device)

    def denoise(self, x: Tensor, i: int, t: Optional[float] = None) -> Tensor:
        tv = torch.full((x.shape[0],), float(self.t[i]) if t is None else float(t), dtype=self.dtype, device=self.device)
        out = self.denoiser(x, tv, **self.cond)
        if out.shape != x.shape:
            raise ValueError(f"the denoiser returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        self.nfe += 1
        return out

    def denoise_with_grad(self, x: Tensor, i: int, fn: Callable[[Tensor], Tensor], t: Optional[float] = None):
        """(D(x), grad_x fn(D(x)).sum(), fn(D(x))) with one backward pass through the denoiser."""
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            x0 = self.denoise(xr, i, t)
            val = fn(x0)
            (g,) = torch.autograd.grad(val.sum(), xr)
        self.backward += 1
        return x0.detach(), g.detach(), val.detach()

    def set_grid(self, grid: Tensor) -> None:
        """Replace the grid (methods that adapt it, e.g. MCGdiff, call this before sampling)."""
        self.__init__(self.denoiser, self.y, self.op, self.path, grid, self.sigma_y, self.noise, self.generator,
                      self.K, self.cond, self.all_particles)

    def ddim_coefs(self, i: int, j: int, eta: float) -> Tuple[float, float, float]:
        """x_j = cx x_i + c0 x0 + cn eps: the DDIM(eta) step between grid points i and j (eta=1: DDPM)."""
        a_i, s_i, a_j, s_j = self.a[i], self.s[i], self.a[j], self.s[j]
        if s_j == 0.0:
            return 0.0, a_j, 0.0
        e = (a_i * s_j) / (s_i * a_j) if a_j > 0 else 0.0
        cn = min(eta * s_j * math.sqrt(max(1.0 - e * e, 0.0)), s_j)
        keep = math.sqrt(max(s_j * s_j - cn * cn, 0.0))
        return keep / s_i, a_j - keep * a_i / s_i, cn

    def x0_multistep(self, i: int, x0: Tensor, x0_prev: Optional[Tensor]) -> Tensor:
        """The x0 estimate of a second-order multistep step from grid point i: x0 + (x0 - x0_prev) h_i / (2 h_{i-1})
        with h the log-SNR steps (DPM-Solver++(2M) and its SDE variant, Lu et al. 2022). Used in place of
        x0 in the DDIM(eta) step, it makes the step second order at no extra evaluation; the first step
        and a step that ends at data (sigma = 0) stay first order, as in the solvers."""
        if x0_prev is None or i == 0 or self.s[i + 1] == 0:
            return x0
        h, h_prev = self.lam[i + 1] - self.lam[i], self.lam[i] - self.lam[i - 1]
        if not (math.isfinite(h) and math.isfinite(h_prev)) or h_prev <= 0:
            return x0
        return x0 + (0.5 * h / h_prev) * (x0 - x0_prev)

    def start_log_weight(self, x: Tensor, x0: Tensor) -> Tensor:
        """log p_{t_0}(x) - log N(x; 0, sigma_0^2 I) up to a constant, per row, for x drawn from the N(0, sigma_0^2 I)
        start and x0 = D(x, t_0): the importance weight that makes a particle system start from the
        diffusion's own marginal instead of its Gaussian approximation. Tweedie gives the gradient
        alpha_0 D(x) / sigma_0^2 of this log-ratio; it is integrated along the segment from 0 to x by the
        trapezoid rule, (alpha_0 / sigma_0^2) (x . D(0) + x . D(x)) / 2, so it costs one denoiser
        evaluation on a single row (x = 0), shared by the batch. Zero where alpha_0 = 0 (the start is exact)."""
        a0, s0 = self.a[0], self.s[0]
        if a0 == 0 or s0 == 0:
            return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        return (a0 / (s0 * s0)) * 0.5 * (x * (self.denoise_zero() + x0)).flatten(1).sum(1)

    def denoise_zero(self) -> Tensor:
        """D(0, t_0) as (1, *x_shape): one evaluation on a single row, cached (not counted in ``nfe``, which
        counts evaluations of the whole batch)."""
        if self._d0 is None:
            zero = torch.zeros((1,) + tuple(self.op.x_shape), dtype=self.dtype, device=self.device)
            self._d0 = self.denoiser(zero, torch.full((1,), float(self.t[0]), dtype=self.dtype, device=self.device),
                                     **self.cond)
        return self._d0

    def finish(self, x: Tensor, logw: Tensor) -> Tensor:
        """A particle method's output from its final particles x (B K, ...) and log-weights (B, K):
        one particle per row drawn from the weights, or (``all_particles``) all K of each row's
        system after systematic resampling (K equally weighted, correlated samples per row)."""
        if self.all_particles:
            return x[resample(logw, self.generator, self.K)]
        return x[pick_one(logw, self.generator)]

    def expand(self, y: Tensor) -> Tensor:
        """Repeat each row K times (particle methods): (B, ...) -> (B K, ...)."""
        return y.repeat_interleave(self.K, 0)


def log_normal(x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """Elementwise log N(x; mean, var)."""
    return -0.5 * ((x - mean) ** 2 / var + torch.log(2 * math.pi * var))


def resample(logw: Tensor, generator: Optional[torch.Generator], K: int) -> Tensor:
    """Systematic resampling within each row of (B, K) log-weights; returns flat indices into B K."""
    B = logw.shape[0]
    w = torch.softmax(logw, 1)
    cw = torch.cumsum(w, 1)
    cw[:, -1] = 1.0
    u = (torch.rand(B, 1, generator=generator, dtype=cw.dtype, device=cw.device) +
         torch.arange(K, dtype=cw.dtype, device=cw.device)[None]) / K
    idx = torch.searchsorted(cw.contiguous(), u.contiguous()).clamp(max=K - 1)
    return (idx + K * torch.arange(B, device=cw.device)[:, None]).reshape(-1)


def pick_one(logw: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """One flat index per row of (B, K) log-weights, drawn from the weights."""
    B, K = logw.shape
    k = torch.multinomial(torch.softmax(logw, 1), 1, generator=generator).reshape(-1)
    return k + K * torch.arange(B, device=logw.device)


def ess(logw: Tensor) -> Tensor:
    w = torch.softmax(logw, 1)
    return 1.0 / (w * w).sum(1)


# ============================================================================ entry point
def posterior_sample(denoiser: Callable[..., Tensor], y: Tensor, operator: Operator, *, path: Union[Path, str],
                     method: str, steps: int, sigma_y: float, generator: Optional[torch.Generator] = None,
                     particles: Optional[int] = None, grid: Union[str, Tensor, None] = None, noise=None,
                     cond: Optional[Dict[str, Any]] = None, return_info: bool = False, all_particles: bool = False,
                     sigma_start: Optional[float] = None, **options: Any):
    """Draw one posterior sample x ~ p(x0 | y) per row of y for y = A(x0) + noise.

    denoiser: D(x, t, **cond) -> E[x0 | x_t = x] with t of shape (B,) (``polydiff.core.Denoiser``).
    y: (B, *operator.y_shape); the result has shape (B, *operator.x_shape), y's dtype and device.
    operator: a ``polydiff.core.inverse`` operator; each method needs a capability level
        (``methods()[name].level``) and refuses a weaker operator.
    path: the model's path; method: a name from ``methods()``; steps: grid steps (the cost per
        sample is ``methods()[name].cost(steps, particles)``).
    sigma_y: standard deviation of the Gaussian measurement noise (>= 0; for ``noise=PoissonNoise``
        it is used only by methods that need a Gaussian scale).
    particles: number of particles K per row for particle methods (required there, refused elsewhere).
    grid: a grid name or tensor of times (default: the method's own, usually "uniform").
    sigma_start: with a named grid, start it where the path's noise level sigma/alpha equals
        ``sigma_start`` (data units) instead of at t = 1 (a level above the path's is clamped to t = 1).
        A prior says nothing about y far above the data's scale, so steps there are spent for nothing:
        deepinv's DDRM starts at the data range. On the Gaussian-mixture benchmark, grid="sigma" with
        sigma_start = 4 data standard deviations is what ddrm and diffpir need to match or beat deepinv
        at 100 steps (``benchmarks/posterior_gmm.py``); the methods start from N(0, sigma^2) there.
    noise: a noise model (default ``GaussianNoise(sigma_y)``); ``PoissonNoise`` where supported.
    all_particles: particle methods only: return all K particles of each row's system, resampled
        by the final weights, as (B K, *x_shape) (rows i K .. i K + K - 1 belong to y[i]). These K
        samples are correlated (they share ancestors), but the set approximates the posterior as K
        grows; this is how MCGdiff's authors draw many samples from one run.
    return_info: also return {"nfe": ..., "backward": ...} per returned sample ("calls": denoiser
        calls over the whole run, each on a batch of B or B K rows).
    options: the method's own options (``methods()[name].options()``).
    """
    info = get_method(method)
    if not isinstance(operator, Operator):
        raise ValueError(f"operator must be a polydiff.core.inverse Operator, got {type(operator).__name__}")
    if level_rank(operator.level) < level_rank(info.level):
        raise ValueError(f"method {method!r} needs an operator of level {info.level!r} (levels: "
                         f"{' < '.join(LEVELS)}), but {type(operator).__name__} only has level {operator.level!r}")
    unknown = sorted(set(options) - set(info.options()))
    if unknown:
        raise ValueError(f"method {method!r} has no option(s) {unknown}; its options: {info.options() or 'none'}")
    if not callable(denoiser):
        raise ValueError("denoiser must be callable as D(x, t, **cond)")
    if not isinstance(y, Tensor) or not y.is_floating_point():
        raise ValueError("y must be a floating-point tensor of shape (B, *operator.y_shape)")
    operator.check_y(y)
    if y.shape[0] < 1:
        raise ValueError("y must hold at least one measurement (B >= 1)")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y contains NaN or inf")
    if isinstance(sigma_y, Tensor):
        sigma_y = float(sigma_y)
    if not isinstance(sigma_y, (int, float)) or not math.isfinite(sigma_y) or sigma_y < 0:
        raise ValueError(f"sigma_y must be a finite number >= 0, got {sigma_y!r}")
    sigma_y = float(sigma_y)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if info.particles:
        if particles is None or not isinstance(particles, int) or particles < 1:
            raise ValueError(f"method {method!r} is a particle method: pass particles=K (an integer >= 1)")
    elif particles is not None or all_particles:
        raise ValueError(f"method {method!r} is not a particle method; particles= and all_particles= apply only to "
                         f"{sorted(n for n, m in _REGISTRY.items() if m.particles)}")
    noise = GaussianNoise(sigma_y) if noise is None else noise
    if noise.name not in info.noise_models:
        raise ValueError(f"method {method!r} supports noise models {info.noise_models}, not {noise.name!r}")
    path = require_gaussian(get_path(path), "posterior_sample")
    t_start = 1.0
    if sigma_start is not None:
        if grid is not None and not isinstance(grid, str):
            raise ValueError("sigma_start applies to named grids; a grid tensor already fixes its start")
        if isinstance(sigma_start, bool) or not isinstance(sigma_start, (int, float)) or not sigma_start > 0 \
                or not math.isfinite(sigma_start):
            raise ValueError(f"sigma_start must be a finite noise level > 0, got {sigma_start!r}")
        if sigma_start < float(path.sigma_ve(torch.tensor(1.0, dtype=torch.float64))):
            t_start = float(path.t_from_sigma_ve(torch.tensor(float(sigma_start), dtype=torch.float64)))
    g = resolve_grid(info.default_grid if grid is None else grid, steps, path, y.shape[0], t_start=t_start)
    if g.shape[1] != 1:
        raise ValueError("posterior samplers take a grid shared by the batch (shape (N+1,))")
    prob = Problem(denoiser, y, operator, path, g, sigma_y, noise, generator, particles, cond or {},
                   bool(all_particles))
    x = prob.randn((y.shape[0] * (particles or 1),) + operator.x_shape)
    x = info.fn(prob, x, **options)
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(f"method {method!r} produced NaN or inf; try more steps or other options")
    if return_info:
        k = 1 if all_particles else (particles or 1)
        return x, {"nfe": prob.nfe * k, "backward": prob.backward * k, "calls": prob.nfe}
    return x


__all__ = ["MethodInfo", "register", "methods", "get_method", "posterior_sample", "Problem", "GaussianNoise",
           "PoissonNoise", "resample", "pick_one", "ess", "log_normal"]
