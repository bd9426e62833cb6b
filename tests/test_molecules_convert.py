"""Conversions: RDKit <-> graphs, 3-D point sets (EDM bond table), SELFIES."""
import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")
from rdkit import Chem  # noqa: E402

from polydiff.domains.molecules import convert, data  # noqa: E402


def _canon(smi, isomeric=False):
    return Chem.MolToSmiles(Chem.MolFromSmiles(smi), isomericSmiles=isomeric)


@pytest.fixture(scope="module")
def qm9_small():
    return data._dataset_from_arrays(data._read_qm9pack(nrows=60))


@pytest.fixture(scope="module")
def moses_small():
    return data.load_moses("test", limit=150)


def test_graph_round_trip_qm9_and_moses(qm9_small, moses_small):
    vocab = convert.AtomVocab.of(["C", "N", "O", "F", "S", "Cl", "Br", ("N", 1), ("O", -1), ("N", -1), ("C", -1)])
    smiles = [s for s in qm9_small.smiles if Chem.MolFromSmiles(s) is not None] + moses_small
    assert len(smiles) > 300
    for s in smiles:
        g = convert.mol_to_graph(Chem.MolFromSmiles(s), vocab)
        assert g.edge_attr.max() <= 3 if g.edge_attr.numel() else True   # kekulized: no aromatic type
        back = convert.graph_to_mol(g, vocab)
        assert Chem.MolToSmiles(back, isomericSmiles=False) == _canon(s), s


def test_graph_with_hydrogens_and_aromatic_edges():
    vocab = convert.AtomVocab.qm9(hydrogens=True)
    g = convert.mol_to_graph(Chem.MolFromSmiles("CC(=O)O"), vocab, hydrogens=True)
    assert g.num_nodes == 8 and int((g.x == 0).sum()) == 4            # 4 explicit H
    assert Chem.MolToSmiles(Chem.RemoveHs(convert.graph_to_mol(g, vocab))) == "CC(=O)O"
    # aromatic edge type: benzene and pyridine keep type 4 and rebuild
    v2 = convert.AtomVocab.of(["C", "N"])
    for s in ("c1ccccc1", "c1ccncc1"):
        g = convert.mol_to_graph(Chem.MolFromSmiles(s), v2, kekulize=False)
        assert set(g.edge_attr.tolist()) == {4}
        assert Chem.MolToSmiles(convert.graph_to_mol(g, v2)) == _canon(s)


def test_formal_charges_and_unknown_atoms():
    vocab = convert.AtomVocab.of(["C", "O", ("N", 1), ("O", -1)])
    s = "C[N+](=O)[O-]"
    g = convert.mol_to_graph(Chem.MolFromSmiles(s), vocab)
    assert sorted(g.x.tolist()) == [0, 1, 2, 3]
    assert Chem.MolToSmiles(convert.graph_to_mol(g, vocab)) == _canon(s)
    with pytest.raises(ValueError, match="not in the vocabulary; valid: C, O, N\\+1, O-1"):
        convert.mol_to_graph(Chem.MolFromSmiles("CCN"), vocab)
    with pytest.raises(ValueError, match="unknown element"):
        convert.AtomVocab.of(["C", "Xx"])
    assert convert.AtomVocab.from_mols([Chem.MolFromSmiles("C[N+](=O)[O-]")]).tokens == \
        (("C", 0), ("N", 1), ("O", -1), ("O", 0))


def test_graph_to_mol_rejects_bad_graphs():
    from torch_geometric.data import Data
    vocab = convert.AtomVocab.of(["C", "F"])
    # F with two bonds: valence violation
    bad = Data(x=torch.tensor([1, 0, 0]), edge_index=torch.tensor([[0, 1, 0, 2], [1, 0, 2, 0]]),
               edge_attr=torch.tensor([1, 1, 1, 1]))
    with pytest.raises(ValueError, match="not a valid molecule"):
        convert.graph_to_mol(bad, vocab)
    assert convert.graph_to_mol(bad, vocab, sanitize=False).GetNumBonds() == 2
    with pytest.raises(ValueError, match="node type ids"):
        convert.graph_to_mol(Data(x=torch.tensor([5]), edge_index=torch.zeros(2, 0, dtype=torch.long),
                                  edge_attr=torch.zeros(0, dtype=torch.long)), vocab)
    with pytest.raises(ValueError, match="edge type 7"):
        convert.graph_to_mol(Data(x=torch.tensor([0, 0]), edge_index=torch.tensor([[0], [1]]),
                                  edge_attr=torch.tensor([7])), vocab)


