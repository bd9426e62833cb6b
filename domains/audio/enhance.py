"""Speech enhancement: noisy mixtures, a Wiener-filter baseline, and SGMSE+-style diffusion enhancement.

**Mixtures.** :func:`mix` adds noise to clean speech at an exact SNR, defined on the whole signal:
``10 log10(sum clean^2 / sum (g noise)^2) = snr_db`` (the noise is tiled or cut to the clean length
first, then scaled by g). Noise makers (all seeded by an explicit ``torch.Generator``):
``white`` (Gaussian), coloured noise with power spectral density ∝ 1 / f^exponent by spectral
shaping of white noise (``pink`` = 1, ``brown`` = 2), and ``babble`` (3-6 utterances of other
voices at random offsets, each at equal RMS, summed). :class:`MixtureDataset` draws mixtures from an
LJSpeech-format corpus with SNRs uniform in a stated range (training default -5..15 dB).

**Wiener baseline.** :func:`wiener` is the classical STFT-domain Wiener filter with the decision-
directed a-priori SNR (Ephraim & Malah, "Speech enhancement using a minimum mean-square error
short-time spectral amplitude estimator", IEEE TASSP 32(6), 1984; smoothing 0.98) and a noise PSD
averaged over the lowest-energy 10% of frames.

**SGMSE+.** The diffusion model of Richter, Welker, Lemercier, Lay & Gerkmann ("Speech enhancement
and dereverberation with diffusion-based generative models", IEEE/ACM TASLP 31, 2023): the state is
the compressed complex STFT (:class:`~polydiff.domains.audio.features.SpecConfig`, real and
imaginary parts as 2 channels, after dividing the waveform by the noisy peak); the path is the
core's ``paths.OUVE()`` whose prior mean ``mu`` is the noisy spectrogram y, which the network also
takes as 2 extra input channels (:class:`SpecNet`, a small core U-Net). Sampling is
``polydiff.core.sample(..., cond={"mu": y})`` with any solver.

**Unsupervised route** (Nortier, Sadeghi & Serizel, "Unsupervised speech enhancement with
diffusion-based generative models", ICASSP 2024): the network is trained with the condition dropped
(mu = 0, y channels zero) a fraction of the time, so the same weights are a clean-speech prior.
:meth:`EnhanceModel.enhance` with ``method="unsupervised"`` samples that prior with a Gaussian
likelihood y = x0 + n, n ~ N(0, diag(v_f)) per frequency (see :class:`LikelihoodGuided`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path as FsPath
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from . import io as aio
from .features import SpecConfig, compressed_stft, inverse_compressed_stft

Tensor = torch.Tensor
PathLike = Union[str, FsPath]

SAMPLE_RATE = 16000
NOISE_KINDS = ("white", "pink", "brown", "babble")
COLOUR_EXPONENTS = {"white": 0.0, "pink": 1.0, "brown": 2.0}
METHODS = ("sgmse", "wiener", "unsupervised")
WEIGHTS_DIR = FsPath(__file__).resolve().parent / "weights"
MODELS = {"rms": "enhance-rms"}


# ====================================================================== mixtures and noise
def _wave(x: Any, name: str) -> Tensor:
    x = aio._as_tensor(x, name)
    if not x.is_floating_point():
        x = x.float() / (32768.0 if x.dtype == torch.int16 else 2147483648.0)
    if x.dim() != 1:
        raise ValueError(f"{name} must be a mono waveform of shape (T,), got {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (0 samples)")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite samples")
    return x


def fit_length(noise: Tensor, n: int) -> Tensor:
    """noise tiled (repeated) or cut to n samples."""
    if noise.shape[-1] >= n:
        return noise[..., :n]
    reps = -(-n // noise.shape[-1])
    return noise.repeat(reps)[:n]


def mix(clean: Tensor, noise: Tensor, snr_db: float) -> Tensor:
    """clean + g * noise with g chosen so that the SNR is exactly ``snr_db``:
    10 log10(sum clean^2 / sum (g noise)^2) = snr_db over the whole signal.

    ``noise`` is tiled or cut to the clean length first. Both are mono (T,) waveforms; the result has
    clean's dtype. ValueError for silent clean or noise, non-finite input or a non-finite SNR."""
    c, n = _wave(clean, "clean"), _wave(noise, "noise")
    if not math.isfinite(float(snr_db)):
        raise ValueError(f"snr_db must be finite, got {snr_db}")
    n = fit_length(n.to(c.dtype), c.numel())
    pc, pn = c.double().square().sum(), n.double().square().sum()
    if pc <= 0:
        raise ValueError("clean signal is all zeros: its SNR is undefined")
    if pn <= 0:
        raise ValueError("noise is all zeros (over the clean signal's length): cannot reach any SNR")
    g = torch.sqrt(pc / (pn * 10.0 ** (float(snr_db) / 10.0)))
    return (c.double() + g * n.double()).to(c.dtype)


