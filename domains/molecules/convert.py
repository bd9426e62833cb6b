"""Conversions between the molecule representations polydiff uses.

* **RDKit molecules** (``rdkit.Chem.Mol``): the hub every other form converts through.
* **Graphs** (``torch_geometric.data.Data``): ``x`` (N,) int64 node types, indices into an
  :class:`AtomVocab` of (element, formal charge) tokens; ``edge_index`` (2, 2B) int64 with both
  directions of each of the B bonds; ``edge_attr`` (2B,) int64 bond types ``1`` single, ``2`` double,
  ``3`` triple and, only with ``kekulize=False``, ``4`` aromatic (``0`` is reserved for "no bond" in
  dense adjacency matrices, see :func:`dense_graph`). With ``kekulize=True`` (the default) aromatic
  rings are written as alternating single/double bonds, so a graph holds everything RDKit needs to
  rebuild the molecule (implicit hydrogens are re-derived from valences and formal charges). With
  ``kekulize=False`` the aromatic type keeps rings symmetric but loses which aromatic nitrogen
  carries the hydrogen (``[nH]``); such graphs may not rebuild. Graphs carry no stereochemistry.
* **3-D point sets**: positions (N, 3) float in Angstrom and atom types (N,) int64 indices into an
  element tuple (default :data:`QM9_ELEMENTS`, EDM's ``atom_decoder``). Bonds are inferred from
  inter-atomic distances with EDM's bond-length table (Hoogeboom et al., "Equivariant Diffusion for
  Molecule Generation in 3D", ICML 2022, App. / ``qm9/bond_analyze.py``): a pair is bonded when its
  distance is below the single-bond length + 10 pm, double when also below the double-bond length
  + 5 pm, triple when also below the triple-bond length + 3 pm. The same rule defines the EDM
  stability metric (:func:`polydiff.domains.molecules.metrics.stability`).
* **SELFIES** strings (Krenn et al., "Self-referencing embedded strings (SELFIES)", Mach. Learn.:
  Sci. Technol. 2020) through the ``selfies`` package: every SELFIES string decodes to a valid
  molecule; :class:`SelfiesTokenizer` maps strings to integer token tensors and back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from rdkit import Chem, RDLogger

QM9_ELEMENTS: Tuple[str, ...] = ("H", "C", "N", "O", "F")          # EDM's QM9 atom_decoder
MOSES_ELEMENTS: Tuple[str, ...] = ("C", "N", "S", "O", "F", "Cl", "Br")  # MOSES's allowed heavy atoms

BOND_TYPES = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3,
              Chem.BondType.AROMATIC: 4}
BOND_FROM_TYPE = {v: k for k, v in BOND_TYPES.items()}
BOND_NAMES = ("none", "single", "double", "triple", "aromatic")

# ------------------------------------------------------------------ EDM's bond-length table (pm)
# Typical bond lengths, as tabulated in EDM's qm9/bond_analyze.py (from wiredchemist.com and
# chemistry-reference.com); symmetric, so each unordered pair is listed once.
_SINGLE = {
    ("H", "H"): 74, ("H", "C"): 109, ("H", "N"): 101, ("H", "O"): 96, ("H", "F"): 92, ("H", "B"): 119,
    ("H", "Si"): 148, ("H", "P"): 144, ("H", "As"): 152, ("H", "S"): 134, ("H", "Cl"): 127,
    ("H", "Br"): 141, ("H", "I"): 161,
    ("C", "C"): 154, ("C", "N"): 147, ("C", "O"): 143, ("C", "F"): 135, ("C", "Si"): 185, ("C", "P"): 184,
    ("C", "S"): 182, ("C", "Cl"): 177, ("C", "Br"): 194, ("C", "I"): 214,
    ("N", "N"): 145, ("N", "O"): 140, ("N", "F"): 136, ("N", "Cl"): 175, ("N", "Br"): 214, ("N", "S"): 168,
    ("N", "I"): 222, ("N", "P"): 177,
    ("O", "O"): 148, ("O", "F"): 142, ("O", "Br"): 172, ("O", "S"): 151, ("O", "P"): 163, ("O", "Si"): 163,
    ("O", "Cl"): 164, ("O", "I"): 194,
    ("F", "F"): 142, ("F", "S"): 158, ("F", "Si"): 160, ("F", "Cl"): 166, ("F", "Br"): 178, ("F", "P"): 156,
    ("F", "I"): 187,
    ("B", "Cl"): 175,
    ("Si", "Si"): 233, ("Si", "S"): 200, ("Si", "Cl"): 202, ("Si", "Br"): 215, ("Si", "I"): 243,
    ("Cl", "Cl"): 199, ("Cl", "P"): 203, ("Cl", "S"): 207, ("Cl", "Br"): 214,
    ("S", "S"): 204, ("S", "Br"): 225, ("S", "P"): 210, ("S", "I"): 234,
    ("Br", "Br"): 228, ("Br", "P"): 222,
    ("P", "P"): 221,
    ("I", "I"): 266,
}
_DOUBLE = {("C", "C"): 134, ("C", "N"): 129, ("C", "O"): 120, ("C", "S"): 160, ("N", "N"): 125,
           ("N", "O"): 121, ("O", "O"): 121, ("O", "P"): 150, ("P", "S"): 186}
_TRIPLE = {("C", "C"): 120, ("C", "N"): 116, ("C", "O"): 113, ("N", "N"): 110}
MARGINS_PM = (10.0, 5.0, 3.0)   # EDM's margins for single, double, triple ("tuned on QM9 data")

# Allowed total bond orders per element for EDM's stability (an int or a set of ints).
ALLOWED_VALENCES: Dict[str, Tuple[int, ...]] = {
    "H": (1,), "C": (4,), "N": (3,), "O": (2,), "F": (1,), "B": (3,), "Al": (3,), "Si": (4,), "P": (3, 5),
    "S": (4,), "Cl": (1,), "As": (3,), "Br": (1,), "I": (1,), "Hg": (1, 2), "Bi": (3, 5)}


def _pair_table(table: Dict[Tuple[str, str], int], elements: Sequence[str]) -> np.ndarray:
    """(K, K) array of bond lengths in pm for an element tuple; NaN where the pair has none."""
    k = len(elements)
    out = np.full((k, k), np.nan)
    for i, a in enumerate(elements):
        for j, b in enumerate(elements):
            v = table.get((a, b), table.get((b, a)))
            if v is not None:
                out[i, j] = v
    return out


def _check_elements(elements: Sequence[str]) -> Tuple[str, ...]:
    elements = tuple(elements)
    pt = Chem.GetPeriodicTable()
    for e in elements:
        try:
            if pt.GetAtomicNumber(e) <= 0:
                raise ValueError
        except (RuntimeError, ValueError):
            raise ValueError(f"unknown element {e!r} in the element tuple {elements}") from None
    if len(set(elements)) != len(elements):
        raise ValueError(f"element tuple {elements} has duplicates")
    return elements


def _check_points(positions: Union[Tensor, np.ndarray], types: Union[Tensor, np.ndarray],
                  elements: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    pos = np.asarray(positions.detach().cpu() if isinstance(positions, Tensor) else positions, dtype=np.float64)
    typ = np.asarray(types.detach().cpu() if isinstance(types, Tensor) else types)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {tuple(pos.shape)}")
    if typ.ndim != 1 or typ.shape[0] != pos.shape[0]:
        raise ValueError(f"atom types must have shape (N,) with N = {pos.shape[0]}, got {tuple(typ.shape)}")
    if not np.isfinite(pos).all():
        raise ValueError("positions contain NaN or infinite values")
    if typ.size and (not np.issubdtype(typ.dtype, np.integer)):
        raise ValueError(f"atom types must be integers, got dtype {typ.dtype}")
    if typ.size and (typ.min() < 0 or typ.max() >= len(elements)):
        raise ValueError(f"atom type ids must lie in [0, {len(elements)}) for elements {tuple(elements)}; "
                         f"got range [{typ.min()}, {typ.max()}]")
    return pos, typ.astype(np.int64)


def infer_bond_orders(positions: Union[Tensor, np.ndarray], types: Union[Tensor, np.ndarray],
                      elements: Sequence[str] = QM9_ELEMENTS) -> np.ndarray:
    """(N, N) symmetric int matrix of bond orders (0 none, 1, 2, 3) from 3-D coordinates in Angstrom.

    EDM's rule (Hoogeboom et al. 2022): bonded when d < single + 10 pm; double when also
    d < double + 5 pm (pairs with a double length); triple when also d < triple + 3 pm. Pairs absent
    from the single-bond table never bond (EDM's ``check_exists``)."""
    elements = _check_elements(elements)
    pos, typ = _check_points(positions, types, elements)
    n = pos.shape[0]
    if n == 0:
        return np.zeros((0, 0), dtype=np.int64)
    d = np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)) * 100.0     # pm
    t1, t2, t3 = (_pair_table(t, elements)[typ[:, None], typ[None, :]] for t in (_SINGLE, _DOUBLE, _TRIPLE))
    m1, m2, m3 = MARGINS_PM
    with np.errstate(invalid="ignore"):
        b1 = d < t1 + m1
        b2 = b1 & (d < t2 + m2)
        b3 = b2 & (d < t3 + m3)
    order = b1.astype(np.int64) + b2 + b3
    np.fill_diagonal(order, 0)
    return order


