"""A property regressor on 2-D molecular graphs, for EDM's conditional-generation protocol.

EDM (Hoogeboom et al., "Equivariant Diffusion for Molecule Generation in 3D", ICML 2022, Sec. 5.2 /
Table 3) measures property-conditioned generation with a separately trained regressor: QM9 train is split
into halves; the regressor phi is trained on half A, the conditional generator on half B; molecules are
sampled for property values (and atom counts) of half B, and the MAE between the asked values and phi's
predictions is reported. EDM's phi is a 3-D EGNN; here the generator is the 2-D DiGress model
(``graph_model``), so phi is a graph network on the same dense heavy-atom graphs:

* **Input.** Node types (the generator's (element, charge) tokens), kekulized bond types, and for each
  atom its implicit-hydrogen count, degree and valence derived from the graph (``implicit_hydrogens``:
  the RDKit valence rule for these neutral / charged C, N, O, F), so any sampled graph can be scored
  without RDKit.
* **Network.** A bond-typed message-passing network (Gilmer et al., "Neural Message Passing for Quantum
  Chemistry", ICML 2017): h_i <- LN(h_i + MLP([h_i, sum_k sum_j A^k_ij W_k h_j])) with one weight matrix
  per bond type k, then a readout MLP of the sum and the mean of the node states (the sum makes
  extensive properties such as alpha easy) and of (heavy atoms, hydrogens) counts.
* **Training.** L1 loss on the property normalised by half A's mean / std (EDM trains its regressor
  with L1 too), AdamW, cosine learning rate, a wall-clock budget.

    python -m polydiff.domains.molecules.property_regressor --property alpha --out DIR --minutes 10
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polydiff.core.discrete.graph import node_mask_from_sizes
from polydiff.core.training.files import read_model_folder, write_model_folder
from polydiff.core.training.step import gradient_step

MODEL_NAME = "qm9-graph-property-regressor"
_GROUP_VALENCE = {"C": 4, "N": 3, "O": 2, "F": 1, "S": 2, "Cl": 1, "Br": 1, "P": 3, "B": 3}
MAX_H = 4


def token_valences(tokens: Sequence[Tuple[str, int]]) -> Tensor:
    """Total valence of each (element, formal charge) token by RDKit's rule for these elements: an
    N/O/F-like (electron-rich) atom gains one bond per positive charge and loses one per negative charge,
    carbon (and B) loses one bond per unit of charge either way."""
    out = []
    for sym, q in tokens:
        if sym not in _GROUP_VALENCE:
            raise ValueError(f"no valence rule for element {sym!r}; known: {sorted(_GROUP_VALENCE)}")
        v = _GROUP_VALENCE[sym]
        out.append(v - abs(q) if sym in ("C", "B") else v + q)
    return torch.tensor(out, dtype=torch.float32)


def implicit_hydrogens(x: Tensor, e: Tensor, node_mask: Tensor, valences: Tensor) -> Tensor:
    """(B, N) implicit-hydrogen counts: token valence minus the sum of bond orders, clipped at 0."""
    bo = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float32, device=e.device)[e.long()]
    bo = bo * (node_mask[:, :, None] & node_mask[:, None, :]).float()
    h = (valences.to(e.device)[x.long()] - bo.sum(-1)).clamp_min(0) * node_mask.float()
    return h.round()


class GraphRegressor(nn.Module):
    """Bond-typed message passing on dense graphs -> one scalar per graph (normalised units)."""

    def __init__(self, node_types: int, max_nodes: int, hidden: int = 128, layers: int = 4) -> None:
        super().__init__()
        for name, v, lo in (("node_types", node_types, 1), ("max_nodes", max_nodes, 1), ("hidden", hidden, 1),
                            ("layers", layers, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        self.node_types, self.max_nodes = node_types, max_nodes
        d_in = node_types + (MAX_H + 1) + 5 + 1          # type, H count, degree 0..4, charge-free valence
        self.embed = nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.msg = nn.ModuleList(nn.Linear(hidden, 3 * hidden, bias=False) for _ in range(layers))
        self.upd = nn.ModuleList(nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.SiLU(),
                                               nn.Linear(2 * hidden, hidden)) for _ in range(layers))
        self.norm = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.head = nn.Sequential(nn.Linear(2 * hidden + 2, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                  nn.Linear(hidden, 1))

    def forward(self, x: Tensor, e: Tensor, node_mask: Tensor, hydrogens: Tensor) -> Tensor:
        B, N = node_mask.shape
        if tuple(x.shape) != (B, N) or tuple(e.shape) != (B, N, N) or tuple(hydrogens.shape) != (B, N):
            raise ValueError(f"expected x {(B, N)}, e {(B, N, N)}, hydrogens {(B, N)}; got {tuple(x.shape)}, "
                             f"{tuple(e.shape)}, {tuple(hydrogens.shape)}")
        nm = node_mask.float()[..., None]
        pm = (node_mask[:, :, None] & node_mask[:, None, :]).float()
        adj = torch.stack([(e == k).float() * pm for k in (1, 2, 3)], 1)          # (B, 3, N, N)
        deg = adj.sum(1).sum(-1)
        feats = torch.cat([F.one_hot(x.long(), self.node_types).float(),
                           F.one_hot(hydrogens.long().clamp(0, MAX_H), MAX_H + 1).float(),
                           F.one_hot(deg.long().clamp(0, 4), 5).float(),
                           (adj * torch.tensor([1.0, 2.0, 3.0])[None, :, None, None]).sum(1).sum(-1, keepdim=True) / 4],
                          -1)
        h = self.embed(feats) * nm
        for msg, upd, ln in zip(self.msg, self.upd, self.norm):
            w = msg(h).view(B, N, 3, -1).transpose(1, 2)                          # (B, 3, N, d)
            m = (adj @ w).sum(1)
            h = ln(h + upd(torch.cat([h, m], -1))) * nm
        cnt = nm.sum(1).clamp_min(1)
        pooled = torch.cat([h.sum(1) / 9.0, h.sum(1) / cnt, cnt / self.max_nodes,
                            hydrogens.float().sum(1, keepdim=True) / 20.0], -1)
        return self.head(pooled)[:, 0]


class PropertyRegressor:
    """A trained regressor of one QM9 property on the generator's dense graphs: ``predict_graphs(x, e,
    node_mask)`` and ``predict_molecules(mols)`` return values in QM9's units; ``save`` / ``load``."""

    def __init__(self, prop: str, tokens: Sequence[Tuple[str, int]], mean: float, std: float, max_nodes: int = 9,
                 hidden: int = 128, layers: int = 4, net: Optional[GraphRegressor] = None) -> None:
        if not isinstance(prop, str) or not prop:
            raise ValueError(f"property must be a non-empty name, got {prop!r}")
        if not (math.isfinite(float(mean)) and math.isfinite(float(std)) and float(std) > 0):
            raise ValueError(f"mean must be finite and std > 0, got {mean!r}, {std!r}")
        self.prop, self.tokens = prop, [(str(s), int(c)) for s, c in tokens]
        self.mean, self.std, self.max_nodes = float(mean), float(std), int(max_nodes)
        self.arch = {"hidden": int(hidden), "layers": int(layers)}
        self.valences = token_valences(self.tokens)
        self.net = net if net is not None else GraphRegressor(len(self.tokens), self.max_nodes, hidden, layers)

    def normalised(self, x: Tensor, e: Tensor, node_mask: Tensor) -> Tensor:
        """The network's output (normalised units), with gradients."""
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= len(self.tokens)):
            raise ValueError(f"node types must lie in [0, {len(self.tokens)})")
        return self.net(x, e, node_mask, implicit_hydrogens(x, e, node_mask, self.valences))

    @torch.no_grad()
    def predict_graphs(self, x: Tensor, e: Tensor, node_mask: Tensor, batch_size: int = 2048) -> Tensor:
        """(B,) predicted property (QM9's units) of dense graphs."""
        self.net.eval()
        out = [self.normalised(x[k:k + batch_size], e[k:k + batch_size], node_mask[k:k + batch_size])
               for k in range(0, x.shape[0], batch_size)]
        return torch.cat(out).double() * self.std + self.mean if out else torch.zeros(0, dtype=torch.float64)

    def predict_molecules(self, mols: Sequence[Any]) -> np.ndarray:
        """Predicted property of RDKit molecules (NaN for None or a molecule outside the vocabulary)."""
        from .convert import AtomVocab
        from .graph_model import mol_to_dense
        vocab = AtomVocab.of(self.tokens)
        keep, xs, es, ns = [], [], [], []
        for i, m in enumerate(mols):
            if m is None:
                continue
            try:
                x, e = mol_to_dense(m, vocab, self.max_nodes)
            except ValueError:
                continue
            keep.append(i), xs.append(x), es.append(e), ns.append(m.GetNumHeavyAtoms())
        out = np.full(len(mols), np.nan)
        if keep:
            mask = node_mask_from_sizes(torch.tensor(ns), self.max_nodes)
            pred = self.predict_graphs(torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(es)), mask)
            out[np.asarray(keep)] = pred.numpy()
        return out

    def save(self, folder: Union[str, Path], extra: Optional[Dict[str, Any]] = None) -> Path:
        cfg = {"model": MODEL_NAME, "property": self.prop, "vocab": [list(t) for t in self.tokens], "mean": self.mean,
               "std": self.std, "max_nodes": self.max_nodes, **self.arch, **(extra or {})}
        return write_model_folder(folder, cfg, {k: v.detach().float() for k, v in self.net.state_dict().items()})

    @classmethod
    def load(cls, folder: Union[str, Path]) -> "PropertyRegressor":
        cfg, state = read_model_folder(folder, "property regressor", model=MODEL_NAME)
        reg = cls(cfg["property"], [tuple(t) for t in cfg["vocab"]], cfg["mean"], cfg["std"], cfg["max_nodes"],
                  cfg["hidden"], cfg["layers"])
        reg.net.load_state_dict(state)
        reg.net.eval()
        return reg


