"""Molecule metrics on hand-checkable sets: validity/uniqueness/novelty, EDM stability, MOSES metrics."""
import json
import pickle
from collections import Counter

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")
from rdkit import Chem  # noqa: E402

from polydiff.domains.molecules import data, metrics  # noqa: E402


def test_validity_uniqueness_novelty_counts():
    gen = ["CCO", "OCC", "c1ccccc1", "C1=CC=CC=C1", "not_smiles", None, "", "CC(=O)O"]
    r = metrics.evaluate(gen, train=["C(C)O", "CCN"], moses_metrics=False)
    assert r["n"] == 8 and r["n_valid"] == 5 and r["validity"] == 5 / 8
    assert r["n_unique"] == 3 and r["uniqueness"] == 3 / 5          # ethanol x2, benzene x2, acetic acid
    assert r["novelty"] == 2 / 3                                    # ethanol is in train
    # a set of canonical SMILES is used as is
    assert metrics.evaluate(gen, train={"CCO"}, moses_metrics=False)["novelty"] == 2 / 3
    # largest fragment: a salt counts as its largest part
    r2 = metrics.evaluate(["CCO.Cl", "CCO"], largest_fragment=True, moses_metrics=False)
    assert r2["uniqueness"] == 0.5 and r2["connected"] == 0.5
    r3 = metrics.evaluate(["CCO.Cl", "CCO"], moses_metrics=False)
    assert r3["uniqueness"] == 1.0
    with pytest.raises(ValueError, match="empty"):
        metrics.evaluate([])
    with pytest.raises(ValueError, match="valid: 'qm9', 'moses'"):
        metrics.evaluate(["CCO"], train="zinc")


def test_unique_at_k():
    gen = ["C" * (i % 7 + 1) for i in range(1000)]
    r = metrics.evaluate(gen, moses_metrics=False)
    assert r["unique@1000"] == 7 / 1000 and "unique@10000" not in r


def test_tanimoto_and_internal_diversity_exact():
    a = np.array([[1, 1, 0, 0]], dtype=np.uint8)
    b = np.array([[1, 0, 1, 0]], dtype=np.uint8)
    assert metrics.tanimoto_aggregate(a, b)[0] == pytest.approx(1 / 3)
    both = np.concatenate([a, b])
    # IntDiv over ordered pairs incl. self: mean T = (1 + 1/3 + 1/3 + 1) / 4
    assert metrics.internal_diversity(both) == pytest.approx(1 - 2 / 3)
    assert metrics.internal_diversity(both, p=2) == pytest.approx(1 - np.sqrt((1 + 1 / 9) / 2))
    mols = [Chem.MolFromSmiles("c1ccccc1CCN")] * 5
    fps = metrics.morgan_fingerprints(mols)
    assert metrics.internal_diversity(fps) == pytest.approx(0.0)
    assert metrics.internal_diversity(fps, p=2) == pytest.approx(0.0)


@pytest.fixture(scope="module")
def moses_mols():
    return data.load_moses("test", limit=60)


def test_self_similarity_is_perfect(moses_mols):
    mols = [Chem.MolFromSmiles(s) for s in moses_mols]
    fps = metrics.morgan_fingerprints(mols)
    assert metrics.snn(fps, fps) == pytest.approx(1.0)
    assert metrics.cosine_similarity(metrics.fragments(mols), metrics.fragments(mols)) == pytest.approx(1.0)
    assert metrics.cosine_similarity(Counter(a=1), Counter(b=2)) == 0.0
    assert metrics.cosine_similarity(Counter(a=1, b=1), Counter(a=2)) == pytest.approx(1 / np.sqrt(2))
    assert metrics.fragments([Chem.MolFromSmiles("CCOC(=O)c1ccccc1")])  # BRICS splits the ester
    assert metrics.scaffolds([Chem.MolFromSmiles("c1ccccc1")]) == Counter()          # 1 ring: dropped
    assert metrics.scaffolds([Chem.MolFromSmiles("c1ccc2ccccc2c1C")]) == Counter({"c1ccc2ccccc2c1": 1})


def test_fcd_of_a_set_with_itself_is_zero_and_other_set_is_not(moses_mols):
    st = metrics.fcd_stats(moses_mols[:30])
    assert metrics.gaussian_frechet_distance(st["mu"], st["sigma"], st["mu"], st["sigma"]) == pytest.approx(0.0, abs=1e-3)
    far = ["C" * n for n in range(1, 31)]
    assert metrics.fcd(far, st) > 10.0
    # Frechet distance of 1-D Gaussians: (m1-m2)^2 + (s1-s2)^2
    assert metrics.gaussian_frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([0.0]), np.array([[1.0]])) == \
        pytest.approx(1.0 + 1.0)


