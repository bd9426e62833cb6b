"""Offline speech evaluators: ASR error rates, mel-cepstral distortion, F0 error, PESQ, ESTOI, SI-SDR, RTF.

* **WER / CER** (:func:`error_rates`): word and character edit distances (Levenshtein, written
  here) summed over a set of utterances and divided by the reference length. Both sides are first
  normalised by :func:`polydiff.domains.audio.text.normalize`; punctuation is dropped and hyphens
  split words. CER counts characters of the words joined by single spaces (spaces included).
* **Recognizer**: pocketsphinx 5 (Huggins-Daines et al., ICASSP 2006) with the models shipped in its
  wheel: the en-us acoustic model, the open en-us trigram language model and the CMU dictionary;
  or, given a vocabulary, a JSGF word loop over it (closed vocabulary). Audio is resampled to 16 kHz.
* **MCD** (:func:`mcd`): mel-cepstral distortion (Kubichek, 1993) with DTW alignment:
  ``(10 / ln 10) * sqrt(2 * sum_{m=1..M} (c_m - c'_m)^2)`` averaged over the DTW path, c0
  (energy) excluded by default. The mel-cepstrum is the cosine transform of the log amplitude
  spectrum on a frequency axis warped by the first-order all-pass with alpha (0.42 at 16 kHz, as in
  SPTK), order 24, from 1024-point Hann frames with hop 256. This is the frequency-warped cepstrum,
  not SPTK's iterative ``mcep`` estimate, so values are close to but not identical with ESPnet's.
* **F0 RMSE** (:func:`f0_rmse`): librosa's pYIN (Mauch & Dixon, ICASSP 2014) on both signals
  (65-400 Hz), frames paired along the DTW path of their mel-cepstra; RMSE in Hz over pairs voiced in
  both, and the voicing-decision error rate.
* **PESQ** (:func:`pesq`): ITU-T P.862.2 wide-band via the ``pesq`` package, at 16 kHz (other
  rates are resampled to 16 kHz first). **ESTOI** (:func:`estoi`): Jensen & Taal (2016) via ``pystoi``
  (``extended=True``). **SI-SDR** (:func:`si_sdr`): Le Roux, Wisdom, Erdogan & Hershey, "SDR -
  half-baked or well done?" (ICASSP 2019), with both signals made zero-mean as that paper specifies.
* **RTF** (:func:`real_time_factor`, :func:`measure_rtf`): compute seconds per second of audio.
"""
from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import io as aio
from .text import normalize

ASR_RATE = 16000
MCEP_ALPHA = {8000: 0.31, 16000: 0.42, 22050: 0.45, 24000: 0.46, 44100: 0.53, 48000: 0.55}
_DB = 10.0 / math.log(10.0)


# ---------------------------------------------------------------- edit distances, WER, CER
def edit_distance(ref: Sequence[Any], hyp: Sequence[Any]) -> int:
    """Levenshtein distance: the fewest substitutions, deletions and insertions turning ref into hyp."""
    ref, hyp = list(ref), list(hyp)
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def asr_words(text: str) -> List[str]:
    """The words WER compares: normalised text without punctuation, hyphens splitting words."""
    try:
        norm = normalize(text)
    except ValueError:             # empty or nothing speakable: no words
        return []
    norm = norm.replace("-", " ")
    return [w.strip("'") for w in "".join(c if c.isalpha() or c in "' " else " " for c in norm).split()
            if w.strip("'")]


