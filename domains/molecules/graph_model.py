"""DiGress: 2-D molecular graph diffusion on QM9 (heavy atoms, implicit hydrogens).

DiGress (Vignac et al., "DiGress: Discrete Denoising diffusion for graph generation", ICLR 2023)
diffuses node types and edge types of a dense graph with discrete marginal transitions and denoises
with a graph transformer. Here:

* **Graphs.** A molecule is its heavy atoms (node types: the (element, formal charge) tokens of
  QM9 train, ``AtomVocab.from_mols``, e.g. C, N, N+, O, O-, F) and its kekulized bonds (edge types
  0 none, 1 single, 2 double, 3 triple), padded to ``max_nodes`` = 9 with ``node_mask``. Charges and
  kekulized bonds let RDKit rebuild the exact molecule (implicit H from valences).
* **Noise.** ``core.discrete.graph.GraphProcess`` of two ``discrete.Marginal`` processes whose limits
  are the training marginals of node and edge types (DiGress's marginal transitions, Sec. 4.1),
  core "cosine" schedule; every unordered pair is noised once, so edge noise stays symmetric, and
  padded nodes stay masked.
* **Network.** ``GraphTransformer``: DiGress's layer (Sec. 4 / App. B): attention scores
  Q_i * K_j (per channel) modulated by the edge features (FiLM), the scores themselves become the
  new edge features, node and edge features are FiLM-modulated by global features y, and y is
  updated from pooled node and edge features; residuals, layer norms, feed-forward blocks. Inputs
  are the noisy one-hot types plus DiGress-style structural features computed from the noisy graph
  (degree, valence, closed-walk counts diag(A^k), k = 3..6, which see rings) and y = (t, n / N).
  Edge outputs are symmetrised.
* **Size.** The node count is drawn from the training histogram.
* **Sampling.** ``core.discrete.graph.sample_graph`` (ancestral, DiGress's reverse step).
* **Property conditioning** (optional; ``train_graph --condition alpha``): the properties, normalised by
  the training mean / std, pass through an MLP into the global features y; a learned null embedding
  replaces them with probability 0.1 in training, so the same network gives p(G | c) and p(G), and
  ``generate(n, condition={"alpha": values}, guidance_scale=w)`` samples with classifier-free guidance
  (Ho & Salimans, "Classifier-Free Diffusion Guidance", 2022; on the x0 distribution, core's
  ``discrete.guidance.ClassifierFreeGuidance``). The node count of a conditional sample is drawn from
  p(n | c), EDM's joint histogram of (node count, property bin) of the training set (Hoogeboom et al.
  2022, Sec. 5.2), unless ``sizes=`` gives it. The new layers are zero-initialised, so a conditional
  net loaded from unconditional weights computes exactly the unconditional model.

``pretrained("qm9-2d")`` loads the shipped weights (``weights/qm9-2d``, trained by
``python -m polydiff.domains.molecules.train_graph``; see its README.md); ``pretrained("qm9-2d-alpha")``
the alpha-conditioned model (``weights/qm9-2d-alpha``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polydiff.core import discrete
from polydiff.core.discrete.graph import GraphProcess, node_mask_from_sizes, pair_mask, sample_graph
from polydiff.core.training.files import read_model_folder, write_model_folder

from .shipped import WEIGHTS_DIR, shipped_folder
from .convert import AtomVocab

PRETRAINED = {"qm9-2d": "DiGress (2-D graph diffusion) on QM9 heavy atoms, trained on CPU; see its README.md",
              "qm9-2d-alpha": "qm9-2d fine-tuned on EDM's half B of QM9 train, conditioned on alpha (classifier-free); "
                              "see its README.md"}
EDGE_NAMES = ("none", "single", "double", "triple")
# DiGress samples with T = 500 steps. On the first 58-minute qm9-2d weights, 500 ancestral steps gave 94.4 % valid
# molecules over 10 000 against 90.0 % at 100 (benchmarks/RESULTS.md, "QM9 2-D: sampling steps").
DEFAULT_STEPS = 500
BOND_ORDER = (0.0, 1.0, 2.0, 3.0)
_ARCH_KEYS = ("layers", "dx", "de", "dy", "heads", "schedule")


# ------------------------------------------------------------------ molecule <-> dense graph
def mol_to_dense(mol: Any, vocab: AtomVocab, max_nodes: int) -> Tuple[np.ndarray, np.ndarray]:
    """Node types (max_nodes,) and edge types (max_nodes, max_nodes) of a molecule's heavy atoms and
    kekulized bonds (padding: node 0 with the mask false, edge 0); ValueError if too large, unknown
    atoms or aromatic bonds that cannot be kekulized."""
    from rdkit import Chem
    if mol is None:
        raise ValueError("mol_to_dense got None")
    m = Chem.RemoveHs(mol, sanitize=False)
    m = Chem.Mol(m)
    try:
        Chem.Kekulize(m, clearAromaticFlags=True)
    except Exception as err:
        raise ValueError(f"cannot kekulize molecule: {err}") from None
    n = m.GetNumAtoms()
    if n > max_nodes:
        raise ValueError(f"molecule has {n} heavy atoms, more than max_nodes={max_nodes}")
    x = np.zeros(max_nodes, dtype=np.int64)
    e = np.zeros((max_nodes, max_nodes), dtype=np.int64)
    for a in m.GetAtoms():
        x[a.GetIdx()] = vocab.index(a.GetSymbol(), a.GetFormalCharge())
    kinds = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3}
    for b in m.GetBonds():
        if b.GetBondType() not in kinds:
            raise ValueError(f"bond type {b.GetBondType()} is not single/double/triple after kekulization")
        i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
        e[i, j] = e[j, i] = kinds[b.GetBondType()]
    return x, e


def dense_to_mol(x: Tensor, e: Tensor, n: int, vocab: AtomVocab) -> Optional[Any]:
    """The sanitized RDKit molecule of the first n nodes of a dense graph, or None when RDKit rejects
    the whole molecule (DiGress's validity rule: sanitization of the whole graph, fragments allowed)."""
    from rdkit import Chem
    rw = Chem.RWMol()
    xs = x[:n].tolist()
    for k in xs:
        sym, charge = vocab.tokens[k]
        atom = Chem.Atom(sym)
        atom.SetFormalCharge(charge)
        rw.AddAtom(atom)
    kinds = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
    ee = e[:n, :n]
    idx = torch.nonzero(torch.triu(ee, diagonal=1)).tolist()
    for i, j in idx:
        rw.AddBond(int(i), int(j), kinds[int(ee[i, j])])
    mol = rw.GetMol()
    try:
        Chem.SanitizeMol(mol)
    except Exception:
        return None
    return mol


# ------------------------------------------------------------------ network
class _FiLM(nn.Module):
    """h * (1 + scale(y)) + shift(y), y broadcast over the middle dimensions."""

    def __init__(self, dy: int, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dy, 2 * d)

    def forward(self, h: Tensor, y: Tensor) -> Tensor:
        scale, shift = self.lin(y).chunk(2, -1)
        shape = (y.shape[0],) + (1,) * (h.dim() - 2) + (h.shape[-1],)
        return h * (1 + scale.view(shape)) + shift.view(shape)


def _masked_pool(h: Tensor, mask: Tensor, dims: Tuple[int, ...]) -> Tensor:
    """Masked mean and max over ``dims`` -> (B, 2 d)."""
    m = mask.to(h.dtype)
    cnt = m.sum(dims).clamp_min(1.0)
    mean = (h * m).sum(dims) / cnt
    mx = h.masked_fill(~mask, -1e4).amax(dims)
    return torch.cat([mean, mx], -1)


class GraphTransformerLayer(nn.Module):
    """One DiGress graph-transformer layer (Vignac et al. 2023, App. B, Fig. 6), written for dense
    padded graphs: edge-FiLMed per-channel attention scores -> new edges; softmax over neighbours ->
    new nodes; y-FiLM on both; y updated from pooled features; residual + LayerNorm + feed-forward."""

    def __init__(self, dx: int, de: int, dy: int, heads: int) -> None:
        super().__init__()
        if dx % heads:
            raise ValueError(f"dx={dx} must be divisible by heads={heads}")
        self.h, self.dh = heads, dx // heads
        self.q, self.k, self.v = nn.Linear(dx, dx), nn.Linear(dx, dx), nn.Linear(dx, dx)
        self.e_mul, self.e_add = nn.Linear(de, dx), nn.Linear(de, dx)
        self.y_e, self.y_x = _FiLM(dy, dx), _FiLM(dy, dx)
        self.e_out, self.x_out = nn.Linear(dx, de), nn.Linear(dx, dx)
        self.y_in = nn.Linear(dy, dy)
        self.y_pool = nn.Linear(2 * dx + 2 * de, dy)
        self.y_out = nn.Sequential(nn.Linear(dy, dy), nn.SiLU(), nn.Linear(dy, dy))
        self.ln_x1, self.ln_x2 = nn.LayerNorm(dx), nn.LayerNorm(dx)
        self.ln_e1, self.ln_e2 = nn.LayerNorm(de), nn.LayerNorm(de)
        self.ln_y1, self.ln_y2 = nn.LayerNorm(dy), nn.LayerNorm(dy)
        self.ff_x = nn.Sequential(nn.Linear(dx, 2 * dx), nn.SiLU(), nn.Linear(2 * dx, dx))
        self.ff_e = nn.Sequential(nn.Linear(de, 2 * de), nn.SiLU(), nn.Linear(2 * de, de))
        self.ff_y = nn.Sequential(nn.Linear(dy, 2 * dy), nn.SiLU(), nn.Linear(2 * dy, dy))

    def forward(self, x: Tensor, e: Tensor, y: Tensor, node_mask: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        B, N, dx = x.shape
        nm = node_mask[..., None].to(x.dtype)
        pm = pair_mask(node_mask)
        q = self.q(x).view(B, N, 1, dx)
        k = self.k(x).view(B, 1, N, dx)
        v = self.v(x).view(B, N, self.h, self.dh)
        s = q * k / math.sqrt(self.dh)                                   # (B, N, N, dx) per-channel scores
        s = s * (self.e_mul(e) + 1) + self.e_add(e)                      # edge FiLM
        new_e = self.e_out(self.y_e(s, y)) * pm[..., None].to(x.dtype)
        a = s.view(B, N, N, self.h, self.dh).masked_fill(~pm[..., None, None], -1e4)
        a = torch.softmax(a, dim=2) * pm[..., None, None].to(x.dtype)    # over neighbours j
        msg = (a * v[:, None]).sum(2).reshape(B, N, dx)
        new_x = self.x_out(self.y_x(msg, y)) * nm
        new_y = self.y_in(y) + self.y_pool(torch.cat([_masked_pool(x, node_mask[..., None], (1,)),
                                                      _masked_pool(e, pm[..., None], (1, 2))], -1))
        new_y = self.y_out(new_y)
        x = self.ln_x1(x + new_x)
        e = self.ln_e1(e + new_e)
        y = self.ln_y1(y + new_y)
        x = self.ln_x2(x + self.ff_x(x)) * nm
        e = self.ln_e2(e + self.ff_e(e)) * pm[..., None].to(x.dtype)
        y = self.ln_y2(y + self.ff_y(y))
        return x, e, y


N_NODE_FEATURES = 6     # degree, valence, diag(A^k) for k = 3..6
N_GRAPH_FEATURES = 7    # t, n / N, sum of valences / (4 N), trace(A^k) / (N k) for k = 3..6


def structural_features(e: Tensor, node_mask: Tensor, max_nodes: int) -> Tuple[Tensor, Tensor]:
    """DiGress-style extra features of a (noisy) graph: per node (B, N, 6) degree / 4, valence / 4 and
    closed walks diag(A^k) / 10 for k = 3..6 (triangles, squares... seen through walks); per graph
    (B, 6) n / N, total valence / (4 N) and trace(A^k) / (N k) for k = 3..6."""
    order = torch.tensor(BOND_ORDER, dtype=torch.float32, device=e.device)
    w = order[e] * pair_mask(node_mask).float()
    a = (w > 0).float()
    deg = a.sum(-1)
    val = w.sum(-1)
    feats = [deg / 4, val / 4]
    walks = []
    p = a @ a
    for _ in range(3, 7):
        p = p @ a
        d = torch.diagonal(p, dim1=1, dim2=2)
        feats.append(d / 10)
        walks.append(d.sum(-1))
    node = torch.stack(feats, -1)
    n = node_mask.float().sum(-1)
    graph = [n / max_nodes, val.sum(-1) / (4 * max_nodes)] + [wk / (max_nodes * k) for wk, k in zip(walks, range(3, 7))]
    return node, torch.stack(graph, -1)


class GraphTransformer(nn.Module):
    """D(x_t, e_t, t, node_mask) -> (node logits (B, N, Vx), edge logits (B, N, N, Ve), symmetric)."""

    def __init__(self, node_types: int, edge_types: int, max_nodes: int, layers: int = 4, dx: int = 128,
                 de: int = 32, dy: int = 64, heads: int = 8, cond_dim: int = 0) -> None:
        super().__init__()
        for name, v, lo in (("node_types", node_types, 2), ("edge_types", edge_types, 2), ("max_nodes", max_nodes, 2),
                            ("layers", layers, 1), ("dx", dx, 1), ("de", de, 1), ("dy", dy, 1), ("heads", heads, 1),
                            ("cond_dim", cond_dim, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        self.node_types, self.edge_types, self.max_nodes = node_types, edge_types, max_nodes
        self.cond_dim = cond_dim
        if cond_dim:
            # property conditioning (classifier-free): an MLP of the normalised properties, or a learned null
            # embedding, added to the global features y; both start at zero, so a net initialised from an
            # unconditional one computes exactly what it computed (Ho & Salimans 2022; DiGress App. conditioning)
            self.cond_emb = nn.Sequential(nn.Linear(cond_dim, dy), nn.SiLU(), nn.Linear(dy, dy))
            nn.init.zeros_(self.cond_emb[2].weight)
            nn.init.zeros_(self.cond_emb[2].bias)
            self.cond_null = nn.Parameter(torch.zeros(dy))
        self.in_x = nn.Sequential(nn.Linear(node_types + N_NODE_FEATURES, dx), nn.SiLU(), nn.Linear(dx, dx))
        self.in_e = nn.Sequential(nn.Linear(edge_types, de), nn.SiLU(), nn.Linear(de, de))
        self.in_y = nn.Sequential(nn.Linear(N_GRAPH_FEATURES, dy), nn.SiLU(), nn.Linear(dy, dy))
        self.blocks = nn.ModuleList(GraphTransformerLayer(dx, de, dy, heads) for _ in range(layers))
        self.out_x = nn.Sequential(nn.Linear(dx, dx), nn.SiLU(), nn.Linear(dx, node_types))
        self.out_e = nn.Sequential(nn.Linear(de, de), nn.SiLU(), nn.Linear(de, edge_types))

    def cond_embedding(self, cond: Optional[Tensor], drop: Optional[Tensor], batch: int, dtype: torch.dtype) -> Tensor:
        """(B, dy) embedding of normalised properties ``cond`` (B, cond_dim); the null embedding where
        ``drop`` (B,) bool is true or when ``cond`` is None."""
        null = self.cond_null.to(dtype).expand(batch, -1)
        if cond is None:
            return null
        cond = torch.as_tensor(cond)
        if tuple(cond.shape) != (batch, self.cond_dim):
            raise ValueError(f"cond must have shape {(batch, self.cond_dim)}, got {tuple(cond.shape)}")
        if not torch.isfinite(cond).all():
            raise ValueError("cond holds NaN or infinite values")
        emb = self.cond_emb(cond.to(dtype))
        if drop is None:
            return emb
        drop = torch.as_tensor(drop, dtype=torch.bool, device=emb.device)
        drop = drop.expand(batch) if drop.dim() == 0 else drop
        if tuple(drop.shape) != (batch,):
            raise ValueError(f"drop must be a bool or of shape ({batch},), got {tuple(drop.shape)}")
        return torch.where(drop[:, None], null, emb)

    def forward(self, x_t: Tensor, e_t: Tensor, t: Tensor, node_mask: Tensor, cond: Optional[Tensor] = None,
                drop: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Logits of x0; ``cond`` (B, cond_dim) normalised properties of a conditional net (None: the null
        embedding, i.e. unconditional), ``drop`` (B,) bool replaces them by the null embedding per graph."""
        B, N = node_mask.shape
        if not self.cond_dim and (cond is not None or drop is not None):
            raise ValueError("this network is unconditional (cond_dim=0) but got a condition")
        if N != self.max_nodes:
            raise ValueError(f"this network takes graphs padded to {self.max_nodes} nodes, got {N}")
        if tuple(x_t.shape) != (B, N) or tuple(e_t.shape) != (B, N, N):
            raise ValueError(f"expected node types {(B, N)} and edge types {(B, N, N)}, got {tuple(x_t.shape)} "
                             f"and {tuple(e_t.shape)}")
        dtype = self.in_x[0].weight.dtype
        nf, gf = structural_features(e_t, node_mask, N)
        t = torch.as_tensor(t, device=x_t.device).to(dtype).reshape(-1).expand(B)
        h = self.in_x(torch.cat([F.one_hot(x_t, self.node_types).to(dtype), nf.to(dtype)], -1))
        h = h * node_mask[..., None].to(dtype)
        pm = pair_mask(node_mask)[..., None].to(dtype)
        g = self.in_e(F.one_hot(e_t, self.edge_types).to(dtype)) * pm
        y = self.in_y(torch.cat([t[:, None], gf.to(dtype)], -1))
        if self.cond_dim:
            y = y + self.cond_embedding(cond, drop, B, dtype)
        for blk in self.blocks:
            h, g, y = blk(h, g, y, node_mask)
        lx = self.out_x(h)
        le = self.out_e(g)
        le = 0.5 * (le + le.transpose(1, 2))
        return lx, le


# ------------------------------------------------------------------ the model
def _check_count(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    return v


def condition_spec(names: Sequence[str], values: np.ndarray, sizes: np.ndarray, max_nodes: int,
                   bins: int = 20) -> Dict[str, Any]:
    """The conditioning record of a model (stored in its config.json): property ``names``, the training
    mean and std of each (normalisation), and per property the joint histogram of (property bin, node
    count) over ``bins`` equal-width bins (EDM's p(n | c) for sampling sizes). ``values`` (M, k)."""
    values = np.asarray(values, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    if values.ndim != 2 or values.shape[1] != len(names) or values.shape[0] != sizes.shape[0] or not len(names):
        raise ValueError(f"values must be (M, {len(names)}) for {sizes.shape[0]} sizes, got {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("property values hold NaN or infinite entries")
    hists, edges = [], []
    for j in range(values.shape[1]):
        ed = np.linspace(values[:, j].min(), values[:, j].max(), bins + 1)
        b = np.clip(np.searchsorted(ed[1:-1], values[:, j], side="right"), 0, bins - 1)
        h = np.zeros((bins, max_nodes + 1))
        np.add.at(h, (b, sizes), 1.0)
        hists.append(h.tolist())
        edges.append(ed.tolist())
    sd = values.std(0)
    return {"names": list(names), "mean": values.mean(0).tolist(), "std": np.where(sd > 0, sd, 1.0).tolist(),
            "bin_edges": edges, "size_hist": hists}


def _check_condition_spec(spec: Any, max_nodes: int) -> Dict[str, Any]:
    keys = ("names", "mean", "std", "bin_edges", "size_hist")
    if not isinstance(spec, dict) or any(k not in spec for k in keys):
        raise ValueError(f"condition must be a dict with {list(keys)} (see condition_spec)")
    k = len(spec["names"])
    if not k or any(len(spec[key]) != k for key in keys[1:]):
        raise ValueError("condition: names, mean, std, bin_edges and size_hist must have one entry per property")
    if any(float(s) <= 0 for s in spec["std"]):
        raise ValueError("condition: std must be > 0")
    for h in spec["size_hist"]:
        if np.asarray(h).ndim != 2 or np.asarray(h).shape[1] != max_nodes + 1:
            raise ValueError(f"condition: size_hist must be (bins, {max_nodes + 1})")
    return {key: spec[key] for key in keys}


class GraphDiffusionModel:
    """DiGress on molecules: vocabulary, node-count histogram, marginal processes and the network.

    ``sample_molecules(n, steps, seed)`` -> list of sanitized RDKit molecules or None (invalid);
    ``generate(n, steps=..., seed=...)`` is the same list (the ``polydiff generate molecules`` contract);
    ``save`` / ``load`` a folder with ``config.json`` and ``model.safetensors``."""

    def __init__(self, vocab: AtomVocab, node_marginal: Sequence[float], edge_marginal: Sequence[float],
                 size_counts: Sequence[float], layers: int = 4, dx: int = 128, de: int = 32, dy: int = 64,
                 heads: int = 8, schedule: str = "cosine", net: Optional[GraphTransformer] = None,
                 condition: Optional[Dict[str, Any]] = None) -> None:
        if not isinstance(vocab, AtomVocab):
            raise ValueError(f"vocab must be an AtomVocab, got {type(vocab).__name__}")
        if len(node_marginal) != len(vocab):
            raise ValueError(f"node_marginal has {len(node_marginal)} entries for {len(vocab)} atom types")
        if len(edge_marginal) != len(EDGE_NAMES):
            raise ValueError(f"edge_marginal must have {len(EDGE_NAMES)} entries ({', '.join(EDGE_NAMES)})")
        sc = torch.as_tensor(size_counts, dtype=torch.float64)
        if sc.dim() != 1 or sc.numel() < 3 or (sc < 0).any() or sc.sum() <= 0 or not torch.isfinite(sc).all():
            raise ValueError("size_counts must be non-negative counts of graphs with 0..N nodes (N >= 2)")
        if sc[0] > 0 or sc[1:].sum() <= 0:
            raise ValueError("size_counts[0] (empty graphs) must be 0")
        self.vocab = vocab
        self.max_nodes = int(sc.numel()) - 1
        self.size_counts = sc
        self.node_marginal = [float(v) for v in node_marginal]
        self.edge_marginal = [float(v) for v in edge_marginal]
        self.arch = {"layers": int(layers), "dx": int(dx), "de": int(de), "dy": int(dy), "heads": int(heads),
                     "schedule": str(schedule)}
        self.process = GraphProcess(discrete.Marginal(self.node_marginal, schedule),
                                    discrete.Marginal(self.edge_marginal, schedule))
        self.condition = _check_condition_spec(condition, self.max_nodes) if condition is not None else None
        k = len(self.condition["names"]) if self.condition else 0
        self.net = net if net is not None else GraphTransformer(len(vocab), len(EDGE_NAMES), self.max_nodes, layers,
                                                                dx, de, dy, heads, cond_dim=k)
        if getattr(self.net, "cond_dim", 0) != k:
            raise ValueError(f"the network takes {getattr(self.net, 'cond_dim', 0)} conditioning values, the model {k}")
        self.last_stats: Dict[str, int] = {}

    # ------------------------------------------------------------------ conditioning
    @property
    def condition_names(self) -> List[str]:
        """The properties this model is conditioned on ([] for an unconditional model)."""
        return list(self.condition["names"]) if self.condition else []

    def normalise_condition(self, condition: Dict[str, Any], n: int) -> Tensor:
        """(n, k) float32 tensor of the properties in ``condition`` (name -> n values in QM9's units),
        normalised by the training mean and std; ValueError for an unconditional model, unknown or missing
        names, wrong lengths or non-finite values."""
        if not self.condition:
            raise ValueError("this model is unconditional; it takes no condition (train one with --condition)")
        if not isinstance(condition, dict):
            raise ValueError(f"condition must be a dict name -> values, got {type(condition).__name__}")
        names = self.condition_names
        unknown = sorted(set(condition) - set(names))
        if unknown:
            raise ValueError(f"unknown condition {unknown}; this model is conditioned on {names}")
        missing = [k for k in names if k not in condition]
        if missing:
            raise ValueError(f"condition misses {missing}; this model is conditioned on {names}")
        cols = []
        for k, mu, sd in zip(names, self.condition["mean"], self.condition["std"]):
            v = torch.as_tensor(np.asarray(condition[k], dtype=np.float64)).reshape(-1)
            if v.numel() != n:
                raise ValueError(f"condition {k!r} has {v.numel()} values for {n} molecules")
            if not torch.isfinite(v).all():
                raise ValueError(f"condition {k!r} holds NaN or infinite values")
            cols.append((v - mu) / sd)
        return torch.stack(cols, -1).float()

    def sample_sizes_given(self, condition: Dict[str, Any], n: int, generator: Optional[torch.Generator] = None
                           ) -> Tensor:
        """n node counts drawn from p(n | properties): EDM's joint histogram of (node count, property bin)
        of the training set, one histogram per property; several properties combine as
        p(n) prod_k p(n | c_k) / p(n) (independent given n)."""
        z = self.normalise_condition(condition, n).double()
        spec = self.condition
        logp = torch.zeros(n, self.max_nodes + 1, dtype=torch.float64)
        prior = self.size_counts / self.size_counts.sum()
        for j, name in enumerate(spec["names"]):
            hist = torch.as_tensor(spec["size_hist"][j], dtype=torch.float64) + 1e-3 * prior   # (bins, N + 1)
            edges = torch.as_tensor(spec["bin_edges"][j], dtype=torch.float64)
            v = z[:, j] * spec["std"][j] + spec["mean"][j]
            b = torch.bucketize(v, edges[1:-1].contiguous(), right=True).clamp(0, hist.shape[0] - 1)
            cond_p = hist[b] / hist[b].sum(-1, keepdim=True)
            logp = logp + torch.log(cond_p) - (torch.log(prior.clamp_min(1e-300)) if j else 0)
        logp[:, 0] = -math.inf
        return discrete.categorical(torch.softmax(logp, -1), generator)

    def guided_denoiser(self, cond: Tensor, guidance_scale: float) -> Any:
        """The graph denoiser D(x, e, t, node_mask) conditioned on normalised properties ``cond`` (B, k) with
        classifier-free guidance (``core.discrete.guidance.ClassifierFreeGuidance``, scale w: 0 = the
        null-conditioned model, 1 = conditional, > 1 sharper). Node and edge logits are packed into one
        (B, N + N^2, V) tensor (-inf padding) so core's per-position wrapper sees a single denoiser."""
        from polydiff.core.discrete.guidance import ClassifierFreeGuidance
        net, N, Vx, Ve = self.net, self.max_nodes, self.net.node_types, self.net.edge_types
        V = max(Vx, Ve)

        def packed(z: Tensor, t: Tensor, node_mask: Tensor, drop: bool = False) -> Tensor:
            B = z.shape[0]
            lx, le = net(z[:, :N], z[:, N:].reshape(B, N, N), t, node_mask, cond=cond,
                         drop=torch.full((B,), bool(drop)))
            out = torch.full((B, N + N * N, V), -math.inf, dtype=lx.dtype, device=lx.device)
            out[:, :N, :Vx] = lx
            out[:, N:, :Ve] = le.reshape(B, N * N, Ve)
            return out

        cfg = ClassifierFreeGuidance(packed, guidance_scale, uncond={"drop": True})

        def denoise(x: Tensor, e: Tensor, t: Tensor, node_mask: Tensor) -> Tuple[Tensor, Tensor]:
            B = x.shape[0]
            out = cfg(torch.cat([x, e.reshape(B, N * N)], 1), t, node_mask=node_mask)
            return out[:, :N, :Vx], out[:, N:, :Ve].reshape(B, N, N, Ve)

        return denoise

    # ------------------------------------------------------------------ sampling
    def sample_sizes(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """n node counts drawn from the training histogram."""
        return discrete.categorical(self.size_counts.expand(_check_count(n, "n"), -1), generator)

    def node_mask(self, sizes: Tensor) -> Tensor:
        return node_mask_from_sizes(sizes, self.max_nodes)

    @torch.no_grad()
    def sample_graphs(self, n: int, steps: int = DEFAULT_STEPS, generator: Optional[torch.Generator] = None,
                      sizes: Optional[Tensor] = None, condition: Optional[Dict[str, Any]] = None,
                      guidance_scale: float = 1.0) -> Tuple[Tensor, Tensor, Tensor]:
        """(node types (n, N), edge types (n, N, N), node_mask (n, N)) from the model; with ``condition``
        (name -> n property values, QM9's units) a conditional model samples p(G | properties) with
        classifier-free guidance ``guidance_scale``, and node counts (unless ``sizes`` gives them) from
        p(n | properties)."""
        n, steps = _check_count(n, "n"), _check_count(steps, "steps")
        cond = None
        if condition is not None:
            cond = self.normalise_condition(condition, n)
            if sizes is None:
                sizes = self.sample_sizes_given(condition, n, generator)
        elif guidance_scale != 1.0:
            raise ValueError("guidance_scale needs a condition")
        mask = self.node_mask(self.sample_sizes(n, generator) if sizes is None else torch.as_tensor(sizes))
        if mask.shape[0] != n:
            raise ValueError(f"sizes has {mask.shape[0]} entries for n={n}")
        self.net.eval()
        den = self.net if cond is None else self.guided_denoiser(cond, guidance_scale)
        x, e = sample_graph(den, mask, process=self.process, steps=steps, generator=generator)
        return x, e, mask

    def to_molecules(self, x: Tensor, e: Tensor, node_mask: Tensor) -> List[Optional[Any]]:
        """Sanitized RDKit molecules of dense graphs (None where RDKit rejects the whole molecule)."""
        from rdkit import RDLogger
        RDLogger.DisableLog("rdApp.*")
        try:
            return [dense_to_mol(x[b], e[b], int(node_mask[b].sum()), self.vocab) for b in range(x.shape[0])]
        finally:
            RDLogger.EnableLog("rdApp.*")

    def sample_molecules(self, n: int, steps: int = DEFAULT_STEPS, seed: int = 0, batch_size: int = 1000,
                         condition: Optional[Dict[str, Any]] = None, guidance_scale: float = 1.0,
                         sizes: Optional[Sequence[int]] = None) -> List[Optional[Any]]:
        """n molecules (sanitized RDKit Mol, or None where the sampled graph is not a valid molecule);
        ``seed`` fixes the torch.Generator of the whole call (the result also depends on batch_size).
        ``condition`` / ``guidance_scale`` / ``sizes``: see ``sample_graphs`` (n values each)."""
        n, steps, batch_size = _check_count(n, "n"), _check_count(steps, "steps"), _check_count(batch_size, "batch_size")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if condition is not None:
            self.normalise_condition(condition, n)          # validate up front
        if sizes is not None:
            sizes = torch.as_tensor(np.asarray(sizes, dtype=np.int64))
            if tuple(sizes.shape) != (n,) or (sizes < 1).any() or (sizes > self.max_nodes).any():
                raise ValueError(f"sizes must be {n} node counts in [1, {self.max_nodes}]")
        g = torch.Generator().manual_seed(seed)
        out: List[Optional[Any]] = []
        for k in range(0, n, batch_size):
            m = min(batch_size, n - k)
            ck = None if condition is None else {c: np.asarray(v, dtype=np.float64).reshape(-1)[k:k + m]
                                                 for c, v in condition.items()}
            sk = None if sizes is None else sizes[k:k + m]
            out.extend(self.to_molecules(*self.sample_graphs(m, steps, g, sizes=sk, condition=ck,
                                                             guidance_scale=guidance_scale)))
        self.last_stats = {"n": n, "invalid": sum(m is None for m in out)}
        return out

    def generate(self, n: int, steps: Optional[int] = None, seed: int = 0, guidance: Optional[str] = None,
                 condition: Optional[Dict[str, Any]] = None, guidance_scale: float = 1.0,
                 sizes: Optional[Sequence[int]] = None) -> List[Optional[Any]]:
        """``polydiff generate molecules`` contract: n molecules (None = invalid), ``steps`` default
        DEFAULT_STEPS (500, DiGress's);
        a conditional model takes ``condition={"alpha": values}`` and classifier-free ``guidance_scale``."""
        if guidance is not None:
            raise ValueError(f"the graph model supports no guidance by name; got {guidance!r} (conditional models "
                             "take condition= and guidance_scale=)")
        return self.sample_molecules(n, DEFAULT_STEPS if steps is None else steps, seed, condition=condition,
                                     guidance_scale=guidance_scale, sizes=sizes)

    # ------------------------------------------------------------------ data
    def encode(self, mols: Sequence[Any]) -> Tuple[Tensor, Tensor, Tensor]:
        """Dense (x, e, node_mask) of molecules (ValueError for one that does not fit the vocabulary)."""
        xs, es, ns = [], [], []
        for m in mols:
            x, e = mol_to_dense(m, self.vocab, self.max_nodes)
            xs.append(x)
            es.append(e)
            ns.append(m.GetNumHeavyAtoms())
        return (torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(es)),
                self.node_mask(torch.tensor(ns)))

    # ------------------------------------------------------------------ files
    def config(self) -> Dict[str, Any]:
        cfg = {"vocab": [list(t) for t in self.vocab.tokens], "node_marginal": self.node_marginal,
               "edge_marginal": self.edge_marginal, "size_counts": self.size_counts.tolist(), **self.arch}
        if self.condition:
            cfg["condition"] = self.condition
        return cfg

    def save(self, folder: Union[str, Path], extra: Optional[Dict[str, Any]] = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (float32) into folder."""
        state = {k: v.detach().float() for k, v in self.net.state_dict().items()}
        return write_model_folder(folder, {**self.config(), **(extra or {})}, state)

    @classmethod
    def from_config(cls, cfg: Dict[str, Any]) -> "GraphDiffusionModel":
        missing = [k for k in ("vocab", "node_marginal", "edge_marginal", "size_counts") if k not in cfg]
        if missing:
            raise ValueError(f"model config misses {missing}")
        vocab = AtomVocab.of([(s, int(c)) for s, c in cfg["vocab"]])
        return cls(vocab, cfg["node_marginal"], cfg["edge_marginal"], cfg["size_counts"],
                   condition=cfg.get("condition"), **{k: cfg[k] for k in _ARCH_KEYS if k in cfg})

    @classmethod
    def load(cls, folder: Union[str, Path]) -> "GraphDiffusionModel":
        cfg, state = read_model_folder(folder, "graph model")
        model = cls.from_config(cfg)
        model.net.load_state_dict(state)
        model.net.eval()
        return model


def pretrained(name: str = "qm9-2d") -> GraphDiffusionModel:
    """A shipped graph model by name (``PRETRAINED`` lists them)."""
    return GraphDiffusionModel.load(shipped_folder(name, PRETRAINED, "graph", "train_graph"))


def sample_molecules(n: int, steps: int = DEFAULT_STEPS, seed: int = 0, name: str = "qm9-2d") -> List[Optional[Any]]:
    """n molecules from the shipped model ``name`` (RDKit Mol, or None where invalid)."""
    n, steps = _check_count(n, "n"), _check_count(steps, "steps")
    return pretrained(name).sample_molecules(n, steps, seed)


__all__ = ["GraphDiffusionModel", "condition_spec", "GraphTransformer", "GraphTransformerLayer", "structural_features", "mol_to_dense",
           "dense_to_mol", "pretrained", "sample_molecules", "PRETRAINED", "WEIGHTS_DIR", "EDGE_NAMES"]
