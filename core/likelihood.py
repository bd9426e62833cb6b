"""Exact likelihoods through the probability-flow ODE (Song et al., "Score-Based Generative Modeling
through SDEs", ICLR 2021, Sec. 4.3 and App. D.2).

The ODE is integrated in the angle coordinates of ``solvers.ode``: phi = arctan(sigma/alpha) and
z = x / r with r = sqrt(alpha^2 + sigma^2), so z = cos(phi) x0 + sin(phi) eps on every path and

    dz/dphi = cos(phi) eps-hat - sin(phi) D = (cos(phi) z - D(r z, t)) / sin(phi),

finite at the noise end (phi = pi/2 where alpha = 0) where the t-parameterisation of VP-cosine and
flow paths is not. The instantaneous change of variables (Chen et al., "Neural ODEs", NeurIPS 2018)
gives d log p(z(phi)) / dphi = -div_z f, so with the state carried to the noise end phi_1:

    log p_t_eps(x) = log N(z_1; 0, I) + int_{phi_0}^{phi_1} div_z f dphi - d log r(t_eps).

Integrating in phi needs no Jacobian of the time change (phi is the ODE's own time); the last term is
the density change of the scaling z = x / r. At the noise end the prior is N(0, (alpha(1)^2 +
sigma(1)^2) I) in x, i.e. N(0, I) in z: exact where alpha(1) = 0 (Flow, VP-cosine), an approximation
elsewhere (VP-linear: alpha(1) = 0.0066; VE: the data's scale over sigma_max), whose error per sample
is log p_1(x_1) - log N(x_1) for the returned ``latent`` x_1.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, NamedTuple, Optional, Union

import torch

from .paths import Path, get_path, require_gaussian
from .solvers.ode import odeint_dopri5

Tensor = torch.Tensor

DIVERGENCES = ("exact", "hutchinson")
#: default data end: the time where sigma / alpha = SIGMA_EPS (Song et al. 2021 start VP-linear at
#: t = 1e-5, which is sigma = 1e-3), or t = 0 on paths that start noisier (VE, EDM).
SIGMA_EPS = 1e-3


class NLLResult(NamedTuple):
    """Per-sample negative log-likelihoods of x under the model's marginal at t_eps.

    nats, bits_per_dim: (B,) -log p and -log p / (d ln 2), d the number of elements per sample.
    nfe: denoiser forward evaluations (each also costs d backward passes for the exact divergence,
        ``probes`` for Hutchinson).
    stderr: (B,) standard error of ``nats`` from the divergence estimator: 0 for the exact
        divergence; for Hutchinson the spread over the probes / sqrt(probes) (NaN for one probe).
    latent: the ODE's end state x_1 at t = 1, shaped like x (the encoding of x into noise).
    """

    nats: Tensor
    bits_per_dim: Tensor
    nfe: int
    stderr: Tensor
    latent: Tensor


def _time_at(path: Path, phi: float) -> float:
    """The path time with arctan(sigma / alpha) = phi, for phi in (0, pi/2]."""
    return float(path.t_from_logsnr(torch.tensor(-math.log(math.tan(phi)), dtype=torch.float64)))


def _alpha_sigma(path: Path, t: float) -> tuple[float, float]:
    t64 = torch.tensor(t, dtype=torch.float64)
    return float(path.alpha(t64)), float(path.sigma(t64))


def _quadratic_forms(f: Tensor, z: Tensor, vectors: Tensor) -> Tensor:
    """(B, K): v_k^T (df/dz) v_k per sample for each of K vectors (K, B, d), one backward pass each."""
    n = vectors.shape[0]
    forms = [(torch.autograd.grad(f, z, v, retain_graph=k < n - 1)[0] * v).sum(1)
             for k, v in enumerate(vectors)]
    return torch.stack(forms, 1)


def nll(denoiser: Callable[..., Tensor], x: Tensor, *, path: Union[Path, str],
        divergence: str = "exact", probes: int = 1, rtol: float = 1e-5, atol: float = 1e-5,
        t_eps: Optional[float] = None, generator: Optional[torch.Generator] = None,
        cond: Optional[Dict[str, Any]] = None) -> NLLResult:
    """Negative log-likelihood of x (B, ...) under the probability-flow ODE of ``denoiser``.

    Integrates [z, log-det] from the data end phi(t_eps) to the noise end phi(1) with the adaptive
    Dormand-Prince solver ``odeint_dopri5`` (tolerances ``rtol``, ``atol`` on the whole state).
    divergence: "exact" (d backward passes per evaluation; for small d) or "hutchinson"
        (Grathwohl et al., "FFJORD", ICLR 2019): ``probes`` Rademacher vectors drawn once from
        ``generator`` and kept for the whole trajectory; each gives an unbiased log-likelihood and
        ``nats`` is their mean.
    t_eps: the data end (sigma(t_eps) > 0 is needed: the drift is 0/0 at sigma = 0). Default: the
        time where sigma / alpha = ``SIGMA_EPS`` = 1e-3, or 0 on paths that start noisier. The result
        is -log p_t_eps(x), the density of x0 + (sigma/alpha)(t_eps) noise scaled by alpha(t_eps).
    Steps are shared by the batch (RMS error over the whole state), so rare low-density samples get
    larger errors than the mean (2-D ring at rtol = atol = 1e-5: mean 2e-5, worst sample 3e-3 nats).
    The denoiser must treat samples independently; nothing is differentiable w.r.t. its parameters.
    Bits per dimension ignore dequantisation (continuous data).
    """
    path = require_gaussian(get_path(path), "likelihood.nll")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2 or x.shape[0] < 1:
        raise ValueError("x must be a floating-point tensor of shape (B, d, ...) with B >= 1")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf")
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; valid: {DIVERGENCES}")
    if not isinstance(probes, int) or isinstance(probes, bool) or probes < 1:
        raise ValueError(f"probes must be an integer >= 1, got {probes!r}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be > 0, got {rtol}, {atol}")
    if t_eps is None:
        t_eps = float(path.t_from_sigma_ve(SIGMA_EPS))
    if not 0.0 <= t_eps < 1.0:
        raise ValueError(f"t_eps must be in [0, 1), got {t_eps}")
    a0, s0 = _alpha_sigma(path, t_eps)
    a1, s1 = _alpha_sigma(path, 1.0)
    phi0, phi1 = math.atan2(s0, a0), math.atan2(s1, a1)
    if not (s0 > 0 and a0 > 0 and phi0 < phi1):
        raise ValueError(f"need 0 < sigma(t_eps) and alpha(t_eps) > 0 below the noise end; at t_eps={t_eps} "
                         f"alpha={a0:.3g}, sigma={s0:.3g}: choose a larger t_eps")

    B, shape, d = x.shape[0], x.shape, x[0].numel()
    if divergence == "exact":
        vectors = torch.eye(d, dtype=x.dtype, device=x.device)[:, None, :].expand(d, B, d)
    else:
        signs = torch.randint(0, 2, (probes, B, d), generator=generator, device=x.device)
        vectors = signs.to(x.dtype) * 2 - 1
    cond = cond or {}

    def field(phi: float, y: Tensor) -> Tensor:
        t = _time_at(path, phi)
        a, s = _alpha_sigma(path, t)
        r = math.hypot(a, s)
        tv = torch.full((B,), t, dtype=x.dtype, device=x.device)
        with torch.enable_grad():
            z = y[:, :d].detach().requires_grad_(True)
            D = denoiser((z * r).reshape(shape), tv, **cond)
            if D.shape != shape:
                raise ValueError(f"the denoiser returned shape {tuple(D.shape)} for input {tuple(shape)}")
            f = ((a / r) * z - D.reshape(B, d)) / (s / r)
            forms = _quadratic_forms(f, z, vectors)
        div = forms.sum(1, keepdim=True) if divergence == "exact" else forms
        return torch.cat([f.detach(), div.detach()], 1)

    r0, r1 = math.hypot(a0, s0), math.hypot(a1, s1)
    k = 1 if divergence == "exact" else probes
    y0 = torch.cat([x.detach().reshape(B, d) / r0, x.new_zeros(B, k)], 1)
    y1, nfe = odeint_dopri5(field, y0, phi0, phi1, rtol=rtol, atol=atol)
    z1, logdet = y1[:, :d], y1[:, d:]
    log_prior = -0.5 * (z1 * z1).sum(1, keepdim=True) - 0.5 * d * math.log(2 * math.pi)
    nats_k = -(log_prior + logdet - d * math.log(r0))          # (B, k): one estimate per probe
    nats = nats_k.mean(1)
    if divergence == "exact":
        stderr = torch.zeros_like(nats)
    elif k == 1:
        stderr = torch.full_like(nats, math.nan)
    else:
        stderr = nats_k.std(1) / math.sqrt(k)
    return NLLResult(nats, nats / (d * math.log(2)), nfe, stderr, (z1 * r1).reshape(shape))


__all__ = ["nll", "NLLResult", "DIVERGENCES", "SIGMA_EPS"]
