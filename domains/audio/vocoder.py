"""A diffusion vocoder on waveforms conditioned on log-mel: DiffWave's network with PriorGrad's prior,
sampled in a few steps by the core's solvers.

* **Network** (:class:`DiffWaveNet`): Kong, Ping, Huang, Zhao & Catanzaro, "DiffWave: A Versatile
  Diffusion Model for Audio Synthesis", ICLR 2021 (arXiv 2009.09761), Sec. 3 and Fig. 2. A 1x1
  input convolution, then residual layers of dilated non-causal 1-D convolutions (kernel 3, dilation
  2^(i mod cycle)) with a gated tanh x sigmoid unit; each layer adds a projection of the
  diffusion-step embedding (sinusoids of t, a 2-layer SiLU MLP) before its dilated convolution and a
  1x1 projection of the mel condition to its gate input; its 1x1 output splits into a residual (added
  to the layer input, scaled by 1/sqrt 2) and a skip; the skips are summed (scaled 1/sqrt L) and
  mapped to the output by 1x1 conv - ReLU - 1x1 conv (zero-initialised). The mel is upsampled to the
  waveform rate by transposed convolutions as DiffWave's conditioner: two ``ConvTranspose2d`` over
  (band, frame) with kernel (3, 2 * s) and stride (1, s), s = 16, each followed by leaky ReLU 0.4,
  so one frame becomes exactly ``hop = 256`` samples (F frames -> F * hop samples), shifted by half
  a hop so that frame j's footprint is centred on sample j * hop like its STFT window. The defaults are
  CPU-sized: 32 residual channels and 12 layers with dilation cycle 6 (receptive field 253 samples);
  DiffWave's base model has 64 channels and 30 layers.
* **Prior** (:meth:`Vocoder.prior_std`): Lee, Kim, Shin, Kim, Choi, Kim, Yoon & Liu, "PriorGrad:
  Improving Conditional Denoising Diffusion Models with Data-Dependent Adaptive Prior", ICLR 2022
  (arXiv 2106.06406), Sec. 3-4: the noise is N(0, Sigma) with Sigma diagonal, the per-sample variance
  following the frame energy of the mel. Here the frame energy is
  e_j = sqrt(mean_b exp(2 mel_bj)) of the (unnormalised) log-mel; the waveform scale is
  std_j = max(prior_scale * e_j, prior_std_min), with prior_scale fitted on the training corpus so
  that std_j matches the frame RMS (rms corpus: 0.586, log-residual 0.33), and std_min = 0.01
  (about 7 % of a voiced frame's RMS, PriorGrad clamps at 10 % of the peak energy). std_j is
  linearly interpolated from the frame centres (sample j * hop) to every sample.
  PriorGrad is implemented by **whitening**: the diffusion runs on w = x / std, so the core's standard
  Gaussian path (``paths.VP("linear")``, beta 0.1 -> 20) with N(0, I) noise on w is exactly the
  PriorGrad process x_t = alpha x0 + sigma std eps on x, the core's ``DiffusionLoss`` on w is
  PriorGrad's Sigma^-1-weighted loss (its Eq. 7 up to the parameterisation), and the core's ``sample``
  and every solver apply unchanged; the waveform is x = std * w.
* **Parameterisation**: the network predicts v = alpha eps - sigma w0 (Salimans & Ho, ICLR 2022),
  trained with the plain v-MSE. DiffWave and PriorGrad predict eps; but a few-step solver evaluates
  the denoiser at high noise (t = 1 has alpha = 0.0066 on this path), where w0-hat = (w - sigma eps-hat)
  / alpha amplifies an eps error 150 times, while v gives w0-hat = alpha w - sigma v-hat with no
  amplification anywhere; at low noise v ~ eps, so the fine-detail regime is the same as DiffWave's.
* **Training times** are log-normal in sigma/alpha (EDM's sampler, ``LogNormalTime(-1.5, 2.0)``, i.e.
  logSNR ~ N(1.5, 2^2)): DiffWave's 50-step schedule covers logSNR in [-0.5, 4.6] only, and a
  waveform's audible detail lives at low noise; the tails still reach the path's ends.
* **Sampling**: ``steps`` steps of any core solver on the ``logsnr`` grid from w_1 = sigma(1) * noise,
  with noise and any fresh noise per step drawn from ``torch.Generator().manual_seed(seed)``. The
  default is 6 steps (DiffWave's fast schedule length) of ancestral sampling (``ddpm``: the exact
  posterior step with the denoiser's estimate, as DiffWave and PriorGrad sample). With the briefly
  trained weights we ship, the deterministic ``dpmpp_2m`` leaves residual noise (on a held-out sentence
  its output's log-mel is about 1.3 nats too loud in silent frames; ``ddpm`` is within 0.1) and scores
  worse at 6 steps (50 held-out sentences: WER 86.4 % vs 82.6 %, MCD 3.87 vs 3.59 dB;
  ``benchmarks/RESULTS.vocoder.md.part``).

Mels are the log-mels of :func:`polydiff.domains.audio.features.log_mel` (16 kHz, hop 256, 80 bands,
floor log 1e-5); the network sees them normalised by (mel - mel_mean) / mel_std. Output: 16 kHz
float32 waveforms in [-1, 1] with ``frames * hop`` samples (frame j is centred at sample j * hop).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
import torch.nn.functional as F

from polydiff.core import Denoiser, sample
from polydiff.core.losses import DiffusionLoss, LogNormalTime
from polydiff.core.nets.embeddings import SinusoidalEmbedding
from polydiff.core.paths import VP
from polydiff.core.solvers import solvers as _solvers

from .features import MelConfig

Tensor = torch.Tensor
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PRETRAINED = {"rms": "vocoder-rms"}


@dataclass
class VocoderConfig:
    """Sizes and settings of a :class:`Vocoder` (saved as ``config.json`` beside the weights)."""
    n_mels: int = 80
    hop_length: int = 256
    sample_rate: int = 16000
    channels: int = 32
    layers: int = 12
    dilation_cycle: int = 6
    emb_dim: int = 128
    emb_hidden: int = 256
    upsample: tuple = (16, 16)
    beta_min: float = 0.1
    beta_max: float = 20.0
    mel_mean: float = -5.5
    mel_std: float = 2.3
    prior_scale: float = 0.586
    prior_std_min: float = 0.01
    train_logsnr_mean: float = 1.5
    train_logsnr_std: float = 2.0
    segment_frames: int = 32
    steps: int = 6
    solver: str = "ddpm"
    grid: str = "logsnr"

    def __post_init__(self) -> None:
        self.upsample = tuple(int(s) for s in self.upsample)
        if math.prod(self.upsample) != self.hop_length:
            raise ValueError(f"the upsampling strides {self.upsample} must multiply to hop_length {self.hop_length}")
        if min(self.channels, self.layers, self.dilation_cycle, self.n_mels, self.segment_frames) < 1:
            raise ValueError(f"channels, layers, dilation_cycle, n_mels and segment_frames must be >= 1: {self}")
        if not (self.prior_scale > 0 and self.prior_std_min > 0 and self.mel_std > 0):
            raise ValueError(f"prior_scale, prior_std_min and mel_std must be > 0: {self}")
        if self.solver not in _solvers():
            raise ValueError(f"unknown solver {self.solver!r}; valid: {sorted(_solvers())}")

    @property
    def mel_config(self) -> MelConfig:
        return MelConfig(sample_rate=self.sample_rate, hop_length=self.hop_length, n_mels=self.n_mels)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "VocoderConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown vocoder config keys {unknown}; valid: {sorted(names)}")
        return cls(**d)


# ---------------------------------------------------------------- the network
class _ResidualLayer(torch.nn.Module):
    """One DiffWave residual layer (Kong et al. 2021, Fig. 2)."""

    def __init__(self, channels: int, dilation: int, emb_hidden: int, cond_channels: int) -> None:
        super().__init__()
        self.dilated = torch.nn.Conv1d(channels, 2 * channels, 3, padding=dilation, dilation=dilation)
        self.step = torch.nn.Linear(emb_hidden, channels)
        self.cond = torch.nn.Conv1d(cond_channels, 2 * channels, 1)
        self.out = torch.nn.Conv1d(channels, 2 * channels, 1)
        torch.nn.init.kaiming_normal_(self.dilated.weight)
        torch.nn.init.kaiming_normal_(self.out.weight)

    def forward(self, h: Tensor, emb: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        y = self.dilated(h + self.step(emb)[:, :, None]) + self.cond(cond)
        gate, filt = y.chunk(2, dim=1)
        y = self.out(torch.sigmoid(gate) * torch.tanh(filt))
        res, skip = y.chunk(2, dim=1)
        return (h + res) / math.sqrt(2.0), skip


class DiffWaveNet(torch.nn.Module):
    """net(w, t, mel=mel) -> v-hat: w (B, 1, F * hop), t (B,), mel (B, n_mels, F) normalised log-mel.

    DiffWave's architecture (module notes); the conditioner upsamples F frames to F * hop samples with
    transposed convolutions whose kernel is twice their stride (so each output sample mixes two
    neighbouring frames)."""

    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        c = cfg.channels
        self.hop = cfg.hop_length
        self.inp = torch.nn.Conv1d(1, c, 1)
        self.emb = SinusoidalEmbedding(cfg.emb_dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(cfg.emb_dim, cfg.emb_hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(cfg.emb_hidden, cfg.emb_hidden), torch.nn.SiLU())
        self.up = torch.nn.ModuleList(
            torch.nn.ConvTranspose2d(1, 1, (3, 2 * s), stride=(1, s), padding=(1, s // 2)) for s in cfg.upsample)
        self.layers = torch.nn.ModuleList(
            _ResidualLayer(c, 2 ** (i % cfg.dilation_cycle), cfg.emb_hidden, cfg.n_mels) for i in range(cfg.layers))
        self.skip = torch.nn.Conv1d(c, c, 1)
        self.final = torch.nn.Conv1d(c, 1, 1)
        torch.nn.init.kaiming_normal_(self.inp.weight)
        torch.nn.init.kaiming_normal_(self.skip.weight)
        torch.nn.init.zeros_(self.final.weight)
        torch.nn.init.zeros_(self.final.bias)

    def upsample(self, mel: Tensor) -> Tensor:
        """(B, n_mels, F) -> (B, n_mels, F * hop): the transposed-conv conditioner.

        Each stage maps n columns to n * s (kernel 2 s, padding s / 2), so frame j's footprint is centred
        at sample j * hop + hop / 2; one repeated frame at the end and a shift of hop / 2 centre it on
        sample j * hop, where the STFT frame is centred."""
        c = F.pad(mel, (0, 1), mode="replicate")[:, None]
        for up in self.up:
            c = F.leaky_relu(up(c), 0.4)
        h = self.hop // 2
        return c[:, 0, :, h: h + mel.shape[-1] * self.hop]

    def forward(self, w: Tensor, t: Tensor, mel: Optional[Tensor] = None) -> Tensor:
        if mel is None:
            raise ValueError("the vocoder network needs the normalised mel as the keyword mel=")
        if w.dim() != 3 or w.shape[1] != 1 or mel.dim() != 3 or w.shape[-1] != mel.shape[-1] * self.hop:
            raise ValueError(f"need w (B, 1, F * {self.hop}) and mel (B, n_mels, F); got {tuple(w.shape)}, "
                             f"{tuple(mel.shape)}")
        cond = self.upsample(mel)
        emb = self.mlp(self.emb(t))
        h = F.relu(self.inp(w))
        skips = 0.0
        for layer in self.layers:
            h, s = layer(h, emb, cond)
            skips = skips + s
        h = F.relu(self.skip(skips / math.sqrt(len(self.layers))))
        return self.final(h)


# ---------------------------------------------------------------- PriorGrad prior and whitening
def frame_energy(mel: Tensor) -> Tensor:
    """e_j = sqrt(mean_b exp(2 mel_bj)): (..., n_mels, F) log-mel -> (..., F) frame energy."""
    return torch.exp(2.0 * mel.double()).mean(-2).sqrt().to(mel.dtype)


def interpolate_frames(values: Tensor, hop: int) -> Tensor:
    """(..., F) frame values -> (..., F * hop) sample values, linear between frame centres (sample j * hop);
    the last frame's value is held after its centre."""
    n = values.shape[-1]
    pos = torch.arange(n * hop, device=values.device, dtype=torch.float64) / hop
    i0 = pos.floor().long().clamp_max(n - 1)
    i1 = (i0 + 1).clamp_max(n - 1)
    frac = (pos - i0).clamp(0.0, 1.0).to(values.dtype)
    return values[..., i0] * (1 - frac) + values[..., i1] * frac


