"""Trainer, LR schedule, EMA, data order: exact formulas, exact resume, accumulation, a real fit."""
import csv
import importlib.util
import math
import pathlib

import pytest
import torch

from polydiff.core import Denoiser, analytic, losses, nets, paths, sample
from polydiff.core.metrics import sliced_wasserstein
from polydiff.core.training import EMA, BatchPlan, TrainConfig, Trainer, ema_beta, gradient_step, load, lr_at
from polydiff.core.training.data import DataSourceAdapter, shard_of

HERE = pathlib.Path(__file__).parent


def _worker():
    spec = importlib.util.spec_from_file_location("train_worker", HERE / "train_worker.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ schedule
def test_lr_schedule_matches_formulas():
    # warm-up: linear to the peak, first step not zero
    assert lr_at(0, 1.0, 100, warmup_steps=4) == 0.25
    assert lr_at(3, 1.0, 100, warmup_steps=4) == 1.0
    # cosine from the peak at the end of warm-up to min_lr, half-way at the midpoint
    assert lr_at(4, 2.0, 104, warmup_steps=4, min_lr=0.5) == 2.0
    assert lr_at(54, 2.0, 104, warmup_steps=4, min_lr=0.5) == pytest.approx(1.25, abs=1e-15)
    assert lr_at(104, 2.0, 104, warmup_steps=4, min_lr=0.5) == pytest.approx(0.5, abs=1e-15)
    t = 0.3
    assert lr_at(30, 1.0, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * t)), abs=1e-15)
    assert [lr_at(s, 3e-4, 10, 2, "constant") for s in range(4)] == [1.5e-4, 3e-4, 3e-4, 3e-4]
    with pytest.raises(ValueError, match="valid"):
        lr_at(0, 1.0, 10, schedule="linear")
    with pytest.raises(ValueError):
        lr_at(0, 1.0, 10, min_lr=2.0)


# ------------------------------------------------------------------ EMA
def test_ema_beta_half_life_and_rampup():
    # without ramp-up: after half_life samples the old weight is halved, whatever the batch size
    assert ema_beta(10**6, 100, 1000, rampup=None) ** 10 == pytest.approx(0.5, rel=1e-12)
    assert ema_beta(10**6, 250, 1000, rampup=None) ** 4 == pytest.approx(0.5, rel=1e-12)
    # ramp-up: h = min(half_life, rampup * nimg) = 0.05 * 1000 = 50 samples
    assert ema_beta(1000, 100, 10**6, rampup=0.05) == pytest.approx(0.25, rel=1e-12)
    assert ema_beta(5, 1, 0.0) == 0.0            # half-life 0: the EMA is the model


def test_gradient_step_is_clipped_sgd_and_refuses_non_finite_losses() -> None:
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    unused = torch.nn.Parameter(torch.ones(2))                     # no gradient: left out of the norm
    opt = torch.optim.SGD([w, unused], lr=123.0)
    # loss = w . (1, 1) * 10: gradient (10, 10), norm 10 sqrt 2; clipped to norm 1 -> (1, 1) / sqrt 2
    norm = gradient_step(opt, 10 * w.sum(), lr=0.5, clip=1.0)
    assert float(norm) == pytest.approx(10 * math.sqrt(2), rel=1e-6)
    assert opt.param_groups[0]["lr"] == 0.5
    assert torch.allclose(w.detach(), torch.tensor([3.0, 4.0]) - 0.5 / math.sqrt(2), atol=1e-6)
    assert torch.equal(unused.detach(), torch.ones(2))
    # no clipping: a plain SGD step at the optimizer's current rate
    gradient_step(opt, (w * torch.tensor([1.0, -2.0])).sum(), clip=math.inf)
    assert torch.allclose(w.detach(), torch.tensor([3.0 - 0.5 / math.sqrt(2) - 0.5, 4.0 - 0.5 / math.sqrt(2) + 1.0]))
    before = w.detach().clone()
    with pytest.raises(FloatingPointError, match="non-finite loss at step 7"):
        gradient_step(opt, w.sum() * float("nan"), step=7)
    # a finite loss with an infinite gradient (sqrt at 0) is skipped, not applied
    z = torch.nn.Parameter(torch.zeros(1))
    opt_z = torch.optim.SGD([z], lr=1.0)
    norm = gradient_step(opt_z, z.sqrt().sum())
    assert not math.isfinite(float(norm)) and torch.equal(z.detach(), torch.zeros(1))
    assert torch.equal(w.detach(), before)
    with pytest.raises(ValueError, match="scalar loss"):
        gradient_step(opt, w * 2)


