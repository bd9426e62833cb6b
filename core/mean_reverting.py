"""Mean-reverting paths run on the ordinary Gaussian machinery by a shift of coordinates.

On a ``paths.MeanReverting`` path x_t = alpha x0 + (1 - alpha) mu + sigma eps, the shifted state

    x~_t = x_t - (1 - alpha(t)) mu = alpha x0 + sigma eps

is a Gaussian path with the same alpha and sigma, x~_0 = x0, and the score is unchanged
(grad log p(x_t) = grad log p(x~_t): the shift does not depend on x). So a model with denoiser
D(x, t, mu=mu) is sampled by running any solver on x~ with

    D~(x~, t, mu=mu, **cond) = D(x~ + (1 - alpha(t)) mu, t, mu=mu, **cond)

(``GaussianView``) and shifting back at the end. ``polydiff.core.sample`` does exactly that when it
is given a mean-reverting path; ``Denoiser`` feeds its network the shifted state, and
``DiffusionLoss`` trains on it. Guidance wrappers need nothing: their score corrections and the
factor sigma^2 / alpha are the same in both coordinates. The prior mean travels as the
conditioning keyword ``mu`` (``MEAN_KEY``) because the network needs it anyway.

References: Popov et al., "Grad-TTS" (ICML 2021); Richter et al., "Speech Enhancement and
Dereverberation with Diffusion-Based Generative Models" (TASLP 2023).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Union

import torch

from .paths import MeanReverting, Path

Tensor = torch.Tensor

#: the conditioning keyword that carries the prior mean of a mean-reverting path
MEAN_KEY = "mu"


def is_mean_reverting(path: Any) -> bool:
    """True for a ``paths.MeanReverting`` path."""
    return isinstance(path, MeanReverting)


def check_mean(path: Path, cond: Dict[str, Any], x: Tensor, who: str, check_finite: bool = True) -> Tensor:
    """The prior mean cond["mu"], checked against x (B, ...) and expanded to x's shape, dtype and device.

    Raises ValueError naming ``who`` when mu is missing, not a floating tensor, not broadcastable to
    x, or (``check_finite``: one host sync, once per sampling run) not finite.
    """
    if MEAN_KEY not in cond:
        raise ValueError(f"{who}: {path!r} is mean-reverting; pass its prior mean as the conditioning "
                         f"keyword {MEAN_KEY!r} (a tensor shaped like x, {tuple(x.shape)})")
    mu = cond[MEAN_KEY]
    if not isinstance(mu, Tensor) or not mu.is_floating_point():
        raise ValueError(f"{who}: {MEAN_KEY} must be a floating-point tensor, got "
                         f"{type(mu).__name__ if not isinstance(mu, Tensor) else mu.dtype}")
    try:
        mu = torch.broadcast_to(mu, x.shape)
    except RuntimeError:
        raise ValueError(f"{who}: {MEAN_KEY} of shape {tuple(mu.shape)} does not broadcast to x of shape "
                         f"{tuple(x.shape)}") from None
    if check_finite and not bool(torch.isfinite(mu).all()):
        raise ValueError(f"{who}: {MEAN_KEY} contains NaN or inf")
    return mu.to(device=x.device, dtype=x.dtype)


def _weight(path: MeanReverting, t: Union[Tensor, float], x: Tensor) -> Union[Tensor, float]:
    """1 - alpha(t) as a Python float (scalar t) or broadcast onto x (t of shape (B,) or (B, 1, ...))."""
    if not isinstance(t, Tensor):
        return float(path.mean_weight(torch.tensor(float(t), dtype=torch.float64)))
    w = path.mean_weight(t.to(torch.float64)).to(device=x.device, dtype=x.dtype)
    if w.dim() == 0:
        return w
    return w.reshape(w.shape[:1] + (1,) * (x.dim() - 1))


def to_gaussian(path: MeanReverting, x: Tensor, mu: Tensor, t: Union[Tensor, float]) -> Tensor:
    """x~ = x - (1 - alpha(t)) mu: the Gaussian-path state of x_t (t scalar or per sample (B,))."""
    return x - _weight(path, t, x) * mu


def from_gaussian(path: MeanReverting, x: Tensor, mu: Tensor, t: Union[Tensor, float]) -> Tensor:
    """x = x~ + (1 - alpha(t)) mu: the inverse of ``to_gaussian``."""
    return x + _weight(path, t, x) * mu


class GaussianView:
    """D~(x~, t, mu=mu, **cond) = D(x~ + (1 - alpha(t)) mu, t, mu=mu, **cond): a mean-reverting model
    seen as a denoiser on the Gaussian path of x~ (same alpha, sigma; same E[x0 | .])."""

    def __init__(self, denoiser: Callable[..., Tensor], path: MeanReverting) -> None:
        if not is_mean_reverting(path):
            raise ValueError(f"GaussianView needs a mean-reverting path, got {path!r}")
        self.denoiser, self.path = denoiser, path

    def __call__(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        if MEAN_KEY not in cond:
            raise ValueError(f"{self.path!r} is mean-reverting: the denoiser needs the conditioning "
                             f"keyword {MEAN_KEY!r}")
        return self.denoiser(from_gaussian(self.path, x, cond[MEAN_KEY], t), t, **cond)


__all__ = ["MEAN_KEY", "is_mean_reverting", "check_mean", "to_gaussian", "from_gaussian", "GaussianView"]
