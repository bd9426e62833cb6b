"""QM9 (heavy atoms) benchmark of the shipped DiGress graph model: validity, uniqueness, novelty.

    python benchmarks/molecules_graph.py                       # 10 000 samples, 500 ancestral steps (DiGress's)
    python benchmarks/molecules_graph.py --n 1000 --steps 50   # quicker
    python benchmarks/molecules_graph.py --curve /tmp/snaps --curve-n 500 --no-main   # learning curve
    python benchmarks/molecules_graph.py --workers 2                                  # 2 sampling processes

Samples N graphs from ``graph_model.pretrained("qm9-2d")`` (or ``--model-dir``) and scores them as
DiGress does (Vignac et al. 2023, ``src/analysis/rdkit_functions.py``):

* **validity**: the fraction of samples whose *whole* graph (all fragments) passes RDKit sanitization
  (``Chem.SanitizeMol``: valences, charges, kekulization). A disconnected graph counts as valid when
  every fragment is; ``connected`` reports the fraction that is valid *and* one fragment.
* **uniqueness**: distinct canonical SMILES / valid samples, with DiGress's SMILES: the largest
  fragment of each valid molecule (non-isomeric, hydrogens implicit). The whole-molecule variant is
  reported too.
* **novelty**: distinct SMILES not among the canonical SMILES of QM9 train (EDM's split; the training
  data of the model) / distinct SMILES.

As a check of the decoding pipeline the same metrics are computed on QM9 test graphs passed through
the model's own dense encoding (``--n`` of them). Results go to the table printed and, unless
``--no-write``, to ``benchmarks/RESULTS.molecules-graph.md.part``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from polydiff.domains.molecules.graph_model import DEFAULT_STEPS

PAPER = {"DiGress (paper, QM9 no H)": {"validity": 0.990, "uniqueness": 0.962}}   # [M], research notes sec. 2.1
MACHINE = "2-core x86_64 CPU, shared"
DATE = "2026-11-22"


def score(mols: Sequence[Optional[Any]], train: set) -> Dict[str, float]:
    """DiGress's validity / connectivity / uniqueness / novelty of sanitized molecules (None = invalid)."""
    from rdkit import Chem
    from polydiff.domains.molecules.metrics import largest_fragment
    n = len(mols)
    valid = [m for m in mols if m is not None]
    frag = [Chem.MolToSmiles(largest_fragment(m), isomericSmiles=False) for m in valid]
    whole = [Chem.MolToSmiles(m, isomericSmiles=False) for m in valid]
    connected = sum(len(Chem.GetMolFrags(m)) == 1 for m in valid)
    uniq = set(frag)
    return {"n": n, "validity": len(valid) / n, "connected": connected / n,
            "uniqueness": len(uniq) / len(valid) if valid else float("nan"),
            "uniqueness_whole": len(set(whole)) / len(valid) if valid else float("nan"),
            "novelty": len(uniq - train) / len(uniq) if uniq else float("nan"),
            "valid_unique": len(uniq) / n}


def data_check(n: int, model: Any, train: set) -> Dict[str, float]:
    """The metrics on n QM9 test graphs decoded by the model's dense-graph decoder (pipeline check)."""
    from polydiff.domains.molecules.train_graph import qm9_graphs
    g = qm9_graphs("test", model.max_nodes)
    vocab_ok = [t.split(":") for t in g["vocab"].tolist()] == [[s, str(c)] for s, c in model.vocab.tokens]
    if not vocab_ok:
        raise ValueError("the test graphs use a different atom vocabulary than the model")
    k = min(n, len(g["n"]))
    x, e = torch.from_numpy(g["x"][:k].astype(np.int64)), torch.from_numpy(g["e"][:k].astype(np.int64))
    mask = model.node_mask(torch.from_numpy(g["n"][:k]))
    return score(model.to_molecules(x, e, mask), train)


def _sample_chunk(folder: str, n: int, steps: int, seed: int, batch: int) -> tuple:
    """Worker: n molecules from the model saved in folder (RDKit Mol or None) and the seconds it took."""
    torch.set_num_threads(1)
    from polydiff.domains.molecules.graph_model import GraphDiffusionModel
    model = GraphDiffusionModel.load(folder)
    t0 = time.time()
    mols = model.sample_molecules(n, steps=steps, seed=seed, batch_size=batch)
    return mols, time.time() - t0


def run_tasks(tasks: List[tuple], workers: int) -> List[tuple]:
    """``_sample_chunk`` over tasks, in ``workers`` processes (1: in this process)."""
    if workers == 1:
        return [_sample_chunk(*t) for t in tasks]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as ex:
        return list(ex.map(_sample_chunk, *zip(*tasks)))


