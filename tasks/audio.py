"""Speech task commands for the ``polydiff`` CLI.

    polydiff data speech --voice rms --n 2000 --out DIR [--seed 0] [--split train|test]
    polydiff evaluate speech DIR [--limit N]      # pocketsphinx WER/CER of a corpus against its text

``speak`` (text-to-speech) and ``enhance`` (speech enhancement) are added with their models (see
the marked places below). Heavy imports happen inside the handlers, so ``polydiff --help`` stays fast.
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


def add_commands(verbs: Dict[str, Callable[..., argparse.ArgumentParser]]) -> None:
    """Add the speech commands to the ``polydiff`` CLI (see polydiff.tasks.cli.add_domain_commands)."""
    from polydiff.domains.audio.corpus import VOICES
    p = verbs["data"]("speech", help="synthesise an LJSpeech-format speech corpus with flite (offline)",
                      description="Synthesise shipped sentences (WordNet 3.0 usage examples) with Debian's flite "
                                  "into DIR/wavs/*.wav (16 kHz mono) and DIR/metadata.csv (id|text|normalized).")
    p.add_argument("--voice", default="rms", choices=sorted(VOICES), help="flite voice (default rms)")
    p.add_argument("--n", type=int, default=2000, help="number of sentences (default 2000; test split: up to 60)")
    p.add_argument("--seed", type=int, default=0, help="which training sentences are drawn (default 0)")
    p.add_argument("--split", default="train", choices=["train", "test"],
                   help="train sentences, or the 60 held-out test sentences (with words absent from train)")
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

    # ---- speak: `polydiff speak TEXT --out FILE.wav [--steps N] [--seed S]` goes here (added with the TTS model)
    # ---- enhance: `polydiff enhance IN.wav --out OUT.wav` goes here (added with the enhancement model)
