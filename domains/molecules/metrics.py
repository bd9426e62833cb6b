"""The field's molecule metrics, written on RDKit, with one entry point :func:`evaluate`.

* **Validity** = fraction of records RDKit parses and sanitizes (MOSES's ``get_mol``; for 3-D point
  sets, EDM's molecule from bond lengths, sanitized). Unparsable records (None) count as invalid.
  ``largest_fragment`` (default: True for point sets as in EDM, False otherwise as in MOSES) replaces
  each valid molecule by its largest fragment before everything below; ``connected`` reports the
  fraction of valid molecules that are one fragment.
* **Uniqueness** = distinct canonical SMILES / valid; **novelty** = distinct canonical SMILES not in
  the training set / distinct (EDM, MOSES). Canonical SMILES are RDKit's with hydrogens implicit and,
  by default, no stereo (``isomeric=False``: graph and 3-D models produce none; it is the
  conservative choice for novelty).
* **Stability** (EDM, Hoogeboom et al. 2022): bonds from EDM's bond-length table; an atom is stable
  when its summed bond order equals an allowed valence; atom stability pools atoms over all
  molecules; molecule stability is the fraction whose atoms are all stable.
* **MOSES** (Polykovskiy et al., "Molecular Sets (MOSES)", Front. Pharmacol. 2020), on the valid
  molecules (duplicates kept): FCD (Preuer et al. 2018) through ``fcd_torch``'s ChemNet (shipped in its
  wheel); SNN (mean over generated of the max Tanimoto similarity to the reference, Morgan r=2,
  1024 bits); Frag and Scaf (cosine similarity of BRICS-fragment and Bemis-Murcko-scaffold counts,
  scaffolds with >= 2 rings); IntDiv1/2 (1 - (mean of T^p over all ordered pairs incl. self-pairs)^(1/p));
  Filters (MCF + PAINS SMARTS from the molsets wheel, allowed atoms C N S O F Cl Br H, no charge, no
  ring >= 8); W1 distances of logP (Crippen), SA (Ertl & Schuffenhauer 2009, RDKit Contrib sascorer),
  QED (Bickerton et al. 2012) and molecular weight.
"""
from __future__ import annotations

import csv
import io
import importlib.util
import pickle
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from rdkit import Chem, RDLogger
from rdkit.Chem import AllChem, Crippen, Descriptors, rdFingerprintGenerator
from rdkit.Chem.QED import qed as _qed
from rdkit.Chem.Scaffolds import MurckoScaffold

from polydiff.core.metrics import gaussian_frechet_distance   # the one implementation (re-exported here)

from .convert import ALLOWED_VALENCES, QM9_ELEMENTS, _check_elements, infer_bond_orders, points_to_mol

MOSES_ALLOWED_ATOMS = ("C", "N", "S", "O", "F", "Cl", "Br", "H")


# ------------------------------------------------------------------ basics
def sanitized(mol: Optional[Chem.Mol]) -> Optional[Chem.Mol]:
    """A sanitized copy of ``mol``, or None when RDKit rejects it (or it is None / has no atoms)."""
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    m = Chem.Mol(mol)
    try:
        Chem.SanitizeMol(m)
    except Exception:
        return None
    return m


def largest_fragment(mol: Chem.Mol) -> Chem.Mol:
    """The fragment with the most atoms (EDM's choice for validity SMILES)."""
    frags = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
    return max(frags, default=mol, key=lambda m: m.GetNumAtoms())


_largest_fragment = largest_fragment    # evaluate() has a parameter of that name


def canonical(mol: Chem.Mol, isomeric: bool = False) -> str:
    """Canonical SMILES with hydrogens implicit (explicit-H and implicit-H inputs compare equal)."""
    try:
        m = Chem.RemoveHs(mol)
    except Exception:
        m = mol
    return Chem.MolToSmiles(m, isomericSmiles=isomeric)


def uniqueness(smiles: Sequence[str]) -> float:
    """Distinct / total over canonical SMILES of valid molecules (NaN when empty)."""
    return len(set(smiles)) / len(smiles) if len(smiles) else float("nan")


def novelty(smiles: Sequence[str], train: Union[set, frozenset]) -> float:
    """Distinct SMILES not in ``train`` / distinct SMILES (NaN when empty)."""
    uniq = set(smiles)
    return len(uniq - train) / len(uniq) if uniq else float("nan")


