"""Discrete-diffusion benchmark: polydiff's discrete samplers, ELBOs and guidance against exact models.

Models (``polydiff.core.analytic``), all over strings of length L = 6 on V = 4 symbols (4096 sequences):
a product of categoricals, a sticky Markov chain and a peaked random table. Processes
(``polydiff.core.discrete``): masked, uniform, marginal (the data's symbol frequencies as noise) and GIDD's
hybrid (p_uniform = 0.2). Every denoiser below is the model's exact one, so only the samplers differ.

Sections (``--sections``):
  tv        for every model x process x sampler x step count: the TV distance between the empirical
            distribution of n samples and the exact distribution (Monte Carlo, "MC"), next to the MC floor
            (mean TV of n exact samples over 5 draws) and to the TV of the sampler's exact output distribution
            (``discrete.exact_distribution``, no MC noise: the sampler's bias). first_hitting (exact at any
            step count, NFE = L) has MC only.
  elbo      -ELBO minus the exact NLL -log p(x0), in nats per sequence, for K sequences x0 ~ p: the
            continuous-time ELBO (64 quadrature nodes, exact sum over x_t) and D3PM's T-step bound; each
            D3PM bound is also checked against the exact -log p_T(x0) of the T-step ancestral sampler it
            bounds; and the one-sample estimator's mean and standard error (uniform vs stratified times).
  remdm     ReMDM remasking with imperfect denoisers (the exact logits plus fixed Gaussian noise: the same
            size everywhere, or large when few tokens are visible and zero when all are): exact TV of the
            output distribution for ancestral, ReMDM-cap, ReMDM-rescale and predictor-corrector sampling.
  guidance  discrete classifier-free guidance on a two-class table (class log-probability, accuracy,
            entropy; next to the sequence-level target p(x|y)^w p(x)^(1-w)) and SVDD reward guidance on
            the Markov chain (mean reward, entropy and distinct sequences; next to the tilted target
            p(x) exp(r(x)/alpha)). Diversity is measured as the core's docs state it: entropy and the
            number of distinct sequences.

Sizes. Full: the Markov chain on all four processes (MC at 2, 8, 32 and 128 steps), the product and the
table on masked and uniform (MC at 8 and 128 steps), exact TV at 1, 2, ..., 128 steps, n = 100000; about
an hour on 2 shared cores. --quick: the Markov chain, masked and uniform, 2, 8 and 32 steps, n = 20000,
smaller ELBO, ReMDM and guidance runs (about 1.5 CPU-minutes).

Implementation note: the exact denoisers are evaluated through ``AllStates``, which computes the exact
p(x0_l | x_t) for all S^L states at once (Kronecker-structured sums over the model's table) and looks the
batch up; it is checked against each model's own ``denoiser`` before use. For masked processes the exact
denoiser does not depend on t, so one table serves every step.

Usage: python benchmarks/discrete.py [--quick] [--out DIR] [--threads N] [--n N] [--sections tv,elbo,...]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

import polydiff.core.discrete as discrete
from polydiff.core import analytic, sample

Tensor = torch.Tensor
V, L = 4, 6
SECTIONS = ("tv", "elbo", "remdm", "guidance")
HERE = os.path.dirname(os.path.abspath(__file__))


# --------------------------------------------------------------------------------------------- exact models
def make_models(quick: bool) -> Dict[str, analytic.discrete.DiscreteSequenceModel]:
    g = torch.Generator().manual_seed(0)
    models = {"markov": analytic.MarkovChain.random(V, L, stickiness=2.0, seed=1)}
    if not quick:
        models["product"] = analytic.ProductCategorical(torch.softmax(1.5 * torch.randn(L, V, generator=g,
                                                                                        dtype=torch.float64), -1))
        models["table"] = analytic.SequenceTable.random(V, L, concentration=0.3, seed=1)
    return models


def symbol_freqs(model) -> Tensor:
    """The data's marginal symbol frequencies (DiGress's marginal prior)."""
    seqs, p = model.sequences(), model.probs()
    return (torch.nn.functional.one_hot(seqs, V).double().mean(1) * p[:, None]).sum(0)


def make_processes(model, quick: bool, all_processes: bool = True) -> Dict[str, discrete.Process]:
    procs = {"masked": discrete.Masked(V), "uniform": discrete.Uniform(V)}
    if not quick and all_processes:
        procs["marginal"] = discrete.Marginal(symbol_freqs(model))
        procs["hybrid"] = discrete.Hybrid(V, p_uniform=0.2)
    return procs


def samplers_for(proc: discrete.Process) -> List[Tuple[str, str, Dict[str, Any]]]:
    """(label, solver, options) of the grid samplers that accept ``proc``."""
    out = [("ancestral", "ancestral", {}), ("tau_leaping", "tau_leaping", {})]
    if isinstance(proc, discrete.Masked):
        out.append(("remdm-cap 0.02", "remdm", {"eta": 0.02}))
    out.append(("pc", "pc", {}))
    return out


class AllStates:
    """Exact denoiser of a table over V^L sequences, computed for all S^L states x_t at once and looked up.

    p(x0_l = v | x_t) is proportional to sum_{x0: x0_l = v} p(x0) prod_j E[x_t,j, x0_j] with the emission
    matrix E[s, v] = q(x_t = s | x0 = v) at time t; the sum over the other positions is a sequence of
    mode products of the (V,)*L table with E, so all S^L states cost about L^2 S^L V flops. ``tables``
    maps a label (None: unconditional) to the model's probabilities over the sequences. ``calls`` counts
    evaluations. Masked processes: one table for every t (the exact denoiser is time-agnostic).
    """

    def __init__(self, tables: Dict[Any, Tensor], proc: discrete.Process, length: int, cache: int = 8) -> None:
        self.tables = {k: v.reshape([proc.vocab_size] * length) for k, v in tables.items()}
        self.proc, self.L, self.S = proc, length, proc.num_states
        self.powers = self.S ** torch.arange(length - 1, -1, -1)
        self.time_agnostic = isinstance(proc, discrete.Masked)
        self.cache: "OrderedDict[Tuple[Any, float], Tensor]" = OrderedDict()
        self.cache_size = cache
        self.calls = 0

    def logits_all(self, t: float, label: Any = None) -> Tensor:
        key = (label, 0.5 if self.time_agnostic else float(t))
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        P, S, Lq = self.tables[label], self.S, self.L
        E = self.proc.likelihood(torch.arange(S)[None], torch.tensor([key[1]], dtype=torch.float64))[0]   # (S, V)
        num = []
        for l in range(Lq):
            T = P
            for j in range(Lq):
                if j != l:
                    T = torch.tensordot(E, T, dims=([1], [j])).movedim(0, j)
            T = T.movedim(l, -1).unsqueeze(l)                     # (S,)*l + (1,) + (S,)*(L-1-l) + (V,)
            shape = [1] * Lq + [E.shape[1]]
            shape[l] = S
            num.append((T * E.reshape(shape)).reshape(S ** Lq, -1))
        N = torch.stack(num, 1)
        out = torch.log(N / N.sum(-1, keepdim=True))
        self.cache[key] = out
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return out

    def __call__(self, x: Tensor, t: Tensor, label: Any = None) -> Tensor:
        self.calls += 1
        if isinstance(label, Tensor):
            if label.dim() > 0 and not (label == label.reshape(-1)[0]).all():
                raise ValueError("AllStates takes one label per call")
            label = int(label.reshape(-1)[0])
        idx = (x * self.powers.to(x.device)).sum(1)
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        if self.time_agnostic:
            return self.logits_all(0.5, label)[idx]
        tu, inv = torch.unique(t, return_inverse=True)
        if tu.numel() == 1:
            return self.logits_all(float(tu[0]), label)[idx]
        out = torch.empty(x.shape + (self.proc.vocab_size,), dtype=torch.float64)
        for k, tk in enumerate(tu.tolist()):
            rows = inv == k
            out[rows] = self.logits_all(tk, label)[idx[rows]]
        return out


def exact_denoiser(model, proc: discrete.Process) -> AllStates:
    """``AllStates`` for ``model``, checked against the model's own exact denoiser on forward draws."""
    D = AllStates({None: model.probs()}, proc, L)
    g = torch.Generator().manual_seed(99)
    x0 = model.sample(256, g)
    ref = model.denoiser(proc)
    for t in (0.2, 0.6, 0.95):
        xt = proc.sample_marginal(x0, t, g)
        tt = torch.full((256,), t, dtype=torch.float64)
        a, b = D(xt, tt).exp(), ref(xt, tt).exp()
        if not torch.allclose(a, b, atol=1e-9):
            raise RuntimeError(f"AllStates disagrees with the model's denoiser on {proc!r} at t={t}: "
                               f"{float((a - b).abs().max()):.3g}")
    D.calls = 0
    return D


