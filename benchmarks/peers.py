"""Peer-library samplers (diffusers, k-diffusion, flow_matching) driven by an analytic posterior.

The benchmark compares polydiff's solvers with the samplers other libraries ship, on a model
whose exact posterior is known (a Gaussian mixture), so any gap is solver error and never
network error. Each peer is called as an installed package (the optional ``bench`` extra);
none of their code is copied here. Conventions follow ``research/core.md`` section 3:

* diffusers VP schedulers: ``prediction_type="sample"`` (the model returns x0_hat), and the
  posterior is queried at the scaled input ``scale_model_input(x, t)`` with a = 1/sqrt(1+S^2),
  s = S*a, where S = ``sigmas[i]``; DDIM has no sigmas and uses ``alphas_cumprod[int(t)]``.
* diffusers FlowMatchEuler: x = (1-S) x0 + S eps, model output v = eps_hat - x0_hat.
* k-diffusion: VE coordinates x = x0 + sigma*eps, so the denoiser is posterior(x, 1, sigma)[0].
* flow_matching CondOT: t=0 is noise, t=1 data, velocity = x1_hat - eps_hat at (a=t, s=1-t).

Samplers run in the dtype of ``noise``; the posterior may compute in float64, and its outputs
are cast back so every peer integrates in the same precision.
"""

from __future__ import annotations

import importlib
import importlib.util
import statistics
import sys
import time
import types
from functools import lru_cache
from typing import Callable, Dict, List, NamedTuple

import torch

Posterior = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple]

# One VP schedule for every diffusers scheduler: HeunDiscreteScheduler's defaults differ
# (0.00085, 0.012; sigma_max about 25 instead of 157), so the betas are always passed explicitly.
_VP_CONFIG = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)

# (label, scheduler class, extra config, model calls per step: Heun's N steps cost 2N-1).
_DIFFUSERS_VP = [
    ("DDIM trailing eta=0", "DDIMScheduler",
     dict(clip_sample=False, timestep_spacing="trailing"), 1),
    ("EulerDiscrete karras", "EulerDiscreteScheduler", dict(use_karras_sigmas=True), 1),
    ("HeunDiscrete karras", "HeunDiscreteScheduler", dict(use_karras_sigmas=True), 2),
    ("LMSDiscrete karras", "LMSDiscreteScheduler", dict(use_karras_sigmas=True), 1),
    ("DPMSolverMultistep 2M karras", "DPMSolverMultistepScheduler",
     dict(solver_order=2, use_karras_sigmas=True), 1),
    ("DPMSolverMultistep 3M karras", "DPMSolverMultistepScheduler",
     dict(solver_order=3, use_karras_sigmas=True), 1),
    ("UniPCMultistep bh2 karras", "UniPCMultistepScheduler",
     dict(solver_type="bh2", use_karras_sigmas=True), 1),
    ("DEISMultistep karras", "DEISMultistepScheduler", dict(use_karras_sigmas=True), 1),
    ("DPMSolverSinglestep karras", "DPMSolverSinglestepScheduler", dict(use_karras_sigmas=True), 1),
]

# (sampler function, model calls per step); the 2-call samplers end with one Euler step to 0.
_K_SAMPLERS = [("sample_euler", 1), ("sample_heun", 2), ("sample_lms", 1),
               ("sample_dpmpp_2m", 1), ("sample_dpm_2", 2)]
_K_SIGMA_MIN, _K_SIGMA_MAX, _K_RHO = 0.002, 80.0, 7.0

# torchdiffeq fixed-grid methods and their evaluations per step.
_FLOW_METHODS = [("euler", 1), ("midpoint", 2), ("heun2", 2), ("rk4", 4)]


class PeerRun(NamedTuple):
    """One peer sampler's output on the analytic model."""

    library: str  # "diffusers" | "k-diffusion" | "flow_matching"
    sampler: str  # human-readable, e.g. "DPMSolverMultistep 2M karras"
    nfe: int  # exact number of posterior() calls made
    samples: torch.Tensor  # (n, d) float32 on CPU
    seconds: float  # wall time of the sampling loop


class _Counted:
    """Wraps a posterior: counts calls, passes (a, s) as float64, returns results in x's dtype."""

    def __init__(self, posterior: Posterior) -> None:
        self.posterior = posterior
        self.calls = 0

    def __call__(self, x: torch.Tensor, a, s) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        a = torch.as_tensor(a, dtype=torch.float64, device=x.device)
        s = torch.as_tensor(s, dtype=torch.float64, device=x.device)
        x0_hat, eps_hat = self.posterior(x, a, s)
        return x0_hat.to(x.dtype), eps_hat.to(x.dtype)


def _diffusers() -> types.ModuleType:
    return importlib.import_module("diffusers")


