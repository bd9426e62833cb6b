"""Checkpoints and saved models: exact round trips, no code execution, clear errors, kill safety."""
import csv
import importlib.util
import json
import os
import pathlib
import pickle
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

from polydiff.core import Denoiser, nets, paths
from polydiff.core.training import latest_checkpoint, load, read_checkpoint, save_model
from polydiff.core.training.checkpoint import flatten_state, save_checkpoint, unflatten_state, verify_checkpoint

HERE = pathlib.Path(__file__).parent
ALL_PATHS = [paths.VP(), paths.VP("cosine", cosine_s=0.01), paths.SubVP(0.2, 15.0), paths.VE(0.01, 50.0),
             paths.EDM(0.002, 80.0, 5.0), paths.Flow(), paths.Shifted(paths.Flow(), 3.0),
             paths.ZeroTerminalSNR(paths.VP()), paths.Shifted(paths.ZeroTerminalSNR(paths.VP("linear")), 0.5)]


def _net(**kw):
    torch.manual_seed(0)
    return nets.build({"name": "mlp", "dim": 3, "width": 16, "depth": 2, "emb_dim": 8, **kw})


@pytest.mark.parametrize("path", ALL_PATHS, ids=repr)
def test_path_config_round_trip(path):
    cfg = path.config()
    back = paths.path_from_config(json.loads(json.dumps(cfg)))
    assert type(back) is type(path) and back.config() == cfg
    t = torch.linspace(0.01, 0.99, 7, dtype=torch.float64)
    for f in ("alpha", "sigma", "d_alpha", "d_sigma"):
        assert torch.equal(getattr(back, f)(t), getattr(path, f)(t))


def test_path_config_rejects_unknown_and_non_data():
    with pytest.raises(ValueError, match="unknown path 'os.system'.*valid.*Flow"):
        paths.path_from_config({"name": "os.system", "command": "touch x"})
    with pytest.raises(ValueError, match="number or string"):
        paths.path_from_config({"name": "VE", "sigma_min": [1], "sigma_max": 2.0})
    with pytest.raises(ValueError, match="bad config"):
        paths.path_from_config({"name": "Flow", "evil": 1})


