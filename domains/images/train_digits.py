"""Train the shipped default digits model: a class-conditional U-Net on scikit-learn's 16x16 digits.

    python -m polydiff.domains.images.train_digits --out domains/images/weights/digits
    python -m polydiff.domains.images.train_digits autoencoder --out domains/images/weights/digits_autoencoder

Choices (each the fastest-training option the core offers for a small image set):
  * path: VP with the linear schedule (``paths.VP()``; DDPM's 1000-step schedule in continuous time),
    so that posterior samplers written for DDPM (DPS, DDRM, DDNM, DiffPIR, ...) see their usual path;
  * network output: EDM preconditioning (``prediction="edm"``, Karras et al., "Elucidating the Design
    Space of Diffusion-Based Generative Models", NeurIPS 2022), with its loss weighting and its
    log-normal training noise levels (``losses.DiffusionLoss(..., weighting="edm",
    time_sampler="log_normal")``); sigma_data = 0.65, the pixel std of the training split;
  * class labels dropped to the null label with probability 0.15 (``LabelDropoutLoss``), so the one
    network is both the class-conditional model and the unconditional prior, and classifier-free
    guidance (Ho & Salimans, arXiv 2207.12598) works;
  * data: ``load_digits("train")`` only (1 437 digits); the 360 "test" digits stay held out.

The run goes to ``--run-dir`` (metrics.csv, checkpoints; resumable); the EMA model is then exported to
``--out`` (config.json + model.safetensors, loadable with ``polydiff.core.load`` and
``polydiff.domains.images.pretrained``) with a README.md recording the command, wall time, machine and
final loss.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path as FsPath
from typing import Any, Callable, Optional, Sequence

import torch

from polydiff.core import losses, paths
from polydiff.core.training import TrainConfig, Trainer, save_model

from . import nets
from .data import load_digits

Tensor = torch.Tensor

NUM_CLASSES = 10
SIGMA_DATA = 0.65
#: the network config of the shipped model (nets.config("digits-unet", 10, **DIGITS_NET_OVERRIDES))
DIGITS_NET_OVERRIDES = {"channels": 24, "head_dim": 24, "num_res_blocks": 1, "dropout": 0.0}


class LabelDropoutLoss:
    """Wrap a loss so that each sample's class label becomes the null label with probability ``p``.

    Training with dropped labels makes one network both conditional and unconditional (classifier-free
    guidance, Ho & Salimans 2022). The drop mask is drawn from the loss's generator, so a run stays
    deterministic and resumable. ``path``, ``prediction`` and ``sigma_data`` are the wrapped loss's (the
    Trainer reads them to export the denoiser).
    """

    def __init__(self, loss: Callable[..., Tensor], p: float, null_label: int, key: str = "class_labels") -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"label dropout probability must lie in [0, 1], got {p}")
        self.loss, self.p, self.null_label, self.key = loss, float(p), int(null_label), key
        for name in ("path", "prediction", "sigma_data"):
            if hasattr(loss, name):
                setattr(self, name, getattr(loss, name))

    def __call__(self, net: Callable[..., Tensor], x0: Tensor, generator: Optional[torch.Generator] = None,
                 **cond: Any) -> Tensor:
        labels = cond.get(self.key)
        if labels is not None and self.p > 0:
            drop = torch.rand(labels.shape[0], generator=generator, device=labels.device) < self.p
            cond[self.key] = torch.where(drop, torch.full_like(labels, self.null_label), labels)
        return self.loss(net, x0, generator=generator, **cond)


def make_loss(p_uncond: float = 0.15) -> LabelDropoutLoss:
    """The training loss of the default model (module docstring)."""
    base = losses.DiffusionLoss(paths.VP("linear"), prediction="edm", weighting="edm", time_sampler="log_normal",
                                sigma_data=SIGMA_DATA)
    return LabelDropoutLoss(base, p_uncond, NUM_CLASSES)


def train(out: str, run_dir: str, steps: int = 3000, batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
          p_uncond: float = 0.15, ema_half_life: float = 50_000.0, progress: bool = True,
          net_overrides: Optional[dict] = None, argv: Optional[Sequence[str]] = None) -> FsPath:
    """Train on the digits train split and export the EMA model to ``out``; returns ``out``."""
    x, y = load_digits("train")
    loss = make_loss(p_uncond)
    torch.manual_seed(seed)
    net = nets.build("digits-unet", NUM_CLASSES, **(DIGITS_NET_OVERRIDES if net_overrides is None else net_overrides))
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(200, steps // 10),
                      schedule="cosine", min_lr=lr * 0.05, grad_clip=1.0, precision="fp32",
                      ema_half_life=ema_half_life, ema_rampup=0.05, seed=seed, log_every=100,
                      ckpt_every=500, out_dir=run_dir, progress=progress, tensorboard=False)
    trainer = Trainer(net, loss, (x, y), cfg)
    trainer.resume()
    t0 = time.time()
    trainer.fit()
    wall = time.time() - t0
    tail = [l for _, l in trainer.history[-200:]]
    final = sum(tail) / max(len(tail), 1)
    extra = {"sample_shape": [1, 16, 16], "num_classes": NUM_CLASSES, "null_label": NUM_CLASSES,
             "cond_key": "class_labels", "data": "sklearn digits, 16x16 bilinear, [-1, 1], split 'train'",
             "steps": trainer.step, "final_loss": final}
    out_dir = save_model(out, trainer.ema.module, loss.path, loss.prediction, loss.sigma_data, extra=extra)
    cmd = "python -m polydiff.domains.images.train_digits " + " ".join(argv if argv is not None else sys.argv[1:])
    (out_dir / "README.md").write_text(
        "# Default digits model\n\n"
        "Class-conditional U-Net (`polydiff.domains.images.nets.config(\"digits-unet\", 10, "
        f"**{json.dumps(DIGITS_NET_OVERRIDES)})`, {sum(p.numel() for p in net.parameters()):,} parameters) on "
        "scikit-learn's digits, upsampled to 16x16, in [-1, 1], train split only (1 437 digits). VP linear path, "
        f"EDM preconditioning and loss, label dropout {p_uncond} (null label 10).\n\n"
        f"- command: `{cmd}`\n"
        f"- steps: {trainer.step}, batch {batch_size}, lr {lr} (cosine), EMA half-life {ema_half_life:.0f} samples\n"
        f"- wall time (this invocation): {wall:.0f} s, torch threads: {torch.get_num_threads()}\n"
        f"- machine: {platform.machine()} CPU, {platform.system()}, torch {torch.__version__}\n"
        f"- final loss (mean of the last {len(tail)} steps): {final:.4f}\n\n"
        "Load it with `polydiff.domains.images.pretrained(\"digits\")`.\n")
    return out_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["autoencoder"]:           # the digits KL autoencoder (see autoencoder.main)
        from .autoencoder import main as ae_main
        return ae_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="`train_digits autoencoder --out DIR` trains the digits autoencoder instead.")
    ap.add_argument("--out", required=True, help="where the exported model goes (e.g. domains/images/weights/digits)")
    ap.add_argument("--run-dir", default="runs/digits", help="training run directory (metrics, checkpoints)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--p-uncond", type=float, default=0.15, help="label dropout probability")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = train(args.out, args.run_dir, args.steps, args.batch_size, args.lr, args.seed, args.p_uncond,
                progress=not args.no_progress, argv=argv)
    print(f"model written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
