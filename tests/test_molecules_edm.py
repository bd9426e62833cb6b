"""EDM (3-D molecules): equivariance, padding, the CoM-free subspace, the sampler against a closed form,
files and errors."""
import math

import numpy as np
import pytest
import torch

from polydiff.domains.molecules import edm
from polydiff.core.paths import PolynomialVP
from polydiff.domains.molecules.edm import (EDMModel, EDMNet, EGNN, com_free_noise, node_mask,
                                            remove_mean, sample_point_sets)


def _rotation(seed: int, reflect: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if reflect:
        q = q @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    return q


def _batch(seed=0, sizes=(5, 7, 3), n_max=8, f=4):
    g = torch.Generator().manual_seed(seed)
    mask = node_mask(torch.tensor(sizes), n_max)
    x = torch.randn(len(sizes), n_max, 3, generator=g, dtype=torch.float64) * 1.5
    h = torch.randn(len(sizes), n_max, f, generator=g, dtype=torch.float64)
    return x * mask[..., None], h * mask[..., None], mask


@pytest.mark.parametrize("reflect", [False, True])
def test_egnn_is_e3_equivariant_and_permutation_equivariant(reflect):
    torch.manual_seed(0)
    net = EGNN(4, 6, hidden=16, layers=3).double()
    for p in net.parameters():      # larger coordinate weights so that the coordinate update is not ~0
        if p.dim() == 2 and p.shape[0] == 1:
            torch.nn.init.normal_(p, std=0.3)
    x, h, mask = _batch()
    x_out, h_out = net(x, h, mask)
    assert (x_out - x).abs().max() > 1e-3         # the coordinates really move
    q, shift = _rotation(1, reflect), torch.tensor([0.7, -2.0, 3.1], dtype=torch.float64)
    perm = torch.arange(8)
    perm[:5] = torch.tensor([3, 0, 4, 1, 2])      # permute the real atoms of molecule 0 (others kept)
    x2 = (x @ q.T + shift) * mask[..., None]
    x2[0], h2 = x2[0, perm], h.clone()
    h2[0] = h[0, perm]
    x2_out, h2_out = net(x2, h2, mask)
    expect = (x_out @ q.T + shift) * mask[..., None]
    expect[0] = expect[0, perm]
    h_exp = h_out.clone()
    h_exp[0] = h_out[0, perm]
    assert torch.allclose(x2_out, expect, atol=1e-5)
    assert torch.allclose(h2_out, h_exp, atol=1e-5)             # type output invariant


def test_padding_atoms_do_not_affect_real_atoms():
    torch.manual_seed(1)
    net = EDMNet(5, hidden=16, layers=2).double()
    g = torch.Generator().manual_seed(2)
    mask = node_mask(torch.tensor([4, 6]), 9)
    z = remove_mean(torch.randn(2, 9, 8, generator=g, dtype=torch.float64), mask)
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    out = net(z, t, mask)
    garbage = z + 100.0 * torch.randn(z.shape, generator=g, dtype=torch.float64) * (~mask)[..., None]
    out2 = net(garbage, t, mask)
    assert torch.allclose(out, out2, atol=1e-10)
    assert (out2[~mask] == 0).all()
    # the same molecule without any padding gives the same output
    alone = net(z[1:, :6], t[1:], mask[1:, :6])
    assert torch.allclose(alone[0], out[1, :6], atol=1e-10)
    # eps for positions is CoM-free and rotates with the input, the type part is invariant
    assert torch.allclose(out[..., :3].sum(1), torch.zeros(2, 3, dtype=torch.float64), atol=1e-10)
    q = _rotation(3)
    zr = z.clone()
    zr[..., :3] = z[..., :3] @ q.T
    outr = net(zr, t, mask)
    assert torch.allclose(outr[..., :3], out[..., :3] @ q.T, atol=1e-8)
    assert torch.allclose(outr[..., 3:], out[..., 3:], atol=1e-8)


def test_remove_mean_is_the_orthogonal_projection_and_noise_has_its_covariance():
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([2, 5, 1])
    mask = node_mask(sizes, 6)
    a = torch.randn(3, 6, 4, generator=g, dtype=torch.float64)
    b = torch.randn(3, 6, 4, generator=g, dtype=torch.float64)
    pa = remove_mean(a, mask)
    assert torch.allclose(remove_mean(pa, mask), pa)                          # idempotent
    assert torch.allclose((pa * b * mask[..., None]).sum(), (a * mask[..., None] * remove_mean(b, mask)).sum())
    assert torch.allclose(pa[..., :3].sum(1), torch.zeros(3, 3, dtype=torch.float64))
    assert torch.equal(pa[..., 3], a[..., 3] * mask)                           # type channels only masked
    # projected standard noise: covariance I - 11^T / n per coordinate, i.e. variance (n - 1) / n
    z = com_free_noise((40_000, 6, 3), node_mask(torch.full((40_000,), 5), 6), g, torch.float64)
    assert torch.allclose(z.sum(1), torch.zeros(40_000, 3, dtype=torch.float64), atol=1e-12)
    x = z[:, :5, 0]
    cov = x.T @ x / x.shape[0]
    exact = torch.eye(5, dtype=torch.float64) - 1.0 / 5
    assert (cov - exact).abs().max() < 0.03          # Monte-Carlo error ~ 1 / sqrt(40 000) = 0.005
    assert (z[:, 5] == 0).all()


def test_polynomial_path_closed_forms():
    p = PolynomialVP()
    t = torch.linspace(0.01, 0.99, 41, dtype=torch.float64)
    assert torch.allclose(p.alpha(t) ** 2 + p.sigma(t) ** 2, torch.ones_like(t))
    assert torch.allclose(p.alpha(t) ** 2, (1 - 2e-5) * (1 - t * t) ** 2 + 1e-5)
    h = 1e-6
    assert torch.allclose(p.d_alpha(t), (p.alpha(t + h) - p.alpha(t - h)) / (2 * h), atol=1e-6)
    assert torch.allclose(p.d_sigma(t), (p.sigma(t + h) - p.sigma(t - h)) / (2 * h), atol=1e-6)
    assert torch.allclose(p.t_from_logsnr(p.logsnr(t)), t, atol=1e-9)
    with pytest.raises(ValueError, match="precision"):
        PolynomialVP(precision=0.7)


def test_sampler_with_the_exact_gaussian_denoiser_matches_the_closed_form():
    """Data: positions P z * s (z standard normal, P the CoM projection) and one type channel v h on real
    atoms, so x0 ~ N(0, s^2 P) x N(0, v^2). The exact denoiser is linear: E[x0 | x_t] = a s^2 / (a^2 s^2 +
    sig^2) P x_t (types with v). The probability-flow ODE then maps CoM-free noise n to
    n sig(1) sqrt(a0^2 s^2 + sig0^2) / sqrt(a1^2 s^2 + sig1^2) exactly; ancestral sampling reproduces the
    data covariance s^2 (I - 11^T / n) (up to its O(1/steps) bias: the ancestral step plugs in E[x0 | x_t] and
    ignores Var[x0 | x_t]; at 50 steps the variance is 8 % low, at 1000 steps 0.4 %)."""
    path = PolynomialVP()
    s, v = 1.7, 0.4
    scale = torch.tensor([s, s, s, v], dtype=torch.float64)

    def exact(z, t, mask):
        a, sg = path.alpha(t.double())[:, None, None], path.sigma(t.double())[:, None, None]
        c = a * scale ** 2 / (a * a * scale ** 2 + sg * sg)
        return c * remove_mean(z, mask)

    mask = node_mask(torch.tensor([4, 6, 6, 3] * 4), 7)
    g = torch.Generator().manual_seed(0)
    out = sample_point_sets(exact, mask, path, 4, solver="dpmpp_2m", steps=200, grid="logsnr", generator=g)
    noise = com_free_noise(out.shape, mask, torch.Generator().manual_seed(0), out.dtype)
    a0, s0, a1, s1 = (float(f(torch.tensor(x, dtype=torch.float64))) for x in (0.0, 1.0) for f in (path.alpha, path.sigma))
    ratio = s1 * torch.sqrt(a0 ** 2 * scale ** 2 + s0 ** 2) / torch.sqrt(a1 ** 2 * scale ** 2 + s1 ** 2)
    assert torch.allclose(out.double(), (noise.double() * ratio.float().double()), rtol=2e-3, atol=2e-4)
    # ancestral sampling (stochastic, with full-space noise inside the solver): data covariance
    mask = node_mask(torch.full((6000,), 4), 5)
    out = sample_point_sets(exact, mask, path, 4, solver="ddpm", steps=1000, grid="uniform",
                            generator=torch.Generator().manual_seed(1)).double()
    assert (out[:, 4] == 0).all() and out[:, :4, :3].sum(1).abs().max() < 1e-4
    x = out[:, :4, 0]
    cov = x.T @ x / x.shape[0]
    assert (cov - s * s * (torch.eye(4, dtype=torch.float64) - 0.25)).abs().max() < 0.12    # MC: ~3 s^2 / sqrt(6000)
    assert abs(float(out[:, :4, 3].var()) - v * v) < 0.01


def _tiny_model():
    torch.manual_seed(0)
    counts = [0, 0, 1, 3, 2, 1]
    return EDMModel(counts, layers=2, hidden=8)


def test_save_load_round_trip_and_generate(tmp_path):
    m = _tiny_model()
    folder = m.save(tmp_path / "m", extra={"train": {"step": 3}})
    m2 = EDMModel.load(folder)
    assert m2.config() == m.config() and m2.n_max == 5
    z, mask = m.encode([(torch.randn(3, 3), torch.tensor([1, 0, 0])), (torch.randn(5, 3), torch.tensor([1, 2, 3, 4, 0]))])
    assert torch.allclose(z[..., :3].sum(1), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(z[0, :3, 3:].sum(-1), torch.full((3,), 0.25))
    t = torch.tensor([0.2, 0.9])
    assert torch.equal(m.net(z, t, mask), m2.net(z, t, mask))
    a = m.sample_points(6, steps=3, seed=5)
    b = m2.sample_points(6, steps=3, seed=5)
    assert all(torch.equal(p, q) and torch.equal(u, w) for (p, u), (q, w) in zip(a, b))
    assert all(len(u) in (2, 3, 4, 5) and torch.allclose(p.mean(0), torch.zeros(3), atol=1e-4) for p, u in a)
    mols = m.generate(4, steps=2, seed=0)
    assert len(mols) == 4 and all(x.GetNumConformers() == 1 and x.GetConformer().Is3D() for x in mols)
    assert set(m.last_stats) >= {"atom_stability", "mol_stability"}


def test_bad_input_raises_clear_errors(tmp_path):
    m = _tiny_model()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n must be"):
            m.sample_points(bad)
    with pytest.raises(ValueError, match="steps"):
        m.generate(2, steps=0)
    with pytest.raises(ValueError, match="guidance"):
        m.generate(2, guidance="qed")
    with pytest.raises(ValueError, match="shape"):
        m.net(torch.zeros(2, 4, 7), torch.zeros(2), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        m.net(torch.zeros(2, 4, 8), torch.zeros(2), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one real atom"):
        remove_mean(torch.zeros(1, 3, 3), torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="types"):
        m.encode([(torch.zeros(2, 3), torch.tensor([0, 7]))])
    with pytest.raises(ValueError, match="sizes"):
        m.sample_points(2, steps=2, sizes=torch.tensor([3, 9]))
    with pytest.raises(ValueError, match="valid: qm9-3d"):
        edm.pretrained("qm9-4d")
    with pytest.raises(ValueError, match="size_counts"):
        EDMModel([1, 2, 3])
    with pytest.raises(ValueError, match="no EDM"):
        EDMModel.load(tmp_path)


def test_training_script_runs_and_exports(tmp_path):
    from polydiff.domains.molecules import train_edm
    out = tmp_path / "run"
    assert train_edm.main(["--out", str(out), "--steps", "2", "--batch", "8", "--molecules", "200", "--layers", "1",
                           "--hidden", "8", "--save-every", "1"]) == 0
    m = EDMModel.load(out)
    cfg = __import__("json").loads((out / "config.json").read_text())
    assert cfg["train"]["step"] == 2 and cfg["train"]["molecules"] == 200
    assert m.arch["hidden"] == 8 and len(open(out / "log.jsonl").read().splitlines()) == 2


def test_property_predictor_is_invariant_and_guidance_wraps_the_core(tmp_path):
    from polydiff.domains.molecules.edm import PropertyPredictor, property_guided_denoiser
    torch.manual_seed(0)
    f = PropertyPredictor(5, "alpha", hidden=8, layers=2, mean=70.0, std=8.0).double()
    x, _, mask = _batch(sizes=(5, 3), n_max=6, f=5)
    z = torch.cat([x, torch.rand(2, 6, 5, dtype=torch.float64) * 0.25 * mask[..., None]], -1)
    y = f(z, mask)
    zr = z.clone()
    zr[..., :3] = (x @ _rotation(4, True).T + 1.5) * mask[..., None]
    assert torch.allclose(f(zr, mask), y, atol=1e-8)
    f2 = PropertyPredictor.load(f.float().save(tmp_path / "p"))
    assert torch.allclose(f2(z.float(), mask), f(z.float(), mask))
    m = _tiny_model()
    plain = m.sample_points(4, steps=3, seed=1)
    same = m.sample_points(4, steps=3, seed=1, denoiser=property_guided_denoiser(m, f2, scale=0.0))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(plain, same))
    # with a scale the guided denoiser differs below t_stop and equals the plain one above it
    D = property_guided_denoiser(m, f2, scale=5.0, t_stop=0.5)
    zz, mk = m.encode([(torch.randn(4, 3), torch.tensor([1, 0, 0, 2]))])
    base = m.denoiser()
    with torch.no_grad():
        assert torch.equal(D(zz, torch.tensor([0.9]), mask=mk), base(zz, torch.tensor([0.9]), mask=mk))
        assert not torch.allclose(D(zz, torch.tensor([0.3]), mask=mk), base(zz, torch.tensor([0.3]), mask=mk))
    with pytest.raises(ValueError, match="t_stop"):
        property_guided_denoiser(m, f2, 1.0, t_stop=0.0)


def test_cli_generate_writes_3d_sdf_with_stability(tmp_path, monkeypatch):
    import json
    from rdkit import Chem
    from polydiff.tasks import cli
    from polydiff.tasks import molecules as task
    assert task.GENERATORS["qm9-3d"].three_d
    model = _tiny_model()
    monkeypatch.setitem(task.GENERATORS, "tiny3d", task.MoleculeGenerator(lambda: model, "tiny", three_d=True))
    out = tmp_path / "m.sdf"
    assert cli.main(["generate", "molecules", "-n", "6", "--model", "tiny3d", "--steps", "3", "--out", str(out),
                     "--no-fcd"]) == 0
    mols = [m for m in Chem.SDMolSupplier(str(out), removeHs=False)]
    expect = [m for m in (task._as_mols(model.generate(6, steps=3, seed=0))) if m is not None]
    assert len(mols) == len(expect) > 0
    for a, b in zip(mols, expect):              # the model's own 3-D coordinates, hydrogens included
        assert a.GetConformer().Is3D() and a.GetNumAtoms() == b.GetNumAtoms()
        assert np.allclose(a.GetConformer().GetPositions(), b.GetConformer().GetPositions(), atol=1e-3)
    res = json.loads((tmp_path / "m.metrics.json").read_text())
    assert 0.0 <= res["atom_stability"] <= 1.0 and "mol_stability" in res
    # the file holds the valid molecules only; stability over all samples comes from the model's own count
    assert res["atom_stability_all_samples"] == pytest.approx(model.last_stats["atom_stability"])
    assert res["mol_stability_all_samples"] == pytest.approx(model.last_stats["mol_stability"])


def test_shipped_model_loads_and_samples():
    m = edm.pretrained("qm9-3d")
    assert m.n_max == 29 and m.elements == ("H", "C", "N", "O", "F")
    pts = m.sample_points(2, steps=4, seed=0, solver="dpmpp_2m", grid="logsnr")
    assert [len(t) for _, t in pts] == [int(s) for s in m.sample_sizes(2, torch.Generator().manual_seed(0))]
    f = edm.pretrained_predictor("alpha")
    assert f.prop == "alpha" and 60 < f.mean < 90
    with pytest.raises(ValueError, match="valid: alpha"):
        edm.pretrained_predictor("gap")


def test_property_training_exports_a_predictor_with_its_valid_mae(tmp_path):
    """``train_edm --property`` saves a predictor whose recorded MAE is that of the saved weights on the
    first 2 000 valid molecules, scored one molecule at a time here (the script scores padded batches)."""
    import json
    from polydiff.domains.molecules import data, train_edm
    from polydiff.domains.molecules.edm import PropertyPredictor
    out = tmp_path / "pred"
    assert train_edm.main(["--out", str(out), "--property", "alpha", "--steps", "2", "--batch", "8", "--molecules",
                           "200", "--layers", "1", "--hidden", "8", "--warmup", "1", "--save-every", "2"]) == 0
    net = PropertyPredictor.load(out).eval()
    va = data.load_qm9("valid").subset(np.arange(2000))
    enc = EDMModel([0, 1], va.elements)
    with torch.no_grad():
        err = [abs(float(net(*enc.encode([va.molecule(j)]))) - float(va.properties["alpha"][j])) for j in range(2000)]
    recorded = json.loads((out / "config.json").read_text())["train"]
    assert recorded["step"] == 2 and abs(recorded["valid_mae"] - float(np.mean(err))) < 1e-4
    with pytest.raises(ValueError, match="unknown QM9 property"):
        train_edm.main(["--out", str(tmp_path / "bad"), "--property", "nope", "--steps", "1"])