def test_ema_update_matches_closed_form():
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, half_life=400, rampup=0.1)
    start = [p.detach().clone().double() for p in ema.module.parameters()]
    expect = start
    for k in range(1, 6):
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(float(k))
        beta = ema.update(net, nimg=100 * k, batch_size=100)
        assert beta == 0.5 ** (100 / min(400, 0.1 * 100 * k))
        expect = [beta * e + (1 - beta) * k for e in expect]
    for p, e in zip(ema.module.parameters(), expect):
        torch.testing.assert_close(p.double(), e, atol=1e-6, rtol=1e-6)
    assert not any(p.requires_grad for p in ema.module.parameters())


# ------------------------------------------------------------------ config and data
def test_train_config_json_round_trip_and_errors():
    cfg = TrainConfig(steps=7, betas=(0.8, 0.95), cond_keys=("class_labels", "y"), out_dir="x", grad_clip=None)
    back = TrainConfig.from_json(cfg.to_json())
    assert back == cfg and back.betas == (0.8, 0.95) and back.cond_keys == ("class_labels", "y")
    with pytest.raises(ValueError, match="unknown TrainConfig field.*valid"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="valid"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="valid"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="divisible"):
        TrainConfig(batch_size=10, accumulate=3)
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)


def test_batch_plan_epochs_resume_and_shards():
    plan = BatchPlan(10, 4, seed=3)
    batches = [plan.next_global() for _ in range(5)]          # 20 samples = 2 epochs, straddling batches
    stream = torch.cat(batches)
    for e in range(2):
        assert sorted(stream[10 * e:10 * (e + 1)].tolist()) == list(range(10))
        assert torch.equal(stream[10 * e:10 * (e + 1)], plan.permutation(e))
    assert not torch.equal(plan.permutation(0), plan.permutation(1))
    # resuming from a mid-epoch cursor continues the same stream
    p2 = BatchPlan(10, 4, seed=3)
    p2.next_global()
    state = p2.state()
    assert state == {"epoch": 0, "position": 4}
    p3 = BatchPlan(10, 4, seed=3)
    p3.load_state(state)
    assert torch.equal(torch.cat([p3.next_global() for _ in range(4)]), stream[4:20])
    with pytest.raises(ValueError, match="cursor"):
        p3.load_state({"epoch": 0, "position": 10})
    # the union of the ranks' micro-batches is the global batch, in order
    g = torch.arange(12)
    parts = [shard_of(g, a, r, 2, 3) for a in range(2) for r in range(3)]
    assert torch.equal(torch.cat(parts), g)
    with pytest.raises(ValueError, match="equal shards"):
        shard_of(torch.arange(10), 0, 0, 2, 3)


def test_data_sources_tuple_dataset_and_errors():
    x, y = torch.randn(6, 2), torch.arange(6)
    ad = DataSourceAdapter((x, y), ("class_labels",))
    xb, cond = ad.fetch(torch.tensor([4, 1]))
    assert torch.equal(xb, x[[4, 1]]) and torch.equal(cond["class_labels"], y[[4, 1]])

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return {"x0": x[i], "class_labels": int(y[i])}
    xb2, cond2 = DataSourceAdapter(DS()).fetch(torch.tensor([4, 1]))
    assert torch.equal(xb2, xb) and torch.equal(cond2["class_labels"], cond["class_labels"])
    with pytest.raises(ValueError, match="cond_keys"):
        DataSourceAdapter((x, y, y), ("class_labels",))
    with pytest.raises(ValueError, match="first dims"):
        DataSourceAdapter((x, y[:3]))
    with pytest.raises(ValueError, match="tensor"):
        DataSourceAdapter([[1.0, 2.0]])


# ------------------------------------------------------------------ the trainer
def _tiny(acc=1, steps=4, loss=None, data=None, **kw):
    torch.manual_seed(0)
    net = nets.build({"name": "mlp", "dim": 2, "width": 16, "depth": 1, "emb_dim": 8})
    data = torch.randn(32, 2, generator=torch.Generator().manual_seed(1)) if data is None else data
    loss = loss or losses.DiffusionLoss(paths.VP(), prediction="eps")
    cfg = TrainConfig(steps=steps, batch_size=16, lr=1e-2, accumulate=acc, log_every=1, progress=False, **kw)
    return Trainer(net, loss, data, cfg)


