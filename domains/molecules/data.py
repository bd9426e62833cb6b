"""Molecule data sets, offline: QM9 (3-D, with properties), MOSES (SMILES), and users' files.

**QM9** (Ramakrishnan et al., "Quantum chemistry structures and properties of 134 kilo molecules",
Sci. Data 2014) comes from the ``qm9pack`` wheel (read as data files; its own loader needs
``pkg_resources``). The wheel holds 130 831 molecules: the 133 885 GDB-9 molecules minus the 3 054
"uncharacterized" ones (its ``Index`` column misses exactly 3 054 of 1..133 885), i.e. the set EDM keeps.
We verified the count; the identity of the 3 054 with figshare's ``uncharacterized.txt`` could not be
checked offline. EDM's split (Hoogeboom et al. 2022, from Cormorant's ``gen_splits_gdb9``) is
reproduced: molecules sorted by GDB index, ``np.random.seed(0); permutation(130831)``, the first
100 000 positions train, the next 17 748 valid, the last 13 083 (``int(0.1 * 130831)``) test.
EDM's conditional-generation halves of train (``qm9_first_half`` / ``qm9_second_half``) are
``np.random.seed(42); permutation(100000)``, first / second 50 000. Coordinates are the DFT
(B3LYP/6-31G(2df,p)) geometries in Angstrom; properties keep QM9's units (energies in Hartree,
``mu`` Debye, ``alpha`` Bohr^3, ``r2`` Bohr^2, ``Cv`` cal/(mol K)); ``HARTREE_TO_MEV`` converts.

**MOSES** (Polykovskiy et al., "Molecular Sets (MOSES)", Front. Pharmacol. 2020) train (1 584 663),
test (176 074) and test_scaffolds (176 225) SMILES come from the ``molsets`` wheel's data files,
located with ``importlib.metadata`` (the ``moses`` code itself does not import on today's stack).

**User files**: ``.smi``/``.txt`` (one SMILES per line, optional name after whitespace, ``#`` comments),
``.csv`` (a ``smiles``/``SMILES`` column, or the first column) and ``.sdf``. Records RDKit cannot read
are skipped *and counted* in the returned :class:`ReadReport`; empty files raise ValueError.

Parsed data sets are cached (atomic writes, no pickle) under ``cache_dir``, by default
``$POLYDIFF_CACHE/molecules`` or ``~/.cache/polydiff/molecules``.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from polydiff.core.training.files import atomic_write_bytes

from .convert import QM9_ELEMENTS

QM9_TOTAL = 133_885
QM9_EXCLUDED = 3_054
QM9_N = QM9_TOTAL - QM9_EXCLUDED          # 130 831
QM9_SPLIT_SIZES = {"train": 100_000, "valid": QM9_N - 100_000 - int(0.1 * QM9_N), "test": int(0.1 * QM9_N)}
QM9_SPLITS = ("train", "valid", "test", "all", "train_first_half", "train_second_half")
HARTREE_TO_MEV = 27211.4                   # the factor EDM uses for HOMO/LUMO/gap MAE in meV
# qm9pack column -> our (EDM's) property name
QM9_PROPERTIES = {"Dipole_debye": "mu", "Polarizability_bohr3": "alpha", "HOMO_au": "homo", "LUMO_au": "lumo",
                  "HOMO_LUMO_gap_au": "gap", "R2_bohr2": "r2", "ZPVE_au": "zpve", "InternalEnergy_0K_au": "U0",
                  "InternalEnergy_298K_au": "U", "Enthalphy_298K_au": "H", "GibbsFreeEnergy_298K_au": "G",
                  "Heatcapacity_Cv_cal_mol_K": "Cv"}
MOSES_SPLITS = ("train", "test", "test_scaffolds")
_CACHE_VERSION = 1


# ------------------------------------------------------------------ cache helpers
def default_cache_dir() -> Path:
    """``$POLYDIFF_CACHE/molecules``, else ``$XDG_CACHE_HOME/polydiff/molecules``, else ``~/.cache/...``."""
    root = os.environ.get("POLYDIFF_CACHE")
    if root:
        return Path(root) / "molecules"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg if xdg else Path.home() / ".cache") / "polydiff" / "molecules"


def _cache_path(cache_dir: Optional[Union[str, Path]], name: str) -> Path:
    d = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    return d / name


def _save_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _load_npz(path: Path) -> Optional[Dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError):   # missing or corrupt: rebuild
        return None


# ------------------------------------------------------------------ package data files
def _package_file(dist: str, rel: str) -> Path:
    """A data file shipped by an installed distribution, found through importlib.metadata."""
    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        raise ValueError(f"the {dist!r} package is not installed (pip install {dist}"
                         f"{' --no-deps' if dist == 'molsets' else ''})") from None
    for f in d.files or ():
        if str(f).replace("\\", "/") == rel:
            p = Path(d.locate_file(f))
            if p.is_file():
                return p
    raise ValueError(f"{dist} {d.version} does not ship {rel!r}")


def qm9pack_files() -> List[Path]:
    return [_package_file("qm9pack", f"qm9pack/data/qm9_part{i}.csv") for i in (1, 2, 3)]


def moses_file(name: str) -> Path:
    """A file of the molsets wheel: a split (``train``, ``test``, ``test_scaffolds``), ``mcf.csv``,
    ``wehi_pains.csv`` or ``<split>_stats.npz``."""
    if name in MOSES_SPLITS:
        return _package_file("molsets", f"moses/dataset/data/{name}.csv.gz")
    if name in ("mcf.csv", "wehi_pains.csv"):
        return _package_file("molsets", f"moses/metrics/{name}")
    if name in ("test_stats.npz", "test_scaffolds_stats.npz"):
        return _package_file("molsets", f"moses/dataset/data/{name}")
    raise ValueError(f"unknown MOSES file {name!r}; valid: {', '.join(MOSES_SPLITS)}, mcf.csv, wehi_pains.csv, "
                     "test_stats.npz, test_scaffolds_stats.npz")


# ------------------------------------------------------------------ QM9
@dataclass
class QM9Dataset:
    """QM9 molecules as flat arrays: molecule ``i`` has atoms ``offsets[i]:offsets[i+1]``.

    ``types`` index :data:`QM9_ELEMENTS` (H, C, N, O, F); ``positions`` in Angstrom; ``index`` the
    1-based GDB-9 index; ``smiles`` QM9's own (GDB) SMILES, not RDKit-canonical; ``properties`` maps
    EDM's names (mu, alpha, homo, lumo, gap, r2, zpve, U0, U, H, G, Cv) to (n,) float64 arrays."""
    positions: np.ndarray
    types: np.ndarray
    offsets: np.ndarray
    index: np.ndarray
    smiles: List[str]
    properties: Dict[str, np.ndarray] = field(default_factory=dict)
    elements: Tuple[str, ...] = QM9_ELEMENTS

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def num_atoms(self) -> np.ndarray:
        return np.diff(self.offsets)

    def molecule(self, i: int) -> Tuple[Tensor, Tensor]:
        """Positions (N, 3) float32 and atom types (N,) int64 of molecule ``i``."""
        if not -len(self) <= i < len(self):
            raise ValueError(f"molecule index {i} out of range for {len(self)} molecules")
        i = i % len(self)
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return torch.from_numpy(self.positions[a:b].astype(np.float32)), torch.from_numpy(self.types[a:b].astype(np.int64))

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        for i in range(len(self)):
            yield self.molecule(i)

    def subset(self, rows: Union[Sequence[int], np.ndarray]) -> "QM9Dataset":
        """The molecules at ``rows`` (positions in this data set), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise ValueError(f"row ids must lie in [0, {len(self)})")
        rows = rows % max(len(self), 1)
        counts = np.diff(self.offsets)[rows]
        starts = self.offsets[rows]
        atom_idx = (np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
                    + np.arange(int(counts.sum()))) if rows.size else np.zeros(0, dtype=np.int64)
        return QM9Dataset(self.positions[atom_idx], self.types[atom_idx],
                          np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), self.index[rows],
                          [self.smiles[r] for r in rows], {k: v[rows] for k, v in self.properties.items()},
                          self.elements)

    def without_hydrogens(self) -> "QM9Dataset":
        """The heavy-atom point sets (H removed, positions re-centred per molecule, as EDM's remove_h)."""
        h = self.elements.index("H")
        keep = self.types != h
        mol_of_atom = np.repeat(np.arange(len(self)), np.diff(self.offsets))
        counts = np.bincount(mol_of_atom[keep], minlength=len(self))
        pos = self.positions[keep].copy()
        mol = mol_of_atom[keep]
        centre = np.zeros((len(self), 3))
        np.add.at(centre, mol, pos)
        pos -= (centre / np.maximum(counts, 1)[:, None])[mol]
        # heavy-atom types re-indexed into elements without H
        elements = tuple(e for e in self.elements if e != "H")
        remap = np.array([elements.index(e) if e != "H" else -1 for e in self.elements])
        return QM9Dataset(pos, remap[self.types[keep]], np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                          self.index.copy(), list(self.smiles), dict(self.properties), elements)


def _parse_qm9_frames(frames) -> Dict[str, np.ndarray]:
    import pandas as pd
    df = pd.concat(frames, ignore_index=True).sort_values("Index", kind="stable").reset_index(drop=True)
    n_atoms = df["N_atoms"].to_numpy(np.int64)
    xyz = ",".join(df["XYZ_Ang"].str.replace("[", "", regex=False).str.replace("]", "", regex=False))
    pos = np.array(xyz.split(","), dtype=np.float64).reshape(-1, 3)
    els = ",".join(df["Elements"].str.replace(r"[\[\]' ]", "", regex=True)).split(",")
    unknown = sorted(set(els) - set(QM9_ELEMENTS))
    if unknown:
        raise ValueError(f"qm9pack data has elements {unknown} outside {QM9_ELEMENTS}")
    lut = {e: i for i, e in enumerate(QM9_ELEMENTS)}
    types = np.array([lut[e] for e in els], dtype=np.int8)
    if pos.shape[0] != n_atoms.sum() or types.shape[0] != n_atoms.sum():
        raise ValueError("qm9pack data is inconsistent: atom counts do not match coordinates/elements")
    out = {"positions": pos.astype(np.float32), "types": types,
           "offsets": np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64),
           "index": df["Index"].to_numpy(np.int64), "smiles": df["SMILES"].to_numpy(dtype=str)}
    for col, name in QM9_PROPERTIES.items():
        out["prop_" + name] = df[col].to_numpy(np.float64)
    return out


