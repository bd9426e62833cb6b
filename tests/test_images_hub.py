"""diffusers interop: a randomly initialised tiny UNet2DModel against diffusers' own schedulers (no download)."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from polydiff.core import posterior_sample, sample
from polydiff.domains.images.hub import DiscreteVP, from_diffusers, load_hub
from polydiff.domains.images.operators import make_operator

torch.set_num_threads(1)
T = 1000


def _unet(channels=1, num_class_embeds=None, out_channels=None):
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=channels, out_channels=out_channels or channels,
                       layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       num_class_embeds=num_class_embeds).eval()


SCHED = dict(num_train_timesteps=T, clip_sample=False)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_discrete_path(schedule):
    sch = DDPMScheduler(beta_schedule=schedule, **SCHED)
    path = DiscreteVP(sch.alphas_cumprod)
    n = torch.tensor([0, 1, 10, 500, 998, 999])
    t = path.t_of_timestep(n)
    torch.testing.assert_close(path.alpha(t) ** 2, sch.alphas_cumprod[n].double(), rtol=1e-12, atol=0)
    torch.testing.assert_close(path.alpha(t) ** 2 + path.sigma(t) ** 2, torch.ones(6, dtype=torch.float64))
    assert float(path.alpha(torch.tensor(0.0))) == 1.0 and float(path.sigma(torch.tensor(0.0))) == 0.0
    torch.testing.assert_close(path.timestep(t), n.double())
    assert torch.equal(path.timestep(t.float()), n.double())          # float32 times hit the integer timesteps
    # log-SNR inverse, and derivatives by central differences inside segments
    u = (torch.arange(0, T, 25, dtype=torch.float64) + 0.5) / T          # segment midpoints
    torch.testing.assert_close(path.t_from_logsnr(path.logsnr(u)), u, atol=1e-9, rtol=0)
    h = 1e-7
    torch.testing.assert_close(path.d_alpha(u), (path.alpha(u + h) - path.alpha(u - h)) / (2 * h), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(path.d_sigma(u), (path.sigma(u + h) - path.sigma(u - h)) / (2 * h), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_denoiser_matches_ddpm_pred_original_sample(prediction_type):
    unet = _unet()
    sch = DDPMScheduler(beta_schedule="linear", prediction_type=prediction_type, **SCHED)
    hub = from_diffusers(unet, sch)
    assert hub.x_shape == (1, 8, 8)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 8, 8, generator=g)
    for n in (999, 600, 50, 0):
        with torch.no_grad():
            out = unet(x, n).sample
            ref = sch.step(out, n, x, generator=g).pred_original_sample
            D = hub.denoiser(x, hub.path.t_of_timestep(n).float().expand(3))
        torch.testing.assert_close(D, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_matches_diffusers(prediction_type):
    unet = _unet(channels=2, num_class_embeds=3)
    kw = dict(beta_schedule="scaled_linear", prediction_type=prediction_type, **SCHED)
    ddim = DDIMScheduler(set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading", **kw)
    ddim.set_timesteps(8)
    labels = torch.tensor([0, 2])
    x = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    ref = x.clone()
    with torch.no_grad():
        for n in ddim.timesteps:
            ref = ddim.step(unet(ref, n, class_labels=labels).sample, n, ref, eta=0.0).prev_sample
        hub = from_diffusers(unet, DDPMScheduler(**kw))
        grid = torch.cat([hub.path.t_of_timestep(ddim.timesteps), torch.zeros(1, dtype=torch.float64)])
        out = sample(hub.denoiser, x, path=hub.path, solver="ddim", grid=grid, x_init=x,
                     cond={"class_labels": labels})
    assert ddim.timesteps.tolist() == [875, 750, 625, 500, 375, 250, 125, 0]
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_solvers_and_posterior_samplers_run(tmp_path):
    unet = _unet(out_channels=2)                # learned variance: first channel is eps
    sch = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range", **SCHED)
    hub = from_diffusers(unet, sch)
    with torch.no_grad():
        x = unet(torch.zeros(1, 1, 8, 8), 10).sample
    assert x.shape[1] == 2
    g = torch.Generator().manual_seed(0)
    imgs = hub.generate(2, steps=4, solver="dpmpp_2m", generator=g)
    assert imgs.shape == (2, 1, 8, 8) and torch.isfinite(imgs).all() and imgs.abs().max() <= 1
    op = make_operator("inpaint-box", hub.x_shape)
    y = op.A(torch.zeros(1, 1, 8, 8))
    for method in ("ddrm", "dps"):
        with torch.set_grad_enabled(method == "dps"):
            z = posterior_sample(hub.denoiser, y, op, path=hub.path, method=method, steps=3, sigma_y=0.05, generator=g)
        assert z.shape == (1, 1, 8, 8) and torch.isfinite(z).all()
    # a saved pipeline folder loads back (no network) and gives the same denoiser
    unet.save_pretrained(tmp_path / "unet")
    sch.save_pretrained(tmp_path / "scheduler")
    hub2 = load_hub(str(tmp_path))
    xt = torch.randn(2, 1, 8, 8, generator=g)
    t = torch.full((2,), 0.37)
    with torch.no_grad():
        torch.testing.assert_close(hub2.denoiser(xt, t), hub.denoiser(xt, t))


def test_bad_input():
    with pytest.raises(ValueError, match="strictly decreasing"):
        DiscreteVP(torch.tensor([0.9, 0.95, 0.5]))
    with pytest.raises(ValueError, match="prediction_type"):
        from_diffusers(_unet(), {"num_train_timesteps": 10, "prediction_type": "flow"})
    with pytest.raises(ValueError, match="UNet2DModel"):
        from_diffusers(torch.nn.Linear(2, 2), DDPMScheduler(**SCHED))
    hub = from_diffusers(_unet(), DDPMScheduler(**SCHED))
    with pytest.raises(ValueError, match="unconditional"):
        hub.generate(2, steps=2, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="could not load"):
        load_hub("/nonexistent/folder/for/test")