# ------------------------------------------------------------------ EDM stability
def atom_stability_mask(positions, types, elements: Sequence[str] = QM9_ELEMENTS) -> np.ndarray:
    """Per-atom stability (bool (N,)) of one point set under EDM's bond-length rule and valences."""
    elements = _check_elements(elements)
    order = infer_bond_orders(positions, types, elements)
    total = order.sum(1)
    typ = np.asarray(types.detach().cpu() if isinstance(types, torch.Tensor) else types).astype(np.int64)
    return np.array([int(total[i]) in ALLOWED_VALENCES.get(elements[t], ()) for i, t in enumerate(typ)], dtype=bool)


def stability(points: Sequence[Tuple[Any, Any]], elements: Sequence[str] = QM9_ELEMENTS) -> Dict[str, float]:
    """EDM's atom and molecule stability of point sets ``[(positions (N,3) in Angstrom, types (N,)), ...]``."""
    if len(points) == 0:
        raise ValueError("stability needs at least one point set")
    n_atoms = n_stable = n_mol_stable = 0
    for pos, typ in points:
        mask = atom_stability_mask(pos, typ, elements)
        n_atoms += mask.size
        n_stable += int(mask.sum())
        n_mol_stable += int(mask.all())
    return {"atom_stability": n_stable / max(n_atoms, 1), "mol_stability": n_mol_stable / len(points),
            "n_atoms": n_atoms, "n_molecules": len(points)}


# ------------------------------------------------------------------ fingerprints and similarity
_MORGAN = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=1024)


def morgan_fingerprints(mols: Sequence[Chem.Mol]) -> np.ndarray:
    """(n, 1024) uint8 Morgan bit vectors, radius 2 (MOSES's fingerprint)."""
    out = np.zeros((len(mols), 1024), dtype=np.uint8)
    for i, m in enumerate(mols):
        out[i] = _MORGAN.GetFingerprintAsNumPy(m)
    return out


def tanimoto_aggregate(ref: np.ndarray, gen: np.ndarray, agg: str = "max", p: int = 1,
                       chunk: int = 4096) -> np.ndarray:
    """For each row of ``gen``, the max (or the p-mean) Tanimoto similarity to the rows of ``ref``;
    two all-zero vectors have similarity 1 (MOSES's convention)."""
    if agg not in ("max", "mean"):
        raise ValueError(f"agg must be 'max' or 'mean', got {agg!r}")
    g_all = torch.from_numpy(np.asarray(gen, dtype=np.float32))
    r_all = torch.from_numpy(np.asarray(ref, dtype=np.float32))
    acc = torch.zeros(g_all.shape[0], dtype=torch.float64)
    for j in range(0, r_all.shape[0], chunk):
        r = r_all[j:j + chunk]
        rs = r.sum(1, keepdim=True)
        for i in range(0, g_all.shape[0], chunk):
            g = g_all[i:i + chunk]
            tp = r @ g.t()
            jac = tp / (rs + g.sum(1)[None, :] - tp)
            jac = torch.nan_to_num(jac, nan=1.0).double()
            if agg == "max":
                acc[i:i + g.shape[0]] = torch.maximum(acc[i:i + g.shape[0]], jac.max(0).values)
            else:
                acc[i:i + g.shape[0]] += (jac ** p).sum(0)
    if agg == "mean":
        acc = (acc / r_all.shape[0]) ** (1.0 / p)
    return acc.numpy()


def snn(gen_fps: np.ndarray, ref_fps: np.ndarray) -> float:
    """Mean over generated molecules of the max Tanimoto similarity to the reference set."""
    return float(tanimoto_aggregate(ref_fps, gen_fps, "max").mean())


def internal_diversity(fps: np.ndarray, p: int = 1) -> float:
    """IntDiv_p = 1 - mean over molecules of (mean_j T(i, j)^p)^(1/p), self-pairs included (MOSES)."""
    if len(fps) == 0:
        return float("nan")
    return float(1.0 - tanimoto_aggregate(fps, fps, "mean", p=p).mean())


def fragments(mols: Sequence[Chem.Mol]) -> Counter:
    """Counts of BRICS fragments (canonical SMILES, with dummy atoms) over the molecules."""
    c: Counter = Counter()
    for m in mols:
        c.update(Chem.MolToSmiles(AllChem.FragmentOnBRICSBonds(m)).split("."))
    return c


def scaffolds(mols: Sequence[Chem.Mol], min_rings: int = 2) -> Counter:
    """Counts of Bemis-Murcko scaffolds with at least ``min_rings`` rings."""
    c: Counter = Counter()
    for m in mols:
        try:
            s = MurckoScaffold.GetScaffoldForMol(m)
        except (ValueError, RuntimeError):
            continue
        smi = Chem.MolToSmiles(s)
        if smi and s.GetRingInfo().NumRings() >= min_rings:
            c[smi] += 1
    return c