# ------------------------------------------------------------------ atom vocabulary
@dataclass(frozen=True)
class AtomVocab:
    """Node types of a molecular graph: (element symbol, formal charge) tokens, indexed from 0.

    ``AtomVocab.qm9()`` is C, N, O, F (H too with ``hydrogens=True``); ``AtomVocab.moses()`` is MOSES's
    C, N, S, O, F, Cl, Br; ``AtomVocab.from_mols`` collects the tokens present in a data set."""
    tokens: Tuple[Tuple[str, int], ...]

    def __post_init__(self) -> None:
        if not self.tokens:
            raise ValueError("an atom vocabulary needs at least one token")
        _check_elements(sorted({s for s, _ in self.tokens}))
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError(f"duplicate tokens in atom vocabulary {self.tokens}")

    @classmethod
    def of(cls, items: Iterable[Union[str, Tuple[str, int]]]) -> "AtomVocab":
        """A vocabulary from symbols ("C", charge 0) or (symbol, charge) pairs."""
        return cls(tuple((i, 0) if isinstance(i, str) else (str(i[0]), int(i[1])) for i in items))

    @classmethod
    def qm9(cls, hydrogens: bool = False) -> "AtomVocab":
        return cls.of(QM9_ELEMENTS if hydrogens else QM9_ELEMENTS[1:])

    @classmethod
    def moses(cls) -> "AtomVocab":
        return cls.of(MOSES_ELEMENTS)

    @classmethod
    def from_mols(cls, mols: Iterable[Chem.Mol], hydrogens: bool = False) -> "AtomVocab":
        """Every (element, charge) token in ``mols`` sorted by atomic number then charge."""
        seen = set()
        for m in mols:
            if m is None:
                continue
            for a in (Chem.AddHs(m) if hydrogens else m).GetAtoms():
                seen.add((a.GetAtomicNum(), a.GetSymbol(), a.GetFormalCharge()))
        return cls(tuple((s, c) for _, s, c in sorted(seen)))

    def __len__(self) -> int:
        return len(self.tokens)

    def index(self, symbol: str, charge: int = 0) -> int:
        try:
            return self.tokens.index((symbol, int(charge)))
        except ValueError:
            raise ValueError(f"atom {symbol}{_charge_str(charge)} is not in the vocabulary; valid: "
                             f"{', '.join(s + _charge_str(c) for s, c in self.tokens)}") from None


