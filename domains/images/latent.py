"""Latent-space posterior sampling: PSLD and ReSample, run through an autoencoder.

A latent diffusion prior is a denoiser D(z_t, t) on latents z; images are x = decode(z) and
measurements y = A(x) + sigma_y n are taken in pixel space (the [-1, 1] image tensor). The bridge is
``LatentOperator(A, autoencoder, latent_shape)``: the forward-level operator z -> A(decode(z)). It is a
core ``Operator``, so every forward-level core method ("dps", "daps") runs in latent space too.

``latent_posterior_sample(denoiser, y, operator, autoencoder, latent_shape=..., path=..., method=...,
steps=..., sigma_y=..., generator=...)`` is the entry point: the call signature of
``polydiff.core.posterior_sample`` plus the autoencoder and the latent shape, returning decoded images.
``method`` is "psld" or "resample" (this module; ``latent_methods()`` lists their options and cost)
or any forward-level core method. PSLD and ReSample are written as core methods, fn(Problem, z,
**options), on the core's ``Problem``, but are kept out of the core registry: they need the encoder
and the pixel operator, which no core operator carries, and the core's ``methods()`` stays the list
of methods that accept any operator of their level.

The autoencoder is any object with ``encode(x) -> z`` and ``decode(z) -> x`` (differentiable torch
functions, batch first); the KL autoencoder of this package is one.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch

from polydiff.core.grids import resolve_grid
from polydiff.core.inverse import LinearOperator, Operator, PseudoInverseOperator, posterior_sample
from polydiff.core.inverse.base import GaussianNoise, MethodInfo, Problem, get_method
from polydiff.core.paths import get_path

Tensor = torch.Tensor


class LatentOperator(Operator):
    """z -> A(decode(z)): a pixel-space operator seen from the latent space (level "forward").

    operator: the pixel-space operator (any level); autoencoder: an object with ``encode`` and
    ``decode``; latent_shape: the shape of one latent (without the batch dim). ``pixel_op`` and
    ``autoencoder`` stay available to the latent methods.
    """

    def __init__(self, operator: Operator, autoencoder: Any, latent_shape: Sequence[int]) -> None:
        if not isinstance(operator, Operator):
            raise ValueError(f"operator must be a polydiff.core.inverse Operator, got {type(operator).__name__}")
        if not (callable(getattr(autoencoder, "encode", None)) and callable(getattr(autoencoder, "decode", None))):
            raise ValueError(f"autoencoder must have encode(x) and decode(z) methods, got {type(autoencoder).__name__}")
        super().__init__(latent_shape, operator.y_shape)
        self.pixel_op = operator
        self.autoencoder = autoencoder

    def decode(self, z: Tensor) -> Tensor:
        x = self.autoencoder.decode(z)
        if tuple(x.shape[1:]) != self.pixel_op.x_shape:
            raise ValueError(f"the decoder returned images of shape {tuple(x.shape[1:])}, but the operator expects "
                             f"{self.pixel_op.x_shape}")
        return x

    def encode(self, x: Tensor) -> Tensor:
        z = self.autoencoder.encode(x)
        if tuple(z.shape[1:]) != self.x_shape:
            raise ValueError(f"the encoder returned latents of shape {tuple(z.shape[1:])}, expected {self.x_shape}")
        return z

    def A(self, z: Tensor) -> Tensor:
        return self.pixel_op.A(self.decode(z))


def _latent_op(prob: Problem, name: str) -> LatentOperator:
    op = prob.op
    if not isinstance(op, LatentOperator):
        raise ValueError(f"method {name!r} runs a latent prior through an autoencoder: pass "
                         f"operator=LatentOperator(pixel_operator, autoencoder, latent_shape), got {type(op).__name__}")
    return op


def _norm(v: Tensor) -> Tensor:
    return v.flatten(1).norm(dim=1)


# ============================================================================ PSLD
def psld(prob: Problem, z: Tensor, omega: float = 1.0, gamma: float = 0.1, eta: float = 1.0) -> Tensor:
    """PSLD: posterior sampling with latent diffusion (Rout, Raoof, Daras, Caramanis, Dimakis &
    Shakkottai, "Solving Linear Inverse Problems Provably via Posterior Sampling with Latent
    Diffusion Models", NeurIPS 2023, Alg. 2).

    Each step takes the DDIM(eta) step of the latent prior (eta = 1: DDPM's ancestral kernel) and
    subtracts the gradient in z_i of
      omega ||y - A(decode(z0))|| + gamma ||z0 - encode(A^+ y + (I - A^+ A) decode(z0))||,  z0 = D(z_i),
    the DPS measurement term (non-squared norm, as the official code) plus the "gluing" term, which
    asks z0 to be a fixed point of decode -> replace the measured part by y -> encode; it is what
    makes the method exact for linear autoencoders (the paper's Theorem 3.6). A^+ is the
    pseudo-inverse where the operator has one and A^T otherwise (the paper's A^T for masks, where the
    two agree). Defaults: omega = 1, gamma = 0.1 (the paper's Stable Diffusion values), eta = 1.
    Cost: 1 NFE and 1 backward pass (through the denoiser, decoder and encoder) per step. Needs a
    ``LatentOperator`` around a linear pixel operator.
    """
    op = _latent_op(prob, "psld")
    A = op.pixel_op
    if not isinstance(A, LinearOperator):
        raise ValueError(f"psld needs a linear pixel operator (its gluing term uses A^T or A^+), got "
                         f"{type(A).__name__} of level {A.level!r}")
    proj = A.pinv if isinstance(A, PseudoInverseOperator) else A.At
    y = prob.y
    py = proj(y)

    def loss(z0: Tensor) -> Tensor:
        x0 = op.decode(z0)
        Ax0 = A.A(x0)
        glued = py + x0 - proj(Ax0)
        return omega * _norm(y - Ax0) + gamma * _norm(z0 - op.encode(glued))

    z = prob.s[0] * z
    for i in range(prob.n):
        z0, g, _ = prob.denoise_with_grad(z, i, loss)
        cx, c0, cn = prob.ddim_coefs(i, i + 1, eta)
        z = cx * z + c0 * z0 + cn * prob.randn(z.shape) - g
    return z


# ============================================================================ ReSample
def stochastic_resample(z0_y: Tensor, z_prime: Tensor, alpha: float, sigma: float, var: float,
                        generator: Optional[torch.Generator] = None) -> Tensor:
    """ReSample's stochastic resampling: a draw from N(z; alpha z0_y, sigma^2 I) N(z; z_prime, var I)
    (normalised), i.e. mean (var alpha z0_y + sigma^2 z_prime) / (var + sigma^2) and variance
    var sigma^2 / (var + sigma^2). It maps the measurement-consistent z0_y back to noise level
    (alpha, sigma) while staying close to the prior's own sample z_prime (Song et al. 2024, Prop. 2)."""
    if var <= 0 or sigma <= 0:
        return alpha * z0_y if sigma <= 0 else z_prime
    den = var + sigma * sigma
    mean = (var * alpha * z0_y + sigma * sigma * z_prime) / den
    noise = torch.randn(z0_y.shape, generator=generator, dtype=z0_y.dtype, device=z0_y.device)
    return mean + math.sqrt(var * sigma * sigma / den) * noise


def resample(prob: Problem, z: Tensor, gamma: float = 40.0, eta: float = 0.0, dc_start: float = 0.8,
              dc_every: int = 1, latent_below: float = 0.2, latent_iters: int = 50,
              data_var: float = 1.0) -> Tensor:
    """ReSample: latent diffusion with hard data consistency and stochastic resampling (Song, Kwon,
    Zhang, Hu, Qu & Shen, "Solving Inverse Problems with Latent Diffusion Models via Hard Data
    Consistency", ICLR 2024, Alg. 1).

    Each step takes the unconditional DDIM(eta) step z' from z_i with z0 = D(z_i). On steps with
    t_{i+1} <= dc_start (every ``dc_every``-th), hard data consistency replaces z0 by a
    measurement-consistent z0(y), and z_{i+1} is resampled around it with ``stochastic_resample``
    at variance gamma * (the DDPM posterior variance of the step), gamma = 40 as the authors' code.
    Data consistency, both regularised towards z0 with the Gaussian approximation p(x0 | x_t) ~
    N(z0, r^2 I), r^2 = data_var varsigma^2 / (data_var + varsigma^2) (varsigma = sigma/alpha; the
    paper stops its optimiser early instead):
      * pixel space (t_{i+1} > latent_below; the paper's fast variant): x = argmin ||y - A x||^2 / sigma_y^2
        + ||x - decode(z0)||^2 / r^2 (``prox_data``: closed form for SVD operators), z0(y) = encode(x);
        needs a linear pixel operator, otherwise latent space is used throughout;
      * latent space (t_{i+1} <= latent_below): at most ``latent_iters`` L-BFGS iterations (strong Wolfe
        line search; the paper uses Adam, which hovers at a residual of the order of its step) on
        ||y - A(decode(w))||^2 / 2 + (sigma_y^2 / r^2) ||w - z0||^2 / 2 from w = z0.
    Cost: 1 NFE per step, no backward pass through the denoiser (the latent optimisation
    differentiates the decoder). Needs a ``LatentOperator``; any pixel operator (nonlinear too).
    """
    if gamma < 0 or not 0 <= eta <= 1 or dc_every < 1 or latent_iters < 0 or data_var <= 0:
        raise ValueError("resample needs gamma >= 0, eta in [0, 1], dc_every >= 1, latent_iters >= 0, data_var > 0")
    op = _latent_op(prob, "resample")
    A = op.pixel_op
    y, sy2 = prob.y, prob.sigma_y ** 2
    z = prob.s[0] * z
    for i in range(prob.n):
        z0 = prob.denoise(z, i)
        cx, c0, cn = prob.ddim_coefs(i, i + 1, eta)
        z_prime = cx * z + c0 * z0 + (cn * prob.randn(z.shape) if cn > 0 else 0.0)
        t_next = float(prob.t[i + 1])
        if t_next > dc_start or i % dc_every != 0:
            z = z_prime
            continue
        v = prob.ve[i]
        r2 = data_var if not math.isfinite(v) else data_var * v * v / (data_var + v * v)
        if t_next > latent_below and isinstance(A, LinearOperator):
            with torch.no_grad():
                x = A.prox_data(op.decode(z0), y, 1.0 / r2, prob.sigma_y)
                z0y = op.encode(x)
        else:
            w = z0.detach().clone().requires_grad_(True)
            opt = torch.optim.LBFGS([w], lr=1.0, max_iter=latent_iters, history_size=10,
                                    tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")
            lam = sy2 / r2

            def closure():
                opt.zero_grad()
                obj = 0.5 * ((y - A.A(op.decode(w))) ** 2).sum() + 0.5 * lam * ((w - z0) ** 2).sum()
                obj.backward()
                return obj
            with torch.enable_grad():
                if latent_iters > 0:
                    opt.step(closure)
            z0y = w.detach()
        aj, sj = prob.a[i + 1], prob.s[i + 1]
        _, _, c_ddpm = prob.ddim_coefs(i, i + 1, 1.0)
        z = stochastic_resample(z0y, z_prime, aj, sj, gamma * c_ddpm * c_ddpm, prob.generator) if sj > 0 else aj * z0y
    return z


# ============================================================================ entry point
def _info(name, fn, nfe, backward) -> MethodInfo:
    summary = (fn.__doc__ or "").strip().splitlines()[0]
    return MethodInfo(name, fn, "forward", False, nfe, backward, ("gaussian",), summary)


_METHODS = {"psld": _info("psld", psld, 1, 1), "resample": _info("resample", resample, 1, 0)}


def latent_methods() -> dict:
    """The latent-only methods ("psld", "resample") as core ``MethodInfo`` records (options, cost)."""
    return dict(_METHODS)


def latent_posterior_sample(denoiser, y: Tensor, operator: Operator, autoencoder: Any, *, latent_shape: Sequence[int],
                            path, method: str, steps: int, sigma_y: float, generator: Optional[torch.Generator] = None,
                            grid=None, cond: Optional[dict] = None, return_latents: bool = False, **options: Any):
    """Posterior images x ~ p(x | y) for y = A(x) + sigma_y n under a latent diffusion prior.

    denoiser: the latent prior D(z, t, **cond); y: (B, *operator.y_shape) in pixel units;
    operator: the pixel-space operator; autoencoder: encode/decode; latent_shape: one latent's shape.
    method: "psld", "resample" (``latent_methods()``) or a forward-level core method ("dps", "daps", ...,
    run on ``LatentOperator``). path, steps, sigma_y, generator, grid, cond: as in
    ``polydiff.core.posterior_sample``; ``options`` are the method's own. Returns images
    (B, *operator.x_shape), or (images, latents) with ``return_latents``.
    """
    lop = LatentOperator(operator, autoencoder, latent_shape)
    if method not in _METHODS:
        try:
            info = get_method(method)
        except ValueError:
            raise ValueError(f"unknown latent posterior sampling method {method!r}; valid: {sorted(_METHODS)} or a "
                             "forward-level core method (polydiff.core.inverse.methods())") from None
        if info.level != "forward":
            raise ValueError(f"core method {method!r} needs an operator of level {info.level!r}, but the latent "
                             f"operator z -> A(decode(z)) is forward-only; use psld, resample, dps or daps")
        z = posterior_sample(denoiser, y, lop, path=path, method=method, steps=steps, sigma_y=sigma_y,
                             generator=generator, grid=grid, cond=cond, **options)
    else:
        info = _METHODS[method]
        unknown = sorted(set(options) - set(info.options()))
        if unknown:
            raise ValueError(f"method {method!r} has no option(s) {unknown}; its options: {info.options()}")
        if not isinstance(y, Tensor) or not y.is_floating_point() or y.dim() < 1 or y.shape[0] < 1:
            raise ValueError("y must be a floating-point tensor of shape (B, *operator.y_shape) with B >= 1")
        lop.check_y(y)
        if not bool(torch.isfinite(y).all()):
            raise ValueError("y contains NaN or inf")
        sigma_y = float(sigma_y)
        if not math.isfinite(sigma_y) or sigma_y < 0:
            raise ValueError(f"sigma_y must be a finite number >= 0, got {sigma_y!r}")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        p = get_path(path)
        g = resolve_grid("uniform" if grid is None else grid, steps, p, y.shape[0])
        if g.shape[1] != 1:
            raise ValueError("latent posterior samplers take a grid shared by the batch (shape (N+1,))")
        prob = Problem(denoiser, y, lop, p, g, sigma_y, GaussianNoise(sigma_y), generator, None, cond or {})
        z = info.fn(prob, prob.randn((y.shape[0],) + lop.x_shape), **options)
        if not bool(torch.isfinite(z).all()):
            raise FloatingPointError(f"method {method!r} produced NaN or inf; try more steps or other options")
    with torch.no_grad():
        x = lop.decode(z)
    return (x, z) if return_latents else x


__all__ = ["LatentOperator", "psld", "resample", "stochastic_resample", "latent_posterior_sample", "latent_methods"]
