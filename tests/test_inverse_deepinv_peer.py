"""The deepinv side-by-side (benchmarks/deepinv_peer.py) maps the GMM problem exactly into deepinv's scales."""
import pathlib
import sys

import torch

torch.set_num_threads(1)
import deepinv  # noqa: F401,E402  (a test dependency: missing it must fail, not skip)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import deepinv_peer as peer  # noqa: E402
from posterior_gmm import IsoMixture, problem  # noqa: E402


def test_scaling_is_exact():
    prior, A, y, sy = problem(8, 2, 99)
    S = peer.S
    g = torch.Generator().manual_seed(0)
    x = prior.sample(5, g)
    u, w = x / S + 0.5, 2 * x / S
    # physics: A_u u = A x + (S/2) A 1 (the measurement shift), A_w w = A x
    pu, pw = peer._physics(A, S, sy), peer._physics(A, S / 2, sy)
    torch.testing.assert_close(pu.A(u), x @ A.T + (S / 2) * A.sum(1))
    torch.testing.assert_close(pw.A(w), x @ A.T)
    # denoisers: the exact VE denoiser at noise S s (x units), mapped
    iso = IsoMixture(prior.means, prior.log_weights)
    s = 0.1
    xn = x + S * s * torch.randn(x.shape, generator=g, dtype=torch.float64)
    ref = iso.denoise(xn, 1.0, S * s)
    torch.testing.assert_close(peer._Denoiser(prior, "u")(xn / S + 0.5, s), ref / S + 0.5)
    torch.testing.assert_close(peer._Denoiser(prior, "w")(2 * xn / S, 2 * s), 2 * ref / S)


def test_runs_and_counts_nfe():
    prior, A, y, sy = problem(8, 2, 98)
    for name in peer.METHODS:
        x, nfe = peer.run(name, prior=prior, A=A, y=y, sy=sy, n=16, nfe=10, g=torch.Generator().manual_seed(1))
        assert x.shape == (16, 8) and torch.isfinite(x).all() and nfe == 10, name
