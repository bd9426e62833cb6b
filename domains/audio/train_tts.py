"""Train the Grad-TTS model (:mod:`polydiff.domains.audio.tts`) on an LJSpeech-format corpus.

    python -m polydiff.domains.audio.train_tts --corpus /tmp/speech/rms-train --out runs/tts-rms \\
        --minutes 55 --seed 0

Every utterance's log-mel (16 kHz, hop 256, 80 bands) and symbol ids are computed once at start. Each
step draws a random batch; MAS, the duration and prior losses see whole utterances, the diffusion
decoder one random ``crop_frames`` crop per utterance (Grad-TTS, Popov et al., ICML 2021, Sec. 4).
Adam with linear warm-up, gradient clipping, and an exponential moving average of all weights (the
EMA weights are what ``model.safetensors`` holds). ``--decoder-only`` (with ``--init``) keeps a trained text
encoder and duration predictor fixed, aligns the corpus once with them (:func:`aligned_means`) and trains only the
decoder, a fresh one when ``--config`` changes its ``unet``: a wider decoder costs no retraining of the encoder, and
each step skips the encoder and MAS (63 % of a joint step with the first, 64-channel decoder). Checkpoints
(``model.safetensors``, ``config.json``,
``progress.json``) are written every ``--checkpoint-minutes`` and at the end; ``train.log`` gets a line
of losses every ``--log-every`` steps. ``torch.set_num_threads(1)`` unless ``--threads``.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .corpus import ljspeech
from .features import log_mel
from .tts import GradTTS, TTSConfig, load, text_ids
from ...core.training.schedule import lr_at
from ...core.training.step import gradient_step


def load_corpus(root: str, config: TTSConfig, limit: Optional[int] = None,
                progress: bool = True) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """(ids per utterance, as the model with ``config`` reads text (:func:`tts.text_ids`), log-mel
    (80, frames) per utterance) of an LJSpeech-format corpus at 16 kHz."""
    corpus = ljspeech(root, sample_rate=16000)
    n = len(corpus) if limit is None else min(limit, len(corpus))
    from tqdm.auto import tqdm
    ids, mels = [], []
    for i in tqdm(range(n), desc="features", unit="utt", disable=not progress):
        u = corpus[i]
        x = text_ids(u.text, config)
        m = log_mel(u.audio.float())
        if m.shape[-1] < x.numel():
            raise ValueError(f"utterance {u.id} has fewer frames ({m.shape[-1]}) than symbols ({x.numel()})")
        ids.append(x)
        mels.append(m)
    return ids, mels


def collate(ids: Sequence[torch.Tensor], mels: Sequence[torch.Tensor]
            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad a batch: (ids (B, Tx) with 0, x_lengths, mels (B, n_mels, Ty) with the floor, y_lengths)."""
    from .tts import MEL_FLOOR
    xl = torch.tensor([x.numel() for x in ids])
    yl = torch.tensor([m.shape[-1] for m in mels])
    X = torch.zeros(len(ids), int(xl.max()), dtype=torch.long)
    Y = torch.full((len(mels), mels[0].shape[0], int(yl.max())), MEL_FLOOR)
    for b, (x, m) in enumerate(zip(ids, mels)):
        X[b, :x.numel()] = x
        Y[b, :, :m.shape[-1]] = m
    return X, xl, Y, yl