def error_rates(refs: Sequence[str], hyps: Sequence[str]) -> Dict[str, Any]:
    """Corpus WER and CER: total edits / total reference length over all pairs (see module notes).

    Returns ``wer``, ``cer``, ``word_errors``, ``words``, ``char_errors``, ``chars``."""
    if isinstance(refs, str) or isinstance(hyps, str):
        raise ValueError("error_rates takes sequences of strings (one per utterance), not a single string")
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ValueError("error_rates needs at least one utterance")
    we = wn = ce = cn = 0
    for k, (r, h) in enumerate(zip(refs, hyps)):
        rw, hw = asr_words(r), asr_words(h)
        if not rw:
            raise ValueError(f"reference {k} ({r[:40]!r}) has no words")
        we += edit_distance(rw, hw)
        wn += len(rw)
        rc, hc = " ".join(rw), " ".join(hw)
        ce += edit_distance(rc, hc)
        cn += len(rc)
    return {"wer": we / wn, "cer": ce / cn, "word_errors": we, "words": wn, "char_errors": ce, "chars": cn}


# ---------------------------------------------------------------- pocketsphinx
def _pcm16(audio: "torch.Tensor | np.ndarray", sample_rate: int) -> bytes:
    x = aio._as_tensor(audio)
    if x.dim() != 1:
        raise ValueError(f"transcription takes mono audio (T,), got shape {tuple(x.shape)}")
    aio.check(x, name="audio to transcribe", allow_silent=True, allow_clipped=True)
    x = aio.resample(x.float(), sample_rate, ASR_RATE)
    return (x.clamp(-1.0, 1.0).numpy() * 32767.0).astype(np.int16).tobytes()


class Recognizer:
    """pocketsphinx speech recogniser with its shipped English models (open vocabulary by default).

    ``vocabulary``: restrict decoding to a loop over these words (a JSGF grammar); every word must
    be in the CMU dictionary. ``rec(audio, sample_rate) -> str``: lowercase words; "" for silence
    (peak below io.SILENCE_PEAK, which is not decoded: the decoder invents words in digital silence)."""

    def __init__(self, vocabulary: Optional[Sequence[str]] = None) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError:
            raise ValueError("ASR metrics need the 'pocketsphinx' package (pip install pocketsphinx)") from None
        self.vocabulary: Optional[List[str]] = None
        grammar = None
        if vocabulary is not None:
            from .text import cmudict
            words = sorted({w for v in vocabulary for w in asr_words(v)})
            if not words:
                raise ValueError("the vocabulary has no words")
            table = cmudict()
            unknown = [w for w in words if w not in table]
            if unknown:
                raise ValueError(f"{len(unknown)} vocabulary words are not in the CMU dictionary: {unknown[:10]}")
            grammar = "#JSGF V1.0;\ngrammar words;\npublic <s> = ( " + " | ".join(words) + " )+ ;\n"
            self.vocabulary = words
        self.decoder = Decoder(samprate=ASR_RATE, loglevel="ERROR")
        if grammar is not None:
            self.decoder.add_jsgf_string("words", grammar)
            self.decoder.activate_search("words")

    def __call__(self, audio: "torch.Tensor | np.ndarray", sample_rate: int) -> str:
        x = aio._as_tensor(audio)
        if x.numel() and x.is_floating_point() and torch.isfinite(x).all() and float(x.abs().max()) < aio.SILENCE_PEAK:
            return ""                 # pocketsphinx hallucinates words in digital silence
        pcm = _pcm16(x, sample_rate)
        d = self.decoder
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""


@functools.lru_cache(maxsize=1)
def _default_recognizer() -> Recognizer:
    return Recognizer()


def transcribe(audio: "torch.Tensor | np.ndarray", sample_rate: int) -> str:
    """pocketsphinx's open-vocabulary transcription of mono audio (a cached :class:`Recognizer`)."""
    return _default_recognizer()(audio, sample_rate)


def asr_error_rates(audios: Sequence["torch.Tensor"], texts: Sequence[str], sample_rate: int,
                    recognizer: Optional[Recognizer] = None) -> Dict[str, Any]:
    """Transcribe each waveform and score against ``texts``: :func:`error_rates` plus ``hyps``."""
    if len(audios) != len(texts):
        raise ValueError(f"{len(audios)} waveforms but {len(texts)} texts")
    rec = recognizer or _default_recognizer()
    hyps = [rec(a, sample_rate) for a in audios]
    return {**error_rates(texts, hyps), "hyps": hyps}


