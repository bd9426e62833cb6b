"""Metrics of generated plain graphs: MMD of graph statistics, validity, uniqueness, novelty.

**MMD.** Each graph becomes a histogram (degree; clustering coefficient in 100 bins on [0, 1];
eigenvalues of the normalised Laplacian in 200 bins on [-1e-5, 2]) or a vector (mean orbit counts per
node); two sets of graphs are compared by the squared maximum mean discrepancy

    MMD^2 = mean k(a, a') + mean k(b, b') - 2 mean k(a, b)     (all pairs, self-pairs included),

the biased V-statistic that GraphRNN (You et al., "GraphRNN: Generating Realistic Graphs with Deep
Auto-regressive Models", ICML 2018), GDSS (Jo et al., "Score-based Generative Modeling of Graphs via
the System of Stochastic Differential Equations", ICML 2022) and SPECTRE (Martinkus et al., ICML 2022)
/ DiGress (Vignac et al., ICLR 2023) all report. Histograms are normalised to probability vectors and
zero-padded to a common length. Two kernel protocols:

* ``"gdss"`` (GraphRNN's, as GDSS's evaluation sets it): Gaussian EMD kernel
  k = exp(-EMD^2 / (2 sigma^2)), EMD the 1-D earth mover's distance with ground distance
  |i - j| / scaling; degree sigma 1, clustering sigma 0.1 with scaling 100, spectral sigma 1; orbit:
  Gaussian kernel on the L2 distance, sigma 30. For 1-D histograms of equal mass the EMD is exactly
  sum_k |CDF_a(k) - CDF_b(k)| / scaling, which is what is computed here (GraphRNN calls pyemd).
* ``"spectre"`` (GRAN's, used by SPECTRE and DiGress): Gaussian total-variation kernel
  k = exp(-TV^2 / (2 sigma^2)), TV = sum |a - b| / 2; degree sigma 1, clustering sigma 0.1,
  spectral sigma 1; orbit: Gaussian TV on the orbit vectors, sigma 30.

**Orbits.** ``orbit_counts`` counts, for every node, its 15 automorphism orbits in the connected
graphlets on 2..4 nodes (Przulj, "Biological network comparison using graphlet degree distribution",
Bioinformatics 2007; the numbering of ORCA, Hocevar & Demsar, Bioinformatics 2014), by enumerating
every connected induced subgraph on 3 and 4 nodes once (ESU, Wernicke, "Efficient detection of network
motifs", IEEE/ACM TCBB 2006) and classifying it by its degree sequence. Exact and offline, slower
than ORCA; fine for graphs of up to a few hundred nodes.

**Validity, uniqueness, novelty** (SPECTRE's / DiGress's V.U.N.): uniqueness and novelty by exact
isomorphism (``networkx.is_isomorphic``), bucketed by Weisfeiler-Lehman hash; validity per family:
planar = connected and planar (``networkx.check_planarity``), as SPECTRE; SBM = a simplified form of
SPECTRE's Wald test (see ``is_sbm_valid``); community = connected (no published check; ours).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import networkx as nx
import numpy as np

PROTOCOLS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "gdss": {"degree": {"kernel": "gaussian_emd", "sigma": 1.0, "scaling": 1.0},
             "clustering": {"kernel": "gaussian_emd", "sigma": 0.1, "scaling": 100.0},
             "spectral": {"kernel": "gaussian_emd", "sigma": 1.0, "scaling": 1.0},
             "orbit": {"kernel": "gaussian", "sigma": 30.0}},
    "spectre": {"degree": {"kernel": "gaussian_tv", "sigma": 1.0},
                "clustering": {"kernel": "gaussian_tv", "sigma": 0.1},
                "spectral": {"kernel": "gaussian_tv", "sigma": 1.0},
                "orbit": {"kernel": "gaussian_tv", "sigma": 30.0}},
}
PROTOCOL_NOTE = ("`gdss` = Gaussian-EMD kernels (GraphRNN's, as GDSS's `load_eval_settings` sets them: degree σ=1, "
                 "clustering σ=0.1 on 100 bins with ground distance 1/100, spectral σ=1) and a Gaussian L2 kernel "
                 "(σ=30) for orbits; `spectre` = Gaussian total-variation kernels (GRAN's, used by SPECTRE and "
                 "DiGress: σ = 1, 0.1, 1, and 30 for orbits).")
STATISTICS = ("degree", "clustering", "orbit", "spectral")


# ------------------------------------------------------------------ per-graph statistics
def _check_graph(g: Any) -> nx.Graph:
    if not isinstance(g, nx.Graph) or g.is_directed() or g.is_multigraph():
        raise ValueError(f"expected an undirected simple networkx.Graph, got {type(g).__name__}")
    return g


def degree_histogram(g: nx.Graph) -> np.ndarray:
    """Counts of nodes with degree 0, 1, ..., max degree (``networkx.degree_histogram``)."""
    return np.asarray(nx.degree_histogram(_check_graph(g)), dtype=np.float64)


def clustering_histogram(g: nx.Graph, bins: int = 100) -> np.ndarray:
    """Histogram of the local clustering coefficients in ``bins`` equal bins on [0, 1]."""
    c = list(nx.clustering(_check_graph(g)).values())
    return np.histogram(c, bins=bins, range=(0.0, 1.0))[0].astype(np.float64)


def spectral_histogram(g: nx.Graph, bins: int = 200) -> np.ndarray:
    """Probability histogram of the normalised-Laplacian eigenvalues in ``bins`` bins on [-1e-5, 2]."""
    _check_graph(g)
    if g.number_of_nodes() == 0:
        raise ValueError("the spectral histogram of an empty graph is undefined")
    lap = nx.normalized_laplacian_matrix(g, nodelist=list(g.nodes())).toarray()
    ev = np.linalg.eigvalsh(lap)
    h = np.histogram(ev, bins=bins, range=(-1e-5, 2.0))[0].astype(np.float64)
    return h / h.sum()


def _connected_sets(adj: List[set], k: int):
    """Every connected induced node set of size k exactly once (ESU, Wernicke 2006)."""
    def extend(sub: List[int], ext: set, v: int):
        if len(sub) == k:
            yield tuple(sub)
            return
        ext = set(ext)
        nb_sub = set().union(*(adj[u] for u in sub)) | set(sub)
        while ext:
            w = ext.pop()
            excl = {u for u in adj[w] if u > v and u not in nb_sub}
            yield from extend(sub + [w], ext | excl, v)

    for v in range(len(adj)):
        yield from extend([v], {u for u in adj[v] if u > v}, v)


def orbit_counts(g: nx.Graph) -> np.ndarray:
    """(n, 15) int64: how often each node (in ``g.nodes()`` order) sits in each of the 15 orbits of the
    graphlets on 2..4 nodes (ORCA's numbering: 0 degree; 1/2 path end/middle; 3 triangle; 4/5 path P4
    end/inner; 6/7 star leaf/centre; 8 4-cycle; 9/10/11 paw pendant/degree-2/degree-3; 12/13 diamond
    degree-2/degree-3; 14 K4)."""
    _check_graph(g)
    nodes = list(g.nodes())
    index = {u: i for i, u in enumerate(nodes)}
    adj = [set() for _ in nodes]
    for u, v in g.edges():
        if u != v:
            adj[index[u]].add(index[v])
            adj[index[v]].add(index[u])
    out = np.zeros((len(nodes), 15), dtype=np.int64)
    for i, a in enumerate(adj):
        out[i, 0] = len(a)
    for s in _connected_sets(adj, 3):
        d = [sum(w in adj[u] for w in s) for u in s]
        if sum(d) == 6:
            out[list(s), 3] += 1
        else:
            for u, du in zip(s, d):
                out[u, 1 if du == 1 else 2] += 1
    for s in _connected_sets(adj, 4):
        d = [sum(w in adj[u] for w in s) for u in s]
        m = sum(d) // 2
        key = tuple(sorted(d))
        for u, du in zip(s, d):
            if m == 3:
                o = (6 if du == 1 else 7) if key == (1, 1, 1, 3) else (4 if du == 1 else 5)
            elif m == 4:
                o = 8 if key == (2, 2, 2, 2) else {1: 9, 2: 10, 3: 11}[du]
            elif m == 5:
                o = 12 if du == 2 else 13
            else:
                o = 14
            out[u, o] += 1
    return out


# ------------------------------------------------------------------ kernels and MMD
def _pad(samples: Sequence[np.ndarray], length: int) -> np.ndarray:
    out = np.zeros((len(samples), length))
    for i, s in enumerate(samples):
        out[i, :len(s)] = s
    return out


def _pairwise(a: np.ndarray, b: np.ndarray, kernel: str, sigma: float, scaling: float) -> np.ndarray:
    """Kernel matrix between the rows of a (n, L) and b (m, L)."""
    if kernel == "gaussian_emd":
        ca, cb = np.cumsum(a, 1), np.cumsum(b, 1)
        d = np.abs(ca[:, None, :] - cb[None, :, :]).sum(-1) / scaling
    elif kernel == "gaussian_tv":
        d = np.abs(a[:, None, :] - b[None, :, :]).sum(-1) / 2.0
    elif kernel == "gaussian":
        d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    else:
        raise ValueError(f"unknown kernel {kernel!r}; valid: ['gaussian_emd', 'gaussian_tv', 'gaussian']")
    return np.exp(-d * d / (2 * sigma * sigma))


def mmd2(samples1: Sequence[np.ndarray], samples2: Sequence[np.ndarray], kernel: str = "gaussian_emd",
         sigma: float = 1.0, scaling: float = 1.0, is_hist: bool = True) -> float:
    """Squared MMD (biased V-statistic, module docstring) between two lists of 1-D arrays, zero-padded
    to a common length; ``is_hist`` normalises each to sum 1 first. ``kernel``: "gaussian_emd"
    (ground distance |i - j| / scaling), "gaussian_tv" or "gaussian" (L2)."""
    if len(samples1) == 0 or len(samples2) == 0:
        raise ValueError("mmd2 needs two non-empty lists of samples")
    if not (sigma > 0 and scaling > 0):
        raise ValueError(f"sigma and scaling must be > 0, got {sigma}, {scaling}")
    arrs = [np.asarray(s, dtype=np.float64).reshape(-1) for s in list(samples1) + list(samples2)]
    for s in arrs:
        if not np.isfinite(s).all():
            raise ValueError("samples must be finite")
        if is_hist and ((s < 0).any() or s.sum() <= 0):
            raise ValueError("a histogram must be non-negative with a positive sum")
    if is_hist:
        arrs = [s / s.sum() for s in arrs]
    L = max(len(s) for s in arrs)
    a, b = _pad(arrs[:len(samples1)], L), _pad(arrs[len(samples1):], L)
    kaa, kbb, kab = (_pairwise(x, y, kernel, sigma, scaling).mean() for x, y in ((a, a), (b, b), (a, b)))
    return float(kaa + kbb - 2 * kab)


def _stat(graphs: Sequence[nx.Graph], name: str) -> List[np.ndarray]:
    graphs = [g for g in graphs if _check_graph(g).number_of_nodes() > 0]     # as GraphRNN: drop empty graphs
    if name == "degree":
        return [degree_histogram(g) for g in graphs]
    if name == "clustering":
        return [clustering_histogram(g) for g in graphs]
    if name == "spectral":
        return [spectral_histogram(g) for g in graphs]
    if name == "orbit":
        return [orbit_counts(g).sum(0) / g.number_of_nodes() for g in graphs]
    raise ValueError(f"unknown statistic {name!r}; valid: {list(STATISTICS)}")


def stat_mmd(reference: Sequence[nx.Graph], generated: Sequence[nx.Graph], statistic: str,
             protocol: str = "gdss") -> float:
    """MMD^2 of one statistic ("degree", "clustering", "orbit", "spectral") between two graph sets
    under a kernel protocol ("gdss" or "spectre"; module docstring)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {list(PROTOCOLS)}")
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; valid: {list(STATISTICS)}")
    cfg = PROTOCOLS[protocol][statistic]
    return mmd2(_stat(reference, statistic), _stat(generated, statistic), cfg["kernel"], cfg["sigma"],
                cfg.get("scaling", 1.0), is_hist=statistic != "orbit")


