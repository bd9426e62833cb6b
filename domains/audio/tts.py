"""Grad-TTS text-to-speech on the shared core: text encoder, duration predictor, monotonic alignment
search and a mel decoder that is a diffusion model on the core's ``MeanRevertingVP`` path.

Popov, Vovk, Gogoryan, Sadekova & Kudinov, "Grad-TTS: A Diffusion Probabilistic Model for
Text-to-Speech", ICML 2021 (arXiv 2105.06337). The parts:

* **Text encoder** (:class:`TextEncoder`): symbol embedding (the table of
  :func:`polydiff.domains.audio.text.symbols`, CMU phonemes with letter fallback; with
  ``TTSConfig.edge_silence`` a word-boundary symbol at both ends, see :func:`text_ids`), a residual conv
  prenet, sinusoidal positions and a few pre-LayerNorm Transformer blocks with convolutional
  feed-forward layers (as Glow-TTS / Grad-TTS), projected to mu_x: one 80-band log-mel frame per symbol.
* **Duration predictor**: two convolutions on the *detached* encoder output, regressing the
  log-durations log(1e-8 + d) found by MAS (Grad-TTS Eq. 16).
* **Monotonic alignment search** (:func:`monotonic_alignment`, Kim et al., "Glow-TTS", NeurIPS 2020,
  Alg. 1): the monotonic, surjective alignment of frames to symbols that maximises
  sum_j log N(y_j; mu_{a(j)}, I), by dynamic programming in plain PyTorch (batched over utterances
  and symbols, one loop over frames, then a batched backtrack).
* **Decoder**: a denoiser on the mean-reverting path x_t = alpha x0 + (1 - alpha) mu + sigma eps
  (``polydiff.core.paths.MeanRevertingVP``, beta 0.05 -> 20) whose prior mean mu is the aligned
  encoder output. The network (:class:`MelDecoder`) is the core's 1-D U-Net over frames with the 80 mel
  bands of the residual state and of mu stacked as 160 input channels, predicting v on the residual
  x0 - mu (see :class:`MelDecoder` for why not Grad-TTS's score); it is trained with the core's
  ``DiffusionLoss`` on random ~2 s crops and sampled with the core's ``sample`` (any solver).
  Grad-TTS stacks mu as a second channel of a 2-D U-Net; the 1-D U-Net is the CPU-friendly choice.
* **Prior loss**: 0.5 (y - mu_y)^2 + 0.5 log 2 pi per element (Grad-TTS Eq. 15), so mu_x is itself
  an (oversmoothed) mel prediction: ``mean_only=True`` vocodes it directly (the ablation).

Mels are the unnormalised log-mels of :func:`polydiff.domains.audio.features.log_mel` (16 kHz,
hop 256, 80 bands, floor log 1e-5 = -11.51), as Grad-TTS; the vocoder is
:func:`polydiff.domains.audio.features.griffin_lim`. Inference (Grad-TTS Sec. 3): durations
ceil(exp(logw) * length_scale), mu_y by repeating mu_x, start mu_y + sigma(1) eps / temperature,
then ``steps`` solver steps to t = 0.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from polydiff.core import Denoiser, sample
from polydiff.core.losses import DiffusionLoss
from polydiff.core.nets import UNet
from polydiff.core.paths import MeanRevertingVP
from polydiff.core.solvers import solvers as _solvers

from .features import MelConfig, griffin_lim
from .text import encode, symbols

#: id of the word-boundary symbol " ", the edge symbol of ``TTSConfig.edge_silence``
BOUNDARY_ID = symbols().index(" ")

Tensor = torch.Tensor
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PRETRAINED = {"rms": "tts-rms"}
MEL_FLOOR = math.log(MelConfig().floor)
#: mean and standard deviation of the log-mels of the rms training corpus (used to scale mu's input channels)
MEL_MEAN, MEL_STD = -5.5, 2.3
SAMPLE_RATE = MelConfig().sample_rate
#: the sampling temperature of configs that do not name one (``TTSConfig.temperature``). Grad-TTS samples
#: at 1.5; our first 64-channel decoder was best at 4 on validation sentences (pocketsphinx WER 22.8 % at 1.5,
#: 18.3 % at 2.5, 17.9 % at 4, 18.5 % at 7; benchmarks/RESULTS.md, "Temperature chosen on validation sentences").
#: The best temperature depends on the decoder, so each model's config.json carries its own.
DEFAULT_TEMPERATURE = 4.0


def _default_unet() -> Dict[str, Any]:
    return {"channels": 64, "channel_mult": [1, 2], "num_res_blocks": 2, "attn_levels": [],
            "head_dim": 64, "mid_attention": True, "norm_groups": 16}


@dataclass
class TTSConfig:
    """Sizes and settings of a :class:`GradTTS` model (saved as ``config.json`` beside the weights)."""
    n_vocab: int = len(symbols())
    n_mels: int = 80
    phonemes: bool = True
    hidden: int = 128
    prenet_layers: int = 3
    prenet_kernel: int = 5
    enc_layers: int = 3
    heads: int = 2
    ffn: int = 384
    ffn_kernel: int = 3
    dropout: float = 0.1
    dur_filters: int = 128
    dur_kernel: int = 3
    unet: Dict[str, Any] = field(default_factory=_default_unet)
    beta_min: float = 0.05
    beta_max: float = 20.0
    crop_frames: int = 128
    griffin_lim_iters: int = 32
    #: inference default: the start noise is divided by it (chosen per model on validation sentences)
    temperature: float = DEFAULT_TEMPERATURE
    #: wrap every symbol sequence in word-boundary symbols (:func:`text_ids`), so the silence before and
    #: after the speech gets encoder states of its own instead of stretching the first and last phonemes
    edge_silence: bool = False

    def __post_init__(self) -> None:
        if self.n_vocab != len(symbols()):
            raise ValueError(f"n_vocab {self.n_vocab} differs from the symbol table ({len(symbols())} symbols)")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} must be divisible by heads {self.heads}")
        _check_positive("temperature", self.temperature)
        if self.crop_frames % self.frame_multiple:
            raise ValueError(f"crop_frames {self.crop_frames} must be a multiple of {self.frame_multiple}")

    @property
    def frame_multiple(self) -> int:
        """Mel lengths the decoder takes must be multiples of this (2^(U-Net levels - 1))."""
        return 2 ** (len(self.unet.get("channel_mult", [1])) - 1)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TTSConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TTS config keys {unknown}; valid: {sorted(names)}")
        return cls(**d)


def text_ids(text: str, config: TTSConfig, *, strict: bool = False) -> Tensor:
    """The model's input ids (L,) for ``text``: :func:`text.encode` with the config's ``phonemes``, and with
    ``edge_silence`` a word-boundary symbol at both ends. Grad-TTS intersperses a blank between all symbols
    for the same reason; without edge symbols the alignment must give the leading and trailing silence to
    the first and last phonemes. Training (``train_tts.load_corpus``) and inference both call this."""
    ids = encode(text, phonemes=config.phonemes, strict=strict)
    if config.edge_silence:
        edge = ids.new_tensor([BOUNDARY_ID])
        ids = torch.cat([edge, ids, edge])
    return ids


# ---------------------------------------------------------------- alignment and length regulation
def sequence_mask(lengths: Tensor, max_len: Optional[int] = None) -> Tensor:
    """(B, max_len) bool mask, True at positions < lengths[b]."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def monotonic_alignment(logp: Tensor, x_lengths: Optional[Tensor] = None,
                        y_lengths: Optional[Tensor] = None) -> Tensor:
    """Monotonic alignment search (Kim et al., "Glow-TTS", NeurIPS 2020, Alg. 1).

    logp: (B, Tx, Ty) score of frame j under symbol i. Returns the 0/1 alignment (B, Tx, Ty) (logp's
    dtype) of the monotonic, surjective map a: frames -> symbols with a(0) = 0, a(ty - 1) = tx - 1 and
    a(j + 1) - a(j) in {0, 1} that maximises sum_j logp[a(j), j], for each item's (tx, ty); entries
    outside them are 0. Needs ty >= tx. DP Q[i, j] = logp[i, j] + max(Q[i, j-1], Q[i-1, j-1]) in
    float64; the backtrack moves to i - 1 when i == j or Q[i-1, j-1] > Q[i, j-1] (ties stay).
    """
    if logp.dim() != 3:
        raise ValueError(f"logp must be (B, Tx, Ty), got shape {tuple(logp.shape)}")
    B, Tx, Ty = logp.shape
    dev = logp.device
    xl = torch.full((B,), Tx, device=dev, dtype=torch.long) if x_lengths is None else x_lengths.to(dev).long()
    yl = torch.full((B,), Ty, device=dev, dtype=torch.long) if y_lengths is None else y_lengths.to(dev).long()
    if xl.shape != (B,) or yl.shape != (B,):
        raise ValueError(f"x_lengths and y_lengths must have shape ({B},)")
    if bool((xl < 1).any() | (xl > Tx).any() | (yl > Ty).any()):
        raise ValueError(f"lengths out of range: x_lengths in [1, {Tx}], y_lengths <= {Ty} required")
    if bool((yl < xl).any()):
        raise ValueError("every utterance needs at least as many frames as symbols (y_lengths >= x_lengths); "
                         f"got x_lengths {xl.tolist()} and y_lengths {yl.tolist()}")
    lp = logp.detach().double()
    if not bool(torch.isfinite(lp).all()):
        raise ValueError("logp contains NaN or inf")
    neg = torch.tensor(-math.inf, dtype=torch.float64, device=dev)
    q = torch.full((B, Tx, Ty), -math.inf, dtype=torch.float64, device=dev)
    q[:, 0, 0] = lp[:, 0, 0]
    pad = neg.expand(B, 1)
    for j in range(1, Ty):
        prev = q[:, :, j - 1]
        q[:, :, j] = lp[:, :, j] + torch.maximum(prev, torch.cat([pad, prev[:, :-1]], dim=1))
    path = torch.zeros(B, Tx, Ty, dtype=logp.dtype, device=dev)
    idx = xl - 1
    ar = torch.arange(B, device=dev)
    for j in range(Ty - 1, -1, -1):
        active = j < yl
        path[ar[active], idx[active], j] = 1
        if j == 0:
            break
        stay = q[ar, idx, j - 1]
        diag = torch.where(idx > 0, q[ar, (idx - 1).clamp_min(0), j - 1], neg)
        move = active & (idx > 0) & ((idx == j) | (diag > stay))
        idx = idx - move.long()
    return path