def test_filters_and_properties():
    assert metrics.passes_filters(Chem.MolFromSmiles("c1ccccc1CC(=O)N"))
    assert not metrics.passes_filters(Chem.MolFromSmiles("CC[N+](C)(C)C"))         # charged
    assert not metrics.passes_filters(Chem.MolFromSmiles("C1CCCCCCC1"))             # 8-ring
    assert not metrics.passes_filters(Chem.MolFromSmiles("CCCCP"))                 # P not allowed
    assert not metrics.passes_filters(Chem.MolFromSmiles("CCCCl"))                 # MCF4: CH2 next to Cl
    p = metrics.properties([Chem.MolFromSmiles("CCO")])
    assert p["weight"][0] == pytest.approx(46.069, abs=1e-3)
    assert 1.0 <= p["SA"][0] <= 10.0 and 0.0 < p["QED"][0] < 1.0
    assert metrics.w1([0.0, 1.0], [1.0, 2.0]) == pytest.approx(1.0)


def _methane(stretch=1.0):
    d = 1.09 * stretch / np.sqrt(3)
    pos = np.array([[0, 0, 0], [d, d, d], [-d, -d, d], [-d, d, -d], [d, -d, -d]], dtype=float)
    return pos, np.array([1, 0, 0, 0, 0])


def test_edm_stability_hand_cases():
    pos, typ = _methane()
    assert metrics.atom_stability_mask(pos, typ).all()
    far = pos.copy()
    far[1] *= 1.2                                     # one C-H at 1.31 A > 1.19 A: no bond
    m = metrics.atom_stability_mask(far, typ)
    assert m.tolist() == [False, False, True, True, True]
    r = metrics.stability([(pos, typ), (far, typ)])
    assert r["atom_stability"] == 8 / 10 and r["mol_stability"] == 0.5


def test_stability_of_dft_qm9_molecules():
    ds = data._dataset_from_arrays(data._read_qm9pack(nrows=40))
    pts = [ds.molecule(i) for i in range(len(ds))]
    r = metrics.evaluate(pts, moses_metrics=False)
    assert r["atom_stability"] > 0.98 and r["mol_stability"] > 0.9 and r["validity"] > 0.9
    stretched = [(p * 1.25, t) for p, t in pts]
    r2 = metrics.evaluate(stretched, moses_metrics=False)
    assert r2["mol_stability"] < 0.1 and r2["atom_stability"] < r["atom_stability"]
    # the same metric through RDKit molecules with 3-D conformers
    from polydiff.domains.molecules import convert
    mols = [convert.points_to_mol(p, t) for p, t in pts[:20]]
    assert metrics.evaluate(mols, moses_metrics=False)["mol_stability"] == \
        metrics.stability(pts[:20])["mol_stability"]
    with pytest.raises(ValueError, match="mix of point sets"):
        metrics.evaluate([pts[0], "CCO"])


def test_moses_shipped_statistics_and_safe_unpickler(moses_mols):
    ref = metrics.moses_reference("test")
    assert ref.fps.shape == (176074, 1024) and ref.fcd["mu"].shape == (512,)
    assert len(ref.props["SA"]) == 176074
    r = metrics.evaluate(moses_mols, reference=ref, fcd_metric=False)
    assert r["SNN"] == pytest.approx(1.0)          # the molecules are in the test set
    assert 0.0 < r["weight"] < 30.0 and r["Filters"] > 0.9
    import io
    evil = b"cos\nsystem\n(S'echo hacked'\ntR."                  # pickle calling os.system
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        metrics._StatsUnpickler(io.BytesIO(evil)).load()


def test_evaluate_with_reference_and_cli(tmp_path, moses_mols):
    f = tmp_path / "gen.smi"
    f.write_text("\n".join(moses_mols[:40] + ["C1CC", "bad"]) + "\n")
    ref = tmp_path / "ref.smi"
    ref.write_text("\n".join(moses_mols[20:]) + "\n")
    out = tmp_path / "m.json"
    from polydiff.tasks import cli
    rc = cli.main(["evaluate", "molecules", str(f), "--train", str(ref), "--reference", str(ref),
                   "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["n"] == 42 and res["n_valid"] == 40 and res["n_unparsable"] == 2
    assert res["novelty"] == pytest.approx(0.5)    # 20 of the 40 are in the training file
    for key in ("FCD", "SNN", "Frag", "Scaf", "IntDiv", "IntDiv2", "Filters", "logP", "SA", "QED", "weight"):
        assert key in res
    assert list((tmp_path / "cache").glob("refstats_*.npz"))        # reference statistics cached
    empty = tmp_path / "empty.smi"
    empty.write_text("")
    assert cli.main(["evaluate", "molecules", str(empty)]) == 2
