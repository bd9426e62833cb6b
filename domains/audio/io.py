"""Audio files in and out, with the checks that keep bad input away from the networks.

Reading and writing use ``soundfile`` (libsndfile: WAV, FLAC, OGG/Vorbis, AIFF, ...), not
``torchaudio.load/save``, which in torchaudio >= 2.9 need ``torchcodec``.

Conventions:

* A waveform is a float32 tensor of shape (T,) (one channel), or (B, T) for a batch, in
  [-1, 1] full scale; integer files are scaled by soundfile (int16 x / 32768).
* Multi-channel files are converted to mono by **averaging the channels** (documented
  conversion); ``multichannel="error"`` refuses them instead.
* Sample rates between ``MIN_RATE`` and ``MAX_RATE`` (4 kHz .. 192 kHz) are accepted; resampling
  is band-limited sinc interpolation (torchaudio.functional.resample, Kaiser window).
* Checks (``check``): empty audio, NaN/inf, silence (peak below ``SILENCE_PEAK`` = 1e-4,
  i.e. -80 dBFS, about 3 LSB of 16-bit audio) and clipping (more than ``CLIP_FRACTION`` = 0.1% of
  the samples in runs of >= 3 identical samples at the peak, or any sample beyond full scale)
  are ValueErrors with the file's name, unless explicitly allowed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch

MIN_RATE = 4000
MAX_RATE = 192000
SILENCE_PEAK = 1e-4
CLIP_FRACTION = 1e-3
MULTICHANNEL = ("average", "error")

PathLike = Union[str, Path]


def _check_rate(sample_rate: int, what: str = "sample rate") -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) \
            or not MIN_RATE <= int(sample_rate) <= MAX_RATE:
        raise ValueError(f"unsupported {what} {sample_rate!r}: need an integer in [{MIN_RATE}, {MAX_RATE}] Hz "
                         f"(speech models here use 16000 Hz)")
    return int(sample_rate)


def _as_tensor(audio: "torch.Tensor | np.ndarray", name: str = "audio") -> torch.Tensor:
    if isinstance(audio, np.ndarray):
        audio = torch.from_numpy(np.ascontiguousarray(audio))
    if not isinstance(audio, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(audio).__name__}")
    if audio.is_complex() or not (audio.is_floating_point() or audio.dtype in (torch.int16, torch.int32)):
        raise ValueError(f"{name} must hold real samples, got dtype {audio.dtype}")
    return audio


def clipped_fraction(audio: torch.Tensor) -> float:
    """Fraction of samples that sit in runs of >= 3 identical samples at the signal's peak |x|.

    Clipping flattens the waveform at the peak; a real waveform hits its peak in isolated samples."""
    x = _as_tensor(audio).detach().double().reshape(-1).abs()
    if x.numel() < 3:
        return 0.0
    peak = x.max()
    if peak <= 0:
        return 0.0
    at = (x == peak).to(torch.int8)
    # run lengths of consecutive True values
    edges = torch.diff(torch.cat([at.new_zeros(1), at, at.new_zeros(1)]))
    starts, ends = torch.nonzero(edges == 1).flatten(), torch.nonzero(edges == -1).flatten()
    lengths = ends - starts
    return float(lengths[lengths >= 3].sum()) / x.numel()


def check(audio: torch.Tensor, *, name: str = "audio", allow_silent: bool = False,
          allow_clipped: bool = False) -> None:
    """Raise ValueError if ``audio`` is empty, not finite, silent or clipped (see the module notes)."""
    x = _as_tensor(audio, name)
    if x.numel() == 0 or x.shape[-1] == 0:
        raise ValueError(f"{name} is empty (0 samples)")
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite samples")
    peak = float(x.detach().abs().max())
    if x.dtype == torch.int16:
        peak /= 32768.0
    if not allow_silent and peak < SILENCE_PEAK:
        raise ValueError(f"{name} is silent (peak {peak:.2e} < {SILENCE_PEAK:g}, i.e. below -80 dBFS)")
    if not allow_clipped:
        if x.is_floating_point() and peak > 1.0:
            raise ValueError(f"{name} exceeds full scale (peak {peak:.3f} > 1.0): it would clip when written; "
                             f"scale it down first")
        frac = clipped_fraction(x)
        if frac > CLIP_FRACTION:
            raise ValueError(f"{name} is clipped: {100 * frac:.2f}% of the samples sit flat at the peak "
                             f"(limit {100 * CLIP_FRACTION:g}%); pass allow_clipped=True to use it anyway")


def to_mono(audio: torch.Tensor, multichannel: str = "average") -> torch.Tensor:
    """(T,) from (T,) or (T, C) frames-first audio (soundfile's layout): channels averaged, or refused."""
    if multichannel not in MULTICHANNEL:
        raise ValueError(f"unknown multichannel mode {multichannel!r}; valid: {', '.join(MULTICHANNEL)}")
    x = _as_tensor(audio)
    if x.dim() == 1:
        return x
    if x.dim() != 2:
        raise ValueError(f"audio must be (T,) or (T, channels), got shape {tuple(x.shape)}")
    if x.shape[1] == 1:
        return x[:, 0]
    if multichannel == "error":
        raise ValueError(f"audio has {x.shape[1]} channels; convert it to mono (or read it with "
                         f"multichannel='average', which averages the channels)")
    return x.float().mean(dim=1)


def resample(audio: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling along the last axis (torchaudio's sinc interpolation, Kaiser window,
    width 16 zero crossings, roll-off 0.945); returns the input unchanged when the rates agree."""
    orig_rate, new_rate = _check_rate(orig_rate, "source sample rate"), _check_rate(new_rate, "target sample rate")
    x = _as_tensor(audio)
    if not x.is_floating_point():
        raise ValueError(f"resample needs float audio, got {x.dtype}")
    if orig_rate == new_rate:
        return x
    import torchaudio.functional as AF
    return AF.resample(x, orig_rate, new_rate, lowpass_filter_width=16, rolloff=0.945,
                       resampling_method="sinc_interp_kaiser", beta=14.769656459379492)


def info(path: PathLike) -> Tuple[int, int, int]:
    """(sample_rate, channels, frames) of an audio file, with a clear error for unreadable files."""
    import soundfile as sf
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"audio file {str(path)!r} does not exist")
    try:
        i = sf.info(str(p))
    except (RuntimeError, OSError, sf.LibsndfileError) as e:
        raise ValueError(f"cannot read audio file {str(path)!r} ({e}); supported formats: "
                         f"{', '.join(sorted(sf.available_formats()))}") from None
    return int(i.samplerate), int(i.channels), int(i.frames)


def read(path: PathLike, *, sample_rate: Optional[int] = None, multichannel: str = "average",
         allow_silent: bool = False, allow_clipped: bool = False) -> Tuple[torch.Tensor, int]:
    """Read an audio file as (waveform float32 (T,), sample_rate).

    Multi-channel files are averaged to mono (``multichannel="error"`` refuses them); with
    ``sample_rate`` the audio is resampled to it. The checks of :func:`check` run on the file's
    own samples, so an empty, silent or clipped file is a ValueError naming the file."""
    import soundfile as sf
    if multichannel not in MULTICHANNEL:
        raise ValueError(f"unknown multichannel mode {multichannel!r}; valid: {', '.join(MULTICHANNEL)}")
    rate, channels, frames = info(path)
    if sample_rate is not None:
        _check_rate(sample_rate, "requested sample rate")
    _check_rate(rate, f"sample rate of {str(path)!r}")
    if frames == 0:
        raise ValueError(f"audio file {str(path)!r} is empty (0 samples)")
    if channels > 1 and multichannel == "error":
        raise ValueError(f"audio file {str(path)!r} has {channels} channels; give a mono file (or read it "
                         f"with multichannel='average', which averages the channels)")
    try:
        data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, sf.LibsndfileError) as e:
        raise ValueError(f"cannot read audio file {str(path)!r}: {e}") from None
    x = to_mono(torch.from_numpy(data), multichannel)
    check(x, name=f"audio file {str(path)!r}", allow_silent=allow_silent, allow_clipped=allow_clipped)
    if sample_rate is not None and sample_rate != rate:
        x, rate = resample(x, rate, sample_rate), int(sample_rate)
    return x.contiguous(), rate


def write(path: PathLike, audio: "torch.Tensor | np.ndarray", sample_rate: int, *,
          subtype: str = "PCM_16") -> Path:
    """Write mono audio (T,) or (1, T) in [-1, 1] to ``path`` (format from the extension; WAV PCM-16
    by default). NaN/inf, empty audio or samples beyond full scale are ValueErrors (nothing is
    clipped silently: scale the audio first). Returns the path."""
    import soundfile as sf
    sample_rate = _check_rate(sample_rate)
    x = _as_tensor(audio).detach().cpu()
    if x.dim() == 2 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 1:
        raise ValueError(f"write takes mono audio of shape (T,) or (1, T), got {tuple(x.shape)}")
    check(x, name="audio to write", allow_silent=True, allow_clipped=True)
    x = x.float()
    if float(x.abs().max()) > 1.0:
        raise ValueError(f"audio to write exceeds full scale (peak {float(x.abs().max()):.3f} > 1.0); "
                         f"scale it first, e.g. audio / audio.abs().max()")
    p = Path(path)
    fmt = p.suffix.lstrip(".").upper()
    if fmt not in sf.available_formats():
        raise ValueError(f"cannot write {str(path)!r}: unknown format {p.suffix!r}; valid: "
                         f"{', '.join('.' + f.lower() for f in sorted(sf.available_formats()))}")
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        sf.write(str(p), x.numpy(), sample_rate, subtype=subtype)
    except (RuntimeError, OSError, sf.LibsndfileError, ValueError) as e:
        raise ValueError(f"cannot write {str(path)!r}: {e}") from None
    return p


def normalize_peak(audio: torch.Tensor, peak: float = 0.95) -> torch.Tensor:
    """``audio`` scaled so that max |x| equals ``peak`` (per row for a (B, T) batch); silent rows are a ValueError."""
    if not 0 < peak <= 1:
        raise ValueError(f"peak must be in (0, 1], got {peak}")
    x = _as_tensor(audio).float()
    m = x.abs().amax(dim=-1, keepdim=True)
    if bool((m < SILENCE_PEAK).any()):
        raise ValueError(f"cannot normalise silent audio (peak below {SILENCE_PEAK:g})")
    return x * (peak / m)