@lru_cache(maxsize=None)
def _k_sampling() -> types.ModuleType:
    """Return ``k_diffusion.sampling``, bypassing the package ``__init__`` if that fails.

    ``import k_diffusion`` runs an ``__init__`` that imports clip, clean-fid, kornia, wandb and
    torchvision (through ``k_diffusion.utils``); with a torchvision wheel that does not match torch
    this fails although the samplers need none of it. The fallback loads ``sampling.py`` alone
    under a private package name whose ``utils`` holds the one helper ``sampling.py`` uses
    (``append_dims``), so nothing named ``k_diffusion`` is put into ``sys.modules``.
    """
    try:
        return importlib.import_module("k_diffusion.sampling")
    except Exception:
        pass
    spec = importlib.util.find_spec("k_diffusion")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed")
    pkg_name = "_polydiff_peers_k_diffusion"
    pkg = types.ModuleType(pkg_name)
    pkg.__path__ = []  # a package, so that sampling.py's `from . import utils` resolves
    utils = types.ModuleType(f"{pkg_name}.utils")
    utils.append_dims = lambda x, n: x.reshape(x.shape + (1,) * (n - x.ndim))
    pkg.utils = utils
    sys.modules[pkg_name], sys.modules[utils.__name__] = pkg, utils
    path = f"{list(spec.submodule_search_locations)[0]}/sampling.py"
    sampling_spec = importlib.util.spec_from_file_location(f"{pkg_name}.sampling", path)
    module = importlib.util.module_from_spec(sampling_spec)
    sys.modules[sampling_spec.name] = module
    sampling_spec.loader.exec_module(module)
    return module


def _flow_solver() -> type:
    return importlib.import_module("flow_matching.solver").ODESolver


_LOADERS: Dict[str, Callable[[], object]] = {
    "diffusers": _diffusers, "k-diffusion": _k_sampling, "flow_matching": _flow_solver,
}


def available() -> Dict[str, bool]:
    """Which peer libraries import here (library name -> bool)."""
    found = {}
    for library, load in _LOADERS.items():
        try:
            load()
            found[library] = True
        except Exception:
            found[library] = False
    return found


