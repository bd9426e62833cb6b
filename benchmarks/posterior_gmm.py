"""Exact posterior benchmark: the Gaussian-mixture problem of MCGdiff (Cardoso et al., ICLR 2024).

Prior: 25 components, means (8i, 8j, 8i, 8j, ...) for i, j in {-2..2}, identity covariance, weights
proportional to eps^2 (eps ~ N(0, I_25)). A = U diag(s) V[:d_y] from the SVD of a Gaussian
d_y x d matrix with sorted U(0, 1) singular values; sigma_y = u max(s), u ~ U(0, 1); y = A x* +
sigma_y n with x* from the prior. Exact posterior: per component N(P (A^T y/sigma_y^2 + mu_k), P),
P = (I + A^T A/sigma_y^2)^-1, weights ~ w_k N(y; A mu_k, sigma_y^2 I + A A^T).
Metric: sliced W1 over 100 random unit directions (sorted projections; equal to scipy's
wasserstein_distance for equal sample counts) between a method's samples and an exact posterior
sample set of the same size; mean and 95% interval (1.96 sd / sqrt(problems)) over problems.
floor = SW between two independent exact sets; ceiling = prior samples (a sampler ignoring y).

Diffusion: the exact mixture denoiser on polydiff's VP path (linear beta 0.1..20, the continuous
limit of DDPM's 1e-4..2e-2 betas; MCGdiff's own code uses decreasing betas and its own grid) with
each method's default grid. The denoiser is the closed form for an isotropic mixture,
a few matmuls (responsibilities from ||x||^2 - 2 a x.mu_k + a^2 ||mu_k||^2), checked against
``GaussianMixture.denoise`` at start-up.

Particle methods (mcgdiff, fps, tds, fk) return all K particles of each system
(``all_particles=True``, resampled by the final weights), as MCGdiff's code does: n samples come
from n / K independent systems of K particles; NFE per returned sample is then the step count.
Each method runs at 20 and 100 denoiser evaluations per sample (DAPS: levels x ode_steps = NFE).
``--particle-growth`` repeats the particle methods at 100 steps for more K in that protocol. The
total number of particles stays n, and the samples of one system are correlated (they share
ancestors), so this series does not grow the computation. ``--independent-growth`` instead draws one
sample per system of K particles (NFE per sample = 100 K) from ``--independent-samples`` systems.
Its floor is taken at that sample count. This is the series in which an asymptotically exact
method must approach the floor.

The methods whose importance weights use a Gaussian approximation of p(x0 | x_t) (mcgdiff's
reference potential, tds, fk) get ``data_var`` = the prior's variance per coordinate
(``data_variance``), a statistic of the data a user knows. pigdm keeps its default (1.0): the
prior's variance makes its guidance far worse here. ddrm and diffpir get more rows (``EXTRA_ROWS``): the
"sigma" grid (uniform in sigma/alpha) started at 4 data standard deviations (``sigma_start``; deepinv's
DDRM starts at the data range, and the same data scale is what that setting uses), and for diffpir
deepinv's data weight (its lambda = 7 is 3.5 here) and zeta = 1 (the authors' inpainting setting).

    python benchmarks/posterior_gmm.py --quick            # d=80, 5 problems, 1000 samples, growth to K=1024 (~30 min, 1 thread)
    python benchmarks/posterior_gmm.py                    # the full MCGdiff setup (d 8/80/800, 20 problems, 2000 samples)
    python benchmarks/posterior_gmm.py --dims 80 --methods mcgdiff tds --nfe 100 --particle-growth 128 1024
Options --json FILE writes every row; deepinv's DPS/DDRM/DiffPIR run beside ours when deepinv imports
(``benchmarks/deepinv_peer.py``; --no-peer to skip).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path as _P

import torch

from polydiff.core.analytic import GaussianMixture
from polydiff.core.inverse import MatrixOperator, methods, posterior_sample
from polydiff.core.paths import VE, VP

Tensor = torch.Tensor


# ============================================================================ the problem
def gmm_prior(d: int, g: torch.Generator) -> GaussianMixture:
    ij = torch.tensor([(i, j) for i in range(-2, 3) for j in range(-2, 3)], dtype=torch.float64)
    means = (8.0 * ij).repeat(1, (d + 1) // 2)[:, :d]
    w = torch.randn(25, generator=g, dtype=torch.float64) ** 2
    return GaussianMixture(means, 1.0, w)


def problem(d: int, dy: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    prior = gmm_prior(d, g)
    G = torch.randn(dy, d, generator=g, dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    s = torch.sort(torch.rand(dy, generator=g, dtype=torch.float64), descending=True).values
    A = U @ torch.diag(s) @ Vh[:dy]
    sy = float(torch.rand((), generator=g, dtype=torch.float64)) * float(s.max())
    x = prior.sample(1, g)[0]
    y = A @ x + sy * torch.randn(dy, generator=g, dtype=torch.float64)
    return prior, A, y, sy


class IsoMixture:
    """Isotropic unit-covariance mixture: its exact denoiser in a few matmuls (autograd-safe)."""

    def __init__(self, means: Tensor, log_weights: Tensor) -> None:
        self.means, self.logw = means, log_weights                    # (K, d), (K,)
        self.msq = (means * means).sum(1)                              # (K,)

    def denoise(self, x: Tensor, a: float, s: float) -> Tensor:
        v = a * a + s * s
        logits = self.logw + (a * (x @ self.means.T) - 0.5 * a * a * self.msq) / v
        r = torch.softmax(logits, 1)
        return (a / v) * x + (s * s / v) * (r @ self.means)

    def denoiser(self, path):
        def D(x, t, **cond):
            t0 = float(t.reshape(-1)[0])          # posterior samplers use a grid shared by the batch
            tt = torch.tensor(t0, dtype=torch.float64)
            return self.denoise(x, float(path.alpha(tt)), float(path.sigma(tt)))
        return D


def data_variance(prior: GaussianMixture) -> float:
    """The prior's variance per coordinate, tr Cov[x0] / d: the ``data_var`` that pigdm, tds and fk take
    (their Gaussian approximation of p(x0 | x_t) has variance data_var varsigma^2 / (data_var + varsigma^2)),
    the statistic a user knows of their data's scale."""
    mean = prior.weights @ prior.means
    spread = (prior.weights[:, None] * (prior.means - mean) ** 2).sum()
    return float((spread + (prior.weights[:, None] * prior.eig).sum()) / prior.dim)