def snr(clean: Tensor, noisy: Tensor) -> float:
    """10 log10(sum clean^2 / sum (noisy - clean)^2) in dB."""
    c, y = clean.double(), noisy.double()
    return float(10.0 * torch.log10(c.square().sum() / (y - c).square().sum()))


def white_noise(n: int, generator: torch.Generator) -> Tensor:
    """n samples of unit-variance Gaussian white noise."""
    return torch.randn(int(n), generator=generator)


def coloured_noise(n: int, exponent: float, generator: torch.Generator) -> Tensor:
    """n samples of noise with power spectral density ∝ 1 / f^exponent (0 white, 1 pink, 2 brown):
    white Gaussian noise whose rFFT is multiplied by f^(-exponent / 2) (DC set to 0), unit RMS."""
    if n < 2:
        raise ValueError(f"need n >= 2 samples, got {n}")
    w = torch.randn(int(n), generator=generator, dtype=torch.float64)
    spec = torch.fft.rfft(w)
    f = torch.arange(spec.numel(), dtype=torch.float64)
    shape = torch.zeros_like(f)
    shape[1:] = f[1:] ** (-float(exponent) / 2.0)
    x = torch.fft.irfft(spec * shape, n=int(n))
    x = x - x.mean()
    return (x / x.square().mean().sqrt()).float()


def babble_noise(n: int, utterances: Sequence[Tensor], generator: torch.Generator,
                 talkers: Tuple[int, int] = (3, 6)) -> Tensor:
    """Babble: k ~ U{talkers} utterances drawn from ``utterances`` (other voices), each scaled to unit RMS,
    tiled to n samples from a random offset, summed; unit RMS."""
    if len(utterances) == 0:
        raise ValueError("babble needs a non-empty list of utterances (other voices)")
    k = int(torch.randint(talkers[0], talkers[1] + 1, (1,), generator=generator))
    out = torch.zeros(int(n), dtype=torch.float64)
    for _ in range(k):
        u = utterances[int(torch.randint(len(utterances), (1,), generator=generator))]
        u = u.double() if u.is_floating_point() else u.double() / 32768.0
        u = u / u.square().mean().sqrt().clamp_min(1e-12)
        off = int(torch.randint(u.numel(), (1,), generator=generator))
        out += fit_length(torch.roll(u, -off), int(n))
    return (out / out.square().mean().sqrt().clamp_min(1e-12)).float()


def make_noise(kind: str, n: int, generator: torch.Generator,
               babble: Optional[Sequence[Tensor]] = None) -> Tensor:
    """Noise of a kind in ``NOISE_KINDS`` ('babble' needs the list of other-voice utterances)."""
    if kind in COLOUR_EXPONENTS:
        if kind == "white":
            return white_noise(n, generator)
        return coloured_noise(n, COLOUR_EXPONENTS[kind], generator)
    if kind == "babble":
        if not babble:
            raise ValueError("noise kind 'babble' needs babble utterances (pass babble=... / --babble DIR)")
        return babble_noise(n, babble, generator)
    raise ValueError(f"unknown noise kind {kind!r}; valid: {', '.join(NOISE_KINDS)}")


def load_wavs(root: PathLike, limit: Optional[int] = None) -> List[Tensor]:
    """The int16 waveforms of an LJSpeech-format corpus ROOT/wavs/*.wav (sorted by name), 16 kHz mono."""
    import soundfile as sf
    files = sorted((FsPath(root) / "wavs").glob("*.wav"))
    files = [f for f in files if not f.name.endswith(".part.wav")]
    if not files:
        raise ValueError(f"no WAV files in {str(FsPath(root) / 'wavs')!r} (an LJSpeech-format corpus "
                         f"is ROOT/wavs/*.wav)")
    out = []
    for f in files[:limit]:
        data, rate = sf.read(str(f), dtype="int16", always_2d=True)
        if rate != SAMPLE_RATE:
            raise ValueError(f"{f} has sample rate {rate}; the enhancement corpora are {SAMPLE_RATE} Hz")
        out.append(torch.from_numpy(data[:, 0].copy()))
    return out


