"""Speech corpora: an offline LJSpeech-format corpus synthesised with flite, and the LJSpeech loader.

**Sentences.** ``sentences/train.txt`` (5 000) and ``sentences/test.txt`` (60) ship with the
package. They are usage examples from WordNet 3.0 (Princeton University; WordNet licence,
permissive, notice in ``sentences/WORDNET_LICENSE``), filtered to 6-14 plain words that all occur
in the CMU dictionary, by ``sentences/derive.py``. The test sentences are held out: each holds at
least one word (>= 4 letters) that no training sentence contains (:func:`new_words`). A validation
split of 200 (``sentences("valid")``, for choosing checkpoints and sampler settings without looking
at the test sentences) is drawn from the training list once, by a fixed permutation;
:func:`build_corpus` never puts those in a training corpus.

**Synthesis.** Debian's ``flite`` (``apt-get install flite``) with its voices ``rms``, ``slt``,
``awb`` (16 kHz) and ``kal`` (we use flite's 16 kHz build of it, ``kal16``). Output is 16 kHz
mono PCM-16 WAV.

**Format** (LJSpeech): ``ROOT/wavs/ID.wav`` and ``ROOT/metadata.csv`` with lines
``ID|text|normalized text`` (no header, no quoting). Our third column is
:func:`polydiff.domains.audio.text.normalize` of the text. ``ROOT/corpus.json`` records how the
corpus was made; building again into the same folder resumes (existing WAVs are kept).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Set, Union

import torch

from . import io as aio
from .text import normalize

SAMPLE_RATE = 16000
VOICES = {"rms": "rms", "slt": "slt", "awb": "awb", "kal": "kal16"}
SPLITS = ("train", "valid", "test")
VALID_SIZE = 200
SENTENCE_DIR = Path(__file__).resolve().parent / "sentences"
SENTENCE_SOURCE = "WordNet 3.0 usage examples (Princeton University, WordNet licence)"

PathLike = Union[str, Path]


def _valid_rows() -> List[int]:
    """Rows of ``train.txt`` that form the validation split: the last VALID_SIZE of its seed-0 permutation
    (so a seed-0 training corpus of up to 4 800 sentences, e.g. the shipped models', is unchanged)."""
    order = list(range(len(_read_list("train"))))
    random.Random(0).shuffle(order)
    return order[-VALID_SIZE:]


def _read_list(name: str) -> List[str]:
    lines = (SENTENCE_DIR / f"{name}.txt").read_text(encoding="utf-8").splitlines()
    return [s for s in (line.strip() for line in lines) if s]


def sentences(split: str = "train") -> List[str]:
    """The shipped sentence list of a split: "train" (the 5 000 of ``train.txt``, validation ones included),
    "valid" (200 of those, never drawn into a training corpus) or "test" (60 held out, with new words)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if split == "valid":
        pool = _read_list("train")
        return [pool[i] for i in _valid_rows()]
    return _read_list(split)


def _words(sentence: str) -> Set[str]:
    return {w.strip("'-") for w in re.findall(r"[a-z'\-]+", sentence.lower()) if w.strip("'-")}


def new_words() -> Set[str]:
    """Words of the test sentences that no training sentence contains."""
    train = set().union(*(_words(s) for s in sentences("train")))
    return set().union(*(_words(s) for s in sentences("test"))) - train


def flite_voice(voice: str) -> str:
    """flite's name of one of our voices, with a clear error for unknown ones."""
    if voice not in VOICES:
        raise ValueError(f"unknown voice {voice!r}; valid: {', '.join(VOICES)}")
    return VOICES[voice]


def _flite() -> str:
    exe = shutil.which("flite")
    if exe is None:
        raise ValueError("the 'flite' program is not installed (Debian/Ubuntu: apt-get install flite)")
    return exe


def synthesize_to_file(text: str, path: PathLike, voice: str = "rms") -> Path:
    """Speak ``text`` with flite into a 16 kHz mono WAV file at ``path``; returns the path."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty text: there is nothing to say")
    exe, name = _flite(), flite_voice(voice)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.stem + ".part.wav")
    try:
        r = subprocess.run([exe, "-voice", name, "-t", text, "-o", str(tmp)], capture_output=True, text=True,
                           timeout=120)
    except subprocess.TimeoutExpired:
        raise ValueError(f"flite timed out on {text[:60]!r}") from None
    if r.returncode != 0 or not tmp.is_file():
        raise ValueError(f"flite failed on {text[:60]!r} (exit {r.returncode}): {r.stderr.strip()[:300]}")
    x, rate = aio.read(tmp, allow_clipped=True)
    if rate != SAMPLE_RATE:
        aio.write(tmp, aio.resample(x, rate, SAMPLE_RATE).clamp(-1.0, 1.0), SAMPLE_RATE)
    os.replace(tmp, p)
    return p


def synthesize(text: str, voice: str = "rms") -> torch.Tensor:
    """flite's speech for ``text`` as a float32 waveform (T,) at 16 kHz."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        x, _ = aio.read(synthesize_to_file(text, Path(d) / "x.wav", voice), allow_clipped=True)
    return x


def build_corpus(out_dir: PathLike, voice: str = "rms", n: int = 2000, seed: int = 0, *, split: str = "train",
                 progress: bool = True) -> Path:
    """Synthesise an LJSpeech-format corpus of ``n`` shipped sentences into ``out_dir``; returns it.

    ``split="train"`` draws n of the 4 800 training sentences outside the validation split (a permutation
    seeded by ``seed``); ``split="valid"`` / ``"test"`` write the first n validation / held-out sentences
    (all of them when n is larger, in their order).
    Building into a folder that already holds the same corpus resumes it; a different corpus there
    is a ValueError."""
    flite_voice(voice)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    pool = sentences(split)
    if split == "train":
        held = set(_valid_rows())
        usable = len(pool) - len(held)
        if n > usable:
            raise ValueError(f"n = {n} is more than the {usable} shipped training sentences outside the "
                             f"validation split")
        order = list(range(len(pool)))
        random.Random(seed).shuffle(order)
        chosen = [pool[i] for i in order if i not in held][:n]
    else:
        chosen = pool[:n]
    _flite()
    root = Path(out_dir)
    spec = {"format": "ljspeech", "synthesizer": "flite", "voice": voice, "split": split, "n": len(chosen),
            "seed": seed if split == "train" else None, "sample_rate": SAMPLE_RATE, "sentences": SENTENCE_SOURCE}
    manifest = root / "corpus.json"
    if manifest.is_file():
        old = json.loads(manifest.read_text())
        if old != spec:
            raise ValueError(f"{root} already holds a different corpus ({old}); choose another --out")
    elif root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} is not empty and holds no corpus.json; choose an empty or new folder")
    (root / "wavs").mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(spec, indent=1) + "\n")
    ids = [f"{voice}-{split}-{i + 1:05d}" for i in range(len(chosen))]
    from tqdm.auto import tqdm
    for uid, sentence in tqdm(list(zip(ids, chosen)), desc=f"flite {voice}", unit="utt", disable=not progress):
        wav = root / "wavs" / f"{uid}.wav"
        if not wav.is_file():
            synthesize_to_file(sentence, wav, voice)
    lines = [f"{uid}|{s}|{normalize(s)}" for uid, s in zip(ids, chosen)]
    tmp = root / "metadata.csv.part"
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, root / "metadata.csv")
    return root


