"""Grad-TTS (domains/audio/tts.py): MAS against enumeration, length regulation, the decoder on the core's
mean-reverting path with a tiny random model, bad input, and the shipped weights."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from polydiff.core import sample
from polydiff.core.paths import MeanRevertingVP
from polydiff.domains.audio import tts
from polydiff.domains.audio.text import encode

torch.set_num_threads(1)


def _tiny() -> tts.GradTTS:
    cfg = tts.TTSConfig(hidden=16, prenet_layers=1, enc_layers=1, heads=2, ffn=16, dur_filters=8, dropout=0.0,
                        unet={"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attn_levels": [],
                              "head_dim": 16, "mid_attention": False, "norm_groups": 8},
                        crop_frames=8, griffin_lim_iters=2)
    torch.manual_seed(0)
    m = tts.GradTTS(cfg).eval()
    with torch.no_grad():                  # the U-Net's output layer starts at zero: make the net non-trivial
        for p in m.decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


# ---------------------------------------------------------------- MAS
def _all_alignments(tx: int, ty: int):
    """Every monotonic surjective frame -> symbol map (a(0) = 0, a(ty-1) = tx-1, steps of 0 or 1)."""
    for inc in itertools.product((0, 1), repeat=ty - 1):
        if sum(inc) == tx - 1:
            yield [0] + list(itertools.accumulate(inc))


@pytest.mark.parametrize("tx,ty", [(1, 1), (1, 4), (2, 2), (2, 5), (3, 3), (3, 6), (4, 7), (5, 8)])
def test_mas_matches_brute_force(tx: int, ty: int) -> None:
    g = torch.Generator().manual_seed(tx * 10 + ty)
    logp = torch.randn(1, tx, ty, generator=g, dtype=torch.float64)
    path = tts.monotonic_alignment(logp)
    best = max(_all_alignments(tx, ty), key=lambda a: sum(float(logp[0, i, j]) for j, i in enumerate(a)))
    expect = torch.zeros(tx, ty, dtype=torch.float64)
    expect[best, torch.arange(ty)] = 1
    assert torch.equal(path[0], expect)


def test_mas_batched_with_padding_equals_per_item() -> None:
    g = torch.Generator().manual_seed(1)
    logp = torch.randn(3, 4, 7, generator=g)
    xl, yl = torch.tensor([4, 2, 3]), torch.tensor([7, 5, 3])
    path = tts.monotonic_alignment(logp, xl, yl)
    for b in range(3):
        one = tts.monotonic_alignment(logp[b:b + 1, :xl[b], :yl[b]])[0]
        assert torch.equal(path[b, :xl[b], :yl[b]], one)
        assert path[b].sum() == yl[b]                              # nothing outside the item's lengths
        assert torch.equal(path[b, :xl[b], :yl[b]].sum(0), torch.ones(int(yl[b])))


def test_mas_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least as many frames"):
        tts.monotonic_alignment(torch.zeros(1, 3, 2))
    with pytest.raises(ValueError, match="NaN"):
        tts.monotonic_alignment(torch.full((1, 2, 3), float("nan")))
    with pytest.raises(ValueError, match="B, Tx, Ty"):
        tts.monotonic_alignment(torch.zeros(2, 3))


# ---------------------------------------------------------------- length regulation, likelihood
def test_expand_is_repeat_interleave_and_inverts_durations() -> None:
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(2, 5, 4, generator=g)
    d = torch.tensor([[1, 3, 0, 2], [2, 2, 2, 1]])
    out = tts.expand(mu, d)
    assert out.shape == (2, 5, 7)
    for b in range(2):
        n = int(d[b].sum())
        assert torch.equal(out[b, :, :n], mu[b].repeat_interleave(d[b], dim=1))
    assert torch.equal(out[0, :, 6:], torch.zeros(5, 1))           # the shorter item is zero-padded
    attn = tts.alignment_from_durations(d)
    assert torch.equal(attn.sum(2).long(), d)                      # durations back from the alignment
    with pytest.raises(ValueError, match=">= 0"):
        tts.alignment_from_durations(torch.tensor([[1, -1]]))


def test_gaussian_logp_is_normal_log_density() -> None:
    g = torch.Generator().manual_seed(3)
    y, mu = torch.randn(2, 6, 5, generator=g, dtype=torch.float64), torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    lp = tts.gaussian_logp(y, mu)
    direct = torch.distributions.Normal(mu[:, :, :, None], 1.0).log_prob(y[:, :, None, :]).sum(1)
    assert torch.allclose(lp, direct, atol=1e-10)


# ---------------------------------------------------------------- the model with random weights
def test_training_loss_terms_and_diffusion_loss_on_core_path() -> None:
    m = _tiny().train()
    ids = torch.stack([encode("a cat sat"), encode("a dog ran")])
    xl = torch.tensor([ids.shape[1], ids.shape[1] - 2])
    ids[1, -2:] = 0
    mels = torch.randn(2, 80, 20) - 5
    yl = torch.tensor([20, 7])                                     # the second one is shorter than a crop (8)
    l1 = m.loss(ids, xl, mels, yl, generator=torch.Generator().manual_seed(0))
    l2 = m.loss(ids, xl, mels, yl, generator=torch.Generator().manual_seed(0))
    assert set(l1) == {"duration", "prior", "diffusion", "total"}
    assert all(torch.isfinite(v) for v in l1.values())
    assert all(torch.equal(l1[k], l2[k]) for k in l1)             # deterministic given the generator
    assert torch.allclose(l1["total"], l1["duration"] + l1["prior"] + l1["diffusion"])
    l1["total"].backward()
    assert m.encoder.proj_mu.weight.grad.abs().sum() > 0 and m.decoder.unet.out.weight.grad.abs().sum() > 0
    assert m.encoder.dur[-1].weight.grad.abs().sum() > 0
    # the decoder loss is the v-MSE on the residual x0 - mu of the mean-reverting VP path: check it for F = 0
    assert isinstance(m.diffusion_loss.path, MeanRevertingVP)
    with torch.no_grad():
        m.decoder.unet.out.weight.zero_()
        m.decoder.unet.out.bias.zero_()
    g = torch.Generator().manual_seed(4)
    x0, mu, eps = (torch.randn(3, 80, 8, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    val = m.diffusion_loss.loss_at(m.decoder.double(), x0, t, eps, mu=mu)
    a, s = (f(t)[:, None, None] for f in (m.path.alpha, m.path.sigma))
    v = a * eps - s * (x0 - mu)
    assert torch.allclose(val, v.square().flatten(1).mean(1), rtol=1e-9)
    # and the denoiser of F = 0 returns mu + alpha (x~ - alpha mu), x~ = x_t - (1 - alpha) mu
    xt = a * x0 + (1 - a) * mu + s * eps
    d = m.denoiser(xt, t, mu=mu)
    assert torch.allclose(d, mu + a * (a * x0 + s * eps - a * mu), atol=1e-9)


def test_mel_shapes_seed_determinism_and_mean_only() -> None:
    m = _tiny()
    a = m.mel("the cat", steps=3, seed=1)
    b = m.mel("the cat", steps=3, seed=1)
    c = m.mel("the cat", steps=3, seed=2)
    assert a.shape[0] == 80 and torch.equal(a, b) and not torch.allclose(a, c)
    # mean-only is the encoder output repeated by ceil(exp(logw)) frames
    ids = encode("the cat")
    mu_x, logw, _ = m.encoder(ids[None], torch.tensor([ids.numel()]))
    d = torch.ceil(torch.exp(logw)).clamp_min(1)
    expect = mu_x[0].repeat_interleave(d[0].long(), dim=1)
    mean = m.mel("the cat", mean_only=True)
    assert torch.allclose(mean, expect, atol=1e-6) and a.shape == mean.shape
    # length_scale stretches the durations
    assert m.mel("the cat", mean_only=True, length_scale=2.0).shape[1] == int(torch.ceil(torch.exp(logw) * 2).sum())
    # the default temperature is the model's own (config.temperature)
    assert m.config.temperature == tts.DEFAULT_TEMPERATURE
    assert torch.equal(a, m.mel("the cat", steps=3, seed=1, temperature=tts.DEFAULT_TEMPERATURE))
    m.config.temperature = 2.0
    hot = m.mel("the cat", steps=3, seed=1)
    assert torch.equal(hot, m.mel("the cat", steps=3, seed=1, temperature=2.0)) and not torch.allclose(hot, a)
    with pytest.raises(ValueError, match="temperature"):
        tts.TTSConfig(temperature=0.0)


def test_mel_is_the_core_sampler_on_the_grad_tts_path() -> None:
    m = _tiny()
    ids = encode("hi there")
    mu_y, frames = m.prior_mean(ids)
    assert mu_y.shape[2] % m.config.frame_multiple == 0 and mu_y.shape[2] >= frames
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(mu_y.shape, generator=g) / 1.5
    ref = sample(m.denoiser, noise, path=m.path, solver="dpmpp_2m", steps=4, grid="logsnr", cond={"mu": mu_y},
                 generator=g)[0, :, :frames]
    got = m.mel("hi there", steps=4, temperature=1.5, solver="dpmpp_2m", grid="logsnr", seed=5)
    assert torch.allclose(got, ref, atol=1e-5)
    wav, sr = m.synthesize("hi there", steps=2, seed=0)
    assert sr == 16000 and wav.dim() == 1 and wav.numel() == (got.shape[1] - 1) * 256
    assert torch.isfinite(wav).all() and float(wav.abs().max()) <= 0.99 + 1e-6


def test_bad_input_errors() -> None:
    m = _tiny()
    with pytest.raises(ValueError, match="empty"):
        m.mel("   ")
    with pytest.raises(ValueError, match="nothing speakable"):
        m.mel("?! ... ,")
    with pytest.raises(ValueError, match="\u2603"):
        m.mel("hello \u2603 world")
    with pytest.raises(ValueError, match="steps"):
        m.mel("hello", steps=0)
    with pytest.raises(ValueError, match="temperature"):
        m.mel("hello", temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        m.mel("hello", temperature=-1.0)
    with pytest.raises(ValueError, match="unknown solver 'nope'.*euler"):
        m.mel("hello", solver="nope")
    with pytest.raises(ValueError, match="length_scale"):
        m.mel("hello", length_scale=0)
    with pytest.raises(ValueError, match="valid: \\['rms'\\]"):
        tts.pretrained("nope")
    with pytest.raises(ValueError, match="unknown TTS config keys"):
        tts.TTSConfig.from_dict({"hiddn": 3})


def test_save_load_roundtrip(tmp_path) -> None:
    m = _tiny()
    m.save(tmp_path / "m")
    back = tts.load(tmp_path / "m")
    for (k, v), (k2, v2) in zip(m.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(v.half().float(), v2)       # stored as float16
    with pytest.raises(ValueError, match="config.json and model.safetensors"):
        tts.load(tmp_path / "missing")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        tts.load(tmp_path / "m")


# ---------------------------------------------------------------- training a new decoder on a fixed encoder
def test_aligned_means_batched_equal_per_utterance_alignment() -> None:
    from polydiff.domains.audio.train_tts import aligned_means
    m = _tiny()
    g = torch.Generator().manual_seed(1)
    ids = [encode("the dog ran away"), encode("a cat"), encode("a cat sat")]
    mels = [torch.randn(80, n, generator=g) - 5 for n in (21, 6, 12)]
    means = aligned_means(m, ids, mels, batch=2)                   # sorted by length, padded in pairs
    for x, y, mu in zip(ids, mels, means):
        mu_x, _, _, _, attn = m.align(x[None], torch.tensor([x.numel()]), y[None], torch.tensor([y.shape[1]]))
        assert mu.shape == y.shape and torch.allclose(mu, (mu_x @ attn)[0], atol=1e-5)
        assert torch.equal(attn.sum(1), torch.ones(1, y.shape[1]))  # every frame on exactly one symbol


def _tiny_corpus(root) -> None:
    import soundfile as sf
    (root / "wavs").mkdir(parents=True)
    texts = ["a cat sat", "the dog ran", "we sing", "it is red"]
    for i, text in enumerate(texts):
        t = torch.arange(8000 + 2000 * i) / 16000
        sf.write(str(root / "wavs" / f"u{i}.wav"), (0.3 * torch.sin(2 * math.pi * (150 + 40 * i) * t)).numpy(), 16000)
    (root / "metadata.csv").write_text("".join(f"u{i}|{x}|{x}\n" for i, x in enumerate(texts)))


def test_decoder_only_training_keeps_the_encoder_and_trains_a_new_decoder(tmp_path) -> None:
    import json
    from polydiff.domains.audio.train_tts import main
    _tiny_corpus(tmp_path / "corpus")
    _tiny().save(tmp_path / "init")
    init = tts.load(tmp_path / "init")
    unet = {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attn_levels": [], "head_dim": 8,
            "mid_attention": False, "norm_groups": 4}
    common = ["--corpus", str(tmp_path / "corpus"), "--steps", "3", "--batch", "2", "--warmup", "1", "--quiet"]
    assert main(common + ["--out", str(tmp_path / "out"), "--init", str(tmp_path / "init"), "--decoder-only",
                          "--config", json.dumps({"unet": unet})]) == 0
    out = tts.load(tmp_path / "out")
    assert out.config.unet == unet and out.config.hidden == init.config.hidden
    for k, v in init.encoder.state_dict().items():                  # the encoder is exactly the init's
        assert torch.equal(v, out.encoder.state_dict()[k]), k
    assert out.decoder.unet.out.weight.abs().sum() > 0               # the fresh decoder (zero output layer) moved
    assert "decoder only" in (tmp_path / "out" / "train.log").read_text()
    # same decoder settings: the init's decoder is continued, not replaced
    assert main(common + ["--out", str(tmp_path / "cont"), "--init", str(tmp_path / "init"), "--decoder-only"]) == 0
    cont = tts.load(tmp_path / "cont")
    assert cont.config.unet == init.config.unet
    assert all(torch.equal(v, cont.encoder.state_dict()[k]) for k, v in init.encoder.state_dict().items())
    assert not torch.equal(cont.decoder.unet.out.weight, init.decoder.unet.out.weight)
    with pytest.raises(SystemExit, match="needs --init"):
        main(common + ["--out", str(tmp_path / "x"), "--decoder-only"])
    with pytest.raises(SystemExit, match="keeps the model's sizes"):
        main(common + ["--out", str(tmp_path / "x"), "--init", str(tmp_path / "init"), "--config", '{"hidden": 32}'])
    with pytest.raises(SystemExit, match="may change only"):
        main(common + ["--out", str(tmp_path / "x"), "--init", str(tmp_path / "init"), "--decoder-only",
                       "--config", '{"hidden": 32}'])


def test_edge_silence_wraps_ids_in_training_and_inference(tmp_path) -> None:
    from polydiff.domains.audio.train_tts import load_corpus, main
    plain = tts.TTSConfig()
    edged = tts.TTSConfig(edge_silence=True)
    x = encode("A cat sat.")
    assert torch.equal(tts.text_ids("A cat sat.", plain), x)
    assert torch.equal(tts.text_ids("A cat sat.", edged), torch.cat([torch.tensor([tts.BOUNDARY_ID]), x,
                                                                      torch.tensor([tts.BOUNDARY_ID])]))
    assert tts.symbols()[tts.BOUNDARY_ID] == " "
    with pytest.raises(ValueError, match="empty"):
        tts.text_ids("   ", edged)                                  # no speech is still an error, edges or not
    _tiny_corpus(tmp_path / "corpus")
    ids0, mels0 = load_corpus(str(tmp_path / "corpus"), plain, progress=False)
    ids1, mels1 = load_corpus(str(tmp_path / "corpus"), edged, progress=False)
    for a, b in zip(ids0, ids1):                                    # training sees what inference sees
        assert torch.equal(b[1:-1], a) and b[0] == b[-1] == tts.BOUNDARY_ID
    assert all(torch.equal(a, b) for a, b in zip(mels0, mels1))
    # a joint run with --init may switch the edges on: same weights' shapes, the new config saved
    _tiny().save(tmp_path / "init")
    assert main(["--corpus", str(tmp_path / "corpus"), "--steps", "2", "--batch", "2", "--warmup", "1", "--quiet",
                 "--out", str(tmp_path / "out"), "--init", str(tmp_path / "init"),
                 "--config", '{"edge_silence": true}']) == 0
    out = tts.load(tmp_path / "out")
    assert out.config.edge_silence and not tts.load(tmp_path / "init").config.edge_silence
    assert torch.equal(out.encode_text("A cat sat."), tts.text_ids("A cat sat.", edged))
    assert out.mel("A cat sat.", steps=2).shape[0] == 80


# ---------------------------------------------------------------- the shipped model
def test_shipped_weights_speak() -> None:
    m = tts.pretrained("rms")
    ids = m.encode_text("Hello world.")                             # trained with edge symbols (issue 7's fix)
    assert m.config.edge_silence and ids[0] == ids[-1] == tts.BOUNDARY_ID
    wav, sr = m.synthesize("Hello world.", steps=4, seed=0)
    assert sr == 16000 and 0.4 < wav.numel() / sr < 3.0
    assert torch.isfinite(wav).all() and 0.01 < float(wav.abs().max()) <= 0.99 + 1e-6
    mean = m.mel("Hello world.", mean_only=True)
    assert mean.shape[0] == 80 and math.isfinite(float(mean.mean()))


def test_speak_command(tmp_path, capsys) -> None:
    from polydiff.domains.audio import io as aio
    from polydiff.tasks.cli import main
    out = tmp_path / "hi.wav"
    assert main(["speak", "Hi there.", "--out", str(out), "--steps", "2", "--seed", "3"]) == 0
    wav, rate = aio.read(out)
    assert rate == 16000 and wav.dim() == 1 and wav.numel() > 1000
    assert "real-time factor" in capsys.readouterr().out
    assert main(["speak", "Hi.", "--out", str(tmp_path / "x.mp3")]) == 2
    assert main(["speak", "Hi.", "--out", str(out), "--temperature", "0"]) == 2
    assert "temperature" in capsys.readouterr().err