def _charge_str(c: int) -> str:
    return "" if c == 0 else (f"+{c}" if c > 0 else str(c))


# ------------------------------------------------------------------ SMILES
def smiles_to_mol(smiles: str, sanitize: bool = True) -> Chem.Mol:
    """An RDKit molecule from SMILES; ValueError (quoting the string) when RDKit cannot parse it."""
    if not isinstance(smiles, str) or not smiles.strip():
        raise ValueError(f"not a SMILES string: {smiles!r}")
    RDLogger.DisableLog("rdApp.*")
    try:
        mol = Chem.MolFromSmiles(smiles.strip(), sanitize=sanitize)
    finally:
        RDLogger.EnableLog("rdApp.*")
    if mol is None:
        raise ValueError(f"RDKit cannot parse SMILES {smiles!r}")
    return mol


def canonical_smiles(mol: Union[str, Chem.Mol], isomeric: bool = True) -> str:
    """RDKit canonical SMILES of a molecule (or of a SMILES string, parsed first)."""
    if isinstance(mol, str):
        mol = smiles_to_mol(mol)
    return Chem.MolToSmiles(mol, isomericSmiles=isomeric)


# ------------------------------------------------------------------ graphs
def mol_to_graph(mol: Chem.Mol, vocab: AtomVocab, kekulize: bool = True, hydrogens: bool = False):
    """A torch-geometric ``Data`` graph of ``mol`` (see the module docstring for the encoding).

    ``hydrogens=True`` makes hydrogens explicit nodes (the vocabulary must contain H); otherwise they
    are implicit. A 3-D conformer, when present, is kept as ``pos`` (N, 3) float32."""
    from torch_geometric.data import Data
    if mol is None:
        raise ValueError("mol_to_graph got None (an unparsable molecule)")
    mol = Chem.AddHs(mol, addCoords=True) if hydrogens else Chem.RemoveHs(mol, sanitize=False)
    if kekulize:
        mol = Chem.Mol(mol)
        Chem.Kekulize(mol, clearAromaticFlags=True)
    x = torch.tensor([vocab.index(a.GetSymbol(), a.GetFormalCharge()) for a in mol.GetAtoms()], dtype=torch.int64)
    rows, cols, types = [], [], []
    for b in mol.GetBonds():
        bt = b.GetBondType()
        if bt not in BOND_TYPES:
            raise ValueError(f"bond type {bt} is not supported; valid: single, double, triple, aromatic")
        i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
        rows += [i, j]
        cols += [j, i]
        types += [BOND_TYPES[bt]] * 2
    data = Data(x=x, edge_index=torch.tensor([rows, cols], dtype=torch.int64).reshape(2, -1),
                edge_attr=torch.tensor(types, dtype=torch.int64), num_nodes=int(x.shape[0]))
    if mol.GetNumConformers() and mol.GetConformer().Is3D():
        data.pos = torch.tensor(mol.GetConformer().GetPositions(), dtype=torch.float32)
    return data


