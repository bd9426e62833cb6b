"""Speech evaluators: exact edit distances, WER/CER, SI-SDR, DTW and cepstra; PESQ/ESTOI/F0/ASR sanity."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from polydiff.domains.audio import metrics as M


def _naive_levenshtein(a, b):
    """The textbook recursive definition (exponential; fine for short strings)."""
    if not a:
        return len(b)
    if not b:
        return len(a)
    return min(_naive_levenshtein(a[1:], b) + 1, _naive_levenshtein(a, b[1:]) + 1,
               _naive_levenshtein(a[1:], b[1:]) + (a[0] != b[0]))


def test_edit_distance_exact():
    assert M.edit_distance("kitten", "sitting") == 3
    assert M.edit_distance("flaw", "lawn") == 2
    assert M.edit_distance("", "abc") == 3 and M.edit_distance("abc", "") == 3
    assert M.edit_distance(["the", "cat"], ["the", "cat"]) == 0
    rng = random.Random(0)
    for _ in range(200):
        a = "".join(rng.choice("ab") for _ in range(rng.randint(0, 6)))
        b = "".join(rng.choice("abc") for _ in range(rng.randint(0, 6)))
        assert M.edit_distance(a, b) == _naive_levenshtein(a, b)


def test_error_rates_exact():
    r = M.error_rates(["The cat sat."], ["the bat sat down"])
    assert (r["word_errors"], r["words"]) == (2, 3) and r["wer"] == pytest.approx(2 / 3)
    # "the cat sat" -> "the bat sat down": one substitution and five insertions (" down")
    assert (r["char_errors"], r["chars"]) == (6, 11) and r["cer"] == pytest.approx(6 / 11)
    # both sides are normalised: numbers, abbreviations, case and punctuation do not count
    assert M.error_rates(["Dr. Smith has 2 cats!"], ["doctor smith has two cats"])["wer"] == 0.0
    assert M.error_rates(["a day-to-day job"], ["a day to day job"])["wer"] == 0.0
    # corpus-level: total errors over total reference words
    r = M.error_rates(["one two three four", "five"], ["one two three four", ""])
    assert r["wer"] == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="references but"):
        M.error_rates(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="no words"):
        M.error_rates(["..."], ["a"])


def test_si_sdr_exact():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 4000, generator=g, dtype=torch.float64)
    assert torch.isinf(M.si_sdr(s, 0.3 * s)).all() or (M.si_sdr(s, 0.3 * s) > 200).all()
    assert (M.si_sdr(s, -2.0 * s + 5.0) > 200).all()        # scale and offset invariant
    for snr_db in (-5.0, 0.0, 10.0, 20.0):
        sc = s - s.mean(-1, keepdim=True)
        n = torch.randn(3, 4000, generator=g, dtype=torch.float64)
        n = n - n.mean(-1, keepdim=True)
        n = n - (n * sc).sum(-1, keepdim=True) / (sc * sc).sum(-1, keepdim=True) * sc    # orthogonal to s
        n = n * torch.sqrt((sc ** 2).sum(-1, keepdim=True) / (n ** 2).sum(-1, keepdim=True)) * 10 ** (-snr_db / 20)
        assert torch.allclose(M.si_sdr(s, s + n), torch.full((3,), snr_db, dtype=torch.float64), atol=1e-9)
    with pytest.raises(ValueError, match="same shape"):
        M.si_sdr(torch.zeros(10), torch.zeros(11))
    with pytest.raises(ValueError, match="constant"):
        M.si_sdr(torch.ones(10), torch.randn(10))


def test_dtw_matches_enumeration_of_all_paths():
    rng = np.random.default_rng(0)

    def paths(n, m):
        if (n, m) == (0, 0):
            yield [(0, 0)]
            return
        for di, dj in ((1, 0), (0, 1), (1, 1)):
            if n - di >= 0 and m - dj >= 0:
                for p in paths(n - di, m - dj):
                    yield p + [(n, m)]

    for n, m in ((1, 1), (3, 4), (4, 4), (5, 3)):
        a, b = rng.normal(size=(n, 2)), rng.normal(size=(m, 2))
        d = np.linalg.norm(a[:, None] - b[None], axis=-1)
        best = min(sum(d[i, j] for i, j in p) for p in paths(n - 1, m - 1))
        cost, path = M.dtw(a, b)
        assert cost == pytest.approx(best, abs=1e-12)
        assert sum(d[i, j] for i, j in path) == pytest.approx(cost, abs=1e-12)
        assert path[0] == (0, 0) and path[-1] == (n - 1, m - 1)


def test_cepstrum_exact():
    rng = np.random.default_rng(1)
    log_amp = rng.normal(size=(3, 513))
    c = M.cepstrum_from_log_spectrum(log_amp, order=30, alpha=0.0)
    assert np.allclose(c, np.fft.irfft(log_amp, n=1024, axis=-1)[:, :31], atol=1e-12)   # the real cepstrum
    # a log spectrum built from known mel-cepstra on the warped axis gives them back
    mc = np.array([0.5, 0.8, -0.3, 0.2, 0.05, -0.1])
    omega = np.pi * np.arange(4097) / 4096
    beta = M.warp_frequency(omega, 0.42)
    spectrum = mc[0] + 2 * sum(mc[m] * np.cos(m * beta) for m in range(1, 6))
    assert np.allclose(M.cepstrum_from_log_spectrum(spectrum, order=8, alpha=0.42), np.r_[mc, 0, 0, 0], atol=1e-4)
    # the warping is an all-pass phase: alpha and -alpha are inverses, endpoints fixed
    assert np.allclose(M.warp_frequency(M.warp_frequency(omega, 0.42), -0.42), omega, atol=1e-12)


def _speechlike(f0: float, seconds: float = 2.0, sr: int = 16000, seed: int = 0) -> torch.Tensor:
    """Harmonics of f0 with formant-like weights, syllable-rate (4 Hz) on/off modulation."""
    t = torch.arange(int(sr * seconds), dtype=torch.float64) / sr
    x = sum((1.0 / k) * torch.sin(2 * math.pi * k * f0 * t + k) for k in range(1, 20) if k * f0 < 7000)
    env = (torch.sin(2 * math.pi * 4 * t) > -0.3).double() * (t > 0.2) * (t < seconds - 0.2)
    return (0.3 * x / x.abs().max() * env).float()


def test_mcd_zero_for_identical_and_grows_with_distortion():
    x = _speechlike(140.0)
    assert M.mcd(x, x, 16000) == 0.0
    g = torch.Generator().manual_seed(0)
    small = M.mcd(x, x + 0.003 * torch.randn(x.shape, generator=g), 16000)
    large = M.mcd(x, x + 0.03 * torch.randn(x.shape, generator=g), 16000)
    assert 0 < small < large
    with pytest.raises(ValueError, match="alpha"):
        M.mcd(x, x, 11025)


def test_pesq_and_estoi_order_the_noise_levels():
    x = _speechlike(120.0, seconds=1.25)
    g = torch.Generator().manual_seed(0)
    assert M.pesq(x, x) == pytest.approx(4.64, abs=0.01)
    assert M.estoi(x, x) == pytest.approx(1.0, abs=1e-6)
    noise = torch.randn(x.shape, generator=g)
    p = [M.pesq(x, x + a * noise) for a in (0.003, 0.03)]
    e = [M.estoi(x, x + a * noise) for a in (0.003, 0.03)]
    assert 4.64 > p[0] > p[1] and 1.0 > e[0] > e[1]
    with pytest.raises(ValueError, match="PESQ failed"):
        M.pesq(x, torch.zeros_like(x))
    with pytest.raises(ValueError, match="same shape"):
        M.estoi(x, x[:-1])


def test_f0_rmse_of_two_pitches():
    a, b = _speechlike(150.0, seconds=1.0), _speechlike(160.0, seconds=1.0)
    r = M.f0_rmse(a, b, 16000)
    assert r["voiced_pairs"] > 20
    assert abs(r["rmse_hz"] - 10.0) < 2.0
    assert r["vuv_error"] < 0.2
    assert M.f0_rmse(a, a, 16000)["rmse_hz"] == 0.0


def test_rtf():
    assert M.real_time_factor(0.5, 2.0) == 0.25
    out, rtf = M.measure_rtf(lambda n: torch.zeros(2, n), 16000, sample_rate=16000)
    assert out.shape == (2, 16000) and 0 <= rtf < 1
    with pytest.raises(ValueError, match="audio_seconds"):
        M.real_time_factor(1.0, 0.0)


def test_recognizer_transcribes_flite_speech():
    from polydiff.domains.audio.corpus import synthesize
    text = "the lion is the king of beasts"
    audio = synthesize(text, voice="rms")
    closed = M.Recognizer(vocabulary=[text, "a dog ate my green shoe"])
    assert closed(audio, 16000) == text
    assert closed(torch.zeros(16000), 16000) == ""            # silence: no words, no error
    with pytest.raises(ValueError, match="not in the CMU dictionary"):
        M.Recognizer(vocabulary=["zxqvw blorft"])
