"""Solver benchmark: every polydiff solver and the peers' samplers on exact Gaussian mixtures, in one run.

Problems: the 8-component ring in 2-D and its 16-D version (``polydiff.core.analytic.ring_mixture``),
whose exact denoiser is used by every library, so only the solvers differ. For each NFE in {5, 10, 20}:
  * sliced W2 (100 fixed directions) between the samples and an exact reference set, next to the
    floor: the mean sliced W2 between independent exact sets and the same reference;
  * the mean exact log-density of the samples minus that of exact samples;
  * wall time.
Peers (the optional `bench` extra): diffusers schedulers, k-diffusion samplers, flow_matching's
ODESolver (``benchmarks/peers.py``). polydiff's best configuration per cell is *chosen on a
validation run* (other noise) and reported on the test runs, so the headline
numbers carry no selection bias: the pick is the deterministic configuration with the smallest global
error (mean squared distance to the converged probability-flow ODE solution from the same noise, on
2000 validation draws), a low-noise criterion that needs no data samples. Grids fitted with
``polydiff.core.fit_grid`` and solvers fitted with ``fit_solver`` (times and coefficients, the "fitted"
configuration) use a third noise set; fit_solver holds out a fifth of it to choose among its candidates.
Solver overhead: seconds per step with a trivial denoiser on a large batch, polydiff's dpmpp_2m next
to diffusers' DPMSolverMultistepScheduler (order 2) in the same process.

Usage: python benchmarks/solvers.py [--quick] [--out DIR] [--threads N] [--nfe 5 10 ...] [--solvers a,b]
(--nfe and --solvers restrict a run to some budgets and polydiff solvers, for focused checks.)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from polydiff.core import X0Variance, analytic, fit_grid, paths, sample, solvers  # noqa: E402
from polydiff.core.metrics import sliced_wasserstein  # noqa: E402
from polydiff.core.solvers.fitted import fit_solver  # noqa: E402

NFES = (5, 10, 20)
FITTED = ("ipndm", "deis", "unipc", "dpmpp_3m")      # solvers run on grids from fit_grid
FIT_SOLVER_INITS = ("dpmpp_3m", "ipndm")             # fit_solver's starting solvers (best on its hold-out)
FIT_DRAWS = {False: 5120, True: 2560}                # fit_solver's draws (full, quick), a fifth held out
FIT_SOLVER_NFES = {False: (5, 10), True: (5,)}       # budgets where it runs (its fit costs minutes at 20)
GRID_DRAWS = 1024                                    # fit_grid's draws (the first of the same set)
REPEAT_SEEDS = (21, 22, 23, 24)  # extra test noise seeds for the headline means (test seed: 2)


@dataclass
class Row:
    problem: str
    library: str
    config: str
    nfe: int
    sw2: float
    logp_gap: float
    seconds: float
    split: str = "test"


def steps_for(name: str, nfe: int) -> Optional[int]:
    """The largest step count whose NFE does not exceed ``nfe``."""
    info = solvers()[name]
    best = None
    for steps in range(1, nfe + 1):
        if info.nfe(steps) <= nfe:
            best = steps
    return best


class Problem:
    """One mixture with its reference set, floor and evaluation helpers."""

    def __init__(self, name: str, gmm: analytic.GaussianMixture, n: int, seed: int, n_floor: int) -> None:
        self.name, self.gmm, self.n = name, gmm, n
        g = torch.Generator().manual_seed(seed)
        self.ref = gmm.sample(n, g)
        self.logp_exact = float(gmm.log_prob(self.ref).mean())
        self.floors = [self.sw(gmm.sample(n, g)) for _ in range(n_floor)]
        self.floor = statistics.mean(self.floors)
        self._x0_var: Dict[str, X0Variance] = {}

    def sw(self, x: torch.Tensor) -> float:
        return float(sliced_wasserstein(x.double(), self.ref, 100, generator=torch.Generator().manual_seed(0)))

    def score(self, x: torch.Tensor) -> Tuple[float, float]:
        if not torch.isfinite(x).all():
            return math.inf, -math.inf
        return self.sw(x), float(self.gmm.log_prob(x.double()).mean()) - self.logp_exact

    def x0_variance(self, path_name: str) -> X0Variance:
        """Var[x0 | x_t] estimated once per path from exact samples (X0Variance's defaults)."""
        if path_name not in self._x0_var:
            data = self.gmm.sample(20_000, torch.Generator().manual_seed(5))
            self._x0_var[path_name] = X0Variance.estimate(self.gmm.denoiser(paths.get_path(path_name)), data,
                                                          path_name, generator=torch.Generator().manual_seed(6))
        return self._x0_var[path_name]

    def posterior(self, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor):
        return self.gmm.denoise_and_eps(x, a, s)


def polydiff_configs(quick: bool) -> List[Tuple[str, str, str]]:
    """(solver, path, grid) triples; 'fit' grids are fitted per problem and NFE."""
    names = [n for n in solvers() if n not in ("rk45", "fitted")]
    out = []
    for name in names:
        for path in (("flow",) if quick else ("flow", "vp")):
            for grid in (("logsnr",) if quick else ("logsnr", "karras")):
                out.append((name, path, grid))
    for name in (FITTED[:2] if quick else FITTED):
        out.append((name, "flow", "fit"))
    out.append(("fitted", "flow", "fit"))      # fit_solver: times and coefficients fitted together
    for path in (("flow",) if quick else ("flow", "vp")):
        out.append(("ddpm+x0var", path, "logsnr"))  # Analytic-DPM: x0's posterior variance from data
    return out


def run_polydiff(prob: Problem, noise: torch.Tensor, fit_noise: torch.Tensor, configs, nfe: int,
                 split: str, fitted: Dict, ode_targets: Optional[Dict[str, torch.Tensor]] = None) -> List[Row]:
    """Run configurations; with ``ode_targets`` (validation) the score is the global error instead of SW2:
    the mean squared distance to the converged probability-flow ODE solution from the same noise."""
    rows = []
    for config_name, path_name, grid in configs:
        name = config_name.split("+")[0]
        steps = steps_for(name, nfe)
        if steps is None or (ode_targets is not None and solvers()[name].stochastic):
            continue
        path = paths.get_path(path_name)
        D = prob.gmm.denoiser(path)
        options = {}
        key = (name, path_name, steps)
        if config_name.endswith("+x0var"):
            options["x0_var"] = prob.x0_variance(path_name)
        if name == "fitted":
            if key not in fitted:
                t_fit = time.perf_counter()
                fitted[key] = fit_solver(D, fit_noise.double(), path=path, steps=steps, init=FIT_SOLVER_INITS)
                print(f"    fit_solver {prob.name} {steps} steps: {time.perf_counter() - t_fit:.0f} s, picked "
                      f"{fitted[key].init} ({'fitted' if fitted[key].info['fitted'] else 'unfitted'}), held-out "
                      f"error {fitted[key].info['val_error']:.4g}", file=sys.stderr, flush=True)
            g, options = fitted[key].grid, {"coefficients": fitted[key]}
        elif grid == "fit":
            if key not in fitted:
                fitted[key] = fit_grid(D, fit_noise[:GRID_DRAWS], path=path, solver=name, steps=steps)
            g = fitted[key]
        else:
            g = grid
        t0 = time.perf_counter()
        try:
            x = sample(D, noise, path=path, solver=name, steps=steps, grid=g,
                       generator=torch.Generator().manual_seed(3), **options)
        except FloatingPointError:
            x = torch.full_like(noise, math.nan)
        dt = time.perf_counter() - t0
        if ode_targets is not None:
            err = float(((x.double() - ode_targets[path_name]) ** 2).sum(1).mean())
            sw, gap = (err if math.isfinite(err) else math.inf), math.nan
        else:
            sw, gap = prob.score(x)
        rows.append(Row(prob.name, "polydiff", f"{config_name} {path_name}/{grid} ({steps} steps)",
                        solvers()[name].nfe(steps), sw, gap, dt, split))
    return rows


def run_reference(prob: Problem, noise: torch.Tensor) -> Row:
    D = prob.gmm.denoiser(paths.Flow())
    from polydiff.core import NFECounter
    counter = NFECounter(D)
    t0 = time.perf_counter()
    x = sample(counter, noise, path=paths.Flow(), solver="rk45", steps=20, grid="uniform", rtol=1e-6, atol=1e-6)
    dt = time.perf_counter() - t0
    sw, gap = prob.score(x)
    return Row(prob.name, "polydiff", "rk45 flow (rtol 1e-6, converged reference)", counter.nfe, sw, gap, dt)


def run_peer_rows(prob: Problem, noise: torch.Tensor, nfe: int, split: str = "test") -> List[Row]:
    try:
        import peers
    except ImportError as e:  # pragma: no cover - depends on the optional extra
        print(f"peers unavailable ({e}); install the `bench` extra", file=sys.stderr)
        return []
    out = []
    for r in peers.run_peers(prob.posterior, noise.float(), nfe):
        sw, gap = prob.score(r.samples)
        out.append(Row(prob.name, r.library, r.sampler, r.nfe, sw, gap, r.seconds, split))
    return out


def overhead(batch: int, dim: int, steps: int, repeats: int) -> Dict[str, float]:
    """Seconds per step with a trivial denoiser (zeros): polydiff dpmpp_2m vs diffusers, same process.

    The two are timed alternately, ``repeats`` times each, and the medians compared, so that load
    from other processes on a shared machine hits both alike.
    """
    def trivial(x, t):
        return torch.zeros_like(x)
    noise = torch.randn(batch, dim)
    try:
        import peers
    except ImportError:
        peers = None
    ours, theirs = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sample(trivial, noise, path=paths.VP(), solver="dpmpp_2m", steps=steps, grid="logsnr")
        ours.append((time.perf_counter() - t0) / steps)
        if peers is not None:
            theirs.append(peers.diffusers_step_overhead(batch, dim, steps, 1))
    res = {"polydiff_dpmpp_2m": statistics.median(ours)}
    if theirs:
        res["diffusers_dpmsolver_multistep"] = statistics.median(theirs)
        res["ratio"] = res["polydiff_dpmpp_2m"] / res["diffusers_dpmsolver_multistep"]
    return res

def best(rows: List[Row], library_filter, nfe: int, problem: str) -> Optional[Row]:
    cands = [r for r in rows if library_filter(r.library) and r.nfe <= nfe and r.problem == problem
             and math.isfinite(r.sw2)]
    return min(cands, key=lambda r: r.sw2) if cands else None


def headline(rows: List[Row], prob: Problem, nfe: int):
    """(polydiff's chosen config, its mean SW2, best peer config, its mean SW2), means over the test seeds.

    polydiff's configuration is chosen on the validation run (smallest global ODE error); the peers'
    best is chosen on the test seeds themselves (which can only favour the peers).
    """
    val = best([r for r in rows if r.split == "validation"], lambda l: l == "polydiff", nfe, prob.name)
    scored = [r for r in rows if r.split in ("test", "repeat") and r.problem == prob.name and r.nfe <= nfe]
    means: Dict[Tuple[str, str], List[float]] = {}
    for r in scored:
        means.setdefault((r.library, r.config), []).append(r.sw2)
    mean = {k: statistics.mean(v) for k, v in means.items() if len(v) > 1}
    ours = (val.config, mean.get(("polydiff", val.config), math.nan)) if val else (None, math.nan)
    peers = {k: v for k, v in mean.items() if k[0] != "polydiff" and math.isfinite(v)}
    peer = min(peers.items(), key=lambda kv: kv[1]) if peers else None
    return ours[0], ours[1], (f"{peer[0][0]} {peer[0][1]}" if peer else None), (peer[1] if peer else math.nan)


def plot(rows: List[Row], problems: List[Problem], path: str, nfes=NFES) -> None:
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(problems), figsize=(6.5 * len(problems), 4.8))
    for ax, prob in zip(axes, problems):
        for lib, style in (("polydiff", "-o"), ("peers", "--s")):
            ys = [headline(rows, prob, nfe)[1 if lib == "polydiff" else 3] for nfe in nfes]
            ax.plot(list(nfes), ys, style, label="polydiff (validation pick)" if lib == "polydiff" else "best peer")
        ax.axhline(prob.floor, color="k", lw=1, label="floor (exact vs exact)")
        ax.axhline(1.25 * prob.floor, color="k", lw=0.7, ls=":", label="1.25 x floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(nfes))
        ax.set_xticklabels([str(n) for n in nfes])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("denoiser evaluations (NFE)")
        ax.set_ylabel("sliced W2 to exact samples")
        ax.set_title(f"{prob.name}: {prob.gmm.K}-component ring, n={prob.n}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples and configurations (about 2 minutes)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nfe", type=int, nargs="+", default=list(NFES), help="NFE budgets (default: 5 10 20)")
    ap.add_argument("--solvers", default=None,
                    help="comma-separated polydiff solver names to run (e.g. 'fitted'); default: all")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    n = 5000 if args.quick else 20000
    started = time.time()
    problems = [Problem("2-D", analytic.ring_mixture(2), n, 1, 10),
                Problem("16-D", analytic.ring_mixture(16), n, 1, 10)]
    configs = polydiff_configs(args.quick)
    if args.solvers:
        wanted = set(args.solvers.split(","))
        unknown = wanted - {c[0] for c in configs}
        if unknown:
            ap.error(f"unknown polydiff solver(s) {sorted(unknown)}; valid: {sorted({c[0] for c in configs})}")
        configs = [c for c in configs if c[0] in wanted]
    rows: List[Row] = []
    for prob in problems:
        d = prob.gmm.dim
        noise = torch.randn(n, d, generator=torch.Generator().manual_seed(2))
        val_noise = torch.randn(2000, d, generator=torch.Generator().manual_seed(12))
        ode_targets = {p: sample(prob.gmm.denoiser(paths.get_path(p)), val_noise.double(), path=paths.get_path(p),
                                 solver="rk45", steps=20, grid="uniform", rtol=1e-7, atol=1e-7)
                       for p in ("flow", "vp")}
        fit_noise = torch.randn(FIT_DRAWS[args.quick], d, generator=torch.Generator().manual_seed(7))
        fitted: Dict = {}
        rows.append(run_reference(prob, noise))
        for nfe in args.nfe:
            print(f"[{time.time() - started:6.0f}s] {prob.name} NFE {nfe}", file=sys.stderr, flush=True)
            cfgs = [c for c in configs if c[0] != "fitted" or nfe in FIT_SOLVER_NFES[args.quick]]
            rows += run_polydiff(prob, noise, fit_noise, cfgs, nfe, "test", fitted)
            rows += run_polydiff(prob, val_noise, fit_noise, cfgs, nfe, "validation", fitted, ode_targets)
            rows += run_peer_rows(prob, noise, nfe)
            # repeats on more noise seeds for the headline: polydiff's validation pick and every peer
            pick = best([r for r in rows if r.split == "validation"], lambda l: l == "polydiff", nfe, prob.name)
            chosen = [c for c in cfgs if pick and pick.config.startswith(f"{c[0]} {c[1]}/{c[2]} ")]
            for seed in REPEAT_SEEDS[: 2 if args.quick else 4]:
                rep_noise = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
                rows += run_polydiff(prob, rep_noise, fit_noise, chosen, nfe, "repeat", fitted)
                rows += run_peer_rows(prob, rep_noise, nfe, "repeat")
    ovh = overhead(200_000, 16, 20, 7)
    lines = report(rows, problems, ovh, args, time.time() - started)
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(args.out, "solvers.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "solvers.json"), "w") as f:
        json.dump({"rows": [asdict(r) for r in rows], "floors": {p.name: p.floors for p in problems},
                   "overhead": ovh}, f, indent=1)
    plot(rows, problems, os.path.join(args.out, "solvers.png"), args.nfe)
    print(f"\nwrote {args.out}/solvers.md, solvers.json, solvers.png")
    return 0


def report(rows: List[Row], problems: List[Problem], ovh: Dict[str, float], args, seconds: float) -> List[str]:
    test = [r for r in rows if r.split == "test"]
    L = [f"# Solver benchmark ({'quick' if args.quick else 'full'}), {time.strftime('%Y-%m-%d')}, "
         f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads, "
         f"{seconds:.0f} s", ""]
    L.append("## Headline: SW2 means over the test noise seeds")
    L.append("")
    L.append("polydiff's configuration is chosen on a separate validation run (deterministic solvers, smallest "
             "global error against the converged ODE from the same noise); the best peer is chosen on the test "
             "seeds themselves. Ratios to the floor use the mean floor.")
    L.append("")
    L.append("| problem | NFE | floor | polydiff (validation pick) | SW2 | x floor | best peer | SW2 | x floor | polydiff / peer |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for prob in problems:
        for nfe in args.nfe:
            cfg, ours, peer_cfg, peer = headline(rows, prob, nfe)
            L.append(f"| {prob.name} | {nfe} | {prob.floor:.4f} | {cfg} | {ours:.4f} | {ours / prob.floor:.2f} | "
                     f"{peer_cfg} | {peer:.4f} | {peer / prob.floor:.2f} | {ours / peer:.2f} |")
    L.append("")
    L.append("Floors: mean SW2 between independent exact sets and the reference set (10 sets): "
             + "; ".join(f"{p.name}: {p.floor:.4f} (sd {statistics.stdev(p.floors):.4f}, range "
                         f"{min(p.floors):.4f}-{max(p.floors):.4f})" for p in problems))
    L.append("")
    if "ratio" in ovh:
        L.append(f"Solver overhead per step (trivial denoiser, batch 200000 x 16): polydiff dpmpp_2m "
                 f"{1e3 * ovh['polydiff_dpmpp_2m']:.2f} ms, diffusers DPMSolverMultistep "
                 f"{1e3 * ovh['diffusers_dpmsolver_multistep']:.2f} ms, ratio {ovh['ratio']:.2f}")
    else:
        L.append(f"Solver overhead per step: polydiff dpmpp_2m {1e3 * ovh['polydiff_dpmpp_2m']:.2f} ms (peers not installed)")
    L.append("")
    for prob in problems:
        L.append(f"## {prob.name}: all configurations (test run), sorted by NFE then SW2")
        L.append("")
        L.append("| library | configuration | NFE | SW2 | x floor | E[log p] gap | seconds |")
        L.append("|---|---|---|---|---|---|---|")
        for r in sorted([r for r in test if r.problem == prob.name], key=lambda r: (r.nfe, r.sw2)):
            L.append(f"| {r.library} | {r.config} | {r.nfe} | {r.sw2:.4f} | {r.sw2 / prob.floor:.2f} | "
                     f"{r.logp_gap:+.3f} | {r.seconds:.3f} |")
        L.append("")
    return L


if __name__ == "__main__":
    sys.exit(main())
