"""Speech-enhancement benchmark: noisy input vs Wiener vs the SGMSE+-style model (vs the unsupervised route).

    python benchmarks/speech_enhance.py [--quick] [--n 12] [--solver pc --steps 30] [--methods ...]
    python benchmarks/speech_enhance.py --sweep      # solver/steps comparison on separate tuning mixtures

Held-out mixtures: the 60 test sentences of the rms voice (never in training: each holds a word no
training sentence has); utterances 0-39 are the benchmark set and 40-59 the tuning set of ``--sweep``.
Noise: white, coloured (pink or brown, alternating) and babble made of 3-6 held-out test sentences of
the slt, awb and kal voices; all seeded (``--seed``), so noise realisations differ from training.
Each (noise, SNR in 0/5/10 dB) cell uses ``--n`` utterances drawn from the benchmark set.
Metrics (``polydiff.domains.audio.metrics``): wide-band PESQ at 16 kHz, ESTOI, SI-SDR, mean over
utterances; wall time per second of audio (``--threads`` torch threads, default 1).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from polydiff.domains.audio import enhance as E
from polydiff.domains.audio import metrics as M

SNRS = (0.0, 5.0, 10.0)
NOISES = ("white", "coloured", "babble")
SPEECH = Path("/tmp/speech")


def mixtures(split_ids, noise: str, snr_db: float, n: int, seed: int, clean_all, babble):
    """n (clean, noisy) pairs for one cell: utterances drawn from split_ids, seeded by (seed, noise, snr)."""
    key = E._fold(seed, NOISES.index(noise), int(snr_db * 10))
    g = torch.Generator().manual_seed(key)
    ids = [split_ids[int(i)] for i in torch.randperm(len(split_ids), generator=g)[:n]]
    out = []
    for j, i in enumerate(ids):
        clean = clean_all[i].float() / 32768.0
        kind = noise if noise != "coloured" else ("pink" if j % 2 == 0 else "brown")
        nz = E.make_noise(kind, clean.numel(), g, babble)
        out.append((i, kind, clean, E.mix(clean, nz, snr_db)))
    return out


def scores(clean, est) -> dict:
    try:
        p = M.pesq(clean, est, 16000)
    except ValueError:
        p = float("nan")
    return {"pesq": p, "estoi": M.estoi(clean, est, 16000), "si_sdr": float(M.si_sdr(clean, est))}


def run_method(method: str, model, noisy, args) -> torch.Tensor:
    if method == "noisy":
        return noisy
    if method == "wiener":
        return E.wiener(noisy, 16000)
    kw = {"steps": args.steps, "seed": args.seed}
    if method == "sgmse":
        return model.enhance(noisy, 16000, method="sgmse", solver=args.solver, **kw, **json.loads(args.options))
    return model.enhance(noisy, 16000, method="unsupervised", solver=args.solver, **kw)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 utterances per cell, 5 dB only, 4 steps")
    ap.add_argument("--sweep", action="store_true", help="compare solvers/steps on the tuning mixtures")
    ap.add_argument("--n", type=int, default=12, help="utterances per (noise, SNR) cell")
    ap.add_argument("--methods", default="noisy,wiener,sgmse", help="comma list of noisy,wiener,sgmse,unsupervised")
    ap.add_argument("--solver", default=None, help="solver of the sgmse method (default: the model's)")
    ap.add_argument("--steps", type=int, default=None, help="steps (default: the model's)")
    ap.add_argument("--options", default="{}", help="JSON solver options, e.g. '{\"snr\": 0.16}'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="rms", help="shipped model name or a model directory")
    ap.add_argument("--speech", default=str(SPEECH), help="folder holding rms-test and {slt,awb,kal}-test corpora")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the results JSON here")
    ap.add_argument("--table", nargs="+", default=None, help="only print the table of these results JSON files")
    args = ap.parse_args(argv)
    if args.table:
        rows = [r for f in args.table for r in json.loads(Path(f).read_text())["rows"]]
        methods = list(dict.fromkeys(r["method"] for r in rows))
        print(summarise(rows, methods, sorted({r["snr"] for r in rows})))
        return 0
    torch.set_num_threads(args.threads)
    root = Path(args.speech)
    clean_all = E.load_wavs(root / "rms-test")
    babble = []
    for v in ("slt", "awb", "kal"):
        babble += E.load_wavs(root / f"{v}-test")
    model = E.pretrained(args.model) if args.model in E.MODELS else E.load_model(args.model)
    methods = args.methods.split(",")
    bad = [m for m in methods if m not in ("noisy",) + E.METHODS]
    if bad:
        raise SystemExit(f"unknown methods {bad}")
    if args.sweep:
        return sweep(model, clean_all, babble, args)
    snrs, n = (SNRS, args.n)
    if args.quick:
        snrs, n = (5.0,), 2
        args.steps = args.steps or 4
    bench_ids = list(range(min(40, len(clean_all))))
    rows = []
    for noise in NOISES:
        for s in snrs:
            for (i, kind, clean, noisy) in mixtures(bench_ids, noise, s, n, args.seed, clean_all, babble):
                for m in methods:
                    t0 = time.perf_counter()
                    est = run_method(m, model, noisy, args)
                    dt = time.perf_counter() - t0
                    sc = scores(clean, est)
                    rows.append({"noise": noise, "kind": kind, "snr": s, "utt": i, "method": m,
                                 "seconds": dt, "audio_s": clean.numel() / 16000, **sc})
                print(f"{noise:8s} {s:4.0f} dB utt {i:2d} " + " ".join(
                    f"{r['method']}: {r['pesq']:.2f}/{r['estoi']:.2f}/{r['si_sdr']:5.1f}"
                    for r in rows[-len(methods):]), flush=True)
    table = summarise(rows, methods, snrs)
    print(table)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


def mean(xs):
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def summarise(rows, methods, snrs) -> str:
    lines = ["| noise | SNR | method | PESQ | ESTOI | SI-SDR (dB) | s per s of audio |", "|---|---|---|---|---|---|---|"]
    for noise in NOISES + ("all",):
        for s in tuple(snrs) + (("all",) if noise == "all" else ()):
            for m in methods:
                sel = [r for r in rows if r["method"] == m and (noise == "all" or r["noise"] == noise)
                       and (s == "all" or r["snr"] == s)]
                if not sel:
                    continue
                rt = sum(r["seconds"] for r in sel) / sum(r["audio_s"] for r in sel)
                lines.append(f"| {noise} | {s if s == 'all' else f'{s:.0f} dB'} | {m} | {mean([r['pesq'] for r in sel]):.2f} | "
                             f"{mean([r['estoi'] for r in sel]):.3f} | {mean([r['si_sdr'] for r in sel]):.2f} | "
                             f"{rt:.3f} |")
    return "\n".join(lines)


def sweep(model, clean_all, babble, args) -> int:
    """Solvers and step counts on the tuning set (utterances 40-59): 1 utterance per noise kind per SNR."""
    tune_ids = list(range(40, min(60, len(clean_all))))
    mix = []
    for noise in NOISES:
        for s in (0.0, 10.0):
            mix += mixtures(tune_ids, noise, s, 1, args.seed + 1, clean_all, babble)
    configs = [("euler", 1, {}), ("euler", 5, {}), ("euler", 10, {}), ("heun", 5, {}), ("dpmpp_2m", 10, {}),
               ("euler_maruyama", 30, {}), ("pc", 30, {"snr": 0.16})]
    if args.quick:
        configs, mix = configs[:2], mix[:2]
    print("| solver | steps | options | NFE | PESQ | ESTOI | SI-SDR | s per s of audio |")
    print("|---|---|---|---|---|---|---|---|")
    base = [scores(c, y) for (_, _, c, y) in mix]
    print(f"| noisy | – | – | 0 | {mean([b['pesq'] for b in base]):.2f} | {mean([b['estoi'] for b in base]):.3f} | "
          f"{mean([b['si_sdr'] for b in base]):.2f} | – |")
    for solver, steps, opts in configs:
        sc, secs, aud = [], 0.0, 0.0
        for (_, _, c, y) in mix:
            t0 = time.perf_counter()
            est = model.enhance(y, 16000, steps=steps, seed=args.seed, solver=solver, **opts)
            secs += time.perf_counter() - t0
            aud += c.numel() / 16000
            sc.append(scores(c, est))
        from polydiff.core import solvers as _solvers
        nfe = _solvers()[solver].nfe(steps)
        print(f"| {solver} | {steps} | {json.dumps(opts) if opts else '–'} | {nfe} | {mean([r['pesq'] for r in sc]):.2f} | "
              f"{mean([r['estoi'] for r in sc]):.3f} | {mean([r['si_sdr'] for r in sc]):.2f} | {secs / aud:.3f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