def test_accumulation_averages_over_the_global_batch():
    """A loss that ignores the generator: accumulation 1 and 4 minimise the same global mean."""
    target = torch.tensor([0.3, -0.2])

    def loss(model, x0, generator=None):
        t = torch.full((x0.shape[0],), 0.5)
        return (model(x0, t) - target - x0).square().sum(1) * (1 + x0[:, 0].abs())
    a, b = _tiny(1, loss=loss, grad_clip=None), _tiny(4, loss=loss, grad_clip=None)
    ha, hb = a.fit(), b.fit()
    for (s1, l1), (s2, l2) in zip(ha, hb):
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-5)
    for p, q in zip(a.net.parameters(), b.net.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_resume_repeats_the_uninterrupted_run_exactly(tmp_path):
    """Dropout, logit-normal times, accumulation; a crash at step 10 after the step-8 checkpoint."""
    w = _worker()
    ref = w.make_trainer(str(tmp_path / "ref"))
    ref_hist = ref.fit()
    assert [s for s, _ in ref_hist] == list(range(1, w.STEPS + 1))

    class Crash(Exception):
        pass

    def crash(trainer, step):
        if step == 10:
            raise Crash
        return {}
    first = w.make_trainer(str(tmp_path / "run"), eval_fn=crash)
    with pytest.raises(Crash):
        first.fit()
    assert first.history == ref_hist[:10]
    second = w.make_trainer(str(tmp_path / "run"))
    assert second.resume() and second.step == 8
    hist = second.fit()
    assert hist == ref_hist[8:]                       # exact equality of every per-step loss
    for p, q in zip(second.net.parameters(), ref.net.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(second.ema.module.parameters(), ref.ema.module.parameters()):
        assert torch.equal(p, q)
    assert [r["loss"] for r in _csv(tmp_path / "run" / "metrics.csv")] == \
           [r["loss"] for r in _csv(tmp_path / "ref" / "metrics.csv")]
    # a fresh trainer on a finished run resumes at the end and has nothing to do
    third = w.make_trainer(str(tmp_path / "run"))
    assert third.resume() and third.step == w.STEPS and third.fit() == []


def test_hooks_metrics_and_exported_model(tmp_path):
    calls = []

    def eval_fn(trainer, step):
        return {"ema_norm": float(sum(p.square().sum() for p in trainer.ema.module.parameters()))}

    def sample_fn(D, step):
        calls.append((step, isinstance(D, Denoiser), D.net.training))
    tr = _tiny(steps=6, out_dir=str(tmp_path), eval_every=3, sample_every=2, ckpt_every=3, keep_last=1)
    tr.sample_fn, tr.eval_fn = sample_fn, eval_fn
    tr.fit()
    assert calls == [(2, True, False), (4, True, False), (6, True, False)]
    rows = _csv(tmp_path / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert [bool(r["ema_norm"]) for r in rows] == [False, False, True, False, False, True]
    assert {"loss", "lr", "grad_norm", "samples_per_s"} <= set(rows[0])
    assert float(rows[0]["lr"]) == lr_at(0, 1e-2, 6)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_00000006"]
    D = load(tmp_path)
    x, t = torch.randn(5, 2), torch.rand(5)
    torch.testing.assert_close(D(x, t), tr.denoiser(ema=True)(x, t), atol=0, rtol=0)


def test_dataset_source_and_loader_workers_give_the_tensor_run():
    """A Dataset (fetched in-process or by a worker DataLoader) follows the same plan as a tensor."""
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(1))

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):
            return x[i]
    ref = _tiny(acc=2, steps=5, data=x).fit()
    assert _tiny(acc=2, steps=5, data=DS()).fit() == ref
    assert _tiny(acc=2, steps=5, data=DS(), num_workers=1).fit() == ref


def test_class_conditional_data_reaches_the_network():
    seen = []

    def loss(model, x0, generator=None, **cond):
        seen.append(sorted(cond))
        return model(x0, torch.rand(x0.shape[0], generator=generator), **cond).square().mean(1)
    torch.manual_seed(0)
    net = nets.build({"name": "mlp", "dim": 2, "width": 8, "depth": 1, "emb_dim": 8, "num_classes": 3})
    data = (torch.randn(16, 2), torch.randint(0, 3, (16,)))
    Trainer(net, loss, data, TrainConfig(steps=2, batch_size=8, progress=False)).fit()
    assert seen == [["class_labels"], ["class_labels"]]


def test_bad_loss_and_nan_give_clear_errors():
    with pytest.raises(ValueError, match="per-sample losses of shape"):
        _tiny(loss=lambda m, x, generator=None: m(x, torch.rand(x.shape[0])).square().mean()).fit()
    with pytest.raises(FloatingPointError, match="step 1"):
        _tiny(loss=lambda m, x, generator=None: m(x, torch.rand(x.shape[0])).sum(1) * float("nan")).fit()
    with pytest.raises(ValueError, match="pass path="):
        Trainer(nets.build({"name": "mlp", "dim": 2}), lambda m, x, generator=None: x.sum(1), torch.randn(4, 2),
                TrainConfig(batch_size=2, out_dir="unused", progress=False))
    with pytest.raises(ValueError, match="nets.build"):
        Trainer(torch.nn.Linear(2, 2), losses.DiffusionLoss(paths.VP()), torch.randn(4, 2),
                TrainConfig(batch_size=2, out_dir="unused", progress=False))
    with pytest.raises(ValueError, match="tensor"):
        _tiny(data=[[0.0, 1.0]])


def test_bf16_autocast_on_cpu_runs_the_network_in_bf16():
    dtypes = []
    tr = _tiny(steps=1, precision="bf16")
    tr.net.inp.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    tr.fit()
    assert dtypes == [torch.bfloat16] and all(p.dtype == torch.float32 for p in tr.net.parameters())
    assert _tiny(steps=1, precision="auto").autocast_dtype is None      # auto = fp32 on CPU


def test_training_on_a_gaussian_mixture_learns_it(tmp_path):
    """250 steps (about 3 s) bring sliced W2 to the exact ring mixture far below the untrained model's,
    within 3x of the floor (SW between two exact sample sets) and well below a moment-matched Gaussian."""
    gm = analytic.ring_mixture(2)
    data = gm.sample(8192, torch.Generator().manual_seed(0)).float()
    path = paths.Flow()
    spec = {"name": "mlp", "dim": 2, "width": 64, "depth": 2, "emb_dim": 32}
    torch.manual_seed(0)
    untrained = Denoiser(nets.build(spec), path, "velocity")
    torch.manual_seed(0)
    tr = Trainer(nets.build(spec), losses.DiffusionLoss(path, prediction="velocity", time_sampler="logit_normal"),
                 data, TrainConfig(steps=250, batch_size=256, lr=3e-3, warmup_steps=20, ema_half_life=2000,
                                   log_every=50, out_dir=str(tmp_path), progress=False))
    tr.fit()
    ref = gm.sample(2000, torch.Generator().manual_seed(1))
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))

    def sw(x):
        return float(sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(3)))

    def sw_model(D):
        with torch.no_grad():
            return sw(sample(D, noise, path=path, solver="dpmpp_2m", steps=20))
    trained, before = sw_model(load(tmp_path)), sw_model(untrained)
    floor = sw(gm.sample(2000, torch.Generator().manual_seed(4)))
    gauss = sw(noise.double() * ref.std(0) + ref.mean(0))
    assert trained < 0.3 * before and trained < 3 * floor and trained < 0.5 * gauss, (trained, before, floor, gauss)


