"""Graphs without chemistry: synthetic graph families and the DiGress model on plain graphs.

Data sets (``load(name, seed)``; fixed seeds, train/val/test splits as in the papers):

* ``community-small`` (GraphRNN, You et al. 2018; GDSS, Jo et al. 2022, whose generator from Niu et al.
  2020 is followed): 100 graphs; a size m is drawn from 12..20, the graph is two communities of
  m // 2 nodes (so 12, 14, ..., 20 nodes), each G(m // 2, 0.7); every cross pair becomes an edge with
  probability 2 * 0.05 / (m // 2), and one bridge is added when none was drawn (so every graph is
  connected). One deliberate difference: GraphRNN and GDSS seed community k's G(n, p) with ``seed=k``,
  so all their communities of a given size are the same graph; here every community is drawn afresh.
  Split as GDSS: the first 20 % test, the rest train.
* ``sbm`` (SPECTRE, Martinkus et al. 2022; DiGress, Vignac et al. 2023): 200 graphs of 2..5 blocks of
  20..40 nodes, p_intra 0.3, p_inter 0.005 (44..200 nodes: too large for a CPU budget).
  ``sbm-small``: our CPU variant, 200 graphs of 2..3 blocks of 6..10 nodes, p_intra 0.5,
  p_inter 0.05 (12..30 nodes; denser blocks so that small blocks stay recognisable, and about as
  many expected edges between two blocks, 1.8..5, as SPECTRE's 2..8).
* ``planar`` (SPECTRE; DiGress): 200 graphs, the Delaunay triangulation of 64 uniform points in the
  unit square. ``planar-small``: our CPU variant with 20 points.
  SPECTRE's split for both: 20 % test (40), then 20 % of the rest validation (32), train 128.

Model: ``SyntheticGraphModel``, DiGress (Vignac et al., "DiGress: Discrete Denoising diffusion for
graph generation", ICLR 2023) with one node type and two edge types (none / edge): the edge process
is ``discrete.Marginal([1 - d, d])`` with d the training edge density (DiGress's marginal
transitions), the node process a constant one (``Marginal([1, 0])``: every node keeps type 0, the
network's node logits are fixed to it). The network is ``graph_model.GraphTransformer``'s layers with
DiGress's kind of structural inputs for generic graphs (its extra cycle and spectral features),
here: degree, local clustering, random-walk return probabilities diag(P^k), k = 2..5 (bounded
substitutes for DiGress's k-cycle counts), the two first non-trivial eigenvectors of the normalised
Laplacian, and per graph the component count, edge density, mean clustering and the first
non-trivial Laplacian eigenvalues. The node count is drawn from the training histogram.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import networkx as nx
import numpy as np
import torch
from torch import Tensor, nn

from polydiff.core import discrete
from polydiff.core.discrete.graph import (GraphCrossEntropy, GraphProcess, node_mask_from_sizes, pair_mask,
                                         sample_graph)

from polydiff.core.training.files import read_model_folder, write_model_folder
from polydiff.core.training.step import gradient_step

from .graph_model import GraphTransformer
from .shipped import shipped_folder

DATASETS = ("community-small", "sbm", "sbm-small", "planar", "planar-small")
#: shipped models (``weights/<name>``, trained by ``benchmarks/graphs.py``; see their README.md)
PRETRAINED = {"community-small": "the 2-D model on community-small, 14 CPU-minutes"}
_ARCH_KEYS = ("layers", "dx", "de", "dy", "heads", "schedule")


# ------------------------------------------------------------------ generators
def community_graph(rng: np.random.Generator, max_nodes: int, num_communities: int = 2, p_in: float = 0.7,
                    p_inter: float = 0.05) -> nx.Graph:
    """A GraphRNN/GDSS community graph (module docstring): ``num_communities`` G(max_nodes // c, p_in)
    communities; each cross pair is an edge with probability 2 p_inter / ((c - 1) * size); at least one
    edge between every pair of communities."""
    if num_communities < 2 or max_nodes < 2 * num_communities:
        raise ValueError(f"need num_communities >= 2 and max_nodes >= 2 * num_communities, got "
                         f"{num_communities}, {max_nodes}")
    size = max_nodes // num_communities
    p_bridge = p_inter * 2 / ((num_communities - 1) * size)
    g = nx.Graph()
    g.add_nodes_from(range(size * num_communities))
    blocks = [list(range(k * size, (k + 1) * size)) for k in range(num_communities)]
    for b in blocks:
        for i in range(size):
            for j in range(i + 1, size):
                if rng.random() < p_in:
                    g.add_edge(b[i], b[j])
    for a in range(num_communities):
        for c in range(a + 1, num_communities):
            drew = False
            for u in blocks[a]:
                for v in blocks[c]:
                    if rng.random() < p_bridge:
                        g.add_edge(u, v)
                        drew = True
            if not drew:
                g.add_edge(blocks[a][0], blocks[c][0])
    return g


def sbm_graph(rng: np.random.Generator, blocks: Tuple[int, int] = (2, 5), block_size: Tuple[int, int] = (20, 40),
              p_intra: float = 0.3, p_inter: float = 0.005) -> nx.Graph:
    """A stochastic block model graph as SPECTRE draws it: the block count and each block's size
    uniform in the given inclusive ranges, edges independent with p_intra / p_inter. The block of
    each node is stored as node attribute ``block``."""
    k = int(rng.integers(blocks[0], blocks[1] + 1))
    sizes = rng.integers(block_size[0], block_size[1] + 1, size=k)
    labels = np.repeat(np.arange(k), sizes)
    n = len(labels)
    p = np.where(labels[:, None] == labels[None, :], p_intra, p_inter)
    u = rng.random((n, n))
    adj = np.triu(u < p, 1)
    g = nx.Graph()
    g.add_nodes_from((i, {"block": int(labels[i])}) for i in range(n))
    g.add_edges_from(zip(*np.nonzero(adj)))
    return g


def planar_graph(rng: np.random.Generator, n: int = 64) -> nx.Graph:
    """The Delaunay triangulation of n uniform points in the unit square (SPECTRE's planar graphs)."""
    from scipy.spatial import Delaunay
    if n < 3:
        raise ValueError(f"a triangulation needs n >= 3 points, got {n}")
    tri = Delaunay(rng.random((n, 2)))
    g = nx.Graph()
    g.add_nodes_from(range(n))
    for s in tri.simplices:
        a, b, c = (int(v) for v in s)
        g.add_edges_from([(a, b), (b, c), (a, c)])
    return g


@dataclass
class GraphDataset:
    """A synthetic family: train / val / test lists of networkx graphs, the largest size, and the
    generator's parameters (``params``, which the validity check of ``graph_metrics`` reads)."""
    name: str
    train: List[nx.Graph]
    val: List[nx.Graph]
    test: List[nx.Graph]
    params: Dict[str, Any] = field(default_factory=dict)

    @property
    def max_nodes(self) -> int:
        return max(g.number_of_nodes() for g in self.train + self.val + self.test)


def load(name: str, seed: int = 0, n_graphs: Optional[int] = None) -> GraphDataset:
    """The data set ``name`` (one of ``DATASETS``), generated with ``numpy.random.default_rng(seed)``;
    ``n_graphs`` overrides the paper's count (for quick tests)."""
    if name not in DATASETS:
        raise ValueError(f"unknown graph data set {name!r}; valid: {', '.join(DATASETS)}")
    if n_graphs is not None and (isinstance(n_graphs, bool) or not isinstance(n_graphs, int) or n_graphs < 5):
        raise ValueError(f"n_graphs must be an integer >= 5, got {n_graphs!r}")
    rng = np.random.default_rng(seed)
    if name == "community-small":
        m = n_graphs or 100
        params = {"family": "community", "num_communities": 2, "p_in": 0.7, "p_inter": 0.05, "max_nodes": (12, 20)}
        graphs = [community_graph(rng, int(rng.integers(12, 21))) for _ in range(m)]
        n_test = int(0.2 * m)
        return GraphDataset(name, graphs[n_test:], [], graphs[:n_test], params)
    if name.startswith("sbm"):
        small = name == "sbm-small"
        params = {"family": "sbm", "blocks": (2, 3) if small else (2, 5), "block_size": (6, 10) if small else (20, 40),
                  "p_intra": 0.5 if small else 0.3, "p_inter": 0.05 if small else 0.005}
        graphs = [sbm_graph(rng, params["blocks"], params["block_size"], params["p_intra"], params["p_inter"])
                  for _ in range(n_graphs or 200)]
    else:
        params = {"family": "planar", "n": 20 if name == "planar-small" else 64}
        graphs = [planar_graph(rng, params["n"]) for _ in range(n_graphs or 200)]
    m = len(graphs)
    n_test = int(0.2 * m)
    n_val = int(0.2 * (m - n_test))
    return GraphDataset(name, graphs[n_test + n_val:], graphs[n_test:n_test + n_val], graphs[:n_test], params)


# ------------------------------------------------------------------ dense <-> networkx
def to_dense(graphs: Sequence[nx.Graph], max_nodes: int) -> Tuple[Tensor, Tensor, Tensor]:
    """(node types zeros (B, N), edge types (B, N, N) in {0, 1}, node_mask (B, N)) of graphs, nodes in
    the graphs' own order; ValueError for a graph larger than max_nodes or with a self-loop."""
    B = len(graphs)
    if B == 0:
        raise ValueError("to_dense needs at least one graph")
    e = torch.zeros(B, max_nodes, max_nodes, dtype=torch.long)
    sizes = torch.zeros(B, dtype=torch.long)
    for b, g in enumerate(graphs):
        n = g.number_of_nodes()
        if n > max_nodes or n < 1:
            raise ValueError(f"graph {b} has {n} nodes; need 1..{max_nodes}")
        if nx.number_of_selfloops(g):
            raise ValueError(f"graph {b} has self-loops")
        a = nx.to_numpy_array(g, nodelist=list(g.nodes()), dtype=np.int64, weight=None)
        e[b, :n, :n] = torch.from_numpy((a > 0).astype(np.int64))
        sizes[b] = n
    mask = torch.arange(max_nodes)[None, :] < sizes[:, None]
    return torch.zeros(B, max_nodes, dtype=torch.long), e, mask


def from_dense(e: Tensor, node_mask: Tensor) -> List[nx.Graph]:
    """networkx graphs of dense edge types (any non-zero type is an edge), one per row of node_mask."""
    if e.dim() != 3 or node_mask.shape != e.shape[:2]:
        raise ValueError(f"need e (B, N, N) and node_mask (B, N), got {tuple(e.shape)} and {tuple(node_mask.shape)}")
    out = []
    for b in range(e.shape[0]):
        n = int(node_mask[b].sum())
        a = (e[b, :n, :n] > 0).cpu().numpy()
        g = nx.Graph()
        g.add_nodes_from(range(n))
        g.add_edges_from((int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(a, 1))))
        out.append(g)
    return out


# ------------------------------------------------------------------ network
N_NODE_FEATURES = 9     # degree / 10, degree / (n - 1), clustering, diag(P^k) k = 2..5, 2 eigenvectors
N_GRAPH_FEATURES = 9    # t, n / N, density, components / 10, mean clustering, 4 eigenvalues


@torch.no_grad()
def generic_features(e: Tensor, node_mask: Tensor, max_nodes: int) -> Tuple[Tensor, Tensor]:
    """Structural inputs of a (noisy) generic graph, after DiGress's extra cycle and spectral features
    (module docstring): per node (B, N, 9), per graph (B, 8); the network adds the time. All bounded."""
    pm = pair_mask(node_mask)
    a = ((e > 0) & pm).double()
    B, N = node_mask.shape
    n = node_mask.double().sum(-1)
    deg = a.sum(-1)
    a3 = torch.diagonal(a @ a @ a, dim1=1, dim2=2)
    pairs = deg * (deg - 1)
    clust = torch.where(pairs > 0, a3 / pairs.clamp_min(1), torch.zeros_like(a3))
    inv = torch.where(deg > 0, 1.0 / deg.clamp_min(1), torch.zeros_like(deg))
    p = a * inv[..., None]
    walks, pk = [], p
    for _ in range(2, 6):
        pk = pk @ p
        walks.append(torch.diagonal(pk, dim1=1, dim2=2))
    # normalised Laplacian; padded nodes get 3 on the diagonal so their eigenvalues sort last
    dinv = torch.where(deg > 0, deg.clamp_min(1).rsqrt(), torch.zeros_like(deg))
    lap = torch.diag_embed((deg > 0).double()) - dinv[..., None] * a * dinv[:, None, :]
    lap = lap + torch.diag_embed((~node_mask).double() * 3.0)
    evals, evecs = torch.linalg.eigh(lap)
    comps = ((evals < 1e-6) & (evals > -1)).sum(-1)
    # isolated real nodes have a zero row: eigenvalue 0, counted as components, as they should be
    vec_feats, val_feats = [], []
    for k in range(2):
        idx = (comps + k).clamp_max(N - 1)
        v = evecs.gather(2, idx[:, None, None].expand(B, N, 1))[..., 0]
        ok = (comps + k < n)[:, None].double()
        vec_feats.append(v * n.sqrt()[:, None] * ok * node_mask.double())
    for k in range(4):
        idx = (comps + k).clamp_max(N - 1)
        lam = evals.gather(1, idx[:, None])[:, 0]
        val_feats.append(torch.where(comps + k < n, lam, torch.zeros_like(lam)))
    nm = node_mask.double()
    node = torch.stack([deg / 10, deg / (n - 1).clamp_min(1)[:, None], clust] + walks + vec_feats, -1) * nm[..., None]
    density = a.sum((1, 2)) / (n * (n - 1)).clamp_min(1)
    mean_clust = (clust * nm).sum(-1) / n.clamp_min(1)
    graph = torch.stack([n / max_nodes, density, comps.double() / 10, mean_clust] + val_feats, -1)
    return node.float(), graph.float()


class GenericGraphTransformer(GraphTransformer):
    """``GraphTransformer`` (DiGress's layers) with the generic structural inputs of
    ``generic_features`` and one fixed node type: D(x_t, e_t, t, node_mask) -> (node logits (B, N, 2)
    certain of type 0, symmetric edge logits (B, N, N, 2))."""

    def __init__(self, max_nodes: int, layers: int = 4, dx: int = 32, de: int = 16, dy: int = 32,
                 heads: int = 4) -> None:
        super().__init__(2, 2, max_nodes, layers, dx, de, dy, heads)
        self.in_x = nn.Sequential(nn.Linear(N_NODE_FEATURES, dx), nn.SiLU(), nn.Linear(dx, dx))
        self.in_y = nn.Sequential(nn.Linear(N_GRAPH_FEATURES, dy), nn.SiLU(), nn.Linear(dy, dy))
        self.out_x = None        # one node type: nothing to predict

    def forward(self, x_t: Tensor, e_t: Tensor, t: Tensor, node_mask: Tensor) -> Tuple[Tensor, Tensor]:
        B, N = node_mask.shape
        if N != self.max_nodes:
            raise ValueError(f"this network takes graphs padded to {self.max_nodes} nodes, got {N}")
        if tuple(e_t.shape) != (B, N, N):
            raise ValueError(f"expected edge types {(B, N, N)}, got {tuple(e_t.shape)}")
        dtype = self.in_x[0].weight.dtype
        nf, gf = generic_features(e_t, node_mask, N)
        t = torch.as_tensor(t, device=e_t.device).to(dtype).reshape(-1).expand(B)
        h = self.in_x(nf.to(dtype)) * node_mask[..., None].to(dtype)
        pm = pair_mask(node_mask)[..., None].to(dtype)
        g = self.in_e(nn.functional.one_hot(e_t.clamp(0, 1), 2).to(dtype)) * pm
        y = self.in_y(torch.cat([t[:, None], gf.to(dtype)], -1))
        for blk in self.blocks:
            h, g, y = blk(h, g, y, node_mask)
        le = self.out_e(g)
        le = 0.5 * (le + le.transpose(1, 2))
        lx = torch.zeros(B, N, 2, dtype=le.dtype, device=le.device)
        lx[..., 1] = -1e4
        return lx, le


# ------------------------------------------------------------------ the model
class SyntheticGraphModel:
    """DiGress on plain graphs: edge density, node-count histogram, processes and the network.

    ``sample(n, steps, generator)`` -> list of networkx graphs; ``save`` / ``load`` a folder with
    ``config.json`` and ``model.safetensors``."""

    def __init__(self, edge_density: float, size_counts: Sequence[float], layers: int = 4, dx: int = 32,
                 de: int = 16, dy: int = 32, heads: int = 4, schedule: str = "cosine",
                 net: Optional[GenericGraphTransformer] = None) -> None:
        d = float(edge_density)
        if not (0.0 < d < 1.0):
            raise ValueError(f"edge_density must lie in (0, 1), got {edge_density!r}")
        sc = torch.as_tensor(size_counts, dtype=torch.float64)
        if sc.dim() != 1 or sc.numel() < 3 or (sc < 0).any() or not torch.isfinite(sc).all() or sc[1:].sum() <= 0:
            raise ValueError("size_counts must be non-negative finite counts of graphs with 0..N nodes (N >= 2)")
        if sc[0] > 0:
            raise ValueError("size_counts[0] (empty graphs) must be 0")
        self.edge_density, self.size_counts = d, sc
        self.max_nodes = int(sc.numel()) - 1
        self.arch = {"layers": int(layers), "dx": int(dx), "de": int(de), "dy": int(dy), "heads": int(heads),
                     "schedule": str(schedule)}
        self.process = GraphProcess(discrete.Marginal([1.0, 0.0], schedule), discrete.Marginal([1 - d, d], schedule))
        self.net = net if net is not None else GenericGraphTransformer(self.max_nodes, layers, dx, de, dy, heads)

    @classmethod
    def from_graphs(cls, graphs: Sequence[nx.Graph], max_nodes: Optional[int] = None, **arch: Any
                    ) -> "SyntheticGraphModel":
        """A fresh model whose edge density and size histogram are those of ``graphs``."""
        if not graphs:
            raise ValueError("from_graphs needs at least one graph")
        sizes = [g.number_of_nodes() for g in graphs]
        N = max(sizes) if max_nodes is None else int(max_nodes)
        if N < max(sizes):
            raise ValueError(f"max_nodes={N} is smaller than the largest graph ({max(sizes)} nodes)")
        edges = sum(g.number_of_edges() for g in graphs)
        pairs = sum(n * (n - 1) / 2 for n in sizes)
        return cls(edges / pairs, np.bincount(sizes, minlength=N + 1).astype(float).tolist(), **arch)

    def node_mask(self, sizes: Tensor) -> Tensor:
        return node_mask_from_sizes(sizes, self.max_nodes)

    @torch.no_grad()
    def sample(self, n: int, steps: int = 100, generator: Optional[torch.Generator] = None,
               batch_size: int = 64) -> List[nx.Graph]:
        """n graphs: sizes from the training histogram, then DiGress's ancestral sampler."""
        for name, v in (("n", n), ("steps", steps), ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.net.eval()
        out: List[nx.Graph] = []
        for k in range(0, n, batch_size):
            m = min(batch_size, n - k)
            mask = self.node_mask(discrete.categorical(self.size_counts.expand(m, -1), generator))
            _, e = sample_graph(self.net, mask, process=self.process, steps=steps, generator=generator)
            out.extend(from_dense(e, mask))
        return out

    def config(self) -> Dict[str, Any]:
        return {"kind": "synthetic-graph", "edge_density": self.edge_density,
                "size_counts": self.size_counts.tolist(), **self.arch}

    def save(self, folder: Union[str, Path], extra: Optional[Dict[str, Any]] = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (float32) into folder."""
        state = {k: v.detach().float() for k, v in self.net.state_dict().items()}
        return write_model_folder(folder, {**self.config(), **(extra or {})}, state)

    @classmethod
    def load(cls, folder: Union[str, Path]) -> "SyntheticGraphModel":
        cfg, state = read_model_folder(folder, "synthetic graph model")
        if cfg.get("kind") != "synthetic-graph":
            raise ValueError(f"{folder} holds no synthetic graph model (config kind {cfg.get('kind')!r})")
        model = cls(cfg["edge_density"], cfg["size_counts"], **{k: cfg[k] for k in _ARCH_KEYS if k in cfg})
        model.net.load_state_dict(state)
        model.net.eval()
        return model


# ------------------------------------------------------------------ training
def train(model: SyntheticGraphModel, graphs: Sequence[nx.Graph], *, steps: int = 1000, minutes: float = 0.0,
          batch_size: int = 32, lr: float = 2e-4, warmup: int = 100, edge_weight: float = 5.0,
          ema_half_life: float = 20_000.0, seed: int = 0, log: Optional[Callable[[Dict[str, Any]], None]] = None,
          log_every: int = 200) -> Dict[str, Any]:
    """Fit ``model`` to ``graphs`` with DiGress's loss (``GraphCrossEntropy``: edge CE x edge_weight;
    the node term is 0 here), AdamW with warm-up and cosine decay over the budget (``steps`` or
    ``minutes``, whichever ends first, drives the schedule), gradient clipping, and an EMA of the
    weights (``core.training.ema.EMA``) that replaces the network at the end. Returns a summary."""
    from polydiff.core.training.ema import EMA
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("steps and batch_size must be integers >= 1 and lr > 0")
    x_all, e_all, m_all = to_dense(list(graphs), model.max_nodes)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    loss_fn = GraphCrossEntropy(model.process, edge_weight=edge_weight)
    net = model.net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-12)
    ema = EMA(net, ema_half_life, rampup=0.05)
    t0 = time.time()
    perm, pos, step, recent, history = torch.randperm(len(x_all), generator=gen), 0, 0, [], []
    while step < steps:
        elapsed = time.time() - t0
        frac = max(step / steps, elapsed / (60 * minutes) if minutes else 0.0)
        if frac >= 1.0:
            break
        if step < warmup:
            cur = lr * (step + 1) / warmup
        else:
            cur = lr / 20 + (lr - lr / 20) * 0.5 * (1 + math.cos(math.pi * frac))
        if pos + batch_size > len(x_all):
            perm, pos = torch.randperm(len(x_all), generator=gen), 0
        if batch_size <= len(x_all):
            idx = perm[pos:pos + batch_size]
        else:
            idx = torch.randint(0, len(x_all), (batch_size,), generator=gen)
        pos += batch_size
        loss = loss_fn(net, x_all[idx], e_all[idx], m_all[idx], generator=gen).mean()
        gradient_step(opt, loss, step=step, lr=cur)
        step += 1
        ema.update(net, step * len(idx), len(idx))
        recent.append(float(loss.detach()))
        if step % log_every == 0:
            row = {"step": step, "seconds": round(time.time() - t0, 1), "loss": float(np.mean(recent)), "lr": cur}
            history.append(row)
            recent = []
            if log is not None:
                log(row)
    model.net = ema.module.eval()
    return {"steps": step, "seconds": round(time.time() - t0, 1), "graphs": len(x_all), "batch_size": batch_size,
            "lr": lr, "edge_weight": edge_weight, "ema_half_life": ema_half_life, "seed": seed,
            "parameters": sum(p.numel() for p in net.parameters()), "history": history}


__all__ = ["DATASETS", "PRETRAINED", "pretrained", "GraphDataset", "load", "community_graph", "sbm_graph", "planar_graph", "to_dense",
           "from_dense", "generic_features", "GenericGraphTransformer", "SyntheticGraphModel", "train"]


def pretrained(name: str = "community-small") -> "SyntheticGraphModel":
    """A shipped synthetic-graph model by data-set name (``PRETRAINED`` lists them)."""
    return SyntheticGraphModel.load(shipped_folder(
        name, PRETRAINED, "synthetic-graph", "synthetic_graphs",
        command=f"python benchmarks/graphs.py --datasets {name} --no-eval (then copy its model folder)"))
