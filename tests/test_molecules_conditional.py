"""Property-conditioned graph diffusion (classifier-free) and the 2-D property regressor."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from polydiff.core.discrete.graph import GraphCrossEntropy, node_mask_from_sizes
from polydiff.domains.molecules.graph_model import GraphDiffusionModel, condition_spec, pretrained
from polydiff.domains.molecules.property_regressor import (PropertyRegressor, fit, implicit_hydrogens,
                                                           token_valences)

torch.set_num_threads(1)
N = 9


def _random_graphs(b: int, types: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(2, N + 1, (b,), generator=g)
    mask = node_mask_from_sizes(sizes, N)
    x = torch.randint(0, types, (b, N), generator=g) * mask
    u = torch.randint(0, 4, (b, N, N), generator=g)
    e = torch.triu(u, 1)
    e = (e + e.transpose(1, 2)) * (mask[:, :, None] & mask[:, None, :])
    return x, e, mask


def _conditional_copy(base: GraphDiffusionModel, values: np.ndarray, sizes: np.ndarray) -> GraphDiffusionModel:
    spec = condition_spec(["alpha"], values[:, None], sizes, base.max_nodes)
    cm = GraphDiffusionModel(base.vocab, base.node_marginal, base.edge_marginal, base.size_counts.tolist(),
                             condition=spec, **base.arch)
    missing, unexpected = cm.net.load_state_dict(base.net.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("cond_") for k in missing)
    return cm


@pytest.fixture(scope="module")
def shipped():
    return pretrained("qm9-2d")


def test_zero_init_conditional_net_equals_unconditional(shipped):
    """New layers start at zero: with any condition, the null one or per-graph drops, the conditional net
    computes bit for bit what the shipped unconditional net computes; so does guidance (any scale)."""
    rng = np.random.default_rng(0)
    cm = _conditional_copy(shipped, rng.normal(75, 8, 500), rng.integers(1, 10, 500))
    cm.net.eval()
    x, e, mask = _random_graphs(6, len(shipped.vocab), 1)
    t = torch.linspace(0.1, 0.9, 6, dtype=torch.float64)
    with torch.no_grad():
        lx, le = shipped.net(x, e, t, mask)
        c = cm.normalise_condition({"alpha": [60.0, 70, 80, 90, 100, 55]}, 6)
        for kw in ({}, {"cond": c}, {"cond": c, "drop": torch.tensor([True, False] * 3)}):
            cx, ce = cm.net(x, e, t, mask, **kw)
            assert torch.equal(cx, lx) and torch.equal(ce, le)
        gx, ge = cm.guided_denoiser(c, 3.0)(x, e, t, mask)
    assert torch.allclose(gx, torch.log_softmax(lx, -1), atol=1e-5)
    assert torch.allclose(ge, torch.log_softmax(le, -1), atol=1e-5)


def test_guided_denoiser_is_the_tempered_product():
    """Packed CFG equals log_softmax(lu + w (lc - lu)) per node and per pair, computed by hand."""
    torch.manual_seed(0)
    m = GraphDiffusionModel(pretrained("qm9-2d").vocab, [1 / 8] * 8, [0.7, 0.2, 0.05, 0.05], [0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
                            layers=1, dx=16, de=8, dy=8, heads=2,
                            condition=condition_spec(["alpha"], np.arange(20.0)[:, None], np.arange(20) % 9 + 1, N))
    for p in m.net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x, e, mask = _random_graphs(4, 8, 2)
    t = torch.full((4,), 0.5, dtype=torch.float64)
    c = torch.randn(4, 1)
    with torch.no_grad():
        cx, ce = m.net(x, e, t, mask, cond=c)
        ux, ue = m.net(x, e, t, mask, cond=c, drop=torch.ones(4, dtype=torch.bool))
        assert not torch.allclose(cx, ux)
        gx, ge = m.guided_denoiser(c, 2.5)(x, e, t, mask)
    lc, lu = torch.log_softmax(cx, -1), torch.log_softmax(ux, -1)
    assert torch.allclose(gx, torch.log_softmax(lu + 2.5 * (lc - lu), -1), atol=1e-5)
    lc, lu = torch.log_softmax(ce, -1), torch.log_softmax(ue, -1)
    assert torch.allclose(ge, torch.log_softmax(lu + 2.5 * (lc - lu), -1), atol=1e-5)


def test_conditioning_is_learned_on_a_toy_set():
    """Toy data where the property decides the node type (c = +1: all type 1, c = -1: all type 0): after
    a short classifier-free training (10 % null) the conditional x0 prediction at pure noise follows c."""
    from polydiff.domains.molecules.convert import AtomVocab
    torch.manual_seed(0)
    vocab = AtomVocab.of([("C", 0), ("N", 0)])
    B = 64
    sizes = torch.full((B,), 4)
    mask = node_mask_from_sizes(sizes, N)
    c = torch.where(torch.arange(B) % 2 == 0, 1.0, -1.0)
    x0 = (c > 0).long()[:, None].expand(B, N) * mask
    e0 = torch.zeros(B, N, N, dtype=torch.long)
    m = GraphDiffusionModel(vocab, [0.5, 0.5], [0.7, 0.1, 0.1, 0.1], [0, 0, 0, 0, 1, 0, 0, 0, 0, 0], layers=1, dx=16,
                            de=8, dy=16, heads=2,
                            condition=condition_spec(["alpha"], c[:, None].numpy(), sizes.numpy(), N))
    cz = m.normalise_condition({"alpha": c.numpy()}, B)
    loss_fn = GraphCrossEntropy(m.process)
    opt = torch.optim.Adam(m.net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(80):
        drop = torch.rand(B, generator=g) < 0.1
        loss = loss_fn(lambda a, b_, t, mk: m.net(a, b_, t, mk, cond=cz, drop=drop), x0, e0, mask, generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt, et = m.process.prior_sample(mask[:2], g)
    with torch.no_grad():
        lx, _ = m.net(xt, et, torch.ones(2), mask[:2], cond=m.normalise_condition({"alpha": [1.0, -1.0]}, 2))
    p1 = torch.softmax(lx, -1)[..., 1][:, :4].mean(1)
    assert p1[0] > 0.9 and p1[1] < 0.1


def test_sizes_given_condition_follow_the_joint_histogram():
    """p(n | c): a spec where each property bin holds one node count returns exactly that count."""
    vals = np.concatenate([np.full(50, 10.0), np.full(50, 20.0)])
    sizes = np.concatenate([np.full(50, 3), np.full(50, 7)])
    spec = condition_spec(["alpha"], vals[:, None], sizes, N, bins=4)
    m = GraphDiffusionModel(pretrained("qm9-2d").vocab, [1 / 8] * 8, [0.7, 0.2, 0.05, 0.05],
                            np.bincount(sizes, minlength=N + 1).tolist(), layers=1, dx=8, de=4, dy=4, heads=1,
                            condition=spec)
    n = m.sample_sizes_given({"alpha": [10.0, 20.0, 11.0, 19.5] * 25}, 100, torch.Generator().manual_seed(0))
    assert n.tolist() == [3, 7, 3, 7] * 25


def test_condition_errors(shipped):
    rng = np.random.default_rng(0)
    cm = _conditional_copy(shipped, rng.normal(75, 8, 100), rng.integers(1, 10, 100))
    with pytest.raises(ValueError, match="alpha"):
        cm.normalise_condition({"gap": [0.2, 0.3]}, 2)
    with pytest.raises(ValueError, match="misses"):
        cm.normalise_condition({}, 2)
    with pytest.raises(ValueError, match="NaN"):
        cm.normalise_condition({"alpha": [70.0, float("nan")]}, 2)
    with pytest.raises(ValueError, match="3 values for 2"):
        cm.generate(2, steps=2, condition={"alpha": [70.0, 71.0, 72.0]})
    with pytest.raises(ValueError, match="unconditional"):
        shipped.generate(2, steps=2, condition={"alpha": [70.0, 71.0]})
    with pytest.raises(ValueError, match="unconditional"):
        x, e, mask = _random_graphs(2, 8, 0)
        shipped.net(x, e, torch.ones(2), mask, cond=torch.zeros(2, 1))
    with pytest.raises(ValueError, match="guidance_scale needs a condition"):
        cm.sample_graphs(2, 2, guidance_scale=2.0)


def test_conditional_model_round_trip_and_sampling(tmp_path, shipped):
    rng = np.random.default_rng(1)
    cm = _conditional_copy(shipped, rng.normal(75, 8, 200), rng.integers(1, 10, 200))
    torch.nn.init.normal_(cm.net.cond_emb[2].weight, std=0.1)
    cm.save(tmp_path / "m")
    back = GraphDiffusionModel.load(tmp_path / "m")
    assert back.condition_names == ["alpha"] and back.condition == cm.condition
    x, e, mask = _random_graphs(3, 8, 4)
    c = cm.normalise_condition({"alpha": [60.0, 75.0, 90.0]}, 3)
    with torch.no_grad():
        assert torch.equal(cm.net(x, e, torch.full((3,), 0.3), mask, cond=c)[0],
                           back.net(x, e, torch.full((3,), 0.3), mask, cond=c)[0])
    mols = back.generate(3, steps=3, seed=0, condition={"alpha": [60.0, 75.0, 90.0]}, guidance_scale=2.0,
                         sizes=[4, 5, 6])
    assert len(mols) == 3 and back.last_stats["n"] == 3
    x, e, mask = back.sample_graphs(3, 3, torch.Generator().manual_seed(0), sizes=torch.tensor([4, 5, 6]),
                                    condition={"alpha": [60.0, 75.0, 90.0]}, guidance_scale=2.0)
    assert mask.sum(1).tolist() == [4, 5, 6]


def test_halves_are_disjoint_and_cover_train():
    from polydiff.domains.molecules.data import qm9_split_rows
    a, b, tr = (qm9_split_rows(s) for s in ("train_first_half", "train_second_half", "train"))
    assert len(a) == len(b) == 50_000
    assert not set(a.tolist()) & set(b.tolist())
    assert np.array_equal(np.sort(np.concatenate([a, b])), tr)


def test_implicit_hydrogens_match_rdkit(shipped):
    from rdkit import Chem
    smiles = ["CC(=O)O", "C#N", "c1ccccc1O", "C[N+](C)(C)C", "CC(=O)[O-]", "FC(F)F", "[C-]#[O+]", "N=C=O", "C[NH3+]"]
    mols = [Chem.MolFromSmiles(s) for s in smiles]
    keep = [m for m in mols if all((a.GetSymbol(), a.GetFormalCharge()) in shipped.vocab.tokens for a in m.GetAtoms())]
    assert len(keep) >= 7
    x, e, mask = shipped.encode(keep)
    h = implicit_hydrogens(x, e, mask, token_valences(shipped.vocab.tokens))
    for b, m in enumerate(keep):
        assert h[b, :m.GetNumAtoms()].tolist() == [float(a.GetTotalNumHs()) for a in m.GetAtoms()]


def test_regressor_fits_an_exact_graph_count(tmp_path):
    """Target = number of double bonds + 0.5 x number of atoms of type 1: a sum over the graph that the
    message passing network with sum readout represents exactly; it is fitted to < 0.15 MAE on held-out
    graphs (the mean absolute deviation of the target is ~2.9), and save / load keeps the predictions."""
    torch.manual_seed(0)
    tokens = [("C", 0), ("N", 0), ("O", 0)]

    def target(x, e, mask):
        return ((e == 2).float().sum((1, 2)) / 2 + 0.5 * ((x == 1) & mask).float().sum(1)).double()

    x, e, mask = _random_graphs(600, 3, 5)
    y = target(x, e, mask)
    reg = PropertyRegressor("toy", tokens, float(y.mean()), float(y.std()), N, hidden=32, layers=2)
    fit(reg, x[:500], e[:500], mask[:500], y[:500], steps=400, batch=64, lr=3e-3)
    pred = reg.predict_graphs(x[500:], e[500:], mask[500:])
    assert float((pred - y[500:]).abs().mean()) < 0.15 < float((y[500:] - y[:500].mean()).abs().mean())
    reg.save(tmp_path / "r")
    back = PropertyRegressor.load(tmp_path / "r")
    assert torch.equal(back.predict_graphs(x[500:], e[500:], mask[500:]), pred)


def test_regressor_errors():
    reg = PropertyRegressor("toy", [("C", 0), ("N", 0)], 0.0, 1.0, N, hidden=8, layers=1)
    x, e, mask = _random_graphs(2, 2, 0)
    with pytest.raises(ValueError, match="node types"):
        reg.predict_graphs(x + 5, e, mask)
    with pytest.raises(ValueError, match="finite"):
        fit(reg, x, e, mask, torch.tensor([1.0, float("nan")]), steps=1)
    with pytest.raises(ValueError, match="valence rule"):
        token_valences([("Xe", 0)])
    with pytest.raises(ValueError, match="std"):
        PropertyRegressor("toy", [("C", 0)], 0.0, 0.0)


def test_cli_generates_with_a_condition_and_rejects_bad_ones(tmp_path, capsys):
    import json
    from polydiff.tasks import cli
    out = tmp_path / "a.smi"
    assert cli.main(["generate", "molecules", "-n", "4", "--model", "qm9-2d-alpha", "--steps", "3",
                     "--condition", "alpha=80", "--guidance-scale", "2", "--no-fcd", "--out", str(out)]) == 0
    res = json.loads((tmp_path / "a.metrics.json").read_text())
    assert res["condition"] == {"alpha": 80.0} and res["guidance_scale"] == 2.0 and res["n_generated"] == 4
    for bad, msg in ((["--model", "qm9-2d-alpha", "--condition", "gap=0.2"], "takes --condition alpha"),
                     (["--model", "qm9-2d", "--condition", "alpha=80"], "takes --condition \\(none\\)"),
                     (["--model", "qm9-2d-alpha", "--condition", "alpha"], "NAME=VALUE"),
                     (["--model", "qm9-2d-alpha", "--condition", "alpha=nan"], "finite"),
                     (["--model", "qm9-2d-alpha", "--guidance-scale", "2"], "needs --condition")):
        assert cli.main(["generate", "molecules", "-n", "2", "--out", str(tmp_path / "b.smi"), *bad]) == 2
        import re
        assert re.search(msg, capsys.readouterr().err), bad