def _read_qm9pack(nrows: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Parse the qm9pack CSVs (``nrows`` per part file, for quick tests) into flat arrays."""
    import pandas as pd
    cols = ["Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang"] + list(QM9_PROPERTIES)
    return _parse_qm9_frames([pd.read_csv(p, usecols=cols, nrows=nrows) for p in qm9pack_files()])


def _dataset_from_arrays(a: Dict[str, np.ndarray]) -> QM9Dataset:
    return QM9Dataset(a["positions"], a["types"].astype(np.int64), a["offsets"], a["index"],
                      [str(s) for s in a["smiles"]],
                      {k[5:]: a[k] for k in a if k.startswith("prop_")})


def load_qm9_all(cache_dir: Optional[Union[str, Path]] = None) -> QM9Dataset:
    """All 130 831 QM9 molecules sorted by GDB index (parsed once, ~5 s, then cached as .npz)."""
    version = metadata.version("qm9pack") if _has_dist("qm9pack") else "missing"
    path = _cache_path(cache_dir, f"qm9_v{_CACHE_VERSION}_qm9pack-{version}.npz")
    arrays = _load_npz(path)
    if arrays is None:
        arrays = _read_qm9pack()
        if len(arrays["index"]) != QM9_N:
            raise ValueError(f"qm9pack holds {len(arrays['index'])} molecules, expected {QM9_N}")
        _save_npz(path, arrays)
    return _dataset_from_arrays(arrays)


def _has_dist(name: str) -> bool:
    try:
        metadata.distribution(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def qm9_split_rows(split: str) -> np.ndarray:
    """Rows (positions in the index-sorted 130 831 molecules) of an EDM split, sorted ascending."""
    if split not in QM9_SPLITS:
        raise ValueError(f"unknown QM9 split {split!r}; valid: {', '.join(QM9_SPLITS)}")
    if split == "all":
        return np.arange(QM9_N)
    perm = np.random.RandomState(0).permutation(QM9_N)   # == np.random.seed(0); np.random.permutation
    ntr, nva = QM9_SPLIT_SIZES["train"], QM9_SPLIT_SIZES["valid"]
    parts = {"train": perm[:ntr], "valid": perm[ntr:ntr + nva], "test": perm[ntr + nva:]}
    if split in parts:
        return np.sort(parts[split])
    # EDM: the train molecules (in file order) permuted with seed 42, first / second half
    train = np.sort(parts["train"])
    half = np.random.RandomState(42).permutation(ntr)
    return train[half[: ntr // 2]] if split == "train_first_half" else train[half[ntr // 2:]]


def load_qm9(split: str = "train", cache_dir: Optional[Union[str, Path]] = None,
             hydrogens: bool = True) -> QM9Dataset:
    """An EDM split of QM9 (``train`` 100 000, ``valid`` 17 748, ``test`` 13 083, ``all``,
    ``train_first_half`` / ``train_second_half`` 50 000 each); ``hydrogens=False`` drops H atoms."""
    rows = qm9_split_rows(split)
    ds = load_qm9_all(cache_dir).subset(rows)
    return ds if hydrogens else ds.without_hydrogens()


# ------------------------------------------------------------------ MOSES
def load_moses(split: str = "train", limit: Optional[int] = None) -> List[str]:
    """MOSES SMILES of a split as shipped (``train``, ``test``, ``test_scaffolds``); ``limit`` reads
    only the first rows."""
    if split not in MOSES_SPLITS:
        raise ValueError(f"unknown MOSES split {split!r}; valid: {', '.join(MOSES_SPLITS)}")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
    out: List[str] = []
    with gzip.open(moses_file(split), "rt") as f:
        header = f.readline().strip().split(",")
        if "SMILES" not in header:
            raise ValueError(f"MOSES {split} file has no SMILES column (header {header})")
        col = header.index("SMILES")
        for line in f:
            if limit is not None and len(out) >= limit:
                break
            line = line.strip()
            if line:
                out.append(line.split(",")[col])
    return out


def read_cached_lines(path: Path) -> Optional[List[str]]:
    """The lines of a gzip text cache file, or None when it is missing or unreadable (then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with gzip.open(path, "rt") as f:
            text = f.read()
    except (OSError, EOFError):
        return None
    return text.split("\n") if text else []


def write_cached_lines(path: Path, lines: Sequence[str]) -> None:
    """Write a gzip text cache file atomically (a crash never leaves a truncated cache)."""
    atomic_write_bytes(path, gzip.compress("\n".join(lines).encode(), compresslevel=3))


def moses_canonical_train(cache_dir: Optional[Union[str, Path]] = None, progress: bool = False) -> List[str]:
    """The MOSES train set re-canonicalized with the installed RDKit (for novelty), cached.

    MOSES compares canonical generated SMILES with the train file as shipped, written by an older
    RDKit; about 0.06% of its strings differ from today's canonical form. The first call parses
    1.58 M molecules (about 6 minutes on one core)."""
    from rdkit import Chem, RDLogger, rdBase
    path = _cache_path(cache_dir, f"moses_train_canonical_v{_CACHE_VERSION}_rdkit-{rdBase.rdkitVersion}.txt.gz")
    cached = read_cached_lines(path)
    if cached is not None:
        return cached
    raw = load_moses("train")
    RDLogger.DisableLog("rdApp.*")
    out = []
    for k, s in enumerate(raw):
        m = Chem.MolFromSmiles(s)
        out.append(Chem.MolToSmiles(m) if m is not None else s)
        if progress and k % 100_000 == 0:
            print(f"canonicalizing MOSES train: {k}/{len(raw)}", file=sys.stderr)
    RDLogger.EnableLog("rdApp.*")
    write_cached_lines(path, out)
    return out


# ------------------------------------------------------------------ user files
@dataclass
class ReadReport:
    """What a reader kept and skipped: ``skipped`` lists (record number, text, reason)."""
    source: str
    n_records: int = 0
    skipped: List[Tuple[int, str, str]] = field(default_factory=list)

    @property
    def n_read(self) -> int:
        return self.n_records - len(self.skipped)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        s = f"{self.source}: {self.n_read} of {self.n_records} records read"
        if self.skipped:
            ex = "; ".join(f"#{i} {t!r} ({r})" for i, t, r in self.skipped[:3])
            s += f", {self.n_skipped} skipped (e.g. {ex})"
        return s


def _smiles_records(path: Path) -> Iterator[str]:
    text = path.read_text()
    if path.suffix.lower() == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        rows = [r for r in rows if r and any(c.strip() for c in r)]
        if not rows:
            return
        header = [c.strip().lower() for c in rows[0]]
        if "smiles" in header:
            col, body = header.index("smiles"), rows[1:]
        else:
            from rdkit import Chem, RDLogger
            RDLogger.DisableLog("rdApp.*")
            first_is_smiles = Chem.MolFromSmiles(rows[0][0].strip()) is not None
            RDLogger.EnableLog("rdApp.*")
            col, body = 0, rows if first_is_smiles else rows[1:]
        for r in body:
            yield r[col].strip() if col < len(r) else ""
        return
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tok = line.split()[0]
        if tok.lower() == "smiles":          # a header line
            continue
        yield tok


def read_smiles(path: Union[str, Path], allowed_elements: Optional[Sequence[str]] = None,
                min_valid: int = 1) -> Tuple[List[str], List[object], ReadReport]:
    """The SMILES of a ``.smi``/``.txt``/``.csv`` file: (all records in order, their RDKit molecules or
    None, a :class:`ReadReport` of the records RDKit could not parse).

    Unparsable records are kept in the lists (molecule None) so that validity counts them; with
    ``allowed_elements`` a molecule with another element raises a ValueError naming it. Fewer than
    ``min_valid`` parsable records raises a ValueError (an empty file always does)."""
    from rdkit import Chem, RDLogger
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"file {str(path)!r} does not exist")
    if path.suffix.lower() not in (".smi", ".txt", ".csv"):
        raise ValueError(f"{path.name}: unknown extension; valid: .smi, .txt, .csv, .sdf")
    smiles = list(_smiles_records(path))
    if not smiles:
        raise ValueError(f"{path}: the file holds no SMILES records")
    report = ReadReport(str(path), n_records=len(smiles))
    mols: List[object] = []
    RDLogger.DisableLog("rdApp.*")
    try:
        for k, s in enumerate(smiles, 1):
            m = Chem.MolFromSmiles(s) if s else None
            if m is None:
                report.skipped.append((k, s, "empty record" if not s else "RDKit cannot parse it"))
            mols.append(m)
    finally:
        RDLogger.EnableLog("rdApp.*")
    _check_elements_allowed(mols, allowed_elements, path)
    if report.n_read < min_valid:
        raise ValueError(f"{path}: no parsable molecule among {report.n_records} records ({report.summary()})")
    return smiles, mols, report


def read_sdf(path: Union[str, Path], allowed_elements: Optional[Sequence[str]] = None,
             remove_hs: bool = False, min_valid: int = 1) -> Tuple[List[object], ReadReport]:
    """The molecules of an ``.sdf`` file in order (None for records RDKit rejects) and a report.

    Hydrogens are kept as written unless ``remove_hs``; 3-D coordinates stay as conformers."""
    from rdkit import Chem, RDLogger
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"file {str(path)!r} does not exist")
    if path.stat().st_size == 0 or not path.read_text().strip():
        raise ValueError(f"{path}: the file is empty")
    report = ReadReport(str(path))
    mols: List[object] = []
    RDLogger.DisableLog("rdApp.*")
    try:
        supplier = Chem.SDMolSupplier(str(path), sanitize=True, removeHs=remove_hs)
        for k, m in enumerate(supplier, 1):
            if m is None:
                report.skipped.append((k, f"record {k}", "RDKit cannot read or sanitize it"))
            mols.append(m)
    finally:
        RDLogger.EnableLog("rdApp.*")
    report.n_records = len(mols)
    if report.n_records == 0:
        raise ValueError(f"{path}: no SDF records (is it an SDF file?)")
    _check_elements_allowed(mols, allowed_elements, path)
    if report.n_read < min_valid:
        raise ValueError(f"{path}: no readable molecule among {report.n_records} records")
    return mols, report


