"""Molecule data: QM9 (qm9pack) parsing and EDM's split, MOSES files, user SMILES/SDF readers, cache."""
import gzip

import numpy as np
import pytest

pytest.importorskip("rdkit")
from rdkit import Chem  # noqa: E402
from rdkit.Chem import AllChem  # noqa: E402

from polydiff.domains.molecules import data  # noqa: E402


def test_edm_split_matches_the_recipe():
    sizes = {s: len(data.qm9_split_rows(s)) for s in data.QM9_SPLITS}
    assert sizes == {"train": 100000, "valid": 17748, "test": 13083, "all": 130831,
                     "train_first_half": 50000, "train_second_half": 50000}
    tr, va, te = (set(data.qm9_split_rows(s).tolist()) for s in ("train", "valid", "test"))
    assert not (tr & va or tr & te or va & te) and len(tr | va | te) == 130831
    # independent re-derivation with the global-seed calls EDM's code makes
    np.random.seed(0)
    perm = np.random.permutation(130831)
    assert np.array_equal(data.qm9_split_rows("test"), np.sort(perm[117748:]))
    np.random.seed(42)
    half = np.random.permutation(100000)
    train_sorted = np.sort(perm[:100000])
    assert np.array_equal(data.qm9_split_rows("train_second_half"), train_sorted[half[50000:]])
    h1, h2 = (set(data.qm9_split_rows(s).tolist()) for s in ("train_first_half", "train_second_half"))
    assert h1 | h2 == tr and not h1 & h2
    with pytest.raises(ValueError, match="valid: train, valid, test"):
        data.qm9_split_rows("training")


@pytest.fixture(scope="module")
def small():
    return data._dataset_from_arrays(data._read_qm9pack(nrows=40))


def test_qm9pack_parse(small):
    assert len(small) == 120
    assert (np.diff(small.index) > 0).all()                         # sorted by GDB index
    assert small.index[0] == 1 and small.smiles[0] == "C"
    pos, typ = small.molecule(0)                                    # methane: C + 4 H, C-H 1.09 A
    assert typ.tolist() == [1, 0, 0, 0, 0]
    d = (pos[1:] - pos[0]).norm(dim=1)
    assert np.allclose(d.numpy(), 1.09, atol=0.01)
    assert int(small.offsets[-1]) == small.positions.shape[0] == small.types.shape[0]
    assert set(small.properties) == set(data.QM9_PROPERTIES.values())
    assert small.properties["mu"][0] == 0.0 and abs(small.properties["alpha"][0] - 13.21) < 1e-9
    # elements of each molecule agree with its SMILES' heavy atoms
    for i in range(len(small)):
        m = Chem.AddHs(Chem.MolFromSmiles(small.smiles[i]))
        _, t = small.molecule(i)
        assert sorted(t.tolist()) == sorted(data.QM9_ELEMENTS.index(a.GetSymbol()) for a in m.GetAtoms())