def graph_to_mol(data, vocab: AtomVocab, sanitize: bool = True) -> Chem.Mol:
    """The RDKit molecule of a graph (``x``, ``edge_index``, ``edge_attr`` as :func:`mol_to_graph` makes).

    With ``sanitize=True`` a ValueError explains why RDKit rejects the molecule (e.g. a valence
    violation); with ``sanitize=False`` the raw molecule is returned for the caller to check."""
    x = torch.as_tensor(data.x).long().reshape(-1)
    ei = torch.as_tensor(data.edge_index).long()
    ea = torch.as_tensor(data.edge_attr).long().reshape(-1)
    if ei.dim() != 2 or ei.shape[0] != 2 or ei.shape[1] != ea.shape[0]:
        raise ValueError(f"edge_index must be (2, E) and edge_attr (E,); got {tuple(ei.shape)} and {tuple(ea.shape)}")
    if x.numel() and (x.min() < 0 or x.max() >= len(vocab)):
        raise ValueError(f"node type ids must lie in [0, {len(vocab)}), got range [{int(x.min())}, {int(x.max())}]")
    if ei.numel() and (ei.min() < 0 or ei.max() >= x.numel()):
        raise ValueError(f"edge_index refers to node {int(ei.max())} but the graph has {x.numel()} nodes")
    bonds = {}
    for (i, j), t in zip(ei.t().tolist(), ea.tolist()):
        if t == 0:
            continue
        if t not in BOND_FROM_TYPE:
            raise ValueError(f"edge type {t} is unknown; valid: 0 none, 1 single, 2 double, 3 triple, 4 aromatic")
        if i == j:
            raise ValueError(f"self-loop on node {i}")
        key = (min(i, j), max(i, j))
        if bonds.get(key, t) != t:
            raise ValueError(f"edge ({i}, {j}) has two different types {bonds[key]} and {t}")
        bonds[key] = t
    rw = Chem.RWMol()
    for k in x.tolist():
        sym, charge = vocab.tokens[k]
        atom = Chem.Atom(sym)
        atom.SetFormalCharge(charge)
        rw.AddAtom(atom)
    for (i, j), t in sorted(bonds.items()):
        rw.AddBond(i, j, BOND_FROM_TYPE[t])
        if t == 4:
            rw.GetAtomWithIdx(i).SetIsAromatic(True)
            rw.GetAtomWithIdx(j).SetIsAromatic(True)
            rw.GetBondBetweenAtoms(i, j).SetIsAromatic(True)
    mol = rw.GetMol()
    pos = getattr(data, "pos", None)
    if pos is not None:
        _set_conformer(mol, np.asarray(torch.as_tensor(pos).detach().cpu(), dtype=np.float64))
    if sanitize:
        try:
            Chem.SanitizeMol(mol)
        except Exception as e:   # RDKit raises several exception classes
            raise ValueError(f"the graph is not a valid molecule: {e}") from None
    return mol