def fit(reg: PropertyRegressor, x: Tensor, e: Tensor, node_mask: Tensor, y: Tensor, steps: int, batch: int = 128,
        lr: float = 1e-3, minutes: float = 0.0, seed: int = 0, log: Optional[Any] = None, log_every: int = 500
        ) -> Dict[str, float]:
    """Train ``reg`` on graphs with targets y (QM9's units; normalised by reg.mean / reg.std inside) with
    the L1 loss, AdamW and a cosine learning rate over ``steps`` (or until ``minutes`` of wall clock).
    Returns {"steps", "seconds", "train_mae"} (the last 200 steps' MAE in y's units)."""
    M = x.shape[0]
    if tuple(y.shape) != (M,) or not torch.isfinite(y).all():
        raise ValueError(f"y must hold {M} finite targets")
    if steps < 1 or batch < 1 or lr <= 0:
        raise ValueError("steps and batch must be >= 1 and lr > 0")
    g = torch.Generator().manual_seed(seed)
    z = ((y.double() - reg.mean) / reg.std).float()
    net = reg.net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-5)
    hyd = implicit_hydrogens(x, e, node_mask, reg.valences)
    t0, recent, step = time.time(), [], 0
    perm, pos = torch.randperm(M, generator=g), 0
    warm = min(100, max(1, steps // 20))
    while step < steps:
        if pos + batch > M:
            perm, pos = torch.randperm(M, generator=g), 0
        idx = perm[pos:pos + batch]
        pos += batch
        frac = min(1.0, step / steps)
        loss = (net(x[idx], e[idx], node_mask[idx], hyd[idx]) - z[idx]).abs().mean()
        gradient_step(opt, loss, step=step,
                      lr=lr * min(1.0, (step + 1) / warm) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac))))
        step += 1
        recent = (recent + [float(loss.detach()) * reg.std])[-200:]
        if log is not None and step % log_every == 0:
            log(json.dumps({"step": step, "seconds": round(time.time() - t0, 1), "train_mae": float(np.mean(recent))}))
        if minutes and time.time() - t0 > 60 * minutes:
            break
    net.eval()
    return {"steps": step, "seconds": round(time.time() - t0, 1), "train_mae": float(np.mean(recent))}


