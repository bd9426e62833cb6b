"""EDM: 3-D molecule generation by joint diffusion of coordinates and atom types.

Hoogeboom, Satorras, Vignac & Welling, "Equivariant Diffusion for Molecule Generation in 3D"
(ICML 2022). A molecule with N atoms is a point set: positions x (N, 3) in Angstrom and atom types,
one-hot over :data:`~.convert.QM9_ELEMENTS` (H, C, N, O, F) scaled by ``type_scale`` = 0.25 (EDM's
normalisation; EDM's extra formal-charge channel is left out). The two are diffused jointly as one
tensor z = [x, h] of shape (B, N_max, 3 + K) on a variance-preserving path:

* **Centre-of-mass-free positions.** Positions live in the linear subspace sum_i x_i = 0 over the real
  atoms of each molecule (EDM Sec. 3.2): data, initial noise and network outputs are projected onto
  it (:func:`remove_mean`); padding atoms are zero. Because the data lie in that subspace, the exact
  full-space denoiser E[x0 | x_t] only depends on the projection of x_t and has no component outside
  it; so the projected denoiser (:class:`ProjectedDenoiser`) is exact for every core solver, and noise
  that a stochastic solver adds outside the subspace (or on padding) never reaches the samples.
* **Path.** EDM's "polynomial_2" schedule, alpha^2(t) = (1 - 2 s)(1 - t^2)^2 + s, s = 1e-5
  (``polydiff.core.paths.PolynomialVP``, with closed forms), t = 0 data, t = 1 noise.
* **Loss.** EDM's L_simple: the network predicts eps and is regressed with the core
  ``DiffusionLoss(prediction="eps", weighting="uniform")`` on the projected noise.
* **Network.** :class:`EGNN`, the E(n)-equivariant graph network of Satorras, Hoogeboom & Welling
  ("E(n) Equivariant Graph Neural Networks", ICML 2021) in the form EDM uses ("EquivariantBlock"):
  invariant message passing on squared distances (current and initial) with attention, then a
  coordinate update sum_j (x_i - x_j) / (|x_i - x_j| + 1) * tanh(phi(m_ij)) * range. Edges are all
  pairs of real atoms of a molecule (fully connected, as in EDM), built here as dense (B, N, N) masks
  on the padded batch. The eps prediction for positions is x_out - x_in projected to zero mean
  (EDM's ``EGNN_dynamics_QM9``); for types it is the last layer's invariant features.
* **Sampling.** The core ``sample`` with any Gaussian solver on the projected denoiser; the number of
  atoms is drawn from the training histogram; types are the argmax of the denoised type channels.
* **Guidance (3-D, gradient-based).** :func:`property_guided_denoiser` steers sampling with a
  :class:`PropertyPredictor` (an invariant EGNN regressor of a QM9 property on clean geometries) applied
  to x0-hat through the core's ``UniversalGuidance`` (Bansal et al., ICLR 2024), for t <= t_stop.

``pretrained("qm9-3d")`` loads the shipped weights (``weights/qm9-3d``, trained on CPU by
``python -m polydiff.domains.molecules.train_edm``; see its README.md).
"""
from __future__ import annotations

import math
from pathlib import Path as FilePath
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from polydiff.core import paths as _paths
from polydiff.core.paths import PolynomialVP
from polydiff.core.denoiser import Denoiser
from polydiff.core.losses import DiffusionLoss
from polydiff.core.training.files import read_model_folder, write_model_folder

from .convert import QM9_ELEMENTS
from .shipped import WEIGHTS_DIR, shipped_folder

PRETRAINED = {"qm9-3d": "EDM (3-D joint diffusion of coordinates and atom types, EGNN) on QM9 with hydrogens, "
                        "trained on CPU; see its README.md"}
_ARCH_KEYS = ("layers", "hidden", "coords_range", "type_scale", "precision")
MODEL_NAME = "edm-3d"


# ------------------------------------------------------------------ the centre-of-mass-free subspace
def _check_mask(x: Tensor, mask: Tensor) -> Tensor:
    if mask.dtype != torch.bool or mask.dim() != 2 or tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"mask must be a bool tensor of shape {tuple(x.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}")
    if not bool(mask.any(1).all()):
        raise ValueError("every molecule needs at least one real atom (a row of mask is all False)")
    return mask


