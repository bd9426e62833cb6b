"""Audio I/O: exact round trips, documented mono conversion, resampling, and clear errors for bad files."""
from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from polydiff.domains.audio import io as aio


def _tone(f: float, sr: int, seconds: float = 1.0, amp: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(sr * seconds), dtype=torch.float64) / sr
    return (amp * torch.sin(2 * math.pi * f * t)).float()


def test_write_read_round_trip_pcm16(tmp_path):
    x = _tone(440.0, 16000)
    p = aio.write(tmp_path / "a.wav", x, 16000)
    y, sr = aio.read(p)
    assert sr == 16000 and y.dtype == torch.float32 and y.shape == x.shape
    assert (y - x).abs().max() <= 1.0 / 32768 + 1e-7          # 16-bit quantisation only
    assert aio.info(p) == (16000, 1, 16000)


def test_stereo_is_averaged_or_refused(tmp_path):
    left, right = _tone(300.0, 16000).numpy(), _tone(500.0, 16000, amp=0.25).numpy()
    p = tmp_path / "st.wav"
    sf.write(str(p), np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    y, _ = aio.read(p)
    assert torch.allclose(y, torch.from_numpy((left + right) / 2), atol=1e-7)
    with pytest.raises(ValueError, match="2 channels"):
        aio.read(p, multichannel="error")
    with pytest.raises(ValueError, match="unknown multichannel mode"):
        aio.read(p, multichannel="left")


def test_read_resamples_on_request(tmp_path):
    x = _tone(440.0, 22050, seconds=1.0)
    p = aio.write(tmp_path / "b.wav", x, 22050)
    y, sr = aio.read(p, sample_rate=16000)
    assert sr == 16000 and y.shape == (16000,)
    spec = torch.fft.rfft(y[1000:-1000].double() * torch.hann_window(14000, dtype=torch.float64))
    assert abs(float(spec.abs().argmax()) * 16000 / 14000 - 440.0) < 16000 / 14000
    assert abs(float(y[2000:-2000].abs().max()) - 0.5) < 0.01          # amplitude kept in the pass band


def test_resample_identity_and_lengths():
    x = _tone(1000.0, 16000)
    assert aio.resample(x, 16000, 16000) is x
    assert aio.resample(x, 16000, 8000).shape == (8000,)
    b = torch.stack([x, 0.5 * x])
    yb = aio.resample(b, 16000, 24000)
    assert yb.shape == (2, 24000) and torch.allclose(yb[1], 0.5 * yb[0], atol=1e-6)
    # a tone above the new Nyquist is removed
    hi = aio.resample(_tone(6000.0, 16000), 16000, 8000)
    assert float(hi[500:-500].abs().max()) < 0.01


@pytest.mark.parametrize("rate", [0, 500, 1_000_000, 16000.5])
def test_unsupported_sample_rates(rate):
    with pytest.raises(ValueError, match="sample rate"):
        aio.resample(_tone(100.0, 16000), 16000, rate)


def test_file_with_unsupported_rate(tmp_path):
    p = tmp_path / "low.wav"
    sf.write(str(p), np.zeros(100) + 0.1, 2000)
    with pytest.raises(ValueError, match="unsupported sample rate"):
        aio.read(p)


def test_empty_silent_clipped_and_unreadable_files(tmp_path):
    sf.write(str(tmp_path / "empty.wav"), np.zeros(0), 16000)
    with pytest.raises(ValueError, match="empty"):
        aio.read(tmp_path / "empty.wav")
    sf.write(str(tmp_path / "silent.wav"), np.zeros(16000), 16000)
    with pytest.raises(ValueError, match="silent"):
        aio.read(tmp_path / "silent.wav")
    y, _ = aio.read(tmp_path / "silent.wav", allow_silent=True)
    assert y.abs().max() == 0
    clipped = (3 * _tone(200.0, 16000)).clamp(-1, 1)
    sf.write(str(tmp_path / "clip.wav"), clipped.numpy(), 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="clipped"):
        aio.read(tmp_path / "clip.wav")
    assert aio.read(tmp_path / "clip.wav", allow_clipped=True)[0].shape == (16000,)
    (tmp_path / "text.wav").write_text("this is not audio")
    with pytest.raises(ValueError, match="cannot read audio file"):
        aio.read(tmp_path / "text.wav")
    with pytest.raises(ValueError, match="does not exist"):
        aio.read(tmp_path / "nope.wav")


def test_clipped_fraction_is_exact():
    x = torch.zeros(1000)
    x[1:4] = 1.0          # a flat run of 3 at the peak: clipping
    x[5] = -1.0           # an isolated peak sample: not clipping
    x[10:12] = 1.0        # a run of 2: not counted
    assert aio.clipped_fraction(x) == 3 / 1000
    assert aio.clipped_fraction(_tone(50.0, 16000, amp=1.0)) == 0.0     # a full-scale sine is not clipped
    aio.check(_tone(50.0, 16000, amp=1.0))


def test_check_rejects_nan_and_beyond_full_scale():
    with pytest.raises(ValueError, match="NaN"):
        aio.check(torch.tensor([0.1, float("nan"), 0.2]))
    with pytest.raises(ValueError, match="full scale"):
        aio.check(torch.tensor([0.1, 1.5, 0.2]))
    with pytest.raises(ValueError, match="empty"):
        aio.check(torch.zeros(0))


def test_write_refuses_bad_audio(tmp_path):
    with pytest.raises(ValueError, match="full scale"):
        aio.write(tmp_path / "x.wav", torch.tensor([0.0, 1.2, 0.0]), 16000)
    with pytest.raises(ValueError, match="NaN"):
        aio.write(tmp_path / "x.wav", torch.tensor([0.0, float("inf")]), 16000)
    with pytest.raises(ValueError, match="mono"):
        aio.write(tmp_path / "x.wav", torch.zeros(2, 10), 16000)
    with pytest.raises(ValueError, match="unknown format"):
        aio.write(tmp_path / "x.xyz", torch.zeros(10), 16000)
    with pytest.raises(ValueError, match="sample rate"):
        aio.write(tmp_path / "x.wav", torch.zeros(10), 100)


def test_normalize_peak():
    x = torch.stack([_tone(100.0, 8000, amp=0.2), _tone(200.0, 8000, amp=0.7)])
    y = aio.normalize_peak(x, 0.9)
    assert torch.allclose(y.abs().amax(-1), torch.tensor([0.9, 0.9]))
    with pytest.raises(ValueError, match="silent"):
        aio.normalize_peak(torch.zeros(10))
