"""Train the DiGress graph model on QM9 heavy-atom graphs (CPU-friendly).

    nice -n 15 nohup python -m polydiff.domains.molecules.train_graph \
        --out domains/molecules/weights/qm9-2d --minutes 60 --threads 1 > train.log 2>&1 &

Steps: QM9 train (EDM's split, 100 000 molecules; ``data.qm9_canonical_smiles``) is parsed with RDKit,
kekulized and written as dense graphs of at most 9 heavy atoms (cached as .npz); the atom vocabulary
(element, charge), the node- and edge-type marginals and the node-count histogram are taken from it.
``core.discrete.graph.GraphCrossEntropy`` (node CE + 5 x edge CE, DiGress's lambda) is minimised with
AdamW (warm-up, cosine decay, gradient clipping) and an EMA of the weights (``core.training.ema.EMA``).
Every ``--save-every`` steps the EMA network is exported to ``--out`` (``config.json`` +
``model.safetensors``, with the step, wall time and loss) and, with ``--snapshots DIR``, also copied to
``DIR/step_XXXXXX`` for learning curves; ``--minutes`` stops at a wall-clock budget (after an export).
``--init FOLDER`` continues from a saved model's weights (a fresh optimizer and schedule).

**Property conditioning** (``--condition alpha``; several comma-separated): the model learns
p(G | c) for QM9 properties c normalised by the training mean/std, embedded into the network's global
features y, with the condition replaced by a learned null embedding with probability ``--p-uncond``
(0.1) so one network is both p(G | c) and p(G), as classifier-free guidance needs (Ho & Salimans,
"Classifier-Free Diffusion Guidance", 2022). The new layers start at zero, so ``--init`` from an
unconditional model starts exactly at it. ``--rows-half B`` trains on EDM's half B of QM9 train
(Hoogeboom et al. 2022, Sec. 5.2: the property regressor is trained on half A). For example:

    nice -n 5 nohup python -m polydiff.domains.molecules.train_graph --out domains/molecules/weights/qm9-2d-alpha \
        --init domains/molecules/weights/qm9-2d --condition alpha --rows-half B --layers 4 --dx 96 --dy 64 \
        --heads 4 --minutes 45 --threads 1 > train.log 2>&1 &
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from polydiff.core.training.schedule import lr_at
from polydiff.core.training.step import gradient_step


def qm9_graphs(split: str = "train", max_nodes: int = 9, cache_dir: Optional[str] = None) -> Dict[str, np.ndarray]:
    """Dense graphs of a QM9 split: ``x`` (M, N), ``e`` (M, N, N), ``n`` (M,) and the vocabulary tokens
    ``vocab`` (as "symbol:charge" strings), cached."""
    from rdkit import Chem, RDLogger
    from . import data
    from .convert import AtomVocab
    from .graph_model import mol_to_dense
    path = data._cache_path(cache_dir, f"qm9_{split}_dense_graphs_n{max_nodes}_v1.npz")
    cached = data._load_npz(path)
    if cached is not None:
        return cached
    smiles = data.qm9_canonical_smiles(split, cache_dir)
    RDLogger.DisableLog("rdApp.*")
    mols = [m for m in (Chem.MolFromSmiles(s) for s in smiles) if m is not None and m.GetNumAtoms() <= max_nodes]
    RDLogger.EnableLog("rdApp.*")
    vocab = AtomVocab.from_mols(mols)
    xs = np.zeros((len(mols), max_nodes), dtype=np.int8)
    es = np.zeros((len(mols), max_nodes, max_nodes), dtype=np.int8)
    ns = np.zeros(len(mols), dtype=np.int64)
    for k, m in enumerate(mols):
        x, e = mol_to_dense(m, vocab, max_nodes)
        xs[k], es[k], ns[k] = x, e, m.GetNumAtoms()
    out = {"x": xs, "e": es, "n": ns, "vocab": np.array([f"{s}:{c}" for s, c in vocab.tokens])}
    data._save_npz(path, out)
    return out


HALVES = {"all": "train", "A": "train_first_half", "B": "train_second_half"}


def qm9_graphs_with_properties(split: str, vocab_tokens: Sequence[Tuple[str, int]], max_nodes: int = 9,
                               cache_dir: Optional[str] = None) -> Dict[str, np.ndarray]:
    """Dense graphs of a QM9 split (``train``, ``train_first_half`` = EDM's half A, ``train_second_half``
    = half B, ...) in a given atom vocabulary, aligned with the molecules' properties: ``x``, ``e``,
    ``n``, ``row`` (positions in the index-sorted QM9, ``data.qm9_split_rows``) and one array per QM9
    property (QM9's units). Molecules RDKit cannot parse or encode are left out (counted in ``dropped``).
    Cached."""
    import hashlib
    from rdkit import Chem, RDLogger
    from . import data
    from .convert import AtomVocab
    from .graph_model import mol_to_dense
    vocab = AtomVocab.of([(str(s), int(c)) for s, c in vocab_tokens])
    key = hashlib.sha1(repr(vocab.tokens).encode()).hexdigest()[:10]
    path = data._cache_path(cache_dir, f"qm9_{split}_graphs_props_n{max_nodes}_{key}_v1.npz")
    cached = data._load_npz(path)
    if cached is not None:
        return cached
    rows = data.qm9_split_rows(split)
    ds = data.load_qm9_all(cache_dir)
    RDLogger.DisableLog("rdApp.*")
    keep, xs, es, ns = [], [], [], []
    for r in rows:
        m = Chem.MolFromSmiles(ds.smiles[r])
        if m is None or m.GetNumAtoms() > max_nodes:
            continue
        try:
            x, e = mol_to_dense(m, vocab, max_nodes)
        except ValueError:
            continue
        keep.append(r), xs.append(x.astype(np.int8)), es.append(e.astype(np.int8)), ns.append(m.GetNumAtoms())
    RDLogger.EnableLog("rdApp.*")
    keep_a = np.asarray(keep, dtype=np.int64)
    out = {"x": np.stack(xs), "e": np.stack(es), "n": np.asarray(ns, dtype=np.int64), "row": keep_a,
           "dropped": np.asarray(len(rows) - len(keep))}
    for k, v in ds.properties.items():
        out[f"prop_{k}"] = np.asarray(v, dtype=np.float64)[keep_a]
    data._save_npz(path, out)
    return out


def property_names(cache_dir: Optional[str] = None) -> List[str]:
    """The QM9 property names a model can be conditioned on (``data.QM9Dataset.properties``)."""
    from . import data
    return sorted(data.load_qm9_all(cache_dir).properties)


def statistics(g: Dict[str, np.ndarray], max_nodes: int):
    """(vocab, node marginal, edge marginal over real pairs, node-count histogram 0..N)."""
    from .convert import AtomVocab
    from .graph_model import EDGE_NAMES
    vocab = AtomVocab.of([(t.split(":")[0], int(t.split(":")[1])) for t in g["vocab"].tolist()])
    n = g["n"]
    mask = np.arange(max_nodes)[None, :] < n[:, None]
    node_counts = np.bincount(g["x"][mask].astype(np.int64), minlength=len(vocab)).astype(np.float64)
    iu = np.triu_indices(max_nodes, 1)
    pm = (mask[:, :, None] & mask[:, None, :])[:, iu[0], iu[1]]
    edge_counts = np.bincount(g["e"][:, iu[0], iu[1]][pm].astype(np.int64), minlength=len(EDGE_NAMES)).astype(np.float64)
    sizes = np.bincount(n, minlength=max_nodes + 1).astype(np.float64)
    return vocab, (node_counts / node_counts.sum()).tolist(), (edge_counts / edge_counts.sum()).tolist(), sizes.tolist()


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (also read by ``polydiff train`` configs)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for config.json, model.safetensors and log.jsonl")
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--minutes", type=float, default=0.0, help="stop after this wall-clock budget (0: no limit)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dx", type=int, default=128)
    ap.add_argument("--de", type=int, default=32)
    ap.add_argument("--dy", type=int, default=64)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--edge-weight", type=float, default=5.0)
    ap.add_argument("--ema-half-life", type=float, default=200_000.0, help="in samples")
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--snapshots", default=None, help="also keep each export in this folder (learning curves)")
    ap.add_argument("--molecules", type=int, default=0, help="use only this many training graphs (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--condition", default=None, help="comma-separated QM9 properties to condition on (e.g. alpha or "
                                                      "alpha,gap): classifier-free, normalised by the training mean/std")
    ap.add_argument("--p-uncond", type=float, default=0.1, help="probability of dropping the condition (null embedding)")
    ap.add_argument("--rows-half", default="all", choices=sorted(HALVES), help="train on all of QM9 train or on EDM's "
                                                                            "half A (regressor's) / half B (generator's)")
    ap.add_argument("--init", default=None, help="start from the weights of a saved graph model folder (same vocabulary "
                                                 "and architecture; a fresh optimizer and learning-rate schedule)")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.save_every < 1 or args.lr <= 0:
        raise ValueError("--steps, --batch, --save-every must be >= 1 and --lr > 0")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)            # the network initialisation; batches and noise use their own generator

    from tqdm import tqdm
    from polydiff.core.discrete.graph import GraphCrossEntropy
    from polydiff.core.training.ema import EMA
    from .graph_model import GraphDiffusionModel

    if not 0 <= args.p_uncond < 1:
        raise ValueError(f"--p-uncond must lie in [0, 1), got {args.p_uncond}")
    from .graph_model import condition_spec
    max_nodes = 9
    t0 = time.time()
    g = qm9_graphs("train", max_nodes, args.cache_dir)
    names: List[str] = []
    if args.condition:
        names = [c.strip() for c in args.condition.split(",") if c.strip()]
        valid = property_names(args.cache_dir)
        bad = [c for c in names if c not in valid]
        if bad or not names or len(set(names)) != len(names):
            raise ValueError(f"--condition {args.condition!r}: unknown or repeated properties {bad}; valid: {valid}")
    init = GraphDiffusionModel.load(args.init) if args.init else None
    if names or args.rows_half != "all":
        tokens = init.vocab.tokens if init is not None else statistics(g, max_nodes)[0].tokens
        g = qm9_graphs_with_properties(HALVES[args.rows_half], tokens, max_nodes, args.cache_dir)
        g["vocab"] = np.array([f"{s}:{c}" for s, c in tokens])
    if args.molecules:
        g = {k: (v[: args.molecules] if v.ndim and k != "vocab" else v) for k, v in g.items()}
    vocab, pnode, pedge, sizes = statistics(g, max_nodes)
    if init is not None:        # keep the initial model's noise process and size histogram: an exact starting point
        pnode, pedge, sizes = init.node_marginal, init.edge_marginal, init.size_counts.tolist()
    spec = None
    C = None
    if names:
        P = np.stack([g[f"prop_{c}"] for c in names], 1)
        spec = condition_spec(names, P, g["n"], max_nodes)
        C = torch.from_numpy((P - np.asarray(spec["mean"])) / np.asarray(spec["std"])).float()
    model = GraphDiffusionModel(vocab, pnode, pedge, sizes, layers=args.layers, dx=args.dx, de=args.de, dy=args.dy,
                                heads=args.heads, condition=spec)
    if init is not None:
        if init.vocab.tokens != vocab.tokens or init.arch != model.arch:
            raise ValueError(f"--init {args.init}: vocabulary {init.vocab.tokens} / architecture {init.arch} differ from "
                             f"this run's {vocab.tokens} / {model.arch}")
        if init.condition_names and init.condition_names != names:
            raise ValueError(f"--init {args.init} is conditioned on {init.condition_names}, this run on {names}")
        missing, unexpected = model.net.load_state_dict(init.net.state_dict(), strict=False)
        if unexpected or any(not k.startswith("cond_") for k in missing):
            raise ValueError(f"--init {args.init}: weights do not match (missing {missing}, unexpected {unexpected})")
    X = torch.from_numpy(g["x"].astype(np.int64))
    E = torch.from_numpy(g["e"].astype(np.int64))
    M = model.node_mask(torch.from_numpy(g["n"]))
    n_params = sum(p.numel() for p in model.net.parameters())
    print(f"{len(X)} graphs, vocab {vocab.tokens}, node marginal {np.round(pnode, 4).tolist()}, edge marginal "
          f"{np.round(pedge, 4).tolist()}, {n_params} parameters; data ready in {time.time() - t0:.0f} s",
          file=sys.stderr, flush=True)

    loss_fn = GraphCrossEntropy(model.process, edge_weight=args.edge_weight)
    net = model.net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-12)
    ema = EMA(net, args.ema_half_life, rampup=0.05)
    gen = torch.Generator().manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "log.jsonl", "a")
    t_train = time.time()
    recent, recent_x, recent_e = [], [], []
    perm = torch.randperm(len(X), generator=gen)
    pos = 0

    def export(step: int) -> None:
        row = {"step": step, "train_seconds": round(time.time() - t_train, 1),
               "loss": float(np.mean(recent)) if recent else None,
               "node_ce": float(np.mean(recent_x)) if recent_x else None,
               "edge_ce": float(np.mean(recent_e)) if recent_e else None}
        snap = GraphDiffusionModel(vocab, pnode, pedge, sizes, net=ema.module, condition=spec, **model.arch)
        extra = {"train": {**row, "molecules": len(X), "batch": args.batch, "lr": args.lr, "steps_planned": args.steps,
                           "rows": HALVES[args.rows_half], "condition": names, "p_uncond": args.p_uncond,
                           "init": args.init,
                           "edge_weight": args.edge_weight, "ema_half_life": args.ema_half_life, "seed": args.seed,
                           "threads": args.threads, "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s)"}}
        snap.save(out, extra=extra)
        if args.snapshots:
            d = Path(args.snapshots) / f"step_{step:06d}"
            d.mkdir(parents=True, exist_ok=True)
            for f in ("config.json", "model.safetensors"):
                shutil.copy(out / f, d / f)
        log.write(json.dumps(row) + "\n")
        log.flush()
        tqdm.write(json.dumps(row), file=sys.stderr)
        recent.clear(), recent_x.clear(), recent_e.clear()

    bar = tqdm(total=args.steps, file=sys.stderr, mininterval=30, smoothing=0.05)
    step = 0
    while step < args.steps:
        if pos + args.batch > len(X):
            perm, pos = torch.randperm(len(X), generator=gen), 0
        idx = perm[pos:pos + args.batch]
        pos += args.batch
        if C is None:
            den = net
        else:                       # classifier-free training: the null embedding with probability p_uncond
            drop = torch.rand(len(idx), generator=gen) < args.p_uncond
            c_b = C[idx]

            def den(x_t, e_t, t, mask, _c=c_b, _d=drop):
                return net(x_t, e_t, t, mask, cond=_c, drop=_d)
        total, cx, ce = loss_fn(den, X[idx], E[idx], M[idx], generator=gen, parts=True)
        loss = total.mean()
        gradient_step(opt, loss, step=step, lr=lr_at(step, args.lr, args.steps, args.warmup, "cosine", args.lr / 20))
        step += 1
        ema.update(net, step * args.batch, args.batch)
        recent.append(float(loss.detach()))
        recent_x.append(float(cx.detach().mean()))
        recent_e.append(float(ce.detach().mean()))
        bar.update(1)
        over = bool(args.minutes) and time.time() - t_train > 60 * args.minutes
        if step % args.save_every == 0 or step == args.steps or over:
            export(step)
        if over:
            tqdm.write(f"wall-clock budget of {args.minutes} min reached at step {step}", file=sys.stderr)
            break
    bar.close()
    log.close()
    print(f"done: {step} steps in {time.time() - t_train:.0f} s of training", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
