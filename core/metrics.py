"""Generic sample-quality distances (domain-free)."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

Tensor = torch.Tensor


def sliced_wasserstein(x: Tensor, y: Tensor, n_directions: int = 100, p: int = 2,
                       generator: Optional[torch.Generator] = None) -> Tensor:
    """Sliced p-Wasserstein distance between two equal-size sample sets (n, d).

    Projects on ``n_directions`` random unit directions, computes the 1-D W_p by sorting, and
    averages W_p^p over directions before the p-th root (Bonneel et al. 2015).
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need two (n, d) sample sets with equal d, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"need equal sample counts, got {x.shape[0]} and {y.shape[0]}")
    x, y = x.double(), y.double()
    dirs = torch.randn(x.shape[1], n_directions, generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ dirs.to(x.device), dim=0)
    py, _ = torch.sort(y @ dirs.to(y.device), dim=0)
    return ((px - py).abs() ** p).mean(0).mean() ** (1.0 / p)


__all__ = ["sliced_wasserstein"]


def check_features(f: Tensor, name: str = "features") -> Tensor:
    """A feature matrix (N >= 2, D), finite, as float64 on the CPU; a clear error otherwise."""
    if not isinstance(f, Tensor) or f.dim() != 2:
        shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
        raise ValueError(f"{name} must be a feature matrix of shape (N, D), got {shape}")
    if f.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples, got {f.shape[0]}")
    if not bool(torch.isfinite(f).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return f.detach().double().cpu()


def _cov_factor(x: np.ndarray) -> np.ndarray:
    """A factor F with F^T F = the unbiased sample covariance of x (N, D): the centred data over
    sqrt(N - 1), compressed to its (D, D) R factor by a QR decomposition when N > D."""
    f = (x - x.mean(0)) / math.sqrt(x.shape[0] - 1)
    return np.linalg.qr(f, mode="r") if f.shape[0] > f.shape[1] else f


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, FID):
    |m_a - m_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), with unbiased sample covariances.

    Computed without a matrix square root: with factors S_a = F_a^T F_a and S_b = F_b^T F_b, the
    eigenvalues of S_a^1/2 S_b S_a^1/2 are the squared singular values of F_a F_b^T, so the trace
    term is the nuclear norm of F_a F_b^T (exact to round-off, no sqrt of tiny eigenvalues, no
    complex parts as with scipy's sqrtm). F is the centred data when N <= D (a 3-sample 2048-d FID is
    a 3x3 SVD) and its QR factor otherwise; singular covariances are fine. For precomputed means and
    covariances use ``gaussian_frechet_distance``."""
    a, b = check_features(feats_a, "feats_a").numpy(), check_features(feats_b, "feats_b").numpy()
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}")
    fa, fb = _cov_factor(a), _cov_factor(b)
    cross = np.linalg.svd(fa @ fb.T, compute_uv=False).sum()
    fd = float(((a.mean(0) - b.mean(0)) ** 2).sum() + (fa ** 2).sum() + (fb ** 2).sum() - 2.0 * cross)
    return max(fd, 0.0)


def gaussian_frechet_distance(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """The same Fréchet distance from precomputed statistics (e.g. a published reference's mean and
    covariance, as FCD's): tr (S_a^1/2 S_b S_a^1/2)^1/2 from a symmetric eigen-decomposition (S_a^1/2
    from eigh, negative round-off eigenvalues clipped to 0), so it is real and exact for PSD inputs."""
    mu_a, mu_b = np.asarray(mu_a, dtype=np.float64).reshape(-1), np.asarray(mu_b, dtype=np.float64).reshape(-1)
    cov_a, cov_b = np.asarray(cov_a, dtype=np.float64), np.asarray(cov_b, dtype=np.float64)
    d = mu_a.shape[0]
    if mu_b.shape != (d,) or cov_a.shape != (d, d) or cov_b.shape != (d, d):
        raise ValueError(f"means must have shape (D,) and covariances (D, D) with one D; got {mu_a.shape}, "
                         f"{cov_a.shape}, {mu_b.shape}, {cov_b.shape}")
    for name, v in (("mu_a", mu_a), ("cov_a", cov_a), ("mu_b", mu_b), ("cov_b", cov_b)):
        if not np.isfinite(v).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    w, q = np.linalg.eigh((cov_a + cov_a.T) / 2)
    root_a = (q * np.sqrt(np.clip(w, 0.0, None))) @ q.T
    inner = root_a @ ((cov_b + cov_b.T) / 2) @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
    diff = mu_a - mu_b
    return max(float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross), 0.0)
