"""Train the DiffWave + PriorGrad diffusion vocoder (:mod:`polydiff.domains.audio.vocoder`) on an
LJSpeech-format corpus.

    python -m polydiff.domains.audio.train_vocoder --corpus /tmp/speech/rms-train --out runs/vocoder-rms \\
        --minutes 40 --seed 0

Every utterance's waveform (16 kHz) and log-mel (hop 256, 80 bands) are computed once at start, and
PriorGrad's ``prior_scale`` is fitted on them (:func:`calibrate_prior_scale`) unless ``--config`` sets it.
Each step draws ``--batch`` random segments of ``segment_frames`` frames (32 frames = 0.51 s): samples
[s * hop, (s + K) * hop) of an utterance with mel frames s .. s + K - 1 of the whole utterance's mel
(DiffWave's training crops, Kong et al., ICLR 2021, Sec. 5); utterances shorter than a segment are
padded with silence and the mel floor. Adam with linear warm-up, gradient clipping, and an
exponential moving average of all weights (the EMA weights are what ``model.safetensors`` holds).
Checkpoints (``model.safetensors``, ``config.json``, ``progress.json``) are written every
``--checkpoint-minutes`` and at the end; ``train.log`` gets a line every ``--log-every`` steps.
``torch.set_num_threads(1)`` unless ``--threads``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .corpus import ljspeech
from .features import log_mel
from .train_tts import fit, open_log, read_overrides, training_parser
from .vocoder import Vocoder, VocoderConfig, frame_energy, load


def load_corpus(root: str, hop: int = 256, limit: Optional[int] = None,
                progress: bool = True) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """(waveform (T,) per utterance, log-mel (80, 1 + T // hop) per utterance) of an LJSpeech folder at 16 kHz."""
    corpus = ljspeech(root, sample_rate=16000)
    n = len(corpus) if limit is None else min(limit, len(corpus))
    from tqdm.auto import tqdm
    audios, mels = [], []
    for i in tqdm(range(n), desc="features", unit="utt", disable=not progress):
        x = corpus[i].audio.float()
        audios.append(x)
        mels.append(log_mel(x))
    return audios, mels


def calibrate_prior_scale(audios: Sequence[torch.Tensor], mels: Sequence[torch.Tensor], hop: int = 256,
                          min_rms: float = 1e-3) -> Tuple[float, float]:
    """(c, log-residual std): the c with log rms_j ~ log(c e_j) in least squares over frames whose RMS
    exceeds ``min_rms``, where rms_j is the RMS of the hop samples centred on frame j and e_j the mel's
    frame energy (:func:`polydiff.domains.audio.vocoder.frame_energy`)."""
    logs = []
    for x, m in zip(audios, mels):
        n = m.shape[-1]
        xc = F.pad(x, (hop // 2, max(0, n * hop - x.numel() + hop // 2)))[: n * hop]
        rms = xc.view(n, hop).double().square().mean(1).sqrt()
        e = frame_energy(m).double()
        keep = rms > min_rms
        logs.append(torch.log(rms[keep]) - torch.log(e[keep]))
    d = torch.cat(logs)
    if d.numel() == 0:
        raise ValueError("no frame is louder than the RMS threshold: cannot fit the prior scale")
    return float(d.mean().exp()), float(d.std())


def segments(audios: Sequence[torch.Tensor], mels: Sequence[torch.Tensor], idx: Sequence[int], frames: int,
             hop: int, generator: torch.Generator, floor: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """A batch of random crops: (audio (B, frames * hop), mel (B, n_mels, frames))."""
    xs, ms = [], []
    for i in idx:
        x, m = audios[i], mels[i]
        n = m.shape[-1]
        s = int(torch.randint(max(1, n - frames + 1), (1,), generator=generator))
        mc = m[:, s: s + frames]
        xc = x[s * hop: (s + frames) * hop]
        if mc.shape[-1] < frames:
            mc = F.pad(mc, (0, frames - mc.shape[-1]), value=floor)
        if xc.numel() < frames * hop:
            xc = F.pad(xc, (0, frames * hop - xc.numel()))
        xs.append(xc)
        ms.append(mc)
    return torch.stack(xs), torch.stack(ms)


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (also read by ``polydiff train`` configs)."""
    return training_parser(__doc__, model="VocoderConfig", minutes=40.0, batch=4, lr=1e-3, warmup=100, ema=0.995)


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    torch.set_num_threads(a.threads)
    t_start = time.time()
    overrides = read_overrides(a.config)
    init = load(a.init) if a.init else None
    torch.manual_seed(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    say = open_log(out, a.quiet)

    hop = VocoderConfig().hop_length if init is None else init.config.hop_length
    audios, mels = load_corpus(a.corpus, hop, a.limit, progress=not a.quiet)
    seconds = sum(x.numel() for x in audios) / 16000
    say(f"corpus {a.corpus}: {len(audios)} utterances, {seconds / 60:.1f} min of audio; "
        f"features in {time.time() - t_start:.0f} s")
    if init is not None:
        cfg = init.config
    else:
        if "prior_scale" not in overrides:
            c, resid = calibrate_prior_scale(audios, mels, hop)
            overrides["prior_scale"] = round(c, 4)
            say(f"prior scale fitted: {c:.4f} (log-residual std {resid:.3f})")
        cfg = VocoderConfig.from_dict({**VocoderConfig().__dict__, **overrides})
    model = Vocoder(cfg)
    if init is not None:
        model.load_state_dict(init.state_dict())
        say(f"initialised from {a.init}")
    say(f"model: {sum(q.numel() for q in model.parameters()) / 1e6:.3f} M parameters; config "
        f"{json.dumps({k: v for k, v in cfg.__dict__.items()})}")
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    floor = math.log(cfg.mel_config.floor)

    def losses(g: torch.Generator) -> Dict[str, torch.Tensor]:
        idx = torch.randint(len(audios), (a.batch,), generator=g).tolist()
        x, m = segments(audios, mels, idx, cfg.segment_frames, cfg.hop_length, g, floor)
        loss = model.loss(x, m, generator=g)
        return {"total": loss, "loss": loss}

    fit(model, opt, losses, a, out, say, t_start, "vocoder", progress={"segment_frames": cfg.segment_frames})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