# ------------------------------------------------------------------ validity
def is_planar_valid(g: nx.Graph) -> bool:
    """SPECTRE's planar validity: connected and planar."""
    _check_graph(g)
    return g.number_of_nodes() > 0 and nx.is_connected(g) and nx.check_planarity(g)[0]


def is_sbm_valid(g: nx.Graph, p_intra: float, p_inter: float, blocks: Sequence[int] = (2, 5),
                 block_size: Sequence[int] = (20, 40), seed: int = 0) -> bool:
    """A simplified SPECTRE SBM test. SPECTRE fits a stochastic block model with graph-tool
    (``minimize_blockmodel_dl`` and merge-split MCMC), requires 2..5 blocks of 20..40 nodes, then
    computes per block pair the Wald statistic W = (p_hat - p)^2 / (p_hat (1 - p_hat)) of the
    estimated edge probability against the true one and accepts when the mean chi^2(1) p-value
    exceeds 0.9 (W carries no sample-size factor, so this is a tolerance on p_hat, strict for small
    blocks, and a block pair with no edge at all fails). graph-tool is not available here, so the
    blocks are recovered by Louvain modularity maximisation (``networkx.community.louvain_communities``,
    fixed seed) instead; the block-count and block-size rules and the Wald test are SPECTRE's (block
    sizes and counts are the family's)."""
    from scipy.stats import chi2
    _check_graph(g)
    n = g.number_of_nodes()
    if n == 0:
        return False
    parts = [sorted(c) for c in nx.community.louvain_communities(g, seed=seed)]
    sizes = np.array([len(c) for c in parts])
    if not (blocks[0] <= len(parts) <= blocks[1]) or sizes.min() < block_size[0] or sizes.max() > block_size[1]:
        return False
    label = {u: k for k, c in enumerate(parts) for u in c}
    K = len(parts)
    counts = np.zeros((K, K))
    for u, v in g.edges():
        a, b = label[u], label[v]
        counts[a, b] += 1
        if a != b:
            counts[b, a] += 1
    possible = np.outer(sizes, sizes).astype(float)
    np.fill_diagonal(possible, sizes * (sizes - 1) / 2)
    p_hat = counts / possible
    p_true = np.full((K, K), float(p_inter))
    np.fill_diagonal(p_true, float(p_intra))
    w = (p_hat - p_true) ** 2 / (p_hat * (1 - p_hat) + 1e-6)
    pval = 1 - chi2.cdf(np.abs(w), 1)          # the mean over the full K x K matrix, as SPECTRE
    return bool(pval.mean() > 0.9)


