"""Discrete diffusion on dense graphs: node types and symmetric edge types (DiGress).

A graph with up to N nodes is held densely: node types ``x`` (B, N) int64, edge types ``e`` (B, N, N)
int64 (symmetric, zero diagonal; class 0 is normally "no edge"), and ``node_mask`` (B, N) bool for the
real nodes (graphs of different sizes share a batch by padding). ``GraphProcess`` pairs two core
processes (``Marginal`` for DiGress's marginal transitions, ``Uniform`` for D3PM's) and applies them

  * to every real node independently, and
  * to every unordered pair i < j of real nodes independently, writing the draw at (i, j) and (j, i),

so the noisy edge matrix is symmetric by construction. Padded nodes and every pair that touches one,
and the diagonal, hold the fill value 0 at every time and in every sample.

Reverse steps reuse the per-position posterior of the core processes (``Process.posterior``) on the
nodes and on the flattened upper triangle of the edges: the edge positions are the N (N - 1) / 2 pairs,
so the core's (B, L) machinery applies unchanged (Vignac et al., "DiGress: Discrete Denoising
diffusion for graph generation", ICLR 2023, Sec. 3; Austin et al., "Structured Denoising Diffusion
Models in Discrete State-Spaces", NeurIPS 2021, for the posterior). A graph denoiser is

    D(x_t, e_t, t, node_mask) -> (node_logits (B, N, Vx), edge_logits (B, N, N, Ve)),

logits of p(x0 | G_t) and p(e0 | G_t); only the upper triangle of the edge logits is read.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch

from .processes import Process, TimeLike, categorical, from_config
from .samplers import make_grid, x0_probs

Tensor = torch.Tensor
GraphDenoiser = Callable[[Tensor, Tensor, Tensor, Tensor], Tuple[Tensor, Tensor]]


def transition_matrix(process: Process, s: TimeLike, t: TimeLike) -> Tensor:
    """q(x_t = j | x_s = i) as an (S, S) float64 matrix for scalar times 0 <= s <= t <= 1.

    Q_{t|s} = (alpha_t / alpha_s) I + bp(t) - (alpha_t / alpha_s) bp(s) with bp = (1 - alpha) pi (see
    ``processes``); s = 0 gives DiGress's Q-bar_t = alpha_t I + (1 - alpha_t) 1 pi^T."""
    s64, t64 = torch.as_tensor(s, dtype=torch.float64), torch.as_tensor(t, dtype=torch.float64)
    if s64.dim() or t64.dim():
        raise ValueError("transition_matrix takes scalar times s and t")
    if not (0.0 <= float(s64) <= float(t64) <= 1.0):
        raise ValueError(f"need 0 <= s <= t <= 1, got s={float(s64)}, t={float(t64)}")
    a_s, a_t = process.alpha(s64), process.alpha(t64)
    if float(a_s) == 0.0:
        raise ValueError(f"alpha(s) = 0 at s={float(s64)}: the process has forgotten x_s")
    r = a_t / a_s
    S = process.num_states
    return r * torch.eye(S, dtype=torch.float64) + (process.beta_pi(t64) - r * process.beta_pi(s64))[None, :]


def triu_indices(n: int, device: Optional[torch.device] = None) -> Tuple[Tensor, Tensor]:
    """Row and column ids of the N (N - 1) / 2 pairs i < j (the edge positions), row-major."""
    iu = torch.triu_indices(n, n, offset=1, device=device)
    return iu[0], iu[1]


def edges_to_upper(e: Tensor) -> Tensor:
    """(B, N, N, ...) -> (B, N (N - 1) / 2, ...): the entries at i < j."""
    i, j = triu_indices(e.shape[1], e.device)
    return e[:, i, j]


def upper_to_edges(u: Tensor, n: int) -> Tensor:
    """(B, N (N - 1) / 2, ...) -> symmetric (B, N, N, ...) with zeros on the diagonal."""
    i, j = triu_indices(n, u.device)
    e = u.new_zeros((u.shape[0], n, n) + tuple(u.shape[2:]))
    e[:, i, j] = u
    e[:, j, i] = u
    return e


