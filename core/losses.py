"""Training losses for Gaussian paths: regress a network on the target of its prediction kind.

For x = alpha x0 + sigma eps the network's output is regressed on ``target_from_x0`` of its kind
(eps, x0, v, velocity, score; "edm" is F inside EDM's preconditioning, compared through D). Every
weighting is defined once, in x0-error space, as w(t) in  w(t) |x0-hat - x0|^2, and turned into the
weight on the network's own squared error with ``x0_error_factor`` k(t), since
|target-hat - target|^2 = k(t) |x0-hat - x0|^2 at fixed x_t:

  "uniform"  plain MSE on the network's own target (x0-space weight k(t));
  "snr"      x0-space weight SNR = alpha^2 / sigma^2, i.e. the eps-MSE (Ho et al. 2020);
  "min_snr"  min(SNR, gamma) (Hang et al., "Efficient Diffusion Training via Min-SNR Weighting
             Strategy", ICCV 2023);
  "edm"      (s^2 + sd^2) / (s sd)^2 with s = sigma / alpha and sd = sigma_data (Karras et al.,
             "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS 2022, Eq. 8
             and Table 1): with the EDM-preconditioned network it is a unit weight on F's target.

Time samplers draw the training times with an explicit generator: uniform in t, logit-normal in t
(Esser et al., "Scaling Rectified Flow Transformers", ICML 2024) and EDM's log-normal in
sigma / alpha. All are confined to [t_min, t_max] (default [1e-5, 1 - 1e-5]) so that SNR, targets and
weights stay finite at the path's ends.

Mean-reverting paths (``paths.MeanReverting``, x_t = alpha x0 + (1 - alpha) mu + sigma eps) take the
prior mean as the conditioning keyword ``mu``. The network is trained on the Gaussian-path state
x~ = alpha x0 + sigma eps (as ``Denoiser`` feeds it) with mu in its conditioning; the targets are
unchanged because x~_0 = x0 and the score of x_t is the score of x~_t. Grad-TTS's decoder loss
(Popov et al., ICML 2021, Eq. 14: || sigma_t s(x_t) + eps ||^2) is
``DiffusionLoss(MeanRevertingVP(), prediction="score", weighting="snr")``, and SGMSE+'s
(Richter et al., TASLP 2023) the same on ``OUVE()`` with ``UniformTime(t_min=0.03)``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Type, Union

import torch

from . import mean_reverting as _mr
from .denoiser import PREDICTIONS, Denoiser, coefficients, target_from_x0, x0_error_factor
from .paths import Path, get_path

Tensor = torch.Tensor

WEIGHTINGS = ("uniform", "snr", "min_snr", "edm")
#: default training time range: keeps sigma > 0 and alpha > 0 on every path
T_MIN, T_MAX = 1e-5, 1.0 - 1e-5


# ------------------------------------------------------------------ time samplers
class TimeSampler:
    """Draws n training times (float64, on ``device``) in [t_min, t_max] from ``generator``."""

    def __init__(self, t_min: float = T_MIN, t_max: float = T_MAX) -> None:
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got {t_min}, {t_max}")
        self.t_min, self.t_max = float(t_min), float(t_max)

    def __call__(self, n: int, path: Path, generator: Optional[torch.Generator] = None,
                 device: Optional[torch.device] = None) -> Tensor:
        dtype = torch.float32 if torch.device(device or "cpu").type == "mps" else torch.float64
        return self.draw(n, path, generator, device, dtype).clamp(self.t_min, self.t_max)

    def draw(self, n: int, path: Path, generator: Optional[torch.Generator],
             device: Optional[torch.device], dtype: torch.dtype) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class UniformTime(TimeSampler):
    """t ~ U[t_min, t_max] (Ho et al. 2020; Song et al. 2021)."""

    def draw(self, n: int, path: Path, generator: Optional[torch.Generator],
             device: Optional[torch.device], dtype: torch.dtype) -> Tensor:
        u = torch.rand(n, generator=generator, device=device, dtype=dtype)
        return self.t_min + (self.t_max - self.t_min) * u


class LogitNormalTime(TimeSampler):
    """t = sigmoid(u), u ~ N(mean, std) (Esser et al. 2024, Sec. 3.1, logit-normal sampling)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0, t_min: float = T_MIN, t_max: float = T_MAX) -> None:
        super().__init__(t_min, t_max)
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.mean, self.std = float(mean), float(std)

    def draw(self, n: int, path: Path, generator: Optional[torch.Generator],
             device: Optional[torch.device], dtype: torch.dtype) -> Tensor:
        u = torch.randn(n, generator=generator, device=device, dtype=dtype)
        return torch.sigmoid(self.mean + self.std * u)


