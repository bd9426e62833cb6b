"""Measurement operators for inverse problems, declared by capability level.

Levels (a higher level can do everything a lower one can; see ``LEVELS``):

  "forward"  ``Operator``               y = A(x): differentiable, possibly nonlinear.
  "linear"   ``LinearOperator``         adds the adjoint ``At`` and ``prox_data`` (closed form or
                                         conjugate gradients).
  "pinv"     ``PseudoInverseOperator``  adds the Moore-Penrose pseudo-inverse ``pinv``.
  "svd"      ``SVDOperator``            A = U diag(s) V^T applied implicitly: ``Vt``, ``V``, ``Ut``,
                                         ``U``, ``singular_values``.

The shape of the hierarchy follows deepinv's Physics -> LinearPhysics -> DecomposablePhysics.

Shapes. An operator maps x of shape (B, *x_shape) to y of shape (B, *y_shape) (B = batch).
Spectral coordinates of an ``SVDOperator`` are flat: ``Vt(x)`` is (B, d) with d = prod(x_shape),
``Ut(y)`` is (B, d_y) with d_y = prod(y_shape), and their first r = len(singular_values)
coordinates are paired: (Ut A x)[:, :r] = s * Vt(x)[:, :r], (Ut A x)[:, r:] = 0. Singular values
may be zero (e.g. a blur that kills some frequencies) and come in no particular order.

Data scale: operators act on the tensor the diffusion model sees (the domain encoder's scale,
e.g. images in [-1, 1]); convert measurements made in data units once, before calling a sampler.

Hooks for later work: latent methods (PSLD, ReSample) compose an operator with a decoder
(``Compose(A, CallableOperator(decoder, ...))`` is the forward-level operator they differentiate);
blind methods (GibbsDDRM, BlindDPS) need an operator family A_phi with gradients in phi: write it as
an operator whose parameters are tensors with ``requires_grad`` (e.g. ``FFTConvolution`` with a
learnable kernel: its SVD is recomputed from ``kernel`` on every call).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple, Union

import torch

Tensor = torch.Tensor
Shape = Tuple[int, ...]

LEVELS = ("forward", "linear", "pinv", "svd")


def level_rank(level: str) -> int:
    return LEVELS.index(level)


def _shape(s: Union[int, Sequence[int]]) -> Shape:
    if isinstance(s, int):
        return (int(s),)
    return tuple(int(v) for v in s)


def _bdot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product over all non-batch dims: (B,)."""
    return (a * b).flatten(1).sum(1)


def _bview(c: Tensor, x: Tensor) -> Tensor:
    return c.reshape((-1,) + (1,) * (x.dim() - 1))


def conjugate_gradient(apply: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor, *, tol: float = 1e-10,
                       max_iter: int = 200) -> Tensor:
    """Solve apply(x) = b per sample (apply symmetric positive semi-definite) by conjugate gradients.

    Batched: every sample runs its own CG (step sizes per sample); stops when every relative
    residual is below ``tol`` or after ``max_iter`` iterations (one host sync per iteration).
    """
    x = x0.clone()
    r = b - apply(x)
    p = r.clone()
    rs = _bdot(r, r)
    bnorm = _bdot(b, b).clamp_min(1e-300)
    for _ in range(max_iter):
        if bool((rs <= tol * tol * bnorm).all()):
            break
        Ap = apply(p)
        den = _bdot(p, Ap)
        a = torch.where(den > 0, rs / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))
        x = x + _bview(a, x) * p
        r = r - _bview(a, x) * Ap
        rs_new = _bdot(r, r)
        beta = torch.where(rs > 0, rs_new / rs.clamp_min(1e-300), torch.zeros_like(rs))
        p = r + _bview(beta, p) * p
        rs = rs_new
    return x


