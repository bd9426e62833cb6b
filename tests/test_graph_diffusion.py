"""DiGress graph diffusion: core graph process (core/discrete/graph.py) and the QM9 2-D model."""
import itertools

import numpy as np
import pytest
import torch
from rdkit import Chem

from polydiff.core import discrete
from polydiff.core.discrete.graph import (GraphCrossEntropy, GraphProcess, edges_to_upper, pair_mask, sample_graph,
                                          transition_matrix, upper_to_edges)
from polydiff.domains.molecules import graph_model as gm
from polydiff.domains.molecules.convert import AtomVocab
from polydiff.domains.molecules.train_graph import statistics

torch.set_num_threads(1)

PROCESSES = [discrete.Marginal([0.6, 0.3, 0.1], "cosine"), discrete.Marginal([0.5, 0.0, 0.2, 0.3], "linear"),
             discrete.Uniform(3, "cosine")]


def _toy_process():
    return GraphProcess(discrete.Marginal([0.7, 0.2, 0.1], "cosine"), discrete.Marginal([0.6, 0.3, 0.1], "cosine"))


def _random_graphs(B, N, gen, vx=3, ve=3, min_nodes=1):
    sizes = torch.randint(min_nodes, N + 1, (B,), generator=gen)
    mask = torch.arange(N)[None] < sizes[:, None]
    x = torch.randint(0, vx, (B, N), generator=gen)
    u = torch.randint(0, ve, (B, N * (N - 1) // 2), generator=gen)
    return GraphProcess._clean(x, upper_to_edges(u, N), mask) + (mask,)


# ------------------------------------------------------------------ transitions and posteriors
@pytest.mark.parametrize("proc", PROCESSES, ids=lambda p: p.name + "-" + p.schedule.name)
def test_transition_rows_sum_to_one_and_compose(proc):
    for s, t in [(0.0, 0.3), (0.2, 0.5), (0.5, 0.9), (0.0, 1.0), (0.7, 1.0)]:
        Q = transition_matrix(proc, s, t)
        assert (Q >= -1e-15).all()
        torch.testing.assert_close(Q.sum(1), torch.ones(proc.num_states, dtype=torch.float64))
    # Chapman-Kolmogorov: Q_{t|0} = Q_{s|0} Q_{t|s}
    torch.testing.assert_close(transition_matrix(proc, 0.0, 0.8),
                               transition_matrix(proc, 0.0, 0.35) @ transition_matrix(proc, 0.35, 0.8))
    # the marginal process forgets x0: every row of Q-bar_1 is the marginal (its limit distribution)
    Q1 = transition_matrix(proc, 0.0, 1.0)
    torch.testing.assert_close(Q1, proc.noise_dist.expand(proc.num_states, -1))
    # and Q-bar_t = alpha I + (1 - alpha) 1 pi^T (DiGress's closed form)
    a = float(proc.alpha(0.4))
    torch.testing.assert_close(transition_matrix(proc, 0.0, 0.4),
                               a * torch.eye(proc.num_states, dtype=torch.float64) + (1 - a) * proc.noise_dist[None])


def test_posterior_matches_bruteforce_enumeration():
    proc = _toy_process()
    s, t = 0.35, 0.6
    node = proc.node
    Qs0, Qts, Qt0 = (transition_matrix(node, 0.0, s), transition_matrix(node, s, t), transition_matrix(node, 0.0, t))
    K = node.num_states
    # every (x0, x_t) pair on one position: q(z_s | z_t, x0) = Q_{s|0}[x0, z_s] Q_{t|s}[z_s, z_t] / Q_{t|0}[x0, z_t]
    x0 = torch.tensor([[a for a, _ in itertools.product(range(K), range(K))]])
    xt = torch.tensor([[b for _, b in itertools.product(range(K), range(K))]])
    post = node.posterior(xt, torch.nn.functional.one_hot(x0, K).double(), s, t)[0]
    for k, (a, b) in enumerate(itertools.product(range(K), range(K))):
        brute = torch.tensor([Qs0[a, z] * Qts[z, b] / Qt0[a, b] for z in range(K)])
        torch.testing.assert_close(post[k], brute)
    # through the graph process, with a mixture prediction p(x0 | G_t): sum_x0 p(x0) q(z_s | z_t, x0)
    gen = torch.Generator().manual_seed(0)
    x, e, mask = _random_graphs(2, 3, gen, min_nodes=3)
    px = torch.softmax(torch.randn(2, 3, 3, generator=gen, dtype=torch.float64), -1)
    pe = torch.softmax(torch.randn(2, 3, 3, 3, generator=gen, dtype=torch.float64), -1)
    pe = 0.5 * (pe + pe.transpose(1, 2))
    qx, qe = proc.posterior(x, e, px, pe, mask, s, t)
    Es0, Ets, Et0 = (transition_matrix(proc.edge, 0.0, s), transition_matrix(proc.edge, s, t),
                     transition_matrix(proc.edge, 0.0, t))
    for b in range(2):
        for i in range(3):
            want = sum(px[b, i, a] * torch.tensor([Qs0[a, z] * Qts[z, x[b, i]] / Qt0[a, x[b, i]] for z in range(K)])
                       for a in range(K))
            torch.testing.assert_close(qx[b, i], want)
        for k, (i, j) in enumerate([(0, 1), (0, 2), (1, 2)]):
            et = e[b, i, j]
            want = sum(pe[b, i, j, a] * torch.tensor([Es0[a, z] * Ets[z, et] / Et0[a, et] for z in range(3)])
                       for a in range(3))
            torch.testing.assert_close(qe[b, k], want)


# ------------------------------------------------------------------ symmetry and masking
def test_edge_noise_symmetric_padding_masked_and_limit_is_marginal():
    proc = _toy_process()
    gen = torch.Generator().manual_seed(1)
    x0, e0, mask = _random_graphs(4000, 6, gen)
    for t in (0.3, 1.0):
        xt, et = proc.noise(x0, e0, mask, t, gen)
        assert torch.equal(et, et.transpose(1, 2))
        assert (et[~pair_mask(mask)] == 0).all() and (xt[~mask] == 0).all()
        proc.check_graph(xt, et, mask)
    # at t = 1 (alpha = 0) real nodes and pairs follow the marginals, whatever the data
    fx = torch.bincount(xt[mask], minlength=3).double() / mask.sum()
    pm = edges_to_upper(pair_mask(mask))
    fe = torch.bincount(edges_to_upper(et)[pm], minlength=3).double() / pm.sum()
    assert (fx - proc.node.noise_dist).abs().max() < 0.015
    assert (fe - proc.edge.noise_dist).abs().max() < 0.01
    # the prior sampler and the ancestral sampler keep the same structure
    x1, e1 = proc.prior_sample(mask[:50], gen)
    assert torch.equal(e1, e1.transpose(1, 2)) and (e1[~pair_mask(mask[:50])] == 0).all() and (x1[~mask[:50]] == 0).all()


def test_sampler_returns_the_graph_an_exact_point_denoiser_predicts():
    """With a denoiser certain of one graph G (p(x0 | G_t) = delta_G), every ancestral path ends at G."""
    proc = _toy_process()
    gen = torch.Generator().manual_seed(2)
    xg, eg, mask = _random_graphs(16, 5, gen)

    def D(x, e, t, m):
        return (torch.nn.functional.one_hot(xg, 3).double().log().clamp_min(-1e4),
                torch.nn.functional.one_hot(eg, 3).double().log().clamp_min(-1e4))

    calls = []
    x, e = sample_graph(lambda *a: calls.append(1) or D(*a), mask, process=proc, steps=7, generator=gen)
    assert len(calls) == 7
    assert torch.equal(x, xg) and torch.equal(e, eg)


# ------------------------------------------------------------------ the network and the loss
def test_network_output_symmetric_and_padding_invariant():
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    net = gm.GraphTransformer(3, 4, 5, layers=2, dx=16, de=8, dy=8, heads=2).eval()
    x, e, mask = _random_graphs(3, 5, gen, ve=4, min_nodes=2)
    t = torch.rand(3, dtype=torch.float64, generator=gen)
    lx, le = net(x, e, t, mask)
    assert lx.shape == (3, 5, 3) and le.shape == (3, 5, 5, 4)
    torch.testing.assert_close(le, le.transpose(1, 2))
    # padded slots do not influence real nodes: change the padding's (ignored) content, same logits
    x2 = x.clone()
    x2[~mask] = 2
    lx2, le2 = net(x2, e, t, mask)
    torch.testing.assert_close(lx2[mask], lx[mask])
    pm = pair_mask(mask)
    torch.testing.assert_close(le2[pm], le[pm])


def test_tiny_model_loss_decreases_on_two_molecules():
    vocab = AtomVocab.qm9()
    mols = [Chem.MolFromSmiles(s) for s in ("CC(=O)N", "C#CC1CO1")]
    model = gm.GraphDiffusionModel(vocab, [0.6, 0.2, 0.15, 0.05], [0.7, 0.2, 0.07, 0.03], [0, 0, 0, 0, 1, 1],
                                   layers=1, dx=32, de=8, dy=16, heads=2)
    torch.manual_seed(0)
    model.net = gm.GraphTransformer(4, 4, 5, layers=1, dx=32, de=8, dy=16, heads=2)
    x0, e0, mask = model.encode(mols)
    x0, e0, mask = x0.repeat(16, 1), e0.repeat(16, 1, 1), mask.repeat(16, 1)
    loss = GraphCrossEntropy(model.process)
    gen = torch.Generator().manual_seed(0)
    t_eval = torch.linspace(0.02, 0.98, x0.shape[0], dtype=torch.float64)
    xt_eval, et_eval = model.process.noise(x0, e0, mask, t_eval, gen)

    def held_loss():
        with torch.no_grad():
            cx, ce = loss.loss_at(model.net, x0, e0, mask, t_eval, xt_eval, et_eval)
        return float((cx + 5 * ce).mean())

    before = held_loss()
    opt = torch.optim.Adam(model.net.parameters(), lr=1e-2)
    for _ in range(100):
        val = loss(model.net, x0, e0, mask, generator=gen).mean()
        opt.zero_grad()
        val.backward()
        opt.step()
    after = held_loss()
    assert after < 0.6 * before, (before, after)


# ------------------------------------------------------------------ molecules
@pytest.mark.parametrize("smi", ["CC(=O)N", "c1ccoc1", "C#N", "[NH3+]CC(=O)[O-]", "OC1C2CC1N2", "FC(F)F"])
def test_dense_round_trip(smi):
    vocab = AtomVocab.of(["C", ("N", 1), "N", ("O", -1), "O", "F"])
    mol = Chem.MolFromSmiles(smi)
    x, e = gm.mol_to_dense(mol, vocab, 9)
    assert np.array_equal(e, e.T) and (np.diag(e) == 0).all()
    back = gm.dense_to_mol(torch.from_numpy(x), torch.from_numpy(e), mol.GetNumAtoms(), vocab)
    assert Chem.MolToSmiles(back) == Chem.MolToSmiles(mol)


def test_dense_to_mol_rejects_invalid_valence():
    vocab = AtomVocab.qm9()                       # C N O F
    x = torch.tensor([3, 0, 0])                   # F bonded to two carbons
    e = torch.zeros(3, 3, dtype=torch.long)
    e[0, 1] = e[1, 0] = e[0, 2] = e[2, 0] = 1
    assert gm.dense_to_mol(x, e, 3, vocab) is None
    e[0, 2] = e[2, 0] = 0                         # F-C plus a lone C: two fragments, still sanitizable
    assert gm.dense_to_mol(x, e, 3, vocab) is not None


def test_statistics_of_dense_graphs():
    g = {"x": np.array([[0, 1, 0], [1, 1, 1]], dtype=np.int8),
         "e": np.array([[[0, 1, 0], [1, 0, 0], [0, 0, 0]], [[0, 2, 0], [2, 0, 1], [0, 1, 0]]], dtype=np.int8),
         "n": np.array([2, 3]), "vocab": np.array(["C:0", "N:0"])}
    vocab, pn, pe, sizes = statistics(g, 3)
    assert vocab.tokens == (("C", 0), ("N", 0))
    np.testing.assert_allclose(pn, [1 / 5, 4 / 5])                   # padding node not counted
    np.testing.assert_allclose(pe, [1 / 4, 2 / 4, 1 / 4, 0])         # 1 + 3 real pairs
    assert sizes == [0, 0, 1, 1]


def test_shipped_weights_load_and_sample():
    model = gm.pretrained("qm9-2d")
    assert model.max_nodes == 9 and len(model.vocab) >= 4
    g = torch.Generator().manual_seed(0)
    x, e, mask = model.sample_graphs(6, steps=8, generator=g)
    assert x.shape == (6, 9) and e.shape == (6, 9, 9) and mask.shape == (6, 9)
    model.process.check_graph(x, e, mask, data_only=True)            # symmetric, padding at 0, ids in range
    assert (mask.sum(1) >= 1).all()
    mols = model.sample_molecules(5, steps=8, seed=1)
    assert len(mols) == 5 and all(m is None or m.GetNumAtoms() <= 9 for m in mols)
    assert [Chem.MolToSmiles(m) if m else None for m in mols] == \
        [Chem.MolToSmiles(m) if m else None for m in model.sample_molecules(5, steps=8, seed=1)]
    # trained, not just loadable: a randomly initialised network of this size gives 0 % valid molecules
    mols = model.sample_molecules(48, steps=20, seed=0)
    assert sum(m is not None for m in mols) / 48 >= 0.5


# ------------------------------------------------------------------ bad input
def test_bad_input_errors():
    proc = _toy_process()
    gen = torch.Generator().manual_seed(4)
    x, e, mask = _random_graphs(2, 4, gen, min_nodes=4)
    with pytest.raises(ValueError, match="Process"):
        GraphProcess(proc.node, "edges")
    with pytest.raises(ValueError, match="symmetric"):
        e2 = e.clone()
        e2[0, 0, 1], e2[0, 1, 0] = 1, 2
        proc.check_graph(x, e2, mask)
    with pytest.raises(ValueError, match="padded"):
        m2 = mask.clone()
        m2[0, 3] = False
        proc.check_graph(x.masked_fill(~m2, 1), e.masked_fill(~pair_mask(m2), 0), m2)
    with pytest.raises(ValueError, match="out of range"):
        proc.check_graph(x + 5, e, mask)
    with pytest.raises(ValueError, match="s <= t"):
        transition_matrix(proc.node, 0.6, 0.2)
    with pytest.raises(ValueError, match="edge_weight"):
        GraphCrossEntropy(proc, edge_weight=-1)
    with pytest.raises(ValueError, match="valid: qm9-2d"):
        gm.pretrained("qm9-3d-nope")
    with pytest.raises(ValueError, match="n must be"):
        gm.sample_molecules(0)
    with pytest.raises(ValueError, match="padded to 9"):
        gm.GraphTransformer(4, 4, 9, layers=1, dx=8, de=4, dy=4, heads=2)(x, e, torch.zeros(2), mask)
    with pytest.raises(ValueError, match="more than max_nodes"):
        gm.mol_to_dense(Chem.MolFromSmiles("CCCCCCCCCC"), AtomVocab.qm9(), 9)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        gm.mol_to_dense(Chem.MolFromSmiles("CS"), AtomVocab.qm9(), 9)
    with pytest.raises(ValueError, match="guidance"):
        gm.GraphDiffusionModel(AtomVocab.qm9(), [0.25] * 4, [0.25] * 4, [0, 1, 1]).generate(1, guidance="qed")
