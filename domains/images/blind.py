"""Blind deblurring: GibbsDDRM, which samples the image and the unknown blur kernel together.

    x, kernel = gibbs_ddrm(D, y, family=gaussian_family(9), phi_init=torch.zeros(B, 1), path=path,
                           steps=50, sigma_y=0.05, generator=g)

The measurement is y = k_phi * x + sigma_y n (circular 2-D convolution over the last two dims of
(B, C, H, W) images, the same kernel on every channel, as ``FFTConvolution``); the kernel belongs to
a family k_phi = family(phi) with parameters phi, one set per measurement. ``free_family(size)``
is the family of all non-negative normalised kernels (phi: logits, softmax), the paper's setting;
``gaussian_family(size)`` is the isotropic Gaussians (phi: log std).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

from polydiff.core.grids import resolve_grid
from polydiff.core.inverse.base import GaussianNoise, Problem
from polydiff.core.inverse.operators import Operator
from polydiff.core.paths import get_path

Tensor = torch.Tensor
Family = Callable[[Tensor], Tensor]


# ============================================================================ kernel families
def gaussian_family(size: int) -> Family:
    """phi (B, 1) = log std (pixels) -> isotropic normalised Gaussian kernels (B, size, size)."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"kernel size must be an integer >= 1, got {size!r}")
    u = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    r2 = u[:, None] ** 2 + u[None, :] ** 2

    def family(phi: Tensor) -> Tensor:
        if phi.dim() != 2 or phi.shape[1] != 1:
            raise ValueError(f"gaussian_family takes phi of shape (B, 1) (log std), got {tuple(phi.shape)}")
        std2 = torch.exp(2 * phi)[:, :, None]
        k = torch.exp(-0.5 * r2.to(phi.device, phi.dtype)[None] / std2)
        return k / k.sum((1, 2), keepdim=True)
    family.size = size  # type: ignore[attr-defined]
    family.lr = 1.0     # type: ignore[attr-defined]  (gibbs_ddrm's default Langevin step for this family)
    return family


