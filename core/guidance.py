"""Guidance as composable denoiser wrappers: each wrapper is itself a denoiser D(x, t, **cond) -> x0-hat.

Because a wrapper keeps the model contract, it works unchanged with every solver in
``polydiff.core.sample`` and with every other wrapper. Guidance is a correction of the score
grad_x log p_t(x); on a Gaussian path x = alpha x0 + sigma eps Tweedie's formula
D = (x + sigma^2 score) / alpha turns a score correction ``delta`` into the denoiser correction

    D_g = D + (sigma^2 / alpha) * delta,

which is how every gradient-based wrapper below is written. Where alpha = 0 (t = 1 on Flow and
zero-terminal-SNR paths) this is 0 * inf: the exact guidance gradient vanishes while sigma^2/alpha
diverges, and the finite limit (for an exact classifier, E[x0 | y] - E[x0]) cannot be read off the
gradient. The correction is dropped there, so a solver's first evaluation at zero SNR is unguided
(the next ones are guided). Where alpha is tiny but nonzero (a path whose alpha(1) only rounds to
zero) the factor amplifies any error in the gradient by sigma^2/alpha: start the grid at a finite
noise level there.

Wrappers:
  ``ClassifierFreeGuidance``  D_u + w (D_c - D_u), with guidance rescale and a guidance interval.
  ``ClassifierGuidance``      score + w grad log p(y | x_t)           (Dhariwal & Nichol 2021).
  ``UniversalGuidance``       score - w grad_x loss(D(x_t)), plus backward guidance in x0 space
                              (Bansal et al. 2024).
  ``Compose``                 a flat way to write nested wrappers.

Composition: wrappers nest, and nesting adds score corrections. For example
``ClassifierGuidance(ClassifierFreeGuidance(D, w, uncond=...), log_p, lam, path)`` samples with
score_u + w (score_c - score_u) + lam grad log p(y | x_t). ``Compose(D, f, g)`` is ``g(f(D))``
(first wrapper innermost), with each f, g a one-argument factory such as
``functools.partial(ClassifierGuidance, log_prob_fn=log_p, scale=1.0, path=path)``.
Gradient-based wrappers differentiate through whatever they wrap (an inner CFG costs its two
evaluations inside the gradient too), including the gradients of inner gradient-based wrappers.

Autograd: gradient-based wrappers switch gradients on internally, so they work inside
``torch.no_grad()`` (and in ``sample``). Their outputs carry no graph unless the caller itself is
differentiating with respect to x (grad mode on and ``x.requires_grad``), which is what lets an
outer gradient-based wrapper differentiate through an inner one. No wrapper syncs with the host:
time-dependent decisions are per-sample ``torch.where`` masks.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from .denoiser import coefficients, per_sample_t
from .paths import Path

Tensor = torch.Tensor
DenoiserFn = Callable[..., Tensor]


# --------------------------------------------------------------------------- helpers
def _finite(name: str, value: Any) -> float:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _check_denoiser(denoiser: Any) -> None:
    if not callable(denoiser):
        raise ValueError(f"denoiser must be callable as D(x, t, **cond), got {type(denoiser).__name__}")


def _check_path(path: Any, who: str, why: str) -> Path:
    if path is None:
        raise ValueError(f"{who} needs path= (a polydiff.core.paths.Path) {why}")
    if not isinstance(path, Path):
        raise ValueError(f"{who}: path must be a polydiff.core.paths.Path, got {type(path).__name__}")
    return path


def _score_to_x0_factor(path: Path, t: Tensor, x: Tensor) -> Tensor:
    """sigma^2 / alpha broadcast onto x, and 0 where alpha = 0 (see the module docstring)."""
    a, s, _, _ = coefficients(path, t, x)
    pos = a > 0
    return torch.where(pos, s * s / torch.where(pos, a, torch.ones_like(a)), torch.zeros_like(a))


def _differentiating(x: Tensor) -> bool:
    """True when the caller differentiates with respect to x (keep graphs, create higher-order ones)."""
    return torch.is_grad_enabled() and x.requires_grad


def _grad(value: Tensor, x: Tensor, keep_graph: bool) -> Tensor:
    """grad_x of value.sum(); zeros when value does not depend on x."""
    if not value.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(value.sum(), x, create_graph=keep_graph, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:
        return False


def _check_per_sample(value: Tensor, x: Tensor, what: str) -> Tensor:
    if not isinstance(value, Tensor) or value.shape != (x.shape[0],):
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{what} must return a tensor of shape ({x.shape[0]},), got {shape}")
    return value


class Guidance(torch.nn.Module):
    """Base of the guidance wrappers: holds the wrapped denoiser (registered if it is a Module)."""

    def __init__(self, denoiser: DenoiserFn) -> None:
        super().__init__()
        _check_denoiser(denoiser)
        self.denoiser = denoiser

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------- classifier-free guidance
class ClassifierFreeGuidance(Guidance):
    """Classifier-free guidance D_cfg = D_u + scale (D_c - D_u) (Ho & Salimans, arXiv 2207.12598).

    D_c = denoiser(x, t, **cond) and D_u = denoiser(x, t, **{**cond, **uncond}); ``uncond`` holds the
    "null" values of the conditioning keys (e.g. ``{"label": null_label}``). scale = 1 is the
    conditional model (one evaluation), scale = 0 the unconditional one.

    rescale: guidance rescale (Lin et al., "Common Diffusion Noise Schedules and Sample Steps are
        Flawed", WACV 2024, Sec. 3.4) in eps space: eps_r = eps_cfg * std(eps_c) / std(eps_cfg) per
        sample (std over all non-batch dims), eps = rescale * eps_r + (1 - rescale) * eps_cfg, mapped
        back to x0 with ``path``. The sigma of eps = (x - alpha D)/sigma cancels in the ratio, so only
        alpha is needed; where alpha = 0 every model has eps = x / sigma, the ratio is 1 and the plain
        CFG prediction is returned.
    interval: (t_lo, t_hi) in the t convention of the path (t = 0 data, t = 1 noise); guidance is
        applied only for t_lo <= t <= t_hi, per sample, and the conditional prediction is used
        outside (Kynkäänniemi et al., "Applying Guidance in a Limited Interval Improves Sample and
        Distribution Quality", NeurIPS 2024). The paper's EDM sigma interval (sigma_lo, sigma_hi]
        becomes (path.t_from_sigma_ve(sigma_lo), path.t_from_sigma_ve(sigma_hi)). Both branches are
        evaluated for every sample (selection by torch.where, no host sync).
    batched: evaluate D_c and D_u in one call on the concatenated batch (2B). Tensor conditioning
        values must have the batch dimension B (uncond values are broadcast to the cond value's
        shape); non-tensor values must be equal in cond and uncond.
    path: required when rescale > 0.
    """

    def __init__(self, denoiser: DenoiserFn, scale: float, *, uncond: Dict[str, Any], rescale: float = 0.0,
                 interval: Tuple[float, float] = (0.0, 1.0), path: Optional[Path] = None,
                 batched: bool = False) -> None:
        super().__init__(denoiser)
        self.scale = _finite("scale", scale)
        if not isinstance(uncond, dict) or not uncond:
            raise ValueError("uncond must be a non-empty dict of the conditioning values that make the "
                             f"model unconditional (e.g. {{'label': null_label}}), got {uncond!r}")
        if not all(isinstance(k, str) for k in uncond):
            raise ValueError(f"uncond keys must be strings (keyword names), got {list(uncond)}")
        self.uncond = dict(uncond)
        self.rescale = _finite("rescale", rescale)
        if not 0.0 <= self.rescale <= 1.0:
            raise ValueError(f"rescale must lie in [0, 1], got {self.rescale}")
        try:
            lo, hi = interval
        except (TypeError, ValueError):
            raise ValueError(f"interval must be a pair (t_lo, t_hi), got {interval!r}") from None
        lo, hi = _finite("interval[0]", lo), _finite("interval[1]", hi)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"interval must satisfy 0 <= t_lo <= t_hi <= 1, got ({lo}, {hi})")
        self.interval = (lo, hi)
        self._full_interval = lo == 0.0 and hi == 1.0
        if self.rescale > 0 or path is not None:
            path = _check_path(path, "ClassifierFreeGuidance", "when rescale > 0")
        self.path = path
        if not isinstance(batched, bool):
            raise ValueError(f"batched must be a bool, got {batched!r}")
        self.batched = batched

    def extra_repr(self) -> str:
        return (f"scale={self.scale}, rescale={self.rescale}, interval={self.interval}, "
                f"uncond_keys={sorted(self.uncond)}, batched={self.batched}")

    # ---------------------------------------------------------------- evaluation
    def _both(self, x: Tensor, t: Tensor, cond: Dict[str, Any]) -> Tuple[Tensor, Tensor]:
        ucond = {**cond, **self.uncond}
        if not self.batched:
            return self.denoiser(x, t, **cond), self.denoiser(x, t, **ucond)
        B = x.shape[0]
        joint: Dict[str, Any] = {}
        for key in ucond:
            c_val = cond.get(key, None)
            u_val = ucond[key]
            if key not in cond:
                raise ValueError(f"batched CFG: uncond key {key!r} is missing from the conditioning; "
                                 "pass it in cond or use batched=False")
            if isinstance(c_val, Tensor):
                if c_val.dim() == 0 or c_val.shape[0] != B:
                    raise ValueError(f"batched CFG: cond[{key!r}] must have batch dimension {B}, "
                                     f"got shape {tuple(c_val.shape)}")
                u = torch.as_tensor(u_val, device=c_val.device).to(c_val.dtype)
                try:
                    u = torch.broadcast_to(u, c_val.shape)
                except RuntimeError:
                    raise ValueError(f"batched CFG: uncond[{key!r}] of shape {tuple(u.shape)} does not "
                                     f"broadcast to cond[{key!r}] of shape {tuple(c_val.shape)}") from None
                joint[key] = torch.cat([c_val, u], dim=0)
            elif key in self.uncond and not _same(c_val, u_val):
                raise ValueError(f"batched CFG: cond[{key!r}] is not a tensor and differs from its uncond "
                                 "value, so the two branches cannot share one call; use batched=False")
            else:
                joint[key] = c_val
        out = self.denoiser(torch.cat([x, x], dim=0), torch.cat([t, t], dim=0), **joint)
        if out.shape[0] != 2 * B:
            raise ValueError(f"batched CFG: the denoiser returned batch {out.shape[0]} for input batch {2 * B}")
        return out[:B], out[B:]

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        t = per_sample_t(t, x)
        if self.scale == 1.0:  # D_u + (D_c - D_u) = D_c, and its eps std equals its own: rescale is a no-op
            return self.denoiser(x, t, **cond)
        d_c, d_u = self._both(x, t, cond)
        guided = d_u + self.scale * (d_c - d_u)
        if self.rescale > 0:
            guided = self._rescale(x, t, d_c, guided)
        if self._full_interval:
            return guided
        lo, hi = self.interval
        inside = ((t >= lo) & (t <= hi)).reshape((-1,) + (1,) * (x.dim() - 1))
        return torch.where(inside, guided, d_c)

    def _rescale(self, x: Tensor, t: Tensor, d_c: Tensor, d_g: Tensor) -> Tensor:
        if x.dim() < 2:
            raise ValueError("guidance rescale needs samples with at least one non-batch dimension")
        a = coefficients(self.path, t, x)[0]
        dims = tuple(range(1, x.dim()))
        # sigma * eps = x - alpha D; the common 1/sigma cancels in the std ratio
        r_c, r_g = x - a * d_c, x - a * d_g
        std_c, std_g = r_c.std(dim=dims, keepdim=True), r_g.std(dim=dims, keepdim=True)
        pos_std = std_g > 0
        ratio = torch.where(pos_std, std_c / torch.where(pos_std, std_g, torch.ones_like(std_g)),
                            torch.ones_like(std_g))
        factor = self.rescale * ratio + (1.0 - self.rescale)
        # eps_f = factor * eps_g  =>  D_f = (x - sigma eps_f) / alpha = D_g - (factor - 1) (x - alpha D_g) / alpha
        pos_a = a > 0
        a_safe = torch.where(pos_a, a, torch.ones_like(a))
        return torch.where(pos_a, d_g - (factor - 1.0) * r_g / a_safe, d_g)


# --------------------------------------------------------------------------- classifier guidance
class ClassifierGuidance(Guidance):
    """Classifier guidance (Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021).

    log_prob_fn(x, t, **cond) -> (B,) log p(y | x_t = x) (a noise-aware classifier; the target y is
    read from cond, which is also passed to the denoiser). The guided score is
    score + scale * grad_x log p(y | x_t); from D = (x + sigma^2 score) / alpha this is

        D_g = D + scale * (sigma^2 / alpha) * grad_x log p(y | x_t).

    With the exact classifier and scale = 1 on the exact unconditional denoiser, D_g is the exact
    conditional denoiser E[x0 | x_t, y].
    """

    def __init__(self, denoiser: DenoiserFn, log_prob_fn: Callable[..., Tensor], scale: float,
                 path: Path) -> None:
        super().__init__(denoiser)
        if not callable(log_prob_fn):
            raise ValueError("log_prob_fn must be callable as log_prob_fn(x, t, **cond) -> (B,)")
        self.log_prob_fn = log_prob_fn
        self.scale = _finite("scale", scale)
        self.path = _check_path(path, "ClassifierGuidance", "to turn the score correction into a denoiser one")

    def extra_repr(self) -> str:
        return f"scale={self.scale}, path={self.path!r}"

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        t = per_sample_t(t, x)
        d = self.denoiser(x, t, **cond)
        if self.scale == 0.0:
            return d
        keep = _differentiating(x)
        with torch.enable_grad():
            xg = x if keep else x.detach().requires_grad_(True)
            lp = _check_per_sample(self.log_prob_fn(xg, t, **cond), x, "log_prob_fn")
            g = _grad(lp, xg, keep)
        if not keep:
            g = g.detach()
        return d + (self.scale * _score_to_x0_factor(self.path, t, x)) * g


# --------------------------------------------------------------------------- universal guidance
class UniversalGuidance(Guidance):
    """Universal guidance (Bansal et al., "Universal Guidance for Diffusion Models", ICLR 2024, arXiv 2302.07121).

    loss_fn(x0_hat) -> (B,) is any differentiable loss of the predicted clean sample (a guidance
    network f and its target c folded in: loss = l(c, f(x0_hat))).

    Forward guidance (Alg. 1): the gradient of loss_fn(D(x_t)) with respect to x_t, taken through
    the denoiser, corrects the score: score_g = score - scale * grad_x loss, i.e.
        D_g = D - scale * (sigma^2 / alpha) * grad_x loss_fn(D(x_t)).
    Backward guidance: ``backward_steps`` steps of gradient descent (step ``backward_lr``) on
    Delta, starting at 0, minimising loss_fn(x0_hat + Delta) in x0 space with x0_hat = D(x_t)
    the unguided prediction; Delta is added to the output (the paper's eps correction
    -sqrt(alpha/(1-alpha)) Delta written for x0). Under an outer gradient-based wrapper Delta is
    treated as a constant.

    Self-recurrence (re-noising x_{t-1} back to x_t and repeating the step k times) acts on the
    solver's state, not on the denoiser, so it is not part of this wrapper: run it at solver level.
    """

    def __init__(self, denoiser: DenoiserFn, loss_fn: Callable[[Tensor], Tensor], scale: float, path: Path, *,
                 backward_steps: int = 0, backward_lr: float = 0.1) -> None:
        super().__init__(denoiser)
        if not callable(loss_fn):
            raise ValueError("loss_fn must be callable as loss_fn(x0_hat) -> (B,)")
        self.loss_fn = loss_fn
        self.scale = _finite("scale", scale)
        self.path = _check_path(path, "UniversalGuidance", "to turn the score correction into a denoiser one")
        if isinstance(backward_steps, bool) or not isinstance(backward_steps, int) or backward_steps < 0:
            raise ValueError(f"backward_steps must be an integer >= 0, got {backward_steps!r}")
        self.backward_steps = backward_steps
        self.backward_lr = _finite("backward_lr", backward_lr)
        if self.backward_lr <= 0:
            raise ValueError(f"backward_lr must be > 0, got {self.backward_lr}")

    def extra_repr(self) -> str:
        return (f"scale={self.scale}, backward_steps={self.backward_steps}, "
                f"backward_lr={self.backward_lr}, path={self.path!r}")

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        t = per_sample_t(t, x)
        if self.scale == 0.0:
            d0 = self.denoiser(x, t, **cond)
            d = d0
        else:
            keep = _differentiating(x)
            with torch.enable_grad():
                xg = x if keep else x.detach().requires_grad_(True)
                d0 = self.denoiser(xg, t, **cond)
                loss = _check_per_sample(self.loss_fn(d0), x, "loss_fn")
                g = _grad(loss, xg, keep)
            if not keep:
                d0, g = d0.detach(), g.detach()
            d = d0 - (self.scale * _score_to_x0_factor(self.path, t, x)) * g
        if self.backward_steps > 0:
            d = d + self._backward_delta(d0)
        return d

    def _backward_delta(self, x0: Tensor) -> Tensor:
        x0 = x0.detach()
        delta = torch.zeros_like(x0)
        with torch.enable_grad():
            for _ in range(self.backward_steps):
                delta.requires_grad_(True)
                loss = _check_per_sample(self.loss_fn(x0 + delta), x0, "loss_fn")
                g = _grad(loss, delta, False)
                delta = (delta - self.backward_lr * g).detach()
        return delta


# --------------------------------------------------------------------------- composition
class Compose(Guidance):
    """Nest guidance wrappers in order, innermost first: ``Compose(D, f, g)(x, t) == g(f(D))(x, t)``.

    Each wrapper is a one-argument factory from a denoiser to a denoiser, e.g.
    ``functools.partial(ClassifierFreeGuidance, scale=3.0, uncond={"label": null})`` or
    ``lambda d: ClassifierGuidance(d, log_p, 1.0, path)``. Nesting adds the wrappers' score
    corrections (see the module docstring). ``self.denoiser`` is the outermost built wrapper and
    ``self.base`` the denoiser that was wrapped.
    """

    def __init__(self, denoiser: DenoiserFn, *wrappers: Callable[[DenoiserFn], DenoiserFn]) -> None:
        _check_denoiser(denoiser)
        built = denoiser
        for i, wrap in enumerate(wrappers):
            if not callable(wrap):
                raise ValueError(f"wrapper {i} must be a callable taking a denoiser, got {type(wrap).__name__}")
            built = wrap(built)
            if not callable(built):
                raise ValueError(f"wrapper {i} returned {type(built).__name__}, not a denoiser")
        super().__init__(built)
        self.base = denoiser
        self.n_wrappers = len(wrappers)

    def forward(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        return self.denoiser(x, t, **cond)


__all__ = ["Guidance", "ClassifierFreeGuidance", "ClassifierGuidance", "UniversalGuidance", "Compose"]