def remove_mean(x: Tensor, mask: Tensor, dims: int = 3) -> Tensor:
    """Project the first ``dims`` channels of x (B, N, C) onto zero mean over the real atoms of each
    molecule (the orthogonal projection onto EDM's centre-of-mass-free subspace) and zero the padding;
    other channels are only masked."""
    if x.dim() != 3 or x.shape[-1] < dims:
        raise ValueError(f"x must have shape (B, N, C >= {dims}), got {tuple(x.shape)}")
    _check_mask(x, mask)
    m = mask[..., None].to(x.dtype)
    pos = x[..., :dims] * m
    mean = pos.sum(1, keepdim=True) / m.sum(1, keepdim=True)
    pos = (pos - mean) * m
    return torch.cat([pos, x[..., dims:] * m], -1)


def com_free_noise(shape: Sequence[int], mask: Tensor, generator: Optional[torch.Generator] = None,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise (B, N, C) projected by :func:`remove_mean`: in the first 3 channels it is
    the standard Gaussian of the CoM-free subspace (per-coordinate variance (n - 1) / n, covariance
    -1/n between atoms), elsewhere standard normal on real atoms; zero on padding."""
    z = torch.randn(tuple(shape), generator=generator, dtype=dtype)
    return remove_mean(z, mask)


def node_mask(sizes: Tensor, n_max: int) -> Tensor:
    """(B, n_max) bool mask of the first ``sizes[b]`` atoms; ValueError for a size outside [1, n_max]."""
    sizes = torch.as_tensor(sizes).long().reshape(-1)
    if sizes.numel() and (int(sizes.min()) < 1 or int(sizes.max()) > n_max):
        raise ValueError(f"molecule sizes must lie in [1, {n_max}], got [{int(sizes.min())}, {int(sizes.max())}]")
    return torch.arange(n_max)[None, :] < sizes[:, None]


# ------------------------------------------------------------------ the network
class _GCL(nn.Module):
    """Invariant message passing (EGNN's edge and node models with EDM's attention gate), dense:
    m_ij = phi_e(h_i, h_j, e_ij) * sigmoid(phi_a(m_ij)); h_i += phi_h(h_i, sum_j m_ij / norm)."""

    def __init__(self, hidden: int, edge_dim: int, norm: float) -> None:
        super().__init__()
        self.e_i, self.e_j = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden, bias=False)
        self.e_e = nn.Linear(edge_dim, hidden, bias=False)
        self.e_2 = nn.Linear(hidden, hidden)
        self.att = nn.Linear(hidden, 1)
        self.node = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.norm = norm

    def forward(self, h: Tensor, e: Tensor, pm: Tensor, nm: Tensor) -> Tensor:
        # the first edge layer on [h_i, h_j, e_ij] written as W_i h_i + W_j h_j + W_e e_ij (no concat)
        m = torch.nn.functional.silu(self.e_i(h)[:, :, None] + self.e_j(h)[:, None, :] + self.e_e(e))
        m = torch.nn.functional.silu(self.e_2(m))
        m = m * torch.sigmoid(self.att(m)) * pm
        agg = m.sum(2) / self.norm
        return (h + self.node(torch.cat([h, agg], -1))) * nm


class _CoordUpdate(nn.Module):
    """EDM's EquivariantUpdate: x_i += sum_j (x_i - x_j) / (|x_i - x_j| + 1) * tanh(phi_x(h_i, h_j, e_ij))
    * range / norm; phi_x's last layer starts near zero (xavier gain 0.001), as in EDM."""

    def __init__(self, hidden: int, edge_dim: int, coords_range: float, norm: float) -> None:
        super().__init__()
        self.c_i, self.c_j = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden, bias=False)
        self.c_e = nn.Linear(edge_dim, hidden, bias=False)
        self.c_2 = nn.Linear(hidden, hidden)
        self.c_3 = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(self.c_3.weight, gain=0.001)
        self.range, self.norm = coords_range, norm

    def forward(self, h: Tensor, x: Tensor, diff: Tensor, e: Tensor, pm: Tensor, nm: Tensor) -> Tensor:
        c = torch.nn.functional.silu(self.c_i(h)[:, :, None] + self.c_j(h)[:, None, :] + self.c_e(e))
        c = torch.nn.functional.silu(self.c_2(c))
        w = torch.tanh(self.c_3(c)) * self.range * pm
        return (x + (diff * w).sum(2) / self.norm) * nm


