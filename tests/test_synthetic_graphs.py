"""Graphs without chemistry: synthetic families, graph MMD metrics, V.U.N., and the DiGress model on them."""
import itertools
import math

import networkx as nx
import numpy as np
import pytest
import torch

from polydiff.core.discrete.graph import GraphCrossEntropy
from polydiff.domains.molecules import graph_metrics as gmx
from polydiff.domains.molecules import synthetic_graphs as sg

torch.set_num_threads(1)


# ------------------------------------------------------------------ data sets
def test_datasets_sizes_splits_and_determinism():
    cs = sg.load("community-small")
    assert (len(cs.train), len(cs.val), len(cs.test)) == (80, 0, 20)
    sizes = {g.number_of_nodes() for g in cs.train + cs.test}
    assert sizes <= {12, 14, 16, 18, 20} and len(sizes) >= 4
    # two communities of m // 2 nodes, p_in = 0.7: the intra-community edge density is near 0.7
    intra = [sum(1 for u, v in g.edges() if (u < g.number_of_nodes() // 2) == (v < g.number_of_nodes() // 2))
             / (2 * math.comb(g.number_of_nodes() // 2, 2)) for g in cs.train]
    assert abs(np.mean(intra) - 0.7) < 0.03
    again = sg.load("community-small")
    assert all(nx.utils.graphs_equal(a, b) for a, b in zip(cs.train, again.train))
    assert not all(nx.utils.graphs_equal(a, b) for a, b in zip(cs.train, sg.load("community-small", seed=1).train))
    pl = sg.load("planar-small", n_graphs=20)
    assert (len(pl.train), len(pl.val), len(pl.test)) == (13, 3, 4)        # SPECTRE: 20 % test, 20 % of rest val
    assert all(g.number_of_nodes() == 20 and gmx.is_planar_valid(g) for g in pl.train)
    # a Delaunay triangulation of n points in general position has 3n - 3 - h edges (h hull points)
    g = pl.train[0]
    assert g.number_of_edges() <= 3 * 20 - 6
    sb = sg.load("sbm-small", n_graphs=10)
    for g in sb.train:
        blocks = {}
        for u, b in g.nodes(data="block"):
            blocks[b] = blocks.get(b, 0) + 1
        assert 2 <= len(blocks) <= 3 and all(6 <= s <= 10 for s in blocks.values())
    with pytest.raises(ValueError, match="valid: community-small"):
        sg.load("grid")


def test_dense_round_trip_and_errors():
    graphs = [nx.cycle_graph(5), nx.path_graph(3), nx.complete_graph(4)]
    x, e, mask = sg.to_dense(graphs, 6)
    assert x.shape == (3, 6) and (x == 0).all() and mask.sum(1).tolist() == [5, 3, 4]
    assert torch.equal(e, e.transpose(1, 2)) and (torch.diagonal(e, dim1=1, dim2=2) == 0).all()
    back = sg.from_dense(e, mask)
    assert all(nx.utils.graphs_equal(a, b) for a, b in zip(graphs, back))
    with pytest.raises(ValueError, match="1..3"):
        sg.to_dense([nx.path_graph(4)], 3)
    loop = nx.path_graph(3)
    loop.add_edge(1, 1)
    with pytest.raises(ValueError, match="self-loops"):
        sg.to_dense([loop], 4)


# ------------------------------------------------------------------ statistics
def test_degree_clustering_spectral_histograms_of_known_graphs():
    assert gmx.degree_histogram(nx.complete_graph(4)).tolist() == [0, 0, 0, 4]
    assert gmx.degree_histogram(nx.star_graph(3)).tolist() == [0, 3, 0, 1]
    assert gmx.degree_histogram(nx.path_graph(4)).tolist() == [0, 2, 2]
    h = gmx.clustering_histogram(nx.complete_graph(4))
    assert h[-1] == 4 and h.sum() == 4                     # clustering 1 falls in the last bin
    paw = nx.Graph([(0, 1), (1, 2), (2, 0), (2, 3)])       # clustering 1, 1, 1/3, 0
    h = gmx.clustering_histogram(paw, bins=3)
    assert h.tolist() == [1, 1, 2]
    # normalised Laplacian of K_n: eigenvalue 0 once and n / (n - 1) with multiplicity n - 1
    s = gmx.spectral_histogram(nx.complete_graph(5))
    assert s[0] == pytest.approx(1 / 5)
    assert s[int((5 / 4 + 1e-5) / ((2 + 1e-5) / 200))] == pytest.approx(4 / 5)


def test_orbit_counts_match_hand_counts_and_enumeration():
    o = gmx.orbit_counts(nx.complete_graph(4))
    want = np.zeros(15, dtype=int)
    want[[0, 3, 14]] = [3, 3, 1]
    assert (o == want).all()
    o = gmx.orbit_counts(nx.path_graph(4))           # ends: deg 1, path-end 1, P4-end 1; inner: deg 2, ...
    assert o[0].tolist() == [1, 1, 0, 0, 1] + [0] * 10
    assert o[1].tolist() == [2, 1, 1, 0, 0, 1] + [0] * 9
    o = gmx.orbit_counts(nx.star_graph(3))
    assert o[0, 7] == 1 and o[0, 2] == 3 and (o[1:, 6] == 1).all() and (o[1:, 1] == 2).all()
    assert (gmx.orbit_counts(nx.cycle_graph(4))[:, 8] == 1).all()
    paw = nx.Graph([(0, 1), (1, 2), (2, 0), (2, 3)])
    o = gmx.orbit_counts(paw)
    assert o[3, 9] == 1 and o[0, 10] == o[1, 10] == 1 and o[2, 11] == 1
    diamond = nx.Graph([(0, 1), (1, 2), (2, 0), (0, 3), (1, 3)])
    o = gmx.orbit_counts(diamond)
    assert o[0, 13] == o[1, 13] == 1 and o[2, 12] == o[3, 12] == 1
    # on a random graph: orbit 3 = triangles, orbit 2 = C(d, 2) - triangles, and every connected induced
    # 4-node subgraph is counted once (sum of 4-node orbit counts = 4 x number of such subgraphs)
    g = nx.gnp_random_graph(11, 0.4, seed=3)
    o = gmx.orbit_counts(g)
    tri = nx.triangles(g)
    for u in g.nodes():
        assert o[u, 3] == tri[u] and o[u, 2] == math.comb(g.degree(u), 2) - tri[u]
    n4 = sum(nx.is_connected(g.subgraph(s)) for s in itertools.combinations(g.nodes(), 4))
    assert o[:, 4:].sum() == 4 * n4
    # brute force: every 3- and 4-subset, matched to the graphlet templates by isomorphism
    paw_t = nx.Graph([(0, 1), (1, 2), (2, 0), (2, 3)])
    templates = [(nx.path_graph(3), {0: 1, 1: 2, 2: 1}), (nx.complete_graph(3), dict.fromkeys(range(3), 3)),
                 (nx.path_graph(4), {0: 4, 1: 5, 2: 5, 3: 4}), (nx.star_graph(3), {0: 7, 1: 6, 2: 6, 3: 6}),
                 (nx.cycle_graph(4), dict.fromkeys(range(4), 8)), (paw_t, {3: 9, 0: 10, 1: 10, 2: 11}),
                 (diamond, {0: 13, 1: 13, 2: 12, 3: 12}), (nx.complete_graph(4), dict.fromkeys(range(4), 14))]
    g = nx.gnp_random_graph(9, 0.45, seed=7)
    brute = np.zeros((9, 15), dtype=int)
    brute[:, 0] = [g.degree(u) for u in range(9)]
    for k in (3, 4):
        for s in itertools.combinations(range(9), k):
            h = g.subgraph(s)
            for tmpl, orbit in templates:
                m = nx.isomorphism.GraphMatcher(h, tmpl)
                if len(tmpl) == k and m.is_isomorphic():
                    for u in s:
                        brute[u, orbit[m.mapping[u]]] += 1
                    break
    assert (gmx.orbit_counts(g) == brute).all()


# ------------------------------------------------------------------ MMD
def test_mmd_zero_on_identical_sets_and_hand_computed_cases():
    graphs = sg.load("community-small").test[:6]
    for proto in ("gdss", "spectre"):
        for stat in gmx.STATISTICS:
            assert gmx.stat_mmd(graphs, graphs, stat, proto) == pytest.approx(0.0, abs=1e-12)
    # one point mass at degree 0 against one at degree 1: EMD = TV = 1, k = exp(-1/2)
    want = 2 - 2 * math.exp(-0.5)
    assert gmx.mmd2([[1, 0]], [[0, 1]], "gaussian_emd") == pytest.approx(want)
    assert gmx.mmd2([[3]], [[0, 5]], "gaussian_tv") == pytest.approx(want)      # histograms normalised, padded
    # EMD sees distance, TV does not: mass moved by 2 bins gives EMD 2, TV still 1
    assert gmx.mmd2([[1, 0, 0]], [[0, 0, 1]], "gaussian_emd") == pytest.approx(2 - 2 * math.exp(-2))
    assert gmx.mmd2([[1, 0, 0]], [[0, 0, 1]], "gaussian_tv") == pytest.approx(want)
    # sets of two: A = {d0, d1}, B = {d0}: k(d0, d1) = e^-1/2; MMD^2 = (2 + 2c) / 4 + 1 - 2 (1 + c) / 2
    c = math.exp(-0.5)
    assert gmx.mmd2([[1, 0], [0, 1]], [[1, 0]], "gaussian_emd") == pytest.approx((2 + 2 * c) / 4 + 1 - (1 + c))
    # clustering scaling (GDSS: sigma 0.1, ground distance / 100): one bin apart -> EMD 0.01
    assert gmx.mmd2([[1, 0]], [[0, 1]], "gaussian_emd", sigma=0.1, scaling=100) == pytest.approx(
        2 - 2 * math.exp(-0.01 ** 2 / (2 * 0.01)))
    # orbit vectors (no normalisation, L2 Gaussian sigma 30)
    assert gmx.mmd2([[0.0, 30.0]], [[0.0, 0.0]], "gaussian", sigma=30, is_hist=False) == pytest.approx(want)
    # degree MMD of K4s against 3-stars by hand: histograms [0,0,0,1] vs [0,.75,0,.25]: TV = .75, EMD = 1.5
    k4, st = [nx.complete_graph(4)] * 2, [nx.star_graph(3)]
    assert gmx.stat_mmd(k4, st, "degree", "spectre") == pytest.approx(2 - 2 * math.exp(-0.75 ** 2 / 2))
    assert gmx.stat_mmd(k4, st, "degree", "gdss") == pytest.approx(2 - 2 * math.exp(-1.5 ** 2 / 2))
    with pytest.raises(ValueError, match="valid: \\['gdss', 'spectre'\\]"):
        gmx.stat_mmd(k4, st, "degree", "grap")
    with pytest.raises(ValueError, match="positive sum"):
        gmx.mmd2([[0, 0]], [[1]])


# ------------------------------------------------------------------ validity, uniqueness, novelty
def test_validity_checks():
    assert not gmx.is_planar_valid(nx.complete_graph(5))
    assert not gmx.is_planar_valid(nx.complete_bipartite_graph(3, 3))
    assert gmx.is_planar_valid(nx.complete_graph(4))
    assert not gmx.is_planar_valid(nx.disjoint_union(nx.complete_graph(4), nx.complete_graph(4)))   # disconnected
    fam = sg.load("sbm", n_graphs=10)
    valid = gmx.validity_function(fam.params)
    assert np.mean([valid(g) for g in fam.train + fam.test]) >= 0.7
    # an Erdos-Renyi graph with the same size and density is no block model
    er = [nx.gnp_random_graph(g.number_of_nodes(), nx.density(g), seed=i) for i, g in enumerate(fam.train)]
    assert not any(valid(g) for g in er)
    assert gmx.is_community_valid(nx.path_graph(3)) and not gmx.is_community_valid(nx.empty_graph(3))
    with pytest.raises(ValueError, match="unknown graph family"):
        gmx.validity_function({"family": "grid"})


def test_uniqueness_and_novelty_by_isomorphism():
    rng = np.random.default_rng(0)
    a = nx.cycle_graph(6)
    perm = dict(zip(range(6), rng.permutation(6).tolist()))
    a_perm = nx.relabel_nodes(a, perm)
    b = nx.path_graph(6)
    c = nx.star_graph(5)
    # the same WL hash, not isomorphic: two triangles vs a hexagon (WL cannot tell them apart)
    two_tri = nx.disjoint_union(nx.complete_graph(3), nx.complete_graph(3))
    r = gmx.unique_novel([a, a_perm, b, c, two_tri], train=[b])
    assert r["unique"] == pytest.approx(4 / 5)         # a_perm repeats a
    assert r["novel"] == pytest.approx(4 / 5)          # b is a training graph
    assert r["unique_novel"] == pytest.approx(3 / 5) and r["vun"] == pytest.approx(3 / 5)
    r = gmx.unique_novel([a, a_perm, b, c, two_tri], train=[b], valid=nx.is_connected)
    assert r["vun"] == pytest.approx(2 / 5)            # a and c; two_tri is disconnected


# ------------------------------------------------------------------ the model
def test_tiny_model_trains_and_samples_valid_graph_structure():
    ds = sg.load("community-small", n_graphs=20)
    torch.manual_seed(0)
    model = sg.SyntheticGraphModel.from_graphs(ds.train, layers=1, dx=16, de=8, dy=8, heads=2)
    assert model.max_nodes == max(g.number_of_nodes() for g in ds.train)
    assert model.edge_density == pytest.approx(sum(g.number_of_edges() for g in ds.train)
                                               / sum(math.comb(g.number_of_nodes(), 2) for g in ds.train))
    x0, e0, mask = sg.to_dense(ds.train, model.max_nodes)
    loss = GraphCrossEntropy(model.process)
    gen = torch.Generator().manual_seed(0)
    t_eval = torch.linspace(0.02, 0.98, len(ds.train), dtype=torch.float64)
    xt, et = model.process.noise(x0, e0, mask, t_eval, gen)

    def held():
        with torch.no_grad():
            cx, ce = loss.loss_at(model.net, x0, e0, mask, t_eval, xt, et)
        assert float(cx.abs().max()) < 1e-6           # one node type: the node term is exactly 0
        return float(ce.mean())

    before = held()
    info = sg.train(model, ds.train, steps=60, batch_size=16, lr=3e-3, warmup=5, ema_half_life=200.0)
    assert info["steps"] == 60
    after = held()
    assert after < 0.9 * before, (before, after)
    # and below the best model that ignores the graph: the per-pair entropy of the edge density
    d = model.edge_density
    pairs = float(torch.triu(mask[:, :, None] & mask[:, None, :], 1).sum()) / len(ds.train)
    assert after < pairs * -(d * math.log(d) + (1 - d) * math.log(1 - d))
    graphs = model.sample(5, steps=6, generator=torch.Generator().manual_seed(1))
    assert len(graphs) == 5
    for g in graphs:
        assert nx.number_of_selfloops(g) == 0 and 1 <= g.number_of_nodes() <= model.max_nodes
    # the dense sampler output itself: symmetric, zero diagonal, padding empty
    mask = model.node_mask(torch.tensor([5, 9, 12]))
    from polydiff.core.discrete.graph import sample_graph
    x, e = sample_graph(model.net, mask, process=model.process, steps=4, generator=torch.Generator().manual_seed(2))
    model.process.check_graph(x, e, mask, data_only=True)
    assert (x == 0).all()


def test_model_save_load_round_trip(tmp_path):
    ds = sg.load("planar-small", n_graphs=10)
    model = sg.SyntheticGraphModel.from_graphs(ds.train, layers=1, dx=8, de=4, dy=4, heads=2)
    model.save(tmp_path / "m")
    back = sg.SyntheticGraphModel.load(tmp_path / "m")
    assert back.config() == model.config()
    a = model.sample(3, steps=3, generator=torch.Generator().manual_seed(0))
    b = back.sample(3, steps=3, generator=torch.Generator().manual_seed(0))
    assert all(nx.utils.graphs_equal(u, v) for u, v in zip(a, b))
    with pytest.raises(ValueError, match="edge_density"):
        sg.SyntheticGraphModel(1.5, [0, 0, 1])
    with pytest.raises(ValueError, match="steps"):
        model.sample(2, steps=0)


def test_generate_graphs_command_writes_graph6_and_metrics(tmp_path, capsys):
    import json

    from polydiff.tasks.cli import main
    out = tmp_path / "g.g6"
    assert main(["generate", "graphs", "-n", "4", "--steps", "5", "--seed", "1", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    graphs = [nx.from_graph6_bytes(line.encode()) for line in lines]
    assert len(graphs) == 4 and all(12 <= g.number_of_nodes() <= 20 for g in graphs)
    report = json.loads((tmp_path / "g.metrics.json").read_text())
    assert report["n"] == 4 and report["dataset"] == "community-small"
    # the evaluator's validity (connected, for community graphs) agrees with an independent check
    assert report["valid"] == sum(nx.is_connected(g) for g in graphs) / 4
    assert main(["generate", "graphs", "-n", "4", "--out", str(tmp_path / "g.txt")]) == 2
    assert ".g6" in capsys.readouterr().err
