"""polydiff.domains.images.restore: measurement, restoration wiring, baselines, scores, the CLI command.

A per-pixel Gaussian prior (exact denoiser from polydiff.core.analytic) stands in for the network where
numbers are checked against closed forms; a tiny randomly initialised U-Net saved to disk stands in for
the shipped model in the command-line round trip.
"""
import argparse
import math

import pytest
import torch
import torch.nn.functional as F

from polydiff.core import analytic, paths
from polydiff.core.inverse import posterior_sample
from polydiff.domains.images import restore as R
from polydiff.domains.images.operators import make_operator
from polydiff.domains.images.pretrained import ImageDiffusionModel

torch.set_num_threads(1)
SHAPE = (1, 8, 8)
STD = 0.3          # prior std: the [-1, 1] clamp of the restored images is then negligible


class GaussianImagePrior:
    """The exact denoiser of x0 ~ N(0, STD^2 I) on (N, C, H, W) images, with the attributes of a Denoiser."""

    def __init__(self, shape=SHAPE, std=STD, path=None) -> None:
        self.path = path or paths.VP("linear")
        d = math.prod(shape)
        self.gmm = analytic.GaussianMixture(torch.zeros(1, d), torch.full((1,), std ** 2))
        self._D = self.gmm.denoiser(self.path)

    def __call__(self, x, t, **cond):
        return self._D(x.flatten(1), t).reshape(x.shape).to(x.dtype)


@pytest.fixture(scope="module")
def model():
    return ImageDiffusionModel(GaussianImagePrior(), SHAPE, num_classes=0, name="gauss")