def chunks(n: int, workers: int) -> List[int]:
    """n split into ``workers`` near-equal positive parts."""
    k = min(n, workers)
    return [n // k + (i < n % k) for i in range(k)]


def fmt_row(name: str, r: Dict[str, Any]) -> str:
    def f(k: str) -> str:
        v = r.get(k)
        return "–" if v is None else (f"{100 * v:.1f}" if isinstance(v, float) else str(v))
    return (f"| {name} | {r.get('n', '–')} | {f('validity')} | {f('connected')} | {f('uniqueness')} | "
            f"{f('uniqueness_whole')} | {f('novelty')} | {f('valid_unique')} | {r.get('sampling_seconds', '–')} |")


HEAD = ("| samples | N | valid % | connected % | unique % (largest fragment) | unique % (whole) | novel % | "
        "valid & unique % | sampling s |\n|---|---|---|---|---|---|---|---|---|")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                    help=f"ancestral steps (default {DEFAULT_STEPS}: the model's default, DiGress's T)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=1, help="sampling processes of 1 thread each")
    ap.add_argument("--model-dir", default=None, help="a saved model folder (default: the shipped qm9-2d)")
    ap.add_argument("--curve", default=None, help="a folder of step_XXXXXX snapshots (train_graph --snapshots)")
    ap.add_argument("--curve-n", type=int, default=500)
    ap.add_argument("--curve-steps", type=int, default=None, help="sampling steps for the curve (default --steps)")
    ap.add_argument("--no-main", action="store_true", help="only the learning curve")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--part", default=str(Path(__file__).resolve().parent / "RESULTS.molecules-graph.md.part"))
    args = ap.parse_args(argv)
    for k in ("n", "steps", "batch", "curve_n", "workers"):
        if getattr(args, k) < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be >= 1")
    torch.set_num_threads(1)
    from polydiff.domains.molecules.data import qm9_canonical_smiles
    from polydiff.domains.molecules.graph_model import WEIGHTS_DIR, GraphDiffusionModel, pretrained

    train = set(qm9_canonical_smiles("train"))
    model = GraphDiffusionModel.load(args.model_dir) if args.model_dir else pretrained("qm9-2d")
    folder = Path(args.model_dir) if args.model_dir else WEIGHTS_DIR / "qm9-2d"
    cfg = json.loads((folder / "config.json").read_text())
    tr = cfg.get("train", {})
    n_params = sum(p.numel() for p in model.net.parameters())
    budget = (f"{tr.get('step', '?')} steps of batch {tr.get('batch', '?')} in {tr.get('train_seconds', '?')} s "
              f"({float(tr.get('train_seconds', 0)) / 60:.1f} min) on {tr.get('machine', '?')}; {n_params} parameters")
    lines: List[str] = []
    command = "python benchmarks/molecules_graph.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    lines += ["## QM9 2-D graph diffusion (DiGress, `qm9-2d`)", "",
              f"- command: `{command.strip()}`", f"- machine: {MACHINE}, 1 torch thread; date {DATE}",
              f"- model: {budget}",
              "- rules: validity = RDKit sanitization of the whole sampled graph (DiGress); uniqueness and novelty on "
              "canonical SMILES of the largest fragment of valid molecules (DiGress), novelty against QM9 train "
              "(EDM split)", ""]
    # every sampling job (main run in chunks, one per learning-curve snapshot) goes to one process pool;
    # chunk k of the main run uses seed (seed, k) so the result depends on --seed and --workers only
    tasks: List[tuple] = []
    if not args.no_main:
        tasks += [(str(folder), m, args.steps, args.seed * 1000 + k, args.batch)
                  for k, m in enumerate(chunks(args.n, args.workers))]
    n_main = len(tasks)
    snaps = sorted(p for p in Path(args.curve).glob("step_*") if (p / "model.safetensors").is_file()) if args.curve else []
    tasks += [(str(p), args.curve_n, args.curve_steps or args.steps, args.seed, args.batch) for p in snaps]
    t0 = time.time()
    out = run_tasks(tasks, args.workers)
    wall = time.time() - t0
    if not args.no_main:
        mols = [m for ms, _ in out[:n_main] for m in ms]
        res = score(mols, train)
        res["sampling_seconds"] = round(sum(sec for _, sec in out[:n_main]), 1)
        check = data_check(args.n, model, train)
        lines += [HEAD, fmt_row(f"qm9-2d, {args.steps} steps, seed {args.seed}", res),
                  fmt_row("QM9 test graphs (decoder check)", check)]
        for name, r in PAPER.items():
            lines.append(fmt_row(name + " [M]", {**r, "n": 10000}))
        bar = res["validity"] >= 0.95 and res["uniqueness"] >= 0.95
        lines += ["", f"Sampling seconds are summed over {len(chunks(args.n, args.workers))} worker process(es) "
                      f"of 1 thread; the whole run took {wall:.0f} s wall.",
                  f"Bar (validity >= 95 % and uniqueness >= 95 % over 10 000): "
                  f"{'reached' if bar and args.n >= 10_000 else 'not reached'}.", ""]
        print(json.dumps({"model": res, "data": check}), file=sys.stderr)
    if snaps:
        lines += [f"Learning curve ({args.curve_n} samples per snapshot, {args.curve_steps or args.steps} steps, "
                  f"seed {args.seed}; minutes are wall-clock training time on the shared CPU; the EMA weights):", "",
                  "| step | train min | loss | valid % | connected % | unique % | novel % |",
                  "|---|---|---|---|---|---|---|"]
        for p, (ms, _) in zip(snaps, out[n_main:]):
            t = json.loads((p / "config.json").read_text()).get("train", {})
            r = score(ms, train)
            lines.append(f"| {t.get('step')} | {float(t.get('train_seconds', 0)) / 60:.1f} | {t.get('loss', 0):.2f} | "
                         f"{100 * r['validity']:.1f} | {100 * r['connected']:.1f} | {100 * r['uniqueness']:.1f} | "
                         f"{100 * r['novelty']:.1f} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        Path(args.part).write_text(text + "\n")
        print(f"wrote {args.part}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