def whiten(x: Tensor, std: Tensor) -> Tensor:
    """w = x / std (the PriorGrad coordinates: the prior N(0, diag std^2) on x is N(0, I) on w)."""
    return x / std


def unwhiten(w: Tensor, std: Tensor) -> Tensor:
    """x = std * w, the inverse of :func:`whiten`."""
    return w * std


# ---------------------------------------------------------------- the model
class Vocoder(torch.nn.Module):
    """DiffWave + PriorGrad vocoder (module notes): :meth:`loss` for training, :meth:`vocode` for inference."""

    def __init__(self, config: Optional[VocoderConfig] = None) -> None:
        super().__init__()
        self.config = config or VocoderConfig()
        cfg = self.config
        self.net = DiffWaveNet(cfg)
        self.path = VP("linear", cfg.beta_min, cfg.beta_max)
        self.diffusion_loss = DiffusionLoss(
            self.path, prediction="v", weighting="uniform",
            time_sampler=LogNormalTime(-cfg.train_logsnr_mean, cfg.train_logsnr_std))

    @property
    def denoiser(self) -> Denoiser:
        """The network as a core denoiser D(w, t, mel=normalised mel) -> E[w0 | w_t] on ``self.path``."""
        return Denoiser(self.net, self.path, prediction="v")

    def check_mel(self, mel: Tensor) -> Tensor:
        """mel as a float (B, n_mels, F) tensor; ValueError for other shapes, band counts, NaN or inf."""
        if not isinstance(mel, Tensor):
            raise ValueError(f"mel must be a torch.Tensor, got {type(mel).__name__}")
        if not mel.is_floating_point():
            raise ValueError(f"mel must be a float tensor of log-mel values, got dtype {mel.dtype}")
        m = mel[None] if mel.dim() == 2 else mel
        if m.dim() != 3 or m.shape[1] != self.config.n_mels or m.shape[0] < 1 or m.shape[2] < 1:
            raise ValueError(f"mel must be (n_mels, frames) or (B, n_mels, frames) with n_mels = "
                             f"{self.config.n_mels} and frames >= 1, got shape {tuple(mel.shape)}")
        if not bool(torch.isfinite(m).all()):
            raise ValueError("mel contains NaN or infinite values")
        return m.float()

    def prior_std(self, mel: Tensor) -> Tensor:
        """PriorGrad's per-sample prior standard deviation (B, 1, F * hop) of a log-mel (B, n_mels, F)."""
        cfg = self.config
        std = (cfg.prior_scale * frame_energy(mel)).clamp_min(cfg.prior_std_min)
        return interpolate_frames(std, cfg.hop_length).clamp_min(cfg.prior_std_min)[:, None]   # rounding-proof floor

    def normalize_mel(self, mel: Tensor) -> Tensor:
        return (mel - self.config.mel_mean) / self.config.mel_std

    def loss(self, audio: Tensor, mel: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Mean v-MSE on a batch: audio (B, F * hop) waveform segments and their log-mel frames (B, n_mels, F)."""
        mel = self.check_mel(mel)
        if audio.dim() == 3 and audio.shape[1] == 1:
            audio = audio[:, 0]
        if audio.dim() != 2 or audio.shape != (mel.shape[0], mel.shape[-1] * self.config.hop_length):
            raise ValueError(f"audio must be (B, frames * {self.config.hop_length}) matching mel "
                             f"{tuple(mel.shape)}, got {tuple(audio.shape)}")
        w0 = whiten(audio[:, None].float(), self.prior_std(mel))
        return self.diffusion_loss(self.net, w0, generator=generator, mel=self.normalize_mel(mel)).mean()

    @torch.no_grad()
    def vocode(self, mel: Tensor, steps: Optional[int] = None, seed: int = 0, solver: Optional[str] = None,
               grid: Optional[str] = None) -> Tensor:
        """Waveform from log-mel: (n_mels, F) -> (F * hop,), or (B, n_mels, F) -> (B, F * hop), float32 in
        [-1, 1] at 16 kHz. ``steps`` solver steps (default the config's 6) of ``solver`` (default
        ``ddpm``) on ``grid`` (default ``logsnr``); the noise comes from
        ``torch.Generator().manual_seed(seed)``."""
        cfg = self.config
        steps = cfg.steps if steps is None else steps
        solver = cfg.solver if solver is None else solver
        grid = cfg.grid if grid is None else grid
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if solver not in _solvers():
            raise ValueError(f"unknown solver {solver!r}; valid: {sorted(_solvers())}")
        single = isinstance(mel, Tensor) and mel.dim() == 2
        m = self.check_mel(mel)
        dev = next(iter(self.parameters()), torch.empty(0)).device
        m = m.to(dev)
        std = self.prior_std(m)
        g = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(std.shape, generator=g, dtype=torch.float32).to(dev)
        w = sample(self.denoiser, noise, path=self.path, solver=solver, steps=steps, grid=grid,
                   cond={"mel": self.normalize_mel(m)}, generator=g)
        x = unwhiten(w, std)[:, 0].clamp(-1.0, 1.0).cpu()
        return x[0] if single else x

    # -------------------------------------------------------- saving
    def save(self, out_dir: Union[str, Path], state: Optional[Dict[str, Tensor]] = None,
             extra: Optional[Dict[str, Any]] = None, half: bool = True) -> Path:
        """Write ``model.safetensors`` (float16 unless ``half=False``) and ``config.json`` into out_dir, each
        written to a ``.part`` file and renamed into place; ``state`` defaults to this model's state dict."""
        from safetensors.torch import save_file
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        sd = {k: (v.detach().half() if (half and v.is_floating_point()) else v.detach()).contiguous().cpu()
              for k, v in (state or self.state_dict()).items()}
        tmp = out / "model.safetensors.part"
        save_file(sd, str(tmp), metadata={"format": "pt"})
        tmp.replace(out / "model.safetensors")
        d = asdict(self.config)
        d["upsample"] = list(d["upsample"])
        tmpc = out / "config.json.part"
        tmpc.write_text(json.dumps({"model": "diffwave_priorgrad", "config": d, **(extra or {})}, indent=1) + "\n")
        tmpc.replace(out / "config.json")
        return out


def load(model_dir: Union[str, Path]) -> Vocoder:
    """A :class:`Vocoder` (float32, eval mode) from a folder with ``config.json`` and ``model.safetensors``."""
    from polydiff.core.training.files import read_model_folder
    meta, state = read_model_folder(model_dir, "diffusion vocoder", model="diffwave_priorgrad")
    if not isinstance(meta.get("config"), dict):
        raise ValueError(f"{model_dir}: config.json has no 'config' mapping")
    model = Vocoder(VocoderConfig.from_dict(meta["config"]))
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise ValueError(f"{model_dir}: the weights do not match the config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.eval()


def pretrained(name: str = "rms") -> Vocoder:
    """The shipped vocoder ``name`` (``"rms"``: trained on flite's rms voice, ``weights/vocoder-rms``)."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained vocoder {name!r}; valid: {sorted(PRETRAINED)}")
    return load(WEIGHTS_DIR / PRETRAINED[name])


__all__ = ["Vocoder", "VocoderConfig", "DiffWaveNet", "frame_energy", "interpolate_frames", "whiten", "unwhiten",
           "load", "pretrained", "PRETRAINED"]
