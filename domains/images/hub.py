"""diffusers interop: a hub ``UNet2DModel`` and its scheduler's training schedule as a polydiff denoiser.

    from polydiff.domains.images.hub import from_diffusers, load_hub
    hub = from_diffusers(unet, scheduler)          # or load_hub("google/ddpm-cifar10-32") / a local folder
    x = sample(hub.denoiser, torch.randn(8, *hub.x_shape), path=hub.path, solver="dpmpp_2m", steps=20)
    x = posterior_sample(hub.denoiser, y, op, path=hub.path, method="ddrm", steps=20, sigma_y=0.05)

Time. A diffusers model is trained at integer timesteps n = 0..T-1 with
alphas_cumprod[n] = prod_{i <= n} (1 - beta_i). ``DiscreteVP`` places timestep n at t_n = (n + 1) / T
(so t = 0 is the clean data, alpha = 1, one step before n = 0, and t = 1 is n = T - 1) and
interpolates log alphas_cumprod linearly in t between these knots: at every knot alpha(t_n)^2 is the
scheduler's own alphas_cumprod[n] (the float32 values diffusers uses, read from the scheduler), so a
polydiff step between knots is exactly the diffusers step. This discrete path is exact for every
beta schedule ("linear", "scaled_linear", "squaredcos_cap_v2", trained betas), where a continuous
VP("linear") or VP("cosine") would only approximate the discrete products (and the cosine betas'
clipping at 0.999), so it is the only path offered. Between knots the network sees the fractional
timestep n = t T - 1 (its sinusoidal embedding is defined there); below t = 1 / T (n < 0, never
trained) it sees n = 0.

Prediction. The scheduler config's ``prediction_type`` picks the conversion of ``polydiff.core.Denoiser``:
"epsilon" -> "eps", "v_prediction" -> "v" (diffusers' v = sqrt(abar) eps - sqrt(1 - abar) x0 is
polydiff's alpha eps - sigma x0), "sample" -> "x0". A UNet that also outputs a learned variance
(2 C channels) has its first C channels used.

Data scale: diffusers image models work on [-1, 1], this package's convention.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple, Union

import torch

from polydiff.core.denoiser import Denoiser
from polydiff.core.paths import Path, TimeLike, _as_tensor
from polydiff.core.solvers import sample

Tensor = torch.Tensor

#: diffusers' prediction_type -> polydiff's Denoiser prediction
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


class DiscreteVP(Path):
    """The VP path of a discrete training schedule alphas_cumprod[0..T-1] (see the module docstring).

    log alpha(t)^2 is piecewise linear in t through (0, 0) and ((n + 1) / T, log alphas_cumprod[n]);
    sigma = sqrt(1 - alpha^2). ``timestep(t)`` gives the network's timestep n = t T - 1 and
    ``t_of_timestep(n)`` the inverse. A zero last value (zero-terminal-SNR schedules) is floored at
    1e-20, so eps-prediction models stay finite there (use v-prediction for such schedules).
    """

    variance_preserving = True

    def __init__(self, alphas_cumprod: Union[Tensor, Sequence[float]]) -> None:
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu().reshape(-1)
        if ac.numel() < 2 or not bool(torch.isfinite(ac).all()) or bool((ac > 1).any()) or bool((ac < 0).any()):
            raise ValueError("alphas_cumprod must hold at least 2 finite values in [0, 1]")
        if not bool((ac[1:] < ac[:-1]).all()) or not float(ac[0]) < 1:
            raise ValueError("alphas_cumprod must be strictly decreasing and below 1 (every beta > 0)")
        self.T = int(ac.numel())
        self._L = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(ac.clamp_min(1e-20))])  # (T + 1,)
        self._alphas_cumprod = ac

    # log alpha^2 and its slope dt on the segment that contains t
    def _seg(self, t: Tensor) -> Tuple[Tensor, Tensor]:
        L = self._L.to(t.device)
        u = t.to(torch.float64) * self.T
        idx = u.floor().clamp(0, self.T - 1).long()
        slope = L[idx + 1] - L[idx]
        logab = L[idx] + (u - idx) * slope
        return logab.to(t.dtype), (slope * self.T).to(t.dtype)

    def alpha(self, t: TimeLike) -> Tensor:
        return torch.exp(0.5 * self._seg(_as_tensor(t))[0])

    def sigma(self, t: TimeLike) -> Tensor:
        return torch.sqrt((-torch.expm1(self._seg(_as_tensor(t))[0])).clamp_min(0.0))

    def d_alpha(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        logab, d = self._seg(t)
        return torch.exp(0.5 * logab) * 0.5 * d

    def d_sigma(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def logsnr(self, t: TimeLike) -> Tensor:
        logab = self._seg(_as_tensor(t))[0]
        return 0.5 * logab - 0.5 * torch.log(-torch.expm1(logab))

    def t_from_logsnr(self, lam: TimeLike) -> Tensor:
        lam = _as_tensor(lam)
        logab = torch.nn.functional.logsigmoid(2.0 * lam.to(torch.float64))        # alpha^2 = sigmoid(2 lambda)
        negL = -self._L.to(lam.device)                                              # increasing
        idx = (torch.searchsorted(negL, (-logab).contiguous(), right=True) - 1).clamp(0, self.T - 1)
        L0, L1 = self._L.to(lam.device)[idx], self._L.to(lam.device)[idx + 1]
        t = (idx + (logab - L0) / (L1 - L0)) / self.T
        return t.clamp(0.0, 1.0).to(lam.dtype)

    def timestep(self, t: TimeLike) -> Tensor:
        """The network timestep n = t T - 1 (float64; snapped to the nearest integer within 1e-3, so that a
        float32 t_n gives exactly n, and floored at 0)."""
        n = _as_tensor(t).to(torch.float64) * self.T - 1.0
        r = torch.round(n)
        n = torch.where((n - r).abs() < 1e-3, r, n)
        return n.clamp_min(0.0)

    def t_of_timestep(self, n: Union[Tensor, int, Sequence[int]]) -> Tensor:
        """t_n = (n + 1) / T (float64) for diffusers timesteps n."""
        return (torch.as_tensor(n, dtype=torch.float64) + 1.0) / self.T

    def config(self) -> dict:
        raise ValueError("DiscreteVP is rebuilt from its diffusers scheduler (from_diffusers / load_hub), "
                         "not from a polydiff checkpoint config")

    def __repr__(self) -> str:
        return f"DiscreteVP(T={self.T}, alphas_cumprod[-1]={float(self._alphas_cumprod[-1]):.3g})"


class _UNetNet(torch.nn.Module):
    """net(x, t, class_labels=None) -> the UNet's raw prediction at timestep n = path.timestep(t)."""

    def __init__(self, unet: torch.nn.Module, path: DiscreteVP, channels: int) -> None:
        super().__init__()
        self.unet, self.path, self.channels = unet, path, channels

    def forward(self, x: Tensor, t: Tensor, class_labels: Optional[Tensor] = None, **cond: Any) -> Tensor:
        if cond:
            raise ValueError(f"a diffusers UNet2DModel takes only class_labels as conditioning, got {sorted(cond)}")
        p = next(self.unet.parameters())
        n = self.path.timestep(t.detach()).to(device=x.device, dtype=torch.float32)
        out = self.unet(x.to(p.dtype), n, class_labels=class_labels).sample
        if out.shape[1] == 2 * self.channels:   # learned variance: [prediction, variance]
            out = out[:, : self.channels]
        return out.to(x.dtype)


