"""The model contract: a denoiser D(x_t, t, **cond) -> E[x0 | x_t], and every conversion in one place.

A network may predict eps, x0, v, the flow velocity or the score; ``Denoiser`` turns it into a
denoiser on any path, and the functions below convert a denoiser output back into the other
parameterisations (solvers need eps-hat and the ODE drift; losses need training targets).

Definitions for x = alpha x0 + sigma eps (alpha, sigma broadcast per sample):
  eps      = (x - alpha x0) / sigma
  v        = alpha eps - sigma x0                     (Salimans & Ho 2022; any affine path)
  velocity = alpha' x0 + sigma' eps                   (the probability-flow drift dx/dt)
  score    = -eps / sigma
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from . import mean_reverting as _mr
from .paths import LOGSNR_CLIP, Path

Tensor = torch.Tensor
DenoiserFn = Callable[..., Tensor]

PREDICTIONS = ("eps", "x0", "v", "velocity", "score", "edm")


def _bcast(c: Tensor, x: Tensor) -> Tensor:
    """Broadcast a per-sample coefficient of shape (), (B,) onto x of shape (B, ...)."""
    c = torch.as_tensor(c, device=x.device)
    if c.dim() == 0:
        return c.to(x.dtype)
    return c.to(x.dtype).reshape(c.shape + (1,) * (x.dim() - c.dim()))


def coefficients(path: Path, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """alpha, sigma, alpha', sigma' at t, computed in float64 and broadcast onto x."""
    t64 = t.to(torch.float64)
    return (_bcast(path.alpha(t64), x), _bcast(path.sigma(t64), x),
            _bcast(path.d_alpha(t64), x), _bcast(path.d_sigma(t64), x))


# --- conversions: network output -> x0 ---------------------------------------------------------
def x0_from(prediction: str, out: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor,
            d_alpha: Optional[Tensor] = None, d_sigma: Optional[Tensor] = None) -> Tensor:
    """x0-hat from a prediction of the given kind (coefficients already broadcast onto x)."""
    if prediction == "x0":
        return out
    if prediction == "eps":
        return (x - sigma * out) / alpha
    if prediction == "v":
        return (alpha * x - sigma * out) / (alpha * alpha + sigma * sigma)
    if prediction == "velocity":
        return (d_sigma * x - sigma * out) / (d_sigma * alpha - sigma * d_alpha)
    if prediction == "score":
        return (x + sigma * sigma * out) / alpha
    raise ValueError(f"unknown prediction {prediction!r}; valid: {PREDICTIONS}")


# --- conversions: x0 -> other parameterisations ------------------------------------------------
def eps_from_x0(x: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return (x - alpha * x0) / sigma


def target_from_x0(prediction: str, x: Tensor, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor,
                   d_alpha: Optional[Tensor] = None, d_sigma: Optional[Tensor] = None) -> Tensor:
    """The quantity a network of kind ``prediction`` should output, given x0 and eps.

    "edm" networks are regressed through their denoiser D = c_skip x + c_out F, so their target is x0.
    """
    if prediction in ("x0", "edm"):
        return x0
    if prediction == "eps":
        return eps
    if prediction == "v":
        return alpha * eps - sigma * x0
    if prediction == "velocity":
        return d_alpha * x0 + d_sigma * eps
    if prediction == "score":
        return -eps / sigma
    raise ValueError(f"unknown prediction {prediction!r}; valid: {PREDICTIONS}")


def x0_error_factor(prediction: str, alpha: Tensor, sigma: Tensor,
                    d_alpha: Optional[Tensor] = None, d_sigma: Optional[Tensor] = None) -> Tensor:
    """k(t) with |target-hat - target|^2 = k(t) |x0-hat - x0|^2 at fixed x (exact, all kinds; "edm"
    compares D with x0, so k = 1)."""
    if prediction in ("x0", "edm"):
        return torch.ones_like(alpha)
    if prediction == "eps":
        return (alpha / sigma) ** 2
    if prediction == "v":
        return ((alpha * alpha + sigma * sigma) / sigma) ** 2
    if prediction == "velocity":
        return ((d_sigma * alpha - sigma * d_alpha) / sigma) ** 2
    if prediction == "score":
        return (alpha / (sigma * sigma)) ** 2
    raise ValueError(f"unknown prediction {prediction!r}; valid: {PREDICTIONS}")


def edm_scalings(alpha: Tensor, sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor]:
    """EDM preconditioning (Karras et al. 2022, Table 1) written for any path, finite at alpha = 0.

    With x_ve = x / alpha and s = sigma / alpha, EDM's c_skip x_ve, c_out, c_in x_ve become
    (returned as multipliers of x, of F, and of x respectively):
      skip = sd^2 alpha / (sigma^2 + alpha^2 sd^2),  out = sigma sd / sqrt(sigma^2 + alpha^2 sd^2),
      inp  = 1 / sqrt(sigma^2 + alpha^2 sd^2).
    """
    sd2 = sigma_data * sigma_data
    denom = sigma * sigma + alpha * alpha * sd2
    return sd2 * alpha / denom, sigma * sigma_data / denom.sqrt(), denom.rsqrt()


class Denoiser(torch.nn.Module):
    """Wrap a network into D(x, t, **cond) -> x0-hat on a path.

    ``prediction`` says what the network outputs: "eps", "x0", "v", "velocity", "score", or
    "edm" (the network is F in EDM's preconditioning D = c_skip x + c_out F(c_in x, c_noise), with
    c_noise = -lambda(t)/4 = log(sigma/alpha)/4, and ``sigma_data`` its data scale).
    Other kinds call ``net(x, t, **cond)`` with t of shape (B,).

    eps prediction cannot recover x0 where alpha = 0 (zero terminal SNR): use v/x0/velocity there.
    On a mean-reverting path (``paths.MeanReverting``) D is called with the prior mean as ``mu=`` and
    the network gets the Gaussian-path state x~ = x - (1 - alpha) mu (mu stays in its conditioning).
    """

    def __init__(self, net: Callable[..., Tensor], path: Path, prediction: str = "eps",
                 sigma_data: float = 0.5) -> None:
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; valid: {PREDICTIONS}")
        self.net = net
        self.path = path
        self.prediction = prediction
        self.sigma_data = float(sigma_data)

    def network_input(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """(network x input, network time input, broadcast path coefficients) for D at (x, t)."""
        coefs = coefficients(self.path, t, x)
        if self.prediction == "edm":
            a, s = coefs[0], coefs[1]
            _, _, c_in = edm_scalings(a, s, self.sigma_data)
            lam = self.path.logsnr(t.to(torch.float64)).clamp(-LOGSNR_CLIP, LOGSNR_CLIP)
            return c_in * x, (-lam / 4).to(x.dtype), coefs
        return x, t, coefs

    def output_to_x0(self, out: Tensor, x: Tensor, coefs: tuple[Tensor, ...]) -> Tensor:
        a, s, da, ds = coefs
        if self.prediction == "edm":
            skip, c_out, _ = edm_scalings(a, s, self.sigma_data)
            return skip * x + c_out * out
        return x0_from(self.prediction, out, x, a, s, da, ds)

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        t = per_sample_t(t, x)
        if _mr.is_mean_reverting(self.path):   # the network sees x~ = x - (1 - alpha) mu (and mu in cond)
            if _mr.MEAN_KEY not in cond:
                raise ValueError(f"{self.path!r} is mean-reverting: call the denoiser with its prior mean as "
                                 f"the keyword {_mr.MEAN_KEY!r}")
            x = _mr.to_gaussian(self.path, x, cond[_mr.MEAN_KEY], t)
        net_x, net_t, coefs = self.network_input(x, t)
        return self.output_to_x0(self.net(net_x, net_t, **cond), x, coefs)


def per_sample_t(t: Any, x: Tensor) -> Tensor:
    """t as a tensor of shape (B,) on x's device; a Python number or an integer tensor takes x's dtype."""
    t = t.to(x.device) if isinstance(t, Tensor) else torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if not t.is_floating_point():
        t = t.to(x.dtype)
    if t.dim() == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or of shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t


class NFECounter:
    """Wrap a denoiser and count its evaluations (``nfe``); benchmarks use it to report cost."""

    def __init__(self, denoiser: DenoiserFn) -> None:
        self.denoiser = denoiser
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        self.nfe += 1
        return self.denoiser(x, t, **cond)


__all__ = ["Denoiser", "NFECounter", "PREDICTIONS", "coefficients", "x0_from", "eps_from_x0",
           "target_from_x0", "x0_error_factor", "edm_scalings"]
