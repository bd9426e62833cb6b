"""Speech features: exact compressed-STFT round trips, mel tone placement, Griffin-Lim recovering a tone."""
from __future__ import annotations

import math

import pytest
import torch

from polydiff.domains.audio import features as F


def _tone(f: float, sr: int = 16000, n: int = 16000, amp: float = 0.5, dtype=torch.float32) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.float64) / sr
    return (amp * torch.sin(2 * math.pi * f * t)).to(dtype)


def _peak_hz(x: torch.Tensor, sr: int = 16000) -> float:
    x = x.double()
    spec = torch.fft.rfft(x * torch.hann_window(x.numel(), dtype=torch.float64))
    return float(spec.abs().argmax()) * sr / x.numel()


def test_compressed_stft_shape_and_formula():
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(2, 8000, generator=g, dtype=torch.float64)
    cfg = F.SpecConfig()
    c = F.compressed_stft(x, cfg)
    assert c.shape == (2, 256, 1 + 8000 // 128) and c.is_complex()
    z = torch.stft(x, 510, 128, window=torch.hann_window(510, periodic=True, dtype=torch.float64),
                   center=True, return_complex=True)
    assert torch.allclose(c.abs(), 0.15 * z.abs() ** 0.5, atol=1e-12)
    big = z.abs() > 1e-6
    assert torch.allclose(torch.polar(torch.ones_like(c.abs()), c.angle())[big],
                          torch.polar(torch.ones_like(z.abs()), z.angle())[big], atol=1e-9)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_compressed_stft_round_trip_is_exact(dtype, tol):
    g = torch.Generator().manual_seed(1)
    for length in (16000, 12345):
        x = (0.3 * torch.randn(length, generator=g, dtype=torch.float64)).to(dtype)
        y = F.inverse_compressed_stft(F.compressed_stft(x), length)
        assert y.shape == x.shape and float((y - x).abs().max()) < tol
    cfg = F.SpecConfig(alpha=0.333, beta=0.5)       # any compression inverts exactly
    x = (0.3 * torch.randn(4000, generator=g, dtype=torch.float64))
    assert float((F.inverse_compressed_stft(F.compressed_stft(x, cfg), 4000, cfg) - x).abs().max()) < 1e-12


def test_mel_scale_closed_form():
    assert float(F.hz_to_mel(torch.tensor(1000.0))) == pytest.approx(15.0)
    assert float(F.hz_to_mel(torch.tensor(6400.0))) == pytest.approx(42.0)
    assert float(F.hz_to_mel(torch.tensor(600.0))) == pytest.approx(9.0)
    f = torch.tensor([0.0, 300.0, 999.0, 1000.0, 4000.0, 8000.0])
    assert torch.allclose(F.mel_to_hz(F.hz_to_mel(f)), f.double(), atol=1e-9)


def test_log_mel_of_a_tone_peaks_at_its_band():
    cfg = F.MelConfig()
    centers = F.mel_centers(cfg)
    for k in (5, 20, 37, 55, 70):
        m = F.log_mel(_tone(float(centers[k])), cfg)
        assert m.shape == (80, 1 + 16000 // 256)
        assert int(m.mean(-1).argmax()) == k
    m = F.log_mel(_tone(1000.0), cfg)
    assert int(m.mean(-1).argmax()) == int((centers - 1000.0).abs().argmin())
    silent = F.log_mel(torch.zeros(4000), cfg)
    assert torch.allclose(silent, torch.full_like(silent, math.log(1e-5)))
    assert F.log_mel(torch.stack([_tone(500.0), _tone(900.0)]), cfg).shape == (2, 80, 63)


def test_griffin_lim_recovers_a_tone():
    cfg = F.MelConfig()
    for f in (440.0, 1000.0, 2500.0):
        m = F.log_mel(_tone(f), cfg)
        y = F.griffin_lim(m, cfg, n_iter=32, length=16000)
        assert y.shape == (16000,)
        band = float(F.mel_centers(cfg)[1] - F.mel_centers(cfg)[0]) if f < 1000 else 0.06 * f
        assert abs(_peak_hz(y[2000:-2000]) - f) < band / 2 + 2.0
        # the reconstruction has (nearly) the same log-mel as the tone, where the tone has energy
        m2 = F.log_mel(y, cfg)
        loud = m > m.max() - 3.0
        assert float((m2 - m)[loud].abs().mean()) < 0.5


def test_mel_to_magnitude_fits_the_mel():
    cfg = F.MelConfig()
    g = torch.Generator().manual_seed(0)
    mag = torch.rand(cfg.n_freqs, 10, generator=g, dtype=torch.float64)
    mel = torch.log(F.mel_filterbank(cfg).double() @ mag)
    s = F.mel_to_magnitude(mel, cfg, n_iter=200)
    assert (s >= 0).all()
    fit = F.mel_filterbank(cfg).double() @ s
    assert float(((fit - mel.exp()).norm() / mel.exp().norm())) < 0.02


def test_bad_input_errors():
    with pytest.raises(ValueError, match="too short"):
        F.log_mel(torch.zeros(100))
    with pytest.raises(ValueError, match="NaN"):
        F.log_mel(torch.full((4000,), float("nan")))
    with pytest.raises(ValueError, match="fmax"):
        F.MelConfig(fmax=9000.0)
    with pytest.raises(ValueError, match="n_mels"):
        F.griffin_lim(torch.zeros(40, 10))
    with pytest.raises(ValueError, match="complex"):
        F.inverse_compressed_stft(torch.zeros(256, 10), 1000)
    with pytest.raises(ValueError, match="length"):
        F.inverse_compressed_stft(torch.zeros(256, 10, dtype=torch.complex64), 0)