def node_mask_from_sizes(sizes: Tensor, max_nodes: int) -> Tensor:
    """(B, max_nodes) bool mask of the first ``sizes[b]`` nodes of each padded graph; ValueError for a
    size outside [1, max_nodes]."""
    sizes = torch.as_tensor(sizes).long().reshape(-1)
    if sizes.numel() and (int(sizes.min()) < 1 or int(sizes.max()) > max_nodes):
        raise ValueError(f"graph sizes must lie in [1, {max_nodes}]")
    return torch.arange(max_nodes)[None, :] < sizes[:, None]


def pair_mask(node_mask: Tensor) -> Tensor:
    """(B, N) bool -> (B, N, N) bool: both ends real and i != j."""
    n = node_mask.shape[1]
    eye = torch.eye(n, dtype=torch.bool, device=node_mask.device)
    return node_mask[:, :, None] & node_mask[:, None, :] & ~eye


class GraphProcess:
    """A node process and an edge process acting on dense graphs (module docstring)."""

    def __init__(self, node: Process, edge: Process) -> None:
        for name, p in (("node", node), ("edge", edge)):
            if not isinstance(p, Process):
                raise ValueError(f"{name} must be a polydiff.core.discrete.Process, got {type(p).__name__}")
        self.node, self.edge = node, edge

    # ---------------------------------------------------------------- checks
    def check_graph(self, x: Tensor, e: Tensor, node_mask: Tensor, data_only: bool = False) -> None:
        """ValueError unless x (B, N), e (B, N, N) integer ids in range, node_mask (B, N) bool, and e
        symmetric with padding and diagonal at 0."""
        if not isinstance(node_mask, Tensor) or node_mask.dtype != torch.bool or node_mask.dim() != 2:
            raise ValueError("node_mask must be a (B, N) bool tensor")
        B, N = node_mask.shape
        if N < 2:
            raise ValueError(f"graphs need N >= 2 node slots, got {N}")
        if not isinstance(x, Tensor) or tuple(x.shape) != (B, N):
            raise ValueError(f"node types must have shape {(B, N)}, got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if not isinstance(e, Tensor) or tuple(e.shape) != (B, N, N):
            raise ValueError(f"edge types must have shape {(B, N, N)}, got "
                             f"{tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__}")
        self.node.check_tokens(x, "node types", data_only=data_only)
        self.edge.check_tokens(e.reshape(B, N * N), "edge types", data_only=data_only)
        if not torch.equal(e, e.transpose(1, 2)):
            raise ValueError("the edge-type matrix must be symmetric")
        if (e[~pair_mask(node_mask)] != 0).any():
            raise ValueError("edges on the diagonal or touching padded nodes must be 0")
        if (x[~node_mask] != 0).any():
            raise ValueError("padded nodes must hold type 0")

    # ---------------------------------------------------------------- forward
    def noise(self, x0: Tensor, e0: Tensor, node_mask: Tensor, t: TimeLike,
              generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        """A draw of G_t ~ q(G_t | G_0) (per-graph times t: scalar or (B,))."""
        self.check_graph(x0, e0, node_mask, data_only=True)
        return self._noise(x0, e0, node_mask, t, generator)

    def _noise(self, x0: Tensor, e0: Tensor, node_mask: Tensor, t: TimeLike,
               generator: Optional[torch.Generator]) -> Tuple[Tensor, Tensor]:
        N = x0.shape[1]
        xt = categorical(self.node.marginal(x0, t), generator)
        ut = categorical(self.edge.marginal(edges_to_upper(e0), t), generator)
        return self._clean(xt, upper_to_edges(ut, N), node_mask)

    @staticmethod
    def _clean(x: Tensor, e: Tensor, node_mask: Tensor) -> Tuple[Tensor, Tensor]:
        return x.masked_fill(~node_mask, 0), e.masked_fill(~pair_mask(node_mask), 0)

    def prior_sample(self, node_mask: Tensor, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        """G_1 from the priors of both processes, for the graph sizes given by node_mask (B, N)."""
        if not isinstance(node_mask, Tensor) or node_mask.dtype != torch.bool or node_mask.dim() != 2:
            raise ValueError("node_mask must be a (B, N) bool tensor")
        B, N = node_mask.shape
        if N < 2:
            raise ValueError(f"graphs need N >= 2 node slots, got {N}")
        dev = node_mask.device
        x = self.node.prior_sample((B, N), generator, dev)
        u = self.edge.prior_sample((B, N * (N - 1) // 2), generator, dev)
        return self._clean(x, upper_to_edges(u, N), node_mask)

    # ---------------------------------------------------------------- reverse
    def posterior(self, x_t: Tensor, e_t: Tensor, node_probs: Tensor, edge_probs: Tensor, node_mask: Tensor,
                  s: TimeLike, t: TimeLike) -> Tuple[Tensor, Tensor]:
        """Per-node (B, N, Sx) and per-pair (B, N (N - 1) / 2, Se) reverse-step probabilities
        sum_x0 q(z_s | z_t, x0) p(x0 | G_t), for predicted node_probs (B, N, Vx) and edge_probs
        (B, N, N, Ve) (only i < j read)."""
        self.check_graph(x_t, e_t, node_mask)
        return (self.node.posterior(x_t, node_probs, s, t),
                self.edge.posterior(edges_to_upper(e_t), edges_to_upper(edge_probs), s, t))

    def config(self) -> Dict[str, Any]:
        return {"node": self.node.config(), "edge": self.edge.config()}

    @classmethod
    def from_config(cls, cfg: Dict[str, Any]) -> "GraphProcess":
        if not isinstance(cfg, dict) or set(cfg) != {"node", "edge"}:
            raise ValueError(f"a graph process config is a dict with keys 'node' and 'edge', got {cfg!r}")
        return cls(from_config(cfg["node"]), from_config(cfg["edge"]))

    def __repr__(self) -> str:
        return f"GraphProcess(node={self.node!r}, edge={self.edge!r})"


def sample_graph(denoiser: GraphDenoiser, node_mask: Tensor, *, process: GraphProcess, steps: int,
                 grid: Union[str, Tensor] = "uniform", generator: Optional[torch.Generator] = None,
                 temperature: float = 1.0) -> Tuple[Tensor, Tensor]:
    """Ancestral sampling of graphs (DiGress, Sec. 3.2): from G_1 ~ prior, each step draws every node
    and every pair i < j from sum_x0 q(z_s | z_t, x0) p_theta(x0 | G_t) (``GraphProcess.posterior``);
    the last step (to t = 0) draws G_0. Returns (x (B, N), e (B, N, N)), padding at 0.

    node_mask (B, N) bool fixes each graph's size (DiGress samples it from the training histogram);
    ``grid``: "uniform" / "quadratic" or a decreasing tensor of times from 1 to 0."""
    if not isinstance(process, GraphProcess):
        raise ValueError(f"process must be a GraphProcess, got {type(process).__name__}")
    if isinstance(grid, str):
        g = make_grid(grid, steps)
    else:
        g = torch.as_tensor(grid, dtype=torch.float64).cpu()
        if g.dim() != 1 or g.numel() < 2 or not bool((g[1:] < g[:-1]).all()) or float(g[-1]) < 0 or float(g[0]) > 1:
            raise ValueError("grid must be a name or a decreasing 1-D tensor of times in [0, 1]")
    x, e = process.prior_sample(node_mask, generator)
    B, N = node_mask.shape
    Vx, Ve = process.node.vocab_size, process.edge.vocab_size
    for i in range(g.numel() - 1):
        t = torch.full((B,), float(g[i]), dtype=torch.float64, device=node_mask.device)
        s = torch.full((B,), float(g[i + 1]), dtype=torch.float64, device=node_mask.device)
        out = denoiser(x, e, t, node_mask)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError("a graph denoiser must return (node_logits, edge_logits)")
        lx, le = out
        if tuple(lx.shape) != (B, N, Vx) or tuple(le.shape) != (B, N, N, Ve):
            raise ValueError(f"the denoiser returned logits {tuple(lx.shape)} and {tuple(le.shape)}; expected "
                             f"{(B, N, Vx)} and {(B, N, N, Ve)}")
        ue = edges_to_upper(e)
        px = x0_probs(lx, x, process.node, temperature)
        pe = x0_probs(edges_to_upper(le), ue, process.edge, temperature)
        if torch.isnan(px).any() or torch.isnan(pe).any():
            raise FloatingPointError(f"the denoiser's x0 distribution was NaN at step {i}; check the model")
        qx = process.node.posterior(x, px, s, t)
        qe = process.edge.posterior(ue, pe, s, t)
        x, e = process._clean(categorical(qx, generator), upper_to_edges(categorical(qe, generator), N), node_mask)
    return x, e


class GraphCrossEntropy:
    """DiGress's training loss (Vignac et al. 2023, Sec. 3.3): at t ~ U(0, 1) per graph, the
    cross-entropy of the clean node types plus ``edge_weight`` times that of the clean edge types
    (each unordered pair once; DiGress uses lambda = 5), summed over the real nodes and pairs of each
    graph. ``loss(net, x0, e0, node_mask, generator)`` returns (B,) and, with ``parts=True``, also
    the node and edge terms."""

    def __init__(self, process: GraphProcess, edge_weight: float = 5.0, time_sampler: str = "stratified") -> None:
        if not isinstance(process, GraphProcess):
            raise ValueError(f"process must be a GraphProcess, got {type(process).__name__}")
        if not (math.isfinite(float(edge_weight)) and float(edge_weight) >= 0):
            raise ValueError(f"edge_weight must be a finite number >= 0, got {edge_weight!r}")
        if time_sampler not in ("uniform", "stratified"):
            raise ValueError(f"unknown time sampler {time_sampler!r}; valid: ['uniform', 'stratified']")
        self.process, self.edge_weight, self.time_sampler = process, float(edge_weight), time_sampler

    def sample_t(self, batch: int, generator: Optional[torch.Generator] = None,
                 device: Optional[torch.device] = None) -> Tensor:
        u = torch.rand(batch if self.time_sampler == "uniform" else 1, generator=generator, dtype=torch.float64)
        if self.time_sampler == "stratified":
            u = (torch.arange(batch, dtype=torch.float64) + u) / batch
        return u.to(device)

    def loss_at(self, net: GraphDenoiser, x0: Tensor, e0: Tensor, node_mask: Tensor, t: Tensor,
                x_t: Tensor, e_t: Tensor) -> Tuple[Tensor, Tensor]:
        """(node CE (B,), edge CE (B,)) at given times and noisy graphs."""
        lx, le = net(x_t, e_t, t, node_mask)
        B, N = x0.shape
        if tuple(lx.shape[:2]) != (B, N) or tuple(le.shape[:3]) != (B, N, N):
            raise ValueError(f"the network returned logits {tuple(lx.shape)} and {tuple(le.shape)} for graphs "
                             f"of shape {(B, N)}")
        cx = -torch.log_softmax(lx, -1).gather(-1, x0[..., None])[..., 0]
        cx = (cx * node_mask).sum(1)
        ue = edges_to_upper(le)
        ce = -torch.log_softmax(ue, -1).gather(-1, edges_to_upper(e0)[..., None])[..., 0]
        ce = (ce * edges_to_upper(pair_mask(node_mask))).sum(1)
        return cx, ce

    def __call__(self, net: GraphDenoiser, x0: Tensor, e0: Tensor, node_mask: Tensor,
                 generator: Optional[torch.Generator] = None, parts: bool = False
                 ) -> Union[Tensor, Tuple[Tensor, Tensor, Tensor]]:
        self.process.check_graph(x0, e0, node_mask, data_only=True)
        t = self.sample_t(x0.shape[0], generator, x0.device)
        x_t, e_t = self.process._noise(x0, e0, node_mask, t, generator)
        cx, ce = self.loss_at(net, x0, e0, node_mask, t, x_t, e_t)
        total = cx + self.edge_weight * ce
        return (total, cx, ce) if parts else total


__all__ = ["GraphProcess", "GraphCrossEntropy", "sample_graph", "transition_matrix", "triu_indices", "node_mask_from_sizes",
           "edges_to_upper", "upper_to_edges", "pair_mask"]