class LogNormalTime(TimeSampler):
    """ln(sigma / alpha) ~ N(p_mean, p_std) (EDM's training noise levels, Karras et al. 2022 Sec. 5),
    mapped to t with ``path.t_from_logsnr``; noise levels beyond the path's range land on its ends."""

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2, t_min: float = T_MIN, t_max: float = T_MAX) -> None:
        super().__init__(t_min, t_max)
        if not p_std > 0:
            raise ValueError(f"p_std must be > 0, got {p_std}")
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def draw(self, n: int, path: Path, generator: Optional[torch.Generator],
             device: Optional[torch.device], dtype: torch.dtype) -> Tensor:
        u = torch.randn(n, generator=generator, device=device, dtype=dtype)
        return path.t_from_logsnr(-(self.p_mean + self.p_std * u)).to(dtype)


TIME_SAMPLERS: Dict[str, Type[TimeSampler]] = {
    "uniform": UniformTime, "logit_normal": LogitNormalTime, "log_normal": LogNormalTime}


# ------------------------------------------------------------------ the loss
class DiffusionLoss:
    """Weighted denoising regression loss on a Gaussian path, for any prediction kind.

    prediction: what the network outputs (``denoiser.PREDICTIONS``); the network is called as in
        ``Denoiser``: net(x_t, t, **cond) with t (B,), or for "edm" net(c_in x_t, c_noise, **cond).
    weighting: one of ``WEIGHTINGS`` (module docstring); ``min_snr_gamma`` is Min-SNR's gamma and
        ``sigma_data`` the data scale of "edm" weighting and preconditioning.
    time_sampler: a name in ``TIME_SAMPLERS`` (default options) or a ``TimeSampler``.
    Calling it returns the per-sample loss (B,) = weight(t) * mean over elements of
    (output - target)^2; average it (or weight it further) for the training objective.
    """

    def __init__(self, path: Union[Path, str], prediction: str = "eps", weighting: str = "uniform",
                 time_sampler: Union[str, TimeSampler] = "uniform", sigma_data: float = 0.5,
                 min_snr_gamma: float = 5.0) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; valid: {PREDICTIONS}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; valid: {WEIGHTINGS}")
        if isinstance(time_sampler, str):
            if time_sampler not in TIME_SAMPLERS:
                raise ValueError(f"unknown time sampler {time_sampler!r}; valid: {tuple(TIME_SAMPLERS)} "
                                 "or a TimeSampler instance")
            time_sampler = TIME_SAMPLERS[time_sampler]()
        elif not isinstance(time_sampler, TimeSampler):
            raise ValueError(f"time_sampler must be a name in {tuple(TIME_SAMPLERS)} or a TimeSampler, "
                             f"got {time_sampler!r}")
        if not (sigma_data > 0 and min_snr_gamma > 0):
            raise ValueError(f"sigma_data and min_snr_gamma must be > 0, got {sigma_data}, {min_snr_gamma}")
        self.path = get_path(path)
        self.prediction, self.weighting, self.time_sampler = prediction, weighting, time_sampler
        self.sigma_data, self.min_snr_gamma = float(sigma_data), float(min_snr_gamma)

    def _weights(self, t: Union[Tensor, float]) -> tuple[Tensor, Tensor]:
        """(x0-space weight w(t), x0_error_factor k(t)) in float64."""
        t64 = torch.as_tensor(t, dtype=torch.float64)
        a, s = self.path.alpha(t64), self.path.sigma(t64)
        k = x0_error_factor(self.prediction, a, s, self.path.d_alpha(t64), self.path.d_sigma(t64))
        if self.weighting == "uniform":
            return k, k
        snr = (a / s) ** 2
        if self.weighting == "snr":
            return snr, k
        if self.weighting == "min_snr":
            return snr.clamp_max(self.min_snr_gamma), k
        return snr + 1.0 / self.sigma_data ** 2, k     # edm: (s^2 + sd^2) / (s sd)^2, s = sigma / alpha

    def x0_weight(self, t: Union[Tensor, float]) -> Tensor:
        """The weighting w(t) of |x0-hat - x0|^2 (float64, shaped like t)."""
        return self._weights(t)[0]

    def weight(self, t: Union[Tensor, float]) -> Tensor:
        """The weight w(t) / k(t) of the network's own squared error (float64, shaped like t)."""
        if self.weighting == "uniform":
            return torch.ones_like(torch.as_tensor(t, dtype=torch.float64))
        w, k = self._weights(t)
        return w / k

    def loss_at(self, net: Callable[..., Tensor], x0: Tensor, t: Tensor, eps: Tensor, **cond: Any) -> Tensor:
        """Per-sample loss (B,) at given times t (B,) and noise eps (shaped like x0)."""
        if not x0.is_floating_point() or x0.dim() < 2:
            raise ValueError(f"x0 must be a floating-point tensor of shape (B, ...), got {x0.dtype} {tuple(x0.shape)}")
        if t.shape != (x0.shape[0],) or eps.shape != x0.shape:
            raise ValueError(f"need t of shape ({x0.shape[0]},) and eps of shape {tuple(x0.shape)}, "
                             f"got {tuple(t.shape)} and {tuple(eps.shape)}")
        mu = None
        if _mr.is_mean_reverting(self.path):
            mu = _mr.check_mean(self.path, cond, x0, "DiffusionLoss", check_finite=False)
            cond = {**cond, _mr.MEAN_KEY: mu}
        coefs = coefficients(self.path, t, x0)
        x = coefs[0] * x0 + coefs[1] * eps     # on a mean-reverting path: x~ = x_t - (1 - alpha) mu
        if self.prediction == "edm":     # D = c_skip x + c_out F(c_in x, c_noise): compared through D
            x_in = x if mu is None else _mr.from_gaussian(self.path, x, mu, t)
            out = Denoiser(net, self.path, "edm", self.sigma_data)(x_in, t, **cond)
        else:
            out = net(x, t.to(x0.dtype), **cond)
        if out.shape != x0.shape:
            raise ValueError(f"the network returned shape {tuple(out.shape)} for input {tuple(x0.shape)}")
        target = target_from_x0(self.prediction, x, x0, eps, *coefs)
        mse = (out - target).square().flatten(1).mean(1)
        return self.weight(t).to(mse) * mse

    def __call__(self, net: Callable[..., Tensor], x0: Tensor, generator: Optional[torch.Generator] = None,
                 **cond: Any) -> Tensor:
        """Per-sample loss (B,) at times from the time sampler and standard normal noise, both drawn
        from ``generator``."""
        t = self.time_sampler(x0.shape[0], self.path, generator, x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return self.loss_at(net, x0, t, eps, **cond)

    def __repr__(self) -> str:
        return (f"DiffusionLoss(path={self.path!r}, prediction={self.prediction!r}, weighting={self.weighting!r}, "
                f"time_sampler={self.time_sampler!r}, sigma_data={self.sigma_data}, "
                f"min_snr_gamma={self.min_snr_gamma})")


__all__ = ["DiffusionLoss", "TimeSampler", "UniformTime", "LogitNormalTime", "LogNormalTime",
           "TIME_SAMPLERS", "WEIGHTINGS", "T_MIN", "T_MAX"]
