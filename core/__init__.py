"""polydiff.core: the domain-free diffusion core (Gaussian paths and discrete processes, denoisers, grids,
solvers, guidance, likelihood, losses).

Conventions (see the README): t in [0, 1], t = 0 data, t = 1 noise; x_t = alpha(t) x0 + sigma(t) eps;
everything downstream of a network sees a denoiser D(x_t, t, **cond) -> E[x0 | x_t].
"""
from . import analytic, discrete, guidance, likelihood, losses, mean_reverting, metrics, nets, paths, training
from .denoiser import Denoiser, NFECounter
from .grids import GRIDS, fit_grid, make_grid
from .inverse import posterior_sample
from .solvers import X0Variance, sample, solvers
from .solvers.fitted import FittedSolver, fit_solver
from .training import load

__all__ = ["paths", "discrete", "analytic", "guidance", "likelihood", "losses", "mean_reverting", "metrics", "nets", "training", "load", "Denoiser", "NFECounter", "sample", "X0Variance", "posterior_sample", "solvers", "make_grid", "fit_grid", "fit_solver", "FittedSolver", "GRIDS"]