@pytest.mark.parametrize("prediction,path", [("eps", paths.VP()), ("edm", paths.EDM()), ("velocity", paths.Flow())])
def test_save_model_and_load_round_trip(tmp_path, prediction, path):
    net = _net(num_classes=2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))          # zero-initialised layers become non-trivial
    save_model(tmp_path / "m", net, path, prediction, sigma_data=0.7, extra={"note": "x"})
    D = load(tmp_path / "m")
    ref = Denoiser(net, path, prediction, 0.7)
    assert isinstance(D, Denoiser) and D.prediction == prediction and D.sigma_data == 0.7
    assert type(D.path) is type(path) and D.path.config() == path.config()
    assert not D.net.training and not any(p.requires_grad for p in D.net.parameters())
    x, t, y = torch.randn(4, 3), torch.rand(4) * 0.9 + 0.05, torch.tensor([0, 1, 2, 1])
    assert torch.equal(D(x, t, class_labels=y), ref(x, t, class_labels=y))
    # saving again replaces the directory atomically (no leftovers)
    save_model(tmp_path / "m", net, path, prediction, sigma_data=0.7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_optimizer_state_round_trip_continues_identically():
    net = _net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    x = torch.randn(8, 3)

    def step(o):
        o.zero_grad()
        net(x, torch.rand(8, generator=torch.Generator().manual_seed(0))).square().mean().backward()
        o.step()
    step(opt)
    tensors = {}
    skeleton = json.loads(json.dumps(flatten_state(opt.state_dict(), tensors)))
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    tensors = {k: v.clone() for k, v in tensors.items()}     # state_dict() aliases the live state
    snapshot = [p.detach().clone() for p in net.parameters()]
    step(opt)
    after = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p, s in zip(net.parameters(), snapshot):
            p.copy_(s)
    opt2 = torch.optim.AdamW(net.parameters(), lr=1e-2)
    opt2.load_state_dict(unflatten_state(skeleton, tensors))
    step(opt2)
    assert all(torch.equal(p, a) for p, a in zip(net.parameters(), after))
    with pytest.raises(ValueError, match="absent"):
        unflatten_state({"__tensor__": "t99"}, tensors)
    with pytest.raises(ValueError, match="cannot store"):
        flatten_state({"f": object()}, {})


class _Evil:
    """Unpickling this creates a marker file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_loading_untrusted_directories_runs_no_code(tmp_path):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_Evil(str(marker)))
    good = save_model(tmp_path / "good", _net(), paths.VP(), "eps")
    # 1) pickle files next to a valid model are never opened
    for name in ("model.pkl", "pytorch_model.bin", "model.pt"):
        (good / name).write_bytes(payload)
    load(good)
    # 2) weights that are a pickle, not safetensors
    bad = tmp_path / "bad_weights"
    bad.mkdir()
    (bad / "config.json").write_text((good / "config.json").read_text())
    (bad / "model.safetensors").write_bytes(payload)
    with pytest.raises(ValueError, match="not a valid safetensors"):
        load(bad)
    # 3) a config naming a dangerous class for the network or the path
    cfg = json.loads((good / "config.json").read_text())
    for key, value, msg in (("net", {"name": "os.system", "command": f"touch {marker}"}, "unknown network 'os.system'"),
                            ("net", {"name": "builtins.eval", "source": "1"}, "unknown network"),
                            ("process", {"kind": "gaussian", "config": {"name": "subprocess.Popen", "args": "x"}},
                             "unknown path 'subprocess.Popen'"),
                            ("process", {"kind": "pickle", "config": payload.hex()}, "process config")):
        d = tmp_path / f"cfg_{key}_{msg[:8].strip()}"
        d.mkdir(exist_ok=True)
        (d / "config.json").write_text(json.dumps({**cfg, key: value}))
        (d / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
        with pytest.raises(ValueError, match=msg):
            load(d)
    assert not marker.exists()
    pickle.loads(payload)                    # the payload is live: it would have made the marker
    assert marker.exists()


def test_malformed_and_truncated_models_give_clear_errors(tmp_path):
    good = save_model(tmp_path / "good", _net(), paths.VP(), "eps")
    weights = (good / "model.safetensors").read_bytes()

    def variant(name, config=None, data=None):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text((good / "config.json").read_text() if config is None else config)
        if data is not None:
            (d / "model.safetensors").write_bytes(data)
        return d
    with pytest.raises(ValueError, match="missing tensor file"):
        load(variant("no_weights"))
    with pytest.raises(ValueError, match="malformed JSON"):
        load(variant("bad_json", config='{"format": "polydiff-model", ', data=weights))
    with pytest.raises(ValueError, match="not a polydiff model"):
        load(variant("not_ours", config="[1, 2]", data=weights))
    with pytest.raises(ValueError, match="not a valid safetensors"):
        load(variant("truncated", data=weights[:len(weights) // 2]))
    with pytest.raises(ValueError, match="not a valid safetensors"):
        load(variant("empty", data=b""))
    with pytest.raises(ValueError, match="not a directory"):
        load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no polydiff model"):
        load(_empty(tmp_path))
    # tensors: missing, unexpected, mis-shaped, each named
    sd = {k: v.clone() for k, v in _net().state_dict().items()}
    sd.pop("inp.bias")
    sd["extra.weight"] = torch.zeros(2)
    sd["out.1.weight"] = torch.zeros(5, 5)
    d = variant("mismatch")
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing tensors \(1\): inp\.bias.*unexpected tensors \(1\): extra\.weight"
                                         r".*mis-shaped tensors \(1\): out\.1\.weight: file \(5, 5\)"):
        load(d)


def _empty(tmp_path):
    d = tmp_path / "empty_dir"
    d.mkdir()
    return d


def _fake_checkpoint(root, step, value):
    net = _net()
    sd = {k: torch.full_like(v, float(value)) for k, v in net.state_dict().items()}
    cfg = json.loads(json.dumps({"format": "polydiff-model", "version": 1, "net": nets.config_of(net),
                                 "process": {"kind": "gaussian", "config": paths.VP().config()},
                                 "prediction": "eps", "sigma_data": 0.5, "extra": {}}))
    return save_checkpoint(root, step, config=cfg, model=sd, ema=sd, optimizer={"state": {}, "param_groups": []},
                           state={"nimg": step, "data": {"epoch": 0, "position": 0}}, keep_last=3)


def test_checkpoint_pruning_and_corruption_fallback(tmp_path):
    root = tmp_path / "checkpoints"
    for s in (1, 2, 3, 4):
        _fake_checkpoint(root, s, s)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002", "step_00000003", "step_00000004"]
    assert (root / "latest").read_text().strip() == "step_00000004"
    assert latest_checkpoint(tmp_path).name == "step_00000004"
    # truncate a file of the newest: it is skipped, the previous one is used, and loading it directly fails
    f = root / "step_00000004" / "ema.safetensors"
    f.write_bytes(f.read_bytes()[:-7])
    assert latest_checkpoint(tmp_path).name == "step_00000003"
    with pytest.raises(ValueError, match="corrupt: ema.safetensors"):
        load(root / "step_00000004")
    assert float(load(tmp_path).net.inp.weight[0, 0]) == 3.0
    (root / "step_00000003" / "state.json").write_text("{")
    assert latest_checkpoint(tmp_path).name == "step_00000002"
    # writing step 3 again after resuming from step 2 removes the abandoned step 4
    _fake_checkpoint(root, 3, 33)
    assert latest_checkpoint(tmp_path).name == "step_00000003"
    assert not (root / "step_00000004").exists()
    ck = read_checkpoint(root / "step_00000003")
    assert float(ck["ema"]["inp.weight"][0, 0]) == 33.0 and ck["state"]["nimg"] == 3


def test_run_dir_prefers_the_newer_of_export_and_checkpoint(tmp_path):
    _fake_checkpoint(tmp_path / "checkpoints", 4, 4.0)
    net = _net()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(2.0)
    save_model(tmp_path / "model", net, paths.VP(), "eps", extra={"step": 2})      # a kill left it behind
    assert float(load(tmp_path).net.inp.weight[0, 0]) == 4.0
    save_model(tmp_path / "model", net, paths.VP(), "eps", extra={"step": 4})
    assert float(load(tmp_path).net.inp.weight[0, 0]) == 2.0
    assert float(load(tmp_path, ema=False).net.inp.weight[0, 0]) == 4.0   # raw weights live in checkpoints only


def test_discrete_process_dispatch(tmp_path, monkeypatch):
    """A process with config() is saved as "discrete" and rebuilt by polydiff.core.discrete.from_config."""
    from polydiff.core import discrete

    class Proc:
        def __init__(self, vocab):
            self.vocab = vocab

        def config(self):
            return {"name": "toy", "vocab": self.vocab}
    made = []
    monkeypatch.setattr(discrete, "from_config", lambda cfg: made.append(cfg) or Proc(cfg["vocab"]), raising=False)
    net = _net()
    save_model(tmp_path / "m", net, Proc(5))
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["process"] == {"kind": "discrete", "config": {"name": "toy", "vocab": 5}}
    got = load(tmp_path / "m")
    assert made == [{"name": "toy", "vocab": 5}] and got.process.vocab == 5
    assert isinstance(got, torch.nn.Module) and not isinstance(got, Denoiser)
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), net.state_dict().values()))
    monkeypatch.delattr(discrete, "from_config")
    with pytest.raises(ValueError, match="discrete"):
        load(tmp_path / "m")
    with pytest.raises(ValueError, match="Gaussian path"):
        save_model(tmp_path / "x", net, "vp")


def _worker():
    spec = importlib.util.spec_from_file_location("train_worker", HERE / "train_worker.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _losses(run):
    with open(run / "metrics.csv", newline="") as f:
        return [(r["step"], r["loss"]) for r in csv.DictReader(f)]


def test_sigkill_at_random_moments_keeps_checkpoints_and_resume_is_exact(tmp_path):
    """SIGKILL a training process mid-checkpoint-write and mid-training; after every kill the newest
    checkpoint is complete and loads; resuming to the end reproduces the uninterrupted run exactly."""
    w = _worker()
    ref_dir = tmp_path / "ref"
    ref = w.make_trainer(str(ref_dir))
    ref.fit()
    run = tmp_path / "run"
    rnd = random.Random(1234)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(HERE / "train_worker.py"), str(run), "--slow", "0.06"]
    plan = [("WRITING", 2), ("STEP", 3)]          # kill during the 2nd write of the launch; after 3 steps
    mid_write_leftovers, last_step = 0, -1
    for what, nth in plan:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        seen = 0
        for line in proc.stdout:
            if line.startswith(what):
                seen += 1
                if seen == nth:
                    if what == "WRITING":                 # 4 tensor files x 0.06 s: land inside the write
                        time.sleep(rnd.uniform(0.01, 0.2))
                    proc.send_signal(signal.SIGKILL)
                    break
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        mid_write_leftovers += any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())
        ck = latest_checkpoint(run)
        assert ck is not None
        verify_checkpoint(ck)
        step = read_checkpoint(ck)["state"]["step"]
        assert step >= last_step and step % w.CKPT_EVERY == 0
        last_step = step
        load(ck)
    assert mid_write_leftovers >= 1                      # at least one kill hit a checkpoint being written
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, check=True)
    assert done.stdout.strip().endswith("DONE")
    assert _losses(run) == _losses(ref_dir)            # every per-step loss, exactly
    a, b = load(run), load(ref_dir)
    assert all(torch.equal(p, q) for p, q in zip(a.net.state_dict().values(), b.net.state_dict().values()))
    assert not any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())


def test_read_model_folder_reads_a_saved_folder_and_names_every_defect(tmp_path):
    from polydiff.core.training.files import read_model_folder, save_tensors
    d = tmp_path / "m"
    d.mkdir()
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    save_tensors(d / "model.safetensors", state)
    (d / "config.json").write_text(json.dumps({"model": "toy", "config": {"width": 3}}))
    cfg, got = read_model_folder(d, "toy model", model="toy")
    assert cfg["config"] == {"width": 3} and torch.equal(got["w"], state["w"])
    with pytest.raises(ValueError, match="holds no toy model"):
        read_model_folder(tmp_path / "nowhere", "toy model")
    with pytest.raises(ValueError, match="does not describe a toy model .*'other'"):
        read_model_folder(d, "toy model", model="other")
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="malformed JSON"):
        read_model_folder(d, "toy model")
    (d / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        read_model_folder(d, "toy model")
    (d / "config.json").write_text(json.dumps({"model": "toy"}))
    (d / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        read_model_folder(d, "toy model")