def tv(p: Tensor, q: Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


def mc_floor(model, n: int, draws: int, seed: int) -> float:
    """Mean TV between the histogram of n exact samples and p over ``draws`` draws."""
    g = torch.Generator().manual_seed(seed)
    return sum(model.tv(model.sample(n, g)) for _ in range(draws)) / draws


def entropy_mm(x: Tensor, model) -> Tuple[float, int]:
    """Miller-Madow entropy estimate (nats) of the samples and their number of distinct sequences."""
    h = model.histogram(x)
    nz = h[h > 0]
    k = int(nz.numel())
    return float(-(nz * nz.log()).sum()) + (k - 1) / (2 * x.shape[0]), k


def entropy(p: Tensor) -> float:
    nz = p[p > 0]
    return float(-(nz * nz.log()).sum())


# --------------------------------------------------------------------------------------------- 1. TV vs steps
def section_tv(models, args, log) -> Dict[str, Any]:
    rows, fh, floors = [], [], {}
    for mname, model in models.items():
        p = model.probs()
        floors[mname] = {"mc": mc_floor(model, args.n, 5, 3), "normal": model.tv_floor(args.n)}
        log(f"tv: {mname} floor {floors[mname]['mc']:.4f}")
        main = mname == "markov"          # the other models: masked and uniform only, fewer MC step counts
        mc_steps = args.steps if args.quick else (args.mc_steps_main if main else args.mc_steps)
        for pname, proc in make_processes(model, args.quick, main).items():
            D = exact_denoiser(model, proc)
            if isinstance(proc, discrete.Masked):
                g = torch.Generator().manual_seed(11)
                D.calls = 0
                x = sample(D, proc.prior_sample((args.n, L), g), path=proc, solver="first_hitting", generator=g)
                fh.append({"model": mname, "process": pname, "nfe": D.calls, "tv_mc": model.tv(x)})
            for label, solver, opts in samplers_for(proc):
                for steps in args.steps:
                    D.calls = 0
                    exact = discrete.exact_distribution(D, proc, L, solver=solver, steps=steps, **opts)
                    nfe = D.calls                                  # exact_distribution makes the same calls
                    tv_mc = None
                    if steps in mc_steps:
                        g = torch.Generator().manual_seed(1000 + steps)
                        x = sample(D, proc.prior_sample((args.n, L), g), path=proc, solver=solver, steps=steps,
                                   generator=g, **opts)
                        tv_mc = model.tv(x)
                    rows.append({"model": mname, "process": pname, "sampler": label, "steps": steps, "nfe": nfe,
                                 "tv_exact": tv(exact, p), "tv_mc": tv_mc})
                log(f"tv: {mname} {pname} {label}: exact TV " +
                    " ".join(f"{r['tv_exact']:.4f}" for r in rows[-len(args.steps):]))
    return {"rows": rows, "first_hitting": fh, "floors": floors, "n": args.n}


def report_tv(res: Dict[str, Any], steps: Sequence[int]) -> List[str]:
    out = ["## 1. TV distance to the exact distribution against steps (exact denoiser)", "",
           f"n = {res['n']} samples per cell, over all {V ** L} sequences. Each cell: MC TV (samples) / exact TV "
           "of the sampler's output distribution (its bias, no MC noise). The MC floor is the mean TV of n "
           "exact samples (5 draws); 'x floor' is MC TV at the most steps over the floor.", ""]
    for mname, fl in res["floors"].items():
        out.append(f"**{mname}**: MC floor {fl['mc']:.4f} (normal approximation {fl['normal']:.4f})")
        out.append("")
        out.append("| process | sampler | NFE/step | " + " | ".join(f"{s} steps" for s in steps) + " | x floor |")
        out.append("|---|---|---|" + "---|" * len(steps) + "---|")
        for r in res["first_hitting"]:
            if r["model"] == mname:
                out.append(f"| {r['process']} | first_hitting | NFE {r['nfe']} in all | "
                           + " | ".join([f"{r['tv_mc']:.4f} / exact"] + ["(same)"] * (len(steps) - 1))
                           + f" | {r['tv_mc'] / fl['mc']:.2f} |")
        keys = []
        for r in res["rows"]:
            if r["model"] == mname and (r["process"], r["sampler"]) not in keys:
                keys.append((r["process"], r["sampler"]))
        for pname, label in keys:
            rr = [r for r in res["rows"] if r["model"] == mname and r["process"] == pname and r["sampler"] == label]
            per = rr[-1]["nfe"] / rr[-1]["steps"]
            cells = [("-" if r["tv_mc"] is None else f"{r['tv_mc']:.4f}") + f" / {r['tv_exact']:.4f}" for r in rr]
            out.append(f"| {pname} | {label} | {per:.2g} | " + " | ".join(cells) + f" | {rr[-1]['tv_mc'] / fl['mc']:.2f} |")
        out.append("")
    bad = []
    groups: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = {}
    for r in res["rows"]:
        groups.setdefault((r["model"], r["process"], r["sampler"]), []).append(r)
    for key, rr in groups.items():
        e = [r["tv_exact"] for r in rr]
        if not e[-1] < 0.25 * e[0]:
            bad.append(f"{'/'.join(key)} (exact TV {e[0]:.3f} -> {e[-1]:.3f})")
    worst = max(groups.items(), key=lambda kv: kv[1][-1]["tv_mc"] / res["floors"][kv[0][0]]["mc"])
    out.append(f"Exact TV at {steps[-1]} steps is below a quarter of its {steps[0]}-step value for "
               f"{len(groups) - len(bad)} of {len(groups)} sampler configurations"
               + (f"; not for: {', '.join(bad)}." if bad else "."))
    k, rr = worst
    out.append(f"At {steps[-1]} steps the largest MC TV relative to the floor is {rr[-1]['tv_mc'] / res['floors'][k[0]]['mc']:.2f}x "
               f"({'/'.join(k)}). first_hitting: " + ", ".join(
                   f"{r['model']}/{r['process']} {r['tv_mc'] / res['floors'][r['model']]['mc']:.2f}x floor"
                   for r in res["first_hitting"]) + ".")
    out.append("")
    return out


# --------------------------------------------------------------------------------------------- 2. ELBO gap
def section_elbo(models, args, log) -> Dict[str, Any]:
    rows, mc = [], []
    for mname, model in models.items():
        g = torch.Generator().manual_seed(21)
        x0_all = model.sample(args.elbo_k, g)
        for pname, proc in make_processes(model, args.quick, mname == "markov").items():
            x0 = x0_all[: args.elbo_k_states.get(proc.num_states ** L, args.elbo_k)]
            nll = -model.log_prob(x0)
            D = exact_denoiser(model, proc)
            t0 = time.time()
            c64 = discrete.ContinuousELBO(proc).nelbo_exact(D, x0, nodes=64)
            c32 = discrete.ContinuousELBO(proc).nelbo_exact(D, x0, nodes=32)
            gap = c64 - nll
            rows.append({"model": mname, "process": pname, "loss": "continuous", "T": None, "k": x0.shape[0],
                         "gap_mean": float(gap.mean()), "gap_se": float(gap.std() / math.sqrt(gap.numel())),
                         "gap_min": float(gap.min()), "quad_change": float((c64 - c32).abs().max()),
                         "margin_pT_min": None})
            for T in args.d3pm_steps:
                k = min(x0.shape[0], args.d3pm_k.get((pname, T), x0.shape[0]))
                if k == 0:
                    continue
                d3 = discrete.D3PMLoss(proc, steps=T).nelbo_exact(D, x0[:k])
                gap = d3 - nll[:k]
                margin = None
                if T <= args.exact_pt_max:     # -ELBO_T(x0) >= -log p_T(x0), p_T the T-step ancestral sampler
                    pT = discrete.exact_distribution(D, proc, L, solver="ancestral", steps=T)
                    margin = float((d3 + torch.log(pT[model.index(x0[:k])])).min())
                rows.append({"model": mname, "process": pname, "loss": "d3pm", "T": T, "k": k,
                             "gap_mean": float(gap.mean()), "gap_se": float(gap.std() / math.sqrt(gap.numel())),
                             "gap_min": float(gap.min()), "quad_change": None, "margin_pT_min": margin})
            log(f"elbo: {mname} {pname} {time.time() - t0:.0f}s: " +
                ", ".join(f"{r['loss']}{r['T'] or ''} {r['gap_mean']:.2e}" for r in rows
                          if r["model"] == mname and r["process"] == pname))
            # the one-sample estimator (what training and evaluation use), with the model's own denoiser
            ref = model.denoiser(proc)
            xb = model.sample(args.elbo_mc, torch.Generator().manual_seed(22))
            nll_b = -model.log_prob(xb)
            for ts in ("uniform", "stratified"):
                est = discrete.ContinuousELBO(proc, time_sampler=ts)
                vals = torch.cat([est.nelbo(ref, xb[i:i + 4096], generator=torch.Generator().manual_seed(23 + i))
                                  for i in range(0, xb.shape[0], 4096)]) - nll_b
                mc.append({"model": mname, "process": pname, "time_sampler": ts, "mean_gap": float(vals.mean()),
                           "se": float(vals.std() / math.sqrt(vals.numel()))})
    return {"rows": rows, "mc": mc, "k": args.elbo_k, "n_mc": args.elbo_mc}


def report_elbo(res: Dict[str, Any]) -> List[str]:
    out = ["## 2. ELBO gap to the exact NLL (exact denoiser)", "",
           f"-ELBO(x0) + log p(x0) in nats per sequence for K sequences x0 ~ p (K = {res['k']}; column K): mean +- "
           "standard error "
           "(an unbiased estimate of E_p[-ELBO] - H(p)) and the minimum over the K sequences. Continuous: "
           "64 Gauss-Legendre nodes (|64 - 32 nodes| in the last column); D3PM: the exact sum over its T steps. "
           "'vs p_T' is min over x0 of -ELBO_T(x0) + log p_T(x0), with p_T the exact output distribution of "
           "the T-step ancestral sampler that D3PM's bound is a bound for (must be >= 0).", "",
           "| model | process | loss | K | gap mean +- se | gap min | vs p_T (min) | quadrature change |",
           "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        loss = "continuous" if r["loss"] == "continuous" else f"D3PM T={r['T']}"
        m = "" if r["margin_pT_min"] is None else f"{r['margin_pT_min']:.2e}"
        q = "" if r["quad_change"] is None else f"{r['quad_change']:.1e}"
        out.append(f"| {r['model']} | {r['process']} | {loss} | {r['k']} | {r['gap_mean']:.2e} +- {r['gap_se']:.1e} | "
                   f"{r['gap_min']:.2e} | {m} | {q} |")
    out.append("")
    out.append(f"One-sample estimator ``ContinuousELBO.nelbo`` (what training and evaluation use) on {res['n_mc']} "
               "draws x0 ~ p with the model's own denoiser: mean of -ELBO-estimate(x0) + log p(x0) +- standard error "
               "(unbiased: must cover the tiny exact gap above).")
    out.append("")
    out.append("| model | process | uniform times | stratified times |")
    out.append("|---|---|---|---|")
    keys = []
    for r in res["mc"]:
        if (r["model"], r["process"]) not in keys:
            keys.append((r["model"], r["process"]))
    for k in keys:
        rr = {r["time_sampler"]: r for r in res["mc"] if (r["model"], r["process"]) == k}
        out.append(f"| {k[0]} | {k[1]} | " + " | ".join(f"{rr[t]['mean_gap']:+.4f} +- {rr[t]['se']:.4f}"
                                                      for t in ("uniform", "stratified")) + " |")
    cont = [r for r in res["rows"] if r["loss"] == "continuous"]
    d3 = [r for r in res["rows"] if r["loss"] == "d3pm"]
    Tmax = max(r["T"] for r in d3) if d3 else None
    out.append("")
    out.append(f"Continuous ELBO: every per-sequence gap >= {min(r['gap_min'] for r in cont):.1e} and mean gap <= "
               f"{max(r['gap_mean'] for r in cont):.1e} nats. D3PM at T = {Tmax}: mean gap <= "
               f"{max(r['gap_mean'] for r in d3 if r['T'] == Tmax):.4f} nats."
               + (" Every D3PM bound is >= -log p_T(x0) of its own sampler (min margin "
                  f"{min(r['margin_pT_min'] for r in d3 if r['margin_pT_min'] is not None):.1e})."
                  if any(r["margin_pT_min"] is not None for r in d3) else ""))
    out.append("")
    return out


# --------------------------------------------------------------------------------------------- 3. ReMDM
def section_remdm(args, log) -> Dict[str, Any]:
    model = analytic.MarkovChain.random(V, L, stickiness=2.0, seed=1)
    p = model.probs()
    proc = discrete.Masked(V)
    D = exact_denoiser(model, proc)
    exact_logits = D.logits_all(0.5)
    states = torch.cartesian_prod(*[torch.arange(proc.num_states)] * L)
    masked_frac = (states == proc.mask_id).double().mean(1)
    noise = torch.randn(exact_logits.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    powers = proc.num_states ** torch.arange(L - 1, -1, -1)

    def lookup(table: Tensor) -> Callable[..., Tensor]:
        return lambda x, t: table[(x * powers).sum(1)]

    denoisers = {} if args.quick else {"exact": lookup(exact_logits)}
    denoisers.update({
                      "noise 1.0 (everywhere)": lookup(exact_logits + 1.0 * noise),
                      "noise 2.0 x masked^2 (early errors)": lookup(exact_logits + 2.0 * masked_frac[:, None, None] ** 2
                                                                    * noise)})
    configs = [("ancestral", "ancestral", {}), ("remdm-cap 0.02", "remdm", {"eta": 0.02}),
               ("remdm-cap 0.05", "remdm", {"eta": 0.05}), ("remdm-rescale 0.5", "remdm", {"schedule": "rescale", "eta": 0.5}),
               ("pc", "pc", {})]
    if args.quick:
        configs = [c for c in configs if c[0] in ("ancestral", "remdm-cap 0.05", "pc")]
    rows, fh = [], []
    for dname, Dn in denoisers.items():
        g = torch.Generator().manual_seed(31)
        x = sample(Dn, proc.prior_sample((args.n, L), g), path=proc, solver="first_hitting", generator=g)
        fh.append({"denoiser": dname, "tv_mc": model.tv(x)})
        for label, solver, opts in configs:
            for steps in args.remdm_steps:
                d = discrete.exact_distribution(Dn, proc, L, solver=solver, steps=steps, **opts)
                rows.append({"denoiser": dname, "sampler": label, "steps": steps, "tv_exact": tv(d, p)})
            log(f"remdm: {dname} {label}: " + " ".join(f"{r['tv_exact']:.4f}" for r in rows[-len(args.remdm_steps):]))
    # one Monte-Carlo check that the exact distributions describe the sampler's draws
    dname, steps = "noise 2.0 x masked^2 (early errors)", args.remdm_steps[-1]
    g = torch.Generator().manual_seed(32)
    x = sample(denoisers[dname], proc.prior_sample((args.n, L), g), path=proc, solver="remdm", steps=steps, eta=0.05,
               generator=g)
    ex = discrete.exact_distribution(denoisers[dname], proc, L, solver="remdm", steps=steps, eta=0.05)
    check = {"denoiser": dname, "steps": steps, "tv_mc_vs_exact_output": tv(model.histogram(x), ex),
             "floor_of_exact_output": 0.5 * float(torch.sqrt(2 * ex * (1 - ex) / (math.pi * args.n)).sum())}
    return {"rows": rows, "first_hitting": fh, "check": check, "n": args.n}


def report_remdm(res: Dict[str, Any], steps: Sequence[int]) -> List[str]:
    out = ["## 3. ReMDM remasking with imperfect denoisers (Markov chain, masked process)", "",
           "Exact TV of each sampler's output distribution to p (no Monte-Carlo noise). The imperfect denoisers "
           "add fixed N(0, 1) noise to the exact logits (a fixed function of the state x_t, the same at every t): "
           "'everywhere' with scale 1; 'early errors' with scale 2 x (fraction masked)^2, so the model is wrong "
           f"when few tokens are visible and exact when all are. first_hitting (MC, n = {res['n']}) is the "
           "limit of ancestral sampling at infinitely many steps.", "",
           "| denoiser | sampler | " + " | ".join(f"{s} steps" for s in steps) + " |",
           "|---|---|" + "---|" * len(steps)]
    dn = []
    for r in res["rows"]:
        if r["denoiser"] not in dn:
            dn.append(r["denoiser"])
    for d in dn:
        labels = []
        for r in res["rows"]:
            if r["denoiser"] == d and r["sampler"] not in labels:
                labels.append(r["sampler"])
        for lab in labels:
            rr = [r for r in res["rows"] if r["denoiser"] == d and r["sampler"] == lab]
            out.append(f"| {d} | {lab} | " + " | ".join(f"{r['tv_exact']:.4f}" for r in rr) + " |")
        f = [r for r in res["first_hitting"] if r["denoiser"] == d][0]
        out.append(f"| {d} | first_hitting (MC) | " + " | ".join([f"{f['tv_mc']:.4f}"] + [""] * (len(steps) - 1)) + " |")
    c = res["check"]
    out += ["", f"MC check: remdm-cap 0.05 at {c['steps']} steps with '{c['denoiser']}': TV between {res['n']} samples "
            f"and the computed output distribution {c['tv_mc_vs_exact_output']:.4f} (its MC floor "
            f"{c['floor_of_exact_output']:.4f}).", ""]
    best = {}
    for d in dn:
        last = {r["sampler"]: r["tv_exact"] for r in res["rows"] if r["denoiser"] == d and r["steps"] == steps[-1]}
        rem = {k: v for k, v in last.items() if k.startswith("remdm")}
        k = min(rem, key=rem.get)
        best[d] = (k, rem[k], last["ancestral"], last.get("pc"))
    out.append("At " + f"{steps[-1]} steps: " + "; ".join(
        f"{d}: best ReMDM ({k}) {v:.4f} vs ancestral {a:.4f}" + (f", pc {pc_:.4f}" if pc_ is not None else "")
        for d, (k, v, a, pc_) in best.items()) + ".")
    out.append("")
    return out


# --------------------------------------------------------------------------------------------- 4. guidance
def section_guidance(args, log) -> Dict[str, Any]:
    proc = discrete.Masked(V)
    # classifier-free guidance on a two-class table
    ct = analytic.ConditionalTable.random(V, L, num_classes=2, concentration=0.5, seed=3)
    y = 0
    D = AllStates({0: ct.probs(0), 1: ct.probs(1), ct.null_label: ct.probs()}, proc, L)
    seqs = ct.sequences()
    logpy = ct.class_log_prob(seqs)[:, y]                       # log p(y | x) for every sequence
    acc_of = (ct.class_log_prob(seqs).argmax(1) == y).double()
    pc_, pu = ct.probs(y), ct.probs()
    cfg_rows = []
    for w in args.cfg_scales:
        Dg = discrete.ClassifierFreeGuidance(D, w, uncond={"label": ct.null_label})
        d = discrete.exact_distribution(Dg, proc, L, solver="ancestral", steps=args.guid_steps, cond={"label": y})
        target = pc_.pow(w) * pu.pow(1 - w)
        target = target / target.sum()
        g = torch.Generator().manual_seed(41)
        x = sample(Dg, proc.prior_sample((args.n, L), g), path=proc, solver="first_hitting", cond={"label": y},
                   generator=g)
        idx = ct.index(x)
        h_fh, k_fh = entropy_mm(x, ct)
        cfg_rows.append({"w": w, "logpy": float(d @ logpy), "acc": float(d @ acc_of), "H": entropy(d),
                         "tv_target": tv(d, target), "target_logpy": float(target @ logpy), "target_H": entropy(target),
                         "fh_logpy": float(logpy[idx].mean()), "fh_acc": float(acc_of[idx].mean()), "fh_H": h_fh,
                         "fh_distinct": k_fh})
        log(f"guidance: cfg w={w}: log p(y|x) {cfg_rows[-1]['logpy']:.3f}, H {cfg_rows[-1]['H']:.3f}")
    # SVDD on the Markov chain, reward = number of zeros
    chain = analytic.MarkovChain.random(V, L, stickiness=2.0, seed=1)
    Dm = exact_denoiser(chain, proc)
    cs = chain.sequences()
    reward_all = (cs == 0).sum(1).double()
    reward = lambda x: (x == 0).sum(1).double()  # noqa: E731
    pm = chain.probs()
    svdd_rows = []
    for alpha in (None,) + tuple(args.svdd_alphas):
        g = torch.Generator().manual_seed(51)
        x1 = proc.prior_sample((args.n_svdd, L), g)
        if alpha is None:
            x = sample(Dm, x1, path=proc, solver="ancestral", steps=args.guid_steps, generator=g)
            target = pm
        else:
            x = sample(Dm, x1, path=proc, solver="svdd", steps=args.guid_steps, reward=reward,
                       num_candidates=args.svdd_m, alpha=alpha, generator=g)
            target = None
            if alpha > 0:
                target = pm * torch.exp(reward_all / alpha)
                target = target / target.sum()
        h, k = entropy_mm(x, chain)
        svdd_rows.append({"alpha": alpha, "reward": float(reward(x).mean()), "H": h, "distinct": k,
                          "target_reward": None if target is None else float(target @ reward_all),
                          "target_H": None if target is None else entropy(target),
                          "tv_target": None if target is None else tv(chain.histogram(x), target)})
        log(f"guidance: svdd alpha={alpha}: reward {svdd_rows[-1]['reward']:.3f}, H {h:.3f}")
    return {"cfg": cfg_rows, "svdd": svdd_rows, "n": args.n, "n_svdd": args.n_svdd, "steps": args.guid_steps,
            "M": args.svdd_m, "cond_H": entropy(pc_), "uncond_H": entropy(pu), "p_H": chain.entropy()}


def report_guidance(res: Dict[str, Any]) -> List[str]:
    out = ["## 4. Guidance", "",
           f"**Classifier-free guidance** on a two-class table (``ConditionalTable.random(4, 6, 2, 0.5, seed=3)``), "
           f"class y = 0, masked process. 'ancestral': the exact output distribution of {res['steps']}-step "
           f"ancestral sampling with the guided denoiser; 'first_hitting': {res['n']} samples (entropy: Miller-Madow). "
           f"'target': the sequence-level p(x|y)^w p(x)^(1-w), which the per-position guidance only approximates "
           f"(H(p(x|y)) = {res['cond_H']:.3f}, H(p(x)) = {res['uncond_H']:.3f} nats).", "",
           "| w | E log p(y given x) | P(argmax = y) | entropy | TV to target | target: E log p(y given x) | target entropy "
           "| first_hitting: E log p(y given x) | P(argmax = y) | entropy | distinct |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["cfg"]:
        out.append(f"| {r['w']:g} | {r['logpy']:.3f} | {r['acc']:.3f} | {r['H']:.3f} | {r['tv_target']:.3f} | "
                   f"{r['target_logpy']:.3f} | {r['target_H']:.3f} | {r['fh_logpy']:.3f} | {r['fh_acc']:.3f} | "
                   f"{r['fh_H']:.3f} | {r['fh_distinct']} |")
    out += ["", f"**SVDD** (``solver=\"svdd\"``, M = {res['M']} candidates, {res['steps']} steps, {res['n_svdd']} "
            f"samples) on the Markov chain (H(p) = {res['p_H']:.3f} nats), reward r(x) = number of zeros. Target: "
            "p(x) exp(r(x)/alpha) (alpha = 0: a greedy search, no tilted target). Entropy: Miller-Madow.", "",
            "| alpha | mean reward | entropy | distinct | target mean reward | target entropy | TV to target |",
            "|---|---|---|---|---|---|---|"]
    for r in res["svdd"]:
        a = "unguided (ancestral)" if r["alpha"] is None else f"{r['alpha']:g}"
        tr = "" if r["target_reward"] is None else f"{r['target_reward']:.3f}"
        th = "" if r["target_H"] is None else f"{r['target_H']:.3f}"
        tvt = "" if r["tv_target"] is None else f"{r['tv_target']:.3f}"
        out.append(f"| {a} | {r['reward']:.3f} | {r['H']:.3f} | {r['distinct']} | {tr} | {th} | {tvt} |")
    out.append("")
    return out


# --------------------------------------------------------------------------------------------- plot and main
def plot(results: Dict[str, Any], args, path: str) -> None:
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    if "tv" in results:
        res = results["tv"]
        for ax, pname in zip(axes[0, :2], ("masked", "uniform")):
            for (mname, lab), rr in _groups(res["rows"], "markov", pname).items():
                nfe = [r["nfe"] for r in rr]
                line, = ax.plot(nfe, [r["tv_exact"] for r in rr], "-", label=f"{lab} (exact output)")
                mc = [(r["nfe"], r["tv_mc"]) for r in rr if r["tv_mc"] is not None]
                ax.plot([a for a, _ in mc], [b for _, b in mc], "o", color=line.get_color(), ms=4)
            for r in res["first_hitting"]:
                if r["model"] == "markov" and r["process"] == pname:
                    ax.plot([r["nfe"]], [r["tv_mc"]], "k*", ms=12, label="first_hitting (MC)")
            ax.axhline(res["floors"]["markov"]["mc"], color="k", ls="--", lw=1, label=f"MC floor, n={res['n']}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ticks = sorted({r["nfe"] for r in res["rows"] if r["model"] == "markov" and r["process"] == pname})
            ax.set_xticks(ticks)
            ax.set_xticklabels([str(t) for t in ticks])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("NFE")
            ax.set_ylabel("TV to exact distribution")
            ax.set_title(f"Markov chain, {pname}: lines exact output, dots MC")
            ax.legend(fontsize=7)
    if "elbo" in results:
        ax = axes[0, 2]
        rows = results["elbo"]["rows"]
        for mname in sorted({r["model"] for r in rows}):
            for pname in sorted({r["process"] for r in rows}):
                rr = [r for r in rows if r["model"] == mname and r["process"] == pname and r["loss"] == "d3pm"]
                if rr:
                    ax.plot([r["T"] for r in rr], [max(r["gap_mean"], 1e-12) for r in rr], "o-", label=f"{mname}/{pname}")
        cont = [r["gap_mean"] for r in rows if r["loss"] == "continuous"]
        if cont:
            ax.axhline(max(max(cont), 1e-12), color="k", ls=":", label="continuous ELBO (largest gap)")
        ax.axhline(0.01, color="r", ls="--", lw=1, label="0.01 nats")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("D3PM steps T")
        ax.set_ylabel("E[-ELBO] - H (nats/sequence)")
        ax.set_title("ELBO gap, exact denoiser")
        ax.legend(fontsize=6)
    if "remdm" in results:
        ax = axes[1, 0]
        rows = results["remdm"]["rows"]
        for d in dict.fromkeys(r["denoiser"] for r in rows):
            if d == "exact":
                continue
            for lab in dict.fromkeys(r["sampler"] for r in rows):
                rr = [r for r in rows if r["denoiser"] == d and r["sampler"] == lab]
                ax.plot([r["steps"] for r in rr], [r["tv_exact"] for r in rr], "o-" if "early" in d else "s--",
                        label=f"{d.split(' (')[-1].rstrip(')')}: {lab}", ms=4)
        ax.set_xscale("log")
        ax.set_xticks(list(args.remdm_steps))
        ax.set_xticklabels([str(s) for s in args.remdm_steps])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("steps")
        ax.set_ylabel("exact TV to p")
        ax.set_title("ReMDM with imperfect denoisers")
        ax.legend(fontsize=6)
    if "guidance" in results:
        res = results["guidance"]
        ax = axes[1, 1]
        ax.plot([r["H"] for r in res["cfg"]], [r["logpy"] for r in res["cfg"]], "o-", label="CFG, ancestral (exact)")
        ax.plot([r["target_H"] for r in res["cfg"]], [r["target_logpy"] for r in res["cfg"]], "k^--",
                label="target p(x|y)^w p(x)^(1-w)")
        for r in res["cfg"]:
            ax.annotate(f"w={r['w']:g}", (r["H"], r["logpy"]), fontsize=7)
        ax.set_xlabel("entropy (nats)")
        ax.set_ylabel("E log p(y|x)")
        ax.set_title("classifier-free guidance")
        ax.legend(fontsize=7)
        ax = axes[1, 2]
        for r in res["svdd"]:
            a = "unguided" if r["alpha"] is None else f"alpha={r['alpha']:g}"
            ax.plot([r["H"]], [r["reward"]], "o", label=f"SVDD {a}")
            if r["target_H"] is not None:
                ax.plot([r["target_H"]], [r["target_reward"]], "k^")
        ax.set_xlabel("entropy (nats, Miller-Madow)")
        ax.set_ylabel("mean reward (number of zeros)")
        ax.set_title("SVDD (triangles: tilted targets)")
        ax.legend(fontsize=7)
    for ax in axes.flat:
        if not ax.has_data():
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _groups(rows, model, process):
    out: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for r in rows:
        if r["model"] == model and r["process"] == process:
            out.setdefault((model, r["sampler"]), []).append(r)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the Markov chain only, fewer steps and samples (about 2 min)")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=None, help="samples per cell (default 100000; quick 20000)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {list(SECTIONS)}")
    ap.add_argument("--models", default=None, help="comma-separated subset of the models (tv and elbo sections)")
    args = ap.parse_args(argv)
    sections = args.sections.split(",")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {unknown}; valid: {list(SECTIONS)}")
    torch.set_num_threads(args.threads)
    q = args.quick
    args.n = args.n or (20000 if q else 100000)
    args.steps = [2, 8, 32] if q else [1, 2, 4, 8, 16, 32, 64, 128]
    args.mc_steps_main, args.mc_steps = [2, 8, 32, 128], [8, 128]     # full mode: MC at these step counts
    args.elbo_k = 4 if q else 16
    args.elbo_mc = 10000 if q else 100000
    args.d3pm_steps = [10, 100, 1000]
    # D3PM's exact sum costs T * (reachable x_t) rows per sequence: 64 reachable states for masked, all
    # 4^6 or 5^6 for the others, so T = 1000 uses fewer sequences there (none in quick mode)
    args.d3pm_k = {(p, 1000): (0 if q else k) for p, k in (("uniform", 4), ("marginal", 4), ("hybrid", 2))}
    args.exact_pt_max = 10 if q else 100
    args.elbo_k_states = {(V + 1) ** L: 4}      # hybrid: every x_t of 5^6 states is reachable, 4x the work
    args.remdm_steps = [8, 32] if q else [16, 64, 256]
    args.cfg_scales = [0.0, 1.0, 2.0, 4.0]
    args.guid_steps = 16 if q else 64
    args.svdd_alphas = [1.0, 0.0] if q else [2.0, 1.0, 0.5, 0.0]
    args.svdd_m = 8
    args.n_svdd = 5000 if q else 20000
    os.makedirs(args.out, exist_ok=True)
    started = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:6.0f}s] {msg}", file=sys.stderr, flush=True)

    results: Dict[str, Any] = {}
    times: Dict[str, float] = {}
    models = make_models(q)
    if args.models:
        wanted = args.models.split(",")
        if sorted(set(wanted) - set(models)):
            ap.error(f"unknown model(s) {sorted(set(wanted) - set(models))}; valid: {list(models)}")
        models = {k: v for k, v in models.items() if k in wanted}
    for sec in SECTIONS:
        if sec not in sections:
            continue
        t0 = time.time()
        if sec == "tv":
            results["tv"] = section_tv(models, args, log)
        elif sec == "elbo":
            results["elbo"] = section_elbo(models, args, log)
        elif sec == "remdm":
            results["remdm"] = section_remdm(args, log)
        else:
            results["guidance"] = section_guidance(args, log)
        times[sec] = time.time() - t0
    total = time.time() - started
    lines = [f"# Discrete diffusion benchmark ({'quick' if q else 'full'}), {time.strftime('%Y-%m-%d')}, "
             f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s), "
             f"{total:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in times.items())})", "",
             f"Models (V = {V}, L = {L}): {', '.join(models)}. Hybrid: GIDD with p_uniform = 0.2. "
             "Marginal: the model's symbol frequencies. remdm-cap 0.02 is ReMDM's default eta.", ""]
    if "tv" in results:
        lines += report_tv(results["tv"], args.steps)
    if "elbo" in results:
        lines += report_elbo(results["elbo"])
    if "remdm" in results:
        lines += report_remdm(results["remdm"], args.remdm_steps)
    if "guidance" in results:
        lines += report_guidance(results["guidance"])
    text = "\n".join(lines)
    print(text)
    stem = "discrete_quick" if q else "discrete"
    with open(os.path.join(args.out, f"{stem}.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, f"{stem}.json"), "w") as f:
        json.dump(_jsonable({"args": vars(args), "seconds": times, **results}), f, indent=1)
    plot(results, args, os.path.join(args.out, "discrete.png"))
    print(f"\nwrote {args.out}/{stem}.md, {stem}.json, discrete.png")
    return 0


def _jsonable(obj: Any) -> Any:
    """The results as JSON: tuple keys such as (model, process, sampler) joined with '/'."""
    if isinstance(obj, dict):
        return {("/".join(map(str, k)) if isinstance(k, tuple) else k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


if __name__ == "__main__":
    raise SystemExit(main())