@nets.register("test_token_logits")
class _TokenLogits(torch.nn.Module):
    """A tiny logits network over (B, L) tokens for the discrete-process round trip."""

    def __init__(self, vocab: int, length: int, width: int = 16) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab + 1, width)
        self.out = torch.nn.Linear(width * length + 1, length * vocab)
        self.vocab, self.length = vocab, length

    def forward(self, x, t):
        h = torch.cat([self.emb(x).flatten(1), t[:, None].float()], 1)
        return self.out(h).view(x.shape[0], self.length, self.vocab)


def test_discrete_process_trains_saves_and_loads(tmp_path):
    """Integer token data, a discrete loss (its .process is saved), and load() returning the logits net."""
    from polydiff.core.discrete import Masked
    from polydiff.core.discrete.losses import ContinuousELBO
    data = torch.randint(0, 4, (64, 3), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    tr = Trainer(nets.build({"name": "test_token_logits", "vocab": 4, "length": 3}), ContinuousELBO(Masked(4)), data,
                 TrainConfig(steps=6, batch_size=16, out_dir=str(tmp_path), progress=False))
    tr.fit()
    net = load(tmp_path)
    assert isinstance(net, _TokenLogits) and type(net.process) is Masked and net.process.vocab_size == 4
    x, t = data[:5], torch.rand(5)
    assert torch.equal(net(x, t), tr.ema.module(x, t))
