"""Images benchmark: sample quality against NFE for the core's solvers, and one restoration table.

(1) Sample quality. The default digits model (``polydiff.domains.images.pretrained("digits")``) generates
class-conditional digits with the test split's labels (repeated ``--repeat`` times), with each solver at
each budget of network evaluations (NFE; a 2-evaluation-per-step solver gets the most steps that fit).
The metrics come from ``polydiff.domains.images.evaluate``: the Fréchet distance (FD) to the 360 held-out
test digits in the shipped feature network's space, and the accuracy of the independent classifier on the
requested labels. The real-vs-real references sit beside them: FD between two halves of the train split
(``reference_distances``) and FD of real train digits to the test split at the same sample count. The issue's
bar: accuracy >= 90%, and FD within 2x of the halves' FD.

(2) Restoration. The notebook's table (``restore.compare``): inpainting (centred box), x2 bicubic and x4
average super-resolution, Gaussian deblurring (std 1.5) and phase retrieval, sigma_y = 0.05. It runs DPS,
PiGDM, DDRM, DDNM, DiffPIR, RED-diff and DAPS at ``restore.METHOD_DEFAULTS`` on held-out digits, with
PSNR / SSIM / perceptual distance and wall time, next to the measurement's own baseline.

    python benchmarks/images.py --quick     # ~5 min on 2 cores: 3 solvers x NFE 5/10/20 on 360 samples; 4 digits
    python benchmarks/images.py             # 6 solvers x NFE 5/10/20/50 on 1 440 samples; 16 digits
    python benchmarks/images.py --model runs/my_digits   # any saved image model directory

Outputs: benchmarks/out/images_quality[_quick].{json,md} and images_restore[_quick].{json,md}; the markdown
tables are printed too. torch runs with 1 thread (``--threads``).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path as FsPath
from typing import Any, Dict, List, Sequence

import torch

OUT = FsPath(__file__).resolve().parent / "out"
TASKS = ["inpaint-box", "sr-bicubic2", "sr-avg4", "deblur-gauss", "phase-retrieval"]
TASK_OPTIONS = {"deblur-gauss": {"std": 1.5}}


class CountingDenoiser:
    """D with a call counter (the NFE actually spent; one call = one evaluation of the whole batch)."""

    def __init__(self, D: Any) -> None:
        self.D, self.path, self.calls = D, D.path, 0

    def __call__(self, x, t, **cond):
        self.calls += 1
        return self.D(x, t, **cond)


def steps_for(solver: str, nfe: int) -> int:
    """The most steps whose evaluations (``solvers()[solver].nfe``) fit in ``nfe``."""
    from polydiff.core.solvers import solvers
    info = solvers()[solver]
    best = 1
    for k in range(1, nfe + 1):
        if info.nfe(k) <= nfe:
            best = k
    return best


def sample_quality(model: Any, solver_names: Sequence[str], nfes: Sequence[int], repeat: int, seed: int,
                   log=print) -> Dict[str, Any]:
    from polydiff.domains.images.data import load_digits
    from polydiff.domains.images.evaluate import (classifier_accuracy, features, frechet_distance,
                                                  reference_distances)
    from polydiff.domains.images.pretrained import ImageDiffusionModel
    test, y_test = load_digits("test")
    train, y_train = load_digits("train")
    labels = y_test.repeat(repeat)
    f_test = features(test)
    ref = reference_distances()
    # real digits at the same count and labels as the generated ones: a per-class draw from the train split
    g = torch.Generator().manual_seed(seed)
    idx = torch.cat([torch.nonzero(y_train == c).flatten()[torch.randint(int((y_train == c).sum()),
                     (int((labels == c).sum()),), generator=g)] for c in range(10)])
    fd_real_same_n = frechet_distance(features(train[idx]), f_test)
    rows: List[Dict[str, Any]] = []
    for solver in solver_names:
        for nfe in nfes:
            steps = steps_for(solver, nfe)
            D = CountingDenoiser(model.denoiser)
            m = ImageDiffusionModel(D, model.shape, model.num_classes, name=model.name, cond_key=model.cond_key)
            t0 = time.perf_counter()
            x = m.generate(labels=labels, steps=steps, solver=solver, generator=torch.Generator().manual_seed(seed))
            sec = time.perf_counter() - t0
            row = {"solver": solver, "nfe_budget": nfe, "steps": steps, "nfe": D.calls,
                   "fd": frechet_distance(features(x), f_test), "accuracy": classifier_accuracy(x, labels),
                   "seconds": sec, "n": int(labels.numel())}
            rows.append(row)
            log(f"{solver:10s} NFE {D.calls:3d}  FD {row['fd']:8.3f}  acc {row['accuracy']:.3f}  {sec:6.1f} s")
    return {"rows": rows, "reference": ref, "fd_real_same_n": fd_real_same_n, "n": int(labels.numel())}


def quality_table(res: Dict[str, Any]) -> str:
    ref = res["reference"]
    lines = [f"Reference (real digits): FD two train halves {ref['fd_halves']:.3f} ± {ref['fd_halves_std']:.3f} "
             f"(n = {ref['n_half']}); FD train ({ref['n_train']}) vs test {ref['fd_train_test']:.3f}; "
             f"FD of {res['n']} real train digits (test labels) vs test {res['fd_real_same_n']:.3f}. "
             f"Generated: n = {res['n']} (the test labels), FD against the 360 test digits.", "",
             "| solver | NFE | steps | FD | FD / FD(halves) | FD / FD(real, same n) | classifier accuracy | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['solver']} | {r['nfe']} | {r['steps']} | {r['fd']:.3f} | {r['fd'] / ref['fd_halves']:.2f} | "
                     f"{r['fd'] / res['fd_real_same_n']:.2f} | {100 * r['accuracy']:.1f}% | {r['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="~5 minutes: fewer solvers, budgets, samples and digits")
    ap.add_argument("--model", default="digits", help="a shipped model name or a saved image model directory")
    ap.add_argument("--solvers", nargs="*", default=None)
    ap.add_argument("--nfe", type=int, nargs="*", default=None)
    ap.add_argument("--repeat", type=int, default=None, help="generated samples = 360 test labels x repeat")
    ap.add_argument("--digits", type=int, default=None, help="held-out digits in the restoration table")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-restore", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from polydiff.domains.images import restore as R
    from polydiff.domains.images.data import load_digits
    model = R.resolve_model(args.model)
    tag = "_quick" if args.quick else ""
    solver_names = args.solvers or (["dpmpp_2m", "heun", "ddim"] if args.quick else
                                    ["dpmpp_2m", "unipc", "heun", "edm", "ddim", "euler"])
    nfes = args.nfe or ([5, 10, 20] if args.quick else [5, 10, 20, 50])
    repeat = args.repeat or (1 if args.quick else 4)
    n_digits = args.digits or (4 if args.quick else 16)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"model": str(args.model), "machine": f"{platform.machine()} CPU, torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s)", "quick": args.quick, "seed": args.seed}
    t_all = time.time()
    if not args.skip_quality:
        res = sample_quality(model, solver_names, nfes, repeat, args.seed)
        md = "## Sample quality against NFE\n\n" + quality_table(res)
        print("\n" + md + "\n")
        (OUT / f"images_quality{tag}.json").write_text(json.dumps({**meta, **res}, indent=1))
        (OUT / f"images_quality{tag}.md").write_text(md + "\n")
    if not args.skip_restore:
        x, _ = load_digits("test")
        t0 = time.time()
        res = R.compare(x[:n_digits], TASKS, R.COMPARED, model=model, sigma_y=0.05, task_options=TASK_OPTIONS,
                        seed=args.seed, log=print)
        rows = res["rows"]
        md = (f"## Restoration ({n_digits} held-out digits, sigma_y = 0.05, {time.time() - t0:.0f} s)\n\n"
              + R.markdown_table(rows))
        print("\n" + md + "\n")
        (OUT / f"images_restore{tag}.json").write_text(json.dumps({**meta, "digits": n_digits, "rows": rows}, indent=1))
        (OUT / f"images_restore{tag}.md").write_text(md + "\n")
    print(f"total {time.time() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
