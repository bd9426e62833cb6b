"""A small convolutional KL-regularised autoencoder: the first stage of latent diffusion.

Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models" (CVPR 2022), Sec. 3.1
and App. G: an encoder maps an image x to a diagonal Gaussian q(z | x) = N(mean, exp(logvar)) on a
latent grid 2^(levels-1) times smaller than the image; a decoder maps z back; training minimises a
reconstruction error plus a small beta times KL(q(z | x) || N(0, I)), which keeps the latent space
smooth and bounded without quantisation. Diffusion then runs on ``scale_factor * z`` (the paper's
"rescaled" latents, scale = 1 / std of the latents, 0.18215 for SD's autoencoder), so the core's
paths, solvers and Trainer see roughly unit-variance data, exactly as with images.

    ae = build_autoencoder(in_channels=1, z_channels=2)        # 16x16x1 -> 8x8x2
    ae = train_autoencoder(x_train, ae, steps=2000)            # reconstruction + beta * KL, then scale fit
    z = ae.encode(x)                # scaled latent (mean of q(z | x)); sample=True draws from q
    x_hat = ae.decode(z)            # back to image space ([-1, 1] up to the decoder's error; not clamped)

The architecture mirrors SD's (ResNet blocks with GroupNorm and SiLU, stride-2 convolutions down,
nearest-neighbour upsampling and a convolution up), without attention and the adversarial / perceptual
losses, which a 16x16 digit does not need. The scale factor is a buffer, saved with the weights.
Saving and loading (``save_autoencoder`` / ``load_autoencoder``) use safetensors + JSON, and the network
is rebuilt from the core registry (name "image_kl_autoencoder"), never from stored code.
"""
from __future__ import annotations

import os
from pathlib import Path as FsPath
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from polydiff.core.nets import build as build_net
from polydiff.core.nets import config_of, register
from polydiff.core.nets.layers import as_int_tuple
from polydiff.core.training.step import gradient_step

from .data import check_images

Tensor = torch.Tensor
AE_FORMAT = "polydiff-autoencoder"
LOGVAR_RANGE = (-30.0, 20.0)     # as in SD's DiagonalGaussianDistribution