# ---------------------------------------------------------------- mel-cepstra, DTW, MCD, F0
def _frames(audio: "torch.Tensor | np.ndarray", n_fft: int, hop: int) -> np.ndarray:
    x = aio._as_tensor(audio)
    if x.dim() != 1 or x.numel() <= n_fft // 2:
        raise ValueError(f"need mono audio (T,) longer than {n_fft // 2} samples, got shape {tuple(x.shape)}")
    aio.check(x, name="audio", allow_silent=True, allow_clipped=True)
    x = x.double().numpy()
    x = np.pad(x, n_fft // 2, mode="reflect")
    n = 1 + (len(x) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n)[:, None]
    return x[idx] * np.hanning(n_fft + 1)[:-1]


def warp_frequency(omega: np.ndarray, alpha: float) -> np.ndarray:
    """Phase response of the first-order all-pass (z^-1 - alpha) / (1 - alpha z^-1): the mel warping
    ``omega + 2 atan(alpha sin omega / (1 - alpha cos omega))``; ``-alpha`` gives the inverse map."""
    return omega + 2.0 * np.arctan2(alpha * np.sin(omega), 1.0 - alpha * np.cos(omega))


def cepstrum_from_log_spectrum(log_amp: np.ndarray, order: int, alpha: float = 0.0) -> np.ndarray:
    """(Mel-)cepstrum c_0..c_order of log amplitude spectra (..., K + 1) sampled at omega = pi k / K.

    With alpha 0 this is the real cepstrum (log|X| = c_0 + 2 sum c_m cos(m omega)); with alpha the
    spectrum is read on the all-pass-warped axis: log|X(omega)| = c_0 + 2 sum c_m cos(m warp(omega))."""
    log_amp = np.asarray(log_amp, dtype=np.float64)
    k = log_amp.shape[-1] - 1
    if k < 1 or order < 0 or order > k:
        raise ValueError(f"need 0 <= order <= {k} for {k + 1} spectrum points, got order {order}")
    grid = np.pi * np.arange(k + 1) / k
    if alpha != 0.0:
        at = warp_frequency(grid, -alpha)            # where each uniform warped frequency falls on the FFT axis
        pos = np.clip(at / np.pi * k, 0, k)
        lo = np.minimum(np.floor(pos).astype(int), k - 1)
        w = pos - lo
        log_amp = log_amp[..., lo] * (1 - w) + log_amp[..., lo + 1] * w
    weights = np.ones(k + 1)
    weights[[0, -1]] = 0.5
    basis = np.cos(np.arange(order + 1)[:, None] * grid[None, :]) * weights / k      # (order + 1, K + 1)
    return log_amp @ basis.T


def mel_cepstrum(audio: "torch.Tensor | np.ndarray", sample_rate: int, *, order: int = 24,
                 alpha: Optional[float] = None, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """Frame-wise mel-cepstra (frames, order + 1) of mono audio (see the module notes)."""
    if alpha is None:
        if sample_rate not in MCEP_ALPHA:
            raise ValueError(f"no default all-pass alpha for {sample_rate} Hz; valid rates: "
                             f"{sorted(MCEP_ALPHA)} (or pass alpha)")
        alpha = MCEP_ALPHA[sample_rate]
    frames = _frames(audio, n_fft, hop)
    amp = np.abs(np.fft.rfft(frames, axis=-1))
    return cepstrum_from_log_spectrum(np.log(np.maximum(amp, 1e-5)), order, alpha)


def dtw(a: np.ndarray, b: np.ndarray) -> Tuple[float, List[Tuple[int, int]]]:
    """Dynamic time warping of feature sequences a (N, D) and b (M, D) with Euclidean frame distance
    and steps (1, 0), (0, 1), (1, 1): the least total distance over monotone paths from (0, 0) to
    (N - 1, M - 1), and that path."""
    a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or 0 in a.shape or 0 in b.shape:
        raise ValueError(f"dtw needs non-empty (N, D) and (M, D) arrays, got {a.shape} and {b.shape}")
    dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    n, m = dist.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for s in range(2, n + m + 1):                     # anti-diagonals i + j = s (1-based cells)
        i = np.arange(max(1, s - m), min(n, s - 1) + 1)
        j = s - i
        acc[i, j] = dist[i - 1, j - 1] + np.minimum(np.minimum(acc[i - 1, j], acc[i, j - 1]), acc[i - 1, j - 1])
    i, j, path = n, m, [(n - 1, m - 1)]
    while (i, j) != (1, 1):
        steps = ((i - 1, j - 1), (i - 1, j), (i, j - 1))
        i, j = min(steps, key=lambda ij: acc[ij])
        path.append((i - 1, j - 1))
    return float(acc[n, m]), path[::-1]


def mcd(ref: "torch.Tensor | np.ndarray", syn: "torch.Tensor | np.ndarray", sample_rate: int, *,
        order: int = 24, include_c0: bool = False) -> float:
    """Mel-cepstral distortion in dB between two mono waveforms at ``sample_rate``, DTW-aligned."""
    c1, c2 = mel_cepstrum(ref, sample_rate, order=order), mel_cepstrum(syn, sample_rate, order=order)
    if not include_c0:
        c1, c2 = c1[:, 1:], c2[:, 1:]
    _, path = dtw(c1, c2)
    i, j = np.array(path).T
    d = np.sqrt(2.0 * ((c1[i] - c2[j]) ** 2).sum(-1))
    return float(_DB * d.mean())


def f0_rmse(ref: "torch.Tensor | np.ndarray", syn: "torch.Tensor | np.ndarray", sample_rate: int, *,
            fmin: float = 65.0, fmax: float = 400.0, hop: int = 256) -> Dict[str, float]:
    """F0 error between two mono waveforms: ``rmse_hz`` over DTW-paired frames voiced in both (nan if
    none), ``vuv_error`` (fraction of pairs whose voicing decisions differ), ``voiced_pairs``."""
    import librosa
    n_fft = 1024 if sample_rate <= 24000 else 2048
    f0s, voiced = [], []
    for x in (ref, syn):
        xt = aio._as_tensor(x)
        aio.check(xt, name="audio", allow_clipped=True)
        f0, v, _ = librosa.pyin(xt.double().numpy(), fmin=fmin, fmax=fmax, sr=sample_rate, frame_length=n_fft,
                                hop_length=hop, center=True)
        f0s.append(np.nan_to_num(f0))
        voiced.append(np.asarray(v, bool))
    n1, n2 = len(f0s[0]), len(f0s[1])
    if n1 == n2:                                       # same length: frame by frame
        i = j = np.arange(n1)
    else:                                              # pair frames along the DTW path of the mel-cepstra
        alpha = MCEP_ALPHA.get(sample_rate, 0.42)
        c1 = mel_cepstrum(ref, sample_rate, n_fft=n_fft, hop=hop, alpha=alpha)[:, 1:]
        c2 = mel_cepstrum(syn, sample_rate, n_fft=n_fft, hop=hop, alpha=alpha)[:, 1:]
        _, path = dtw(c1, c2)
        i, j = np.array(path).T
    both = voiced[0][i] & voiced[1][j]
    diff = f0s[0][i][both] - f0s[1][j][both]
    rmse = float(np.sqrt(np.mean(diff ** 2))) if both.any() else float("nan")
    return {"rmse_hz": rmse, "vuv_error": float(np.mean(voiced[0][i] != voiced[1][j])),
            "voiced_pairs": int(both.sum())}


# ---------------------------------------------------------------- enhancement metrics
def _pair(ref: "torch.Tensor | np.ndarray", est: "torch.Tensor | np.ndarray") -> Tuple[torch.Tensor, torch.Tensor]:
    r, e = aio._as_tensor(ref, "reference").double(), aio._as_tensor(est, "estimate").double()
    if r.shape != e.shape:
        raise ValueError(f"reference and estimate must have the same shape, got {tuple(r.shape)} and {tuple(e.shape)}")
    if r.numel() == 0 or not (torch.isfinite(r).all() and torch.isfinite(e).all()):
        raise ValueError("reference and estimate must be non-empty and finite")
    return r, e


def si_sdr(ref: "torch.Tensor | np.ndarray", est: "torch.Tensor | np.ndarray") -> torch.Tensor:
    """Scale-invariant SDR in dB over the last axis (zero-mean signals; +inf for an exact scaled copy)."""
    r, e = _pair(ref, est)
    r = r - r.mean(-1, keepdim=True)
    e = e - e.mean(-1, keepdim=True)
    energy = (r * r).sum(-1, keepdim=True)
    if bool((energy == 0).any()):
        raise ValueError("the reference is constant (zero energy after removing its mean)")
    target = (e * r).sum(-1, keepdim=True) / energy * r
    noise = e - target
    return 10.0 * torch.log10((target ** 2).sum(-1) / (noise ** 2).sum(-1))


def pesq(ref: "torch.Tensor | np.ndarray", est: "torch.Tensor | np.ndarray", sample_rate: int = 16000) -> float:
    """Wide-band PESQ (MOS-LQO, about 1.0 .. 4.64) of mono ``est`` against ``ref``, at 16 kHz."""
    r, e = _pair(ref, est)
    if r.dim() != 1:
        raise ValueError(f"pesq takes mono audio (T,), got shape {tuple(r.shape)}")
    if sample_rate != 16000:
        r, e = aio.resample(r, sample_rate, 16000), aio.resample(e, sample_rate, 16000)
    from pesq import pesq as _pesq
    try:
        return float(_pesq(16000, r.numpy(), e.numpy(), "wb"))
    except Exception as err:          # the pesq package raises its own error classes (e.g. no utterances found)
        raise ValueError(f"PESQ failed: {type(err).__name__}: {err} (silent or too short audio?)") from None


def estoi(ref: "torch.Tensor | np.ndarray", est: "torch.Tensor | np.ndarray", sample_rate: int = 16000) -> float:
    """Extended STOI (0 .. 1) of mono ``est`` against ``ref``."""
    r, e = _pair(ref, est)
    if r.dim() != 1:
        raise ValueError(f"estoi takes mono audio (T,), got shape {tuple(r.shape)}")
    aio._check_rate(sample_rate)
    from pystoi import stoi
    return float(stoi(r.numpy(), e.numpy(), sample_rate, extended=True))


# ---------------------------------------------------------------- real-time factor
def real_time_factor(compute_seconds: float, audio_seconds: float) -> float:
    """Compute time divided by the duration of the audio produced (< 1 is faster than real time)."""
    if not audio_seconds > 0:
        raise ValueError(f"audio_seconds must be > 0, got {audio_seconds}")
    if compute_seconds < 0:
        raise ValueError(f"compute_seconds must be >= 0, got {compute_seconds}")
    return compute_seconds / audio_seconds


def measure_rtf(fn: Callable[..., torch.Tensor], *args: Any, sample_rate: int, **kwargs: Any
                ) -> Tuple[torch.Tensor, float]:
    """Run ``fn(*args, **kwargs)``, which returns waveforms (..., T) at ``sample_rate``; return them and the
    RTF: wall-clock time over the total duration returned (all waveforms of a batch together)."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    elapsed = time.perf_counter() - t0
    if not isinstance(out, torch.Tensor) or out.numel() == 0:
        raise ValueError("measure_rtf needs fn to return a non-empty waveform tensor")
    return out, real_time_factor(elapsed, out.numel() / sample_rate)
