"""Gaussian paths (polydiff.core.paths) against finite differences and closed forms, in float64."""
from __future__ import annotations

import math

import pytest
import torch

from polydiff.core import paths as P

F64 = torch.float64
VP_LIN, VP_COS = P.VP("linear"), P.VP("cosine")
ZTSNR = P.ZeroTerminalSNR(P.VP())
ALL = [VP_LIN, VP_COS, P.SubVP(), P.VE(), P.EDM(), P.Flow(), P.Shifted(P.Flow(), 3.0), P.Shifted(P.Flow(), 0.3),
       P.Shifted(VP_COS, 2.0), P.Shifted(P.VP(), 0.5), P.Shifted(P.SubVP(), 0.5), P.Shifted(ZTSNR, 3.0), ZTSNR]
POLY = P.PolynomialVP()
ALL.append(POLY)
VP_FAMILY = [VP_LIN, VP_COS, P.Shifted(VP_COS, 2.0), P.Shifted(P.VP(), 0.5), ZTSNR, P.Shifted(ZTSNR, 3.0), POLY]


def t64(*v) -> torch.Tensor:
    return torch.tensor(v, dtype=F64)


def central_difference(f, t: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Fourth-order central difference (error ~h^4 f^(5), rounding ~1e-16 |f| / h)."""
    return (-f(t + 2 * h) + 8 * f(t + h) - 8 * f(t - h) + f(t - 2 * h)) / (12 * h)


@pytest.mark.parametrize("path", ALL, ids=repr)
@pytest.mark.parametrize("name", ["alpha", "sigma", "logsnr"])
def test_derivatives_match_finite_differences(path, name):
    t = torch.linspace(0.02, 0.98, 49, dtype=F64)
    exact = getattr(path, "d_" + name)(t)
    fd = central_difference(getattr(path, name), t)
    assert torch.allclose(exact, fd, rtol=1e-7, atol=1e-9), (exact - fd).abs().max()


@pytest.mark.parametrize("path", ALL, ids=repr)
def test_t_from_logsnr_inverts_logsnr(path):
    t = torch.cat([t64(1e-6, 1e-4, 1e-3), torch.linspace(0.01, 0.99, 99, dtype=F64), t64(0.999, 0.99999)])
    back = path.t_from_logsnr(path.logsnr(t))
    assert torch.allclose(back, t, rtol=1e-9, atol=1e-12), (back - t).abs().max()


@pytest.mark.parametrize("path", ALL, ids=repr)
def test_logsnr_is_log_alpha_over_sigma_and_decreasing(path):
    t = torch.linspace(0.01, 0.99, 99, dtype=F64)
    lam = path.logsnr(t)
    assert torch.allclose(lam, torch.log(path.alpha(t) / path.sigma(t)), rtol=1e-12, atol=1e-12)
    assert (lam[1:] < lam[:-1]).all() and (path.d_logsnr(t) < 0).all()


@pytest.mark.parametrize("path", ALL, ids=repr)
def test_derivatives_are_finite_wherever_solvers_use_them(path):
    """alpha' is finite on [0, 1] and sigma' on (0, 1]: Euler/Heun start at t = 1 on every path."""
    t = torch.cat([t64(0.0, 1e-9), torch.linspace(0.1, 0.9, 9, dtype=F64), t64(1 - 1e-9, 1.0)])
    assert torch.isfinite(path.d_alpha(t)).all()
    assert torch.isfinite(path.d_sigma(t[1:])).all()


def test_ends_as_documented():
    zero, one = t64(0.0), t64(1.0)
    vp = VP_LIN
    assert vp.alpha(zero) == 1 and vp.sigma(zero) == 0 and vp.logsnr(zero) == math.inf
    assert math.isclose(float(vp.alpha(one)), math.exp(-0.25 * 19.9 - 0.05), rel_tol=1e-15)
    assert VP_COS.alpha(zero) == 1 and VP_COS.sigma(zero) == 0
    assert VP_COS.alpha(one) == 0 and VP_COS.sigma(one) == 1 and VP_COS.logsnr(one) == -math.inf
    sub = P.SubVP()
    assert sub.sigma(zero) == 0 and math.isclose(float(sub.sigma(one)), 1 - float(vp.alpha(one)) ** 2, rel_tol=1e-15)
    for p in (P.VE(0.01, 50.0), P.EDM(0.01, 50.0, 7.0)):
        assert p.alpha(zero) == 1 and p.alpha(one) == 1
        assert math.isclose(float(p.sigma(zero)), 0.01, rel_tol=1e-13)
        assert math.isclose(float(p.sigma(one)), 50.0, rel_tol=1e-13)
    flow = P.Flow()
    assert (flow.alpha(zero), flow.sigma(zero), flow.alpha(one), flow.sigma(one)) == (1, 0, 0, 1)
    assert flow.logsnr(zero) == math.inf and flow.logsnr(one) == -math.inf
    for p in ALL:   # the inverse maps the infinite log-SNRs onto the ends
        if not math.isfinite(float(p.logsnr(zero))):
            assert p.t_from_logsnr(t64(math.inf)) == 0
        if not math.isfinite(float(p.logsnr(one))):
            assert p.t_from_logsnr(t64(-math.inf)) == 1


def test_closed_forms():
    t = torch.linspace(0, 1, 11, dtype=F64)
    beta = 0.1 + t * 19.9
    assert torch.allclose(VP_LIN.alpha(t), torch.exp(-0.25 * t * t * 19.9 - 0.05 * t), rtol=1e-15)
    s = 0.008
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    assert torch.allclose(VP_COS.alpha(t) ** 2, f / f[0], rtol=1e-12, atol=1e-15)
    assert torch.allclose(P.SubVP().sigma(t), 1 - VP_LIN.alpha(t) ** 2, rtol=1e-13, atol=0)
    ve = P.VE(0.01, 50.0)
    assert torch.allclose(ve.sigma(t), 0.01 * 5000.0 ** t, rtol=1e-13)
    edm = P.EDM(0.002, 80.0, 7.0)
    expected = (0.002 ** (1 / 7) + t * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
    assert torch.allclose(edm.sigma(t), expected, rtol=1e-13)
    assert torch.allclose(VP_LIN.d_alpha(t) / VP_LIN.alpha(t), -beta / 2, rtol=1e-13)


@pytest.mark.parametrize("path", VP_FAMILY, ids=repr)
def test_vp_paths_preserve_variance(path):
    assert path.variance_preserving
    t = torch.linspace(0, 1, 101, dtype=F64)
    assert torch.allclose(path.alpha(t) ** 2 + path.sigma(t) ** 2, torch.ones_like(t), atol=1e-15, rtol=0)


@pytest.mark.parametrize("path", [VP_COS, ZTSNR, P.Shifted(P.VP(), 0.5), P.Shifted(VP_COS, 2.0)], ids=repr)
def test_sigma_is_accurate_near_the_data_end(path):
    """sigma^2 ~ -2 alpha'(0) t for t -> 0: no cancellation in 1 - alpha^2 (relative error ~ t)."""
    t = t64(1e-12, 1e-10)
    slope = -2.0 * float(path.alpha(t64(0.0)) * path.d_alpha(t64(0.0)))
    assert torch.allclose(path.sigma(t) ** 2, slope * t, rtol=1e-7, atol=0)


@pytest.mark.parametrize("shift", [0.5, 3.0, 8.0])
def test_shifted_flow_is_sd3_shift(shift):
    path = P.Shifted(P.Flow(), shift)
    t = torch.linspace(0, 1, 41, dtype=F64)
    tp = shift * t / (1 + (shift - 1) * t)
    assert torch.allclose(path.sigma(t), tp, atol=1e-15, rtol=1e-14)
    assert torch.allclose(path.alpha(t), 1 - tp, atol=1e-15, rtol=1e-14)
    # dt'/dt = shift / (1 + (shift - 1) t)^2, exactly, including both ends
    rate = shift / (1 + (shift - 1) * t) ** 2
    assert torch.allclose(path.d_sigma(t), rate, rtol=1e-13, atol=0)
    assert torch.allclose(path.d_alpha(t), -rate, rtol=1e-13, atol=0)
    inner = t[1:-1]
    assert torch.allclose(path.logsnr(inner), P.Flow().logsnr(inner) - math.log(shift), atol=1e-12, rtol=1e-13)


def test_shifted_vp_follows_the_log_snr_shift():
    """alpha^2 = sigmoid(2 (lambda - log shift)) on a VP base; at t = 0 sigma^2 ~ t, so dt'/dt(0) = shift^2."""
    for base, shift in [(P.VP(), 0.5), (VP_COS, 2.0), (ZTSNR, 3.0)]:
        path = P.Shifted(base, shift)
        t = torch.linspace(0.05, 0.95, 19, dtype=F64)
        assert torch.allclose(path.alpha(t) ** 2, torch.sigmoid(2 * (base.logsnr(t) - math.log(shift))), rtol=1e-12)
        zero = t64(0.0)
        assert math.isclose(float(path.d_alpha(zero)), float(base.d_alpha(zero)) * shift ** 2, rel_tol=1e-12)


def test_shift_beyond_the_base_range_is_refused():
    """VP-linear and EDM stop at a finite log-SNR: a warp past it would leave [0, 1]."""
    for base, shift in [(P.VP(), 2.0), (P.EDM(), 3.0), (P.VE(), 0.5), (P.SubVP(), 2.0)]:
        with pytest.raises(ValueError, match="infinite"):
            P.Shifted(base, shift)


def test_zero_terminal_snr_rescales_alpha():
    base, path = P.VP(), ZTSNR
    t = torch.linspace(0, 1, 51, dtype=F64)
    a0, a1 = float(base.alpha(t64(0.0))), float(base.alpha(t64(1.0)))
    assert path.alpha(t64(1.0)) == 0 and path.logsnr(t64(1.0)) == -math.inf
    assert path.alpha(t64(0.0)) == a0
    assert torch.allclose(path.alpha(t), (base.alpha(t) - a1) * a0 / (a0 - a1), rtol=1e-14, atol=1e-16)
    with pytest.raises(ValueError, match="variance-preserving"):
        P.ZeroTerminalSNR(P.VE())


@pytest.mark.parametrize("path", ALL, ids=repr)
def test_sde_reproduces_the_marginal_variance(path):
    """Forward SDE dx = f x dt + g dW: d(sigma^2)/dt = 2 f sigma^2 + g^2 and f = (log alpha)'."""
    t = torch.linspace(0.05, 0.95, 19, dtype=F64)
    f, g2 = path.sde(t)
    d_var = central_difference(lambda u: path.sigma(u) ** 2, t)
    d_log_alpha = central_difference(lambda u: torch.log(path.alpha(u)), t)
    assert torch.allclose(f, d_log_alpha, rtol=1e-7, atol=1e-9)
    assert torch.allclose(2 * f * path.sigma(t) ** 2 + g2, d_var, rtol=1e-7, atol=1e-9)
    assert torch.allclose(g2, -2 * path.sigma(t) ** 2 * path.d_logsnr(t), rtol=1e-10)
    assert (g2 > 0).all()


def test_sde_closed_forms():
    """Song et al. 2021: VP g^2 = beta, sub-VP g^2 = beta (1 - alpha^4), VE g^2 = d sigma^2 / dt."""
    t = torch.linspace(0, 1, 11, dtype=F64)[1:]
    beta = 0.1 + t * 19.9
    f, g2 = VP_LIN.sde(t)
    assert torch.allclose(f, -beta / 2, rtol=1e-13) and torch.allclose(g2, beta, rtol=1e-12)
    f, g2 = P.SubVP().sde(t)
    assert torch.allclose(g2, beta * (1 - VP_LIN.alpha(t) ** 4), rtol=1e-12)
    ve = P.VE(0.01, 50.0)
    _, g2 = ve.sde(t)
    assert torch.allclose(g2, 2 * ve.sigma(t) ** 2 * math.log(5000.0), rtol=1e-12)


def test_paths_keep_dtype_and_accept_floats():
    t32 = torch.tensor([0.25, 0.5], dtype=torch.float32)
    for p in ALL:
        assert p.alpha(t32).dtype == torch.float32 and p.sigma(t32).dtype == torch.float32
        assert p.alpha(0.5).dtype == F64


def test_get_path():
    assert isinstance(P.get_path("vp"), P.VP) and P.get_path("vp_cosine").schedule == "cosine"
    for name, cls in [("subvp", P.SubVP), ("ve", P.VE), ("edm", P.EDM), ("flow", P.Flow)]:
        assert isinstance(P.get_path(name), cls)
    path = P.Flow()
    assert P.get_path(path) is path
    with pytest.raises(ValueError) as err:
        P.get_path("cosine")
    for name in ("vp", "vp_cosine", "subvp", "ve", "edm", "flow"):
        assert repr(name) in str(err.value)


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="schedule"):
        P.VP("sigmoid")
    with pytest.raises(ValueError):
        P.VP("linear", beta_min=2.0, beta_max=1.0)
    with pytest.raises(ValueError):
        P.VE(1.0, 0.5)
    with pytest.raises(ValueError):
        P.EDM(rho=0.0)
    with pytest.raises(ValueError, match="shift"):
        P.Shifted(P.Flow(), 0.0)