def sw1(x: Tensor, y: Tensor, dirs: Tensor) -> float:
    px, _ = torch.sort(x @ dirs, 0)
    py, _ = torch.sort(y @ dirs, 0)
    return float((px - py).abs().mean())


# ============================================================================ methods and budgets
# name -> (particles (None: not a particle method), options). Defaults are the methods' own (see each
# docstring); daps uses 5 ODE steps per level (DAPS-1K's split), so NFE = 5 x levels. The methods
# with a ``data_var`` option (pigdm, tds, fk) get the prior's variance per coordinate (DATA_VAR).
DATA_VAR = "data_var"
CONFIGS = {
    "ddrm": (None, {}), "ddnm": (None, {}), "pigdm": (None, {}), "dps": (None, {}),
    "diffpir": (None, {}), "reddiff": (None, {}), "daps": (None, {"ode_steps": 5}),
    "mcgdiff": (32, {"data_var": DATA_VAR}), "fps": (32, {}), "tds": (32, {"data_var": DATA_VAR}),
    "fk": (32, {"data_var": DATA_VAR}),
}
# extra rows: the "sigma" grid started at SIGMA_START_STD data standard deviations (posterior_sample's
# sigma_start; the setting the ddrm/diffpir docstrings recommend for multimodal priors), and diffpir at
# deepinv's data weight: deepinv's lambda = 7 acts as lambda = 3.5 here (its rho uses the denoiser's noise
# level in [-1, 1] units on data in [0, 1]: see the diffpir docstring)
SIGMA_START_STD = 4.0
SIGMA_START = "sigma_start"    # replaced by SIGMA_START_STD * the data's standard deviation
DEEPINV_LAMBDA = 3.5
_SIGMA = {"grid": "sigma", "sigma_start": SIGMA_START}
EXTRA_ROWS = {
    "ddrm": {"sigma grid from 4 std": _SIGMA},
    "diffpir": {"lambda 3.5": {"lambda_": DEEPINV_LAMBDA},
                "lambda 3.5, sigma grid from 4 std": {**_SIGMA, "lambda_": DEEPINV_LAMBDA},
                "lambda 3.5, sigma grid from 4 std, zeta=1": {**_SIGMA, "lambda_": DEEPINV_LAMBDA, "zeta": 1.0}},
}


