"""Named grids, user grids, the grid fitter and the sliced Wasserstein metric."""
import math

import pytest
import torch

from polydiff.core import analytic, fit_grid, make_grid, paths, sample
from polydiff.core.grids import resolve_grid
from polydiff.core.metrics import sliced_wasserstein

torch.set_num_threads(1)
ALL_PATHS = [paths.VP("linear"), paths.VP("cosine"), paths.SubVP(), paths.VE(), paths.EDM(), paths.Flow()]


@pytest.mark.parametrize("path", ALL_PATHS, ids=repr)
@pytest.mark.parametrize("name", ["uniform", "quadratic", "logsnr", "karras", "sigma"])
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_named_grids_are_decreasing_and_hit_both_ends(path, name, steps):
    g = make_grid(name, steps, path)
    assert g.shape == (steps + 1,) and g.dtype == torch.float64
    assert g[0] == 1.0 and g[-1] == 0.0
    assert (g[1:] < g[:-1]).all()


def test_logsnr_and_karras_grids_are_spaced_as_defined():
    path = paths.Flow()
    g = make_grid("logsnr", 6, path)          # 6 noise levels in [0.002, 80] + the data end
    lam = path.logsnr(g[1:-1])
    gaps = torch.diff(lam)
    assert torch.allclose(gaps, gaps[0].expand_as(gaps), rtol=1e-9)
    assert math.isclose(float(path.logsnr(g[-2])), -math.log(0.002), rel_tol=1e-9)
    k = make_grid("karras", 6, paths.EDM())   # on the EDM path the Karras grid is uniform in t
    assert torch.allclose(k[:-1], torch.linspace(1, 0, 7, dtype=torch.float64)[:-1], atol=1e-9)


def test_sigma_grid_is_uniform_in_the_noise_level_from_a_chosen_start():
    path = paths.VP()
    t0 = float(path.t_from_sigma_ve(torch.tensor(40.0, dtype=torch.float64)))
    g = make_grid("sigma", 8, path, t_start=t0)   # VP reaches sigma = 0 at t = 0: levels 40 .. 0.002, then 0
    s = path.sigma_ve(g[:-1])
    assert math.isclose(float(s[0]), 40.0, rel_tol=1e-6) and math.isclose(float(s[-1]), 0.002, rel_tol=1e-6)
    gaps = torch.diff(s)
    assert torch.allclose(gaps, gaps[0].expand_as(gaps), rtol=1e-6)


def test_quadratic_grid_is_denser_near_data():
    g = make_grid("quadratic", 4, paths.VP())
    assert torch.allclose(g, torch.tensor([1.0, 0.5625, 0.25, 0.0625, 0.0], dtype=torch.float64))


def test_grid_errors_are_clear():
    with pytest.raises(ValueError, match="valid"):
        make_grid("cosine", 5, paths.VP())
    with pytest.raises(ValueError, match="steps"):
        make_grid("uniform", 0, paths.VP())
    with pytest.raises(ValueError, match="decreasing"):
        resolve_grid(torch.tensor([0.0, 0.5, 1.0]), None, paths.VP(), 4)
    with pytest.raises(ValueError, match="shape"):
        resolve_grid(torch.rand(5, 3).sort(0, descending=True).values, None, paths.VP(), 4)
    with pytest.raises(ValueError, match="steps"):
        resolve_grid(torch.tensor([1.0, 0.5, 0.0]), 5, paths.VP(), 4)


def test_fit_grid_reduces_the_global_error_it_targets():
    """The fitted grid must beat its initial grid on held-out noise, against an accurate ODE solution."""
    gmm = analytic.ring_mixture(2)
    path = paths.Flow()
    D = gmm.denoiser(path)
    fit_noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    test_noise = torch.randn(512, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = fit_grid(D, fit_noise, path=path, solver="ipndm", steps=5, max_evals=150, reference_steps=200)
    assert g.shape == (6,) and g[0] == 1 and g[-1] == 0 and (g[1:] < g[:-1]).all()
    ref = sample(D, test_noise, path=path, solver="dpmpp_3m", steps=400, grid="logsnr")

    def err(grid):
        x = sample(D, test_noise, path=path, solver="ipndm", steps=None if not isinstance(grid, str) else 5, grid=grid)
        return float(((x - ref) ** 2).sum(1).mean())
    assert err(g) < 0.5 * err("logsnr")


def test_sliced_wasserstein_of_a_shift_is_exact():
    """Shifting a sample set by c gives SW2 = sqrt(mean over directions of (c . theta)^2) exactly."""
    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    got = sliced_wasserstein(x + c, x, 50, generator=torch.Generator().manual_seed(3))
    dirs = torch.randn(3, 50, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    assert math.isclose(float(got), float(((c @ dirs) ** 2).mean().sqrt()), rel_tol=1e-12)
    assert float(sliced_wasserstein(x, x, 50)) == 0.0
    with pytest.raises(ValueError):
        sliced_wasserstein(x, x[:10])