# ============================================================================ base classes
class Operator:
    """Forward-only operator y = A(x) (differentiable with autograd; nonlinear allowed)."""

    level = "forward"

    def __init__(self, x_shape: Union[int, Sequence[int]], y_shape: Union[int, Sequence[int]]) -> None:
        self.x_shape = _shape(x_shape)
        self.y_shape = _shape(y_shape)

    @property
    def d(self) -> int:
        return math.prod(self.x_shape)

    @property
    def d_y(self) -> int:
        return math.prod(self.y_shape)

    def A(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        return self.A(x)

    def check_x(self, x: Tensor, what: str = "x") -> None:
        if not isinstance(x, Tensor) or tuple(x.shape[1:]) != self.x_shape or x.dim() < 1:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{what} must have shape (B, {', '.join(map(str, self.x_shape))}) for "
                             f"{type(self).__name__}, got {shape}")

    def check_y(self, y: Tensor, what: str = "y") -> None:
        if not isinstance(y, Tensor) or y.dim() < 1 or tuple(y.shape[1:]) != self.y_shape:
            shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"{what} must have shape (B, {', '.join(map(str, self.y_shape))}) for "
                             f"{type(self).__name__} (y_shape={self.y_shape}), got {shape}")

    def dense(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The (d_y, d) Jacobian at 0 (the matrix of a linear operator), by applying A to the identity."""
        eye = torch.eye(self.d, dtype=dtype).reshape((self.d,) + self.x_shape)
        return self.A(eye).reshape(self.d, self.d_y).T.contiguous()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(x_shape={self.x_shape}, y_shape={self.y_shape}, level={self.level!r})"


class LinearOperator(Operator):
    """Linear operator: A, its adjoint At, and the proximal map of the Gaussian data term."""

    level = "linear"

    def At(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def AtA(self, x: Tensor) -> Tensor:
        return self.At(self.A(x))

    def AAt(self, y: Tensor) -> Tensor:
        return self.A(self.At(y))

    def prox_data(self, z: Tensor, y: Tensor, rho: Union[float, Tensor], sigma_y: Union[float, Tensor],
                  *, tol: float = 1e-10, max_iter: int = 200) -> Tensor:
        """argmin_x ||y - A x||^2 / (2 sigma_y^2) + rho / 2 ||x - z||^2 (per sample).

        Solves (A^T A + rho sigma_y^2 I) x = A^T y + rho sigma_y^2 z by conjugate gradients started
        at z; rho * sigma_y^2 = 0 gives the least-squares solution closest to z (CG from z stays in
        z + range(A^T)). rho and sigma_y may
        be scalars or per-sample (B,) tensors.
        """
        c = _bview(torch.as_tensor(rho, dtype=z.dtype, device=z.device) *
                   torch.as_tensor(sigma_y, dtype=z.dtype, device=z.device) ** 2 * torch.ones(z.shape[0], dtype=z.dtype, device=z.device), z)
        b = self.At(y) + c * z
        return conjugate_gradient(lambda v: self.AtA(v) + c * v, b, z, tol=tol, max_iter=max_iter)


class PseudoInverseOperator(LinearOperator):
    """Linear operator with a pseudo-inverse A^+ (minimum-norm least squares)."""

    level = "pinv"

    def pinv(self, y: Tensor) -> Tensor:
        raise NotImplementedError


class SVDOperator(PseudoInverseOperator):
    """A = U diag(s) V^T with U, V orthogonal, applied implicitly (see the module docstring for shapes).

    Subclasses implement ``Vt``, ``V``, ``Ut``, ``U`` and ``singular_values``; A, At, pinv and
    prox_data follow in closed form (subclasses may override A / At with direct formulas).
    """

    level = "svd"
    #: singular values at or below this fraction of max(s) count as zero in pinv
    rcond = 1e-10

    def Vt(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def V(self, c: Tensor) -> Tensor:
        raise NotImplementedError

    def Ut(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def U(self, c: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def singular_values(self) -> Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------- generic closed forms
    def _s(self, ref: Tensor) -> Tensor:
        return self.singular_values.to(ref.device, ref.dtype)

    def A(self, x: Tensor) -> Tensor:
        s = self._s(x)
        r = s.shape[0]
        c = self.Vt(x)[:, :r] * s
        c = torch.cat([c, c.new_zeros(c.shape[0], self.d_y - r)], 1)
        return self.U(c)

    def At(self, y: Tensor) -> Tensor:
        s = self._s(y)
        r = s.shape[0]
        c = self.Ut(y)[:, :r] * s
        c = torch.cat([c, c.new_zeros(c.shape[0], self.d - r)], 1)
        return self.V(c)

    def _sinv(self, s: Tensor) -> Tensor:
        keep = s > self.rcond * s.abs().max().clamp_min(1e-300)
        return torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))

    def pinv(self, y: Tensor) -> Tensor:
        s = self._s(y)
        r = s.shape[0]
        c = self.Ut(y)[:, :r] * self._sinv(s)
        c = torch.cat([c, c.new_zeros(c.shape[0], self.d - r)], 1)
        return self.V(c)

    def prox_data(self, z: Tensor, y: Tensor, rho: Union[float, Tensor], sigma_y: Union[float, Tensor],
                  **_: object) -> Tensor:
        """Closed form in spectral coordinates: xbar_i = (s_i ybar_i + rho sigma_y^2 zbar_i) / (s_i^2 + rho sigma_y^2)."""
        s = self._s(z)
        r = s.shape[0]
        B = z.shape[0]
        c = (torch.as_tensor(rho, dtype=z.dtype, device=z.device) *
             torch.as_tensor(sigma_y, dtype=z.dtype, device=z.device) ** 2 * torch.ones(B, dtype=z.dtype, device=z.device))[:, None]
        zb = self.Vt(z)
        yb = self.Ut(y)[:, :r]
        den = s * s + c
        ok = den > 0
        head = torch.where(ok, (s * yb + c * zb[:, :r]) / torch.where(ok, den, torch.ones_like(den)), zb[:, :r])
        return self.V(torch.cat([head, zb[:, r:]], 1))


# ============================================================================ generic implementations
class MatrixOperator(SVDOperator):
    """Dense matrix A of shape (d_y, d) acting on x of shape (B, *x_shape) with prod(x_shape) = d.

    The SVD (float64, full V) is computed once on first use.
    """

    def __init__(self, A: Tensor, x_shape: Optional[Sequence[int]] = None) -> None:
        A = torch.as_tensor(A)
        if A.dim() != 2:
            raise ValueError(f"MatrixOperator needs a 2-D matrix (d_y, d), got shape {tuple(A.shape)}")
        if not torch.isfinite(A).all():
            raise ValueError("MatrixOperator: the matrix has NaN or inf entries")
        x_shape = (A.shape[1],) if x_shape is None else _shape(x_shape)
        if math.prod(x_shape) != A.shape[1]:
            raise ValueError(f"x_shape {x_shape} does not match the matrix's {A.shape[1]} columns")
        super().__init__(x_shape, (A.shape[0],))
        self.matrix = A
        self._svd = None

    def _get_svd(self):
        if self._svd is None:
            U, s, Vh = torch.linalg.svd(self.matrix.double(), full_matrices=True)
            self._svd = (U, s, Vh)
        return self._svd

    def _m(self, ref: Tensor, m: Tensor) -> Tensor:
        return m.to(ref.device, ref.dtype)

    def A(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self._m(x, self.matrix).T

    def At(self, y: Tensor) -> Tensor:
        return (y @ self._m(y, self.matrix)).reshape((-1,) + self.x_shape)

    def Vt(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self._m(x, self._get_svd()[2]).T

    def V(self, c: Tensor) -> Tensor:
        return (c @ self._m(c, self._get_svd()[2])).reshape((-1,) + self.x_shape)

    def Ut(self, y: Tensor) -> Tensor:
        return y @ self._m(y, self._get_svd()[0])

    def U(self, c: Tensor) -> Tensor:
        return c @ self._m(c, self._get_svd()[0]).T

    @property
    def singular_values(self) -> Tensor:
        return self._get_svd()[1]


class MaskOperator(SVDOperator):
    """Coordinate mask (inpainting / imputation): y = x[:, mask], flattened to (B, n_observed).

    mask: boolean tensor of shape x_shape. SVD: U = I, s = 1, V^T x = (observed, unobserved).
    """

    def __init__(self, mask: Tensor) -> None:
        mask = torch.as_tensor(mask, dtype=torch.bool)
        n = int(mask.sum())
        if n == 0:
            raise ValueError("MaskOperator: the mask observes nothing")
        super().__init__(tuple(mask.shape), (n,))
        flat = mask.reshape(-1)
        self.mask = mask
        self._obs = flat.nonzero().reshape(-1)
        self._perm = torch.cat([self._obs, (~flat).nonzero().reshape(-1)])
        self._inv = torch.argsort(self._perm)

    def A(self, x: Tensor) -> Tensor:
        return x.flatten(1)[:, self._obs.to(x.device)]

    def At(self, y: Tensor) -> Tensor:
        out = y.new_zeros(y.shape[0], self.d)
        out[:, self._obs.to(y.device)] = y
        return out.reshape((-1,) + self.x_shape)

    def pinv(self, y: Tensor) -> Tensor:
        return self.At(y)

    def Vt(self, x: Tensor) -> Tensor:
        return x.flatten(1)[:, self._perm.to(x.device)]

    def V(self, c: Tensor) -> Tensor:
        return c[:, self._inv.to(c.device)].reshape((-1,) + self.x_shape)

    def Ut(self, y: Tensor) -> Tensor:
        return y

    def U(self, c: Tensor) -> Tensor:
        return c

    @property
    def singular_values(self) -> Tensor:
        return torch.ones(self.d_y, dtype=torch.float64)


def helmert(m: int) -> Tensor:
    """An orthogonal (m, m) matrix whose first column is 1/sqrt(m) (the Helmert basis)."""
    H = torch.zeros(m, m, dtype=torch.float64)
    H[:, 0] = 1.0 / math.sqrt(m)
    for k in range(1, m):
        H[:k, k] = 1.0 / math.sqrt(k * (k + 1))
        H[k, k] = -k / math.sqrt(k * (k + 1))
    return H


class BlockAverage(SVDOperator):
    """Super-resolution by block averaging over the trailing spatial dims.

    x_shape = (*lead, n_1, ..., n_k), factors = (f_1, ..., f_k) dividing n_i; y has shape
    (*lead, n_1/f_1, ..., n_k/f_k) with each entry the mean of its f_1 x ... x f_k block.
    SVD: U = I, s = 1/sqrt(m) with m = prod(f), V = the Helmert basis inside each block (its first
    vector, the block mean direction, pairs with y).
    """

    def __init__(self, x_shape: Sequence[int], factors: Union[int, Sequence[int]]) -> None:
        x_shape = _shape(x_shape)
        factors = _shape(factors)
        k = len(factors)
        if k > len(x_shape) or any(n % f for n, f in zip(x_shape[-k:], factors)) or min(factors) < 1:
            raise ValueError(f"BlockAverage: factors {factors} must divide the trailing dims of {x_shape}")
        self.lead, self.spatial, self.factors = x_shape[:-k], x_shape[-k:], factors
        self.coarse = tuple(n // f for n, f in zip(self.spatial, factors))
        super().__init__(x_shape, self.lead + self.coarse)
        self.m = math.prod(factors)
        self._H = helmert(self.m)

    def _blocks(self, x: Tensor) -> Tensor:
        """(B, *lead, *coarse, m)."""
        B, L, k = x.shape[0], len(self.lead), len(self.factors)
        shp = (B,) + self.lead + tuple(v for c, f in zip(self.coarse, self.factors) for v in (c, f))
        xb = x.reshape(shp)
        base = 1 + L
        perm = list(range(base)) + [base + 2 * i for i in range(k)] + [base + 2 * i + 1 for i in range(k)]
        return xb.permute(perm).reshape((B,) + self.lead + self.coarse + (self.m,))

    def _unblocks(self, xb: Tensor) -> Tensor:
        B, L, k = xb.shape[0], len(self.lead), len(self.factors)
        xb = xb.reshape((B,) + self.lead + self.coarse + self.factors)
        base = 1 + L
        perm = list(range(base))
        for i in range(k):
            perm += [base + i, base + k + i]
        return xb.permute(perm).reshape((B,) + self.x_shape)

    def A(self, x: Tensor) -> Tensor:
        return self._blocks(x).mean(-1)

    def At(self, y: Tensor) -> Tensor:
        return self._unblocks((y / self.m)[..., None].expand(y.shape + (self.m,)))

    def pinv(self, y: Tensor) -> Tensor:
        return self._unblocks(y[..., None].expand(y.shape + (self.m,)))

    def Vt(self, x: Tensor) -> Tensor:
        c = self._blocks(x) @ self._H.to(x.device, x.dtype)          # (B, ..., m)
        c = c.reshape(x.shape[0], -1, self.m)
        return torch.cat([c[:, :, 0], c[:, :, 1:].reshape(x.shape[0], -1)], 1)

    def V(self, c: Tensor) -> Tensor:
        B, n = c.shape[0], self.d_y
        head, tail = c[:, :n, None], c[:, n:].reshape(B, n, self.m - 1)
        cb = torch.cat([head, tail], 2) @ self._H.to(c.device, c.dtype).T
        return self._unblocks(cb.reshape((B,) + self.lead + self.coarse + (self.m,)))

    def Ut(self, y: Tensor) -> Tensor:
        return y.flatten(1)

    def U(self, c: Tensor) -> Tensor:
        return c.reshape((-1,) + self.y_shape)

    @property
    def singular_values(self) -> Tensor:
        return torch.full((self.d_y,), 1.0 / math.sqrt(self.m), dtype=torch.float64)


def _hartley(x: Tensor, dims: Tuple[int, ...]) -> Tensor:
    """Orthonormal discrete Hartley transform over ``dims``: Re(F x) - Im(F x) (symmetric, involutory)."""
    X = torch.fft.fftn(x, dim=dims, norm="ortho")
    return X.real - X.imag


class FFTConvolution(SVDOperator):
    """Circular convolution with a real kernel over the trailing dims (deblurring), y of x's shape.

    kernel: real tensor over the k trailing spatial dims of x_shape (size <= the spatial size),
    its centre (index size // 2 on each axis) placed at the origin. The same kernel acts on every
    leading (channel) index.

    Real SVD in the Fourier basis: with khat = FFT(kernel) (Hermitian, since the kernel is real),
    A = R_phase C_|khat|, where C_|khat| (spectrum |khat|, real and even) is diagonal in the
    orthonormal discrete Hartley basis H (real, H = H^T = H^-1) and R_phase (spectrum khat/|khat|,
    a unit-modulus Hermitian spectrum) is an orthogonal circular convolution. Hence
    V = H, s = |khat| (one value per frequency, in FFT index order, flattened with the channels),
    U = R_phase H: all real, no complex bookkeeping in the samplers.
    """

    def __init__(self, kernel: Tensor, x_shape: Sequence[int]) -> None:
        x_shape = _shape(x_shape)
        kernel = torch.as_tensor(kernel)
        if kernel.is_complex():
            raise ValueError("FFTConvolution needs a real kernel")
        k = kernel.dim()
        if k == 0 or k > len(x_shape) or any(a > b for a, b in zip(kernel.shape, x_shape[-k:])):
            raise ValueError(f"FFTConvolution: kernel shape {tuple(kernel.shape)} does not fit x_shape {x_shape}")
        super().__init__(x_shape, x_shape)
        self.kernel = kernel
        self.dims = tuple(range(-k, 0))
        self.spatial = x_shape[-k:]
        self.lead = x_shape[:-k]

    def _khat(self, ref: Tensor) -> Tensor:
        k = self.kernel.to(ref.device, ref.dtype)
        pad = torch.zeros(self.spatial, dtype=ref.dtype, device=ref.device)
        pad[tuple(slice(0, n) for n in k.shape)] = k
        pad = torch.roll(pad, shifts=tuple(-(n // 2) for n in k.shape), dims=tuple(range(k.dim())))
        return torch.fft.fftn(pad, norm="backward")

    def _filter(self, x: Tensor, spec: Tensor) -> Tensor:
        return torch.fft.ifftn(torch.fft.fftn(x, dim=self.dims) * spec, dim=self.dims).real

    def A(self, x: Tensor) -> Tensor:
        return self._filter(x, self._khat(x))

    def At(self, y: Tensor) -> Tensor:
        return self._filter(y, self._khat(y).conj())

    def _phase(self, ref: Tensor) -> Tensor:
        kh = self._khat(ref)
        mag = kh.abs()
        return torch.where(mag > 0, kh / torch.where(mag > 0, mag, torch.ones_like(mag)), torch.ones_like(kh))

    def Vt(self, x: Tensor) -> Tensor:
        return _hartley(x, self.dims).flatten(1)

    def V(self, c: Tensor) -> Tensor:
        return _hartley(c.reshape((-1,) + self.x_shape), self.dims)

    def Ut(self, y: Tensor) -> Tensor:
        return _hartley(self._filter(y, self._phase(y).conj()), self.dims).flatten(1)

    def U(self, c: Tensor) -> Tensor:
        return self._filter(_hartley(c.reshape((-1,) + self.x_shape), self.dims), self._phase(c))

    @property
    def singular_values(self) -> Tensor:
        ref = torch.zeros((), dtype=torch.float64)
        mag = self._khat(ref).abs()
        return mag.expand(self.lead + self.spatial).reshape(-1)


class PartialFourier(LinearOperator):
    """MRI-style subsampled orthonormal FFT over the trailing dims of a real x.

    mask: boolean over the k trailing spatial dims; y = (real, imag) of the sampled frequencies,
    shape (*lead, n_sampled, 2). The adjoint of this real-linear map R^d -> R^(2 n) is
    A^T w = Re(F^H P^T w) (F^H: inverse orthonormal FFT, P^T: zero-filling).
    """

    def __init__(self, mask: Tensor, x_shape: Sequence[int]) -> None:
        x_shape = _shape(x_shape)
        mask = torch.as_tensor(mask, dtype=torch.bool)
        k = mask.dim()
        if k == 0 or tuple(mask.shape) != x_shape[-k:]:
            raise ValueError(f"PartialFourier: mask shape {tuple(mask.shape)} must equal the trailing dims of {x_shape}")
        n = int(mask.sum())
        if n == 0:
            raise ValueError("PartialFourier: the mask samples no frequency")
        self.lead, self.spatial, self.mask = x_shape[:-k], x_shape[-k:], mask
        self.dims = tuple(range(-k, 0))
        super().__init__(x_shape, self.lead + (n, 2))

    def A(self, x: Tensor) -> Tensor:
        X = torch.fft.fftn(x, dim=self.dims, norm="ortho")
        lead = X.shape[:X.dim() - len(self.spatial)]
        sel = X.reshape(lead + (-1,))[..., self.mask.reshape(-1).to(x.device)]
        return torch.view_as_real(sel.contiguous())

    def At(self, y: Tensor) -> Tensor:
        w = torch.view_as_complex(y.contiguous())
        full = w.new_zeros(w.shape[:-1] + (math.prod(self.spatial),))
        full[..., self.mask.reshape(-1).to(y.device)] = w
        full = full.reshape(w.shape[:-1] + self.spatial)
        return torch.fft.ifftn(full, dim=self.dims, norm="ortho").real


class Compose(Operator):
    """Composition Compose(A_1, ..., A_n)(x) = A_1(A_2(...A_n(x))) (the last one acts first).

    The result is linear (with At) when every factor is linear, forward-only otherwise; an SVD of a
    composition is not available implicitly.
    """

    def __new__(cls, *ops: Operator):
        if cls is Compose and ops and all(isinstance(o, LinearOperator) for o in ops):
            return super().__new__(LinearCompose)
        return super().__new__(cls)

    def __init__(self, *ops: Operator) -> None:
        if not ops or not all(isinstance(o, Operator) for o in ops):
            raise ValueError("Compose needs one or more polydiff.core.inverse operators")
        for outer, inner in zip(ops[:-1], ops[1:]):
            if outer.x_shape != inner.y_shape:
                raise ValueError(f"Compose: {type(inner).__name__} outputs {inner.y_shape} but "
                                 f"{type(outer).__name__} expects {outer.x_shape}")
        super().__init__(ops[-1].x_shape, ops[0].y_shape)
        self.ops = ops

    def A(self, x: Tensor) -> Tensor:
        for op in reversed(self.ops):
            x = op.A(x)
        return x


class LinearCompose(Compose, LinearOperator):
    """Composition of linear operators (what ``Compose`` returns when every factor is linear)."""

    level = "linear"

    def At(self, y: Tensor) -> Tensor:
        for op in self.ops:
            y = op.At(y)
        return y


class CallableOperator(Operator):
    """Wrap a function A(x) (and optionally its adjoint) as an operator.

    linear=False: forward-only. linear=True: a linear operator; the adjoint is ``adjoint`` if given,
    else computed by autograd (A^T y = grad_x <A(x), y>, exact for linear A).
    """

    def __new__(cls, fn=None, x_shape=None, y_shape=None, *, adjoint=None, linear: bool = False):
        if cls is CallableOperator and (linear or adjoint is not None):
            return super().__new__(LinearCallableOperator)
        return super().__new__(cls)

    def __init__(self, fn: Callable[[Tensor], Tensor], x_shape: Sequence[int], y_shape: Sequence[int], *,
                 adjoint: Optional[Callable[[Tensor], Tensor]] = None, linear: bool = False) -> None:
        if not callable(fn):
            raise ValueError("CallableOperator needs a callable fn(x) -> y")
        super().__init__(x_shape, y_shape)
        self.fn = fn
        self.adjoint = adjoint

    def A(self, x: Tensor) -> Tensor:
        return self.fn(x)


class LinearCallableOperator(CallableOperator, LinearOperator):
    level = "linear"

    def At(self, y: Tensor) -> Tensor:
        if self.adjoint is not None:
            return self.adjoint(y)
        with torch.enable_grad():
            x = torch.zeros((y.shape[0],) + self.x_shape, dtype=y.dtype, device=y.device, requires_grad=True)
            (g,) = torch.autograd.grad(_bdot(self.fn(x), y).sum(), x)
        return g


__all__ = ["LEVELS", "level_rank", "conjugate_gradient", "Operator", "LinearOperator", "PseudoInverseOperator",
           "SVDOperator", "MatrixOperator", "MaskOperator", "BlockAverage", "FFTConvolution", "PartialFourier",
           "Compose", "LinearCompose", "CallableOperator", "LinearCallableOperator", "helmert"]
