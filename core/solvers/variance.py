"""The posterior spread Var[x0 | x_t] that ancestral steps need, estimated once from data.

An ancestral step that plugs in the mean E[x0 | x_t] = D and ignores the spread of x0 around it
samples too narrow a distribution at few steps (DDPM's variance is 19 % low at 50 steps on a
Gaussian). Analytic-DPM (Bao, Li, Zhu & Zhang, ICLR 2022, arXiv 2201.06503) moment-matches the
reverse step instead: the step from s to t draws from q(x_t | x_s, x0 = D) widened by
b^2 v(s), where b is the step's coefficient on x0 and v(s) the per-dimension posterior variance.
For Gaussian data with the exact denoiser this makes every ancestral step exact, at any step count.

``X0Variance.estimate`` measures v as the denoiser's mean squared error, E||x0 - D(x_t, t)||^2 / d
over data x0 and fresh noise, on a table of log-SNRs. That is the optimal isotropic variance for the
model's own mean, its error included (Bao et al., "Estimating the optimal covariance with imperfect
mean in diffusion probabilistic models", ICML 2022, arXiv 2206.07309); with an exact denoiser it is
Analytic-DPM's E[Var[x0 | x_t]]. Pass it as ``sample(..., solver="ddpm", x0_var=v)`` (or ``"ddim"``).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch

from ..mean_reverting import is_mean_reverting
from ..paths import Path, get_path

Tensor = torch.Tensor


class X0Variance:
    """v(t) = per-dimension E||x0 - D(x_t, t)||^2 on a log-SNR table, interpolated for any t.

    logsnr: increasing log-SNRs (K,); var: the variances there (K,), positive; data_var: the data's
    per-dimension variance V. Interpolation is relative to the Gaussian law v_G = V e^{-2 lambda} /
    (V + e^{-2 lambda}) with lambda = log(alpha / sigma) (the error of the best linear estimator, an
    upper bound on the exact posterior variance): log(v / v_G) is linear in lambda between table points
    and constant beyond them, so Gaussian data are interpolated exactly, v tends to V at zero SNR and
    falls as sigma^2 / alpha^2 at small noise.
    """

    def __init__(self, path: Union[Path, str], logsnr: Tensor, var: Tensor, data_var: float) -> None:
        self.path = get_path(path)
        logsnr = torch.as_tensor(logsnr, dtype=torch.float64).reshape(-1)
        var = torch.as_tensor(var, dtype=torch.float64).reshape(-1)
        if logsnr.numel() < 2 or logsnr.shape != var.shape:
            raise ValueError(f"logsnr and var must be two tables of the same length >= 2, got "
                             f"{tuple(logsnr.shape)} and {tuple(var.shape)}")
        if not bool(torch.isfinite(logsnr).all()) or not bool((logsnr[1:] > logsnr[:-1]).all()):
            raise ValueError("logsnr must be finite and strictly increasing")
        if not bool(torch.isfinite(var).all()) or bool((var <= 0).any()):
            raise ValueError("var must be finite and positive")
        if not (math.isfinite(data_var) and data_var > 0):
            raise ValueError(f"data_var must be finite and positive, got {data_var}")
        self.logsnr, self.var, self.data_var = logsnr, var, float(data_var)
        self._log_ratio = torch.log(var) - self._log_gaussian(logsnr)

    def _log_gaussian(self, lam: Tensor) -> Tensor:
        """log v_G(lambda) = log V - softplus(log V + 2 lambda)."""
        log_v = math.log(self.data_var)
        return log_v - torch.nn.functional.softplus(2 * lam + log_v)

    def at_logsnr(self, lam: Tensor) -> Tensor:
        """v at log-SNR ``lam`` (any shape; -inf is pure noise, +inf clean data)."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        table, ratio = self.logsnr.to(lam.device), self._log_ratio.to(lam.device)
        inside = lam.clamp(float(table[0]), float(table[-1]))
        k = torch.searchsorted(table, inside.reshape(-1).contiguous()).clamp(1, len(table) - 1).reshape(lam.shape)
        w = (inside - table[k - 1]) / (table[k] - table[k - 1])
        return (ratio[k - 1] + w * (ratio[k] - ratio[k - 1]) + self._log_gaussian(lam)).exp()

    def __call__(self, t: Tensor) -> Tensor:
        """v at times t (the solvers call this with their grid rows)."""
        return self.at_logsnr(self.path.logsnr(torch.as_tensor(t, dtype=torch.float64)))

    @classmethod
    def estimate(cls, denoiser: Callable[..., Tensor], data: Tensor, path: Union[Path, str], *,
                 logsnr_range: Tuple[float, float] = (-6.0, 8.0), points: int = 41, repeats: int = 1,
                 batch: int = 512, cond: Optional[Dict[str, Any]] = None,
                 generator: Optional[torch.Generator] = None, progress: bool = False) -> "X0Variance":
        """Monte-Carlo estimate from training data (B, ...) with ``repeats`` noise draws per example.

        The cost is points x repeats x B denoiser evaluations (batched by ``batch``); ``cond`` is
        passed to every call unchanged. The standard error of each table entry is about
        v sqrt(2 / (repeats B d)) for Gaussian errors.
        """
        path = get_path(path)
        if is_mean_reverting(path):
            raise ValueError("X0Variance.estimate is for Gaussian paths; a mean-reverting path's x0 spread "
                             "depends on the prior mean")
        if not isinstance(data, Tensor) or data.dim() < 2 or data.shape[0] < 1 or not data.is_floating_point():
            raise ValueError("data must be a floating-point tensor (B, ...) with B >= 1 and at least one feature dim")
        if not bool(torch.isfinite(data).all()):
            raise ValueError("data contains NaN or inf")
        lo, hi = logsnr_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"logsnr_range must be two finite numbers lo < hi, got {logsnr_range}")
        if points < 2 or repeats < 1 or batch < 1:
            raise ValueError(f"points must be >= 2 and repeats, batch >= 1; got {points}, {repeats}, {batch}")
        cond = cond or {}
        lams = torch.linspace(lo, hi, points, dtype=torch.float64)
        times = path.t_from_logsnr(lams)
        alphas, sigmas = path.alpha(times), path.sigma(times)
        per_example = data[0].numel()
        var = torch.zeros(points, dtype=torch.float64)
        from tqdm.auto import tqdm
        with torch.no_grad():
            for k in tqdm(range(points), disable=not progress, desc="x0 variance"):
                total = torch.zeros((), dtype=torch.float64, device=data.device)   # one host sync per level
                for _ in range(repeats):
                    for start in range(0, data.shape[0], batch):
                        x0 = data[start:start + batch]
                        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
                        xt = float(alphas[k]) * x0 + float(sigmas[k]) * eps
                        t = torch.full((x0.shape[0],), float(times[k]), dtype=x0.dtype, device=x0.device)
                        D = denoiser(xt, t, **cond)
                        if D.shape != x0.shape:
                            raise ValueError(f"the denoiser returned shape {tuple(D.shape)} for input {tuple(x0.shape)}")
                        total += ((x0 - D).double() ** 2).sum()
                var[k] = float(total) / (repeats * data.shape[0] * per_example)
        if not bool(torch.isfinite(var).all()):
            raise FloatingPointError("the denoiser returned NaN or inf while estimating Var[x0 | x_t]")
        data_var = float(data.double().var(0, correction=0).mean()) if data.shape[0] > 1 else float(var[0])
        return cls(path, lams, var.clamp_min(1e-300), max(data_var, 1e-300))


__all__ = ["X0Variance"]