def test_subset_and_remove_hydrogens(small):
    sub = small.subset([5, 2])
    assert sub.index.tolist() == [small.index[5], small.index[2]]
    assert np.array_equal(sub.molecule(0)[0].numpy(), small.molecule(5)[0].numpy())
    heavy = small.without_hydrogens()
    assert heavy.elements == ("C", "N", "O", "F")
    for i in (0, 10, 50):
        p, t = heavy.molecule(i)
        _, t_full = small.molecule(i)
        assert len(t) == int((t_full != 0).sum())
        assert np.allclose(p.mean(0).numpy(), 0.0, atol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        small.molecule(1000)


def test_qm9_cache_is_used_and_count_checked(tmp_path, monkeypatch):
    arrays = data._read_qm9pack(nrows=5)
    monkeypatch.setattr(data, "_read_qm9pack", lambda nrows=None: arrays)
    with pytest.raises(ValueError, match="expected 130831"):
        data.load_qm9_all(tmp_path)
    # a valid cache file is read instead of parsing
    from importlib import metadata
    path = tmp_path / f"qm9_v{data._CACHE_VERSION}_qm9pack-{metadata.version('qm9pack')}.npz"
    data._save_npz(path, arrays)
    monkeypatch.setattr(data, "_read_qm9pack", lambda nrows=None: pytest.fail("cache not used"))
    assert len(data.load_qm9_all(tmp_path)) == 15
    assert not list(tmp_path.glob("*.tmp"))                        # atomic write left no temp file


def test_moses_files():
    test = data.load_moses("test", limit=50)
    assert len(test) == 50 and all(Chem.MolFromSmiles(s) is not None for s in test)
    with gzip.open(data.moses_file("test_scaffolds"), "rt") as f:
        assert f.readline().strip().split(",")[0] == "SMILES"
    assert data.moses_file("mcf.csv").is_file()
    with pytest.raises(ValueError, match="valid: train, test, test_scaffolds"):
        data.load_moses("valid")


def test_read_smiles_counts_skipped(tmp_path):
    p = tmp_path / "x.smi"
    p.write_text("# generated\nSMILES\nCCO ethanol\nc1ccccc1\nC1CC\n\nnot_smiles x\nCC(=O)O\n")
    smiles, mols, rep = data.read_smiles(p)
    assert smiles == ["CCO", "c1ccccc1", "C1CC", "not_smiles", "CC(=O)O"]
    assert [m is None for m in mols] == [False, False, True, True, False]
    assert rep.n_records == 5 and rep.n_read == 3 and rep.n_skipped == 2
    assert [k for k, _, _ in rep.skipped] == [3, 4] and "2 skipped" in rep.summary()
    c = tmp_path / "x.csv"
    c.write_text("id,smiles\n1,CCN\n2,??\n3,O=C=O\n")
    smiles, mols, rep = data.read_smiles(c)
    assert smiles == ["CCN", "??", "O=C=O"] and rep.n_skipped == 1
    c2 = tmp_path / "y.csv"
    c2.write_text("CCN,a\nCCO,b\n")                               # no header
    assert data.read_smiles(c2)[0] == ["CCN", "CCO"]
    q = tmp_path / "z.smi"
    q.write_text("CCO\nCC[Si](C)C\n")
    with pytest.raises(ValueError, match="record 2 has element\\(s\\) \\['Si'\\]"):
        data.read_smiles(q, allowed_elements=["C", "N", "O"])


def test_read_errors(tmp_path):
    e = tmp_path / "e.smi"
    e.write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="no SMILES records"):
        data.read_smiles(e)
    bad = tmp_path / "b.smi"
    bad.write_text("xx\nyy\n")
    with pytest.raises(ValueError, match="no parsable molecule"):
        data.read_smiles(bad)
    with pytest.raises(ValueError, match="valid: .smi, .txt, .csv, .sdf"):
        data.read_molecules(tmp_path / "a.pdb")
    es = tmp_path / "e.sdf"
    es.write_text("")
    with pytest.raises(ValueError, match="empty"):
        data.read_sdf(es)
    with pytest.raises(ValueError, match="does not exist"):
        data.read_smiles(tmp_path / "missing.smi")


def test_read_sdf_with_a_broken_record(tmp_path):
    p = tmp_path / "m.sdf"
    w = Chem.SDWriter(str(p))
    for s in ("CCO", "c1ccccc1"):
        m = Chem.AddHs(Chem.MolFromSmiles(s))
        AllChem.EmbedMolecule(m, randomSeed=0)
        w.write(m)
    w.close()
    good = p.read_text()
    # a record whose carbon has 5 bonds: RDKit rejects it at sanitization
    rw = Chem.RWMol(Chem.MolFromSmiles("C"))
    for _ in range(5):
        i = rw.AddAtom(Chem.Atom("F"))
        rw.AddBond(0, i, Chem.BondType.SINGLE)
    broken = Chem.MolToMolBlock(rw.GetMol(), kekulize=False) + "$$$$\n"
    p.write_text(good + broken)
    mols, rep = data.read_sdf(p)
    assert len(mols) == 3 and mols[2] is None and rep.n_skipped == 1 and rep.n_read == 2
    assert mols[0].GetNumAtoms() == 9 and mols[0].GetConformer().Is3D()        # H kept, coordinates kept
    ms, texts, _ = data.read_molecules(p)
    assert texts == [None, None, None] and ms[1].GetNumAtoms() == 12
