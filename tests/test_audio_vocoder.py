"""The DiffWave + PriorGrad diffusion vocoder: shapes and alignment, whitening, training, exact sampling."""
import math

import pytest
import torch

from polydiff.core.grids import make_grid
from polydiff.domains.audio import vocoder as V


def tiny(**kw) -> V.Vocoder:
    torch.manual_seed(0)
    cfg = dict(channels=8, layers=3, dilation_cycle=3, emb_dim=16, emb_hidden=16)
    cfg.update(kw)
    return V.Vocoder(V.VocoderConfig(**cfg))


def speechlike_mel(frames: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    loud = torch.linspace(-9.0, -1.0, frames)[None, None] * torch.ones(batch, 80, 1)
    return loud + 0.5 * torch.randn(batch, 80, frames, generator=g)


def test_shapes_frames_times_hop():
    voc = tiny()
    hop = voc.config.hop_length
    for frames in (1, 5, 13):
        mel = speechlike_mel(frames, batch=2)
        assert voc.net.upsample(voc.normalize_mel(mel)).shape == (2, 80, frames * hop)
        assert voc.prior_std(mel).shape == (2, 1, frames * hop)
        out = voc.net(torch.randn(2, 1, frames * hop), torch.full((2,), 0.3), mel=voc.normalize_mel(mel))
        assert out.shape == (2, 1, frames * hop)
        y = voc.vocode(mel[0], steps=2)
        assert y.shape == (frames * hop,) and y.dtype == torch.float32
        assert voc.vocode(mel, steps=1).shape == (2, frames * hop)


def test_conditioner_centres_each_frame_on_its_stft_centre():
    """With positive transposed-conv weights (band-diagonal) and zero bias, a one-frame impulse's
    footprint is centred on sample j * hop (the STFT frame centre), within the half sample an even kernel
    leaves."""
    voc = tiny()
    with torch.no_grad():
        for up in voc.net.up:
            up.weight.zero_()
            up.weight[:, :, 1, :] = 1.0
            up.bias.zero_()
    hop, n = voc.config.hop_length, 9
    for j in (2, 4, 6):
        mel = torch.zeros(1, 80, n)
        mel[0, 10, j] = 1.0
        with torch.no_grad():
            c = voc.net.upsample(mel)[0, 10].double()
        pos = torch.arange(c.numel(), dtype=torch.float64)
        centre = float((c * pos).sum() / c.sum())
        assert abs(centre - j * hop) <= 0.5 + 1e-9
        assert float(c[: (j - 2) * hop].abs().sum()) == 0.0 and float(c[(j + 2) * hop:].abs().sum()) == 0.0


def test_prior_std_follows_frame_energy_and_interpolates():
    voc = tiny()
    cfg = voc.config
    mel = speechlike_mel(7).double()
    e = torch.exp(2 * mel).mean(1).sqrt()[0]                      # (F,)
    std = voc.prior_std(mel)[0, 0]
    want = (cfg.prior_scale * e).clamp_min(cfg.prior_std_min)
    hop = cfg.hop_length
    torch.testing.assert_close(std[:: hop], want, rtol=1e-12, atol=0)          # exact at frame centres
    mid = std[hop // 2:: hop][:-1]                                              # half-way: the mean
    torch.testing.assert_close(mid, 0.5 * (want[:-1] + want[1:]), rtol=1e-12, atol=0)
    assert float(std.min()) >= cfg.prior_std_min
    silent = torch.full((1, 80, 3), math.log(1e-5))
    assert torch.all(voc.prior_std(silent) == cfg.prior_std_min)


def test_whitening_is_exactly_inverted():
    voc = tiny()
    g = torch.Generator().manual_seed(1)
    mel = speechlike_mel(6).double()
    std = voc.prior_std(mel)
    x = 0.2 * torch.randn(std.shape, generator=g, dtype=torch.float64)
    w = V.whiten(x, std)
    torch.testing.assert_close(V.unwhiten(w, std), x, rtol=4 * 2.0 ** -52, atol=0)
    torch.testing.assert_close(w, x / std, rtol=0, atol=0)
    # w is unit-scale where x has the prior's scale
    z = torch.randn(std.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(V.whiten(z * std, std), z, rtol=4 * 2.0 ** -52, atol=0)


def test_training_loss_decreases_on_a_tiny_overfit_problem():
    voc = tiny()
    hop, frames = voc.config.hop_length, 4
    n = torch.arange(frames * hop, dtype=torch.float32)
    audio = (0.1 * torch.sin(2 * math.pi * 220 * n / 16000))[None]
    mel = speechlike_mel(frames)
    opt = torch.optim.Adam(voc.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = voc.loss(audio, mel, generator=torch.Generator().manual_seed(0))   # same t and noise each step
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


class ExactGaussianV(torch.nn.Module):
    """v-prediction of the exact denoiser for w0 ~ N(0, s^2 I): E[w0 | w_t] = alpha s^2 / (alpha^2 s^2 + sigma^2) w_t."""

    def __init__(self, path, s: float) -> None:
        super().__init__()
        self.path, self.s2 = path, s * s

    def forward(self, w, t, mel=None):
        t64 = t.double()
        a = self.path.alpha(t64).to(w)[:, None, None]
        sg = self.path.sigma(t64).to(w)[:, None, None]
        w0 = a * self.s2 / (a * a * self.s2 + sg * sg) * w
        eps = (w - a * w0) / sg
        return a * eps - sg * w0


def test_vocode_with_exact_gaussian_denoiser_matches_closed_form():
    """For whitened data w0 ~ N(0, s^2), every deterministic DDIM step is w -> c_i w with a closed-form c_i,
    so vocode must return exactly std_prior * sigma(1) * prod c_i * noise (noise from the seed)."""
    voc = tiny()
    s = 0.7
    voc.net = ExactGaussianV(voc.path, s)
    mel = speechlike_mel(5, batch=2)
    steps, seed = 6, 3
    y = voc.vocode(mel, steps=steps, seed=seed, solver="ddim", grid="logsnr")
    std = voc.prior_std(mel)[:, 0]
    noise = torch.randn((2, 1, 5 * 256), generator=torch.Generator().manual_seed(seed))[:, 0]
    grid = make_grid("logsnr", steps, voc.path).double()
    a, sg = voc.path.alpha(grid), voc.path.sigma(grid)
    k = float(sg[0])
    for i in range(len(grid) - 1):
        gain = a[i] * s * s / (a[i] ** 2 * s * s + sg[i] ** 2)
        k *= float(a[i + 1] * gain + sg[i + 1] * (1 - a[i] * gain) / sg[i])
    torch.testing.assert_close(y, (std * k * noise).clamp(-1, 1), rtol=1e-4, atol=1e-6)


def test_vocode_with_exact_gaussian_denoiser_has_the_data_variance():
    """With many steps of a second-order solver the sampled waveform's variance is std_prior^2 s^2."""
    voc = tiny()
    s = 0.5
    voc.net = ExactGaussianV(voc.path, s)
    mel = torch.full((4, 80, 8), -3.0)          # constant loudness: one prior std everywhere
    y = voc.vocode(mel, steps=60, seed=0, solver="dpmpp_2m")
    std = float(voc.prior_std(mel)[0, 0, 0])
    var = float(y.double().var())
    n = y.numel()
    assert abs(var / (std * s) ** 2 - 1) < 4 * math.sqrt(2 / n) + 5e-3


def test_bad_inputs_raise_value_error():
    voc = tiny()
    good = speechlike_mel(4)[0]
    with pytest.raises(ValueError, match="n_mels"):
        voc.vocode(torch.zeros(64, 4))
    with pytest.raises(ValueError, match="n_mels"):
        voc.vocode(torch.zeros(80))
    with pytest.raises(ValueError, match="n_mels"):
        voc.vocode(torch.zeros(80, 0))
    with pytest.raises(ValueError, match="NaN"):
        bad = good.clone()
        bad[3, 2] = float("nan")
        voc.vocode(bad)
    with pytest.raises(ValueError, match="float"):
        voc.vocode(torch.zeros(80, 4, dtype=torch.long))
    for steps in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="steps"):
            voc.vocode(good, steps=steps)
    with pytest.raises(ValueError, match="unknown solver"):
        voc.vocode(good, solver="nope")
    with pytest.raises(ValueError, match="audio must be"):
        voc.loss(torch.zeros(1, 100), good[None])
    with pytest.raises(ValueError, match="valid"):
        V.pretrained("nope")
    with pytest.raises(ValueError, match="multiply"):
        V.VocoderConfig(upsample=(16, 8))
    with pytest.raises(ValueError, match="unknown vocoder config"):
        V.VocoderConfig.from_dict({"chanels": 3})


def test_pretrained_rms_loads_and_vocodes():
    folder = V.WEIGHTS_DIR / V.PRETRAINED["rms"]
    assert (folder / "model.safetensors").stat().st_size < 10 * 2 ** 20
    assert (folder / "README.md").is_file()
    voc = V.pretrained("rms")
    assert not voc.training
    mel = speechlike_mel(8)[0]
    y = voc.vocode(mel, steps=2, seed=0)
    assert y.shape == (8 * 256,)
    assert bool(torch.isfinite(y).all()) and float(y.abs().max()) <= 1.0
    assert torch.equal(y, voc.vocode(mel, steps=2, seed=0))        # seeded: reproducible
