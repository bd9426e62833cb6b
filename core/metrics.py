"""Generic sample-quality distances (domain-free)."""
from __future__ import annotations

from typing import Optional

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
