"""deepinv's DPS, DDRM and DiffPIR on the MCGdiff Gaussian-mixture problems (optional bench dependency).

deepinv (``pip install deepinv``; checked with 0.5.0) works on images: its denoisers take
(x, sigma) with x = x0 + sigma n in [0, 1] (DDRM, DiffPIR's model calls) or in the SDE's own
[-1, 1] space (DPS, whose data fidelity clips D to [-1, 1]), and its physics act in that space.
The GMM lives in x units (|x| <= ~20), so we map it exactly and affinely:

    u = x / S + 1/2 in [0, 1]      (DDRM, DiffPIR; S = 48 keeps the prior inside (0, 1))
    w = 2 u - 1 = 2 x / S          (DPS's [-1, 1] space)

and give deepinv the matching denoiser and physics:
  * denoiser: D_u(u, s) = D_x(S (u - 1/2), S s) / S + 1/2 (the exact variance-exploding mixture
    denoiser at noise S s in x units); D_w(w, s) = 2 D_x(S w / 2, S s / 2) / S.
  * physics: A_u = (S A) u since A x = S A u - (S / 2) A 1, so y_u = y + (S / 2) A 1 (same noise
    sigma_y); A_w = (S / 2) A w with y_w = y. Both as a ``DecomposablePhysics`` built from A's SVD
    (spectral space of dimension d: U^T y padded with zeros, singular values padded with zeros).
Samples come back through x = S (u - 1/2) = S w / 2. NFE is counted by wrapping the denoiser.

deepinv's own conventions are used as they are (the point is a user's experience); two worth
knowing, seen in its source: DDRM draws its noise as randn * std / sqrt(2), and DiffPIR computes
rho = lambda sigma_y^2 / sigma_t^2 with sigma_y in the physics' [0, 1] units but sigma_t in
[-1, 1] units (a factor 4).
"""
from __future__ import annotations

import torch

S = 48.0
METHODS = ("dps", "ddrm", "diffpir")


def check():
    import deepinv  # noqa: F401  (ImportError -> the caller skips the peer)
    return deepinv.__version__ if hasattr(deepinv, "__version__") else "?"


def _ve_denoise(prior_means: torch.Tensor, logw: torch.Tensor, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """E[x0 | x0 + s n = x] for the unit-covariance mixture; s scalar or per-row."""
    x = x.to(torch.float64)
    s = torch.as_tensor(s, dtype=torch.float64).reshape(-1)
    s = s[:, None] if s.numel() > 1 else s.reshape(1, 1)
    v = 1.0 + s * s
    logits = logw + (x @ prior_means.T - 0.5 * (prior_means * prior_means).sum(1)) / v
    r = torch.softmax(logits, 1)
    return x / v + (s * s / v) * (r @ prior_means)


class _Denoiser(torch.nn.Module):
    """deepinv-style denoiser forward(x, sigma) in the [0, 1] (``space="u"``) or [-1, 1] (``"w"``) space."""

    def __init__(self, prior, space: str) -> None:
        super().__init__()
        self.means, self.logw, self.space, self.calls = prior.means, prior.log_weights, space, 0

    def forward(self, x, sigma, *args, **kwargs):
        self.calls += 1
        shape, dt = x.shape, x.dtype
        x = x.reshape(shape[0], -1)
        sig = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        if self.space == "u":
            out = _ve_denoise(self.means, self.logw, S * (x.double() - 0.5), S * sig) / S + 0.5
        else:
            out = 2.0 * _ve_denoise(self.means, self.logw, S * x.double() / 2, S * sig / 2) / S
        return out.to(dt).reshape(shape)


def _physics(A: torch.Tensor, scale: float, sy: float):
    import deepinv as dinv
    dy, d = A.shape
    U, s, Vh = torch.linalg.svd(scale * A, full_matrices=True)     # Vh (d, d)
    V = Vh.T
    mask = torch.zeros(1, d, dtype=torch.float64)
    mask[0, :dy] = s

    def U_adj(y):
        c = y.to(torch.float64) @ U
        return torch.cat([c, torch.zeros(c.shape[0], d - dy, dtype=c.dtype)], 1)
    phys = dinv.physics.DecomposablePhysics(
        U=lambda c: c[:, :dy].to(torch.float64) @ U.T, U_adjoint=U_adj,
        V=lambda c: c.to(torch.float64) @ V.T, V_adjoint=lambda x: x.to(torch.float64) @ V,
        mask=mask, noise_model=dinv.physics.GaussianNoise(sigma=sy))
    return phys


def noise_levels(name: str, nfe: int) -> torch.Tensor:
    """The noise levels (x units, VE convention, decreasing) at which deepinv's ``name`` calls its denoiser
    for ``nfe`` evaluations: DDRM S * linspace(1, 0, nfe); DiffPIR the DDPM schedule (linear beta 1e-4..0.02
    over 1000 steps, sigma = sqrt(1 / alpha_bar - 1) in its [-1, 1] space, i.e. S / 2 in x units) at the
    indices sqrt(linspace(0, 1000^2, nfe)). Running polydiff on these levels compares the algorithms
    rather than the time grids."""
    if name == "ddrm":
        return S * torch.linspace(1, 0, nfe, dtype=torch.float64)
    if name == "diffpir":
        T = 1000
        abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float32), 0).double()
        sig = torch.sqrt(1 / abar - 1).flip(0)                     # deepinv's ``sigmas``, decreasing
        seq = torch.sqrt(torch.linspace(0.0, T ** 2, nfe)).to(torch.int32)
        seq[-1] -= 1
        return (S / 2) * sig[seq.long()]
    raise ValueError(f"no level schedule for {name!r}; valid: ddrm, diffpir")


