"""Image operators (polydiff.domains.images.operators) against dense linear algebra on small images."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from operator_checks import assert_svd_matches_dense

from polydiff.core.inverse import LinearOperator, Operator, SVDOperator, posterior_sample
from polydiff.domains.images.operators import (TASKS, KroneckerOperator, PhaseRetrieval, colorize, deblur_motion,
                                               gaussian_kernel, inpaint_box, make_operator, motion_kernel)

torch.set_num_threads(1)
DT = torch.float64
SHAPE = (3, 8, 8)
LINEAR = [t for t in TASKS if t != "phase-retrieval"]


def _rand(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _op(task):
    kw = {"deblur-motion": {"size": 5}, "deblur-gauss": {"std": 0.8}}.get(task, {})
    return make_operator(task, SHAPE, **kw)


@pytest.mark.parametrize("task", LINEAR)
def test_linear_operators_against_dense(task):
    op = _op(task)
    assert isinstance(op, SVDOperator) and op.level == "svd" and op.x_shape == SHAPE
    M = assert_svd_matches_dense(op)                             # SVD and pseudo-inverse against M = dense A
    d = op.d
    x, y = _rand((2,) + op.x_shape, 1), _rand((2,) + op.y_shape, 2)
    torch.testing.assert_close(op.A(x).flatten(1), x.flatten(1) @ M.T)
    torch.testing.assert_close(op.At(y).flatten(1), y.flatten(1) @ M)
    # the closed-form prox against dense algebra
    rho, sy = 0.7, 0.3
    H = M.T @ M / sy ** 2 + rho * torch.eye(d, dtype=DT)
    ref = torch.linalg.solve(H, (y.flatten(1) @ M / sy ** 2 + rho * x.flatten(1)).T).T
    torch.testing.assert_close(op.prox_data(x, y, rho, sy).flatten(1), ref, atol=1e-8, rtol=1e-8)


def test_operators_compute_what_they_say():
    x = _rand((2,) + SHAPE, 3)
    # box inpainting: the centred 4x4 box is missing in every channel
    box = inpaint_box(SHAPE)
    filled = box.At(box.A(x))
    assert torch.equal(filled[:, :, 2:6, 2:6], torch.zeros(2, 3, 4, 4, dtype=DT))
    assert box.d_y == 3 * (64 - 16)
    torch.testing.assert_close(filled[:, :, :2], x[:, :, :2])
    # random inpainting: same mask in every channel, the requested fraction, reproducible by seed
    ri = make_operator("inpaint-random", (3, 32, 32), p_missing=0.7, seed=4)
    m = ri.mask
    assert torch.equal(m[0], m[1]) and torch.equal(m[0], m[2])
    assert abs(float((~m[0]).float().mean()) - 0.7) < 0.06
    assert torch.equal(make_operator("inpaint-random", (3, 32, 32), p_missing=0.7, seed=4).mask, m)
    assert not torch.equal(make_operator("inpaint-random", (3, 32, 32), p_missing=0.7, seed=5).mask, m)
    # average pooling and bicubic are torch's own
    torch.testing.assert_close(make_operator("sr-avg2", SHAPE).A(x), F.avg_pool2d(x, 2))
    torch.testing.assert_close(make_operator("sr-avg4", SHAPE).A(x), F.avg_pool2d(x, 4))
    for f in (2, 4):
        ref = F.interpolate(x, size=(8 // f, 8 // f), mode="bicubic", antialias=True, align_corners=False)
        torch.testing.assert_close(make_operator(f"sr-bicubic{f}", SHAPE).A(x), ref)
    # colorization is the channel mean (keeps [-1, 1])
    torch.testing.assert_close(make_operator("colorize", SHAPE).A(x), x.mean(1, keepdim=True))
    # Gaussian blur = circular convolution with the normalised kernel (direct sum)
    op = make_operator("deblur-gauss", SHAPE, std=0.8)
    k = op.kernel
    assert abs(float(k.sum()) - 1) < 1e-12 and k.shape == (7, 7)     # 2 ceil(3 std) + 1
    ref = torch.zeros_like(x)
    c = k.shape[0] // 2
    for a in range(k.shape[0]):
        for b in range(k.shape[1]):
            ref += k[a, b] * torch.roll(x, shifts=(a - c, b - c), dims=(2, 3))
    torch.testing.assert_close(op.A(x), ref)
    # constants pass through every normalised blur and both average/bicubic down-samplers
    ones = torch.ones((1,) + SHAPE, dtype=DT)
    for task in ("deblur-gauss", "deblur-motion", "sr-avg2", "sr-bicubic2", "colorize"):
        out = _op(task).A(ones)
        torch.testing.assert_close(out, torch.ones_like(out))


def test_kernels():
    k = motion_kernel(9, 0.5, seed=3)
    assert k.shape == (9, 9) and (k >= 0).all() and abs(float(k.sum()) - 1) < 1e-12
    assert torch.equal(k, motion_kernel(9, 0.5, seed=3))
    assert not torch.equal(k, motion_kernel(9, 0.5, seed=4))
    # a motion kernel is a thin path: much more concentrated than a box, centred
    assert int((k > 1e-3).sum()) < 40
    u = torch.arange(9, dtype=DT) - 4
    assert abs(float((k.sum(1) * u).sum())) < 1.0 and abs(float((k.sum(0) * u).sum())) < 1.0
    # intensity 0: a straight line through the centre (point symmetric)
    line = motion_kernel(9, 0.0, seed=1)
    torch.testing.assert_close(line, torch.flip(line, (0, 1)), atol=1e-9, rtol=0)
    g = gaussian_kernel(1.5)
    assert g.shape == (11, 11)
    var = float((g.sum(1) * (torch.arange(11, dtype=DT) - 5) ** 2).sum())
    assert abs(var - 1.5 ** 2) < 1e-2    # truncated at 3 std
    op = deblur_motion((1, 16, 16), kernel=k)
    assert torch.equal(op.kernel, k)


def test_phase_retrieval():
    op = make_operator("phase-retrieval", (2, 4, 4))
    assert isinstance(op, PhaseRetrieval) and isinstance(op, Operator) and not isinstance(op, LinearOperator)
    assert op.level == "forward" and op.y_shape == (2, 8, 8)
    x = _rand((3, 2, 4, 4), 5).clamp(-1, 1)
    # dense check: |W_8 P u W_8^T| with the unitary DFT matrix W and zero padding P (2 on each side)
    n = torch.arange(8, dtype=DT)
    Wm = torch.exp(-2j * torch.pi * n[:, None] * n[None, :] / 8) / 8 ** 0.5
    u = torch.zeros(3, 2, 8, 8, dtype=DT)
    u[:, :, 2:6, 2:6] = (x + 1) / 2
    ref = (Wm @ u.to(Wm.dtype) @ Wm.T).abs()
    torch.testing.assert_close(op.A(x), ref)
    # the trivial ambiguities: translation inside the padding and point reflection keep |F u|
    shifted = torch.full_like(x, -1.0)
    shifted[:, :, 1:, :3] = x[:, :, :3, 1:]
    xs = torch.full((3, 2, 4, 4), -1.0, dtype=DT)
    xs[:, :, :3, 1:] = x[:, :, :3, 1:]
    torch.testing.assert_close(op.A(shifted), op.A(xs))
    torch.testing.assert_close(op.A(torch.flip(x, (2, 3))), op.A(x))
    # differentiable: DPS runs on it
    D = lambda z, t: 0.5 * z
    y = op.A(x[:1])
    out = posterior_sample(D, y, op, path="vp", method="dps", steps=3, sigma_y=0.05,
                           generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 2, 4, 4) and torch.isfinite(out).all()


def test_kronecker_general_axes():
    g = torch.Generator().manual_seed(0)
    mats = [torch.randn(2, 3, generator=g, dtype=DT), None, torch.randn(5, 4, generator=g, dtype=DT)]
    op = KroneckerOperator(mats, (3, 2, 4))                     # one wide and one tall factor
    M = op.dense()
    ref = torch.kron(torch.kron(mats[0], torch.eye(2, dtype=DT)), mats[2])
    torch.testing.assert_close(M, ref)
    s = op.singular_values
    torch.testing.assert_close(torch.sort(s, descending=True).values, torch.linalg.svdvals(ref)[:s.shape[0]])
    y = _rand((2, 2, 2, 5), 9)
    torch.testing.assert_close(op.pinv(y).flatten(1), y.flatten(1) @ torch.linalg.pinv(ref).T)


def test_bad_input():
    with pytest.raises(ValueError, match="valid: inpaint-box"):
        make_operator("inpaint-circle", SHAPE)
    with pytest.raises(ValueError, match="options"):
        make_operator("deblur-gauss", SHAPE, sigma=2.0)
    with pytest.raises(ValueError, match="factor"):
        make_operator("sr-avg3", SHAPE)
    with pytest.raises(ValueError, match="factor"):
        make_operator("sr-bicubic1", SHAPE)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        make_operator("colorize", (8, 8))
    with pytest.raises(ValueError, match="colour"):
        colorize((1, 8, 8))
    with pytest.raises(ValueError, match="does not fit"):
        inpaint_box(SHAPE, box=(4, 4, 6, 2))
    with pytest.raises(ValueError, match="larger than the image"):
        deblur_motion((1, 4, 4), size=9)
    with pytest.raises(ValueError, match="p_missing"):
        make_operator("inpaint-random", SHAPE, p_missing=1.0)
    with pytest.raises(ValueError, match="shape"):
        make_operator("sr-avg2", SHAPE).check_x(torch.zeros(1, 1, 8, 8))
    # an (N, C, H, W) shape is accepted (the batch size is dropped)
    assert make_operator("colorize", (5,) + SHAPE).x_shape == SHAPE