def run_method(name, D, A, y, sy, n, nfe, g, path, particles=None, data_var=1.0, independent=False, **extra):
    """n samples of ``name`` at ``nfe`` evaluations per sample (per particle for particle methods);
    ``independent``: one sample per system of K particles instead of all K particles of n / K systems;
    ``extra``: more posterior_sample arguments (grid=, sigma_start=, method options)."""
    K, opts = CONFIGS[name]
    K = particles or K
    opts = {k: (data_var if v is DATA_VAR else v) for k, v in opts.items()}
    steps = max(1, nfe // opts.get("ode_steps", 1)) if name == "daps" else nfe
    rows = -(-n // K) if K and not independent else n
    t0 = time.time()
    x, info = posterior_sample(D, y.expand(rows, -1), MatrixOperator(A), path=path, method=name, steps=steps,
                               sigma_y=sy, generator=g, particles=K, all_particles=bool(K) and not independent,
                               return_info=True, **extra, **opts)
    if x.shape[0] > n:   # K does not divide n: drop random particles of the last systems' sets
        x = x[torch.randperm(x.shape[0], generator=g)[:n]]
    return x, info["nfe"], info["backward"], time.time() - t0, K


def ci(v):
    t = torch.tensor(v, dtype=torch.float64)
    hw = 1.96 * float(t.std()) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return float(t.mean()), hw


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="d=80, 5 problems, 1000 samples, particle growth 128/512/1024, independent growth 1/8/64")
    ap.add_argument("--dims", type=int, nargs="*", default=None)
    ap.add_argument("--dys", type=int, nargs="*", default=[1, 2, 4])
    ap.add_argument("--problems", type=int, default=None)
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--nfe", type=int, nargs="*", default=[20, 100], help="denoiser evaluations per sample")
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--particle-growth", type=int, nargs="*", default=None,
                    help="also run the particle methods at these K (100 steps, all particles of n / K systems)")
    ap.add_argument("--independent-growth", type=int, nargs="*", default=None,
                    help="also run the particle methods at these K with one sample per system (100 steps)")
    ap.add_argument("--independent-samples", type=int, default=200,
                    help="samples (= systems) of the --independent-growth series")
    ap.add_argument("--no-peer", action="store_true", help="skip deepinv even when it imports")
    ap.add_argument("--peer-raw-scale", action="store_true",
                    help="also run deepinv's DPS and DiffPIR on the physics before its scaling to unit spectral "
                         "norm (see deepinv_peer.run)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--seed-offset", type=int, default=0,
                    help="problem p of cell (d, d_y) uses seed 1000 d + 10 d_y + p + offset: other problems, "
                         "for checking that a ranking holds on problems it was not tuned on")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    dims = a.dims or ([80] if a.quick else [8, 80, 800])
    nprob = a.problems or (5 if a.quick else 20)
    n = a.samples or (1000 if a.quick else 2000)
    names = a.methods or sorted(n_ for n_ in CONFIGS if n_ in methods())
    growth = a.particle_growth if a.particle_growth is not None else ([128, 512, 1024] if a.quick else [])
    indep = a.independent_growth if a.independent_growth is not None else ([1, 8, 64] if a.quick else [])
    n_ind = a.independent_samples
    peer = None
    if not a.no_peer:
        try:
            sys.path.insert(0, str(_P(__file__).resolve().parent))
            import deepinv_peer as peer  # noqa: F401
            peer.check()
        except Exception as e:  # deepinv is an optional bench dependency
            print(f"(deepinv side by side skipped: {type(e).__name__}: {e})")
            peer = None
    path = VP()
    all_rows = []
    print(f"# posterior_gmm: dims={dims} d_y={a.dys} problems={nprob} samples={n} nfe={a.nfe} "
          f"particle methods K={ {k: v[0] for k, v in CONFIGS.items() if v[0]} } growth K={growth} "
          f"independent growth K={indep} ({n_ind} samples)")
    for d in dims:
        for dy in a.dys:
            res = {}
            t_cell = time.time()
            for p in range(nprob):
                seed = 1000 * d + 10 * dy + p + a.seed_offset
                prior, A, y, sy = problem(d, dy, seed)
                post = prior.posterior(A, y, sy)
                dvar = data_variance(prior)
                iso = IsoMixture(prior.means, prior.log_weights)
                D = iso.denoiser(path)
                if p == 0:   # the fast denoiser is the exact one
                    xt = prior.sample_marginal(64, 0.5, path, torch.Generator().manual_seed(seed))
                    ref = prior.denoiser(path)(xt, torch.full((64,), 0.5, dtype=torch.float64))
                    torch.testing.assert_close(D(xt, torch.full((64,), 0.5, dtype=torch.float64)), ref)
                g = torch.Generator().manual_seed(seed + 7)
                dirs = torch.randn(d, 100, generator=g, dtype=torch.float64)
                dirs /= dirs.norm(dim=0, keepdim=True)
                refs = post.sample(n, g)

                def add(key, val, nfe=0, bwd=0, wall=0.0):
                    res.setdefault(key, []).append((val, nfe, bwd, wall))

                add(("floor", 0, 0), sw1(post.sample(n, g), refs, dirs))
                add(("ceiling", 0, 0), sw1(prior.sample(n, g), refs, dirs))
                if indep:
                    add((f"floor ({n_ind} samples)", 0, 0), sw1(post.sample(n_ind, g), refs[:n_ind], dirs))
                def gen(*key):   # each run its own stream: results do not depend on which methods run
                    return torch.Generator().manual_seed(seed * 7919 + sum(ord(c) * 31 ** i for i, c in enumerate(str(key))) % 1000003)

                for name in names:
                    for nfe in a.nfe:
                        x, nf, bw, wall, K = run_method(name, D, A, y, sy, n, nfe, gen(name, nfe), path,
                                                        data_var=dvar)
                        add((name, nfe, K or 0), sw1(x, refs, dirs), nf, bw, wall)
                        for label, extra in EXTRA_ROWS.get(name, {}).items():
                            extra = {k: (SIGMA_START_STD * math.sqrt(dvar) if v == SIGMA_START else v)
                                     for k, v in extra.items()}
                            x, nf, bw, wall, K = run_method(name, D, A, y, sy, n, nfe, gen(name, nfe, label), path,
                                                            **extra)
                            add((f"{name} ({label})", nfe, 0), sw1(x, refs, dirs), nf, bw, wall)
                    if CONFIGS[name][0]:
                        for K in growth:
                            if K == CONFIGS[name][0] and 100 in a.nfe:
                                continue
                            x, nf, bw, wall, _ = run_method(name, D, A, y, sy, n, 100, gen(name, 100, K), path,
                                                            particles=K, data_var=dvar)
                            add((name, 100, K), sw1(x, refs, dirs), nf, bw, wall)
                        for K in indep:
                            x, nf, bw, wall, _ = run_method(name, D, A, y, sy, n_ind, 100, gen(name, "indep", K),
                                                            path, particles=K, data_var=dvar, independent=True)
                            add((f"{name}, 1 sample/system", 100, K), sw1(x, refs[:n_ind], dirs), nf, bw, wall)
                if peer is not None:
                    for pname in peer.METHODS:
                        for nfe in a.nfe:
                            t0 = time.time()
                            x, nf = peer.run(pname, post=None, prior=prior, A=A, y=y, sy=sy, n=n, nfe=nfe,
                                             g=gen("deepinv", pname, nfe))
                            add((f"deepinv:{pname}", nf, 0), sw1(x, refs, dirs), nf, nf if pname == "dps" else 0,
                                time.time() - t0)
                            if pname == "diffpir":   # the authors' inpainting setting: fresh noise at every step
                                t0 = time.time()
                                x, nf = peer.run(pname, post=None, prior=prior, A=A, y=y, sy=sy, n=n, nfe=nfe,
                                                 g=gen("deepinv", pname, nfe, "zeta=1"), zeta=1.0)
                                add((f"deepinv:{pname} zeta=1", nf, 0), sw1(x, refs, dirs), nf, 0, time.time() - t0)
                            if pname != "ddrm" and a.peer_raw_scale:   # DDRM is invariant to the scaling
                                x, nf = peer.run(pname, post=None, prior=prior, A=A, y=y, sy=sy, n=n, nfe=nfe,
                                                 g=gen("deepinv", pname, nfe), unit_norm=False)
                                add((f"deepinv:{pname} unscaled physics", nf, 0), sw1(x, refs, dirs), nf,
                                    nf if pname == "dps" else 0, time.time() - t0)
                            if pname in names and pname in ("ddrm", "diffpir"):   # ours on deepinv's noise levels
                                lv = peer.noise_levels(pname, nfe)
                                lv = lv[lv > 0]
                                ve = VE(1e-3, float(lv[0]) * (1 + 1e-9))
                                grid = torch.cat([ve.t_from_sigma_ve(lv).double(), torch.zeros(1, dtype=torch.float64)])
                                grid[0] = 1.0
                                Dve = iso.denoiser(ve)
                                t0 = time.time()
                                x, info = posterior_sample(Dve, y.expand(n, -1), MatrixOperator(A), path=ve, method=pname,
                                                           steps=len(grid) - 1, grid=grid, sigma_y=sy,
                                                           generator=gen(pname, "peer levels", nfe), return_info=True,
                                                           **({"lambda_": DEEPINV_LAMBDA} if pname == "diffpir" else {}))
                                add((f"{pname} (deepinv's levels)", info["nfe"], 0), sw1(x, refs, dirs), info["nfe"], 0,
                                    time.time() - t0)
            floor = ci([r[0] for r in res[("floor", 0, 0)]])[0]
            floor_ind = ci([r[0] for r in res[(f"floor ({n_ind} samples)", 0, 0)]])[0] if indep else floor
            print(f"\n## d={d} d_y={dy} ({nprob} problems, {n} samples; {time.time() - t_cell:.0f} s)")
            print("| method | NFE/sample | particles | backward/sample | SW mean | 95% CI | x floor | wall s/problem |")
            print("|---|---|---|---|---|---|---|---|")
            for (name, nfe, K), v in res.items():
                m, hw = ci([r[0] for r in v])
                wall = sum(r[3] for r in v) / len(v)
                small = "sample/system" in name or f"({n_ind} samples)" in name
                fl = floor_ind if small else floor
                print(f"| {name} | {v[0][1] or '-'} | {K or '-'} | {v[0][2] or '-'} | {m:.3f} | "
                      f"[{m - hw:.3f}, {m + hw:.3f}] | {m / fl:.2f} | {wall:.2f} |")
                all_rows.append(dict(d=d, dy=dy, method=name, nfe=v[0][1], particles=K, backward=v[0][2],
                                     sw_mean=m, sw_hw=hw, x_floor=m / fl, wall=wall,
                                     problems=nprob, samples=n_ind if small else n))
            pairs = [(k, ("deepinv:" + k[0].split(" ")[0] + (" zeta=1" if "zeta=1" in k[0] else ""),
                          k[1] + (1 if "levels" in k[0] and k[0].startswith("ddrm") else 0), 0))
                     for k in res if not k[0].startswith(("deepinv", "floor", "ceiling"))]
            pairs += [(k, (kp[0] + " unscaled physics", kp[1], 0)) for k, kp in pairs]
            pairs += [(k, (k[0].replace(" unscaled physics", ""), k[1], 0)) for k in res if k[0].endswith("unscaled physics")]
            pairs = [(k, kp) for k, kp in pairs if kp in res and k[0].split(" ")[0].replace("deepinv:", "") in getattr(peer, "METHODS", ())]
            if pairs:
                print("\npaired per problem, (polydiff - deepinv) SW / floor: mean [95% CI] (negative: polydiff closer)")
                for k, kp in pairs:
                    diff = [(u[0] - w[0]) / floor for u, w in zip(res[k], res[kp])]
                    m, hw = ci(diff)
                    print(f"| {k[0]} vs {kp[0]} | {k[1]} vs {kp[1]} NFE | {m:+.2f} [{m - hw:+.2f}, {m + hw:+.2f}] |")
                    all_rows.append(dict(d=d, dy=dy, method=f"{k[0]} - {kp[0]}", nfe=k[1], paired_diff_x_floor=m,
                                         paired_hw=hw, problems=nprob))
            sys.stdout.flush()
    if a.json:
        _P(a.json).parent.mkdir(parents=True, exist_ok=True)
        _P(a.json).write_text(json.dumps(all_rows, indent=1))
    return all_rows


if __name__ == "__main__":
    main()