def free_family(size: int) -> Family:
    """phi (B, size, size) = logits -> softmax kernels (non-negative, summing to 1)."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"kernel size must be an integer >= 1, got {size!r}")

    def family(phi: Tensor) -> Tensor:
        if phi.dim() != 3 or phi.shape[1:] != (size, size):
            raise ValueError(f"free_family({size}) takes phi of shape (B, {size}, {size}) (logits), "
                             f"got {tuple(phi.shape)}")
        return torch.softmax(phi.flatten(1), 1).reshape(phi.shape)
    family.size = size  # type: ignore[attr-defined]
    family.lr = 100.0   # type: ignore[attr-defined]  (softmax gradients scale with the kernel values, ~1/size^2)
    return family


# ============================================================================ batched Fourier blur
def _hartley(x: Tensor) -> Tensor:
    """Orthonormal 2-D discrete Hartley transform over the last two dims (real, symmetric, involutory)."""
    X = torch.fft.fft2(x, norm="ortho")
    return X.real - X.imag


def kernel_spectrum(kernels: Tensor, H: int, W: int) -> Tensor:
    """FFT (B, H, W) of (B, k, k) kernels zero-padded to H x W with their centre at the origin."""
    B, kh, kw = kernels.shape
    pad = kernels.new_zeros(B, H, W)
    pad[:, :kh, :kw] = kernels
    pad = torch.roll(pad, shifts=(-(kh // 2), -(kw // 2)), dims=(1, 2))
    return torch.fft.fft2(pad)


def blur(x: Tensor, kernels: Tensor) -> Tensor:
    """Circular convolution of images x (B, C, H, W) with one kernel per image (B, k, k) (as FFTConvolution)."""
    kh = kernel_spectrum(kernels.to(x.dtype), x.shape[-2], x.shape[-1])
    return torch.fft.ifft2(torch.fft.fft2(x) * kh[:, None]).real


# ============================================================================ GibbsDDRM
def _ddrm_step(prob: Problem, i: int, xs: Tensor, x0b: Tensor, ybar: Tensor, tau: Tensor, obs: Tensor,
               eta: float, eta_b: float) -> Tensor:
    """One DDRM step (Kawar et al. 2022) in spectral coordinates with per-sample, per-coordinate tau."""
    aj, sj = prob.a[i + 1], prob.s[i + 1]
    cx, c0, cn = prob.ddim_coefs(i, i + 1, eta)
    z = prob.randn(xs.shape)
    unobs = cx * xs + c0 * x0b + cn * z
    tau_safe = torch.where(obs, tau, torch.ones_like(tau))
    near = aj * x0b + sj * (math.sqrt(1 - eta * eta) * (ybar - x0b) / tau_safe + eta * z)
    var = sj * sj - (aj * eta_b * tau) ** 2
    far = aj * ((1 - eta_b) * x0b + eta_b * ybar) + torch.sqrt(var.clamp_min(0)) * z
    return torch.where(obs, torch.where(var >= 0, far, near), unobs)


def _spectral(y: Tensor, khat: Tensor, sigma_y: float, rcond: float = 1e-10):
    """(ybar, tau, observed) of y for kernels with spectra khat (B, H, W): s = |khat|, U = phase * Hartley."""
    s = khat.abs()[:, None]                                                     # (B, 1, H, W)
    kh = khat[:, None]
    phase = torch.where(s > 0, kh / torch.where(s > 0, s, torch.ones_like(s)), torch.ones_like(kh))
    Uty = _hartley(torch.fft.ifft2(torch.fft.fft2(y) * phase.conj()).real)
    obs = s > rcond * s.flatten(1).max(1).values.clamp_min(1e-300)[:, None, None, None]
    safe = torch.where(obs, s, torch.ones_like(s))
    ybar = torch.where(obs, Uty / safe, torch.zeros_like(Uty))
    tau = torch.where(obs, sigma_y / safe, torch.full_like(s, math.inf))
    return ybar, tau.expand_as(ybar), obs.expand_as(ybar)


def gibbs_ddrm(denoiser: Callable[..., Tensor], y: Tensor, *, family: Family, phi_init: Tensor, path, steps: int,
               sigma_y: float, generator: Optional[torch.Generator] = None, eta: float = 0.85, eta_b: float = 1.0,
               kernel_start: float = 0.7, langevin_steps: int = 20, lr: Optional[float] = None,
               temperature: float = 1.0,
               log_prior: Optional[Callable[[Tensor], Tensor]] = None, grid=None,
               cond: Optional[dict] = None) -> Tuple[Tensor, Tensor]:
    """GibbsDDRM: blind deblurring by Gibbs-like alternation between the image and the kernel
    (Murata, Saito, Lai, Takida, Uesaka, Mitsufuji & Ermon, "GibbsDDRM: A Partially Collapsed Gibbs
    Sampler for Solving Blind Inverse Problems with Denoising Diffusion Restoration", ICML 2023).

    Each step i of the grid: x0 = D(x_i); if t_{i+1} <= ``kernel_start``, ``langevin_steps`` Langevin
    steps on the kernel parameters phi given (x0, y),
        phi <- phi - lr grad_phi [ ||y - k_phi * x0||^2 / (2 d_y) - (sigma_y^2 / d_y) log_prior(phi) ]
               + sqrt(2 lr temperature sigma_y^2 / d_y) n,
    i.e. unadjusted Langevin on p(phi | x0, y)^(1/temperature) with the step 2 lr sigma_y^2 / d_y (d_y
    pixels per measurement; the energy is scaled by sigma_y^2 / d_y so that ``lr`` does not depend on
    the image size or noise level; temperature 0 is gradient descent); then one DDRM(eta, eta_b) step
    of the image with the current kernel k_phi, whose SVD is the Fourier one (V = the Hartley basis,
    fixed; s = |FFT(k_phi)|; U = phase * Hartley), so the image state carries over unchanged when
    the kernel moves. The kernel update costs no denoiser evaluation (it reuses x0), so the cost is
    1 NFE per step. (The paper also restarts part of the chain; not done here.)

    denoiser: D(x, t, **cond); y: (B, C, H, W) blurred noisy images; family: phi -> (B, k, k) kernels
    (``gaussian_family``, ``free_family`` or your own differentiable map); phi_init: (B, ...) initial
    parameters. lr: the Langevin step (default: the family's ``lr`` attribute, 1 for
    ``gaussian_family``, 100 for ``free_family``, else 1). log_prior: phi -> (B,) log prior density
    (default flat). Returns the images (B, C, H, W) and the final kernels (B, k, k). With
    ``langevin_steps=0`` the kernel stays k_{phi_init} and the result is the core's ``ddrm`` with
    ``FFTConvolution(k_{phi_init})``, draw for draw (tested).
    """
    if not isinstance(y, Tensor) or y.dim() != 4 or not y.is_floating_point():
        raise ValueError(f"y must be a floating-point (B, C, H, W) tensor of blurred images, got "
                         f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y contains NaN or inf")
    if not isinstance(phi_init, Tensor) or phi_init.shape[0] != y.shape[0]:
        raise ValueError(f"phi_init must be a tensor with one row per measurement ({y.shape[0]}), got "
                         f"{tuple(phi_init.shape) if isinstance(phi_init, Tensor) else type(phi_init).__name__}")
    sigma_y = float(sigma_y)
    if not math.isfinite(sigma_y) or sigma_y < 0:
        raise ValueError(f"sigma_y must be a finite number >= 0, got {sigma_y}")
    if not (0 <= eta <= 1 and 0 <= eta_b <= 1):
        raise ValueError(f"gibbs_ddrm needs eta, eta_b in [0, 1], got {eta}, {eta_b}")
    lr = float(getattr(family, "lr", 1.0)) if lr is None else float(lr)
    if not isinstance(steps, int) or steps < 1 or langevin_steps < 0 or lr <= 0 or temperature < 0:
        raise ValueError("gibbs_ddrm needs steps >= 1, langevin_steps >= 0, lr > 0, temperature >= 0")
    B, C, H, W = y.shape
    phi = phi_init.detach().to(y.dtype).clone()
    k0 = family(phi)
    if k0.dim() != 3 or k0.shape[0] != B or k0.shape[1] > H or k0.shape[2] > W:
        raise ValueError(f"the kernel family must map phi to (B, k, k) kernels no larger than the image ({H}x{W}), "
                         f"got {tuple(k0.shape)}")
    p = get_path(path)
    g = resolve_grid("uniform" if grid is None else grid, steps, p, B)
    prob = Problem(denoiser, y, Operator((C, H, W), (C, H, W)), p, g, sigma_y, GaussianNoise(sigma_y), generator,
                   None, cond or {})
    d_y = C * H * W

    def energy(ph: Tensor, x0: Tensor) -> Tensor:
        r = y - blur(x0, family(ph))
        e = 0.5 * (r * r).flatten(1).sum(1) / d_y
        if log_prior is not None:
            e = e - (sigma_y ** 2 / d_y) * log_prior(ph)
        return e

    def spectra(ph: Tensor):
        with torch.no_grad():
            return _spectral(y, kernel_spectrum(family(ph), H, W), sigma_y)

    ybar, tau, obs = spectra(phi)
    # DDRM's start: x_T = alpha ybar + sqrt(sigma^2 - alpha^2 tau^2) z where real, sigma z elsewhere
    a0, s0 = prob.a[0], prob.s[0]
    z = _hartley(prob.randn(y.shape))          # white noise in spectral coordinates (drawn as the core's ddrm)
    var0 = s0 * s0 - a0 * a0 * tau * tau
    xs = torch.where(obs & (var0 >= 0), a0 * ybar + torch.sqrt(var0.clamp_min(0)) * z, s0 * z)
    noise_sd = math.sqrt(2 * lr * temperature * sigma_y ** 2 / d_y)
    for i in range(prob.n):
        with torch.no_grad():
            x0 = prob.denoise(_hartley(xs), i)
        if float(prob.t[i + 1]) <= kernel_start and langevin_steps > 0:
            for _ in range(langevin_steps):
                with torch.enable_grad():
                    ph = phi.detach().requires_grad_(True)
                    (gr,) = torch.autograd.grad(energy(ph, x0).sum(), ph)
                phi = phi - lr * gr
                if noise_sd > 0:
                    phi = phi + noise_sd * prob.randn(phi.shape)
            ybar, tau, obs = spectra(phi)
        xs = _ddrm_step(prob, i, xs, _hartley(x0), ybar, tau, obs, eta, eta_b)
    x = _hartley(xs)
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError("gibbs_ddrm produced NaN or inf; try more steps or a smaller lr")
    with torch.no_grad():
        return x, family(phi)


__all__ = ["gibbs_ddrm", "gaussian_family", "free_family", "blur", "kernel_spectrum"]