def _timed(run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    with torch.no_grad():
        out = run()
    return out, time.perf_counter() - start


def _diffusers_vp(counted: _Counted, noise: torch.Tensor, cls_name: str, config: dict,
                  steps: int) -> Callable[[], torch.Tensor]:
    """Build the sampling loop for one diffusers VP scheduler (prediction_type 'sample')."""
    sched = getattr(_diffusers(), cls_name)(**_VP_CONFIG, prediction_type="sample", **config)
    sched.set_timesteps(steps, device=noise.device)
    sigmas = getattr(sched, "sigmas", None)

    def loop() -> torch.Tensor:
        x = noise * sched.init_noise_sigma
        for i, t in enumerate(sched.timesteps):
            x_in = sched.scale_model_input(x, t)
            if sigmas is not None:  # the exact sigma of this call; `t` itself may be rounded
                a = (1 + sigmas[i].double() ** 2) ** -0.5
                s = sigmas[i].double() * a
            else:  # DDIM: integer training timesteps
                alpha_bar = sched.alphas_cumprod[int(t)].double()
                a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
            x0_hat, _ = counted(x_in, a, s)
            x = sched.step(x0_hat, t, x).prev_sample
        return x

    return loop


def _diffusers_flow(counted: _Counted, noise: torch.Tensor,
                    steps: int) -> Callable[[], torch.Tensor]:
    """Build the FlowMatchEuler loop (shift 1): x = (1-S) x0 + S eps, model output eps - x0."""
    sched = _diffusers().FlowMatchEulerDiscreteScheduler(shift=1.0)
    sched.set_timesteps(steps, device=noise.device)

    def loop() -> torch.Tensor:
        x = noise  # the flow path starts at pure noise, S = 1
        for i, t in enumerate(sched.timesteps):
            sigma = sched.sigmas[i].double()
            x0_hat, eps_hat = counted(x, 1 - sigma, sigma)
            x = sched.step(eps_hat - x0_hat, t, x).prev_sample
        return x

    return loop


def _k_diffusion(counted: _Counted, noise: torch.Tensor, name: str,
                 steps: int) -> Callable[[], torch.Tensor]:
    """Build one k-diffusion ODE sampler on Karras sigmas in [0.002, 80]."""
    k = _k_sampling()
    sigmas = k.get_sigmas_karras(steps, _K_SIGMA_MIN, _K_SIGMA_MAX, _K_RHO, device=noise.device)

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return counted(x, 1.0, sigma)[0]

    return lambda: getattr(k, name)(denoiser, noise * sigmas[0], sigmas, disable=True)


def _flow_matching(counted: _Counted, noise: torch.Tensor, method: str,
                   steps: int) -> Callable[[], torch.Tensor]:
    """Build a fixed-grid flow_matching ODESolver run on the CondOT path (t=0 noise, t=1 data)."""

    def velocity(x: torch.Tensor, t: torch.Tensor, **extras) -> torch.Tensor:
        t = t.double()
        x1_hat, eps_hat = counted(x, t, 1 - t)
        return x1_hat - eps_hat

    solver = _flow_solver()(velocity_model=velocity)
    # An explicit uniform grid with step_size=None: torchdiffeq's step_size grid rounds with
    # ceil() and can add a tiny extra step.
    grid = torch.linspace(0.0, 1.0, steps + 1, dtype=noise.dtype, device=noise.device)
    return lambda: solver.sample(x_init=noise, step_size=None, method=method, time_grid=grid)


_Builder = Callable[[_Counted, torch.Tensor], Callable[[], torch.Tensor]]


def _plan(nfe: int) -> List[tuple[str, str, _Builder]]:
    """All (library, sampler label, builder) triples fitting in `nfe` model calls."""
    plan = []
    for label, cls_name, config, cost in _DIFFUSERS_VP:
        steps = nfe if cost == 1 else (nfe + 1) // 2
        plan.append(("diffusers", f"{label} ({steps} steps)",
                     lambda c, z, n=cls_name, cfg=config, st=steps:
                     _diffusers_vp(c, z, n, cfg, st)))
    plan.append(("diffusers", f"FlowMatchEulerDiscrete shift=1 ({nfe} steps)",
                 lambda c, z: _diffusers_flow(c, z, nfe)))
    for name, cost in _K_SAMPLERS:
        steps = nfe if cost == 1 else (nfe + 1) // 2
        plan.append(("k-diffusion", f"{name} karras ({steps} steps)",
                     lambda c, z, n=name, st=steps: _k_diffusion(c, z, n, st)))
    for method, cost in _FLOW_METHODS:
        steps = nfe // cost
        if steps >= 1:
            plan.append(("flow_matching", f"ODESolver {method} ({steps} steps)",
                         lambda c, z, m=method, st=steps: _flow_matching(c, z, m, st)))
    return plan


def run_peers(posterior: Posterior, noise: torch.Tensor, nfe: int) -> List[PeerRun]:
    """Every peer sampler configured to spend at most `nfe` evaluations (exactly nfe where the
    method allows; Heun/midpoint use the largest step count whose NFE <= nfe), all starting from
    the same standard-normal `noise` (n, d), scaled as each library expects (e.g. k-diffusion
    multiplies by sigma_max, diffusers by init_noise_sigma).

    A library that does not import, or a sampler that raises, is skipped with a reason on stderr.
    """
    have = available()
    for library, ok in have.items():
        if not ok:
            print(f"[peers] skipping {library}: not importable", file=sys.stderr)
    runs = []
    for library, label, build in _plan(nfe):
        if not have[library]:
            continue
        counted = _Counted(posterior)
        try:
            samples, seconds = _timed(build(counted, noise))
        except Exception as err:
            print(f"[peers] skipping {library} {label}: {type(err).__name__}: {err}",
                  file=sys.stderr)
            continue
        samples = samples.detach().to("cpu", torch.float32)
        runs.append(PeerRun(library, label, counted.calls, samples, seconds))
    return runs


def diffusers_step_overhead(batch: int, dim: int, steps: int, repeats: int) -> float:
    """Seconds per step of diffusers' DPMSolverMultistepScheduler (solver_order=2, prediction_type
    'epsilon') driven by a trivial model that returns zeros_like(x), for x of shape (batch, dim),
    median over `repeats` runs of `steps` steps (set_timesteps excluded from the timing). This is
    the peer side of a solver-overhead comparison."""
    sched = _diffusers().DPMSolverMultistepScheduler(**_VP_CONFIG, solver_order=2,
                                                     prediction_type="epsilon")
    noise = torch.randn(batch, dim)
    per_step = []
    for _ in range(repeats):
        sched.set_timesteps(steps)  # also resets the multistep history
        start = time.perf_counter()
        with torch.no_grad():
            x = noise
            for t in sched.timesteps:
                x = sched.step(torch.zeros_like(x), t, x).prev_sample
        per_step.append((time.perf_counter() - start) / steps)
    return statistics.median(per_step)


if __name__ == "__main__":
    from polydiff.core import analytic

    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    gmm = analytic.ring_mixture(2)   # 8 means on a radius-4 circle, std 0.3, unequal weights
    n = 2000
    exact_lp = gmm.log_prob(gmm.sample(n, gen)).mean().item()
    noise = torch.randn(n, 2, generator=gen)

    print(f"available: {available()}")
    print(f"exact samples: E[log p] = {exact_lp:.3f}")
    print(f"{'library':<14} {'sampler':<44} {'NFE':>4} {'E[log p]':>10} {'gap':>9} {'seconds':>8}")
    for budget in (5, 10, 20):
        for run in run_peers(gmm.denoise_and_eps, noise, budget):
            lp = gmm.log_prob(run.samples.double()).mean().item()
            print(f"{run.library:<14} {run.sampler:<44} {run.nfe:>4} {lp:>10.3f} "
                  f"{lp - exact_lp:>+9.3f} {run.seconds:>8.4f}")
        print()
    overhead = diffusers_step_overhead(200000, 16, 20, 3)
    print(f"diffusers_step_overhead(200000, 16, 20, 3) = {overhead * 1e3:.3f} ms/step")