def images(n, shape=SHAPE, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (STD * torch.randn((n,) + tuple(shape), generator=g)).clamp(-1, 1)


# ----------------------------------------------------------------------------- measurement and wiring
def test_measure_adds_seeded_noise_in_image_units():
    x = images(64)
    op = make_operator("sr-avg2", SHAPE)
    y1 = R.measure(x, op, 0.1, torch.Generator().manual_seed(3))
    y2 = R.measure(x, op, 0.1, torch.Generator().manual_seed(3))
    assert torch.equal(y1, y2)
    r = y1 - op.A(x)
    assert r.shape == (64, 1, 4, 4)
    assert abs(float(r.std()) - 0.1) < 0.01 and abs(float(r.mean())) < 0.01
    assert torch.equal(R.measure(x, op, 0.0), op.A(x))


def test_restore_is_measure_then_posterior_sample_with_the_method_defaults(model):
    x = images(3)
    out, y, op = R.restore(x, "inpaint-box", "ddnm", model=model, sigma_y=0.05,
                           generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    op2 = make_operator("inpaint-box", SHAPE)
    y2 = op2.A(x) + 0.05 * torch.randn(op2.A(x).shape, generator=g)
    steps = R.METHOD_DEFAULTS["ddnm"]["steps"]
    ref = posterior_sample(model.denoiser, y2, op2, path=model.path, method="ddnm", steps=steps, sigma_y=0.05,
                           generator=g).clamp(-1, 1)
    assert torch.equal(y, y2)
    assert torch.equal(out, ref)
    assert out.shape == x.shape and float(out.abs().max()) <= 1.0


def test_restore_samples_the_exact_gaussian_posterior(model):
    """Per-pixel Gaussian prior N(0, v) and a mask: observed pixels have the posterior
    N(k y, k s^2) with k = v / (v + s^2), missing ones the prior. PiGDM's guidance is exact for this
    prior (data_var = v), so restore's samples must regress on y with slope k and have the posterior's
    spread; a sigma_y lost or rescaled between the measurement and the sampler changes k. (Ancestral
    sampling under-disperses by O(1/steps): at 500 steps the variances are within 10% low.)"""
    v, s = STD ** 2, 0.2
    k = v / (v + s * s)
    x = images(300, seed=1)
    out, y, op = R.restore(x, "inpaint-box", "pigdm", model=model, sigma_y=s, steps=500, data_var=v,
                           generator=torch.Generator().manual_seed(0))
    obs = op.mask.reshape(-1)
    xo = out.flatten(1)[:, obs].reshape(-1).double()
    yo = y.reshape(-1).double()
    slope = float(((xo - xo.mean()) * (yo - yo.mean())).mean() / yo.var())
    assert slope == pytest.approx(k, rel=0.03)
    assert float((xo - k * yo).var()) == pytest.approx(k * s * s, rel=0.12)
    r_mis = out.flatten(1)[:, ~obs]
    assert abs(float(r_mis.mean())) < 0.02
    assert float(r_mis.var()) == pytest.approx(v, rel=0.12)


def test_method_settings_defaults_overrides_and_nonlinear_options():
    op = make_operator("phase-retrieval", SHAPE)
    n, opts = R.method_settings("daps", op)
    assert n == R.METHOD_DEFAULTS["daps"]["steps"] and opts == R.METHOD_DEFAULTS["daps"]["forward_options"]
    n, opts = R.method_settings("daps", make_operator("inpaint-box", SHAPE), steps=3, ode_steps=2)
    assert n == 3 and opts["ode_steps"] == 2
    assert R.method_settings("reddiff", op)[1]["init"] == "zeros"        # no pseudo-inverse
    blur = make_operator("deblur-gauss", (1, 16, 16), std=1.5)           # singular values down to ~1e-8
    assert R.method_settings("reddiff", blur)[1]["init"] == "zeros"
    assert "init" not in R.method_settings("reddiff", make_operator("sr-avg2", SHAPE))[1]
    assert R.method_settings("reddiff", blur, init="pinv")[1]["init"] == "pinv"
    # the literature's ordering of cost: DPS far above DiffPIR and DDRM
    assert R.METHOD_DEFAULTS["dps"]["nfe"] >= 10 * R.METHOD_DEFAULTS["diffpir"]["nfe"]


def test_the_stated_cost_of_each_method_is_what_it_costs(model):
    op = make_operator("sr-avg2", SHAPE)
    y = R.measure(images(1), op, 0.05, torch.Generator().manual_seed(0))
    for name, d in R.METHOD_DEFAULTS.items():     # the cost is linear in the steps: check it at 2 steps
        assert R.method_settings(name)[0] == d["steps"]
        _, info = R.restore_measurement(y, op, name, model=model, steps=2, return_info=True,
                                        generator=torch.Generator().manual_seed(0))
        assert (info["nfe"] * d["steps"], info["backward"] * d["steps"]) == (2 * d["nfe"], 2 * d["backward"]), name


# ----------------------------------------------------------------------------- baselines and scores
def test_baselines_are_the_measurements_own_estimates():
    x = images(4, (1, 16, 16)).clamp(-1, 1)
    op = make_operator("inpaint-box", (1, 16, 16))
    zf = R.baseline(op.A(x), op)
    assert torch.equal(zf[:, :, 4:12, 4:12], torch.zeros(4, 1, 8, 8))
    assert torch.equal(zf[:, :, :4], x[:, :, :4])
    op = make_operator("sr-bicubic2", (1, 16, 16))
    y = op.A(x)
    assert torch.allclose(R.baseline(y, op), F.interpolate(y, size=(16, 16), mode="bicubic").clamp(-1, 1))
    op = make_operator("deblur-gauss", (1, 16, 16))
    y = op.A(x).clamp(-1, 1)
    assert torch.equal(R.baseline(y, op), y)
    assert R.baseline_name(op) == "blurred input"
    op = make_operator("colorize", (3, 16, 16))
    xc = images(2, (3, 16, 16))
    assert torch.allclose(R.baseline(op.A(xc), op), op.A(xc).expand(2, 3, 16, 16))


def test_phase_retrieval_twin_and_alignment():
    x = images(3, (1, 16, 16))
    op = make_operator("phase-retrieval", (1, 16, 16))
    twin = R._mirror(x)
    assert torch.allclose(op.A(twin), op.A(x), atol=1e-5)          # the ambiguity is exact
    assert not torch.allclose(twin, x)
    assert torch.equal(R.align_ambiguity(twin, x, op), x)
    assert R.scores(twin, x, op)["psnr"] == math.inf
    assert torch.equal(R.align_ambiguity(twin, x, make_operator("inpaint-box", (1, 16, 16))), twin)
    # HIO fits the magnitudes far better than its random start
    g = torch.Generator().manual_seed(0)
    y = op.A(x)
    xh = R.hio(y, op, iterations=40, restarts=1, generator=g)
    start = (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert float((op.A(xh) - y).norm()) < 0.5 * float((op.A(start) - y).norm())


def test_scores_closed_forms():
    x = torch.zeros(2, 1, 16, 16)
    xh = torch.full((2, 1, 16, 16), 0.2)
    s = R.scores(xh, x)
    assert s["psnr"] == pytest.approx(10 * math.log10(4 / 0.04), rel=1e-5)
    assert R.scores(x, x)["perceptual"] == 0.0 and R.scores(x, x)["ssim"] == pytest.approx(1.0)


def test_compare_skips_methods_that_need_a_linear_operator():
    model16 = ImageDiffusionModel(GaussianImagePrior((1, 16, 16)), (1, 16, 16), num_classes=0)
    res = R.compare(images(2, (1, 16, 16)), ["inpaint-box", "phase-retrieval"], ["ddrm", "dps"], model=model16,
                    steps={"ddrm": 3, "dps": 3})
    rows = {(r["task"], r["method"]): r for r in res["rows"]}
    assert rows[("phase-retrieval", "ddrm")]["psnr"] is None
    assert rows[("phase-retrieval", "dps")]["nfe"] == 3
    assert rows[("inpaint-box", "baseline")]["name"] == "zero-filled"
    table = R.markdown_table(res["rows"])
    assert "n/a" in table and "baseline: zero-filled" in table


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs(model):
    x = images(2)
    with pytest.raises(ValueError, match="channel"):
        R.restore(images(2, (3, 8, 8)), "inpaint-box", "ddrm", model=model)
    with pytest.raises(ValueError, match="8x8"):
        R.restore(images(2, (1, 16, 16)), "inpaint-box", "ddrm", model=model)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        R.restore(x + 5, "inpaint-box", "ddrm", model=model)
    with pytest.raises(ValueError, match="NaN"):
        R.restore(x * float("nan"), "inpaint-box", "ddrm", model=model)
    with pytest.raises(ValueError, match="sigma_y"):
        R.restore(x, "inpaint-box", "ddrm", model=model, sigma_y=-0.1)
    with pytest.raises(ValueError, match="unknown image task"):
        R.restore(x, "inpaint-circle", "ddrm", model=model)
    with pytest.raises(ValueError, match="valid"):
        R.restore(x, "inpaint-box", "ddrmm", model=model)
    with pytest.raises(ValueError, match="steps"):
        R.restore(x, "inpaint-box", "ddrm", model=model, steps=0)
    with pytest.raises(ValueError, match="level"):
        R.restore(x, "phase-retrieval", "ddrm", model=model)
    with pytest.raises(ValueError, match="no option"):
        R.restore(x, "inpaint-box", "ddrm", model=model, zeta=3)
    with pytest.raises(ValueError, match="shape"):
        R.restore(x, make_operator("inpaint-box", (1, 16, 16)), "ddrm", model=model)
    with pytest.raises(ValueError, match="ImageDiffusionModel"):
        R.restore(x, "inpaint-box", "ddrm", model=object())


# ----------------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from polydiff.core.training import save_model
    from polydiff.domains.images import nets
    torch.manual_seed(0)
    net = nets.build("digits-unet", 10, channels=8, head_dim=8, num_res_blocks=1, norm_groups=4,
                     attn_levels=[])
    d = tmp_path_factory.mktemp("tiny") / "model"
    save_model(d, net, paths.VP("linear"), "edm", 0.65,
               extra={"sample_shape": [1, 16, 16], "num_classes": 10, "cond_key": "class_labels"})
    return d


def _cli(argv):
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command")
    verb = sub.add_parser("restore").add_subparsers(dest="domain")
    R.add_restore_command({"restore": lambda name, **kw: verb.add_parser(name, **kw)})
    args = ap.parse_args(argv)
    return args.func(args)


def test_cli_round_trip(tiny_model_dir, tmp_path, capsys):
    from polydiff.domains.images.data import read_image, write_image
    x = images(1, (1, 16, 16))
    write_image(tmp_path / "in.png", x)
    out = tmp_path / "out.png"
    rc = _cli(["restore", "images", str(tmp_path / "in.png"), "--task", "inpaint-box", "--method", "ddrm",
               "--steps", "3", "--out", str(out), "--model", str(tiny_model_dir), "--measurement-out",
               str(tmp_path / "meas.png")])
    assert rc == 0 and "restored" in capsys.readouterr().out
    r = read_image(out)
    assert r.shape == (1, 1, 16, 16)
    # the measurement image is the zero-filled input: observed pixels equal the input's (8-bit rounding)
    m = read_image(tmp_path / "meas.png")
    assert (m[..., :4, :] - read_image(tmp_path / "in.png")[..., :4, :]).abs().max() < 1e-6
    assert (m[..., 4:12, 4:12] - 0.0).abs().max() < 0.01
    # super-resolution takes the low-resolution image; a 32x32 RGB clean image is converted with --simulate
    write_image(tmp_path / "lr.png", images(1, (1, 8, 8)))
    assert _cli(["restore", "images", str(tmp_path / "lr.png"), "--task", "sr-avg2", "--method", "diffpir",
                 "--steps", "2", "--out", str(out), "--model", str(tiny_model_dir)]) == 0
    write_image(tmp_path / "rgb.png", images(1, (3, 32, 32)))
    assert _cli(["restore", "images", str(tmp_path / "rgb.png"), "--simulate", "--task", "phase-retrieval",
                 "--method", "dps", "--steps", "2", "--out", str(out), "--model", str(tiny_model_dir)]) == 0
    assert read_image(out).shape == (1, 1, 16, 16)


def test_cli_bad_inputs(tiny_model_dir, tmp_path):
    from polydiff.domains.images.data import write_image
    base = ["restore", "images", "--model", str(tiny_model_dir), "--steps", "2", "--out", str(tmp_path / "o.png")]
    write_image(tmp_path / "wide.png", images(1, (1, 16, 20)))
    with pytest.raises(ValueError, match="aspect ratio"):
        _cli(base + [str(tmp_path / "wide.png")])
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read"):
        _cli(base + [str(tmp_path / "bad.png")])
    with pytest.raises(ValueError, match="does not exist"):
        _cli(base + [str(tmp_path / "missing.png")])
    write_image(tmp_path / "ok.png", images(1, (1, 16, 16)))
    with pytest.raises(ValueError, match="--simulate"):
        _cli(base + [str(tmp_path / "ok.png"), "--task", "phase-retrieval", "--method", "dps"])
    with pytest.raises(ValueError, match="--out"):
        _cli(["restore", "images", "--model", str(tiny_model_dir), str(tmp_path / "ok.png"), "--out",
              str(tmp_path / "o.txt")])
    with pytest.raises(ValueError, match="unknown model"):
        _cli(["restore", "images", "--model", "nonexistent", str(tmp_path / "ok.png")])
