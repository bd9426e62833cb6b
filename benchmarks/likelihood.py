"""Likelihood check: NLL through the probability-flow ODE against the exact mixture log-density.

The 2-D 8-component ring (``analytic.ring_mixture(2)``), 500 exact samples, on several paths:
exact divergence (the issue asks for |error| < 0.01 nats) and Hutchinson (reported with its
stated standard error, to see whether the error is inside it).

Usage: python benchmarks/likelihood.py [--n 500] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import torch

from polydiff.core import analytic, paths
from polydiff.core.likelihood import SIGMA_EPS, nll


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gmm = analytic.ring_mixture(2)
    x = gmm.sample(args.n, torch.Generator().manual_seed(0))
    print("| path | divergence | mean NLL | exact -log p(t_eps) | error (nats) | stated std. error | NFE | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name, path in (("flow", paths.Flow()), ("vp_cosine", paths.VP("cosine")), ("vp_linear", paths.VP("linear"))):
        D = gmm.denoiser(path)
        for div, probes in (("exact", 1), ("hutchinson", 4)):
            t0 = time.perf_counter()
            res = nll(D, x, path=path, divergence=div, probes=probes, generator=torch.Generator().manual_seed(1))
            dt = time.perf_counter() - t0
            t_eps = float(path.t_from_sigma_ve(SIGMA_EPS))
            exact = float(-gmm.marginal_log_prob(x, t_eps, path).mean())
            err = float(res.nats.mean()) - exact
            se = float(res.stderr.pow(2).mean().sqrt() / args.n ** 0.5) if div == "hutchinson" else 0.0
            print(f"| {name} | {div} ({probes} probe{'s' if probes > 1 else ''}) | {float(res.nats.mean()):.5f} | "
                  f"{exact:.5f} | {err:+.5f} | {se:.5f} | {res.nfe} | {dt:.1f} |")


if __name__ == "__main__":
    main()