def alignment_from_durations(durations: Tensor, max_frames: Optional[int] = None) -> Tensor:
    """(B, Tx, Ty) 0/1 alignment repeating symbol i durations[b, i] times, in order (length regulation)."""
    if durations.dim() != 2:
        raise ValueError(f"durations must be (B, Tx), got shape {tuple(durations.shape)}")
    d = durations.long()
    if bool((d < 0).any()):
        raise ValueError("durations must be >= 0")
    end = d.cumsum(1)
    start = end - d
    ty = int(end[:, -1].max()) if max_frames is None else max_frames
    j = torch.arange(ty, device=d.device)[None, None, :]
    return ((j >= start[:, :, None]) & (j < end[:, :, None])).float()


def expand(mu_x: Tensor, durations: Tensor, max_frames: Optional[int] = None) -> Tensor:
    """Length regulation: mu_x (B, C, Tx) repeated along time by integer durations (B, Tx) -> (B, C, Ty)."""
    attn = alignment_from_durations(durations, max_frames).to(mu_x.dtype)
    return torch.matmul(mu_x, attn)


def gaussian_logp(y: Tensor, mu_x: Tensor) -> Tensor:
    """(B, Tx, Ty) log N(y_j; mu_i, I) for y (B, C, Ty) and mu_x (B, C, Tx), expanded as Grad-TTS does:
    -1/2 |y_j|^2 + mu_i . y_j - 1/2 |mu_i|^2 - C/2 log 2 pi."""
    c = y.shape[1]
    return (-0.5 * y.square().sum(1)[:, None, :] + torch.matmul(mu_x.transpose(1, 2), y)
            - 0.5 * mu_x.square().sum(1)[:, :, None] - 0.5 * c * math.log(2 * math.pi))