def _pair_geometry(x: Tensor) -> Tuple[Tensor, Tensor]:
    """(squared distances (B, N, N, 1), normalised differences (x_i - x_j) / (|x_i - x_j| + 1))."""
    d = x[:, :, None, :] - x[:, None, :, :]
    r2 = d.square().sum(-1, keepdim=True)
    return r2, d / ((r2 + 1e-8).sqrt() + 1.0)


class EGNN(nn.Module):
    """E(n)-equivariant graph network on dense padded point sets (Satorras et al. 2021, in EDM's
    "EquivariantBlock" form): (positions (B, N, 3), invariant features (B, N, F), mask (B, N)) ->
    (positions, features (B, N, out)). Rotating/reflecting and translating the input positions
    transforms the output positions alike and leaves the features unchanged; permuting atoms permutes
    both; padding atoms never influence real ones."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 128, layers: int = 4,
                 coords_range: float = 15.0, norm: float = 1.0) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features), ("hidden", hidden),
                        ("layers", layers)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.embed = nn.Linear(in_features, hidden)
        self.gcl = nn.ModuleList(_GCL(hidden, 2, norm) for _ in range(layers))
        self.upd = nn.ModuleList(_CoordUpdate(hidden, 2, coords_range / layers, norm) for _ in range(layers))
        self.out = nn.Linear(hidden, out_features)

    def forward(self, x: Tensor, h: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
        if x.dim() != 3 or x.shape[-1] != 3 or h.dim() != 3 or h.shape[:2] != x.shape[:2]:
            raise ValueError(f"need positions (B, N, 3) and features (B, N, F), got {tuple(x.shape)}, {tuple(h.shape)}")
        _check_mask(x, mask)
        nm = mask[..., None].to(x.dtype)
        eye = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
        pm = (mask[:, :, None] & mask[:, None, :] & ~eye)[..., None].to(x.dtype)
        x = x * nm
        r2_0, _ = _pair_geometry(x)
        h = self.embed(h) * nm
        for gcl, upd in zip(self.gcl, self.upd):
            r2, diff = _pair_geometry(x)
            e = torch.cat([r2, r2_0], -1)
            h = gcl(h, e, pm, nm)
            x = upd(h, x, diff, e, pm, nm)
        return x, self.out(h) * nm


class EDMNet(nn.Module):
    """EDM's dynamics (``EGNN_dynamics_QM9``): z_t = [x, h] (B, N, 3 + K), t (B,), mask -> eps-hat of the
    same shape: positions x_out - x_in projected to zero mean, types from the invariant features; the
    time t is an extra input feature of every atom. A NaN in the position output becomes 0 (as EDM)."""

    def __init__(self, num_types: int, hidden: int = 128, layers: int = 4, coords_range: float = 15.0) -> None:
        super().__init__()
        self.num_types = int(num_types)
        self.egnn = EGNN(self.num_types + 1, self.num_types, hidden, layers, coords_range)

    def forward(self, z: Tensor, t: Tensor, mask: Tensor) -> Tensor:
        if z.dim() != 3 or z.shape[-1] != 3 + self.num_types:
            raise ValueError(f"z must have shape (B, N, {3 + self.num_types}), got {tuple(z.shape)}")
        _check_mask(z, mask)
        B, N, _ = z.shape
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device).reshape(-1).expand(B)
        x = z[..., :3]
        h = torch.cat([z[..., 3:], t[:, None, None].expand(B, N, 1)], -1)
        x_out, h_out = self.egnn(x, h, mask)
        eps_x = torch.nan_to_num(x_out - x * mask[..., None].to(z.dtype), nan=0.0)
        return remove_mean(torch.cat([eps_x, h_out], -1), mask)


class ProjectedDenoiser(nn.Module):
    """D(z, t, mask=...) -> x0-hat of a base denoiser applied to the projected state, projected again
    (module docstring: exact for data in the CoM-free subspace, so every core solver may use it)."""

    def __init__(self, denoiser: Any) -> None:
        super().__init__()
        self.denoiser = denoiser

    def forward(self, z: Tensor, t: Tensor, mask: Tensor, **cond: Any) -> Tensor:
        return remove_mean(self.denoiser(remove_mean(z, mask), t, mask=mask, **cond), mask)


def sample_point_sets(denoiser: Any, mask: Tensor, path: _paths.Path, channels: int,
                      solver: str = "ddpm", steps: int = 500, grid: str = "uniform",
                      generator: Optional[torch.Generator] = None, **options: Any) -> Tensor:
    """z0 (B, N, channels) from a denoiser D(z, t, mask=mask) with the core ``sample``: CoM-free initial
    noise, the projected denoiser, and the result projected (which removes only the tiny noise of a
    final step that ends at sigma(0) > 0 outside the subspace)."""
    from polydiff.core import sample
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f"mask must be a bool tensor (B, N), got {mask.dtype} {tuple(mask.shape)}")
    noise = com_free_noise((mask.shape[0], mask.shape[1], channels), mask, generator)
    D = ProjectedDenoiser(denoiser)
    z = sample(D, noise, path=path, solver=solver, steps=steps, grid=grid, cond={"mask": mask},
               generator=generator, **options)
    return remove_mean(z, mask)


# ------------------------------------------------------------------ the model
def _check_count(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    return v


class EDMModel:
    """EDM on QM9 point sets: atom-count histogram, path, EDMNet.

    ``sample_points(n, ...)`` -> list of (positions (N, 3) Angstrom, types (N,) into ``elements``);
    ``generate(n, steps=None, seed=0)`` -> RDKit molecules with 3-D conformers (EDM's bonds from
    distances; unsanitized, the ``polydiff generate molecules`` contract); ``save`` / ``load`` a folder
    with ``config.json`` and ``model.safetensors``."""

    #: default sampler: EDM's ancestral sampler (``ddpm``), here with fewer steps than EDM's 1000
    default_solver, default_steps, default_grid = "ddpm", 500, "uniform"

    def __init__(self, size_counts: Sequence[float], elements: Sequence[str] = QM9_ELEMENTS, layers: int = 4,
                 hidden: int = 128, coords_range: float = 15.0, type_scale: float = 0.25, precision: float = 1e-5,
                 net: Optional[EDMNet] = None) -> None:
        sc = torch.as_tensor(size_counts, dtype=torch.float64)
        if sc.dim() != 1 or sc.numel() < 2 or (sc < 0).any() or not torch.isfinite(sc).all() or sc[1:].sum() <= 0:
            raise ValueError("size_counts must be non-negative counts of molecules with 0..N atoms, some > 0")
        if sc[0] > 0:
            raise ValueError("size_counts[0] (empty molecules) must be 0")
        elements = tuple(str(e) for e in elements)
        if len(elements) < 1 or len(set(elements)) != len(elements):
            raise ValueError(f"elements must be distinct symbols, got {elements}")
        if not type_scale > 0:
            raise ValueError(f"type_scale must be > 0, got {type_scale}")
        self.size_counts, self.n_max, self.elements = sc, int(sc.numel()) - 1, elements
        self.arch = {"layers": int(layers), "hidden": int(hidden), "coords_range": float(coords_range),
                     "type_scale": float(type_scale), "precision": float(precision)}
        self.type_scale = float(type_scale)
        self.path = PolynomialVP(2.0, precision)
        self.net = net if net is not None else EDMNet(len(elements), hidden, layers, coords_range)
        self.last_stats: Dict[str, Any] = {}

    @property
    def channels(self) -> int:
        return 3 + len(self.elements)

    def loss(self) -> DiffusionLoss:
        """EDM's L_simple: eps-MSE, t uniform in [1e-3, 1] (EDM draws t from {1..T}/T, T = 1000) ."""
        from polydiff.core.losses import UniformTime
        return DiffusionLoss(self.path, prediction="eps", weighting="uniform", time_sampler=UniformTime(1e-3, 1.0))

    def denoiser(self) -> Denoiser:
        """The (unprojected) denoiser D(z, t, mask=...) of the eps network; sampling wraps it in
        :class:`ProjectedDenoiser`."""
        return Denoiser(self.net, self.path, prediction="eps")

    # ------------------------------------------------------------------ data
    def encode(self, points: Sequence[Tuple[Any, Any]], n_max: Optional[int] = None) -> Tuple[Tensor, Tensor]:
        """(z0 (B, N, 3 + K) with CoM-free positions and scaled one-hot types, mask (B, N)) of point sets."""
        if len(points) == 0:
            raise ValueError("encode needs at least one point set")
        n_max = n_max or max(len(p[1]) for p in points)
        z = torch.zeros(len(points), n_max, self.channels)
        sizes = []
        for b, (pos, typ) in enumerate(points):
            pos = torch.as_tensor(pos, dtype=torch.float32)
            typ = torch.as_tensor(typ).long()
            if pos.dim() != 2 or pos.shape[1] != 3 or typ.shape != (pos.shape[0],) or pos.shape[0] > n_max:
                raise ValueError(f"point set {b}: need positions (N, 3) and types (N,), N <= {n_max}; got "
                                 f"{tuple(pos.shape)}, {tuple(typ.shape)}")
            if pos.shape[0] < 1 or not torch.isfinite(pos).all():
                raise ValueError(f"point set {b} is empty or has non-finite positions")
            if int(typ.min()) < 0 or int(typ.max()) >= len(self.elements):
                raise ValueError(f"point set {b}: atom types must lie in [0, {len(self.elements)})")
            n = pos.shape[0]
            z[b, :n, :3] = pos
            z[b, :n, 3:] = torch.nn.functional.one_hot(typ, len(self.elements)).float() * self.type_scale
            sizes.append(n)
        mask = node_mask(torch.tensor(sizes), n_max)
        return remove_mean(z, mask), mask

    def decode(self, z: Tensor, mask: Tensor) -> List[Tuple[Tensor, Tensor]]:
        """Point sets (positions, argmax types) of the real atoms of z."""
        out = []
        for b in range(z.shape[0]):
            m = mask[b]
            out.append((z[b, m, :3].float().clone(), z[b, m, 3:].argmax(-1)))
        return out

    # ------------------------------------------------------------------ sampling
    def sample_sizes(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """n atom counts drawn from the training histogram."""
        from polydiff.core.discrete import categorical
        return categorical(self.size_counts.expand(_check_count(n, "n"), -1), generator)

    @torch.no_grad()
    def sample_points(self, n: int, steps: Optional[int] = None, seed: int = 0, solver: Optional[str] = None,
                      grid: Optional[str] = None, batch_size: int = 250, sizes: Optional[Tensor] = None,
                      denoiser: Any = None, **options: Any) -> List[Tuple[Tensor, Tensor]]:
        """n point sets. Molecules are batched by atom count (no padding work); ``seed`` fixes the
        torch.Generator of the call. ``denoiser`` replaces the model's (e.g. a guided one)."""
        n, batch_size = _check_count(n, "n"), _check_count(batch_size, "batch_size")
        steps = self.default_steps if steps is None else _check_count(steps, "steps")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        g = torch.Generator().manual_seed(seed)
        sizes = self.sample_sizes(n, g) if sizes is None else torch.as_tensor(sizes).long().reshape(-1)
        if sizes.numel() != n:
            raise ValueError(f"sizes has {sizes.numel()} entries for n={n}")
        node_mask(sizes, self.n_max)
        D = self.denoiser() if denoiser is None else denoiser
        self.net.eval()
        out: List[Optional[Tuple[Tensor, Tensor]]] = [None] * n
        for size in torch.unique(sizes).tolist():
            idx = torch.nonzero(sizes == size).reshape(-1)
            for k in range(0, idx.numel(), batch_size):
                part = idx[k:k + batch_size]
                mask = torch.ones(part.numel(), size, dtype=torch.bool)
                z = sample_point_sets(D, mask, self.path, self.channels, solver or self.default_solver, steps,
                                      grid or self.default_grid, g, **options)
                for b, pts in zip(part.tolist(), self.decode(z, mask)):
                    out[b] = pts
        return out  # type: ignore[return-value]

    def generate(self, n: int, steps: Optional[int] = None, seed: int = 0, guidance: Optional[str] = None) -> List[Any]:
        """``polydiff generate molecules`` contract: n RDKit molecules with 3-D conformers (all atoms,
        EDM's bonds from distances, unsanitized; the caller checks validity). ``last_stats`` holds the
        stability of the point sets themselves."""
        from .convert import points_to_mol
        from .metrics import stability
        if guidance is not None:
            raise ValueError(f"the qm9-3d model supports no guidance; got {guidance!r}")
        pts = self.sample_points(n, steps, seed)
        self.last_stats = {"n": n, **stability(pts, self.elements)}
        return [points_to_mol(p, t, self.elements) for p, t in pts]

    # ------------------------------------------------------------------ files
    def config(self) -> Dict[str, Any]:
        return {"model": MODEL_NAME, "elements": list(self.elements), "size_counts": self.size_counts.tolist(),
                "path": self.path.config(), **self.arch}

    def save(self, folder: Union[str, FilePath], extra: Optional[Dict[str, Any]] = None) -> FilePath:
        """Write ``config.json`` and ``model.safetensors`` (float32) into folder."""
        state = {k: v.detach().float() for k, v in self.net.state_dict().items()}
        return write_model_folder(folder, {**self.config(), **(extra or {})}, state)

    @classmethod
    def from_config(cls, cfg: Dict[str, Any]) -> "EDMModel":
        if "size_counts" not in cfg:
            raise ValueError("model config misses 'size_counts'")
        return cls(cfg["size_counts"], cfg.get("elements", QM9_ELEMENTS), **{k: cfg[k] for k in _ARCH_KEYS if k in cfg})

    @classmethod
    def load(cls, folder: Union[str, FilePath]) -> "EDMModel":
        cfg, state = read_model_folder(folder, "EDM 3-D molecule model", MODEL_NAME)
        model = cls.from_config(cfg)
        try:
            model.net.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{folder}: weights do not match the config's architecture: {e}") from None
        model.net.eval()
        return model


# ------------------------------------------------------------------ property guidance (3-D, gradient-based)
PREDICTOR_NAME = "edm-property"


class PropertyPredictor(nn.Module):
    """An E(3)-invariant regressor of a molecular property from a clean point set in the model's
    encoding z = [x, types * type_scale] (B, N, 3 + K): an :class:`EGNN` whose invariant features are
    summed over real atoms and mapped to a scalar, ``mean + std * out`` in the property's units. Used on
    the denoised x0-hat for guidance (Bansal et al.'s universal guidance, ``core.guidance``), the role
    EDM's property classifiers play for evaluation (Hoogeboom et al. 2022, Sec. 5.3)."""

    def __init__(self, num_types: int = len(QM9_ELEMENTS), prop: str = "alpha", hidden: int = 32, layers: int = 3,
                 mean: float = 0.0, std: float = 1.0, type_scale: float = 0.25) -> None:
        super().__init__()
        if not (std > 0 and type_scale > 0 and math.isfinite(mean)):
            raise ValueError(f"need std > 0, type_scale > 0 and a finite mean, got {std}, {type_scale}, {mean}")
        self.num_types, self.prop = int(num_types), str(prop)
        self.hidden, self.layers = int(hidden), int(layers)
        self.mean, self.std, self.type_scale = float(mean), float(std), float(type_scale)
        self.egnn = EGNN(self.num_types, hidden, hidden, layers)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def normalised(self, z: Tensor, mask: Tensor) -> Tensor:
        """(B,) prediction of (property - mean) / std."""
        if z.dim() != 3 or z.shape[-1] != 3 + self.num_types:
            raise ValueError(f"z must have shape (B, N, {3 + self.num_types}), got {tuple(z.shape)}")
        _, h = self.egnn(z[..., :3], z[..., 3:] / self.type_scale, mask)
        return self.head(h.sum(1) / 10.0).squeeze(-1)

    def forward(self, z: Tensor, mask: Tensor) -> Tensor:
        """(B,) predicted property in its units."""
        return self.mean + self.std * self.normalised(z, mask)

    def config(self) -> Dict[str, Any]:
        return {"model": PREDICTOR_NAME, "num_types": self.num_types, "prop": self.prop, "hidden": self.hidden,
                "layers": self.layers, "mean": self.mean, "std": self.std, "type_scale": self.type_scale}

    def save(self, folder: Union[str, FilePath], extra: Optional[Dict[str, Any]] = None) -> FilePath:
        state = {k: v.detach().float() for k, v in self.state_dict().items()}
        return write_model_folder(folder, {**self.config(), **(extra or {})}, state)

    @classmethod
    def load(cls, folder: Union[str, FilePath]) -> "PropertyPredictor":
        cfg, state = read_model_folder(folder, "EDM property predictor", PREDICTOR_NAME)
        keys = ("num_types", "prop", "hidden", "layers", "mean", "std", "type_scale")
        net = cls(**{k: cfg[k] for k in keys if k in cfg})
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{folder}: weights do not match the predictor's config: {e}") from None
        return net.eval()


class _GuidanceInterval(nn.Module):
    """Apply a guided denoiser only at t <= t_stop and the plain one above (near t = 1 alpha is ~3e-3 on
    EDM's path and the guidance factor sigma^2 / alpha amplifies gradient errors; see ``core.guidance``)."""

    def __init__(self, plain: Any, guided: Any, t_stop: float) -> None:
        super().__init__()
        self.plain, self.guided, self.t_stop = plain, guided, float(t_stop)

    def forward(self, z: Tensor, t: Tensor, **cond: Any) -> Tensor:
        t = torch.as_tensor(t, dtype=z.dtype).reshape(-1).expand(z.shape[0])
        inside = t <= self.t_stop
        if bool(inside.all()):
            return self.guided(z, t, **cond)
        if not bool(inside.any()):
            return self.plain(z, t, **cond)
        return torch.where(inside[:, None, None], self.guided(z, t, **cond), self.plain(z, t, **cond))


def property_guided_denoiser(model: EDMModel, predictor: PropertyPredictor, scale: float,
                             target: Optional[float] = None, t_stop: float = 0.5) -> nn.Module:
    """A denoiser for ``EDMModel.sample_points(denoiser=...)`` guided by a property predictor on x0-hat,
    with the core's ``UniversalGuidance`` (forward guidance: score - scale * grad_x loss(D(x_t))).

    loss = -(f(x0-hat) - mean) / std (toward higher values) when ``target`` is None, else
    ((f(x0-hat) - target) / std)^2; applied for t <= ``t_stop``. ``sample_points`` batches molecules
    of one size without padding, so the predictor sees all atoms as real."""
    from polydiff.core.guidance import UniversalGuidance
    if not isinstance(predictor, PropertyPredictor):
        raise ValueError(f"predictor must be a PropertyPredictor, got {type(predictor).__name__}")
    if not (0.0 < t_stop <= 1.0):
        raise ValueError(f"t_stop must lie in (0, 1], got {t_stop}")
    predictor.eval()
    for p in predictor.parameters():
        p.requires_grad_(False)

    def loss_fn(x0: Tensor) -> Tensor:
        mask = torch.ones(x0.shape[:2], dtype=torch.bool, device=x0.device)
        y = predictor.normalised(x0, mask)
        if target is None:
            return -y
        return (y - (float(target) - predictor.mean) / predictor.std) ** 2

    plain = model.denoiser()
    return _GuidanceInterval(plain, UniversalGuidance(plain, loss_fn, scale, model.path), t_stop)


def pretrained(name: str = "qm9-3d") -> EDMModel:
    """A shipped EDM model by name (``PRETRAINED`` lists them)."""
    return EDMModel.load(shipped_folder(name, PRETRAINED, "3-D molecule", "train_edm"))


PREDICTORS = {"alpha": "qm9-3d/alpha-predictor"}


def pretrained_predictor(prop: str = "alpha") -> PropertyPredictor:
    """A shipped property predictor for guidance (``PREDICTORS`` lists them; trained on QM9
    train_first_half with ``train_edm --property``)."""
    if prop not in PREDICTORS:
        raise ValueError(f"unknown shipped property predictor {prop!r}; valid: {', '.join(PREDICTORS)}")
    return PropertyPredictor.load(WEIGHTS_DIR / PREDICTORS[prop])


__all__ = ["PropertyPredictor", "property_guided_denoiser", "remove_mean", "com_free_noise", "node_mask", "EGNN", "EDMNet", "ProjectedDenoiser",
           "sample_point_sets", "EDMModel", "pretrained", "pretrained_predictor", "PREDICTORS", "PRETRAINED", "WEIGHTS_DIR"]
