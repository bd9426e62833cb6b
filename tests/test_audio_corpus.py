"""Speech corpus: shipped sentence lists with a held-out test set, a tiny flite corpus, the LJSpeech loader, CLI."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf

from polydiff.domains.audio import corpus as C
from polydiff.domains.audio.text import cmudict, normalize
from polydiff.tasks import cli


def _words(s):
    return {w.strip("'-") for w in re.findall(r"[a-z'\-]+", s.lower())} - {""}


def test_shipped_sentences_and_held_out_words():
    train, test = C.sentences("train"), C.sentences("test")
    assert len(train) == 5000 and len(test) == 60
    assert len(set(train)) == len(train) and not set(train) & set(test)
    train_words = set().union(*map(_words, train))
    for s in test:                              # every held-out sentence has a word never seen in training
        assert _words(s) - train_words, s
    assert C.new_words() == set().union(*map(_words, test)) - train_words
    table = cmudict()
    for s in test:                              # the recogniser knows every test word
        assert all(w in table or all(p in table for p in w.split("-")) for w in _words(s)), s
    with pytest.raises(ValueError, match="unknown split"):
        C.sentences("dev")


def test_validation_split_is_the_tail_of_the_seed0_draw():
    import random
    train, valid = C.sentences("train"), C.sentences("valid")
    order = list(range(5000))
    random.Random(0).shuffle(order)
    assert valid == [train[i] for i in order[-200:]] and len(set(valid)) == 200
    # the seed-0 draw of a training corpus up to 4 800 sentences (the shipped models') never reaches them
    assert not {train[i] for i in order[:4800]} & set(valid)


def test_tiny_flite_corpus_and_loader(tmp_path):
    root = C.build_corpus(tmp_path / "c", voice="rms", n=3, seed=1, progress=False)
    lines = (root / "metadata.csv").read_text().splitlines()
    assert len(lines) == 3
    order = list(range(5000))
    import random
    random.Random(1).shuffle(order)
    valid = set(C.sentences("valid"))
    expected = [s for s in (C.sentences("train")[i] for i in order) if s not in valid][:3]
    for line, text in zip(lines, expected):
        uid, raw, norm = line.split("|")
        assert raw == text and norm == normalize(text)
        info = sf.info(str(root / "wavs" / f"{uid}.wav"))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 0.5 < info.duration < 10.0
    assert json.loads((root / "corpus.json").read_text())["voice"] == "rms"
    corpus = C.ljspeech(root)
    assert len(corpus) == 3 and corpus.texts == expected
    u = corpus[0]
    assert u.sample_rate == 16000 and u.audio.dim() == 1 and float(u.audio.abs().max()) > 0.05
    assert [v.id for v in corpus] == corpus.ids
    # building the same corpus again resumes without touching the WAVs; a different one is refused
    mtime = (root / "wavs" / f"{u.id}.wav").stat().st_mtime_ns
    C.build_corpus(root, voice="rms", n=3, seed=1, progress=False)
    assert (root / "wavs" / f"{u.id}.wav").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="different corpus"):
        C.build_corpus(root, voice="rms", n=3, seed=2, progress=False)


def test_ljspeech_loader_reads_real_layout(tmp_path):
    # LJSpeech-1.1's own layout: 22.05 kHz WAVs, id|text|normalized text, quotes left unescaped
    (tmp_path / "wavs").mkdir()
    t = np.arange(22050) / 22050
    sf.write(str(tmp_path / "wavs" / "LJ001-0001.wav"), 0.3 * np.sin(2 * np.pi * 200 * t), 22050, subtype="PCM_16")
    sf.write(str(tmp_path / "wavs" / "LJ001-0002.wav"), 0.3 * np.sin(2 * np.pi * 300 * t), 22050, subtype="PCM_16")
    (tmp_path / "metadata.csv").write_text('LJ001-0001|Printing, in the only sense "with which"|Printing, in the only '
                                           'sense "with which"\nLJ001-0002|In 1450 it began|In fourteen fifty it began\n')
    c = C.ljspeech(tmp_path)
    assert c.normalized[1] == "In fourteen fifty it began" and c[0].sample_rate == 22050
    c16 = C.ljspeech(tmp_path, sample_rate=16000)
    assert c16[1].audio.shape == (16000,) and c16[1].sample_rate == 16000
    (tmp_path / "metadata.csv").write_text("LJ001-0003|missing file|missing file\n")
    with pytest.raises(ValueError, match="missing"):
        C.ljspeech(tmp_path)
    (tmp_path / "metadata.csv").write_text("just one field\n")
    with pytest.raises(ValueError, match="expected 'id|text"):
        C.ljspeech(tmp_path)
    with pytest.raises(ValueError, match="no metadata.csv"):
        C.ljspeech(tmp_path / "wavs")


def test_bad_requests_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown voice"):
        C.build_corpus(tmp_path / "a", voice="alice", n=3)
    with pytest.raises(ValueError, match="more than the 4800"):
        C.build_corpus(tmp_path / "a", n=6000)
    with pytest.raises(ValueError, match="positive int"):
        C.build_corpus(tmp_path / "a", n=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "other.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        C.build_corpus(tmp_path / "full", n=2, progress=False)
    with pytest.raises(ValueError, match="empty text"):
        C.synthesize("  ")


def test_cli_data_speech_test_split(tmp_path, capsys):
    out = tmp_path / "held"
    assert cli.main(["data", "speech", "--split", "test", "--n", "2", "--out", str(out), "--quiet"]) == 0
    assert "wrote 2 utterances" in capsys.readouterr().out
    c = C.ljspeech(out)
    assert c.texts == C.sentences("test")[:2] and c.ids[0] == "rms-test-00001"
    assert cli.main(["evaluate", "speech", str(out), "--limit", "1", "--quiet"]) == 0
    report = capsys.readouterr().out
    assert re.search(r"1 utterances, [\d.]+ s of audio: WER [\d.]+% \(\d+/\d+\)", report), report
    assert cli.main(["evaluate", "speech", str(tmp_path / "nowhere")]) == 2       # a clear error, exit 2
    with pytest.raises(SystemExit):                 # argparse refuses an unknown voice
        cli.main(["data", "speech", "--voice", "nobody", "--out", str(tmp_path / "x")])