def load_half(prop: str, half: str, tokens: Sequence[Tuple[str, int]], cache_dir: Optional[str] = None
              ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x, e, node_mask, property) of a QM9 split or EDM half ("A", "B", "valid", "test", "train")."""
    from .train_graph import HALVES, property_names, qm9_graphs_with_properties
    valid = property_names(cache_dir)
    if prop not in valid:
        raise ValueError(f"unknown QM9 property {prop!r}; valid: {valid}")
    split = HALVES.get(half, half)
    g = qm9_graphs_with_properties(split, tokens, 9, cache_dir)
    x = torch.from_numpy(g["x"].astype(np.int64))
    e = torch.from_numpy(g["e"].astype(np.int64))
    return x, e, node_mask_from_sizes(torch.from_numpy(g["n"]), 9), torch.from_numpy(g[f"prop_{prop}"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Train a 2-D graph regressor of a QM9 property on EDM's half A.")
    ap.add_argument("--property", required=True, help="QM9 property name (alpha, gap, homo, lumo, mu, Cv, ...)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--steps", type=int, default=20_000, help="cosine schedule length (the budget may stop earlier)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--half", default="A", help="training rows: A (EDM's regressor half), B, or train")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from .graph_model import pretrained
    tokens = pretrained("qm9-2d").vocab.tokens
    x, e, mask, y = load_half(args.property, args.half, tokens, args.cache_dir)
    reg = PropertyRegressor(args.property, tokens, float(y.mean()), float(y.std()), 9, args.hidden, args.layers)
    print(f"{len(y)} graphs of half {args.half}; {sum(p.numel() for p in reg.net.parameters())} parameters",
          file=sys.stderr, flush=True)
    stats = fit(reg, x, e, mask, y, args.steps, args.batch, args.lr, args.minutes, args.seed,
                log=lambda s: print(s, file=sys.stderr, flush=True))
    xv, ev, mv, yv = load_half(args.property, "valid", tokens, args.cache_dir)
    val_mae = float((reg.predict_graphs(xv, ev, mv) - yv).abs().mean())
    stats.update({"valid_mae": val_mae, "half": args.half, "batch": args.batch, "lr": args.lr,
                  "steps_planned": args.steps, "minutes": args.minutes, "seed": args.seed, "threads": args.threads,
                  "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s)"})
    reg.save(args.out, extra={"train": stats})
    print(json.dumps(stats), file=sys.stderr)
    return 0

__all__ = ["PropertyRegressor", "GraphRegressor", "fit", "implicit_hydrogens", "token_valences", "load_half", "MODEL_NAME"]


if __name__ == "__main__":
    raise SystemExit(main())