def training_parser(description: str, *, model: str, minutes: float, batch: int, lr: float, warmup: int,
                    ema: float) -> argparse.ArgumentParser:
    """The command line shared by the audio training scripts (Grad-TTS, the diffusion vocoder): corpus,
    budget, Adam with warm-up and clipping, EMA, checkpoints; ``model`` names the config class."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="LJSpeech-format folder (wavs/, metadata.csv)")
    p.add_argument("--out", required=True, help="output folder for checkpoints and train.log")
    p.add_argument("--minutes", type=float, default=minutes, help=f"wall-clock training budget (default {minutes:g})")
    p.add_argument("--steps", type=int, default=10 ** 9, help="stop after this many steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--schedule", default="constant", choices=["constant", "cosine"],
                   help="after warm-up: constant, or cosine decay to --min-lr over the budget (--steps if given, "
                        "else --minutes of wall time)")
    p.add_argument("--min-lr", type=float, default=0.0, help="the cosine schedule's final learning rate")
    p.add_argument("--ema", type=float, default=ema, help="EMA decay per step (ramped up as min(decay, (1+s)/(10+s)))")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--limit", type=int, default=None, help="use only the first N utterances")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="also keep every checkpoint in OUT/step-NNNNNN/ (to choose one on validation sentences)")
    p.add_argument("--config", default=None, help=f"JSON file (or inline JSON) of {model} overrides")
    p.add_argument("--init", default=None,
                   help="continue from a saved model folder (its config and EMA weights; a fresh optimizer)")
    p.add_argument("--quiet", action="store_true")
    return p


def read_overrides(config: Optional[str]) -> Dict[str, Any]:
    """``--config``: a JSON file or inline JSON of model-config overrides ({} when absent)."""
    if not config:
        return {}
    src = Path(config)
    return json.loads(src.read_text() if src.is_file() else config)


def open_log(out: Path, quiet: bool) -> Callable[[str], None]:
    """A logger appending lines to ``out/train.log`` (and printing them with ``--quiet``, where the
    progress bar is off)."""
    log = open(out / "train.log", "a", buffering=1)

    def say(msg: str) -> None:
        log.write(msg + "\n")
        if quiet:
            print(msg, flush=True)
    return say


def fit(model: torch.nn.Module, opt: torch.optim.Optimizer, losses: Callable[[torch.Generator], Dict[str, torch.Tensor]],
        a: argparse.Namespace, out: Path, say: Callable[[str], None], t_start: float, desc: str,
        progress: Optional[Dict[str, Any]] = None) -> int:
    """The audio trainers' loop (options of :func:`training_parser`): ``losses(g)`` draws a batch and
    returns named losses with their sum as "total"; Adam steps with linear warm-up, then a constant rate
    or cosine decay over the budget (``core.training.schedule.lr_at``), and clipping (a step
    with a non-finite gradient norm is skipped); an EMA of all weights with decay min(ema, (1+s)/(10+s));
    a train.log line every ``--log-every`` steps; ``model.save`` of the EMA copy and ``progress.json``
    every ``--checkpoint-minutes`` and at the end. Returns the number of steps."""
    from tqdm.auto import tqdm
    ema = copy.deepcopy(model).eval()
    for q in ema.parameters():
        q.requires_grad_(False)
    g = torch.Generator().manual_seed(a.seed)
    bar = tqdm(total=None if a.steps >= 10 ** 9 else a.steps, desc=desc, unit="step", disable=a.quiet)
    step, last_ckpt, run = 0, time.time(), {}
    deadline = t_start + 60 * a.minutes

    def checkpoint(final: bool = False) -> None:
        ema.save(out, extra={"step": step})
        if a.keep_checkpoints:
            ema.save(out / f"step-{step:06d}", extra={"step": step})
        (out / "progress.json").write_text(json.dumps({
            "step": step, "wall_minutes": (time.time() - t_start) / 60, "final": final, "seed": a.seed,
            "batch": a.batch, "lr": a.lr, "ema": a.ema, "threads": a.threads, **(progress or {})}, indent=1) + "\n")

    model.train()
    while step < a.steps and time.time() < deadline:
        parts = losses(g)
        budget_used = step / a.steps if a.steps < 10 ** 9 else (time.time() - t_start) / (60 * a.minutes)
        lr = lr_at(min(10 ** 6, round(10 ** 6 * budget_used)), a.lr, 10 ** 6, 0, a.schedule, a.min_lr) \
            * min(1.0, (step + 1) / a.warmup)
        gn = gradient_step(opt, parts["total"], lr=lr, clip=a.clip, step=step)
        step += 1
        decay = min(a.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        for k, v in parts.items():
            if k != "total":
                run[k] = run.get(k, 0.0) + float(v.detach())
        bar.update(1)
        if step % a.log_every == 0:
            avg = {k: v / a.log_every for k, v in run.items()}
            bar.set_postfix({k[:4]: f"{v:.3f}" for k, v in avg.items()})
            say(f"step {step} min {(time.time() - t_start) / 60:.1f} lr {lr:.2e} gnorm {float(gn):.2f} "
                + " ".join(f"{k} {v:.4f}" for k, v in avg.items()))
            run = {}
        if time.time() - last_ckpt > 60 * a.checkpoint_minutes:
            checkpoint()
            last_ckpt = time.time()
    checkpoint(final=True)
    say(f"done: {step} steps in {(time.time() - t_start) / 60:.1f} min; EMA weights in {out / 'model.safetensors'}")
    bar.close()
    return step


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (also read by ``polydiff train`` configs)."""
    p = training_parser(__doc__, model="TTSConfig", minutes=55.0, batch=16, lr=1e-3, warmup=200, ema=0.998)
    p.add_argument("--decoder-only", action="store_true",
                   help="with --init: keep its text encoder and duration predictor fixed, align the corpus once "
                        "with them and train only the decoder; --config may then change the decoder's settings "
                        f"({', '.join(sorted(DECODER_KEYS))}), and a changed `unet` starts a fresh decoder")
    return p