def cosine_similarity(a: Counter, b: Counter) -> float:
    """Cosine similarity of two count dictionaries over the union of keys (NaN when one is empty)."""
    if not a or not b:
        return float("nan")
    keys = set(a) | set(b)
    va = np.array([a.get(k, 0) for k in keys], dtype=np.float64)
    vb = np.array([b.get(k, 0) for k in keys], dtype=np.float64)
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))


# ------------------------------------------------------------------ filters
_FILTERS: Optional[List[Chem.Mol]] = None


def _filter_patterns() -> List[Chem.Mol]:
    global _FILTERS
    if _FILTERS is None:
        from .data import moses_file
        pats = []
        with open(moses_file("mcf.csv"), newline="") as f:
            rows = list(csv.reader(f))
        pats += [r[1].strip() for r in rows[1:] if len(r) > 1]
        with open(moses_file("wehi_pains.csv"), newline="") as f:
            pats += [r[0].strip() for r in csv.reader(f) if r]
        mols = [Chem.MolFromSmarts(p) for p in pats]
        if any(m is None for m in mols):
            raise ValueError("a MOSES filter SMARTS failed to parse")
        _FILTERS = mols
    return _FILTERS


def passes_filters(mol: Chem.Mol) -> bool:
    """MOSES's filters: no ring of >= 8 atoms, no formal charge, only C N S O F Cl Br H, no MCF or
    PAINS match (matched on the molecule with explicit H), and a SMILES that RDKit reads back."""
    if mol is None:
        return False
    if any(len(r) >= 8 for r in mol.GetRingInfo().AtomRings()):
        return False
    if any(a.GetFormalCharge() != 0 for a in mol.GetAtoms()):
        return False
    if any(a.GetSymbol() not in MOSES_ALLOWED_ATOMS for a in mol.GetAtoms()):
        return False
    h = Chem.AddHs(mol)
    if any(h.HasSubstructMatch(p) for p in _filter_patterns()):
        return False
    smi = Chem.MolToSmiles(mol, isomericSmiles=False)
    return bool(smi) and Chem.MolFromSmiles(smi) is not None


# ------------------------------------------------------------------ properties
_SASCORER = None


