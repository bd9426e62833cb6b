"""Image configurations of the core's U-Net and DiT (``polydiff.core.nets``).

An image network is called as net(x, t, class_labels=None) with x of shape (N, C, H, W) in the
documented [-1, 1] scale (or an autoencoder latent), like every core network. The configs below are
plain JSON dicts, so a saved model rebuilds its network with ``polydiff.core.nets.build`` and no
stored code runs. ``num_classes=0`` gives an unconditional network; ``num_classes=K`` > 0 a
class-conditional one whose label K is the null label (what classifier-free guidance and the
unconditional prior use; the network also falls back to it when no labels are passed).

    from polydiff.domains.images import nets
    cfg = nets.config("digits-unet", num_classes=10)     # 16x16 grey digits, class-conditional
    net = nets.build("rgb32-unet")                       # 32x32 RGB, unconditional
    nets.CONFIGS                                          # all names

Time input: every config here sets ``time_scale=250``, which suits EDM preconditioning
(``Denoiser(..., prediction="edm")`` feeds c_noise = log(sigma/alpha)/4, mostly in [-2, 2]); for a
network fed t in [0, 1] directly (prediction "eps", "v", ...) override ``time_scale=1000``.

Architectures: U-Net (Ho et al. 2020; Dhariwal & Nichol 2021) and DiT (Peebles & Xie 2023).
"""
from __future__ import annotations

import copy
from typing import Any, Dict

import torch

from polydiff.core import nets as core_nets

#: name -> (config without num_classes, description)
CONFIGS: Dict[str, Dict[str, Any]] = {
    # 16x16 grey digits: 3 levels (16, 8, 4), attention at 8x8 and 4x4; about 1.3 M parameters
    "digits-unet": {"name": "unet", "dims": 2, "in_channels": 1, "channels": 48, "channel_mult": [1, 2, 2],
                    "num_res_blocks": 2, "attn_levels": [2], "head_dim": 48, "norm_groups": 8,
                    "dropout": 0.1, "time_scale": 250.0},
    # 16x16 grey digits as 2x2 patches (64 tokens); about 1.2 M parameters
    "digits-dit": {"name": "dit", "dims": 2, "in_channels": 1, "patch_size": 2, "hidden": 128, "depth": 6,
                   "heads": 4, "freq_dim": 128, "pos_embed": "sincos", "time_scale": 250.0},
    # 32x32 RGB (CIFAR-10 size): 4 levels (32..4), attention at 16x16 and 8x8
    "rgb32-unet": {"name": "unet", "dims": 2, "in_channels": 3, "channels": 64, "channel_mult": [1, 2, 2, 2],
                   "num_res_blocks": 2, "attn_levels": [1, 2], "head_dim": 64, "norm_groups": 32,
                   "dropout": 0.1, "time_scale": 250.0},
    # 64x64 RGB (CelebA-64 size): 4 levels (64..8), attention at 16x16 and 8x8
    "rgb64-unet": {"name": "unet", "dims": 2, "in_channels": 3, "channels": 64, "channel_mult": [1, 2, 3, 4],
                   "num_res_blocks": 2, "attn_levels": [2, 3], "head_dim": 64, "norm_groups": 32,
                   "dropout": 0.1, "time_scale": 250.0},
    # 32x32 RGB as 2x2 patches (256 tokens), DiT-S width
    "rgb32-dit": {"name": "dit", "dims": 2, "in_channels": 3, "patch_size": 2, "hidden": 384, "depth": 12,
                  "heads": 6, "pos_embed": "sincos", "time_scale": 250.0},
    # 64x64 RGB as 4x4 patches (256 tokens), DiT-S width
    "rgb64-dit": {"name": "dit", "dims": 2, "in_channels": 3, "patch_size": 4, "hidden": 384, "depth": 12,
                  "heads": 6, "pos_embed": "sincos", "time_scale": 250.0},
}

#: the image size (H = W) and channel count each config is meant for
SIZES: Dict[str, tuple] = {"digits-unet": (1, 16), "digits-dit": (1, 16), "rgb32-unet": (3, 32),
                           "rgb32-dit": (3, 32), "rgb64-unet": (3, 64), "rgb64-dit": (3, 64)}


def config(name: str, num_classes: int = 0, **overrides: Any) -> Dict[str, Any]:
    """A fresh config dict for ``polydiff.core.nets.build``: the named image config, class-conditional
    with ``num_classes`` > 0 (label ``num_classes`` is the null label) or unconditional with 0, and any
    other constructor argument overridden (e.g. ``in_channels=4`` for a latent, ``channels=32``)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown image network {name!r}; valid: {sorted(CONFIGS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an integer >= 0, got {num_classes!r}")
    cfg = copy.deepcopy(CONFIGS[name])
    cfg["num_classes"] = num_classes
    cfg.update(overrides)
    return cfg


def build(name: str, num_classes: int = 0, **overrides: Any) -> torch.nn.Module:
    """The network of ``config(name, num_classes, **overrides)``, built by the core registry (so it saves
    and reloads with ``polydiff.core.training.save_model`` / ``load``)."""
    return core_nets.build(config(name, num_classes, **overrides))


__all__ = ["CONFIGS", "SIZES", "config", "build"]
