"""Vocoder benchmark: the diffusion vocoder (DiffWave + PriorGrad) against Griffin-Lim, on held-out sentences.

    python benchmarks/vocoder.py --quick      # 5 sentences, one step count (a smoke run)
    python benchmarks/vocoder.py              # the 50 first held-out test sentences

For each of the ``--n`` first held-out test sentences (``corpus.sentences("test")``) it takes flite's rms
audio (from the LJSpeech folder ``--flite-dir``, else synthesised with flite), computes its log-mel
(16 kHz, hop 256, 80 bands) and vocodes it back with

  (b) Griffin-Lim, ``--gl-iters`` iterations (``features.griffin_lim``, what ``polydiff speak`` uses);
  (c) the diffusion vocoder (``vocoder.pretrained("rms")`` or ``--model-dir``) at each of ``--steps``
      step counts of ``--solver`` on the ``logsnr`` grid, seed = sentence index; extra rows with
      ``--variants solver:steps,...`` (e.g. the deterministic ``dpmpp_2m`` beside ancestral ``ddpm``);

and scores each with pocketsphinx (open vocabulary, shipped en-us models: corpus WER and CER against the
text) and MCD (DTW-aligned mel-cepstral distortion, dB) against flite's audio (a), whose own WER is the
floor. The real-time factor (vocoding compute seconds per second of audio, mel given) is measured on the
first ``--rtf-n`` sentences with 1 torch thread; the load average is printed beside it because the
machine may be shared. ``--out`` keeps a few WAVs and ``results.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from polydiff.domains.audio import corpus as C
from polydiff.domains.audio import io as aio
from polydiff.domains.audio.features import griffin_lim, log_mel
from polydiff.domains.audio.metrics import Recognizer
from polydiff.domains.audio.vocoder import Vocoder, load, pretrained

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speech import RATE, flite_audio, score  # noqa: E402  (one flite reader and scorer for both benchmarks)


def rtf(fn: Callable[[torch.Tensor, int], torch.Tensor], mels: Sequence[torch.Tensor]) -> float:
    """Compute seconds per second of audio of fn(mel, index) over the mels, after one warm-up call."""
    fn(mels[0], 0)
    t0, samples = time.perf_counter(), 0
    for i, m in enumerate(mels):
        samples += fn(m, i).numel()
    return (time.perf_counter() - t0) / (samples / RATE)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="5 sentences, the first step count, RTF on 2 sentences")
    p.add_argument("--n", type=int, default=50, help="held-out test sentences to use (default 50, max 60)")
    p.add_argument("--model-dir", default=None, help="a trained vocoder folder (default: the shipped rms vocoder)")
    p.add_argument("--flite-dir", default="/tmp/speech/rms-test", help="LJSpeech folder with flite's test audio")
    p.add_argument("--steps", default="3,6,12", help="diffusion vocoder step counts")
    p.add_argument("--solver", default="ddpm")
    p.add_argument("--variants", default="", help="extra diffusion rows solver:steps, e.g. 'dpmpp_2m:6'")
    p.add_argument("--grid", default="logsnr")
    p.add_argument("--gl-iters", type=int, default=32)
    p.add_argument("--rtf-n", type=int, default=10, help="sentences for the real-time factor")
    p.add_argument("--out", default="benchmarks/out/vocoder")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    n = 5 if a.quick else a.n
    if not 1 <= n <= 60:
        raise ValueError(f"--n must be in [1, 60], got {n}")
    steps = [int(s) for s in a.steps.split(",") if s][: 1 if a.quick else None]
    sentences = C.sentences("test")[:n]
    model: Vocoder = load(a.model_dir) if a.model_dir else pretrained("rms")
    rec = Recognizer()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    print(f"{n} held-out sentences; vocoder {a.model_dir or 'pretrained(rms)'}; pocketsphinx open vocabulary")
    flite = flite_audio(sentences, a.flite_dir)
    mels = [log_mel(x) for x in flite]
    rows = [score("(a) flite rms (reference)", flite, sentences, rec)]

    def gl(m: torch.Tensor, i: int) -> torch.Tensor:
        return griffin_lim(m, n_iter=a.gl_iters)

    def diffusion(k: int, solver: str) -> Callable[[torch.Tensor, int], torch.Tensor]:
        return lambda m, i: model.vocode(m, steps=k, seed=i, solver=solver, grid=a.grid)

    runs = [(a.solver, k) for k in steps]
    runs += [(v.split(":")[0], int(v.split(":")[1])) for v in a.variants.split(",") if v and not a.quick]
    systems = [(f"(b) Griffin-Lim {a.gl_iters}", gl)]
    systems += [(f"(c) diffusion vocoder {solver} {k} steps", diffusion(k, solver)) for solver, k in runs]
    audio: Dict[str, List[torch.Tensor]] = {}
    for name, fn in systems:
        t0 = time.perf_counter()
        audio[name] = [fn(m, i)[: x.numel()] for i, (m, x) in enumerate(zip(mels, flite))]
        print(f"  ({name}: {time.perf_counter() - t0:.1f} s for {sum(x.numel() for x in flite) / RATE:.1f} s "
              f"of audio, load average {os.getloadavg()[0]:.1f})", flush=True)
        rows.append(score(name, audio[name], sentences, rec, flite))
    for i in range(min(3, n)):
        aio.write(out / f"{i:02d}-flite.wav", flite[i], RATE)
        for k, (name, _) in enumerate(systems):
            aio.write(out / f"{i:02d}-{k}-{name.split()[1].lower()}.wav", audio[name][i], RATE)
    rtf_mels = mels[: 2 if a.quick else a.rtf_n]
    for row, (name, fn) in zip(rows[1:], systems):
        load_avg = os.getloadavg()[0]
        row["rtf_1_thread"], row["load_average"] = rtf(fn, rtf_mels), load_avg
        print(f"  RTF {name}, 1 thread: {row['rtf_1_thread']:.3f}  (load average {load_avg:.1f})", flush=True)
    print("\n| vocoder (input: log-mel of flite's audio) | WER % | CER % | MCD dB | RTF, 1 thread |\n|---|---|---|---|---|")
    for r in rows:
        m = f"{r['mcd']:.2f}" if "mcd" in r else "-"
        f = f"{r['rtf_1_thread']:.3f}" if "rtf_1_thread" in r else "-"
        print(f"| {r['name']} | {100 * r['wer']:.1f} | {100 * r['cer']:.1f} | {m} | {f} |")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    (out / "results.json").write_text(json.dumps({"n": n, "rows": rows, "args": vars(a)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