@dataclass
class Utterance:
    """One corpus item: id, raw text, normalised text, waveform (T,) float32 and its sample rate."""
    id: str
    text: str
    normalized: str
    audio: torch.Tensor
    sample_rate: int


class SpeechCorpus(Sequence):
    """An LJSpeech-format folder: ``len()``, indexing (reads and checks the WAV) and iteration."""

    def __init__(self, root: PathLike, sample_rate: Optional[int] = None) -> None:
        self.root = Path(root)
        self.sample_rate = sample_rate
        meta = self.root / "metadata.csv"
        if not meta.is_file():
            raise ValueError(f"{self.root} is not an LJSpeech-format corpus: no metadata.csv")
        self.ids: List[str] = []
        self.texts: List[str] = []
        self.normalized: List[str] = []
        for k, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("|")
            if len(parts) not in (2, 3) or not parts[0] or not parts[1].strip():
                raise ValueError(f"{meta}:{k}: expected 'id|text|normalized text', got {line[:80]!r}")
            self.ids.append(parts[0])
            self.texts.append(parts[1])
            self.normalized.append(parts[2] if len(parts) == 3 and parts[2].strip() else parts[1])
        if not self.ids:
            raise ValueError(f"{meta} lists no utterances")
        missing = [i for i in self.ids if not (self.root / "wavs" / f"{i}.wav").is_file()]
        if missing:
            raise ValueError(f"{len(missing)} WAV files listed in {meta} are missing from {self.root / 'wavs'}, "
                             f"e.g. {missing[:3]}")

    def path(self, i: int) -> Path:
        """The WAV file of item ``i``."""
        return self.root / "wavs" / f"{self.ids[i]}.wav"

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Utterance:  # type: ignore[override]
        if isinstance(i, slice):
            raise ValueError("index a corpus with an int")
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a corpus of {len(self)}")
        i %= len(self)
        audio, rate = aio.read(self.path(i), sample_rate=self.sample_rate)
        return Utterance(self.ids[i], self.texts[i], self.normalized[i], audio, rate)

    def __iter__(self) -> Iterator[Utterance]:
        return (self[i] for i in range(len(self)))


def ljspeech(root: PathLike, sample_rate: Optional[int] = None) -> SpeechCorpus:
    """Open an LJSpeech-format corpus (the real LJSpeech-1.1, 22.05 kHz, or one made by
    :func:`build_corpus`); with ``sample_rate`` every WAV is resampled to it on reading."""
    if sample_rate is not None:
        aio._check_rate(sample_rate, "requested sample rate")
    return SpeechCorpus(root, sample_rate)