class _Res(torch.nn.Module):
    """GroupNorm-SiLU-conv twice, plus a (1x1 when the width changes) skip."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.n1, self.c1 = torch.nn.GroupNorm(groups, cin), torch.nn.Conv2d(cin, cout, 3, padding=1)
        self.n2, self.c2 = torch.nn.GroupNorm(groups, cout), torch.nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = torch.nn.Conv2d(cin, cout, 1) if cin != cout else torch.nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.c1(F.silu(self.n1(x)))
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per sample (B,), summed over the latent:
    0.5 * sum(mean^2 + exp(logvar) - 1 - logvar)."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


@register("image_kl_autoencoder")
class KLAutoencoder(torch.nn.Module):
    """Encoder/decoder pair with a diagonal-Gaussian latent (module docstring).

    in_channels: image channels (1 grey, 3 RGB). z_channels: latent channels. channels, channel_mult:
    level widths ``channels * channel_mult[l]``; the latent is 2^(len(channel_mult) - 1) times smaller per
    side. num_res_blocks: residual blocks per level. norm_groups: GroupNorm groups (divides every width).
    """

    def __init__(self, in_channels: int = 1, z_channels: int = 2, channels: int = 32,
                 channel_mult: Sequence[int] = (1, 2), num_res_blocks: int = 1, norm_groups: int = 8) -> None:
        super().__init__()
        mult = as_int_tuple(channel_mult, "channel_mult")
        if in_channels < 1 or z_channels < 1 or channels < 1 or num_res_blocks < 0 or not mult or min(mult) < 1:
            raise ValueError(f"need in_channels, z_channels, channels >= 1, num_res_blocks >= 0 and a non-empty "
                             f"channel_mult of positive ints; got {in_channels}, {z_channels}, {channels}, "
                             f"{num_res_blocks}, {mult}")
        widths = [channels * m for m in mult]
        if norm_groups < 1 or any(w % norm_groups for w in widths):
            raise ValueError(f"every level width {widths} must be divisible by norm_groups={norm_groups}")
        self.in_channels, self.z_channels = in_channels, z_channels
        self.factor = 2 ** (len(mult) - 1)
        g = norm_groups
        enc = [torch.nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        ch = widths[0]
        for lv, w in enumerate(widths):
            for _ in range(num_res_blocks):
                enc.append(_Res(ch, w, g))
                ch = w
            if lv < len(widths) - 1:
                enc.append(torch.nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        enc += [_Res(ch, ch, g), torch.nn.GroupNorm(g, ch), torch.nn.SiLU(),
                torch.nn.Conv2d(ch, 2 * z_channels, 3, padding=1)]
        self.encoder = torch.nn.Sequential(*enc)
        dec = [torch.nn.Conv2d(z_channels, ch, 3, padding=1), _Res(ch, ch, g)]
        for lv in reversed(range(len(widths))):
            for _ in range(num_res_blocks):
                dec.append(_Res(ch, widths[lv], g))
                ch = widths[lv]
            if lv > 0:
                dec += [torch.nn.Upsample(scale_factor=2.0, mode="nearest"), torch.nn.Conv2d(ch, ch, 3, padding=1)]
        dec += [torch.nn.GroupNorm(g, ch), torch.nn.SiLU(), torch.nn.Conv2d(ch, in_channels, 3, padding=1)]
        self.decoder = torch.nn.Sequential(*dec)
        self.register_buffer("scale_factor", torch.ones(()))

    # ---------------------------------------------------------------- shapes
    def latent_shape(self, image_shape: Sequence[int]) -> Tuple[int, int, int]:
        """(z_channels, H / f, W / f) for an image shape (C, H, W)."""
        c, h, w = image_shape
        self._check_hw(h, w)
        return self.z_channels, h // self.factor, w // self.factor

    def _check_hw(self, h: int, w: int) -> None:
        if h % self.factor or w % self.factor:
            raise ValueError(f"image size {h}x{w} must be divisible by the autoencoder's factor {self.factor}")

    # ---------------------------------------------------------------- encode / decode
    def moments(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """(mean, logvar) of q(z | x), unscaled, each (B, z_channels, H / f, W / f); x in [-1, 1]."""
        check_images(x, "autoencoder input", channels=self.in_channels)
        self._check_hw(x.shape[2], x.shape[3])
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def encode(self, x: Tensor, sample: bool = False, generator: Optional[torch.Generator] = None) -> Tensor:
        """The scaled latent ``scale_factor * z``: z the mean of q(z | x), or (``sample=True``) a draw
        mean + exp(logvar / 2) * eps with eps from ``generator``."""
        mean, logvar = self.moments(x)
        z = mean
        if sample:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + (0.5 * logvar).exp() * eps
        return self.scale_factor.to(z.dtype) * z

    def decode(self, z: Tensor) -> Tensor:
        """Images (B, in_channels, H, W) from scaled latents (B, z_channels, h, w); differentiable, not
        clamped (clamp to [-1, 1] before treating the result as an image)."""
        if not isinstance(z, Tensor) or z.dim() != 4 or z.shape[1] != self.z_channels:
            raise ValueError(f"latents must have shape (B, {self.z_channels}, h, w), got "
                             f"{tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__}")
        if not bool(torch.isfinite(z).all()):
            raise ValueError("latents contain NaN or infinite values")
        return self.decoder(z / self.scale_factor.to(z.dtype))

    def forward(self, x: Tensor) -> Tensor:
        """decode(encode(x)): the deterministic reconstruction."""
        return self.decode(self.encode(x))

    # ---------------------------------------------------------------- training
    def loss(self, x: Tensor, beta: float = 1e-3, generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """Per-sample (B,) terms of the training loss on a batch x in [-1, 1]:
        ``recon`` = sum over pixels of (decode(z) - x)^2 with z ~ q(z | x) (reparameterised, eps from
        ``generator``), ``kl`` = KL(q(z | x) || N(0, I)) (``kl_divergence``), ``total`` = recon + beta * kl.
        The scale factor plays no part (it is fitted after training)."""
        mean, logvar = self.moments(x)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + (0.5 * logvar).exp() * eps
        recon = (self.decoder(z) - x).square().flatten(1).sum(1)
        kl = kl_divergence(mean, logvar)
        return {"total": recon + beta * kl, "recon": recon, "kl": kl}

    @torch.no_grad()
    def fit_scale_factor(self, x: Tensor, batch_size: int = 512) -> float:
        """Set ``scale_factor`` = 1 / std of the unscaled latent means of x (all elements), so that
        ``encode(x)`` has unit standard deviation; returns it (Rombach et al. 2022, Sec. 4.3.2)."""
        zs = torch.cat([self.moments(x[i:i + batch_size])[0] for i in range(0, x.shape[0], batch_size)])
        std = float(zs.double().std())
        if not std > 0:
            raise ValueError("the latents have zero spread; cannot fit a scale factor")
        self.scale_factor.fill_(1.0 / std)
        return 1.0 / std


def build_autoencoder(**kwargs: Any) -> KLAutoencoder:
    """A ``KLAutoencoder`` built through the core registry (so its config is saved with it)."""
    return build_net({"name": "image_kl_autoencoder", **kwargs})


def train_autoencoder(x: Tensor, ae: Optional[KLAutoencoder] = None, steps: int = 2000, batch_size: int = 64,
                      lr: float = 1e-3, beta: float = 1e-3, seed: int = 0, log_every: int = 0) -> KLAutoencoder:
    """Train ``ae`` (default ``build_autoencoder(in_channels=x.shape[1])``) on images x (N, C, H, W) in
    [-1, 1] with AdamW and a cosine learning rate, minimising the mean of ``ae.loss(x, beta)``; then fit
    its scale factor on x. Deterministic given ``seed``. Returns the autoencoder (in eval mode)."""
    check_images(x, "training images")
    if ae is None:
        ae = build_autoencoder(in_channels=x.shape[1])
    if not isinstance(steps, int) or steps < 1 or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"steps and batch_size must be integers >= 1, got {steps!r}, {batch_size!r}")
    g = torch.Generator(device=x.device).manual_seed(seed)
    opt = torch.optim.AdamW(ae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    ae.train()
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=g, device=x.device)
        terms = ae.loss(x[idx], beta, generator=g)
        gradient_step(opt, terms["total"].mean(), step=step)
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            recon, kl = terms["recon"].detach().mean().item(), terms["kl"].detach().mean().item()
            print(f"step {step + 1}: recon {recon:.4f} kl {kl:.2f}", flush=True)
    ae.eval()
    ae.fit_scale_factor(x)
    return ae


def save_autoencoder(directory: Union[str, os.PathLike], ae: KLAutoencoder,
                     extra: Optional[Mapping[str, Any]] = None) -> FsPath:
    """Write config.json (the network config, format tag, ``extra``) and model.safetensors (weights and
    scale factor) into ``directory``; returns it."""
    from polydiff.core.training.files import save_tensors, write_json
    d = FsPath(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_tensors(d / "model.safetensors", {k: v.detach().cpu().contiguous() for k, v in ae.state_dict().items()})
    write_json(d / "config.json", {"format": AE_FORMAT, "version": 1, "net": config_of(ae),
                                   "scale_factor": float(ae.scale_factor), "extra": dict(extra or {})})
    return d


def load_autoencoder(directory: Union[str, os.PathLike], device: Optional[Union[str, torch.device]] = None
                     ) -> KLAutoencoder:
    """The autoencoder saved by ``save_autoencoder`` (eval mode, gradients off); ValueError for missing or
    malformed files and mismatched tensors."""
    from polydiff.core.training.files import load_tensors, read_json
    d = FsPath(directory)
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise ValueError(f"{str(directory)!r} is not a saved autoencoder (expected config.json and model.safetensors)")
    cfg = read_json(d / "config.json")
    if not isinstance(cfg, dict) or cfg.get("format") != AE_FORMAT or "net" not in cfg:
        raise ValueError(f"{d / 'config.json'} is not a polydiff autoencoder config (format {AE_FORMAT!r})")
    ae = build_net(cfg["net"])
    if not isinstance(ae, KLAutoencoder):
        raise ValueError(f"{d / 'config.json'} names network {cfg['net'].get('name')!r}, not an autoencoder")
    state = load_tensors(d / "model.safetensors")
    expected = ae.state_dict()
    bad = sorted(set(expected) ^ set(state)) + sorted(k for k in set(expected) & set(state)
                                                      if expected[k].shape != state[k].shape)
    if bad:
        raise ValueError(f"weights in {d / 'model.safetensors'} do not match the network: {bad[:10]}")
    ae.load_state_dict(state, strict=True)
    if device is not None:
        ae = ae.to(device)
    return ae.eval().requires_grad_(False)


#: the shipped digits autoencoder: 16x16x1 -> 8x8x2
DIGITS_AE_CONFIG = {"in_channels": 1, "z_channels": 2, "channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
                    "norm_groups": 8}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m polydiff.domains.images.train_digits autoencoder --out DIR``: train the digits autoencoder
    (``DIGITS_AE_CONFIG``) on the digits train split and save it with a README (command, time, errors)."""
    import argparse
    import platform
    import sys
    import time
    from .data import load_digits
    ap = argparse.ArgumentParser(description="train the digits KL autoencoder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--beta", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    x, _ = load_digits("train")
    xte, _ = load_digits("test")
    torch.manual_seed(args.seed)
    t0 = time.time()
    ae = train_autoencoder(x, build_autoencoder(**DIGITS_AE_CONFIG), args.steps, args.batch_size, args.lr,
                           args.beta, args.seed, log_every=200)
    wall = time.time() - t0
    with torch.no_grad():
        mse = {k: float((ae(v) - v).square().mean()) for k, v in (("train", x), ("test", xte))}
        kl = float(kl_divergence(*ae.moments(x)).mean())
    psnr = {k: 10 * torch.log10(torch.tensor(4.0 / v)).item() for k, v in mse.items()}
    extra = {"data": "sklearn digits, 16x16, [-1, 1], split 'train'", "steps": args.steps, "beta": args.beta,
             "mse": mse, "psnr_db": psnr, "kl_train": kl}
    d = save_autoencoder(args.out, ae, extra)
    cmd = "python -m polydiff.domains.images.train_digits autoencoder " + " ".join(
        argv if argv is not None else sys.argv[1:])
    (d / "README.md").write_text(
        "# Digits KL autoencoder\n\n"
        f"`KLAutoencoder(**{DIGITS_AE_CONFIG})`: 16x16x1 digits -> 8x8x2 latents, "
        f"{sum(p.numel() for p in ae.parameters()):,} parameters, scale factor {float(ae.scale_factor):.4f}.\n\n"
        f"- command: `{cmd}`\n- wall time: {wall:.0f} s, torch threads {torch.get_num_threads()}, "
        f"{platform.machine()} CPU, torch {torch.__version__}\n"
        f"- reconstruction PSNR (deterministic encode/decode, data range 2): train {psnr['train']:.2f} dB, "
        f"test {psnr['test']:.2f} dB; mean KL (train) {kl:.1f} nats\n\n"
        "Load it with `polydiff.domains.images.pretrained_autoencoder(\"digits\")`.\n")
    print(f"autoencoder written to {d}: PSNR train {psnr['train']:.2f} dB, test {psnr['test']:.2f} dB")
    return 0


__all__ = ["DIGITS_AE_CONFIG", "main", "KLAutoencoder", "kl_divergence", "build_autoencoder", "train_autoencoder",
           "save_autoencoder", "load_autoencoder"]