def _check_elements_allowed(mols: Sequence[object], allowed: Optional[Sequence[str]], path: Path) -> None:
    if allowed is None:
        return
    allowed_set = set(allowed) | {"H"}
    for k, m in enumerate(mols, 1):
        if m is None:
            continue
        bad = sorted({a.GetSymbol() for a in m.GetAtoms()} - allowed_set)
        if bad:
            raise ValueError(f"{path}: record {k} has element(s) {bad} outside the allowed {sorted(allowed_set)}")


def read_molecules(path: Union[str, Path], allowed_elements: Optional[Sequence[str]] = None
                   ) -> Tuple[List[object], List[Optional[str]], ReadReport]:
    """Any supported file: (molecules or None per record, the record's SMILES text or None for SDF,
    report). Dispatches on the extension (.smi, .txt, .csv, .sdf)."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".sdf":
        mols, rep = read_sdf(path, allowed_elements)
        return mols, [None] * len(mols), rep
    if ext in (".smi", ".txt", ".csv"):
        smiles, mols, rep = read_smiles(path, allowed_elements)
        return mols, list(smiles), rep
    raise ValueError(f"{path.name}: unknown extension {ext!r}; valid: .smi, .txt, .csv, .sdf")


def file_digest(items: Sequence[str]) -> str:
    """A short content hash of a list of strings (cache keys for reference statistics)."""
    h = hashlib.sha1()
    for s in items:
        h.update(s.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


__all__ = ["QM9_ELEMENTS", "QM9_N", "QM9_SPLIT_SIZES", "QM9_SPLITS", "QM9_PROPERTIES", "HARTREE_TO_MEV", "MOSES_SPLITS",
           "QM9Dataset", "load_qm9", "load_qm9_all", "qm9_canonical_smiles", "qm9_split_rows", "load_moses", "moses_canonical_train",
           "moses_file", "ReadReport", "read_smiles", "read_sdf", "read_molecules", "default_cache_dir",
           "atomic_write_bytes", "file_digest"]


def qm9_canonical_smiles(split: str = "train", cache_dir: Optional[Union[str, Path]] = None,
                         isomeric: bool = False) -> List[str]:
    """RDKit canonical SMILES (hydrogens implicit; stereo-free unless ``isomeric``) of QM9's own
    SMILES for an EDM split, in the split's order; the few RDKit cannot parse are left out. Cached."""
    from rdkit import Chem, RDLogger, rdBase
    rows = qm9_split_rows(split)
    path = _cache_path(cache_dir, f"qm9_{split}_canonical_iso{int(isomeric)}_v{_CACHE_VERSION}"
                                  f"_rdkit-{rdBase.rdkitVersion}.txt.gz")
    cached = read_cached_lines(path)
    if cached is not None:
        return cached
    ds = load_qm9_all(cache_dir)
    out = []
    RDLogger.DisableLog("rdApp.*")
    for r in rows:
        m = Chem.MolFromSmiles(ds.smiles[r])
        if m is not None:
            out.append(Chem.MolToSmiles(m, isomericSmiles=isomeric))
    RDLogger.EnableLog("rdApp.*")
    write_cached_lines(path, out)
    return out