#: the config keys a ``--decoder-only`` run may change
DECODER_KEYS = frozenset({"unet", "beta_min", "beta_max", "crop_frames", "griffin_lim_iters", "temperature"})
#: the config keys a joint run with ``--init`` may change (none of them changes a weight's shape)
JOINT_INIT_KEYS = frozenset({"edge_silence", "crop_frames", "griffin_lim_iters", "temperature"})


@torch.no_grad()
def aligned_means(model: GradTTS, ids: Sequence[torch.Tensor], mels: Sequence[torch.Tensor],
                  batch: int = 32) -> List[torch.Tensor]:
    """Each utterance's prior mean mu_y (n_mels, frames): the encoder output (eval mode) repeated along the
    MAS alignment to its mel, as the decoder sees it in training (:meth:`GradTTS.loss`)."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: mels[i].shape[-1])
    out: List[Optional[torch.Tensor]] = [None] * len(ids)
    for k in range(0, len(order), batch):
        sel = order[k:k + batch]
        X, xl, Y, yl = collate([ids[i] for i in sel], [mels[i] for i in sel])
        mu_x, _, _, _, attn = model.align(X, xl, Y, yl)
        mu_y = torch.matmul(mu_x, attn)
        for b, i in enumerate(sel):
            out[i] = mu_y[b, :, :int(yl[b])].clone()
    model.train(was_training)
    return out  # type: ignore[return-value]


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    torch.set_num_threads(a.threads)
    t_start = time.time()
    overrides = read_overrides(a.config)
    init = load(a.init) if a.init else None
    if a.decoder_only and init is None:
        raise SystemExit("--decoder-only needs --init (the model whose encoder is kept)")
    allowed = DECODER_KEYS if a.decoder_only else JOINT_INIT_KEYS
    if init is not None and set(overrides) - allowed:
        what = "--decoder-only" if a.decoder_only else "a joint run with --init keeps the model's sizes; --config"
        raise SystemExit(f"{what} may change only {sorted(allowed)}; got {sorted(set(overrides) - allowed)}")
    cfg = TTSConfig.from_dict({**(init.config if init is not None else TTSConfig()).__dict__, **overrides})
    torch.manual_seed(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    say = open_log(out, a.quiet)

    ids, mels = load_corpus(a.corpus, cfg, a.limit, progress=not a.quiet)
    frames = sum(m.shape[-1] for m in mels)
    say(f"corpus {a.corpus}: {len(ids)} utterances, {frames * 256 / 16000 / 60:.1f} min of audio; "
        f"features in {time.time() - t_start:.0f} s")
    model = GradTTS(cfg)
    if init is not None:
        fresh_decoder = cfg.unet != init.config.unet
        state = {k: v.float() for k, v in init.state_dict().items()
                 if not (fresh_decoder and k.startswith("decoder."))}
        missing, _ = model.load_state_dict(state, strict=not fresh_decoder)
        if any(not k.startswith("decoder.") for k in missing):
            raise RuntimeError(f"weights missing from {a.init}: {missing}")
        say(f"initialised from {a.init}" + (" (encoder and duration predictor; a fresh decoder)" if fresh_decoder else ""))
    n_params = sum(p.numel() for p in model.parameters())
    say(f"model: {n_params / 1e6:.2f} M parameters (encoder {sum(p.numel() for p in model.encoder.parameters()) / 1e6:.2f} M, "
        f"decoder {sum(p.numel() for p in model.decoder.parameters()) / 1e6:.2f} M); config {json.dumps(cfg.__dict__)}")
    if a.decoder_only:
        t0 = time.time()
        means = aligned_means(model, ids, mels)
        say(f"decoder only: encoder fixed, corpus aligned once in {time.time() - t0:.0f} s")
        for q in model.encoder.parameters():
            q.requires_grad_(False)
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=a.lr, betas=(0.9, 0.98))

    def losses(g: torch.Generator) -> Dict[str, torch.Tensor]:
        sel = torch.randint(len(ids), (a.batch,), generator=g).tolist()
        X, xl, Y, yl = collate([ids[i] for i in sel], [mels[i] for i in sel])
        if a.decoder_only:
            _, _, MU, _ = collate([ids[i] for i in sel], [means[i] for i in sel])
            d = model.decoder_loss(Y, MU, yl, generator=g)
            return {"diffusion": d, "total": d}
        return model.loss(X, xl, Y, yl, generator=g)

    fit(model, opt, losses, a, out, say, t_start, "grad-tts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
