"""Speech task commands for the ``polydiff`` CLI.

    polydiff data speech --voice rms --n 2000 --out DIR [--seed 0] [--split train|valid|test]
    polydiff evaluate speech DIR [--limit N]      # pocketsphinx WER/CER of a corpus against its text

    polydiff speak TEXT --out FILE.wav [--steps 10] [--seed 0] [--temperature T] [--solver dpmpp_2m] [--grid logsnr] [--mean-only]
    polydiff enhance IN.wav --out OUT.wav [--steps N] [--seed S] [--method sgmse|wiener|unsupervised]

Heavy imports happen inside the handlers, so ``polydiff --help`` stays fast.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable, Dict


def _data_speech(args: argparse.Namespace) -> int:
    import torch
    from polydiff.domains.audio.corpus import build_corpus
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    root = build_corpus(args.out, voice=args.voice, n=args.n, seed=args.seed, split=args.split,
                        progress=not args.quiet)
    n = sum(1 for line in (root / "metadata.csv").read_text().splitlines() if line.strip())
    print(f"wrote {n} utterances ({args.split}, voice {args.voice}) to {root} in {time.perf_counter() - t0:.1f} s")
    return 0


def _evaluate_speech(args: argparse.Namespace) -> int:
    import torch
    from polydiff.domains.audio.corpus import ljspeech
    from polydiff.domains.audio.metrics import Recognizer, error_rates
    torch.set_num_threads(1)
    corpus = ljspeech(args.corpus, sample_rate=16000)
    n = len(corpus) if args.limit is None else min(args.limit, len(corpus))
    if n < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    rec = Recognizer()
    hyps, refs, audio_s, asr_s, cpu_s = [], [], 0.0, 0.0, 0.0
    from tqdm.auto import tqdm
    for i in tqdm(range(n), desc="pocketsphinx", unit="utt", disable=args.quiet):
        u = corpus[i]
        t0, c0 = time.perf_counter(), time.process_time()
        hyps.append(rec(u.audio, u.sample_rate))
        asr_s += time.perf_counter() - t0
        cpu_s += time.process_time() - c0
        audio_s += u.audio.numel() / u.sample_rate
        refs.append(u.text)
    r = error_rates(refs, hyps)
    print(f"{n} utterances, {audio_s:.1f} s of audio: WER {100 * r['wer']:.1f}% ({r['word_errors']}/{r['words']}), "
          f"CER {100 * r['cer']:.1f}% ({r['char_errors']}/{r['chars']}); pocketsphinx {asr_s:.1f} s wall, "
          f"{cpu_s:.1f} s CPU ({asr_s / audio_s:.3f} s wall, {cpu_s / audio_s:.3f} s CPU per second of audio)")
    if args.show:
        for ref, hyp in zip(refs, hyps):
            print(f"REF: {ref}\nHYP: {hyp}\n")
    return 0


def _set_threads(threads: int) -> None:
    """One torch thread by default: real time on one core, and no oversubscription on a shared CPU."""
    import torch
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def _speak(args: argparse.Namespace) -> int:
    from polydiff.domains.audio import io as aio
    from polydiff.domains.audio.tts import pretrained
    _set_threads(args.threads)
    if not str(args.out).lower().endswith(".wav"):
        raise ValueError(f"--out must be a .wav file, got {args.out!r}")
    from polydiff.domains.audio.text import cmudict
    t_load = time.perf_counter()
    model = pretrained("rms")
    cmudict()                      # parsed once per process (~3 s): kept out of the real-time factor
    t_load = time.perf_counter() - t_load
    t0 = time.perf_counter()
    wav, rate = model.synthesize(args.text, steps=args.steps, temperature=args.temperature, solver=args.solver,
                                 grid=args.grid, seed=args.seed, length_scale=args.length_scale, mean_only=args.mean_only)
    elapsed = time.perf_counter() - t0
    aio.write(args.out, wav, rate)
    seconds = wav.numel() / rate
    what = "encoder mean only" if args.mean_only else f"{args.steps} {args.solver} steps, {args.grid} grid"
    print(f"wrote {args.out}: {seconds:.2f} s of 16 kHz mono audio ({what}) in {elapsed:.2f} s, "
          f"real-time factor {elapsed / seconds:.3f} (model and dictionary loaded in {t_load:.1f} s)")
    return 0


def _enhance(args: argparse.Namespace) -> int:
    from polydiff.domains.audio import enhance as E
    from polydiff.domains.audio import io as aio
    _set_threads(args.threads)
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    x, rate = aio.read(args.input, allow_clipped=True)
    t0 = time.perf_counter()
    out = E.enhance(x, rate, steps=args.steps, seed=args.seed, method=args.method, model=args.model)
    dt = time.perf_counter() - t0
    peak = float(out.abs().max())
    if peak > 1.0:                      # keep the file from clipping
        out = out / peak
    import soundfile as sf
    sf.write(args.out, out.numpy(), rate, subtype="PCM_16")
    if not args.quiet:
        print(f"enhanced {args.input} ({x.numel() / rate:.2f} s, {args.method}) -> {args.out} in {dt:.1f} s")
    return 0


def add_commands(verbs: Dict[str, Callable[..., argparse.ArgumentParser]]) -> None:
    """Add the speech commands to the ``polydiff`` CLI (see polydiff.tasks.cli.add_domain_commands)."""
    from polydiff.domains.audio.corpus import VOICES
    p = verbs["data"]("speech", help="synthesise an LJSpeech-format speech corpus with flite (offline)",
                      description="Synthesise shipped sentences (WordNet 3.0 usage examples) with Debian's flite "
                                  "into DIR/wavs/*.wav (16 kHz mono) and DIR/metadata.csv (id|text|normalized).")
    p.add_argument("--voice", default="rms", choices=sorted(VOICES), help="flite voice (default rms)")
    p.add_argument("--n", type=int, default=2000, help="number of sentences (default 2000; valid split: up to 200, test split: up to 60)")
    p.add_argument("--seed", type=int, default=0, help="which training sentences are drawn (default 0)")
    p.add_argument("--split", default="train", choices=["train", "valid", "test"],
                   help="train sentences, the 200 validation sentences (never in a training corpus), or the 60 held-out test sentences (with words absent from train)")
    p.add_argument("--out", required=True, help="output folder (new or empty; an interrupted build resumes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_data_speech)

    e = verbs["evaluate"]("speech", help="word/character error rates of a speech corpus under pocketsphinx",
                          description="Transcribe every WAV of an LJSpeech-format folder with pocketsphinx "
                                      "(shipped en-us acoustic and language models) and score it against "
                                      "metadata.csv.")
    e.add_argument("corpus", help="an LJSpeech-format folder (wavs/ and metadata.csv)")
    e.add_argument("--limit", type=int, default=None, help="only the first N utterances")
    e.add_argument("--show", action="store_true", help="print each reference and hypothesis")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_evaluate_speech)

    # ---- speak: `polydiff speak TEXT --out FILE.wav [--steps N] [--seed S]` (Grad-TTS, domains/audio/tts.py)
    from polydiff.core.solvers import solvers as _solver_table
    s = verbs["speak"]("speak", help="text to speech with the shipped Grad-TTS model (16 kHz mono WAV)",
                       description="Speak TEXT with the Grad-TTS model trained on flite's rms voice: text encoder "
                                   "and durations, a diffusion mel decoder on the core's mean-reverting path, and "
                                   "Griffin-Lim. Writes a 16 kHz mono 16-bit WAV file and prints its duration and "
                                   "the real-time factor (compute seconds per second of audio).")
    s.add_argument("text", help="the text to speak (English; numbers and common abbreviations are spelled out)")
    s.add_argument("--out", required=True, help="output WAV file (16 kHz, mono, 16-bit PCM)")
    s.add_argument("--steps", type=int, default=10, help="diffusion solver steps (default 10)")
    s.add_argument("--seed", type=int, default=0, help="seed of the starting noise (default 0)")
    s.add_argument("--temperature", type=float, default=None,
                   help="Grad-TTS temperature: the start noise is divided by it (default: the shipped model's, "
                        "chosen on validation sentences and stored in its config.json; Grad-TTS uses 1.5)")
    s.add_argument("--solver", default="dpmpp_2m", choices=sorted(n for n in _solver_table() if n != "fitted"),
                   help="core solver for the decoder (default dpmpp_2m: the lowest WER of the solvers tried on validation "
                        "sentences, benchmarks/RESULTS.md; Grad-TTS itself uses euler)")
    from polydiff.core.grids import GRIDS
    s.add_argument("--grid", default="logsnr", choices=list(GRIDS),
                   help="time grid of the solver (default logsnr)")
    s.add_argument("--length-scale", type=float, default=1.0, help="speaking-rate factor on durations (> 1 slower)")
    s.add_argument("--mean-only", action="store_true",
                   help="vocode the encoder mean without diffusion (the ablation; faster, muffled)")
    s.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    s.set_defaults(func=_speak)
    # ---- enhance: `polydiff enhance IN.wav --out OUT.wav` (SGMSE+, Wiener, unsupervised; domains/audio/enhance.py)
    p = verbs["enhance"]("enhance", help="remove noise from speech (SGMSE+ diffusion, or a Wiener baseline)",
                         description="Enhance noisy speech with the shipped SGMSE+-style diffusion model "
                                     "(trained on synthetic 16 kHz speech in white, coloured and babble noise), "
                                     "the unsupervised diffusion-prior route, or the Wiener filter.")
    p.add_argument("input", help="noisy audio file (WAV/FLAC/...; multichannel is averaged to mono)")
    p.add_argument("--out", required=True, help="output WAV (16-bit, at the input's sample rate)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's; 5 Euler steps for rms)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampler")
    p.add_argument("--method", default="sgmse", choices=["sgmse", "wiener", "unsupervised"],
                   help="sgmse (default), wiener (classical baseline), unsupervised (clean prior + noise model)")
    p.add_argument("--model", default="rms", help="shipped model name (default rms)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_enhance)
