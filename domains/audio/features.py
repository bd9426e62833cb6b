"""Speech features and their inverses: log-mel (+ Griffin-Lim) and the compressed complex STFT.

**Log-mel** (:class:`MelConfig`, the TTS and vocoder representation). Defaults: 16 kHz audio,
n_fft 1024, window 1024 (periodic Hann), hop 256 (16 ms), 80 mel bands from 0 to 8 kHz on the
Slaney mel scale with Slaney (area) normalisation, magnitude (not power) spectrum, centred frames
with reflect padding, so a waveform of T samples gives ``1 + T // hop`` frames. The feature is
``log(max(mel, 1e-5))`` (natural log, as HiFi-GAN and Grad-TTS): values lie in about
[-11.5, 3]; silence sits at the floor log(1e-5) = -11.51. Tensors are (..., n_mels, frames).

**Griffin-Lim** (:func:`griffin_lim`) is the dependency-free baseline vocoder: the mel is mapped
back to a linear magnitude by non-negative least squares (multiplicative updates), then the phase is
found with the fast Griffin-Lim algorithm (Griffin & Lim, IEEE TASSP 1984; momentum 0.99 as in
Perraudin, Balazs & Søndergaard, "A fast Griffin-Lim algorithm", WASPAA 2013).

**Compressed complex STFT** (:class:`SpecConfig`, the speech-enhancement representation of SGMSE+:
Richter, Welker, Lemercier, Lay & Gerkmann, "Speech enhancement and dereverberation with
diffusion-based generative models", IEEE/ACM TASLP 31, 2023). 16 kHz, n_fft 510 (256 frequency
bins), hop 128, periodic Hann window, centred frames; each coefficient z becomes
``beta * |z|**alpha * exp(i angle z)`` with alpha 0.5 and beta 0.15. :func:`inverse_compressed_stft`
undoes it exactly (up to float rounding), given the waveform length. As in SGMSE+, a caller usually
divides the waveform by the noisy signal's peak first (:func:`polydiff.domains.audio.io.normalize_peak`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch

from .io import _as_tensor


@dataclass(frozen=True)
class MelConfig:
    """Log-mel parameters (see the module notes for the conventions)."""
    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    floor: float = 1e-5

    def __post_init__(self) -> None:
        if self.win_length > self.n_fft or min(self.n_fft, self.hop_length, self.win_length, self.n_mels) < 1:
            raise ValueError(f"bad mel config: need 1 <= win_length <= n_fft, hop_length >= 1, n_mels >= 1: {self}")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"bad mel config: need 0 <= fmin < fmax <= sample_rate / 2 ({self.sample_rate / 2}); "
                             f"got fmin {self.fmin}, fmax {self.fmax}")
        if not self.floor > 0:
            raise ValueError(f"bad mel config: floor must be > 0, got {self.floor}")

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1


@dataclass(frozen=True)
class SpecConfig:
    """Compressed complex-STFT parameters (SGMSE+ defaults)."""
    sample_rate: int = 16000
    n_fft: int = 510
    hop_length: int = 128
    alpha: float = 0.5
    beta: float = 0.15

    def __post_init__(self) -> None:
        if self.n_fft < 2 or not 1 <= self.hop_length <= self.n_fft // 2:
            raise ValueError(f"bad STFT config: need n_fft >= 2 and 1 <= hop_length <= n_fft / 2 "
                             f"(for an exact inverse): {self}")
        if not (self.alpha > 0 and self.beta > 0):
            raise ValueError(f"bad STFT config: alpha and beta must be > 0: {self}")

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1


# ---------------------------------------------------------------- helpers
def _window(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.hann_window(n, periodic=True, device=device, dtype=dtype)


def _waveform(audio: torch.Tensor, n_fft: int) -> torch.Tensor:
    x = _as_tensor(audio)
    if not x.is_floating_point():
        raise ValueError(f"audio must be float, got {x.dtype}")
    if x.dim() not in (1, 2):
        raise ValueError(f"audio must be (T,) or (B, T), got shape {tuple(x.shape)}")
    if x.shape[-1] <= n_fft // 2:
        raise ValueError(f"audio too short: {x.shape[-1]} samples; need more than n_fft / 2 = {n_fft // 2}")
    if not torch.isfinite(x).all():
        raise ValueError("audio contains NaN or infinite samples")
    return x


def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    """Slaney's mel scale: linear (3 / 200 mel per Hz) below 1 kHz, logarithmic above."""
    f = torch.as_tensor(f, dtype=torch.float64)
    lin = f * 3.0 / 200.0
    log = 15.0 + torch.log(torch.clamp(f, min=1e-10) / 1000.0) * 27.0 / math.log(6.4)
    return torch.where(f < 1000.0, lin, log)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`."""
    m = torch.as_tensor(m, dtype=torch.float64)
    return torch.where(m < 15.0, m * 200.0 / 3.0, 1000.0 * torch.exp((m - 15.0) * math.log(6.4) / 27.0))


def mel_centers(config: MelConfig = MelConfig()) -> torch.Tensor:
    """Centre frequency in Hz of each mel band (n_mels,)."""
    m = torch.linspace(float(hz_to_mel(torch.tensor(config.fmin))), float(hz_to_mel(torch.tensor(config.fmax))),
                       config.n_mels + 2, dtype=torch.float64)
    return mel_to_hz(m)[1:-1]


@functools.lru_cache(maxsize=8)
def _filterbank(config: MelConfig) -> torch.Tensor:
    import torchaudio.functional as AF
    return AF.melscale_fbanks(config.n_freqs, config.fmin, config.fmax, config.n_mels, config.sample_rate,
                              norm="slaney", mel_scale="slaney").T.contiguous()          # (n_mels, n_freqs)


def mel_filterbank(config: MelConfig = MelConfig()) -> torch.Tensor:
    """The (n_mels, n_freqs) triangular filters (Slaney scale and area normalisation)."""
    return _filterbank(config).clone()


# ---------------------------------------------------------------- log-mel
def stft(audio: torch.Tensor, n_fft: int, hop_length: int, win_length: Optional[int] = None) -> torch.Tensor:
    """Complex STFT (..., n_fft // 2 + 1, 1 + T // hop): periodic Hann, centred, reflect padding."""
    win_length = win_length or n_fft
    x = _waveform(audio, n_fft)
    w = _window(win_length, x.device, x.dtype)
    return torch.stft(x, n_fft, hop_length, win_length, window=w, center=True, pad_mode="reflect",
                      return_complex=True)


def istft(spec: torch.Tensor, n_fft: int, hop_length: int, win_length: Optional[int] = None,
          length: Optional[int] = None) -> torch.Tensor:
    """Inverse of :func:`stft` (least-squares overlap-add; exact for a consistent spectrogram)."""
    if not spec.is_complex():
        raise ValueError(f"istft needs a complex spectrogram, got dtype {spec.dtype}")
    if spec.shape[-2] != n_fft // 2 + 1:
        raise ValueError(f"spectrogram has {spec.shape[-2]} frequency bins; n_fft {n_fft} needs {n_fft // 2 + 1}")
    win_length = win_length or n_fft
    w = _window(win_length, spec.device, spec.real.dtype)
    return torch.istft(spec, n_fft, hop_length, win_length, window=w, center=True, length=length)


def log_mel(audio: torch.Tensor, config: MelConfig = MelConfig()) -> torch.Tensor:
    """Log-mel features (..., n_mels, 1 + T // hop) of a (T,) or (B, T) waveform at ``config.sample_rate``."""
    mag = stft(audio, config.n_fft, config.hop_length, config.win_length).abs()
    mel = torch.matmul(_filterbank(config).to(mag.device, mag.dtype), mag)
    return torch.log(torch.clamp(mel, min=config.floor))


def mel_to_magnitude(mel_log: torch.Tensor, config: MelConfig = MelConfig(), n_iter: int = 50) -> torch.Tensor:
    """A non-negative linear magnitude S (..., n_freqs, frames) with filterbank @ S ≈ exp(mel_log).

    Non-negative least squares by multiplicative updates (Lee & Seung, NIPS 2000) from the
    clamped pseudo-inverse; bins outside [fmin, fmax] stay 0."""
    if mel_log.shape[-2] != config.n_mels:
        raise ValueError(f"mel has {mel_log.shape[-2]} bands; the config has n_mels {config.n_mels}")
    if not torch.isfinite(mel_log).all():
        raise ValueError("mel contains NaN or infinite values")
    fb = _filterbank(config).to(mel_log.device, torch.float64)
    target = torch.exp(mel_log.double())
    s = torch.clamp(torch.matmul(torch.linalg.pinv(fb), target), min=0.0) + 1e-12 * (fb.sum(0) > 0)[:, None].double()
    gram, rhs = fb.T @ fb, torch.matmul(fb.T, target)
    for _ in range(n_iter):
        s = s * rhs / torch.clamp(torch.matmul(gram, s), min=1e-30)
    return s.to(mel_log.dtype)


def griffin_lim(mel_log: torch.Tensor, config: MelConfig = MelConfig(), *, n_iter: int = 32,
                momentum: float = 0.99, length: Optional[int] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Waveform (..., T) from log-mel features by fast Griffin-Lim.

    The initial phase is zero, or uniform random when a ``generator`` is given. ``length``
    trims/pads the output to T samples (default ``(frames - 1) * hop``)."""
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    mag = mel_to_magnitude(mel_log, config)
    frames = mag.shape[-1]
    length = length if length is not None else (frames - 1) * config.hop_length
    if generator is not None:
        phase = torch.rand(mag.shape, generator=generator, dtype=mag.dtype).to(mag.device) * (2 * math.pi)
        spec = torch.polar(mag, phase)
    else:
        spec = mag.to(torch.complex64 if mag.dtype == torch.float32 else torch.complex128)
    args = (config.n_fft, config.hop_length, config.win_length)
    prev = torch.zeros_like(spec)
    for _ in range(n_iter):
        wav = istft(spec, *args, length=length)
        proj = stft(wav, *args)
        accel = proj + momentum * (proj - prev)
        prev = proj
        spec = torch.polar(mag, torch.angle(accel))
    return istft(spec, *args, length=length)


# ---------------------------------------------------------------- compressed complex STFT (SGMSE+)
def compressed_stft(audio: torch.Tensor, config: SpecConfig = SpecConfig()) -> torch.Tensor:
    """Complex (..., n_fft // 2 + 1, 1 + T // hop) spectrogram with amplitude compression
    ``beta |z|^alpha e^{i angle z}`` (SGMSE+)."""
    z = stft(audio, config.n_fft, config.hop_length)
    if config.alpha != 1.0:
        z = torch.polar(z.abs() ** config.alpha, z.angle())
    return config.beta * z


def inverse_compressed_stft(spec: torch.Tensor, length: int, config: SpecConfig = SpecConfig()) -> torch.Tensor:
    """The waveform (..., length) of a compressed spectrogram: undoes :func:`compressed_stft` exactly."""
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int (the waveform's sample count), got {length!r}")
    if not spec.is_complex():
        raise ValueError(f"a compressed STFT is complex, got dtype {spec.dtype}")
    if not torch.isfinite(torch.view_as_real(spec)).all():
        raise ValueError("spectrogram contains NaN or infinite values")
    z = spec / config.beta
    if config.alpha != 1.0:
        z = torch.polar(z.abs() ** (1.0 / config.alpha), z.angle())
    return istft(z, config.n_fft, config.hop_length, length=length)