def test_dense_round_trip():
    vocab = convert.AtomVocab.moses()
    g = convert.mol_to_graph(Chem.MolFromSmiles("Clc1ccccc1C#N"), vocab)
    x, e = convert.dense_graph(g, max_nodes=12)
    assert x.shape == (12,) and e.shape == (12, 12) and (x[9:] == -1).all()
    assert torch.equal(e, e.t()) and int((e == 3).sum()) == 2
    g2 = convert.graph_from_dense(x, e)
    assert Chem.MolToSmiles(convert.graph_to_mol(g2, vocab)) == _canon("Clc1ccccc1C#N")


def test_bond_orders_follow_edm_table():
    z = np.zeros((2, 3))
    cc = np.array([1, 1])                               # C, C in QM9_ELEMENTS
    expected = {1.70: 0, 1.63: 1, 1.54: 1, 1.40: 1, 1.385: 2, 1.24: 2, 1.22: 3, 1.10: 3}
    for d, order in expected.items():                   # single < 1.64, double < 1.39, triple < 1.23
        p = z.copy()
        p[1, 0] = d
        assert convert.infer_bond_orders(p, cc)[0, 1] == order, d
    # a pair with no double length (C-F) is single however short
    assert convert.infer_bond_orders(np.array([[0, 0, 0], [1.0, 0, 0]]), np.array([1, 4]))[0, 1] == 1
    with pytest.raises(ValueError, match="shape \\(N, 3\\)"):
        convert.infer_bond_orders(np.zeros((3, 2)), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="atom type ids"):
        convert.infer_bond_orders(np.zeros((2, 3)), np.array([0, 9]))
    with pytest.raises(ValueError, match="NaN"):
        convert.infer_bond_orders(np.full((2, 3), np.nan), np.array([0, 1]))


def test_points_round_trip_on_dft_geometries(qm9_small):
    agree = total = 0
    for i in range(len(qm9_small)):
        pos, typ = qm9_small.molecule(i)
        mol = convert.points_to_mol(pos, typ)
        assert mol.GetNumConformers() == 1
        p2, t2 = convert.mol_to_points(mol)
        assert torch.equal(t2, typ) and torch.allclose(p2, pos)
        try:
            Chem.SanitizeMol(mol)
        except Exception:
            continue
        total += 1
        agree += Chem.MolToSmiles(Chem.RemoveHs(mol), isomericSmiles=False) == _canon(qm9_small.smiles[i])
    assert total >= 0.9 * len(qm9_small) and agree >= 0.9 * total
    with pytest.raises(ValueError, match="no conformer"):
        convert.mol_to_points(Chem.MolFromSmiles("CCO"))


def test_selfies_round_trip_and_tokenizer(moses_small):
    import selfies as sf
    strings = [convert.mol_to_selfies(s) for s in moses_small[:60]]
    for s, smi in zip(strings, moses_small[:60]):
        assert Chem.MolToSmiles(convert.selfies_to_mol(s)) == Chem.MolToSmiles(Chem.MolFromSmiles(smi))
    tok = convert.SelfiesTokenizer.from_selfies(strings)
    ids = tok.encode(strings)
    assert ids.shape[0] == 60 and ids.dtype == torch.int64
    assert tok.decode(ids) == strings
    # any row of alphabet symbols decodes to a valid molecule
    g = torch.Generator().manual_seed(0)
    rnd = torch.randint(1, len(tok), (20, 15), generator=g)
    for s in tok.decode(rnd):
        assert Chem.MolFromSmiles(sf.decoder(s)) is not None
    with pytest.raises(ValueError, match="length"):
        tok.encode(strings[:1], length=2)