@dataclass
class HubModel:
    """A diffusers UNet as a polydiff prior: ``denoiser`` D(x, t, class_labels=None) and its ``path``."""

    denoiser: Denoiser
    path: DiscreteVP
    x_shape: Tuple[int, int, int]
    prediction: str
    num_classes: Optional[int] = None

    def generate(self, n: int, *, steps: int = 25, solver: str = "dpmpp_2m", grid: str = "logsnr",
                 labels: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
                 **options: Any) -> Tensor:
        """n images (n, C, H, W) in [-1, 1] (clamped) with any polydiff solver; ``labels`` for class-conditional UNets."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        cond = {}
        if labels is not None:
            if self.num_classes is None:
                raise ValueError("this UNet is unconditional: labels are not accepted")
            labels = torch.as_tensor(labels, dtype=torch.long)
            if labels.shape != (n,) or bool((labels < 0).any()) or bool((labels >= self.num_classes).any()):
                raise ValueError(f"labels must be ({n},) integers in [0, {self.num_classes}), got {labels.tolist()}")
            cond["class_labels"] = labels
        p = next(self.denoiser.net.unet.parameters())
        noise = torch.randn((n,) + self.x_shape, generator=generator, dtype=torch.float32).to(p.device)
        with torch.no_grad():
            x = sample(self.denoiser, noise, path=self.path, solver=solver, steps=steps, grid=grid, cond=cond,
                       generator=generator, **options)
        return x.clamp(-1, 1)


def _schedule(scheduler: Any):
    """(alphas_cumprod, prediction_type) of a diffusers scheduler object or config dict."""
    if isinstance(scheduler, dict):
        from diffusers import DDPMScheduler
        scheduler = DDPMScheduler.from_config(scheduler)
    ac = getattr(scheduler, "alphas_cumprod", None)
    cfg = getattr(scheduler, "config", None)
    if ac is None or cfg is None:
        raise ValueError(f"{type(scheduler).__name__} has no alphas_cumprod/config: pass a DDPM-family diffusers "
                         "scheduler (DDPM, DDIM, PNDM, Euler, DPMSolver...) or its config dict")
    pt = cfg.get("prediction_type", "epsilon") if hasattr(cfg, "get") else getattr(cfg, "prediction_type", "epsilon")
    if pt not in PREDICTION_TYPES:
        raise ValueError(f"unsupported prediction_type {pt!r}; valid: {sorted(PREDICTION_TYPES)}")
    return torch.as_tensor(ac).detach().cpu(), pt


def from_diffusers(unet: torch.nn.Module, scheduler: Any) -> HubModel:
    """Wrap a diffusers ``UNet2DModel`` and its scheduler (object or config dict) as a ``HubModel``.

    The scheduler gives the training schedule (its ``alphas_cumprod``, hence ``DiscreteVP``) and the
    ``prediction_type``; nothing of its sampling state is used, so any polydiff solver or posterior
    sampler can run on the result.
    """
    cfg = getattr(unet, "config", None)
    if cfg is None or not hasattr(cfg, "in_channels"):
        raise ValueError(f"unet must be a diffusers UNet2DModel, got {type(unet).__name__}")
    ac, pt = _schedule(scheduler)
    path = DiscreteVP(ac)
    size = cfg.sample_size
    H, W = (size, size) if isinstance(size, int) else tuple(size)
    C = int(cfg.in_channels)
    net = _UNetNet(unet, path, C)
    ncls = getattr(cfg, "num_class_embeds", None)
    return HubModel(Denoiser(net, path, prediction=PREDICTION_TYPES[pt]), path, (C, int(H), int(W)),
                    PREDICTION_TYPES[pt], int(ncls) if ncls else None)


def load_hub(name_or_dir: str, *, device: Union[str, torch.device] = "cpu", **kwargs: Any) -> HubModel:
    """Load a diffusers pipeline folder or hub repository (``unet/`` and ``scheduler/`` subfolders, as
    ``DDPMPipeline.save_pretrained`` writes them) and wrap it with ``from_diffusers``. A hub name
    downloads through diffusers (network needed unless cached); ``kwargs`` go to ``from_pretrained``."""
    from diffusers import DDPMScheduler, UNet2DModel
    try:
        unet = UNet2DModel.from_pretrained(name_or_dir, subfolder="unet", **kwargs)
        sched = DDPMScheduler.from_pretrained(name_or_dir, subfolder="scheduler", **kwargs)
    except (OSError, EnvironmentError, ValueError) as e:
        raise ValueError(f"could not load a diffusers UNet2DModel and scheduler from {name_or_dir!r} "
                         f"(expected unet/ and scheduler/ subfolders): {e}") from None
    return from_diffusers(unet.to(device).eval(), sched)


__all__ = ["DiscreteVP", "HubModel", "from_diffusers", "load_hub", "PREDICTION_TYPES"]