def run(name: str, *, prior, A: torch.Tensor, y: torch.Tensor, sy: float, n: int, nfe: int,
        g: torch.Generator, post=None, unit_norm: bool = True, zeta: float = 0.1):
    """n deepinv samples (float64, x units) for y = A x + sigma_y n; returns (x, NFE per sample).

    ``zeta``: DiffPIR's fresh-noise fraction (deepinv's default 0.1; its authors use 1 for inpainting).

    ``unit_norm``: hand deepinv the measurement divided by the spectral norm c of its physics (y / c,
    A / c, sigma_y / c: the same likelihood), the regime of deepinv's own operators (masks, normalised
    blurs). DDRM is invariant to this; DPS ("norm" guidance) and DiffPIR are not. DiffPIR starts
    from 2 A^T y - 1: with the unscaled physics (c ~ 20-40 here) that start lies ~10^4 outside the
    noise ball along A^T y, which picks the mixture mode maximising <A mu_k, y> (a matched filter)
    rather than running the diffusion from its prior."""
    import deepinv as dinv
    seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=g))
    torch.manual_seed(seed)   # deepinv's DDRM and DiffPIR draw from the global generator
    scale = S if name != "dps" else S / 2
    c = float(torch.linalg.matrix_norm(scale * A, ord=2)) if unit_norm else 1.0
    A, y, sy = A / c, y / c, sy / c
    if name == "ddrm":
        D = _Denoiser(prior, "u")
        phys = _physics(A, S, sy)
        yu = (y + (S / 2) * A.sum(1)).expand(n, -1).clone()
        model = dinv.sampling.DDRM(denoiser=D, sigmas=torch.linspace(1, 0, nfe).numpy())
        with torch.no_grad():
            u = model(yu, phys)
        return S * (u.double() - 0.5), D.calls
    if name == "diffpir":
        D = _Denoiser(prior, "u")
        phys = _physics(A, S, sy)
        yu = (y + (S / 2) * A.sum(1)).expand(n, -1).clone()
        model = dinv.sampling.DiffPIR(D, dinv.optim.data_fidelity.L2(), sigma=sy, max_iter=nfe, zeta=zeta)
        with torch.no_grad():
            u = model(yu, phys)
        return S * (u.double() - 0.5), D.calls
    if name == "dps":
        D = _Denoiser(prior, "w")
        phys = _physics(A, S / 2, sy)
        yw = y.expand(n, -1).clone()
        rng = torch.Generator().manual_seed(seed)
        model = dinv.sampling.DPS(D, num_steps=nfe + 1, dtype=torch.float64, rng=rng)
        w = model(yw, phys, x_init=(n, A.shape[1]))
        return S * w.detach().double() / 2, D.calls
    raise ValueError(f"unknown deepinv method {name!r}; valid: {METHODS}")


__all__ = ["METHODS", "run", "check", "S"]