# ---------------------------------------------------------------- networks
class _LayerNorm1d(torch.nn.Module):
    """LayerNorm over channels of a (B, C, T) tensor."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.ln = torch.nn.LayerNorm(ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.ln(x.transpose(1, 2)).transpose(1, 2)


class _Block(torch.nn.Module):
    """Pre-LN Transformer block on (B, C, T): masked multi-head self-attention, then a conv feed-forward."""

    def __init__(self, ch: int, heads: int, ffn: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = _LayerNorm1d(ch), _LayerNorm1d(ch)
        self.heads = heads
        self.qkv = torch.nn.Conv1d(ch, 3 * ch, 1)
        self.proj = torch.nn.Conv1d(ch, ch, 1)
        self.ff1 = torch.nn.Conv1d(ch, ffn, kernel, padding=kernel // 2)
        self.ff2 = torch.nn.Conv1d(ffn, ch, kernel, padding=kernel // 2)
        self.drop = torch.nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:          # mask (B, 1, T) float
        B, C, T = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, 3, self.heads, C // self.heads, T).transpose(3, 4).unbind(1)
        keep = mask.bool()[:, :, None, :]                          # (B, 1, 1, T): attend to real symbols
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=self.drop.p if self.training else 0.0)
        x = (x + self.drop(self.proj(o.transpose(2, 3).reshape(B, C, T)))) * mask
        h = self.ff2(self.drop(torch.relu(self.ff1(self.ln2(x) * mask))) * mask)
        return (x + self.drop(h)) * mask


class TextEncoder(torch.nn.Module):
    """ids (B, Tx) -> (mu_x (B, n_mels, Tx), log-durations (B, Tx), mask (B, 1, Tx)); see the module notes."""

    def __init__(self, cfg: TTSConfig) -> None:
        super().__init__()
        h = cfg.hidden
        self.emb = torch.nn.Embedding(cfg.n_vocab, h, padding_idx=0)
        torch.nn.init.normal_(self.emb.weight, 0.0, h ** -0.5)
        self.prenet = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Conv1d(h, h, cfg.prenet_kernel, padding=cfg.prenet_kernel // 2),
                                _LayerNorm1d(h), torch.nn.ReLU(), torch.nn.Dropout(cfg.dropout))
            for _ in range(cfg.prenet_layers))
        self.blocks = torch.nn.ModuleList(_Block(h, cfg.heads, cfg.ffn, cfg.ffn_kernel, cfg.dropout)
                                          for _ in range(cfg.enc_layers))
        self.ln_out = _LayerNorm1d(h)
        self.proj_mu = torch.nn.Conv1d(h, cfg.n_mels, 1)
        k = cfg.dur_kernel
        self.dur = torch.nn.ModuleList([torch.nn.Conv1d(h, cfg.dur_filters, k, padding=k // 2),
                                        _LayerNorm1d(cfg.dur_filters),
                                        torch.nn.Conv1d(cfg.dur_filters, cfg.dur_filters, k, padding=k // 2),
                                        _LayerNorm1d(cfg.dur_filters),
                                        torch.nn.Conv1d(cfg.dur_filters, 1, 1)])
        self.drop = torch.nn.Dropout(cfg.dropout)
        self.hidden = h

    def _positions(self, T: int, device: torch.device) -> Tensor:
        half = self.hidden // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / half)
        arg = torch.arange(T, device=device, dtype=torch.float32)[:, None] * freqs[None]
        return torch.cat([arg.sin(), arg.cos()], 1).T[None]         # (1, hidden, T)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        mask = sequence_mask(lengths, ids.shape[1]).unsqueeze(1).to(self.emb.weight.dtype)
        x = self.emb(ids).transpose(1, 2) * math.sqrt(self.hidden) * mask
        for layer in self.prenet:
            x = (x + layer(x * mask)) * mask
        x = (x + self._positions(x.shape[2], x.device)) * mask
        for block in self.blocks:
            x = block(x, mask)
        x = self.ln_out(x) * mask
        mu = self.proj_mu(x) * mask
        h = x.detach()                                               # the duration predictor's input is detached
        c1, n1, c2, n2, out = self.dur
        h = self.drop(n1(torch.relu(c1(h * mask))))
        h = self.drop(n2(torch.relu(c2(h * mask))))
        logw = (out(h * mask) * mask).squeeze(1)
        return mu, logw, mask


class MelDecoder(torch.nn.Module):
    """net(x, t, mu=mu) -> x0-hat for the mel denoiser on ``MeanRevertingVP(beta_min, beta_max)``.

    x is the Gaussian-path state the core's ``Denoiser`` passes, x~ = alpha x0 + sigma eps (mu stays in
    the conditioning). On the residual z = x0 - mu the mean-reverting VP path is a plain VP path,
    z_t = x~ - alpha mu = alpha z0 + sigma eps, with data of about unit scale; the core's 1-D U-Net F sees
    [z_t, (mu - MEL_MEAN) / MEL_STD] stacked along channels (2 n_mels inputs) and predicts v on it
    (Salimans & Ho, ICLR 2022: v = alpha eps - sigma z0), so x0-hat = mu + alpha z_t - sigma F. A zero F
    (the U-Net's zero-initialised output) is already the denoiser that returns mu at high noise and x at
    low noise. Regressing x0-hat with x0-space weight 1 / sigma^2 (``DiffusionLoss(prediction="x0",
    weighting="edm", sigma_data=1)``) is exactly the v-MSE. Grad-TTS predicts the score of the raw
    state instead; that parameterisation must first learn the identity map from x to eps, which a few
    thousand CPU steps do not afford (measured: eps-MSE stuck at 0.54 at high noise after 300 steps).
    T must be a multiple of 2^(U-Net levels - 1)."""

    def __init__(self, n_mels: int, unet: Dict[str, Any], beta_min: float = 0.05, beta_max: float = 20.0) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.path = MeanRevertingVP(beta_min, beta_max)
        self.unet = UNet(dims=1, in_channels=2 * n_mels, out_channels=n_mels, **unet)

    def forward(self, x: Tensor, t: Tensor, mu: Optional[Tensor] = None) -> Tensor:
        if mu is None:
            raise ValueError("the mel decoder needs the prior mean as the keyword mu=")
        if mu.shape != x.shape:
            mu = mu.expand_as(x)
        t64 = t.to(torch.float64)
        a = self.path.alpha(t64).to(x.dtype)[:, None, None]
        s = self.path.sigma(t64).to(x.dtype)[:, None, None]
        z = x - a * mu
        v = self.unet(torch.cat([z, (mu - MEL_MEAN) / MEL_STD], dim=1), t)
        return mu + a * z - s * v


# ---------------------------------------------------------------- the model
class GradTTS(torch.nn.Module):
    """Grad-TTS (module notes): ``loss`` for training, ``mel`` / ``synthesize`` for inference."""

    def __init__(self, config: Optional[TTSConfig] = None) -> None:
        super().__init__()
        self.config = config or TTSConfig()
        cfg = self.config
        self.encoder = TextEncoder(cfg)
        self.decoder = MelDecoder(cfg.n_mels, cfg.unet, cfg.beta_min, cfg.beta_max)
        self.path = MeanRevertingVP(cfg.beta_min, cfg.beta_max)
        # x0-space weight 1 / sigma^2 = the v-MSE of the residual parameterisation (see MelDecoder)
        self.diffusion_loss = DiffusionLoss(self.path, prediction="x0", weighting="edm", sigma_data=1.0)
        self.mel_config = MelConfig(n_mels=cfg.n_mels)

    @property
    def denoiser(self) -> Denoiser:
        """The decoder as a core denoiser D(x, t, mu=mu) -> E[x0 | x_t] on ``self.path`` (built on demand,
        so its weights are not registered twice)."""
        return Denoiser(self.decoder, self.path, prediction="x0")

    # -------------------------------------------------------- text
    def encode_text(self, text: str) -> Tensor:
        """Symbol ids (L,) of ``text``; ValueError for empty or unspeakable text, or unknown characters."""
        return text_ids(text, self.config, strict=True)

    # -------------------------------------------------------- training
    def loss(self, ids: Tensor, x_lengths: Tensor, mels: Tensor, y_lengths: Tensor,
             generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """Grad-TTS's three losses on a batch: ids (B, Tx) padded with 0, mels (B, n_mels, Ty) log-mels
        (padding is ignored). Returns {"duration", "prior", "diffusion", "total"} (scalars).
        MAS and the duration/prior losses use whole utterances; the diffusion loss uses one random crop of
        ``crop_frames`` frames per utterance (shorter ones padded with the mel floor)."""
        cfg = self.config
        if ids.dim() != 2 or mels.dim() != 3 or mels.shape[1] != cfg.n_mels or ids.shape[0] != mels.shape[0]:
            raise ValueError(f"need ids (B, Tx) and mels (B, {cfg.n_mels}, Ty); got {tuple(ids.shape)}, "
                             f"{tuple(mels.shape)}")
        mu_x, logw, x_mask, y_mask, attn = self.align(ids, x_lengths, mels, y_lengths)
        dur_target = torch.log(1e-8 + attn.sum(2)) * x_mask.squeeze(1)
        dur_loss = (logw - dur_target).square().sum() / x_lengths.sum()
        mu_y = torch.matmul(mu_x, attn)                              # (B, n_mels, Ty)
        prior = 0.5 * ((mels - mu_y).square() + math.log(2 * math.pi)) * y_mask
        prior_loss = prior.sum() / (y_mask.sum() * cfg.n_mels)
        diff_loss = self.decoder_loss(mels, mu_y, y_lengths, generator)
        total = dur_loss + prior_loss + diff_loss
        return {"duration": dur_loss, "prior": prior_loss, "diffusion": diff_loss, "total": total}

    def align(self, ids: Tensor, x_lengths: Tensor, mels: Tensor, y_lengths: Tensor
              ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Encode a batch and align it to its mels by MAS: (mu_x (B, n_mels, Tx), logw (B, Tx),
        x_mask (B, 1, Tx), y_mask (B, 1, Ty) float, attn (B, Tx, Ty) 0/1, no gradient)."""
        mu_x, logw, x_mask = self.encoder(ids, x_lengths)
        y_mask = sequence_mask(y_lengths, mels.shape[-1]).unsqueeze(1).to(mels.dtype)
        with torch.no_grad():
            logp = gaussian_logp(mels * y_mask, mu_x)
            attn = monotonic_alignment(logp, x_lengths, y_lengths).to(mels.dtype)
        return mu_x, logw, x_mask, y_mask, attn

    def decoder_loss(self, mels: Tensor, mu_y: Tensor, y_lengths: Tensor,
                     generator: Optional[torch.Generator] = None) -> Tensor:
        """The decoder's diffusion loss (scalar) on one random ``crop_frames`` crop per utterance of mels
        and their aligned prior means mu_y (both (B, n_mels, Ty); frames past y_lengths, and crops of
        shorter utterances, are padded with the mel floor)."""
        L, (B, n_mels, Ty) = self.config.crop_frames, mels.shape
        y_mask = sequence_mask(y_lengths, Ty).unsqueeze(1)
        floor = torch.tensor(MEL_FLOOR, dtype=mels.dtype, device=mels.device)
        y_pad = torch.where(y_mask, mels, floor)
        mu_pad = torch.where(y_mask, mu_y, floor)
        if Ty < L:
            y_pad = F.pad(y_pad, (0, L - Ty), value=MEL_FLOOR)
            mu_pad = F.pad(mu_pad, (0, L - Ty), value=MEL_FLOOR)
        room = (y_lengths - L).clamp_min(0).to(torch.float64)
        u = torch.rand(B, generator=generator, dtype=torch.float64).to(mels.device)
        start = torch.floor(u * (room + 1)).long()
        idx = (start[:, None] + torch.arange(L, device=mels.device)[None]).unsqueeze(1).expand(B, n_mels, L)
        y_crop, mu_crop = y_pad.gather(2, idx), mu_pad.gather(2, idx)
        return self.diffusion_loss(self.decoder, y_crop, generator=generator, mu=mu_crop).mean()

    # -------------------------------------------------------- inference
    @torch.no_grad()
    def prior_mean(self, ids: Tensor, length_scale: float = 1.0) -> Tuple[Tensor, int]:
        """(mu_y (1, n_mels, T), frames): the encoder means repeated by the predicted durations
        ceil(exp(logw) * length_scale) (frames in all), with T padded up to a multiple of the decoder's
        frame multiple by the mel floor."""
        if ids.dim() == 1:
            ids = ids[None]
        if ids.shape[0] != 1:
            raise ValueError("prior_mean takes one utterance")
        lengths = torch.tensor([ids.shape[1]], device=ids.device)
        mu_x, logw, mask = self.encoder(ids, lengths)
        d = torch.ceil(torch.exp(logw) * length_scale).clamp_min(1) * mask.squeeze(1)
        frames = int(d.sum())
        m = self.config.frame_multiple
        total = -(-frames // m) * m
        mu_y = expand(mu_x, d, total)
        if total > frames:
            mu_y[:, :, frames:] = MEL_FLOOR
        return mu_y, frames

    @torch.no_grad()
    def mel(self, text: str, *, steps: int = 10, temperature: Optional[float] = None, solver: str = "dpmpp_2m",
            grid: str = "logsnr", seed: int = 0, length_scale: float = 1.0, mean_only: bool = False) -> Tensor:
        """Log-mel (n_mels, frames) of ``text``: the diffusion decoder's sample, or the aligned encoder
        mean with ``mean_only``. The starting noise is drawn from torch.Generator().manual_seed(seed) and
        divided by ``temperature`` (default: the model's, ``config.temperature``)."""
        temperature = self.config.temperature if temperature is None else temperature
        _check_options(steps, temperature, solver, length_scale)
        ids = self.encode_text(text).to(self.encoder.emb.weight.device)
        mu_y, frames = self.prior_mean(ids, length_scale)
        if mean_only:
            return mu_y[0, :, :frames]
        g = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(mu_y.shape, generator=g, dtype=mu_y.dtype).to(mu_y.device) / temperature
        x = sample(self.denoiser, noise, path=self.path, solver=solver, steps=steps, grid=grid,
                   cond={"mu": mu_y}, generator=g)
        return x[0, :, :frames]

    @torch.no_grad()
    def vocode(self, mel: Tensor, n_iter: Optional[int] = None) -> Tensor:
        """Waveform (T,) at 16 kHz from a log-mel (n_mels, frames) by Griffin-Lim (peak kept <= 0.99)."""
        wav = griffin_lim(mel.float().cpu(), self.mel_config, n_iter=n_iter or self.config.griffin_lim_iters)
        peak = float(wav.abs().max())
        return wav * (0.99 / peak) if peak > 0.99 else wav

    def synthesize(self, text: str, steps: int = 10, temperature: Optional[float] = None, solver: str = "dpmpp_2m", *,
                   grid: str = "logsnr", seed: int = 0, length_scale: float = 1.0,
                   mean_only: bool = False) -> Tuple[Tensor, int]:
        """(waveform (T,) float32 in [-1, 1], 16000) for ``text``; see :meth:`mel` for the options."""
        mel = self.mel(text, steps=steps, temperature=temperature, solver=solver, grid=grid, seed=seed,
                       length_scale=length_scale, mean_only=mean_only)
        return self.vocode(mel), SAMPLE_RATE

    # -------------------------------------------------------- saving
    def save(self, out_dir: Union[str, Path], state: Optional[Dict[str, Tensor]] = None,
             extra: Optional[Dict[str, Any]] = None) -> Path:
        """Write ``model.safetensors`` (float16: half the size, and inference loses nothing audible) and
        ``config.json`` into out_dir, each written to a ``.part`` file and renamed into place; ``state``
        defaults to this model's state dict."""
        from safetensors.torch import save_file
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        sd = {k: (v.detach().half() if v.is_floating_point() else v.detach()).contiguous().cpu()
              for k, v in (state or self.state_dict()).items()}
        tmp = out / "model.safetensors.part"
        save_file(sd, str(tmp), metadata={"format": "pt"})
        tmp.replace(out / "model.safetensors")
        cfg = {"model": "grad_tts", "config": asdict(self.config), **(extra or {})}
        tmpc = out / "config.json.part"
        tmpc.write_text(json.dumps(cfg, indent=1) + "\n")
        tmpc.replace(out / "config.json")
        return out


def _check_positive(name: str, value: Any) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_options(steps: int, temperature: float, solver: str, length_scale: float) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    _check_positive("temperature", temperature)
    _check_positive("length_scale", length_scale)
    if solver not in _solvers():
        raise ValueError(f"unknown solver {solver!r}; valid: {sorted(_solvers())}")


def load(model_dir: Union[str, Path]) -> GradTTS:
    """A :class:`GradTTS` from a folder with ``config.json`` and ``model.safetensors`` (eval mode)."""
    from polydiff.core.training.files import read_model_folder
    meta, state = read_model_folder(model_dir, "Grad-TTS model", model="grad_tts")
    if not isinstance(meta.get("config"), dict):
        raise ValueError(f"{model_dir}: config.json has no 'config' mapping")
    model = GradTTS(TTSConfig.from_dict(meta["config"]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{model_dir}: the weights do not match the config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.eval()


def pretrained(name: str = "rms") -> GradTTS:
    """The shipped model ``name`` (``"rms"``: trained on flite's rms voice, ``weights/tts-rms``)."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained TTS model {name!r}; valid: {sorted(PRETRAINED)}")
    return load(WEIGHTS_DIR / PRETRAINED[name])


def synthesize(text: str, steps: int = 10, temperature: Optional[float] = None, solver: str = "dpmpp_2m", *,
               grid: str = "logsnr", seed: int = 0, length_scale: float = 1.0, mean_only: bool = False,
               model: Optional[GradTTS] = None) -> Tuple[Tensor, int]:
    """Speak ``text`` with the shipped rms model (or ``model``): (waveform (T,) at 16 kHz, 16000)."""
    m = model if model is not None else _cached_pretrained()
    return m.synthesize(text, steps, temperature, solver, grid=grid, seed=seed, length_scale=length_scale,
                        mean_only=mean_only)


_CACHE: Dict[str, GradTTS] = {}


def _cached_pretrained() -> GradTTS:
    if "rms" not in _CACHE:
        _CACHE["rms"] = pretrained("rms")
    return _CACHE["rms"]


__all__ = ["TTSConfig", "GradTTS", "TextEncoder", "MelDecoder", "monotonic_alignment", "alignment_from_durations",
           "expand", "gaussian_logp", "sequence_mask", "load", "pretrained", "synthesize", "PRETRAINED"]
