"""Gaussian noise paths x_t = alpha(t) * x0 + sigma(t) * eps, with t = 0 data and t = 1 noise.

Every path exposes alpha, sigma, their time derivatives, the log-SNR lambda(t) = log(alpha/sigma)
and its inverse, so that every solver is written once for all paths: exponential integrators use
lambda, Euler/Heun use the probability-flow drift, stochastic samplers use the SDE coefficients.

Paths are stateless and accept tensors of any shape, dtype and device (solvers evaluate them in
float64 on the host). Closed forms are used wherever they exist.

References: Song et al., "Score-Based Generative Modeling through SDEs" (ICLR 2021) for VP, sub-VP
and VE; Nichol & Dhariwal, "Improved DDPM" (ICML 2021) for the cosine schedule; Karras et al.,
"Elucidating the Design Space of Diffusion-Based Generative Models" (NeurIPS 2022) for EDM;
Liu et al. / Lipman et al. (ICLR 2023) for rectified flow / conditional OT; Lin et al., "Common
Diffusion Noise Schedules and Sample Steps are Flawed" (WACV 2024) for zero terminal SNR; Esser et
al., "Scaling Rectified Flow Transformers" (ICML 2024) for the resolution shift; Popov et al.,
"Grad-TTS" (ICML 2021) and Richter et al., "Speech Enhancement and Dereverberation with
Diffusion-Based Generative Models" (TASLP 2023) for the mean-reverting paths, whose mean is a
conditioning signal mu (``MeanReverting``).
"""
from __future__ import annotations

import math
from typing import Union

import torch

Tensor = torch.Tensor
TimeLike = Union[Tensor, float]

#: log-SNR values are clipped to this range wherever a finite number is needed (grids, coefficients).
LOGSNR_CLIP = 40.0


def _as_tensor(t: TimeLike) -> Tensor:
    if isinstance(t, Tensor):
        return t if t.is_floating_point() else t.double()
    return torch.as_tensor(t, dtype=torch.float64)