def sa_score(mol: Chem.Mol) -> float:
    """Synthetic accessibility (1 easy .. 10 hard), RDKit Contrib's sascorer."""
    global _SASCORER
    if _SASCORER is None:
        from rdkit.Chem import RDConfig
        path = Path(RDConfig.RDContribDir) / "SA_Score" / "sascorer.py"
        if not path.is_file():
            raise ValueError(f"RDKit's Contrib sascorer is missing ({path})")
        spec = importlib.util.spec_from_file_location("polydiff_rdkit_sascorer", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _SASCORER = mod
    return float(_SASCORER.calculateScore(mol))


PROPERTIES = {"logP": lambda m: float(Crippen.MolLogP(m)), "SA": sa_score, "QED": lambda m: float(_qed(m)),
              "weight": lambda m: float(Descriptors.MolWt(m))}


def properties(mols: Sequence[Chem.Mol]) -> Dict[str, np.ndarray]:
    """logP, SA, QED and molecular weight of each molecule."""
    return {k: np.array([f(m) for m in mols], dtype=np.float64) for k, f in PROPERTIES.items()}


def w1(a: Sequence[float], b: Sequence[float]) -> float:
    """1-D Wasserstein-1 distance between two samples."""
    from scipy.stats import wasserstein_distance
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    return float(wasserstein_distance(a, b))


# ------------------------------------------------------------------ FCD
_CHEMNET = None


def chemnet_activations(smiles: Sequence[str], batch_size: int = 512) -> np.ndarray:
    """(n, 512) ChemNet penultimate activations (fcd_torch's network and weights, from its wheel)."""
    global _CHEMNET
    if _CHEMNET is None:
        import warnings
        from fcd_torch import FCD
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _CHEMNET = FCD(device="cpu", n_jobs=1, batch_size=batch_size)
    if len(smiles) == 0:
        return np.zeros((0, 512))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _CHEMNET.get_predictions(list(smiles))


def fcd_stats(smiles: Sequence[str]) -> Dict[str, np.ndarray]:
    if len(smiles) < 2:
        raise ValueError(f"FCD needs at least 2 valid molecules, got {len(smiles)}")
    act = chemnet_activations(smiles)
    return {"mu": act.mean(0), "sigma": np.cov(act.T)}


def fcd(gen_smiles: Sequence[str], ref: Union[Sequence[str], Dict[str, np.ndarray]]) -> float:
    """Fréchet ChemNet Distance between two SMILES sets (or a set and precomputed mu/sigma)."""
    r = ref if isinstance(ref, dict) else fcd_stats(ref)
    g = fcd_stats(gen_smiles)
    return gaussian_frechet_distance(g["mu"], g["sigma"], r["mu"], r["sigma"])


# ------------------------------------------------------------------ reference statistics
@dataclass
class ReferenceStats:
    """What the MOSES metrics need of a reference set: FCD mu/sigma, fingerprints, fragment and
    scaffold counts and property values."""
    fcd: Dict[str, np.ndarray]
    fps: np.ndarray
    frag: Counter
    scaf: Counter
    props: Dict[str, np.ndarray] = field(default_factory=dict)
    name: str = "reference"

    @classmethod
    def compute(cls, smiles_or_mols: Sequence[Union[str, Chem.Mol]], name: str = "reference") -> "ReferenceStats":
        mols = [_to_mol(x) for x in smiles_or_mols]
        mols = [m for m in mols if m is not None]
        if len(mols) < 2:
            raise ValueError(f"a reference set needs at least 2 valid molecules, got {len(mols)}")
        smi = [Chem.MolToSmiles(m) for m in mols]
        return cls(fcd_stats(smi), morgan_fingerprints(mols), fragments(mols), scaffolds(mols), properties(mols), name)

    def save(self, path: Union[str, Path]) -> None:
        """Write as a pickle-free .npz (atomic)."""
        from .data import _save_npz
        arrays = {"fcd_mu": self.fcd["mu"], "fcd_sigma": self.fcd["sigma"], "fps": np.packbits(self.fps, axis=1),
                  "frag_keys": np.array(list(self.frag), dtype=str), "frag_counts": np.array(list(self.frag.values())),
                  "scaf_keys": np.array(list(self.scaf), dtype=str), "scaf_counts": np.array(list(self.scaf.values())),
                  "name": np.array(self.name)}
        arrays.update({"prop_" + k: v for k, v in self.props.items()})
        _save_npz(Path(path), arrays)

    @classmethod
    def load(cls, path: Union[str, Path]) -> Optional["ReferenceStats"]:
        from .data import _load_npz
        a = _load_npz(Path(path))
        if a is None:
            return None
        return cls({"mu": a["fcd_mu"], "sigma": a["fcd_sigma"]}, np.unpackbits(a["fps"], axis=1)[:, :1024],
                   Counter(dict(zip(a["frag_keys"].tolist(), a["frag_counts"].tolist()))),
                   Counter(dict(zip(a["scaf_keys"].tolist(), a["scaf_counts"].tolist()))),
                   {k[5:]: a[k] for k in a if k.startswith("prop_")}, str(a["name"]))


class _StatsUnpickler(pickle.Unpickler):
    """Reads molsets' precomputed ``*_stats.npz`` (a pickled dict of arrays, Counters and lists) while
    allowing only the few classes those files contain: nothing else can be constructed."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("collections", "Counter")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from MOSES statistics")
        return super().find_class(module, name)


def moses_reference(split: str = "test") -> ReferenceStats:
    """MOSES's own precomputed statistics of its full ``test`` (176 074) or ``test_scaffolds`` set,
    shipped in the molsets wheel: the reference behind the published FCD/SNN/Frag/Scaf/W1 numbers."""
    from .data import moses_file
    if split not in ("test", "test_scaffolds"):
        raise ValueError(f"unknown MOSES reference {split!r}; valid: test, test_scaffolds")
    with zipfile.ZipFile(moses_file(f"{split}_stats.npz")) as z:
        raw = z.read("stats.npy")
    f = io.BytesIO(raw)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        np.lib.format.read_array_header_1_0(f)
    else:
        np.lib.format.read_array_header_2_0(f)
    obj = _StatsUnpickler(f).load()
    s = obj.item() if isinstance(obj, np.ndarray) else obj
    return ReferenceStats({"mu": np.asarray(s["FCD"]["mu"]), "sigma": np.asarray(s["FCD"]["sigma"])},
                          np.asarray(s["SNN"]["fps"], dtype=np.uint8), Counter(s["Frag"]["frag"]),
                          Counter(s["Scaf"]["scaf"]),
                          {k: np.asarray(s[k]["values"], dtype=np.float64) for k in PROPERTIES}, f"MOSES {split}")


def reference_stats(smiles: Sequence[str], name: str, cache_dir: Optional[Union[str, Path]] = None) -> ReferenceStats:
    """:meth:`ReferenceStats.compute` of a SMILES list, cached under ``cache_dir`` by content hash."""
    from .data import _cache_path, file_digest
    path = _cache_path(cache_dir, f"refstats_{file_digest(list(smiles))}.npz")
    st = ReferenceStats.load(path)
    if st is None:
        st = ReferenceStats.compute(smiles, name)
        st.save(path)
    return st


# ------------------------------------------------------------------ evaluate
def _to_mol(x: Any) -> Optional[Chem.Mol]:
    """Sanitized molecule of a SMILES string or RDKit molecule; None when invalid."""
    if x is None:
        return None
    if isinstance(x, str):
        if not x.strip():
            return None
        RDLogger.DisableLog("rdApp.*")
        try:
            return Chem.MolFromSmiles(x.strip())
        finally:
            RDLogger.EnableLog("rdApp.*")
    if isinstance(x, Chem.Mol):
        RDLogger.DisableLog("rdApp.*")
        try:
            return sanitized(x)
        finally:
            RDLogger.EnableLog("rdApp.*")
    raise ValueError(f"cannot evaluate an item of type {type(x).__name__}; give SMILES, RDKit molecules or "
                     "(positions, types) point sets")


def _is_points(x: Any) -> bool:
    return isinstance(x, (tuple, list)) and len(x) == 2 and not isinstance(x[0], str)


def _has_stereo(smiles: str) -> bool:
    return "@" in smiles or "/" in smiles or "\\" in smiles


def _train_set(train: Any, isomeric: bool, cache_dir) -> Optional[frozenset]:
    from . import data
    if train is None:
        return None
    if isinstance(train, str):
        if train == "qm9":
            return frozenset(data.qm9_canonical_smiles("train", cache_dir, isomeric=isomeric))
        if train == "moses":
            # MOSES's own protocol: the shipped train strings as they are (data.moses_canonical_train
            # re-canonicalizes them with today's RDKit; ~0.06% differ, at a one-off cost of minutes)
            s = data.load_moses("train")
            if isomeric:
                return frozenset(s)
            return frozenset(x if not _has_stereo(x) else canonical(Chem.MolFromSmiles(x), False) for x in s)
        raise ValueError(f"unknown training set {train!r}; valid: 'qm9', 'moses', a list of SMILES or a set")
    if isinstance(train, (set, frozenset)):
        return frozenset(train)
    out = set()
    for x in train:
        m = _to_mol(x)
        if m is not None:
            out.add(canonical(m, isomeric))
    return frozenset(out)


def _reference(reference: Any, cache_dir) -> List[Tuple[str, ReferenceStats]]:
    from . import data
    if reference is None:
        return []
    if isinstance(reference, ReferenceStats):
        return [("", reference)]
    if isinstance(reference, str):
        if reference == "moses":
            return [("/Test", moses_reference("test")), ("/TestSF", moses_reference("test_scaffolds"))]
        if reference == "qm9":
            return [("", reference_stats(data.qm9_canonical_smiles("test", cache_dir, isomeric=True),
                                         "QM9 test", cache_dir))]
        raise ValueError(f"unknown reference {reference!r}; valid: 'moses', 'qm9', a list of SMILES, ReferenceStats")
    items = list(reference)
    smi = [x if isinstance(x, str) else Chem.MolToSmiles(x) for x in items if x is not None]
    return [("", reference_stats(smi, "reference", cache_dir))]


def evaluate(smiles_or_mols: Sequence[Any], reference: Any = None, train: Any = None, *,
             largest_fragment: Optional[bool] = None, isomeric: bool = False,
             elements: Sequence[str] = QM9_ELEMENTS, fcd_metric: bool = True, moses_metrics: bool = True,
             cache_dir: Optional[Union[str, Path]] = None, k: Sequence[int] = (1000, 10000)) -> Dict[str, float]:
    """All metrics of a set of generated molecules, as a flat dict.

    ``smiles_or_mols``: SMILES strings, RDKit molecules, None (an unreadable record: invalid), or 3-D
    point sets ``(positions (N,3) Angstrom, types (N,) into elements)``; point sets (and molecules
    with 3-D conformers) also get EDM's ``atom_stability``/``mol_stability``.
    ``reference``: None, ``"moses"`` (MOSES's shipped statistics of test and test_scaffolds: keys get
    ``/Test`` and ``/TestSF``), ``"qm9"`` (QM9's EDM test split), a list of SMILES, or
    :class:`ReferenceStats`; it enables FCD, SNN, Frag, Scaf and the W1 property distances.
    ``train``: None, ``"qm9"``, ``"moses"``, a list of SMILES/molecules (canonicalized here) or a set
    of canonical SMILES (used as is); it enables ``novelty``. Counts (``n``, ``n_valid``,
    ``n_unique``) are returned with the fractions."""
    items = list(smiles_or_mols)
    if not items:
        raise ValueError("nothing to evaluate: the list of molecules is empty")
    points = [x for x in items if _is_points(x)]
    if points and len(points) != len(items):
        raise ValueError("mix of point sets and other items; evaluate them separately")
    is_points = bool(points)
    lf = is_points if largest_fragment is None else bool(largest_fragment)
    out: Dict[str, float] = {"n": len(items)}

    # molecules, and stability where coordinates exist
    if is_points:
        st = stability(points, elements)
        out["atom_stability"], out["mol_stability"] = st["atom_stability"], st["mol_stability"]
        RDLogger.DisableLog("rdApp.*")
        mols = [sanitized(points_to_mol(p, t, elements)) for p, t in points]
        RDLogger.EnableLog("rdApp.*")
    else:
        mols = [_to_mol(x) for x in items]
        three_d = [x for x in items if isinstance(x, Chem.Mol) and x.GetNumConformers() and x.GetConformer().Is3D()]
        if three_d and len(three_d) == len(items):
            from .convert import mol_to_points
            els = tuple(sorted({a.GetSymbol() for m in three_d for a in m.GetAtoms()}))
            st = stability([mol_to_points(m, els) for m in three_d], els)
            out["atom_stability"], out["mol_stability"] = st["atom_stability"], st["mol_stability"]
    valid = [m for m in mols if m is not None]
    out["n_valid"] = len(valid)
    out["validity"] = len(valid) / len(items)
    if valid:
        out["connected"] = float(np.mean([len(Chem.GetMolFrags(m)) == 1 for m in valid]))
    if lf:
        valid = [_largest_fragment(m) for m in valid]
    can = [canonical(m, isomeric) for m in valid]
    out["n_unique"] = len(set(can))
    out["uniqueness"] = uniqueness(can)
    for kk in k:
        if len(can) >= kk:
            out[f"unique@{kk}"] = len(set(can[:kk])) / kk
    tr = _train_set(train, isomeric, cache_dir)
    if tr is not None:
        out["novelty"] = novelty(can, tr)
    if not moses_metrics or not valid:
        return out

    fps = morgan_fingerprints(valid)
    out["IntDiv"] = internal_diversity(fps, 1)
    out["IntDiv2"] = internal_diversity(fps, 2)
    out["Filters"] = float(np.mean([passes_filters(m) for m in valid]))
    refs = _reference(reference, cache_dir)
    if refs:
        gen_smiles = [Chem.MolToSmiles(m) for m in valid]
        gen_fcd = fcd_stats(gen_smiles) if fcd_metric and len(valid) >= 2 else None
        gen_frag, gen_scaf, gen_props = fragments(valid), scaffolds(valid), properties(valid)
        for suffix, ref in refs:
            if gen_fcd is not None:
                out["FCD" + suffix] = gaussian_frechet_distance(gen_fcd["mu"], gen_fcd["sigma"], ref.fcd["mu"], ref.fcd["sigma"])
            out["SNN" + suffix] = snn(fps, ref.fps)
            out["Frag" + suffix] = cosine_similarity(ref.frag, gen_frag)
            out["Scaf" + suffix] = cosine_similarity(ref.scaf, gen_scaf)
        ref0 = refs[0][1]
        for name, vals in gen_props.items():
            if name in ref0.props:
                out[name] = w1(vals, ref0.props[name])
    return out


__all__ = ["sanitized", "largest_fragment", "canonical", "uniqueness", "novelty", "atom_stability_mask", "stability",
           "morgan_fingerprints", "tanimoto_aggregate", "snn", "internal_diversity", "fragments", "scaffolds",
           "cosine_similarity", "passes_filters", "sa_score", "properties", "w1", "chemnet_activations",
           "gaussian_frechet_distance", "fcd", "fcd_stats", "ReferenceStats", "moses_reference", "reference_stats", "evaluate"]