def is_community_valid(g: nx.Graph) -> bool:
    """Our check for community graphs (no published one): connected, as the generator makes them."""
    _check_graph(g)
    return g.number_of_nodes() > 0 and nx.is_connected(g)


def validity_function(family: Mapping[str, Any]) -> Callable[[nx.Graph], bool]:
    """The validity check of a family description (``synthetic_graphs.GraphDataset.params``)."""
    kind = family.get("family") if isinstance(family, Mapping) else None
    if kind == "planar":
        return is_planar_valid
    if kind == "sbm":
        return lambda g: is_sbm_valid(g, family["p_intra"], family["p_inter"], family["blocks"], family["block_size"])
    if kind == "community":
        return is_community_valid
    raise ValueError(f"unknown graph family {kind!r}; valid: ['planar', 'sbm', 'community']")


# ------------------------------------------------------------------ uniqueness and novelty
def _key(g: nx.Graph) -> str:
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)        # networkx 3.5 notes its hashes changed
        return nx.weisfeiler_lehman_graph_hash(g, iterations=3)


def unique_novel(generated: Sequence[nx.Graph], train: Sequence[nx.Graph],
                 valid: Optional[Callable[[nx.Graph], bool]] = None) -> Dict[str, float]:
    """SPECTRE's fractions of the generated graphs: ``unique`` (first of its isomorphism class among the
    generated), ``novel`` (isomorphic to no training graph), ``unique_novel`` and ``vun`` (unique, novel
    and valid; valid = ``valid(g)``, all valid when None). Exact isomorphism tests, WL-hash buckets."""
    if len(generated) == 0:
        raise ValueError("unique_novel needs at least one generated graph")
    buckets: Dict[str, List[nx.Graph]] = {}
    for t in train:
        buckets.setdefault(_key(_check_graph(t)), []).append(t)
    seen: Dict[str, List[nx.Graph]] = {}
    n_unique = n_novel = n_un = n_vun = 0
    for g in generated:
        k = _key(_check_graph(g))
        uniq = not any(nx.is_isomorphic(g, h) for h in seen.get(k, []))
        seen.setdefault(k, []).append(g)
        novel = not any(nx.is_isomorphic(g, h) for h in buckets.get(k, []))
        n_unique += uniq
        n_novel += novel
        n_un += uniq and novel
        n_vun += uniq and novel and (valid is None or bool(valid(g)))
    n = len(generated)
    return {"unique": n_unique / n, "novel": n_novel / n, "unique_novel": n_un / n, "vun": n_vun / n}


