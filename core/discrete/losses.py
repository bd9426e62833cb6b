"""Training losses for discrete processes, each with the ELBO it bounds.

Calling convention (as ``core.losses.DiffusionLoss``): ``loss(net, x0, generator=None, **cond)``
returns the per-sequence loss (B,), with net(x_t, t, **cond) -> logits (B, L, V) over the data symbols
(t (B,) float64, as the samplers pass it) and x0 (B, L) int64 data tokens. Every loss also has

  ``nelbo(net, x0, generator, **cond)``: an unbiased one-sample estimate of the negative ELBO in nats
      per sequence, a true upper bound on -log p(x0) in expectation;
  ``loss_at`` / ``nelbo_at(net, x0, t, x_t, **cond)``: the same at given times t (B,) and states x_t;
  ``nelbo_exact(net, x0, nodes=...)``: the expectation itself, by enumerating every x_t (S^L states,
      small problems only) and Gauss-Legendre quadrature in t (or the exact sum over D3PM's steps).

The losses (Sec. refs in each docstring):

  ``ContinuousELBO``  the continuous-time ELBO. For Masked processes it is the MDLM/MD4 weighted
                      cross-entropy; for the others it is the general interpolating-process bound
                      (Campbell et al. 2022; Lou et al. 2024's denoising score entropy; GIDD's ELBO).
  ``D3PMLoss``        Austin et al.'s discrete-time hybrid loss L_vb + lambda * CE over T steps.
  ``CrossEntropyLoss`` plain cross-entropy on x0 at random noise levels; its ``nelbo`` is the
                      continuous-time ELBO of the same model.

The prior term KL(q(x_1 | x0) || prior) is included (it is 0 when alpha(1) = 0). A masked or hybrid
process with alpha(1) > 0 (e.g. the "loglinear" schedule with eps > 0) is refused: its all-mask prior
cannot produce the clean tokens that survive at t = 1, so its ELBO is -infinity.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch

from .processes import Masked, Process, categorical
from .samplers import x0_log_probs

Tensor = torch.Tensor
TIME_SAMPLERS = ("uniform", "stratified")
_HALF_ULP = 2.0 ** -54


class DiscreteLoss:
    """Base: time sampling, input checks, the prior term and exact evaluation by enumeration.

    time_sampler: "uniform" (t ~ U(0, 1) independently per sequence) or "stratified" (t_b = (b + u) / B
    with one shared u, MDLM's low-discrepancy sampler; each t_b is still uniform, so estimates stay
    unbiased per sequence while the batch mean has lower variance).
    """

    def __init__(self, process: Process, time_sampler: str = "uniform") -> None:
        if not isinstance(process, Process):
            raise ValueError(f"process must be a polydiff.core.discrete.Process, got {type(process).__name__}")
        if time_sampler not in TIME_SAMPLERS:
            raise ValueError(f"unknown time sampler {time_sampler!r}; valid: {list(TIME_SAMPLERS)}")
        a1 = float(process.alpha(1.0))
        if a1 > 0 and bool((process.prior[: process.vocab_size] == 0).any()):
            raise ValueError(f"{process!r} has alpha(1) = {a1:g} > 0 but its prior gives zero probability to data "
                             "symbols, so no finite ELBO exists; use schedule 'linear' or 'cosine' (or "
                             "'loglinear' with eps=0)")
        self.process, self.time_sampler = process, time_sampler

    # ---------------------------------------------------------------- helpers
    def _check_x0(self, x0: Tensor) -> Tensor:
        return self.process.check_tokens(x0, "x0", data_only=True)

    def _logits(self, net: Callable[..., Tensor], x_t: Tensor, t: Tensor, cond: Dict[str, Any]) -> Tensor:
        return self.process.check_per_symbol(net(x_t, t, **cond), x_t, "the network's logits",
                                             f" for tokens {tuple(x_t.shape)}")

    def _log_probs(self, logits: Tensor, x_t: Tensor) -> Tensor:
        """log p(x0 | x_t) per position (B, L, V) (``samplers.x0_log_probs``: carry-over for masked processes)."""
        return x0_log_probs(logits, x_t, self.process)

    def _check_inputs(self, x0: Tensor, t: Tensor, x_t: Tensor) -> Tensor:
        self._check_x0(x0)
        self.process.check_tokens(x_t, "x_t")
        if x_t.shape != x0.shape:
            raise ValueError(f"x_t shape {tuple(x_t.shape)} differs from x0 shape {tuple(x0.shape)}")
        return self.process._batch_time(t, x0.shape[0], x0.device)

    def sample_t(self, n: int, generator: Optional[torch.Generator] = None,
                 device: Optional[torch.device] = None) -> Tensor:
        """n training times in the open interval (0, 1), float64."""
        if self.time_sampler == "uniform":
            u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        else:
            u0 = torch.rand(1, generator=generator, device=device, dtype=torch.float64)
            u = (torch.arange(n, device=device, dtype=torch.float64) + u0) / n
        return (u + _HALF_ULP).clamp(_HALF_ULP, 1.0 - _HALF_ULP)

    def prior_kl(self, x0: Tensor) -> Tensor:
        """KL(q(x_1 | x0) || prior) summed over positions, (B,) float64 (0 when alpha(1) = 0)."""
        self._check_x0(x0)
        if float(self.process.alpha(1.0)) == 0.0:      # q(x_1 | x0) = pi_1 = the prior for every x0
            return torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
        q1 = self.process._marginal(x0, torch.ones(x0.shape[0], dtype=torch.float64, device=x0.device))
        pi = self.process.prior.to(x0.device)
        pos = q1 > 0
        ratio = torch.where(pos, q1 / torch.where(pi > 0, pi, torch.ones_like(pi)), torch.ones_like(q1))
        terms = torch.where(pos, q1 * torch.log(ratio), torch.zeros_like(q1))
        terms = torch.where(pos & (pi == 0), torch.full_like(q1, math.inf), terms)
        return terms.sum((1, 2))

    def _draw(self, x0: Tensor, generator: Optional[torch.Generator]) -> Tuple[Tensor, Tensor]:
        self._check_x0(x0)
        t = self.sample_t(x0.shape[0], generator, x0.device)
        return t, self.process._marginal(x0, t)

    # ---------------------------------------------------------------- public API
    def loss_at(self, net: Callable[..., Tensor], x0: Tensor, t: Tensor, x_t: Tensor, **cond: Any) -> Tensor:
        """Per-sequence training loss (B,) at times t (B,) and noised tokens x_t (B, L)."""
        return self.nelbo_at(net, x0, t, x_t, **cond)

    def nelbo_at(self, net: Callable[..., Tensor], x0: Tensor, t: Tensor, x_t: Tensor, **cond: Any) -> Tensor:
        """The negative-ELBO integrand (B,): E over t ~ sample_t and x_t ~ q(x_t | x0) gives -ELBO."""
        raise NotImplementedError

    def __call__(self, net: Callable[..., Tensor], x0: Tensor, generator: Optional[torch.Generator] = None,
                 **cond: Any) -> Tensor:
        """Per-sequence loss (B,) at a time and noised state drawn from ``generator``."""
        t, q = self._draw(x0, generator)
        return self.loss_at(net, x0, t, categorical(q, generator), **cond)

    def nelbo(self, net: Callable[..., Tensor], x0: Tensor, generator: Optional[torch.Generator] = None,
              **cond: Any) -> Tensor:
        """Unbiased one-sample estimate (B,) of -ELBO in nats per sequence (>= -log p(x0) on average)."""
        t, q = self._draw(x0, generator)
        return self.nelbo_at(net, x0, t, categorical(q, generator), **cond)

    def _nodes(self, nodes: int) -> Tuple[Tensor, Tensor]:
        """Quadrature times in (0, 1) and weights summing to 1: Gauss-Legendre in u with the septic
        smoothstep t = 35u^4 - 84u^5 + 70u^6 - 20u^7 (dt/du = 140 u^3 (1 - u)^3), which clusters nodes
        at both ends so that endpoint singularities such as GIDD's t^(-1/2) log^2 t (gamma = 1) are
        integrated to high order."""
        if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 2:
            raise ValueError(f"nodes must be an integer >= 2, got {nodes!r}")
        x, w = np.polynomial.legendre.leggauss(nodes)
        u = torch.as_tensor((x + 1.0) / 2.0, dtype=torch.float64)
        w = torch.as_tensor(w / 2.0, dtype=torch.float64)
        t = u ** 4 * (35.0 - 84.0 * u + 70.0 * u ** 2 - 20.0 * u ** 3)
        t = t.clamp(2.0 ** -53, 1.0 - 2.0 ** -53)
        return t, w * 140.0 * u ** 3 * (1.0 - u) ** 3

    @torch.no_grad()
    def nelbo_exact(self, net: Callable[..., Tensor], x0: Tensor, nodes: int = 64, max_rows: int = 65536,
                    **cond: Any) -> Tensor:
        """-ELBO (B,) float64 computed exactly in x_t (every state of S^L, weighted by q(x_t | x0)) and by
        quadrature in t (``nodes`` Gauss-Legendre nodes; D3PMLoss sums its T steps exactly instead).
        For small problems (S^L <= 2^16): it is how the tests check that each bound holds."""
        self._check_x0(x0)
        B, L = x0.shape
        S = self.process.num_states
        if S ** L > 2 ** 16:
            raise ValueError(f"nelbo_exact enumerates S^L = {S}^{L} states; at most 2^16 are supported")
        times, weights = self._nodes(nodes)
        states = torch.cartesian_prod(*[torch.arange(S, device=x0.device)] * L).reshape(-1, L)   # (S^L, L)
        total = torch.zeros(B, dtype=torch.float64, device=x0.device)
        rows_b, rows_x, rows_t, rows_w = [], [], [], []
        for j in range(times.numel()):
            tj = torch.full((B,), float(times[j]), dtype=torch.float64, device=x0.device)
            q = self.process._marginal(x0, tj)                                          # (B, L, S)
            prob = torch.ones(B, states.shape[0], dtype=torch.float64, device=x0.device)
            for l in range(L):                                                          # q(x_t | x0), (B, S^L)
                prob = prob * q[:, l, :][:, states[:, l]]
            b_idx, n_idx = (prob > 0).nonzero(as_tuple=True)
            rows_b.append(b_idx)
            rows_x.append(states[n_idx])
            rows_t.append(torch.full_like(b_idx, j))
            rows_w.append(prob[b_idx, n_idx] * float(weights[j]))
        rb, rx, rt, rw = (torch.cat(v) for v in (rows_b, rows_x, rows_t, rows_w))
        for start in range(0, rb.numel(), max_rows):
            sl = slice(start, start + max_rows)
            b = rb[sl]
            c = {k: (v[b] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == B else v) for k, v in cond.items()}
            val = self.nelbo_at(net, x0[b], times.to(x0.device)[rt[sl]], rx[sl], **c).to(torch.float64)
            total.index_add_(0, b, rw[sl] * val)
        return total


# --------------------------------------------------------------------------- continuous-time ELBO
class ContinuousELBO(DiscreteLoss):
    """The continuous-time negative ELBO, in nats per sequence.

    Masked processes: the MDLM / MD4 weighted cross-entropy (Sahoo et al. 2024, Eq. 10; Shi et al.
    2024, Eq. 5)

        -ELBO = E_t E_{x_t} [ -alpha'(t) / (1 - alpha(t)) * sum_{l masked} -log p(x0_l | x_t) ].

    Other processes: the bound of Campbell et al. (2022, Prop. 2) written, as in Lou et al.
    ("Discrete Diffusion Modeling by Estimating the Ratios of the Data Distribution", ICML 2024,
    Thm 3.6, denoising score entropy) and GIDD (von Rütte et al. 2025, Sec. 3), per position l with
    x = x_t,l, the forward jump rate rho_t(x) into x (``Process.jump_rates``), the true ratios
    a_y = q_t(y | x0) / q_t(x | x0) and the model's ratios s_y = sum_x0 p(x0 | x_t) q_t(y|x0)/q_t(x|x0):

        -ELBO = E_t E_{x_t} [ sum_l rho_t(x) sum_{y != x} (s_y - a_y log s_y + a_y log a_y - a_y) ]
                + KL(q(x_1 | x0) || prior).

    Each bracket is a Bregman divergence (>= 0, 0 iff s = a), and for a masked process this
    expression equals the weighted cross-entropy term by term. With the exact denoiser the bound is
    tight (the per-position reverse rates are the exact ones in continuous time).
    """

    def nelbo_at(self, net: Callable[..., Tensor], x0: Tensor, t: Tensor, x_t: Tensor, **cond: Any) -> Tensor:
        t = self._check_inputs(x0, t, x_t)
        logits = self._logits(net, x_t, t, cond)
        proc = self.process
        # where alpha(t) rounds to 0 or 1 the rates are infinite but the integrand's limit is 0: evaluate
        # the process at a harmless time there and zero the result (keeps values and gradients finite)
        a = proc.alpha(t)
        inside = (a > 0) & (a < 1)
        t_in = torch.where(inside, t, torch.full_like(t, 0.5))
        if isinstance(proc, Masked):
            lp = self._log_probs(logits, x_t)
            ce = -lp.gather(-1, x0[..., None])[..., 0]
            masked = x_t == proc.mask_id
            ce = torch.where(masked, ce, torch.zeros_like(ce))
            w = (-proc.d_alpha(t_in) / (1.0 - proc.alpha(t_in))).to(ce.dtype)
            out = w * ce.sum(1)
        else:
            out = self._general(logits, x0, t_in, x_t)
        out = torch.where(inside.to(out.device), out, torch.zeros_like(out))
        return out + self.prior_kl(x0).to(out.dtype)

    def _general(self, logits: Tensor, x0: Tensor, t: Tensor, x_t: Tensor) -> Tensor:
        proc = self.process
        dt = logits.dtype
        p = torch.exp(self._log_probs(logits, x_t))
        s = proc._ratios(x_t, p, t)
        a = proc._ratios(x_t, torch.nn.functional.one_hot(x0, proc.vocab_size).to(dt), t)
        rho = proc.jump_rates(t).to(dt).gather(1, x_t)                        # (B, L)
        apos, spos = a > 0, s > 0
        log_s = torch.log(torch.where(spos, s, torch.ones_like(s)))
        log_s = torch.where(spos, log_s, torch.full_like(s, -math.inf))
        log_a = torch.log(torch.where(apos, a, torch.ones_like(a)))
        breg = s - a + torch.where(apos, a * (log_a - log_s), torch.zeros_like(a))
        breg = breg.masked_fill(torch.nn.functional.one_hot(x_t, proc.num_states).bool(), 0.0)
        return (rho * breg.sum(-1)).sum(1)


# --------------------------------------------------------------------------- D3PM
class D3PMLoss(DiscreteLoss):
    """D3PM's hybrid loss with T discrete steps on the grid t_i = i / T (Austin et al., "Structured
    Denoising Diffusion Models in Discrete State-Spaces", NeurIPS 2021, Eq. 5):

        L_vb = KL(q(x_1 | x0) || prior) + sum_{i=2}^T E KL(q(x_{s} | x_{t}, x0) || p(x_s | x_t))
               + E[-log p(x0 | x_{t_1})],        s = t_{i-1}, t = t_i,

    with the model's reverse step p(x_s | x_t) = ``Process.posterior`` (the ancestral sampler's step),
    and the hybrid loss L_vb + ce_weight * E[-log p-hat(x0 | x_t)] (lambda = 0.01 in the paper). One
    draw picks i uniformly, so the per-sequence loss is T * term_i + prior + ce_weight * CE. ``nelbo``
    estimates L_vb, which bounds -log p(x0) for the T-step ancestral sampler on the uniform grid; it
    tightens toward the continuous-time ELBO as T grows.
    """

    def __init__(self, process: Process, steps: int = 1000, ce_weight: float = 0.01) -> None:
        super().__init__(process, "uniform")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        ce_weight = float(ce_weight)
        if not (math.isfinite(ce_weight) and ce_weight >= 0):
            raise ValueError(f"ce_weight must be a finite number >= 0, got {ce_weight}")
        self.steps, self.ce_weight = steps, ce_weight

    def sample_t(self, n: int, generator: Optional[torch.Generator] = None,
                 device: Optional[torch.device] = None) -> Tensor:
        i = torch.randint(1, self.steps + 1, (n,), generator=generator, device=device)
        return i.to(torch.float64) / self.steps

    def _nodes(self, nodes: int) -> Tuple[Tensor, Tensor]:
        T = self.steps
        t = torch.arange(1, T + 1, dtype=torch.float64) / T
        return t, torch.full((T,), 1.0 / T, dtype=torch.float64)

    def _terms(self, net: Callable[..., Tensor], x0: Tensor, t: Tensor, x_t: Tensor,
               cond: Dict[str, Any]) -> Tuple[Tensor, Tensor]:
        """(T * term_i + prior, CE) per sequence."""
        t = self._check_inputs(x0, t, x_t)
        T = self.steps
        i = torch.round(t * T)
        if (torch.abs(i - t * T) > 1e-6).any() or (i < 1).any():
            raise ValueError(f"D3PMLoss times must lie on the grid i / {T}, i = 1..{T}")
        logits = self._logits(net, x_t, t, cond)
        proc = self.process
        lp = self._log_probs(logits, x_t)
        ce = -lp.gather(-1, x0[..., None])[..., 0].sum(1)                      # -log p(x0 | x_t), (B,)
        s = (i - 1.0) / T
        first = i == 1
        s_safe = torch.where(first, torch.zeros_like(s), s)
        p = torch.exp(lp)
        dt = p.dtype
        q = proc._posterior(x_t, torch.nn.functional.one_hot(x0, proc.vocab_size).to(dt), s_safe, t)
        pm = proc._posterior(x_t, p, s_safe, t)
        qpos = q > 0
        log_q = torch.log(torch.where(qpos, q, torch.ones_like(q)))
        pm_pos = pm > 0
        log_p = torch.where(pm_pos, torch.log(torch.where(pm_pos, pm, torch.ones_like(pm))),
                            torch.full_like(pm, -math.inf))
        kl = torch.where(qpos, q * (log_q - log_p), torch.zeros_like(q)).sum((1, 2))
        term = torch.where(first, ce, kl)                                      # at i = 1: -log p(x0 | x_t1)
        return T * term + self.prior_kl(x0).to(term.dtype), ce

    def nelbo_at(self, net: Callable[..., Tensor], x0: Tensor, t: Tensor, x_t: Tensor, **cond: Any) -> Tensor:
        return self._terms(net, x0, t, x_t, cond)[0]

    def loss_at(self, net: Callable[..., Tensor], x0: Tensor, t: Tensor, x_t: Tensor, **cond: Any) -> Tensor:
        vb, ce = self._terms(net, x0, t, x_t, cond)
        return vb + self.ce_weight * ce if self.ce_weight else vb


# --------------------------------------------------------------------------- plain cross-entropy
class CrossEntropyLoss(DiscreteLoss):
    """Plain cross-entropy sum_l -log p(x0_l | x_t) at t ~ U(0, 1) (masked processes: unmasked
    positions cost nothing under carry-over). Not itself a bound; ``nelbo`` / ``nelbo_exact`` report
    the continuous-time ELBO (``ContinuousELBO``) of the same model."""

    def __init__(self, process: Process, time_sampler: str = "uniform") -> None:
        super().__init__(process, time_sampler)
        self._elbo = ContinuousELBO(process, time_sampler)

    def loss_at(self, net: Callable[..., Tensor], x0: Tensor, t: Tensor, x_t: Tensor, **cond: Any) -> Tensor:
        t = self._check_inputs(x0, t, x_t)
        lp = self._log_probs(self._logits(net, x_t, t, cond), x_t)
        return -lp.gather(-1, x0[..., None])[..., 0].sum(1)

    def nelbo_at(self, net: Callable[..., Tensor], x0: Tensor, t: Tensor, x_t: Tensor, **cond: Any) -> Tensor:
        return self._elbo.nelbo_at(net, x0, t, x_t, **cond)


__all__ = ["DiscreteLoss", "ContinuousELBO", "D3PMLoss", "CrossEntropyLoss", "TIME_SAMPLERS"]