def dense_graph(data, max_nodes: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Node types (N,) and the dense symmetric edge-type matrix (N, N) (0 = no bond) of a graph;
    with ``max_nodes``, padded to that size with node type -1 and edge type 0."""
    x = torch.as_tensor(data.x).long().reshape(-1)
    n = x.numel() if max_nodes is None else int(max_nodes)
    if n < x.numel():
        raise ValueError(f"max_nodes={n} is smaller than the graph's {x.numel()} nodes")
    e = torch.zeros(n, n, dtype=torch.int64)
    ei = torch.as_tensor(data.edge_index).long()
    if ei.numel():
        e[ei[0], ei[1]] = torch.as_tensor(data.edge_attr).long().reshape(-1)
    xs = torch.full((n,), -1, dtype=torch.int64)
    xs[: x.numel()] = x
    return xs, e


def graph_from_dense(x: Tensor, e: Tensor):
    """The inverse of :func:`dense_graph`: drops padding nodes (type < 0) and zero entries."""
    from torch_geometric.data import Data
    x = torch.as_tensor(x).long().reshape(-1)
    e = torch.as_tensor(e).long()
    if e.shape != (x.numel(), x.numel()):
        raise ValueError(f"edge matrix must be ({x.numel()}, {x.numel()}), got {tuple(e.shape)}")
    keep = x >= 0
    x, e = x[keep], e[keep][:, keep]
    if not torch.equal(e, e.t()):
        raise ValueError("the dense edge-type matrix must be symmetric")
    idx = e.nonzero().t()
    return Data(x=x, edge_index=idx, edge_attr=e[idx[0], idx[1]], num_nodes=int(x.numel()))


# ------------------------------------------------------------------ 3-D point sets
def _set_conformer(mol: Chem.Mol, pos: np.ndarray) -> None:
    conf = Chem.Conformer(mol.GetNumAtoms())
    for i, p in enumerate(pos):
        conf.SetAtomPosition(i, [float(v) for v in p])
    conf.Set3D(True)
    mol.RemoveAllConformers()
    mol.AddConformer(conf, assignId=True)


def mol_to_points(mol: Chem.Mol, elements: Sequence[str] = QM9_ELEMENTS) -> Tuple[Tensor, Tensor]:
    """Positions (N, 3) float32 (Angstrom) and atom types (N,) int64 of a molecule's 3-D conformer.

    All atoms are taken as they are in ``mol`` (add explicit hydrogens first for EDM-style sets)."""
    elements = _check_elements(elements)
    if mol is None:
        raise ValueError("mol_to_points got None (an unparsable molecule)")
    if mol.GetNumConformers() == 0:
        raise ValueError("the molecule has no conformer (3-D coordinates); embed one first (e.g. RDKit ETKDG)")
    types = []
    for a in mol.GetAtoms():
        if a.GetSymbol() not in elements:
            raise ValueError(f"element {a.GetSymbol()!r} is not in {elements}")
        types.append(elements.index(a.GetSymbol()))
    pos = torch.tensor(mol.GetConformer().GetPositions(), dtype=torch.float32)
    return pos, torch.tensor(types, dtype=torch.int64)


def points_to_mol(positions: Union[Tensor, np.ndarray], types: Union[Tensor, np.ndarray],
                  elements: Sequence[str] = QM9_ELEMENTS, sanitize: bool = False) -> Chem.Mol:
    """The molecule EDM builds from a point set: atoms of the given elements (neutral), bonds from
    :func:`infer_bond_orders`, the positions as a 3-D conformer.

    Unsanitized by default, as EDM's validity check sanitizes it itself; ``sanitize=True`` raises a
    ValueError when RDKit rejects it."""
    elements = _check_elements(elements)
    pos, typ = _check_points(positions, types, elements)
    order = infer_bond_orders(pos, typ, elements)
    rw = Chem.RWMol()
    for t in typ.tolist():
        rw.AddAtom(Chem.Atom(elements[t]))
    for i, j in zip(*np.nonzero(np.triu(order))):
        rw.AddBond(int(i), int(j), BOND_FROM_TYPE[int(order[i, j])])
    mol = rw.GetMol()
    if len(typ):
        _set_conformer(mol, pos)
    if sanitize:
        try:
            Chem.SanitizeMol(mol)
        except Exception as e:
            raise ValueError(f"the point set is not a valid molecule: {e}") from None
    return mol


# ------------------------------------------------------------------ SELFIES
def mol_to_selfies(mol: Union[str, Chem.Mol]) -> str:
    """The SELFIES string of a molecule (via its canonical SMILES, kekulized by ``selfies``)."""
    import selfies as sf
    smi = canonical_smiles(mol)
    try:
        return sf.encoder(smi, strict=True)
    except sf.EncoderError as e:
        raise ValueError(f"SELFIES cannot encode {smi!r}: {e}") from None


def selfies_to_mol(s: str) -> Chem.Mol:
    """The molecule of a SELFIES string (any string of valid SELFIES symbols decodes to one)."""
    import selfies as sf
    if not isinstance(s, str):
        raise ValueError(f"not a SELFIES string: {s!r}")
    try:
        smi = sf.decoder(s)
    except sf.DecoderError as e:
        raise ValueError(f"cannot decode SELFIES {s!r}: {e}") from None
    if smi is None or smi == "":
        raise ValueError(f"SELFIES {s!r} decodes to an empty molecule")
    return smiles_to_mol(smi)


class SelfiesTokenizer:
    """SELFIES symbols <-> integer ids. Id 0 is ``[nop]`` padding (which SELFIES decoding skips), so a
    padded row decodes to the same molecule; the alphabet follows, sorted."""

    PAD = "[nop]"

    def __init__(self, alphabet: Iterable[str]):
        symbols = sorted(set(alphabet) - {self.PAD})
        if not symbols:
            raise ValueError("a SELFIES alphabet needs at least one symbol")
        self.symbols: List[str] = [self.PAD] + symbols
        self.ids: Dict[str, int] = {s: i for i, s in enumerate(self.symbols)}

    @classmethod
    def from_selfies(cls, strings: Iterable[str]) -> "SelfiesTokenizer":
        import selfies as sf
        return cls(sf.get_alphabet_from_selfies(list(strings)))

    def __len__(self) -> int:
        return len(self.symbols)

    def tokens(self, s: str) -> List[str]:
        import selfies as sf
        return list(sf.split_selfies(s))

    def encode(self, strings: Sequence[str], length: Optional[int] = None) -> Tensor:
        """(B, L) int64 ids padded with 0; ``length`` defaults to the longest string; longer strings
        raise a ValueError (truncation would change the molecule)."""
        rows = [self.tokens(s) for s in strings]
        L = max((len(r) for r in rows), default=0) if length is None else int(length)
        out = torch.zeros(len(rows), L, dtype=torch.int64)
        for b, r in enumerate(rows):
            if len(r) > L:
                raise ValueError(f"SELFIES string {b} has {len(r)} symbols > length {L}")
            for k, tok in enumerate(r):
                if tok not in self.ids:
                    raise ValueError(f"SELFIES symbol {tok!r} is not in the alphabet ({len(self)} symbols)")
                out[b, k] = self.ids[tok]
        return out

    def decode(self, ids: Tensor) -> List[str]:
        """SELFIES strings of (B, L) id rows (padding dropped)."""
        ids = torch.as_tensor(ids)
        if ids.dim() != 2:
            raise ValueError(f"ids must be (B, L), got {tuple(ids.shape)}")
        if ids.numel() and (ids.min() < 0 or ids.max() >= len(self)):
            raise ValueError(f"token ids must lie in [0, {len(self)})")
        return ["".join(self.symbols[i] for i in row if i != 0) for row in ids.tolist()]


__all__ = ["QM9_ELEMENTS", "MOSES_ELEMENTS", "BOND_NAMES", "ALLOWED_VALENCES", "AtomVocab", "infer_bond_orders",
           "smiles_to_mol", "canonical_smiles", "mol_to_graph", "graph_to_mol", "dense_graph", "graph_from_dense",
           "mol_to_points", "points_to_mol", "mol_to_selfies", "selfies_to_mol", "SelfiesTokenizer"]