def evaluate(generated: Sequence[nx.Graph], reference: Sequence[nx.Graph], train: Sequence[nx.Graph],
             family: Optional[Mapping[str, Any]] = None, protocol: str = "gdss", novelty: bool = True,
             statistics: Sequence[str] = STATISTICS) -> Dict[str, Any]:
    """All scores of ``generated`` against ``reference`` (the test split): the MMD^2 of each statistic,
    ``valid`` (fraction, when ``family`` is given), and with ``novelty`` the fractions of
    ``unique_novel`` against ``train``; ``unique`` is always reported."""
    if len(generated) == 0 or len(reference) == 0:
        raise ValueError("evaluate needs non-empty generated and reference graph lists")
    out: Dict[str, Any] = {"n": len(generated)}
    for s in STATISTICS:
        out[s] = stat_mmd(reference, generated, s, protocol) if s in statistics else None
    valid = validity_function(family) if family is not None else None
    out["valid"] = float(np.mean([bool(valid(g)) for g in generated])) if valid else None
    un = unique_novel(generated, train if novelty else [], valid)
    out["unique"] = un["unique"]
    if novelty:
        out.update(novel=un["novel"], vun=un["vun"])
    return out


__all__ = ["PROTOCOLS", "STATISTICS", "degree_histogram", "clustering_histogram", "spectral_histogram",
           "orbit_counts", "mmd2", "stat_mmd", "is_planar_valid", "is_sbm_valid", "is_community_valid",
           "validity_function", "unique_novel", "evaluate"]
