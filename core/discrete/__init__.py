"""Discrete-state diffusion: processes, the x0 conversion, samplers, guidance and losses.

    from polydiff.core import sample, discrete
    proc = discrete.Masked(vocab_size=V)         # also Uniform(V), Marginal(probs), Hybrid(V, p_uniform=...)
    x1 = proc.prior_sample((B, L), generator=g)
    x0 = sample(D, x1, path=proc, solver="first_hitting", generator=g)   # D(x_t, t) -> logits (B, L, V)
    x0 = sample(D, x1, path=proc, solver="remdm", steps=64, fixed=keep)  # infilling: keep x1 where keep (B, L)

Conventions as for Gaussian paths: t in [0, 1], t = 0 data, t = 1 noise; per position
q(x_t | x0) = alpha(t) onehot(x0) + (1 - alpha(t)) pi_t (``processes``). ``solvers()`` lists the
discrete solvers, ``losses`` the training losses with their ELBOs, and ``polydiff.core.analytic``
the exact models every sampler and loss is tested against.
"""
from . import guidance, losses, processes, samplers
from .guidance import ClassifierFreeGuidance, svdd
from .losses import ContinuousELBO, CrossEntropyLoss, D3PMLoss, DiscreteLoss
from .processes import (PROCESSES, SCHEDULES, Hybrid, Marginal, Masked, Process, Schedule, Uniform, categorical,
                        from_config, get_schedule)
from .samplers import (DISCRETE_GRIDS, exact_distribution, make_grid, sample_discrete, solvers, x0_log_probs,
                       x0_probs)

__all__ = ["Process", "Masked", "Uniform", "Marginal", "Hybrid", "Schedule", "SCHEDULES", "PROCESSES",
           "get_schedule", "from_config", "categorical", "x0_probs", "x0_log_probs", "sample_discrete",
           "exact_distribution", "solvers", "make_grid", "DISCRETE_GRIDS", "ClassifierFreeGuidance", "svdd",
           "DiscreteLoss", "ContinuousELBO", "D3PMLoss", "CrossEntropyLoss", "processes", "samplers", "guidance",
           "losses"]
