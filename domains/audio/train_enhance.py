"""Train the SGMSE+-style speech enhancer on synthetic noisy mixtures (CPU-sized).

    python -m polydiff.domains.audio.train_enhance --corpus /tmp/speech/rms-train \
        --babble /tmp/speech/slt-train /tmp/speech/awb-train /tmp/speech/kal-train \
        --out runs/enhance-rms --minutes 50 --seed 0

Each step draws ``--batch`` mixtures from :class:`~polydiff.domains.audio.enhance.MixtureDataset`
(random crops of ``--frames`` STFT frames, white/pink/brown/babble noise, SNR uniform in -5..15 dB),
divides clean and noisy by the noisy peak (SGMSE+), and regresses :class:`SpecNet` with the core's
``DiffusionLoss`` on ``paths.OUVE()`` (EDM preconditioning and weighting, t ~ U[0.02, 1]) with
``mu`` = the noisy spectrogram. With probability ``--p-uncond`` a sample's condition is dropped
(mu = 0, y channels zero) so the same weights are a clean-speech prior (unsupervised route).
Adam, linear warm-up, gradient clipping, EMA of the weights (``polydiff.core.training.EMA``).
Every ``--save-minutes`` the EMA network is written to OUT/model (safetensors + config.json) and the
full state to OUT/checkpoint.pt (``--resume`` continues from it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", required=True, help="LJSpeech-format corpus of clean speech (ROOT/wavs/*.wav)")
    p.add_argument("--babble", nargs="*", default=[], help="corpora of other voices for babble noise")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--minutes", type=float, default=50.0, help="wall-clock training budget")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: no limit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=64, help="STFT frames per training crop")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--channel-mult", type=str, default="1,2,2,2")
    p.add_argument("--p-uncond", type=float, default=0.2, help="probability of dropping the noisy condition")
    p.add_argument("--snr-low", type=float, default=-5.0)
    p.add_argument("--snr-high", type=float, default=15.0)
    p.add_argument("--ema-half-life", type=float, default=4000.0, help="EMA half-life in samples")
    p.add_argument("--save-minutes", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", action="store_true")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    from tqdm import tqdm
    from polydiff.core import losses, paths
    from polydiff.core.training.ema import EMA
    from polydiff.core.training.step import gradient_step
    from .enhance import MixtureDataset, NOISE_KINDS, SpecNet, save_model, training_pair
    from .features import SpecConfig

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = SpecConfig()
    seg = (args.frames - 1) * spec.hop_length
    kinds = NOISE_KINDS if args.babble else tuple(k for k in NOISE_KINDS if k != "babble")
    data = MixtureDataset(args.corpus, args.babble, snr_db=(args.snr_low, args.snr_high), kinds=kinds,
                          seed=args.seed, segment=seg, length=10 ** 12)
    print(f"corpus: {len(data.utterances)} utterances; babble pool: {len(data.babble)}; kinds {kinds}", flush=True)

    def batch(start: int):
        items = [data[start + j] for j in range(args.batch)]
        clean = torch.stack([it["clean"] for it in items])
        noisy = torch.stack([it["noisy"] for it in items])
        return training_pair(clean, noisy, spec)

    torch.manual_seed(args.seed)
    mult = [int(m) for m in args.channel_mult.split(",")]
    net = SpecNet(channels=args.channels, channel_mult=mult)
    if args.frames % net.multiple or spec.n_freqs % net.multiple:
        raise ValueError(f"--frames must be a multiple of {net.multiple}")
    path = paths.OUVE()
    # sigma_data: RMS of clean states over 8 batches (fixed by the seed)
    x0s = torch.cat([batch(10 ** 11 + 8 * i)[0] for i in range(8)])
    sigma_data = round(float(x0s.square().mean().sqrt()), 3)
    print(f"sigma_data = {sigma_data}", flush=True)
    loss_fn = losses.DiffusionLoss(path, prediction="edm", weighting="edm",
                                   time_sampler=losses.UniformTime(t_min=0.02, t_max=1.0), sigma_data=sigma_data)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    ema = EMA(net, half_life=args.ema_half_life)
    step, elapsed0 = 0, 0.0
    ckpt = out / "checkpoint.pt"
    if args.resume and ckpt.is_file():
        st = torch.load(ckpt, weights_only=True)
        net.load_state_dict(st["net"]); ema.module.load_state_dict(st["ema"]); opt.load_state_dict(st["opt"])
        step, elapsed0, sigma_data = int(st["step"]), float(st["elapsed"]), float(st["sigma_data"])
        loss_fn.sigma_data = sigma_data
        print(f"resumed at step {step}", flush=True)

    config = {"path": path.config(), "prediction": "edm", "sigma_data": sigma_data,
              "spec": {"sample_rate": spec.sample_rate, "n_fft": spec.n_fft, "hop_length": spec.hop_length,
                       "alpha": spec.alpha, "beta": spec.beta},
              "solver": "euler", "solver_options": {}, "steps": 5, "p_uncond": args.p_uncond,
              "training": {"corpus": str(args.corpus), "babble": [str(b) for b in args.babble],
                           "snr_db": [args.snr_low, args.snr_high], "kinds": list(kinds), "batch": args.batch,
                           "frames": args.frames, "lr": args.lr, "seed": args.seed, "t_min": 0.02,
                           "ema_half_life_samples": args.ema_half_life, "command": " ".join(sys.argv)}}

    # fixed validation batch: loss at fixed times and noise
    gv = torch.Generator().manual_seed(12345)
    vx0, vy = batch(10 ** 11 + 10 ** 6)
    vt = torch.linspace(0.05, 1.0, vx0.shape[0], dtype=torch.float64)
    veps = torch.randn(vx0.shape, generator=gv)

    def val_loss(model) -> float:
        with torch.no_grad():
            return float(loss_fn.loss_at(model, vx0, vt, veps, mu=vy).mean())

    g = torch.Generator().manual_seed(args.seed + 1)
    t_start = time.time()
    last_save = time.time()
    budget = args.minutes * 60.0 - elapsed0
    bar = tqdm(total=None, initial=step, desc="train", mininterval=30, file=sys.stdout)
    run_loss, n_loss = 0.0, 0

    def save(final: bool = False) -> None:
        elapsed = elapsed0 + time.time() - t_start
        config["training"].update({"steps": step, "wall_s": round(elapsed, 1), "samples": step * args.batch,
                                   "machine": f"{platform.machine()} CPU, {args.threads} thread(s)",
                                   "val_loss_ema": val_loss(ema.module)})
        save_model(out / "model", ema.module, config, half=False)
        torch.save({"net": net.state_dict(), "ema": ema.module.state_dict(), "opt": opt.state_dict(), "step": step,
                    "elapsed": elapsed, "sigma_data": sigma_data}, str(ckpt) + ".tmp")
        os.replace(str(ckpt) + ".tmp", ckpt)
        print(f"[save] step {step} elapsed {elapsed:.0f}s val_loss(ema) {config['training']['val_loss_ema']:.4f}"
              f"{' (final)' if final else ''}", flush=True)

    while True:
        if time.time() - t_start > budget or (args.max_steps and step >= args.max_steps):
            break
        x0, y = batch(step * args.batch)
        keep = (torch.rand(x0.shape[0], generator=g) >= args.p_uncond).to(x0.dtype)
        mu = y * keep[:, None, None, None]
        lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
        loss = loss_fn(net, x0, generator=g, mu=mu).mean()
        gradient_step(opt, loss, step=step, lr=lr)
        step += 1
        ema.update(net, step * args.batch, args.batch)
        run_loss += loss.item(); n_loss += 1
        bar.update(1)
        if step % 50 == 0:
            print(f"step {step} loss {run_loss / n_loss:.4f} lr {lr:.2e} "
                  f"elapsed {elapsed0 + time.time() - t_start:.0f}s", flush=True)
            run_loss, n_loss = 0.0, 0
        if time.time() - last_save > args.save_minutes * 60:
            save(); last_save = time.time()
    bar.close()
    save(final=True)
    print(json.dumps(config["training"]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
