"""Speech enhancement: exact mixtures, the Wiener baseline, the OUVE training state, the shipped model, the CLI."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from polydiff.core import Denoiser, losses, paths
from polydiff.domains.audio import enhance as E

torch.set_num_threads(1)
SR = 16000


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _speechlike(n: int, seed: int = 0) -> torch.Tensor:
    """A harmonic 'vowel' with a syllable envelope: deterministic test speech."""
    t = torch.arange(n, dtype=torch.float64) / SR
    f0 = 140.0 + 20.0 * torch.sin(2 * math.pi * 3.0 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / SR
    x = sum(torch.sin(k * phase) / k for k in range(1, 12))
    env = torch.sin(math.pi * torch.arange(n) / n).clamp_min(0) ** 2 * (0.5 + 0.5 * torch.sin(2 * math.pi * 4 * t))
    return (0.3 * x * env / (x * env).abs().max()).float()


# ------------------------------------------------------------------ mixtures
@pytest.mark.parametrize("snr_db,noise_len", [(-5.0, 8000), (0.0, 4000), (7.5, 20000), (15.0, 8000)])
def test_mix_has_exact_snr(snr_db, noise_len):
    g = _gen(1)
    clean = torch.randn(8000, generator=g) * 0.1
    noise = torch.randn(noise_len, generator=g)
    noisy = E.mix(clean, noise, snr_db)
    n = noisy.double() - clean.double()
    assert abs(10 * math.log10(float(clean.double().square().sum() / n.square().sum())) - snr_db) < 1e-5
    # the noise part is a scaled copy of the (tiled or cut) noise
    ref = E.fit_length(noise, 8000).double()
    gain = float((n @ ref) / (ref @ ref))
    assert torch.allclose(n, gain * ref, atol=1e-6)


def test_mix_rejects_bad_input():
    x = torch.randn(100)
    with pytest.raises(ValueError, match="all zeros"):
        E.mix(torch.zeros(100), x, 0.0)
    with pytest.raises(ValueError, match="all zeros"):
        E.mix(x, torch.zeros(100), 0.0)
    with pytest.raises(ValueError, match="NaN"):
        E.mix(x, torch.full((100,), float("nan")), 0.0)
    with pytest.raises(ValueError, match="finite"):
        E.mix(x, x, float("inf"))
    with pytest.raises(ValueError, match="empty"):
        E.mix(torch.zeros(0), x, 0.0)


def test_coloured_noise_is_shaped_white_noise():
    """pink/brown = white noise from the same generator with its spectrum times f^(-e/2) (DC removed)."""
    n = 4096
    for kind, e in (("pink", 1.0), ("brown", 2.0)):
        c = E.make_noise(kind, n, _gen(3)).double()
        w = torch.fft.rfft(torch.randn(n, generator=_gen(3), dtype=torch.float64))
        ratio = torch.fft.rfft(c)[1:] / w[1:]
        f = torch.arange(1, w.numel(), dtype=torch.float64)
        expected = f ** (-e / 2)
        scale = float(ratio.real.median() / expected.median())       # float32 output: relative 1e-4
        assert torch.allclose(ratio, (scale * expected).to(ratio.dtype), rtol=1e-4, atol=1e-4 * scale)
        assert abs(float(c.square().mean()) - 1.0) < 1e-5 and abs(float(c.mean())) < 1e-5
    w1 = E.make_noise("white", 1000, _gen(5))
    assert torch.equal(w1, torch.randn(1000, generator=_gen(5)))
    with pytest.raises(ValueError, match="valid: white, pink, brown, babble"):
        E.make_noise("purple", 10, _gen(0))
    with pytest.raises(ValueError, match="babble"):
        E.make_noise("babble", 10, _gen(0))


def test_babble_and_dataset_are_seeded_and_exact():
    utts = [_speechlike(3000 + 500 * i) for i in range(5)]
    b1 = E.babble_noise(6000, utts, _gen(2))
    assert torch.equal(b1, E.babble_noise(6000, utts, _gen(2)))
    assert abs(float(b1.double().square().mean()) - 1.0) < 1e-6
    ds = E.MixtureDataset([(_speechlike(5000) * 32767).to(torch.int16)], babble=utts, snr_db=(-5, 15), seed=4,
                          length=12)
    items = [ds[i] for i in range(12)]
    again = ds[7]
    assert torch.equal(items[7]["noisy"], again["noisy"]) and items[7]["kind"] == again["kind"]
    for it in items:
        assert -5 <= it["snr_db"] <= 15
        assert abs(E.snr(it["clean"], it["noisy"]) - it["snr_db"]) < 1e-3
    assert len({it["kind"] for it in items}) > 1
    with pytest.raises(ValueError, match="valid"):
        E.MixtureDataset([utts[0]], kinds=("rain",))


# ------------------------------------------------------------------ Wiener
def test_wiener_improves_snr_of_a_tone_in_white_noise():
    n = 2 * SR
    t = torch.arange(n) / SR
    gate = ((t > 0.5) & (t < 1.5)).float()                # a tone burst; silence around it for the noise PSD
    tone = 0.3 * torch.sin(2 * math.pi * 1000.0 * t) * gate
    noisy = E.mix(tone, torch.randn(n, generator=_gen(0)), 0.0)
    out = E.wiener(noisy, SR)
    assert out.shape == noisy.shape and torch.isfinite(out).all()
    gain = E.snr(tone, out) - E.snr(tone, noisy)
    assert gain > 8.0, gain
    with pytest.raises(ValueError, match="NaN"):
        E.wiener(torch.full((1000,), float("nan")), SR)


# ------------------------------------------------------------------ the OUVE training state
def test_ouve_training_state_and_target_match_closed_form():
    """DiffusionLoss on OUVE feeds the network x~ = x_t - (1 - e^{-gamma t}) y, where x_t is SGMSE+'s
    marginal mean e^{-gamma t} x0 + (1 - e^{-gamma t}) y plus the closed-form std times eps, and its EDM
    target is x0."""
    gamma, smin, smax = 1.5, 0.05, 0.5
    L = math.log(smax / smin)
    path = paths.OUVE(gamma, smin, smax)
    g = _gen(0)
    x0, y = torch.randn(3, 2, 8, 8, generator=g, dtype=torch.float64), torch.randn(3, 2, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 2, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0.03, 0.4, 1.0], dtype=torch.float64)
    seen = {}

    def spy(x, c_noise, mu):
        seen["x"], seen["mu"] = x.clone(), mu
        return torch.zeros_like(x)

    sd = 0.1
    loss = losses.DiffusionLoss(path, prediction="edm", weighting="uniform", sigma_data=sd)
    per = loss.loss_at(spy, x0, t, eps, mu=y)
    a = torch.exp(-gamma * t).reshape(-1, 1, 1, 1)
    std = torch.sqrt(smin ** 2 * (torch.exp(2 * L * t) - torch.exp(-2 * gamma * t)) * L / (gamma + L)).reshape(-1, 1, 1, 1)
    x_t = a * x0 + (1 - a) * y + std * eps                 # SGMSE+ Eq. (8)-(9)
    x_shift = x_t - (1 - a) * y
    c_in = 1 / torch.sqrt(std ** 2 + a ** 2 * sd ** 2)
    assert torch.allclose(seen["x"], c_in * x_shift, atol=1e-10)
    assert torch.equal(seen["mu"], y)
    skip = sd ** 2 * a / (std ** 2 + a ** 2 * sd ** 2)        # F = 0, so D = skip * x~ and the loss is |D - x0|^2
    expected = (skip * x_shift - x0).square().flatten(1).mean(1)
    assert torch.allclose(per, expected, rtol=1e-9)
    # the Denoiser, called in original coordinates with mu=y, gives the network the same shifted state
    D = Denoiser(spy, path, prediction="edm", sigma_data=sd)
    out = D(x_t, t, mu=y)
    assert torch.allclose(seen["x"], c_in * x_shift, atol=1e-10)
    assert torch.allclose(out, skip * x_shift, atol=1e-10)


def test_training_pair_normalises_by_noisy_peak():
    clean = _speechlike(4000)[None].double()
    noisy = E.mix(clean[0], torch.randn(4000, generator=_gen(1), dtype=torch.float64), 0.0)[None]
    x0, y = E.training_pair(clean, noisy)
    x0b, yb = E.training_pair(3 * clean, 3 * noisy)
    assert x0.shape == (1, 2, 256, 1 + 4000 // 128)
    assert torch.allclose(x0, x0b, atol=1e-6) and torch.allclose(y, yb, atol=1e-6)
    from polydiff.domains.audio.features import compressed_stft
    peak = noisy.abs().max()
    assert torch.allclose(torch.complex(y[:, 0], y[:, 1]), compressed_stft(noisy / peak), atol=1e-9)


# ------------------------------------------------------------------ the shipped model
@pytest.fixture(scope="module")
def model():
    return E.pretrained("rms")


def test_shipped_model_enhances_a_short_clip(model):
    assert sum(p.numel() for p in model.net.parameters()) > 100_000
    clean = _speechlike(6000)
    noisy = E.mix(clean, torch.randn(6000, generator=_gen(2)), 5.0)
    a = model.enhance(noisy, SR, steps=3, seed=1)
    b = model.enhance(noisy, SR, steps=3, seed=1)
    c = model.enhance(noisy, SR, steps=3, seed=2)
    assert a.shape == (6000,) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    # scale equivariance: SGMSE+ works on the peak-normalised signal
    d = model.enhance(0.5 * noisy, SR, steps=3, seed=1)
    assert torch.allclose(d, 0.5 * a, atol=1e-4)
    with pytest.raises(ValueError, match="unknown method"):
        model.enhance(noisy, SR, method="magic")
    with pytest.raises(ValueError, match="valid: rms"):
        E.pretrained("nope")


def test_enhance_input_handling(model):
    clean = _speechlike(4000)
    noisy = E.mix(clean, torch.randn(4000, generator=_gen(3)), 10.0)
    with pytest.raises(ValueError, match="empty"):
        model.enhance(torch.zeros(0), SR)
    with pytest.raises(ValueError, match="silent"):
        model.enhance(torch.zeros(4000), SR)
    bad = noisy.clone()
    bad[10] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.enhance(bad, SR)
    with pytest.raises(ValueError, match="sample rate"):
        model.enhance(noisy, 100)
    # stereo: (T, 2) and (2, T) are averaged to mono
    stereo = torch.stack([noisy, 0.5 * noisy], dim=1)
    mono = model.enhance(0.75 * noisy, SR, steps=2, seed=0)
    assert torch.allclose(model.enhance(stereo, SR, steps=2, seed=0), mono, atol=1e-6)
    assert torch.allclose(model.enhance(stereo.T.numpy(), SR, steps=2, seed=0), mono, atol=1e-6)
    # another rate is resampled to 16 kHz and back: same length out, at the input's rate
    n8 = noisy[::2].contiguous()
    out8 = model.enhance(n8, 8000, steps=2, seed=0)
    assert out8.shape == n8.shape and torch.isfinite(out8).all()
    # very short input is padded to the network's multiple
    assert model.enhance(noisy[:300], SR, steps=2).shape == (300,)
    w = E.enhance(noisy, SR, method="wiener")
    assert torch.equal(w, E.wiener(noisy, SR))


def test_enhance_command(tmp_path, capsys):
    """`polydiff enhance` through the real CLI: stereo 22.05 kHz in, same rate and length out; bad steps exit 2."""
    import soundfile as sf
    from polydiff.tasks.cli import main
    clean = _speechlike(5000)
    noisy = E.mix(clean, torch.randn(5000, generator=_gen(4)), 5.0)
    src = tmp_path / "in.wav"
    sf.write(str(src), np.stack([noisy.numpy(), noisy.numpy()], 1), 22050)   # stereo, other rate
    for method, steps in (("wiener", None), ("sgmse", 2)):
        out = tmp_path / f"{method}.wav"
        argv = ["enhance", str(src), "--out", str(out), "--quiet", "--method", method] + (["--steps", str(steps)] if steps else [])
        assert main(argv) == 0
        data, rate = sf.read(str(out))
        assert rate == 22050 and data.shape == (5000,) and np.isfinite(data).all() and np.abs(data).max() > 0
    assert main(["enhance", str(src), "--out", str(tmp_path / "x.wav"), "--steps", "0"]) == 2
    assert "steps" in capsys.readouterr().err


# ------------------------------------------------------------------ the unsupervised route
def test_likelihood_guidance_is_the_exact_posterior_mean_under_a_flat_gaussian_prior():
    """With x0 ~ N(0, c I), c -> inf, x0 | x_t ~ N(x_t / alpha, sigma^2 / alpha^2): E[x0 | x_t, y] for
    y = x0 + N(0, v) is (alpha x / sigma^2 + y / v) / (alpha^2 / sigma^2 + 1 / v), which the guided
    denoiser must reproduce from the exact prior denoiser."""
    path = paths.OUVE().base
    c = 1e6
    g = _gen(6)
    x = torch.randn(3, 2, 4, 5, generator=g, dtype=torch.float64)
    y = torch.randn(3, 2, 4, 5, generator=g, dtype=torch.float64)
    v = torch.rand(1, 1, 4, 1, generator=g, dtype=torch.float64) + 0.1
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    a, s = (f(t).reshape(-1, 1, 1, 1) for f in (path.alpha, path.sigma))

    def prior(xx, tt, mu):
        assert torch.equal(mu, torch.zeros_like(xx))      # the condition is dropped
        return a * c * xx / (a * a * c + s * s)

    out = E.LikelihoodGuided(prior, y, v, path)(x, t)
    exact = (a * x / s ** 2 + y / v) / (1 / c + a * a / s ** 2 + 1 / v)
    assert torch.allclose(out, exact, rtol=1e-4, atol=1e-6)


def test_unsupervised_route_runs_and_is_seeded(model):
    clean = _speechlike(4000)
    noisy = E.mix(clean, torch.randn(4000, generator=_gen(8)), 5.0)
    a = model.enhance(noisy, SR, steps=2, seed=3, method="unsupervised")
    b = model.enhance(noisy, SR, steps=2, seed=3, method="unsupervised")
    assert a.shape == noisy.shape and torch.isfinite(a).all() and torch.equal(a, b)