def _fold(*keys: int) -> int:
    h = 1469598103934665603
    for k in keys:
        h = ((h ^ (int(k) & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


class MixtureDataset:
    """Seeded noisy mixtures over a corpus: item i is (clean, noisy, snr_db, kind), a dict.

    Utterance i mod len(corpus); with ``segment`` (samples) a random crop of that length (shorter
    utterances are zero-padded at a random position); noise kind uniform over ``kinds``; SNR uniform in
    ``snr_db`` = (low, high) dB, or fixed when a number. Item i is a pure function of (seed, i).
    Waveforms are float32 in [-1, 1] at 16 kHz (not normalised; the model normalises by the noisy peak).
    """

    def __init__(self, corpus: Union[PathLike, Sequence[Tensor]], babble: Sequence[Union[PathLike, Tensor]] = (),
                 snr_db: Union[float, Tuple[float, float]] = (-5.0, 15.0), kinds: Sequence[str] = NOISE_KINDS,
                 seed: int = 0, segment: Optional[int] = None, length: Optional[int] = None) -> None:
        self.utterances = load_wavs(corpus) if isinstance(corpus, (str, FsPath)) else list(corpus)
        pool: List[Tensor] = []
        for b in babble:
            pool.extend(load_wavs(b) if isinstance(b, (str, FsPath)) else [b])
        self.babble = pool
        kinds = tuple(kinds)
        bad = [k for k in kinds if k not in NOISE_KINDS]
        if bad or not kinds:
            raise ValueError(f"unknown noise kind(s) {bad}; valid: {', '.join(NOISE_KINDS)}")
        if "babble" in kinds and not pool:
            raise ValueError("noise kind 'babble' needs babble corpora (other voices)")
        lo, hi = (float(snr_db), float(snr_db)) if isinstance(snr_db, (int, float)) else map(float, snr_db)
        if not lo <= hi:
            raise ValueError(f"snr range must have low <= high, got {snr_db}")
        self.snr_range, self.kinds, self.seed = (lo, hi), kinds, int(seed)
        self.segment, self.length = segment, length

    def __len__(self) -> int:
        return self.length if self.length is not None else len(self.utterances)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        g = torch.Generator().manual_seed(_fold(self.seed, i))
        u = self.utterances[i % len(self.utterances)]
        clean = u.float() / 32768.0 if u.dtype == torch.int16 else u.float()
        if self.segment is not None:
            L = int(self.segment)
            if clean.numel() >= L:
                off = int(torch.randint(clean.numel() - L + 1, (1,), generator=g))
                clean = clean[off:off + L]
            else:
                off = int(torch.randint(L - clean.numel() + 1, (1,), generator=g))
                clean = F.pad(clean, (off, L - clean.numel() - off))
        kind = self.kinds[int(torch.randint(len(self.kinds), (1,), generator=g))]
        lo, hi = self.snr_range
        s = lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))
        noise = make_noise(kind, clean.numel(), g, self.babble)
        if clean.square().sum() <= 0:          # an all-silent crop: noise alone at unit level
            noisy = 0.1 * noise
        else:
            noisy = mix(clean, noise, s)
        return {"clean": clean, "noisy": noisy, "snr_db": s, "kind": kind}


# ====================================================================== Wiener baseline
def wiener(noisy: Any, sample_rate: int, *, n_fft: int = 512, hop: int = 128, dd_alpha: float = 0.98,
           noise_fraction: float = 0.1, xi_min_db: float = -25.0) -> Tensor:
    """Wiener-filter a mono waveform; returns the enhanced (T,) float32 waveform at ``sample_rate``.

    STFT with a periodic Hann window (n_fft, hop); noise PSD lambda_k = mean |Y_k|^2 over the
    ``noise_fraction`` lowest-energy frames; a-posteriori SNR gamma = |Y|^2 / lambda; decision-directed
    a-priori SNR xi_l = dd_alpha |S_{l-1}|^2 / lambda + (1 - dd_alpha) max(gamma_l - 1, 0), floored at
    ``xi_min_db`` (Ephraim & Malah 1984); gain xi / (1 + xi).
    """
    x = _wave(noisy, "noisy audio")
    aio._check_rate(sample_rate)
    if not 0 < dd_alpha < 1 or not 0 < noise_fraction <= 1:
        raise ValueError(f"need 0 < dd_alpha < 1 and 0 < noise_fraction <= 1, got {dd_alpha}, {noise_fraction}")
    T = x.numel()
    xd = x.double()
    pad = max(0, n_fft // 2 + 1 - T)
    if pad:
        xd = F.pad(xd, (0, pad))
    w = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    Y = torch.stft(xd, n_fft, hop, window=w, center=True, pad_mode="reflect", return_complex=True)  # (K, L)
    P = Y.abs().square()
    energy = P.sum(0)
    m = max(1, int(round(noise_fraction * P.shape[1])))
    idx = torch.argsort(energy)[:m]
    lam = P[:, idx].mean(1).clamp_min(1e-12)
    gamma = P / lam[:, None]
    xi_min = 10.0 ** (xi_min_db / 10.0)
    G = torch.empty_like(P)
    prev = torch.zeros_like(lam)                       # |S_{l-1}|^2
    for l in range(P.shape[1]):
        xi = dd_alpha * prev / lam + (1.0 - dd_alpha) * (gamma[:, l] - 1.0).clamp_min(0.0)
        xi = xi.clamp_min(xi_min)
        G[:, l] = xi / (1.0 + xi)
        prev = (G[:, l] ** 2) * P[:, l]
    out = torch.istft(G * Y, n_fft, hop, window=w, center=True, length=xd.numel())
    return out[:T].float()


# ====================================================================== the network
class SpecNet(torch.nn.Module):
    """Score/denoiser network on the compressed complex STFT: net(x, t, mu) -> (B, 2, F, T).

    x (the Gaussian-path state, real/imag channels) and mu (the noisy spectrogram y; zeros for the
    unconditional prior) are concatenated (4 channels), folded 2x2 into channels (pixel unshuffle:
    16 channels at half the frequency and time resolution, 4x cheaper on CPU), run through a core
    ``UNet(dims=2)``, and unfolded. F and T must be divisible by ``fold * 2^(levels-1)``.
    """

    def __init__(self, channels: int = 32, channel_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 1,
                 fold: int = 2, norm_groups: int = 8) -> None:
        super().__init__()
        from polydiff.core.nets.unet import UNet
        self.fold = int(fold)
        self.kwargs = {"channels": int(channels), "channel_mult": [int(m) for m in channel_mult],
                       "num_res_blocks": int(num_res_blocks), "fold": self.fold, "norm_groups": int(norm_groups)}
        f2 = self.fold * self.fold
        self.unet = UNet(dims=2, in_channels=4 * f2, out_channels=2 * f2, channels=channels,
                         channel_mult=channel_mult, num_res_blocks=num_res_blocks, attn_levels=(),
                         mid_attention=False, norm_groups=norm_groups)

    @property
    def multiple(self) -> int:
        """F and T must be multiples of this."""
        return self.fold * 2 ** (self.unet.levels - 1)

    def forward(self, x: Tensor, t: Tensor, mu: Optional[Tensor] = None) -> Tensor:
        if mu is None:
            mu = torch.zeros_like(x)
        h = torch.cat([x, mu.expand_as(x)], dim=1)
        if self.fold > 1:
            h = F.pixel_unshuffle(h, self.fold)
        out = self.unet(h, t)
        return F.pixel_shuffle(out, self.fold) if self.fold > 1 else out


def spec_to_state(z: Tensor) -> Tensor:
    """(B, F, T) complex -> (B, 2, F, T) real (real, imaginary channels)."""
    return torch.stack([z.real, z.imag], dim=1)


def state_to_spec(s: Tensor) -> Tensor:
    """(B, 2, F, T) real -> (B, F, T) complex."""
    return torch.complex(s[:, 0].float(), s[:, 1].float())


def frames_for(n: int, hop: int) -> int:
    """Frames of a centred STFT of n samples."""
    return 1 + n // hop


def pad_to_frames(x: Tensor, multiple: int, hop: int) -> Tensor:
    """Zero-pad a (..., T) waveform at the end so that its centred STFT has a multiple of ``multiple`` frames
    (and at least one multiple)."""
    T = x.shape[-1]
    frames = max(multiple, -(-frames_for(T, hop) // multiple) * multiple)
    # every length in [(frames - 1) hop, frames hop - 1] gives `frames` frames, and frames hop > T
    return F.pad(x, (0, max(T, (frames - 1) * hop) - T))


def training_pair(clean: Tensor, noisy: Tensor, spec: SpecConfig = SpecConfig()) -> Tuple[Tensor, Tensor]:
    """(x0, y) states (B, 2, F, T) of clean and noisy (B, T) waveforms, both divided by the noisy peak (SGMSE+)."""
    peak = noisy.abs().amax(-1, keepdim=True).clamp_min(1e-8)
    return spec_to_state(compressed_stft(clean / peak, spec)), spec_to_state(compressed_stft(noisy / peak, spec))


# ====================================================================== likelihood guidance (unsupervised)
class LikelihoodGuided:
    """A denoiser of the clean-speech prior corrected by a Gaussian observation y = x0 + n, n ~ N(0, diag(v)).

    With the prior's posterior approximated as x0 | x_t ~ N(D(x_t), r_t^2 I), r_t = sigma_t / alpha_t (the
    Gaussian approximation of PiGDM, Song et al., ICLR 2023, specialised to the identity operator),
    E[x0 | x_t, y] = D + lam * r^2 / (r^2 + v) (y - D): a per-bin Wiener blend of the prior's
    estimate and the observation. This is the Tweedie form of the pseudo-likelihood step of UDiffSE
    (Nortier, Sadeghi & Serizel, ICASSP 2024), whose Gaussian noise model has a variance per
    time-frequency bin; here v has one value per frequency (shape broadcastable to y). The prior is
    called with mu = 0 (the condition dropped). Works with every solver on the base Gaussian path.
    """

    def __init__(self, denoiser: Any, y: Tensor, v: Tensor, path: Any, lam: float = 1.0) -> None:
        self.denoiser, self.y, self.v, self.path, self.lam = denoiser, y, v, path, float(lam)

    def __call__(self, x: Tensor, t: Tensor, **cond: Any) -> Tensor:
        D = self.denoiser(x, t, mu=torch.zeros_like(x))
        t64 = t.to(torch.float64)
        r2 = (self.path.sigma(t64) / self.path.alpha(t64)).square().to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return D + self.lam * r2 / (r2 + self.v) * (self.y - D)


# ====================================================================== the model
class EnhanceModel:
    """A trained SGMSE+-style enhancer: ``enhance(noisy, sample_rate)`` -> enhanced waveform.

    denoiser: ``polydiff.core.Denoiser`` on ``paths.OUVE()`` taking ``mu=`` (the noisy state); spec: the
    STFT config; config: the stored config dict.
    """

    def __init__(self, net: SpecNet, config: Dict[str, Any]) -> None:
        from polydiff.core import Denoiser
        from polydiff.core.paths import path_from_config
        self.net = net.eval()
        self.config = config
        self.path = path_from_config(config["path"])
        self.spec = SpecConfig(**config["spec"])
        self.denoiser = Denoiser(self.net, self.path, prediction=config["prediction"],
                                 sigma_data=float(config["sigma_data"]))
        self.solver = config.get("solver", "pc")
        self.solver_options = dict(config.get("solver_options", {}))
        self.steps = int(config.get("steps", 30))

    def prepare(self, noisy: Any, sample_rate: int) -> Tuple[Tensor, int]:
        """Mono 16 kHz float waveform of user audio, checked (see :meth:`enhance`)."""
        return prepare_input(noisy, sample_rate, self.spec.sample_rate)

    @torch.no_grad()
    def enhance(self, noisy: Any, sample_rate: int, *, steps: Optional[int] = None, seed: int = 0,
                method: str = "sgmse", solver: Optional[str] = None, **options: Any) -> Tensor:
        """Enhance noisy speech; returns a float32 (T,) waveform at the input's ``sample_rate``.

        noisy: (T,) mono, or 2-D multichannel audio whose shorter axis is the channel axis
        ((T, C) as soundfile reads it, or (C, T)); channels are averaged (documented conversion).
        Audio at another rate is resampled to 16 kHz and the result back. The waveform is divided by
        its peak (SGMSE+), padded to the network's frame multiple, enhanced, cropped and scaled back.
        method: "sgmse" (the conditional model; ``solver`` and ``steps`` default to the config's: 5 Euler
        steps on the probability-flow ODE for "rms", the best of a sweep on tuning mixtures, see the
        weights' README), "wiener" (the baseline), "unsupervised" (the clean prior with likelihood
        guidance; options ``em_iters`` (2) and ``lam`` (1.0)). ``options`` go to the solver.
        ValueError for empty, silent or NaN audio.
        """
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
        x, rate = prepare_input(noisy, sample_rate, self.spec.sample_rate)
        if method == "wiener":
            out = wiener(x, rate)
        else:
            steps = self.steps if steps is None else int(steps)
            if steps < 1:
                raise ValueError(f"steps must be >= 1, got {steps}")
            peak = x.abs().max()
            T = x.numel()
            xp = pad_to_frames(x / peak, self.net.multiple, self.spec.hop_length)
            y = spec_to_state(compressed_stft(xp[None], self.spec))
            g = torch.Generator().manual_seed(int(seed))
            if method == "sgmse":
                s = self._sample_sgmse(y, steps, g, solver, options)
            else:
                s = self._sample_unsupervised(y, steps, g, solver, options)
            out = inverse_compressed_stft(state_to_spec(s), xp.numel(), self.spec)[0, :T] * peak
        return back_to_rate(out, rate, int(sample_rate), _input_length(noisy))

    def _sample_sgmse(self, y: Tensor, steps: int, g: torch.Generator, solver: Optional[str],
                      options: Dict[str, Any]) -> Tensor:
        from polydiff.core import sample
        solver = solver or self.solver
        opts = dict(self.solver_options) if solver == self.solver else {}
        opts.update(options)
        noise = torch.randn(y.shape, generator=g)
        return sample(self.denoiser, noise, path=self.path, solver=solver, steps=steps, grid="uniform",
                      cond={"mu": y}, generator=g, **opts)

    def _sample_unsupervised(self, y: Tensor, steps: int, g: torch.Generator, solver: Optional[str],
                             options: Dict[str, Any]) -> Tensor:
        """Posterior sampling with the clean prior (condition dropped) and a Gaussian noise model in the
        compressed STFT domain, y = x0 + n with per-frequency variance v_f (each real channel v_f).

        v starts from the lowest-energy 10% of frames of y (minimum-statistics style) and is
        re-estimated from the residual |y - x0_hat|^2 after each pass (``em_iters`` passes, an EM in
        the spirit of UDiffSE's, with a per-frequency variance instead of NMF). Each pass runs the
        solver on the base Gaussian path from x_1 = alpha(1) y + sigma(1) noise with
        :class:`LikelihoodGuided` (weight ``lam``)."""
        from polydiff.core import sample
        opts = dict(options)
        em_iters, lam = int(opts.pop("em_iters", 2)), float(opts.pop("lam", 1.0))
        if em_iters < 1 or not lam > 0:
            raise ValueError(f"need em_iters >= 1 and lam > 0, got {em_iters}, {lam}")
        solver = solver or self.solver
        if solver == self.solver:
            opts = {**self.solver_options, **opts}
        base = self.path.base
        power = y.square().sum(1, keepdim=True)                    # |y|^2 per bin (B, 1, F, T)
        frame_energy = power.sum(2, keepdim=True)                  # (B, 1, 1, T)
        m = max(1, int(round(0.1 * y.shape[-1])))
        idx = torch.argsort(frame_energy[:, 0, 0], dim=-1)[:, :m]  # (B, m)
        v = torch.stack([power[b, :, :, idx[b]].mean(-1) for b in range(y.shape[0])])[..., None] / 2
        v = v.clamp_min(1e-8)
        t1 = torch.tensor(1.0, dtype=torch.float64)
        a1, s1 = float(base.alpha(t1)), float(base.sigma(t1))
        x = y
        for _ in range(em_iters):
            guided = LikelihoodGuided(self.denoiser, y, v, base, lam)
            noise = torch.randn(y.shape, generator=g)
            x = sample(guided, noise, path=base, solver=solver, steps=steps, grid="uniform",
                       x_init=a1 * y + s1 * noise, generator=g, **opts)
            v = ((y - x).square().sum(1, keepdim=True).mean(-1, keepdim=True) / 2).clamp_min(1e-8)
        return x


def prepare_input(noisy: Any, sample_rate: int, target_rate: int = SAMPLE_RATE) -> Tuple[Tensor, int]:
    """(mono float32 waveform at ``target_rate``, target_rate) of user audio, with the checks of
    :meth:`EnhanceModel.enhance` (2-D input: the shorter axis is channels, averaged)."""
    x = aio._as_tensor(noisy, "noisy audio")
    if x.dim() == 2:
        if x.shape[0] < x.shape[1]:
            x = x.T
        x = aio.to_mono(x.float() if x.is_floating_point() else x.float() / 32768.0)
    elif x.dim() != 1:
        raise ValueError(f"noisy audio must be (T,) mono or 2-D (T, C) / (C, T), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float() / 32768.0
    aio.check(x, name="noisy audio", allow_clipped=True)
    x = x.float()
    rate = aio._check_rate(sample_rate)
    if rate != target_rate:
        x = aio.resample(x, rate, target_rate)
    return x.contiguous(), target_rate


def _input_length(noisy: Any) -> int:
    shape = tuple(noisy.shape)
    return int(shape[0]) if len(shape) == 1 else int(max(shape))


def back_to_rate(out: Tensor, rate: int, sample_rate: int, n: int) -> Tensor:
    """``out`` (at ``rate``) resampled to ``sample_rate`` and cut or zero-padded to the input's n samples
    (band-limited resampling there and back can change the length by a sample or two)."""
    if sample_rate != rate:
        out = aio.resample(out, rate, sample_rate)
    out = out[:n]
    return F.pad(out, (0, n - out.numel())).float()


def save_model(directory: PathLike, net: SpecNet, config: Dict[str, Any], half: bool = False) -> None:
    """Write ``model.safetensors`` (the network's weights; float16 with ``half``) and ``config.json``."""
    from safetensors.torch import save_file
    d = FsPath(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous()
             for k, v in net.state_dict().items()}
    save_file(state, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({**config, "net": net.kwargs}, indent=1) + "\n")


def load_model(directory: PathLike) -> EnhanceModel:
    """An :class:`EnhanceModel` from a directory written by :func:`save_model` (no stored code runs)."""
    from polydiff.core.training.files import read_model_folder
    config, state = read_model_folder(directory, "enhancement model")
    if not isinstance(config.get("net"), dict):
        raise ValueError(f"{directory}: config.json has no 'net' mapping")
    net = SpecNet(**config["net"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    net.load_state_dict(state)
    return EnhanceModel(net, config)


def pretrained(name: str = "rms") -> EnhanceModel:
    """A shipped enhancement model by name ("rms": trained on flite's rms voice in white, coloured and
    babble noise, -5..15 dB; see ``weights/enhance-rms/README.md``)."""
    if name not in MODELS:
        raise ValueError(f"unknown enhancement model {name!r}; valid: {', '.join(MODELS)}")
    return load_model(WEIGHTS_DIR / MODELS[name])


def enhance(noisy: Any, sample_rate: int, *, steps: Optional[int] = None, seed: int = 0,
            method: str = "sgmse", model: Union[str, EnhanceModel] = "rms") -> Tensor:
    """Enhance noisy speech with a shipped model (default "rms"); see :meth:`EnhanceModel.enhance`."""
    if method == "wiener":
        x, rate = prepare_input(noisy, sample_rate)
        return back_to_rate(wiener(x, rate), rate, int(sample_rate), _input_length(noisy))
    m = _cached(model) if isinstance(model, str) else model
    return m.enhance(noisy, sample_rate, steps=steps, seed=seed, method=method)


_CACHE: Dict[str, EnhanceModel] = {}


def _cached(name: str) -> EnhanceModel:
    if name not in _CACHE:
        _CACHE[name] = pretrained(name)
    return _CACHE[name]


__all__ = ["mix", "snr", "white_noise", "coloured_noise", "babble_noise", "make_noise", "load_wavs",
           "MixtureDataset", "wiener", "SpecNet", "spec_to_state", "state_to_spec", "training_pair",
           "LikelihoodGuided", "EnhanceModel", "prepare_input", "save_model", "load_model", "pretrained",
           "enhance", "NOISE_KINDS", "METHODS"]
