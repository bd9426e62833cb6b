"""Discrete-state forward processes: masked (absorbing), uniform, marginal-prior and GIDD's hybrid.

Every process noises each position of a token sequence independently with the interpolating marginal

    q(x_t | x0) = alpha(t) * onehot(x0) + (1 - alpha(t)) * pi_t,          t in [0, 1], t = 0 data,

over ``num_states`` states: the ``vocab_size`` V data symbols, plus a mask state with id
``mask_id == V`` for the masked and hybrid processes (V + 1 states). ``pi_t`` (``noise_dist_at(t)``)
is the noise distribution: a point mass on the mask (Masked; MDLM, Sahoo et al. 2024; MD4, Shi et al.
2024), uniform over the data symbols (Uniform; D3PM, Austin et al. 2021), the data's marginal class
frequencies (Marginal; DiGress, Vignac et al. 2023), or GIDD's time-dependent mix of mask and uniform
noise (Hybrid; von Rütte et al. 2025).

The forward process is Markov. Writing bp(t) = (1 - alpha(t)) pi_t (``beta_pi``), the transition from
s < t is q(x_t | x_s) = (alpha_t / alpha_s) onehot(x_s) + bp(t) - (alpha_t / alpha_s) bp(s), which
composes correctly (Chapman-Kolmogorov) and is non-negative for every process here. Everything a
sampler or a loss needs follows from alpha, bp and their time derivatives:

  * ``posterior(x_t, x0_probs, s, t)``: q(x_s | x_t) = sum_x0 q(x_s | x_t, x0) p(x0 | x_t), per position,
    for a predicted distribution p(x0 | x_t) (exactly D3PM's parameterisation). It is the one place
    that turns a denoiser's x0 prediction into reverse-step probabilities.
  * ``ratios`` / ``reverse_rates``: the continuous-time reverse jump rates of one position,
    R-hat(x -> y) = rho_t(x) * sum_x0 p(x0 | x_t) q_t(y | x0) / q_t(x | x0) (Campbell et al. 2022,
    Prop. 1; Lou et al. 2024), where rho_t(y) = bp'(t) - (alpha'/alpha) bp(t) is the forward rate of
    jumping into state y (``jump_rates``).

Schedules give alpha(t) for the masked, uniform and marginal processes ("linear", "cosine",
"loglinear"; see ``Schedule``); the hybrid process uses its schedule as a time warp (see ``Hybrid``).
Schedule quantities are float64; posteriors, ratios and rates follow the dtype of the x0
probabilities they are given (float64 in the samplers, the network's dtype in the losses).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

Tensor = torch.Tensor
TimeLike = Union[float, Tensor]

SCHEDULES = ("linear", "cosine", "loglinear")


def _t64(t: TimeLike, device: Optional[torch.device] = None) -> Tensor:
    t = torch.as_tensor(t, dtype=torch.float64, device=device)
    return t.to(torch.float64)


# --------------------------------------------------------------------------- schedules
class Schedule:
    """alpha(t), the probability that a token is still clean at time t (alpha(0) = 1).

    "linear":    alpha = 1 - t (MD4's linear schedule, Shi et al., "Simplified and Generalized Masked
                 Diffusion for Discrete Data", NeurIPS 2024, Table 1).
    "cosine":    alpha = 1 - cos(pi/2 (1 - t)) = 1 - sin(pi t / 2) (MD4's cosine schedule, the masking
                 rate of MaskGIT).
    "loglinear": alpha = 1 - (1 - eps) t, i.e. total noise sigma(t) = -log(1 - (1 - eps) t) (SEDD, Lou
                 et al. 2024; MDLM, Sahoo et al., "Simple and Effective Masked Diffusion Language
                 Models", NeurIPS 2024; eps = 1e-3 there). alpha(1) = eps > 0: the process stops short of
                 pure noise. Samplers still start from the noise distribution, as MDLM does (exact for
                 masked processes with a time-agnostic denoiser); the losses refuse a masked or hybrid
                 process with alpha(1) > 0, whose all-mask prior cannot explain the clean tokens left at
                 t = 1 (no finite ELBO exists). eps = 0 makes it the linear schedule.
    """

    def __init__(self, name: str = "linear", eps: float = 1e-3) -> None:
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; valid: {list(SCHEDULES)}")
        eps = float(eps)
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"eps must lie in [0, 1), got {eps}")
        self.name, self.eps = name, eps

    def alpha(self, t: TimeLike) -> Tensor:
        t = _t64(t)
        if self.name == "linear":
            return 1.0 - t
        if self.name == "cosine":
            return 1.0 - torch.sin(0.5 * math.pi * t)
        return 1.0 - (1.0 - self.eps) * t

    def d_alpha(self, t: TimeLike) -> Tensor:
        t = _t64(t)
        if self.name == "linear":
            return torch.full_like(t, -1.0)
        if self.name == "cosine":
            return -0.5 * math.pi * torch.cos(0.5 * math.pi * t)
        return torch.full_like(t, -(1.0 - self.eps))

    def t_from_alpha(self, a: TimeLike) -> Tensor:
        """The inverse of alpha on [alpha(1), 1] (used by the first-hitting sampler)."""
        a = _t64(a)
        if self.name == "linear":
            return (1.0 - a).clamp(0.0, 1.0)
        if self.name == "cosine":
            return (2.0 / math.pi) * torch.asin((1.0 - a).clamp(0.0, 1.0))
        return ((1.0 - a) / (1.0 - self.eps)).clamp(0.0, 1.0)

    def config(self) -> Dict[str, Any]:
        cfg: Dict[str, Any] = {"name": self.name}
        if self.name == "loglinear":
            cfg["eps"] = self.eps
        return cfg

    def __repr__(self) -> str:
        return f"Schedule({self.name!r}" + (f", eps={self.eps})" if self.name == "loglinear" else ")")


def get_schedule(schedule: Union[str, Schedule, Dict[str, Any]]) -> Schedule:
    """A schedule by name ("linear", "cosine", "loglinear"), config dict, or the schedule itself."""
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, dict):
        cfg = dict(schedule)
        return Schedule(cfg.pop("name", "linear"), **cfg)
    if isinstance(schedule, str):
        return Schedule(schedule)
    raise ValueError(f"schedule must be a name in {list(SCHEDULES)} or a Schedule, got {schedule!r}")


# --------------------------------------------------------------------------- categorical sampling
def categorical(probs: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Draw one index per row of ``probs`` (..., K) by inversion in float64.

    Zheng et al. ("Masked Diffusion Models are Secretly Time-Agnostic Masked Models and Exploit
    Inaccurate Categorical Sampling", ICLR 2025) show that Gumbel-max in float32 truncates the Gumbel
    noise and lowers the effective temperature; inverting the float64 CDF with u in (0, 1] never
    returns a zero-probability index. Rows need not be normalised.
    """
    p = probs.to(torch.float64)
    cdf = p.cumsum(-1)
    u = 1.0 - torch.rand(p.shape[:-1], generator=generator, device=p.device, dtype=torch.float64)
    idx = (cdf < (u * cdf[..., -1])[..., None]).sum(-1)
    return idx.clamp_max(p.shape[-1] - 1)


# --------------------------------------------------------------------------- the base class
class Process:
    """Base of the discrete processes (see the module docstring for the maths).

    Attributes: ``vocab_size`` V (data symbols 0..V-1), ``num_states`` S (V, or V + 1 with a mask),
    ``mask_id`` (None, or V). Subclasses define ``alpha``, ``d_alpha``, ``beta_pi`` and ``d_beta_pi``.
    Times are floats or tensors; per-sequence times have shape (B,).
    """

    name = "process"

    def __init__(self, vocab_size: int, schedule: Union[str, Schedule, Dict[str, Any]] = "linear",
                 masked: bool = False, mask_id: Optional[int] = None) -> None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
        self.vocab_size = vocab_size
        self.schedule = get_schedule(schedule)
        if masked:
            if mask_id is not None and mask_id != vocab_size:
                raise ValueError(f"mask_id must be vocab_size = {vocab_size}, outside the data vocabulary "
                                 f"0..{vocab_size - 1}; got mask_id={mask_id!r} (a mask id inside the "
                                 "vocabulary would make a data token indistinguishable from the mask)")
            self.mask_id: Optional[int] = vocab_size
            self.num_states = vocab_size + 1
        else:
            if mask_id is not None:
                raise ValueError(f"{type(self).__name__} has no mask state; got mask_id={mask_id!r}")
            self.mask_id = None
            self.num_states = vocab_size

    # ---------------------------------------------------------------- schedule quantities
    def alpha(self, t: TimeLike) -> Tensor:
        """Probability that a position still holds its data token at time t (float64, shaped like t)."""
        return self.schedule.alpha(t)

    def d_alpha(self, t: TimeLike) -> Tensor:
        """d alpha / dt (float64, shaped like t)."""
        return self.schedule.d_alpha(t)

    def noise_dist_at(self, t: TimeLike) -> Tensor:
        """pi_t over the S states, shape t.shape + (S,)."""
        raise NotImplementedError

    @property
    def noise_dist(self) -> Tensor:
        """The noise distribution pi over the S states (time-independent except for Hybrid, where this
        is pi at t = 1, the prior; use ``noise_dist_at``)."""
        return self.noise_dist_at(1.0)

    def beta_pi(self, t: TimeLike) -> Tensor:
        """(1 - alpha(t)) pi_t, shape t.shape + (S,)."""
        t = _t64(t)
        return (1.0 - self.alpha(t))[..., None] * self.noise_dist_at(t)

    def d_beta_pi(self, t: TimeLike) -> Tensor:
        """d/dt of ``beta_pi``, shape t.shape + (S,)."""
        t = _t64(t)
        return -self.d_alpha(t)[..., None] * self.noise_dist_at(t)

    def jump_rates(self, t: TimeLike) -> Tensor:
        """rho_t(y) = bp'(t) - (alpha'/alpha) bp(t): the forward rate of jumping into state y from any
        other state (shape t.shape + (S,)); infinite where alpha(t) = 0."""
        t = _t64(t)
        a = self.alpha(t)[..., None]
        return self.d_beta_pi(t) - (self.d_alpha(t)[..., None] / a) * self.beta_pi(t)

    @property
    def prior(self) -> Tensor:
        """The distribution sampled by ``prior_sample`` (the noise distribution at t = 1)."""
        return self.noise_dist_at(1.0)

    # ---------------------------------------------------------------- validation helpers
    def check_tokens(self, x: Tensor, what: str = "x_t", data_only: bool = False) -> Tensor:
        """Raise a ValueError unless x is an integer tensor (B, L) of ids in range; returns x."""
        if not isinstance(x, Tensor):
            raise ValueError(f"{what} must be a tensor of token ids, got {type(x).__name__}")
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise ValueError(f"{what} must hold integer token ids, got dtype {x.dtype}")
        if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"{what} must have shape (B, L) with B, L >= 1, got {tuple(x.shape)}")
        high = self.vocab_size if data_only else self.num_states
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= high):
            rng = f"[0, {high})"
            extra = (f" (the mask id {self.mask_id} is not a data token)"
                     if data_only and self.mask_id is not None else "")
            raise ValueError(f"{what} has token ids out of range {rng}: min {int(x.min())}, "
                             f"max {int(x.max())}{extra}")
        return x

    def _batch_time(self, t: TimeLike, batch: int, device: torch.device, what: str = "t") -> Tensor:
        t = _t64(t, device)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"{what} must be a scalar or of shape ({batch},), got {tuple(t.shape)}")
        if torch.isnan(t).any() or (t < 0).any() or (t > 1).any():
            raise ValueError(f"{what} must lie in [0, 1]")
        return t

    def check_per_symbol(self, values: Tensor, x_t: Tensor, what: str = "x0_probs", hint: str = "") -> Tensor:
        """Check that ``values`` is a floating tensor of shape x_t.shape + (vocab_size,): one entry per data
        symbol at each position (logits or probabilities over x0). The one check of that contract."""
        want = tuple(x_t.shape) + (self.vocab_size,)
        if not isinstance(values, Tensor) or tuple(values.shape) != want:
            shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"{what} must have shape {want} (B, L, vocab_size) over the data symbols, "
                             f"got {shape}{hint}")
        if not values.is_floating_point():
            raise ValueError(f"{what} must be floating point, got {values.dtype}")
        return values

    # ---------------------------------------------------------------- forward marginals
    def marginal(self, x0: Tensor, t: TimeLike) -> Tensor:
        """q(x_t | x0) per position: (B, L, S) float64, for x0 (B, L) of data ids and t scalar or (B,)."""
        self.check_tokens(x0, "x0", data_only=True)
        t = self._batch_time(t, x0.shape[0], x0.device)
        return self._marginal(x0, t)

    def _marginal(self, x0: Tensor, t: Tensor) -> Tensor:
        a = self.alpha(t)[:, None, None]
        bp = self.beta_pi(t)[:, None, :]
        oh = torch.nn.functional.one_hot(x0, self.num_states).to(torch.float64)
        return a * oh + bp.expand(x0.shape[0], x0.shape[1], self.num_states)

    def sample_marginal(self, x0: Tensor, t: TimeLike, generator: Optional[torch.Generator] = None) -> Tensor:
        """Draw x_t ~ q(x_t | x0) (B, L) for x0 (B, L) and t scalar or (B,)."""
        self.check_tokens(x0, "x0", data_only=True)
        t = self._batch_time(t, x0.shape[0], x0.device)
        return categorical(self._marginal(x0, t), generator)

    def likelihood(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """q(x_t | x0 = v) for every data symbol v: (B, L, V) float64 (the emission of x_t)."""
        self.check_tokens(x_t)
        t = self._batch_time(t, x_t.shape[0], x_t.device)
        return self._likelihood(x_t, t)

    def _likelihood(self, x_t: Tensor, t: Tensor) -> Tensor:
        a = self.alpha(t)[:, None, None]
        bp = self.beta_pi(t)                                     # (B, S)
        bp_k = bp.gather(1, x_t)[..., None]                      # (B, L, 1)
        same = (x_t[..., None] == torch.arange(self.vocab_size, device=x_t.device)).to(torch.float64)
        return a * same + bp_k

    def prior_sample(self, shape: Sequence[int], generator: Optional[torch.Generator] = None,
                     device: Optional[Union[str, torch.device]] = None) -> Tensor:
        """x_1 ~ prior (the noise distribution at t = 1), int64 tokens of the given shape (B, L)."""
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"shape must be (B, L) with B, L >= 1, got {shape}")
        pi = self.prior.to(device=device)
        if (pi == 1).any():     # a point mass (the mask): no randomness to draw
            return torch.full(shape, int(pi.argmax()), dtype=torch.long, device=device)
        return categorical(pi.expand(*shape, self.num_states), generator)

    # ---------------------------------------------------------------- reverse quantities
    def _weights(self, x_t: Tensor, x0_probs: Tensor, t: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """w(x0) = p(x0 | x_t) / q(x_t | x0) (B, L, V), W = sum w (B, L, 1), alpha_t (B, 1, 1), bp_t (B, 1, S)."""
        dt = x0_probs.dtype
        a = self.alpha(t).to(dt)[:, None, None]
        bp = self.beta_pi(t).to(dt)[:, None, :]
        bp_k = bp.expand(x_t.shape[0], x_t.shape[1], self.num_states).gather(-1, x_t[..., None])
        same = (x_t[..., None] == torch.arange(self.vocab_size, device=x_t.device)).to(dt)
        denom = a * same + bp_k                                   # q(x_t | x0 = v)
        pos = denom > 0
        w = torch.where(pos, x0_probs / torch.where(pos, denom, torch.ones_like(denom)), torch.zeros_like(denom))
        return w, w.sum(-1, keepdim=True), a, bp

    def posterior(self, x_t: Tensor, x0_probs: Tensor, s: TimeLike, t: TimeLike) -> Tensor:
        """sum_x0 q(x_s | x_t, x0) p(x0 | x_t) per position: (B, L, S), for s < t.

        x0_probs (B, L, V): the predicted p(x0 | x_t) (see ``x0_probs``); a one-hot x0 gives the exact
        posterior q(x_s | x_t, x0). Computed in x0_probs' dtype (differentiable).
        """
        self.check_tokens(x_t)
        self.check_per_symbol(x0_probs, x_t)
        s = self._batch_time(s, x_t.shape[0], x_t.device, "s")
        t = self._batch_time(t, x_t.shape[0], x_t.device, "t")
        if (s >= t).any():
            raise ValueError("posterior needs s < t (a reverse step goes from t towards the data at 0)")
        return self._posterior(x_t, x0_probs, s, t)

    def _posterior(self, x_t: Tensor, x0_probs: Tensor, s: Tensor, t: Tensor) -> Tensor:
        dt = x0_probs.dtype
        S, V = self.num_states, self.vocab_size
        w, W, a_t, bp_t = self._weights(x_t, x0_probs, t)
        a_s = self.alpha(s).to(dt)[:, None, None]
        bp_s = self.beta_pi(s).to(dt)[:, None, :]
        r = a_t / a_s                                             # alpha_t / alpha_s
        b = (bp_t - r * bp_s).clamp_min(0.0)                      # jump part of q(x_t | x_s)
        k = x_t[..., None]
        b_k = b.expand(x_t.shape[0], x_t.shape[1], S).gather(-1, k)
        oh_k = torch.nn.functional.one_hot(x_t, S).to(dt)
        # q(x_s = j | x0) summed against w: alpha_s w_j + bp_s(j) W
        inner = bp_s * W
        if S > V:
            inner = inner + torch.nn.functional.pad(a_s * w, (0, S - V))
        else:
            inner = inner + a_s * w
        post = (r * oh_k + b_k) * inner
        z = post.sum(-1, keepdim=True)
        ok = z > 0
        return torch.where(ok, post / torch.where(ok, z, torch.ones_like(z)), oh_k)

    def ratios(self, x_t: Tensor, x0_probs: Tensor, t: TimeLike) -> Tensor:
        """The concrete-score ratios p_t(x with position l set to y) / p_t(x) implied by x0_probs:
        sum_x0 p(x0 | x_t) q_t(y | x0) / q_t(x_t,l | x0), shape (B, L, S) (1 at y = x_t,l)."""
        self.check_tokens(x_t)
        self.check_per_symbol(x0_probs, x_t)
        t = self._batch_time(t, x_t.shape[0], x_t.device)
        return self._ratios(x_t, x0_probs, t)

    def _ratios(self, x_t: Tensor, x0_probs: Tensor, t: Tensor) -> Tensor:
        S, V = self.num_states, self.vocab_size
        w, W, a, bp = self._weights(x_t, x0_probs, t)
        out = bp * W
        aw = a * w
        return out + (torch.nn.functional.pad(aw, (0, S - V)) if S > V else aw)

    def reverse_rates(self, x_t: Tensor, x0_probs: Tensor, t: TimeLike) -> Tensor:
        """Reverse-time jump rates R-hat(x_t,l -> y) per position (B, L, S), 0 at y = x_t,l
        (Campbell et al., "A Continuous Time Framework for Discrete Denoising Models", NeurIPS 2022).
        Needs alpha(t) > 0 (the forward rates are infinite at alpha = 0) except for Masked."""
        self.check_tokens(x_t)
        self.check_per_symbol(x0_probs, x_t)
        t = self._batch_time(t, x_t.shape[0], x_t.device)
        return self._reverse_rates(x_t, x0_probs, t)

    def _reverse_rates(self, x_t: Tensor, x0_probs: Tensor, t: Tensor) -> Tensor:
        rho = self.jump_rates(t).to(x0_probs.dtype)                           # (B, S)
        rho_k = rho.gather(1, x_t)[..., None]                                 # (B, L, 1)
        rates = rho_k * self._ratios(x_t, x0_probs, t)
        return rates.masked_fill(torch.nn.functional.one_hot(x_t, self.num_states).bool(), 0.0)

    def forward_rates(self, x_t: Tensor, t: TimeLike) -> Tensor:
        """Forward jump rates R_t(x_t,l -> y) = rho_t(y) per position (B, L, S), 0 at y = x_t,l."""
        self.check_tokens(x_t)
        t = self._batch_time(t, x_t.shape[0], x_t.device)
        return self._forward_rates(x_t, t)

    def _forward_rates(self, x_t: Tensor, t: Tensor) -> Tensor:
        rho = self.jump_rates(t)[:, None, :].expand(x_t.shape[0], x_t.shape[1], self.num_states)
        return rho.masked_fill(torch.nn.functional.one_hot(x_t, self.num_states).bool(), 0.0)

    # ---------------------------------------------------------------- serialisation
    def config(self) -> Dict[str, Any]:
        """A JSON-serialisable description; ``from_config`` rebuilds the process."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Process) and self.config() == other.config()

    def __hash__(self) -> int:
        return hash(repr(self))


# --------------------------------------------------------------------------- the processes
class Masked(Process):
    """Absorbing / masked diffusion: pi = point mass on the mask id V (MDLM, Sahoo et al. 2024; MD4,
    Shi et al. 2024; D3PM's absorbing process, Austin et al. 2021). A masked token stays masked as t
    grows; an unmasked token at time t is its data token."""

    name = "masked"

    def __init__(self, vocab_size: int, schedule: Union[str, Schedule, Dict[str, Any]] = "linear",
                 mask_id: Optional[int] = None) -> None:
        super().__init__(vocab_size, schedule, masked=True, mask_id=mask_id)

    def noise_dist_at(self, t: TimeLike) -> Tensor:
        t = _t64(t)
        pi = torch.zeros(self.num_states, dtype=torch.float64, device=t.device)
        pi[self.mask_id] = 1.0
        return pi.expand(*t.shape, self.num_states)

    def jump_rates(self, t: TimeLike) -> Tensor:
        t = _t64(t)
        pi = self.noise_dist_at(t)
        rate = (-self.d_alpha(t) / self.alpha(t))[..., None] * torch.ones_like(pi)
        return torch.where(pi > 0, rate * pi, torch.zeros_like(pi))

    def _posterior(self, x_t: Tensor, x0_probs: Tensor, s: Tensor, t: Tensor) -> Tensor:
        # closed form of the general posterior (fewer (B, L, S) temporaries for large vocabularies): a
        # masked position unmasks to y with probability (alpha_s - alpha_t)/(1 - alpha_t) p(x0 = y | x_t);
        # an unmasked one keeps its token
        dt = x0_probs.dtype
        a_t = self.alpha(t).to(dt)[:, None, None]
        a_s = self.alpha(s).to(dt)[:, None, None]
        masked = (x_t == self.mask_id)[..., None]
        unmask = (a_s - a_t) / (1.0 - a_t)
        p = x0_probs / x0_probs.sum(-1, keepdim=True)
        from_mask = torch.cat([unmask * p, (1.0 - unmask).expand(-1, x_t.shape[1], 1)], dim=-1)
        return torch.where(masked, from_mask, torch.nn.functional.one_hot(x_t, self.num_states).to(dt))

    def _reverse_rates(self, x_t: Tensor, x0_probs: Tensor, t: Tensor) -> Tensor:
        # from the mask: -alpha'/(1 - alpha) p(x0 = y | x_t); unmasked positions never jump
        a = self.alpha(t).to(x0_probs.dtype)
        k = (-self.d_alpha(t).to(x0_probs.dtype) / (1.0 - a))[:, None, None]
        masked = (x_t == self.mask_id)[..., None].to(x0_probs.dtype)
        rates = k * masked * x0_probs
        return torch.nn.functional.pad(rates, (0, 1))

    def config(self) -> Dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size, "schedule": self.schedule.config()}


class Marginal(Process):
    """Noise toward a fixed distribution over the data symbols: DiGress's marginal-prior transitions
    (Vignac et al., "DiGress: Discrete Denoising diffusion for graph generation", ICLR 2023), with pi
    the data's marginal class frequencies. ``probs`` (V,) is normalised here; zero entries are
    allowed (a symbol that is never noise)."""

    name = "marginal"

    def __init__(self, probs: Union[Tensor, Sequence[float]],
                 schedule: Union[str, Schedule, Dict[str, Any]] = "linear") -> None:
        p = torch.as_tensor(probs, dtype=torch.float64).detach().cpu()
        if p.dim() != 1 or p.numel() < 2:
            raise ValueError(f"probs must be a 1-D tensor over the V >= 2 data symbols, got shape {tuple(p.shape)}")
        if not torch.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
            raise ValueError("probs must be finite, non-negative, with a positive sum")
        super().__init__(int(p.numel()), schedule)
        tot = float(p.sum())
        self._pi = p if abs(tot - 1.0) <= 1e-12 else p / tot     # keep normalised input (exact round trips)

    @classmethod
    def from_data(cls, tokens: Tensor, vocab_size: int,
                  schedule: Union[str, Schedule, Dict[str, Any]] = "linear") -> "Marginal":
        """The marginal-prior process of a data set: pi = the class frequencies of ``tokens`` (any shape,
        ids in [0, vocab_size)), as DiGress does for node and edge types."""
        if not isinstance(tokens, Tensor) or tokens.dtype.is_floating_point or tokens.numel() == 0:
            raise ValueError("tokens must be a non-empty integer tensor of data ids")
        if int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size:
            raise ValueError(f"tokens has ids out of range [0, {vocab_size})")
        counts = torch.bincount(tokens.reshape(-1).long().cpu(), minlength=vocab_size).to(torch.float64)
        return cls(counts / counts.sum(), schedule)

    def noise_dist_at(self, t: TimeLike) -> Tensor:
        t = _t64(t)
        return self._pi.to(t.device).expand(*t.shape, self.num_states)

    def config(self) -> Dict[str, Any]:
        return {"name": self.name, "probs": self._pi.tolist(), "schedule": self.schedule.config()}


class Uniform(Marginal):
    """Uniform noise over the V data symbols (D3PM-uniform, Austin et al., "Structured Denoising
    Diffusion Models in Discrete State-Spaces", NeurIPS 2021)."""

    name = "uniform"

    def __init__(self, vocab_size: int, schedule: Union[str, Schedule, Dict[str, Any]] = "linear") -> None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
        super().__init__(torch.full((vocab_size,), 1.0 / vocab_size, dtype=torch.float64), schedule)

    def config(self) -> Dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size, "schedule": self.schedule.config()}


class Hybrid(Process):
    """GIDD's mask-plus-uniform process (von Rütte et al., "Generalized Interpolating Discrete
    Diffusion", ICML 2025, Sec. 4, the hybrid mixing schedule).

    In GIDD's own time tau in [0, 1], with c(tau) = B tau^(gamma/2) (1 - tau)^(gamma/2),
    C = 1 + c and B = 2^gamma p_uniform / (1 - p_uniform):

        alpha = (1 - tau) / C,    (1 - alpha) pi_tau = (tau * onehot(mask) + c * uniform_V) / C.

    So the noise is pure mask at tau = 1 (the prior is all-mask), and uniform noise peaks in the
    middle: at tau = 1/2 (gamma = 1) a token is uniform noise with probability p_uniform. The
    schedule warps time: tau = 1 - a(t) with a the schedule's alpha, so "linear" is GIDD exactly.
    ``noise_dist_at(t)`` depends on t; ``noise_dist`` is its value at t = 1 (the all-mask prior). The
    Markov transitions q(x_t | x_s) stay non-negative iff c(tau)/(1 - tau) is non-decreasing, which
    holds for 0 < gamma <= 2 (required here).
    """

    name = "hybrid"

    def __init__(self, vocab_size: int, p_uniform: float = 0.1, gamma: float = 1.0,
                 schedule: Union[str, Schedule, Dict[str, Any]] = "linear", mask_id: Optional[int] = None) -> None:
        super().__init__(vocab_size, schedule, masked=True, mask_id=mask_id)
        p_uniform, gamma = float(p_uniform), float(gamma)
        if not 0.0 <= p_uniform < 1.0:
            raise ValueError(f"p_uniform must lie in [0, 1), got {p_uniform}")
        if not 0.0 < gamma <= 2.0:
            raise ValueError(f"gamma must lie in (0, 2] (larger values make the forward transitions "
                             f"negative near t = 1), got {gamma}")
        self.p_uniform, self.gamma = p_uniform, gamma
        self.B = (2.0 ** gamma) * p_uniform / (1.0 - p_uniform)
        self._m = torch.zeros(self.num_states, dtype=torch.float64)
        self._m[self.mask_id] = 1.0
        self._u = torch.zeros(self.num_states, dtype=torch.float64)
        self._u[: vocab_size] = 1.0 / vocab_size

    def _tau(self, t: Tensor) -> Tuple[Tensor, Tensor]:
        return (1.0 - self.schedule.alpha(t)).clamp(0.0, 1.0), -self.schedule.d_alpha(t)

    def _c(self, tau: Tensor) -> Tensor:
        h = 0.5 * self.gamma
        return self.B * tau.pow(h) * (1.0 - tau).pow(h)

    def _dc(self, tau: Tensor) -> Tensor:
        """dc/dtau (infinite at tau in {0, 1} for gamma < 2 and B > 0)."""
        h = 0.5 * self.gamma
        if self.B == 0:
            return torch.zeros_like(tau)
        return self.B * h * tau.pow(h - 1.0) * (1.0 - tau).pow(h - 1.0) * (1.0 - 2.0 * tau)

    def alpha(self, t: TimeLike) -> Tensor:
        t = _t64(t)
        tau, _ = self._tau(t)
        return (1.0 - tau) / (1.0 + self._c(tau))

    def d_alpha(self, t: TimeLike) -> Tensor:
        t = _t64(t)
        tau, dtau = self._tau(t)
        c = self._c(tau)
        C = 1.0 + c
        h = 0.5 * self.gamma
        # (1 - tau) c'(tau), finite at tau = 1
        omc_dc = (self.B * h * tau.pow(h - 1.0) * (1.0 - tau).pow(h) * (1.0 - 2.0 * tau) if self.B
                  else torch.zeros_like(tau))
        return dtau * (-1.0 / C - omc_dc / (C * C))

    def beta_pi(self, t: TimeLike) -> Tensor:
        t = _t64(t)
        tau, _ = self._tau(t)
        c = self._c(tau)
        C = (1.0 + c)[..., None]
        m, u = self._m.to(t.device), self._u.to(t.device)
        return (tau[..., None] * m + c[..., None] * u) / C

    def d_beta_pi(self, t: TimeLike) -> Tensor:
        t = _t64(t)
        tau, dtau = self._tau(t)
        c, dc = self._c(tau), self._dc(tau)
        C = 1.0 + c
        m, u = self._m.to(t.device), self._u.to(t.device)
        # d/dtau (tau m + c u)/C = (m + c' u)/C - (tau m + c u) c'/C^2
        dm = 1.0 / C - tau * dc / (C * C)
        du = dc / C - c * dc / (C * C)           # = c' / C^2
        return dtau[..., None] * (dm[..., None] * m + du[..., None] * u)

    def noise_dist_at(self, t: TimeLike) -> Tensor:
        t = _t64(t)
        tau, _ = self._tau(t)
        c = self._c(tau)
        m, u = self._m.to(t.device), self._u.to(t.device)
        tot = tau + c
        pos = tot > 0
        # tau -> 0: pi -> uniform for gamma < 2, (m + B u)/(1 + B) for gamma = 2
        if self.gamma < 2.0 and self.B > 0:
            lim_m, lim_u = torch.zeros_like(tau), torch.ones_like(tau)
        else:
            lim_m, lim_u = torch.full_like(tau, 1.0 / (1.0 + self.B)), torch.full_like(tau, self.B / (1.0 + self.B))
        safe = torch.where(pos, tot, torch.ones_like(tot))
        wm = torch.where(pos, tau / safe, lim_m)
        wu = torch.where(pos, c / safe, lim_u)
        return wm[..., None] * m + wu[..., None] * u

    def config(self) -> Dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size, "p_uniform": self.p_uniform,
                "gamma": self.gamma, "schedule": self.schedule.config()}


PROCESSES = {"masked": Masked, "uniform": Uniform, "marginal": Marginal, "hybrid": Hybrid}


def from_config(cfg: Dict[str, Any]) -> Process:
    """Rebuild a process from ``process.config()`` (as saved in checkpoints)."""
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise ValueError(f"a process config must be a dict with a 'name', got {cfg!r}")
    cfg = dict(cfg)
    name = cfg.pop("name")
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; valid: {sorted(PROCESSES)}")
    try:
        return PROCESSES[name](**cfg)
    except TypeError as e:
        raise ValueError(f"bad config for process {name!r}: {e}") from None


__all__ = ["Process", "Masked", "Uniform", "Marginal", "Hybrid", "Schedule", "SCHEDULES", "PROCESSES",
           "get_schedule", "from_config", "categorical"]
