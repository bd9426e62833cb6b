"""Text-to-speech benchmark: the shipped Grad-TTS model against flite, on held-out sentences.

    python benchmarks/speech.py --quick        # 5 sentences, a smoke run (about a minute)
    python benchmarks/speech.py                # the 50 first held-out test sentences (the issue's bar)

For each of the ``--n`` first held-out test sentences (``corpus.sentences("test")``, each with a word no
training sentence has; ``--split valid``: the validation sentences, for choosing checkpoints and
settings) it makes:

  (a) flite's rms audio (read from ``--flite-dir`` if that LJSpeech folder holds the sentence, else
      synthesised with flite);
  (b) flite -> log-mel -> Griffin-Lim (the vocoder ceiling; one row per ``--gl-iters`` value);
  (c) our TTS: ``tts.pretrained("rms")``, ``--steps`` steps (default 10) of ``--solver`` at temperature
      ``--temperature``, seed = sentence index; extra rows with ``--variants solver:steps,...``;
  (d) the encoder mean alone, vocoded (no diffusion; the Grad-TTS ablation).

and scores each with pocketsphinx (open vocabulary, shipped en-us models): corpus WER and CER against
the sentence text, and MCD (DTW-aligned mel-cepstral distortion, dB) against (a). The real-time factor
of (c) (mel + Griffin-Lim, compute seconds per second of audio) is measured on the first ``--rtf-n``
sentences with 1 and with 2 torch threads; the load average is printed beside it because the
machine may be shared. The bars of issue 7: WER(c) <= 1.5 x WER(a) and well below WER(d); RTF < 1
with 2 threads. ``--out`` keeps a few WAVs and ``results.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from polydiff.domains.audio import corpus as C
from polydiff.domains.audio import io as aio
from polydiff.domains.audio.features import griffin_lim, log_mel
from polydiff.domains.audio.metrics import Recognizer, error_rates, mcd
from polydiff.domains.audio.tts import GradTTS, load, pretrained

RATE = 16000


def flite_audio(sentences: Sequence[str], flite_dir: Optional[str]) -> List[torch.Tensor]:
    """flite rms waveforms of the sentences: from an LJSpeech folder when it has them, else synthesised."""
    known: Dict[str, Path] = {}
    if flite_dir and (Path(flite_dir) / "metadata.csv").is_file():
        corpus = C.ljspeech(flite_dir)
        known = {t: corpus.path(i) for i, t in enumerate(corpus.texts)}
    out = []
    for s in sentences:
        if s in known:
            x, rate = aio.read(known[s], sample_rate=RATE, allow_clipped=True)
        else:
            x = C.synthesize(s, "rms")
        out.append(x)
    return out


def score(name: str, audios: Sequence[torch.Tensor], sentences: Sequence[str], rec: Recognizer,
          refs: Optional[Sequence[torch.Tensor]] = None) -> Dict[str, object]:
    hyps = [rec(a, RATE) for a in audios]
    r = error_rates(list(sentences), hyps)
    row: Dict[str, object] = {"name": name, "wer": r["wer"], "cer": r["cer"], "word_errors": r["word_errors"],
                              "words": r["words"], "seconds": sum(a.numel() for a in audios) / RATE, "hyps": hyps}
    if refs is not None:
        row["mcd"] = sum(mcd(f, a, RATE) for f, a in zip(refs, audios)) / len(audios)
    print(f"  {name:<34} WER {100 * r['wer']:5.1f}%  CER {100 * r['cer']:5.1f}%"
          + (f"  MCD {row['mcd']:.2f} dB" if "mcd" in row else ""), flush=True)
    return row


def tts_audio(model: GradTTS, sentences: Sequence[str], **kw) -> List[torch.Tensor]:
    return [model.synthesize(s, seed=i, **kw)[0] for i, s in enumerate(sentences)]


def rtf(model: GradTTS, sentences: Sequence[str], threads: int, **kw) -> float:
    """Compute seconds per second of audio for mel + vocoder, with ``threads`` torch threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model.synthesize(sentences[0], **kw)                       # warm-up
        t0, audio = time.perf_counter(), 0
        for i, s in enumerate(sentences):
            audio += model.synthesize(s, seed=i, **kw)[0].numel()
        return (time.perf_counter() - t0) / (audio / RATE)
    finally:
        torch.set_num_threads(old)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="5 sentences, one Griffin-Lim setting, RTF on 2 sentences")
    p.add_argument("--n", type=int, default=50, help="sentences to use (default 50; max 60 test, 200 valid)")
    p.add_argument("--split", default="test", choices=["test", "valid"],
                   help="test: the held-out sentences (the issue's bar); valid: the validation split, for "
                        "choosing checkpoints and settings without looking at the test sentences")
    p.add_argument("--model-dir", default=None, help="a trained model folder (default: the shipped rms model)")
    p.add_argument("--flite-dir", default="/tmp/speech/rms-test", help="LJSpeech folder with flite's test audio")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--solver", default="dpmpp_2m", help="solver of row (c) (default: speak's, dpmpp_2m)")
    p.add_argument("--grid", default="logsnr", help="time grid of row (c) (default: speak's, logsnr)")
    p.add_argument("--temperature", type=float, default=None,
                   help="temperature of the TTS rows (default: the model's, config.temperature, as speak)")
    p.add_argument("--gl-iters", default="32,64", help="Griffin-Lim iteration counts for the ceiling rows")
    p.add_argument("--variants", default="", help="extra TTS rows solver:steps[:grid], e.g. 'dpmpp_2m:10:logsnr,euler:4'")
    p.add_argument("--rtf-n", type=int, default=10, help="sentences for the real-time factor")
    p.add_argument("--out", default="benchmarks/out/speech-tts")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    n = 5 if a.quick else a.n
    most = len(C.sentences(a.split))
    if not 1 <= n <= most:
        raise ValueError(f"--n must be in [1, {most}] for the {a.split} split, got {n}")
    gl_iters = [int(v) for v in a.gl_iters.split(",") if v][: 1 if a.quick else None]
    sentences = C.sentences(a.split)[:n]
    model = load(a.model_dir) if a.model_dir else pretrained("rms")
    if a.temperature is None:
        a.temperature = model.config.temperature
    rec = Recognizer()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    print(f"{n} {a.split} sentences; model {a.model_dir or 'pretrained(rms)'}; pocketsphinx open vocabulary")
    rows = []
    flite = flite_audio(sentences, a.flite_dir)
    rows.append(score("(a) flite rms", flite, sentences, rec))
    for k in gl_iters:
        gl = [griffin_lim(log_mel(x), n_iter=k) for x in flite]
        rows.append(score(f"(b) flite -> mel -> Griffin-Lim {k}", gl, sentences, rec, flite))
    kw = dict(steps=a.steps, solver=a.solver, temperature=a.temperature, grid=a.grid)
    t0 = time.perf_counter()
    ours = tts_audio(model, sentences, **kw)
    print(f"  (synthesis of (c): {time.perf_counter() - t0:.1f} s for {sum(x.numel() for x in ours) / RATE:.1f} s "
          f"of audio, 1 thread, load average {os.getloadavg()[0]:.1f})")
    rows.append(score(f"(c) Grad-TTS {a.solver} {a.steps} steps, {a.grid} grid, T={a.temperature}", ours, sentences,
                      rec, flite))
    for v in [v for v in a.variants.split(",") if v]:
        solver, steps, *grid = v.split(":")
        g = grid[0] if grid else "uniform"
        audio = tts_audio(model, sentences, steps=int(steps), solver=solver, temperature=a.temperature, grid=g)
        rows.append(score(f"(c') Grad-TTS {solver} {steps} steps, {g} grid", audio, sentences, rec, flite))
    mean = tts_audio(model, sentences, mean_only=True)
    rows.append(score("(d) encoder mean only (no diffusion)", mean, sentences, rec, flite))
    for i in range(min(3, n)):
        aio.write(out / f"{i:02d}-flite.wav", flite[i], RATE)
        aio.write(out / f"{i:02d}-tts.wav", ours[i], RATE)
        aio.write(out / f"{i:02d}-mean.wav", mean[i], RATE)
    rtf_sent = sentences[: 2 if a.quick else a.rtf_n]
    rtfs = {}
    for th in (1, 2):
        load_avg = os.getloadavg()[0]
        rtfs[th] = {"rtf": rtf(model, rtf_sent, th, **kw), "load_average": load_avg}
        print(f"  RTF ({a.steps} {a.solver} steps + Griffin-Lim {model.config.griffin_lim_iters}), {th} thread(s): "
              f"{rtfs[th]['rtf']:.3f}  (load average {load_avg:.1f})", flush=True)
    print("\n| system | WER % | CER % | MCD dB |\n|---|---|---|---|")
    for r in rows:
        m = f"{r['mcd']:.2f}" if "mcd" in r else "-"
        print(f"| {r['name']} | {100 * r['wer']:.1f} | {100 * r['cer']:.1f} | {m} |")
    wa, wc = rows[0]["wer"], rows[len(gl_iters) + 1]["wer"]
    wd = rows[-1]["wer"]
    print(f"\nbars: WER(c) {100 * wc:.1f}% <= 1.5 x WER(a) = {150 * wa:.1f}%: {'met' if wc <= 1.5 * wa else 'NOT met'}; "
          f"WER(d) {100 * wd:.1f}%; RTF 2 threads {rtfs[2]['rtf']:.3f} < 1: {'met' if rtfs[2]['rtf'] < 1 else 'NOT met'}")
    print(f"total {time.perf_counter() - t_all:.0f} s")
    (out / "results.json").write_text(json.dumps({"n": n, "rows": rows, "rtf": rtfs, "args": vars(a)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
