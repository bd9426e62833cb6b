"""Operators of polydiff.core.inverse against dense linear algebra (matrices built by applying A to I)."""
from __future__ import annotations

import pytest
import torch
from operator_checks import assert_svd_matches_dense

from polydiff.core.inverse import (BlockAverage, CallableOperator, Compose, FFTConvolution, LinearOperator,
                                   MaskOperator, MatrixOperator, PartialFourier, SVDOperator, conjugate_gradient)

torch.set_num_threads(1)
DT = torch.float64


def _ops():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(3, 4, generator=g) > 0.5
    mask[0, 0] = True
    fmask = torch.rand(4, 6, generator=g) > 0.4
    fmask[0, 0] = True
    blur = torch.rand(3, 3, generator=g, dtype=DT)
    blur1d = torch.tensor([0.25, 0.5, 0.25], dtype=DT)
    return {
        "matrix_wide": MatrixOperator(torch.randn(3, 7, generator=g, dtype=DT)),
        "matrix_tall": MatrixOperator(torch.randn(6, 4, generator=g, dtype=DT)),
        "matrix_shaped": MatrixOperator(torch.randn(5, 6, generator=g, dtype=DT), x_shape=(2, 3)),
        "mask": MaskOperator(mask),
        "block": BlockAverage((2, 4, 6), (2, 3)),
        "block1d": BlockAverage((8,), 4),
        "conv2d": FFTConvolution(blur, (2, 5, 6)),
        "conv1d": FFTConvolution(blur1d, (8,)),          # symmetric kernel with a zero frequency
        "fourier": PartialFourier(fmask, (1, 4, 6)),
        "compose": Compose(MatrixOperator(torch.randn(3, 5, generator=g, dtype=DT)), MaskOperator(torch.tensor([1, 0, 1, 1, 1, 1, 0], dtype=torch.bool))),
        "callable_lin": CallableOperator(lambda x: x[:, :3] - x[:, 1:4], (5,), (3,), linear=True),
    }


OPS = _ops()


def _rand(shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


@pytest.mark.parametrize("name", sorted(OPS))
def test_adjoint_and_dense(name):
    op = OPS[name]
    assert isinstance(op, LinearOperator)
    M = op.dense()
    x = _rand((4,) + op.x_shape, 1)
    y = _rand((4,) + op.y_shape, 2)
    Ax = op.A(x)
    assert Ax.shape == (4,) + op.y_shape
    torch.testing.assert_close(Ax.flatten(1), x.flatten(1) @ M.T)
    Aty = op.At(y)
    assert Aty.shape == (4,) + op.x_shape
    torch.testing.assert_close(Aty.flatten(1), y.flatten(1) @ M)
    # <Ax, y> = <x, A^T y>
    torch.testing.assert_close((Ax * y).flatten(1).sum(1), (x * Aty).flatten(1).sum(1))


@pytest.mark.parametrize("name", sorted(OPS))
def test_prox_against_dense(name):
    op = OPS[name]
    M = op.dense()
    z = _rand((3,) + op.x_shape, 3)
    y = _rand((3,) + op.y_shape, 4)
    rho, sy = 0.7, 0.3
    H = M.T @ M / sy ** 2 + rho * torch.eye(op.d, dtype=DT)
    ref = torch.linalg.solve(H, (y.flatten(1) @ M / sy ** 2 + rho * z.flatten(1)).T).T
    torch.testing.assert_close(op.prox_data(z, y, rho, sy).flatten(1), ref, atol=1e-7, rtol=1e-7)
    # noiseless limit: the least-squares solution closest to z
    P = torch.linalg.pinv(M)
    ref0 = z.flatten(1) + (y.flatten(1) - z.flatten(1) @ M.T) @ P.T
    torch.testing.assert_close(op.prox_data(z, y, rho, 0.0).flatten(1), ref0, atol=1e-6, rtol=1e-6)


SVD_OPS = [n for n in sorted(OPS) if isinstance(OPS[n], SVDOperator)]


@pytest.mark.parametrize("name", SVD_OPS)
def test_svd_against_dense(name):
    assert_svd_matches_dense(OPS[name])


def test_levels_and_compose():
    assert OPS["matrix_wide"].level == "svd" and OPS["fourier"].level == "linear"
    assert OPS["compose"].level == "linear"
    nl = CallableOperator(lambda x: x[:, :2] ** 2, (4,), (2,))
    assert nl.level == "forward" and not isinstance(nl, LinearOperator)
    c = Compose(nl, OPS["callable_lin"].__class__(lambda x: x.flip(1)[:, :4], (6,), (4,), linear=True))
    assert c.level == "forward"
    with pytest.raises(ValueError, match="outputs"):
        Compose(OPS["mask"], OPS["matrix_wide"])


def test_callable_adjoint_autograd_and_cg():
    op = OPS["callable_lin"]
    M = op.dense()
    A = M.T @ M + 0.1 * torch.eye(op.d, dtype=DT)
    b = _rand((3, op.d), 7)
    x = conjugate_gradient(lambda v: v @ A.T, b, torch.zeros_like(b))
    torch.testing.assert_close(x, torch.linalg.solve(A, b.T).T)


def test_bad_construction():
    with pytest.raises(ValueError):
        MatrixOperator(torch.ones(3))
    with pytest.raises(ValueError):
        MaskOperator(torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError):
        BlockAverage((5, 6), (2, 3))
    with pytest.raises(ValueError, match="shape"):
        OPS["matrix_wide"].check_y(torch.zeros(2, 4))