class Path:
    """Base class of Gaussian paths on t in [0, 1].

    Subclasses implement ``alpha``, ``sigma``, ``d_alpha``, ``d_sigma`` and may override
    ``logsnr`` / ``t_from_logsnr`` with closed forms (the defaults are generic).
    """

    #: True when alpha**2 + sigma**2 == 1 (VP family); used by transforms that need it.
    variance_preserving: bool = False

    def alpha(self, t: TimeLike) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: TimeLike) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: TimeLike) -> Tensor:
        raise NotImplementedError

    def d_sigma(self, t: TimeLike) -> Tensor:
        raise NotImplementedError

    def logsnr(self, t: TimeLike) -> Tensor:
        """lambda(t) = log(alpha / sigma); +inf where sigma = 0, -inf where alpha = 0."""
        t = _as_tensor(t)
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def d_logsnr(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        return self.d_alpha(t) / self.alpha(t) - self.d_sigma(t) / self.sigma(t)

    def t_from_logsnr(self, lam: TimeLike) -> Tensor:
        """Inverse of ``logsnr`` (generic: bisection in float64, lambda is decreasing in t)."""
        lam = _as_tensor(lam).double()
        lo = torch.zeros_like(lam)
        hi = torch.ones_like(lam)
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            go_right = self.logsnr(mid) > lam
            lo = torch.where(go_right, mid, lo)
            hi = torch.where(go_right, hi, mid)
        return 0.5 * (lo + hi)

    def sigma_ve(self, t: TimeLike) -> Tensor:
        """sigma/alpha = exp(-lambda): the noise level of the scaled state x/alpha (EDM's sigma)."""
        t = _as_tensor(t)
        return self.sigma(t) / self.alpha(t)

    def t_from_sigma_ve(self, s: TimeLike) -> Tensor:
        return self.t_from_logsnr(-torch.log(_as_tensor(s)))

    def sde(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        """Forward SDE dx = f(t) x dt + g(t) dW with these marginals: returns (f, g**2).

        f = alpha'/alpha and g^2 = 2 sigma sigma' - 2 f sigma^2 = -2 sigma^2 lambda'.
        """
        t = _as_tensor(t)
        a, s = self.alpha(t), self.sigma(t)
        f = self.d_alpha(t) / a
        g2 = 2.0 * s * self.d_sigma(t) - 2.0 * f * s * s
        return f, g2

    def config(self) -> dict:
        """A JSON-serialisable dict {"name": class name, **constructor args}; ``path_from_config`` inverts it.

        Checkpoints store it so that a saved model rebuilds its path without pickle. A user-defined
        path must override this (and is rebuilt only if registered in ``PATH_CLASSES``).
        """
        raise ValueError(f"{type(self).__name__} does not define config(); implement it to save this path "
                         "in a checkpoint, and add the class to polydiff.core.paths.PATH_CLASSES")

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class VP(Path):
    """Variance-preserving path (DDPM / score-SDE VP): alpha^2 + sigma^2 = 1.

    ``schedule="linear"``: beta(t) = beta_min + t (beta_max - beta_min), the continuous limit of
    DDPM's linear betas (beta_min=0.1, beta_max=20 match 1000 steps of 1e-4..2e-2).
    ``schedule="cosine"``: alpha^2 = f(t)/f(0), f(t) = cos^2((t+s)/(1+s) * pi/2) (Improved DDPM),
    i.e. alpha = sin((1-t) k) / sin(k) with k = pi / (2 (1+s)); alpha(1) = 0 exactly, so the path
    reaches pure noise (zero terminal SNR).
    """

    variance_preserving = True

    def __init__(self, schedule: str = "linear", beta_min: float = 0.1, beta_max: float = 20.0,
                 cosine_s: float = 0.008) -> None:
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"unknown VP schedule {schedule!r}; valid: 'linear', 'cosine'")
        if schedule == "linear" and not (0 < beta_min < beta_max):
            raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        if schedule == "cosine" and not cosine_s >= 0:
            raise ValueError(f"need cosine_s >= 0, got {cosine_s}")
        self.schedule = schedule
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)
        self.cosine_s = float(cosine_s)

    @property
    def _k(self) -> float:
        return math.pi / (2.0 * (1.0 + self.cosine_s))

    # linear schedule: log alpha = -int_0^t beta / 2 and its derivative -beta(t) / 2
    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def _d_log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * t * (self.beta_max - self.beta_min) - 0.5 * self.beta_min

    def alpha(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        if self.schedule == "linear":
            return torch.exp(self._log_alpha(t))
        k = self._k
        return torch.sin((1.0 - t) * k) / math.sin(k)

    def sigma(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        if self.schedule == "linear":
            # sqrt(1 - alpha^2) = sqrt(-expm1(2 log alpha)), accurate near t = 0
            return torch.sqrt((-torch.expm1(2.0 * self._log_alpha(t))).clamp_min(0.0))
        # sin^2 k - sin^2((1-t) k) = sin(t k) sin((2-t) k), accurate near t = 0
        k = self._k
        return torch.sqrt((torch.sin(t * k) * torch.sin((2.0 - t) * k)).clamp_min(0.0)) / math.sin(k)

    def d_alpha(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        if self.schedule == "linear":
            return self.alpha(t) * self._d_log_alpha(t)
        k = self._k
        return -k * torch.cos((1.0 - t) * k) / math.sin(k)

    def d_sigma(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def logsnr(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        if self.schedule == "linear":
            la = self._log_alpha(t)
            return la - 0.5 * torch.log(-torch.expm1(2.0 * la))
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def d_logsnr(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        # lambda = log alpha - 0.5 log(1 - alpha^2)  =>  lambda' = (log alpha)' / sigma^2
        return self.d_alpha(t) / (self.alpha(t) * self.sigma(t) ** 2)

    def t_from_logsnr(self, lam: TimeLike) -> Tensor:
        lam = _as_tensor(lam)
        # alpha^2 = sigmoid(2 lambda), sigma^2 = sigmoid(-2 lambda)
        if self.schedule == "linear":
            # 0.25 d t^2 + 0.5 b t + log_alpha = 0, root written without cancellation
            # (log alpha floored so that lambda = -inf lands beyond t = 1 instead of inf / inf)
            log_alpha = (0.5 * torch.nn.functional.logsigmoid(2.0 * lam)).clamp_min(-1e6)
            d = self.beta_max - self.beta_min
            b = self.beta_min
            t = -2.0 * log_alpha / (0.5 * b + torch.sqrt(0.25 * b * b - d * log_alpha))
        else:
            # u = (1 - t) k has sin u = sin k alpha, cos u = sqrt(cos^2 k + sin^2 k sigma^2); then
            # t k = k - u with sin(k - u) = sin k sigma^2 / (cos u + cos k alpha): no cancellation at t -> 0
            k = self._k
            a, s2 = torch.sqrt(torch.sigmoid(2.0 * lam)), torch.sigmoid(-2.0 * lam)
            sin_u = math.sin(k) * a
            cos_u = torch.sqrt(math.cos(k) ** 2 + math.sin(k) ** 2 * s2)
            t = torch.atan2(math.sin(k) * s2 / (cos_u + math.cos(k) * a),
                            math.cos(k) * cos_u + math.sin(k) * sin_u) / k
        return t.clamp(0.0, 1.0)

    def config(self) -> dict:
        return {"name": "VP", "schedule": self.schedule, "beta_min": self.beta_min, "beta_max": self.beta_max,
                "cosine_s": self.cosine_s}


class SubVP(Path):
    """Sub-VP path (Song et al. 2021): alpha as VP-linear, sigma = 1 - alpha^2."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self._vp = VP("linear", beta_min, beta_max)
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def alpha(self, t: TimeLike) -> Tensor:
        return self._vp.alpha(t)

    def sigma(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        return -torch.expm1(2.0 * self._vp._log_alpha(t))

    def d_alpha(self, t: TimeLike) -> Tensor:
        return self._vp.d_alpha(t)

    def d_sigma(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        return -2.0 * self.alpha(t) * self.d_alpha(t)

    def t_from_logsnr(self, lam: TimeLike) -> Tensor:
        lam = _as_tensor(lam)
        # alpha / (1 - alpha^2) = e^lam  =>  alpha = 2 / (e^{-lam} + sqrt(e^{-2 lam} + 4)) = exp(-asinh(e^{-lam} / 2)),
        # and the VP log-SNR of that alpha is log alpha - 0.5 log(1 - alpha^2) = (log alpha + lam) / 2
        log_alpha = -torch.asinh(0.5 * torch.exp(-lam))
        return self._vp.t_from_logsnr(0.5 * (log_alpha + lam))

    def config(self) -> dict:
        return {"name": "SubVP", "beta_min": self.beta_min, "beta_max": self.beta_max}


class VE(Path):
    """Variance-exploding path: alpha = 1, sigma = sigma_min (sigma_max / sigma_min)^t.

    t = 0 carries sigma_min of noise (the usual VE convention); choose sigma_min small.
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0) -> None:
        if not (0 < sigma_min < sigma_max):
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    def alpha(self, t: TimeLike) -> Tensor:
        return torch.ones_like(_as_tensor(t))

    def sigma(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        return self.sigma_min * torch.exp(t * math.log(self.sigma_max / self.sigma_min))

    def d_alpha(self, t: TimeLike) -> Tensor:
        return torch.zeros_like(_as_tensor(t))

    def d_sigma(self, t: TimeLike) -> Tensor:
        return self.sigma(t) * math.log(self.sigma_max / self.sigma_min)

    def logsnr(self, t: TimeLike) -> Tensor:
        return -torch.log(self.sigma(t))

    def t_from_logsnr(self, lam: TimeLike) -> Tensor:
        lam = _as_tensor(lam)
        return ((-lam - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)).clamp(0.0, 1.0)

    def config(self) -> dict:
        return {"name": "VE", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class EDM(Path):
    """EDM path (Karras et al. 2022): alpha = 1, sigma(t) = (s_min^(1/rho) + t (s_max^(1/rho) - s_min^(1/rho)))^rho.

    A uniform grid in t on this path is exactly EDM's Karras discretisation.
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> None:
        if not (0 < sigma_min < sigma_max) or rho <= 0:
            raise ValueError(f"need 0 < sigma_min < sigma_max and rho > 0, got {sigma_min}, {sigma_max}, {rho}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.rho = float(rho)

    def _ends(self) -> tuple[float, float]:
        return self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)

    def alpha(self, t: TimeLike) -> Tensor:
        return torch.ones_like(_as_tensor(t))

    def sigma(self, t: TimeLike) -> Tensor:
        lo, hi = self._ends()
        return (lo + _as_tensor(t) * (hi - lo)) ** self.rho

    def d_alpha(self, t: TimeLike) -> Tensor:
        return torch.zeros_like(_as_tensor(t))

    def d_sigma(self, t: TimeLike) -> Tensor:
        lo, hi = self._ends()
        return self.rho * (lo + _as_tensor(t) * (hi - lo)) ** (self.rho - 1) * (hi - lo)

    def logsnr(self, t: TimeLike) -> Tensor:
        return -torch.log(self.sigma(t))

    def t_from_logsnr(self, lam: TimeLike) -> Tensor:
        lo, hi = self._ends()
        return ((torch.exp(-_as_tensor(lam) / self.rho) - lo) / (hi - lo)).clamp(0.0, 1.0)

    def config(self) -> dict:
        return {"name": "EDM", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "rho": self.rho}


class Flow(Path):
    """Rectified flow / conditional OT path: alpha = 1 - t, sigma = t (noise exactly at t = 1)."""

    def alpha(self, t: TimeLike) -> Tensor:
        return 1.0 - _as_tensor(t)

    def sigma(self, t: TimeLike) -> Tensor:
        return _as_tensor(t).clone()

    def d_alpha(self, t: TimeLike) -> Tensor:
        return torch.full_like(_as_tensor(t), -1.0)

    def d_sigma(self, t: TimeLike) -> Tensor:
        return torch.ones_like(_as_tensor(t))

    def d_logsnr(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        return -1.0 / (t * (1.0 - t))

    def t_from_logsnr(self, lam: TimeLike) -> Tensor:
        return torch.sigmoid(-_as_tensor(lam))

    def config(self) -> dict:
        return {"name": "Flow"}


class Shifted(Path):
    """Shift a path's log-SNR by -log(shift) at every t (resolution shift; shift > 1 = noisier).

    Implemented as a time warp t -> t' = base.t_from_logsnr(base.logsnr(t) - log(shift)), so the
    shifted path stays in the base path's family (for Flow it is exactly SD3's
    t' = shift t / (1 + (shift - 1) t)). The base must span every log-SNR the shift reaches: infinite
    log-SNR at t = 1 for shift > 1 (Flow, VP cosine, zero terminal SNR), at t = 0 for shift < 1.
    """

    def __init__(self, base: Path, shift: float) -> None:
        if shift <= 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        if isinstance(base, MeanReverting):
            raise ValueError(f"shift the Gaussian base of a mean-reverting path instead: "
                             f"MeanReverting(Shifted({base.base!r}, {shift}))")
        # the warp must stay inside [0, 1]: shifting towards noise needs lambda(1) = -inf, towards data
        # lambda(0) = +inf (otherwise alpha, sigma would saturate while the log-SNR moves on)
        end = 1.0 if shift > 1 else 0.0
        if shift != 1 and math.isfinite(float(base.logsnr(end))):
            raise ValueError(f"Shifted(shift={shift}) needs a base path whose log-SNR is infinite at t = {end:g}, "
                             f"got {base!r}; use e.g. Flow(), VP('cosine') or ZeroTerminalSNR(...)")
        self.base = base
        self.shift = float(shift)
        self.variance_preserving = base.variance_preserving

    def _warp(self, t: Tensor) -> Tensor:
        return self.base.t_from_logsnr(self.base.logsnr(t) - math.log(self.shift))

    def _dwarp(self, t: Tensor, tw: Tensor) -> Tensor:
        """dt'/dt = lambda'(t) / lambda'(t'), written to stay finite at both ends of the path.

        With lambda' = W / (alpha sigma), W = alpha' sigma - sigma' alpha, and alpha(t')/sigma(t') =
        alpha/(shift sigma): X = alpha(t') sigma(t') / (alpha sigma) = shift (alpha(t')^2 + sigma(t')^2)
        / (alpha^2 + shift^2 sigma^2), so dt'/dt = X W(t) / W(t'). On a VP path W = alpha' / sigma is
        infinite at sigma = 0, so there W(t)/W(t') = alpha'(t) sigma(t') / (alpha'(t') sigma(t)) with
        sigma(t') / sigma(t) = sqrt(shift X).
        """
        b, k = self.base, self.shift
        a, s, aw, sw = b.alpha(t), b.sigma(t), b.alpha(tw), b.sigma(tw)
        x = k * (aw * aw + sw * sw) / (a * a + k * k * s * s)
        if b.variance_preserving:
            return x * torch.sqrt(k * x) * b.d_alpha(t) / b.d_alpha(tw)
        w, ww = b.d_alpha(t) * s - b.d_sigma(t) * a, b.d_alpha(tw) * sw - b.d_sigma(tw) * aw
        return x * w / ww

    def alpha(self, t: TimeLike) -> Tensor:
        return self.base.alpha(self._warp(_as_tensor(t)))

    def sigma(self, t: TimeLike) -> Tensor:
        return self.base.sigma(self._warp(_as_tensor(t)))

    def d_alpha(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        tw = self._warp(t)
        return self.base.d_alpha(tw) * self._dwarp(t, tw)

    def d_sigma(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        tw = self._warp(t)
        return self.base.d_sigma(tw) * self._dwarp(t, tw)

    def logsnr(self, t: TimeLike) -> Tensor:
        return self.base.logsnr(t) - math.log(self.shift)

    def d_logsnr(self, t: TimeLike) -> Tensor:
        return self.base.d_logsnr(t)

    def t_from_logsnr(self, lam: TimeLike) -> Tensor:
        return self.base.t_from_logsnr(_as_tensor(lam) + math.log(self.shift))

    def config(self) -> dict:
        return {"name": "Shifted", "base": self.base.config(), "shift": self.shift}


class ZeroTerminalSNR(Path):
    """Rescale a variance-preserving path so that alpha(1) = 0 (Lin et al. 2024, Alg. 1).

    alpha_new(t) = (alpha(t) - alpha(1)) * alpha(0) / (alpha(0) - alpha(1)), sigma_new = sqrt(1 - alpha_new^2).
    Models on this path must not predict eps (it cannot give x0 at zero SNR): use v, x0 or velocity.
    """

    variance_preserving = True

    def __init__(self, base: Path) -> None:
        if isinstance(base, MeanReverting):
            raise ValueError(f"rescale the Gaussian base of a mean-reverting path instead: "
                             f"MeanReverting(ZeroTerminalSNR({base.base!r}))")
        if not base.variance_preserving:
            raise ValueError(f"ZeroTerminalSNR needs a variance-preserving path, got {base!r}")
        self.base = base
        a0 = float(base.alpha(0.0))
        a1 = float(base.alpha(1.0))
        if not a0 > a1:
            raise ValueError("ZeroTerminalSNR needs alpha(0) > alpha(1)")
        self._a0, self._a1 = a0, a1
        self._scale = a0 / (a0 - a1)

    def alpha(self, t: TimeLike) -> Tensor:
        return ((self.base.alpha(t) - self._a1) * self._scale).clamp_min(0.0)

    def sigma(self, t: TimeLike) -> Tensor:
        # 1 - alpha = (1 - a0)(1 - scale) + scale (1 - alpha_base), 1 - alpha_base = sigma_base^2 / (1 + alpha_base):
        # no cancellation near t = 0
        t = _as_tensor(t)
        ab, sb = self.base.alpha(t), self.base.sigma(t)
        one_minus = (1.0 - self._a0) * (1.0 - self._scale) + self._scale * sb * sb / (1.0 + ab)
        a = self.alpha(t)
        return torch.sqrt((one_minus * (1.0 + a)).clamp_min(0.0))

    def d_alpha(self, t: TimeLike) -> Tensor:
        return self.base.d_alpha(t) * self._scale

    def d_sigma(self, t: TimeLike) -> Tensor:
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def t_from_logsnr(self, lam: TimeLike) -> Tensor:
        lam = _as_tensor(lam)
        a = torch.sqrt(torch.sigmoid(2.0 * lam))             # alpha on this path
        one_minus_a = torch.sigmoid(-2.0 * lam) / (1.0 + a)  # 1 - a without cancellation
        a0, a1 = self._a0, self._a1
        ab = a / self._scale + a1                            # alpha on the base path
        one_minus_ab = (1.0 - a0) + (a0 - a1) * ((a0 - 1.0) + one_minus_a) / a0
        base_lam = torch.log(ab) - 0.5 * torch.log(one_minus_ab * (1.0 + ab))
        return torch.where(lam == -math.inf, torch.ones_like(lam), self.base.t_from_logsnr(base_lam))

    def config(self) -> dict:
        return {"name": "ZeroTerminalSNR", "base": self.base.config()}


class PolynomialVP(Path):
    """EDM's "polynomial_2" noise schedule as a continuous VP path (Hoogeboom et al. 2022, App. B):
    alpha^2(t) = (1 - 2 s) (1 - t^power)^2 + s, sigma^2 = 1 - alpha^2, precision s (1e-5).

    EDM additionally clips the discrete alpha ratios at 0.001 for 1000 steps; in continuous time that
    clipping does not apply and is left out. sigma(0) = sqrt(s) and alpha(1) = sqrt(s) are both small
    but nonzero, so every t in [0, 1] has finite log-SNR."""

    variance_preserving = True

    def __init__(self, power: float = 2.0, precision: float = 1e-5) -> None:
        if not (power > 0 and 0 < precision < 0.5):
            raise ValueError(f"need power > 0 and 0 < precision < 0.5, got {power}, {precision}")
        self.power, self.precision = float(power), float(precision)

    def _alpha2(self, t: Tensor) -> Tensor:
        s = self.precision
        return (1 - 2 * s) * (1 - t ** self.power) ** 2 + s

    def _sigma2(self, t: Tensor) -> Tensor:
        # 1 - alpha^2 written without the cancellation of 1 - (1 - small): exact to rounding near t = 0
        s, tp = self.precision, t ** self.power
        return (1 - 2 * s) * tp * (2 - tp) + s

    def _d_alpha2(self, t: Tensor) -> Tensor:
        s, p = self.precision, self.power
        return (1 - 2 * s) * 2 * (1 - t ** p) * (-p * t ** (p - 1))

    def alpha(self, t: TimeLike) -> Tensor:
        return self._alpha2(_as_tensor(t)).sqrt()

    def sigma(self, t: TimeLike) -> Tensor:
        return self._sigma2(_as_tensor(t)).clamp_min(0.0).sqrt()

    def d_alpha(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        return 0.5 * self._d_alpha2(t) / self.alpha(t)

    def d_sigma(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        return -0.5 * self._d_alpha2(t) / self.sigma(t)

    def logsnr(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        return 0.5 * (torch.log(self._alpha2(t)) - torch.log(self._sigma2(t)))

    def t_from_logsnr(self, lam: TimeLike) -> Tensor:
        lam = _as_tensor(lam)
        s = self.precision
        # u = 1 - t^power with u^2 = (alpha^2 - s) / (1 - 2 s); t^power = (1 - u^2) / (1 + u), with
        # 1 - u^2 = (sigma^2 - s) / (1 - 2 s) from sigma^2 = sigmoid(-2 lambda): no cancellation near t = 0
        one_minus_u2 = ((torch.sigmoid(-2.0 * lam) - s) / (1 - 2 * s)).clamp(0.0, 1.0)
        u = (1 - one_minus_u2).sqrt()
        return (one_minus_u2 / (1 + u)).clamp(0.0, 1.0) ** (1.0 / self.power)

    def config(self) -> dict:
        return {"name": "PolynomialVP", "power": self.power, "precision": self.precision}


class MeanReverting(Path):
    """A mean-reverting (Ornstein-Uhlenbeck) path toward a conditioning signal mu:

        x_t = alpha(t) x0 + (1 - alpha(t)) mu + sigma(t) eps,

    the marginals of dx = f(t) (x - mu) dt + g(t) dW started at x0, with f = alpha'/alpha. mu is the
    prior mean (Grad-TTS: the aligned text-encoder output; SGMSE+: the noisy spectrogram).

    The shifted state x~ = x - (1 - alpha(t)) mu = alpha x0 + sigma eps is an ordinary Gaussian path
    with the same alpha and sigma, and x~_0 = x0. So ``alpha``, ``sigma``, their derivatives,
    ``logsnr``, ``t_from_logsnr`` and ``sigma_ve`` are the base path's, ``sde()`` returns the base's
    (f, g^2) (here the drift acts on x - mu), and every solver and guidance wrapper runs unchanged on
    x~ (``polydiff.core.mean_reverting`` does the shift).

    Contract: mu travels as the conditioning keyword ``mu`` (same shape as x, or broadcastable):
    a denoiser on this path is D(x, t, mu=mu, **cond) -> E[x0 | x_t = x] in the original
    coordinates; ``sample``, ``Denoiser`` and ``DiffusionLoss`` read mu from the conditioning.

    Prior: ``sample`` starts at x_1 = mu + sigma(1) eps, i.e. N(mu, sigma(1)^2 I). The exact marginal
    has the extra term alpha(1) (x0 - mu), which the prior drops: exact when alpha(1) = 0, an error
    of 0.0066 |x0 - mu| on Grad-TTS's path and e^-1.5 = 0.22 |x0 - mu| on OUVE (SGMSE+ makes the same
    approximation). Grad-TTS's temperature tau is a noise scale: pass ``noise / tau``.

    base: any Gaussian path (not itself mean-reverting). ``MeanRevertingVP`` (Grad-TTS) and ``OUVE``
    (SGMSE+) are the two named instances. Wrap the other way round to shift or rescale a schedule:
    ``MeanReverting(Shifted(base, s))``.
    """

    def __init__(self, base: Path) -> None:
        if not isinstance(base, Path):
            raise ValueError(f"MeanReverting needs a Gaussian path as base, got {type(base).__name__}")
        if isinstance(base, MeanReverting):
            raise ValueError(f"{base!r} is already mean-reverting")
        self.base = base
        self.variance_preserving = base.variance_preserving

    def alpha(self, t: TimeLike) -> Tensor:
        return self.base.alpha(t)

    def sigma(self, t: TimeLike) -> Tensor:
        return self.base.sigma(t)

    def d_alpha(self, t: TimeLike) -> Tensor:
        return self.base.d_alpha(t)

    def d_sigma(self, t: TimeLike) -> Tensor:
        return self.base.d_sigma(t)

    def logsnr(self, t: TimeLike) -> Tensor:
        return self.base.logsnr(t)

    def d_logsnr(self, t: TimeLike) -> Tensor:
        return self.base.d_logsnr(t)

    def t_from_logsnr(self, lam: TimeLike) -> Tensor:
        return self.base.t_from_logsnr(lam)

    def sde(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        """(f, g^2) of the forward SDE dx = f(t) (x - mu) dt + g(t) dW (the base's coefficients)."""
        return self.base.sde(t)

    def mean_weight(self, t: TimeLike) -> Tensor:
        """1 - alpha(t): the weight of mu in the mean of x_t."""
        return 1.0 - self.alpha(t)

    def config(self) -> dict:
        return {"name": "MeanReverting", "base": self.base.config()}

    def __repr__(self) -> str:
        cfg = self.config()
        cfg.pop("name")
        args = {k: (self.base if k == "base" else v) for k, v in cfg.items()}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in args.items())})"


class MeanRevertingVP(MeanReverting):
    """Grad-TTS's path (Popov et al., "Grad-TTS: A Diffusion Probabilistic Model for Text-to-Speech",
    ICML 2021, Eq. 1 and 3-4): dX = 1/2 (mu - X) beta(t) dt + sqrt(beta(t)) dW, beta linear from
    beta_min = 0.05 to beta_max = 20 over t in [0, 1], prior N(mu, I).

    Closed form: alpha = exp(-1/2 int_0^t beta), sigma^2 = 1 - alpha^2, i.e. the base is
    ``VP("linear", beta_min, beta_max)``; alpha(1) = 0.0066 with the defaults.
    """

    def __init__(self, beta_min: float = 0.05, beta_max: float = 20.0) -> None:
        super().__init__(VP("linear", beta_min, beta_max))
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def sde(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        """(f, g^2) = (-beta(t) / 2, beta(t)), finite at t = 0."""
        beta = self.beta_min + _as_tensor(t) * (self.beta_max - self.beta_min)
        return -0.5 * beta, beta

    def config(self) -> dict:
        return {"name": "MeanRevertingVP", "beta_min": self.beta_min, "beta_max": self.beta_max}


class _OUVEMarginals(Path):
    """The Gaussian part of ``OUVE`` (the OU-VE process toward 0); see ``OUVE`` for the formulas."""

    def __init__(self, gamma: float, sigma_min: float, sigma_max: float) -> None:
        self.gamma, self.sigma_min, self.sigma_max = gamma, sigma_min, sigma_max
        self._L = math.log(sigma_max / sigma_min)
        self._c = sigma_min * sigma_min * self._L / (gamma + self._L)   # sigma^2 = c e^{-2 gamma t} expm1(k t)
        self._k = 2.0 * (gamma + self._L)

    def alpha(self, t: TimeLike) -> Tensor:
        return torch.exp(-self.gamma * _as_tensor(t))

    def sigma(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        return math.sqrt(self._c) * torch.exp(-self.gamma * t) * torch.sqrt(torch.expm1(self._k * t).clamp_min(0.0))

    def d_alpha(self, t: TimeLike) -> Tensor:
        return -self.gamma * self.alpha(t)

    def d_sigma(self, t: TimeLike) -> Tensor:
        t = _as_tensor(t)
        e = torch.expm1(self._k * t)
        return self.sigma(t) * (-self.gamma + 0.5 * self._k * (e + 1.0) / e)

    def logsnr(self, t: TimeLike) -> Tensor:
        return -0.5 * math.log(self._c) - 0.5 * torch.log(torch.expm1(self._k * _as_tensor(t)))

    def d_logsnr(self, t: TimeLike) -> Tensor:
        # -(k / 2) e^{kt} / expm1(kt) = -(k / 2) / (1 - e^{-kt})
        return -0.5 * self._k / (-torch.expm1(-self._k * _as_tensor(t)))

    def t_from_logsnr(self, lam: TimeLike) -> Tensor:
        lam = _as_tensor(lam)
        t = torch.nn.functional.softplus(-2.0 * lam - math.log(self._c)) / self._k
        return t.clamp(0.0, 1.0)

    def sde(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        t = _as_tensor(t)
        g = self.sigma_min * torch.exp(self._L * t)
        return torch.full_like(t, -self.gamma), 2.0 * self._L * g * g


class OUVE(MeanReverting):
    """SGMSE+'s Ornstein-Uhlenbeck variance-exploding path (Richter, Welker, Lemercier, Lay, Gerkmann,
    "Speech Enhancement and Dereverberation with Diffusion-Based Generative Models", IEEE/ACM TASLP
    2023, Eq. 6-9): dx = gamma (y - x) dt + sigma_min (sigma_max / sigma_min)^t sqrt(2 log(sigma_max /
    sigma_min)) dW, with mu = y the noisy spectrogram; defaults gamma = 1.5, sigma_min = 0.05,
    sigma_max = 0.5.

    Closed forms (L = log(sigma_max / sigma_min)): alpha = e^{-gamma t};
    sigma^2 = sigma_min^2 (e^{2 L t} - e^{-2 gamma t}) L / (gamma + L), written as
    c e^{-2 gamma t} expm1(2 (gamma + L) t) for accuracy near t = 0; lambda and its inverse follow.
    alpha(1) = e^{-gamma} is not small: see the prior note in ``MeanReverting``. SGMSE+ trains on
    t in [0.03, 1] (``UniformTime(t_min=0.03)``).
    """

    def __init__(self, gamma: float = 1.5, sigma_min: float = 0.05, sigma_max: float = 0.5) -> None:
        if not (gamma > 0 and 0 < sigma_min < sigma_max):
            raise ValueError(f"need gamma > 0 and 0 < sigma_min < sigma_max, got {gamma}, {sigma_min}, {sigma_max}")
        super().__init__(_OUVEMarginals(float(gamma), float(sigma_min), float(sigma_max)))
        self.gamma, self.sigma_min, self.sigma_max = float(gamma), float(sigma_min), float(sigma_max)

    def config(self) -> dict:
        return {"name": "OUVE", "gamma": self.gamma, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


_PATHS = {"vp": lambda: VP("linear"), "vp_linear": lambda: VP("linear"), "vp_cosine": lambda: VP("cosine"),
          "subvp": SubVP, "ve": VE, "edm": EDM, "flow": Flow,
          "edm_polynomial": PolynomialVP, "grad_tts": MeanRevertingVP, "ouve": OUVE}


def require_gaussian(path: Path, what: str) -> Path:
    """Refuse a mean-reverting path where ``what`` does not handle its prior mean yet."""
    if isinstance(path, MeanReverting):
        raise ValueError(f"{what} does not support mean-reverting paths ({type(path).__name__}) yet; "
                         f"use `sample(..., cond={{'mu': mu}})`, or run it on the shifted view "
                         f"polydiff.core.mean_reverting.GaussianView(D, path) with path.base")
    return path


def get_path(name: Union[str, Path]) -> Path:
    """A path by short name ('vp', 'vp_cosine', 'subvp', 've', 'edm', 'flow', 'edm_polynomial' (the 3-D
    molecule EDM's schedule, not Karras's EDM), and the mean-reverting
    'grad_tts' and 'ouve'), or the path itself."""
    if isinstance(name, Path):
        return name
    try:
        return _PATHS[name]()
    except KeyError:
        raise ValueError(f"unknown path {name!r}; valid: {sorted(_PATHS)}") from None


#: the path classes a saved config may name (``path_from_config`` builds nothing else)
PATH_CLASSES = {"VP": VP, "SubVP": SubVP, "VE": VE, "EDM": EDM, "Flow": Flow, "Shifted": Shifted,
                "ZeroTerminalSNR": ZeroTerminalSNR, "PolynomialVP": PolynomialVP, "MeanReverting": MeanReverting,
                "MeanRevertingVP": MeanRevertingVP, "OUVE": OUVE}


def path_from_config(cfg: dict) -> Path:
    """Rebuild a path from ``path.config()`` (nested bases included). Only classes in ``PATH_CLASSES``
    can be named and only plain numbers/strings are accepted, so a stored config never runs code."""
    if not isinstance(cfg, dict) or not isinstance(cfg.get("name"), str):
        raise ValueError(f"a path config is a dict with a string 'name', got {cfg!r}")
    args = dict(cfg)
    name = args.pop("name")
    if name not in PATH_CLASSES:
        raise ValueError(f"unknown path {name!r} in config; valid: {sorted(PATH_CLASSES)}")
    if "base" in args:
        args["base"] = path_from_config(args["base"])
    for k, v in args.items():
        if k != "base" and not (isinstance(v, (int, float, str)) and not isinstance(v, bool)):
            raise ValueError(f"path config {name!r}: argument {k!r} must be a number or string, got {v!r}")
    try:
        return PATH_CLASSES[name](**args)
    except TypeError as e:
        raise ValueError(f"bad config for path {name!r}: {e}") from None


__all__ = ["Path", "VP", "SubVP", "VE", "EDM", "Flow", "Shifted", "ZeroTerminalSNR", "PolynomialVP", "MeanReverting",
           "MeanRevertingVP", "OUVE", "get_path", "LOGSNR_CLIP", "PATH_CLASSES", "path_from_config"]
