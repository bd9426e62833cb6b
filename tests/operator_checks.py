"""Shared test check: an SVD operator's implicit SVD and pseudo-inverse against dense linear algebra."""
from __future__ import annotations

import torch

DT = torch.float64


def assert_svd_matches_dense(op, seed: int = 5) -> torch.Tensor:
    """Check V, U orthogonal, A = U S V^T, the singular values, V/U inverting Vt/Ut, and the pseudo-inverse
    against the dense matrix ``op.dense()``; returns that matrix for further checks."""
    M = op.dense()
    d, dy = op.d, op.d_y
    s = op.singular_values.to(DT)
    r = s.shape[0]
    assert r <= min(d, dy)
    Vt = op.Vt(torch.eye(d, dtype=DT).reshape((d,) + op.x_shape)).T        # columns: V^T e_i
    Ut = op.Ut(torch.eye(dy, dtype=DT).reshape((dy,) + op.y_shape)).T
    torch.testing.assert_close(Vt @ Vt.T, torch.eye(d, dtype=DT))
    torch.testing.assert_close(Ut @ Ut.T, torch.eye(dy, dtype=DT))
    S = torch.zeros(dy, d, dtype=DT)
    S[range(r), range(r)] = s
    torch.testing.assert_close(Ut.T @ S @ Vt, M)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((2,) + op.x_shape, generator=g, dtype=DT)
    torch.testing.assert_close(op.V(op.Vt(x)), x)
    yv = torch.randn((2,) + op.y_shape, generator=g, dtype=DT)
    torch.testing.assert_close(op.U(op.Ut(yv)), yv)
    ref = torch.linalg.svdvals(M)
    torch.testing.assert_close(torch.sort(s, descending=True).values[:ref.shape[0]], ref[:r], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(op.pinv(yv).flatten(1), yv.flatten(1) @ torch.linalg.pinv(M, rtol=1e-9).T,
                               atol=1e-8, rtol=1e-8)
    return M
