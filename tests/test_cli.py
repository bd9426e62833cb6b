"""The `polydiff` command line: help lists every command, train -> sample round trip, clear errors."""
from __future__ import annotations

import json
import math

import pytest
import torch

from polydiff.core import analytic
from polydiff.core.metrics import sliced_wasserstein
from polydiff.core.training.files import load_tensors
from polydiff.tasks import cli


def _config(tmp_path, **train):
    cfg = {"data": {"source": "ring_mixture", "dim": 2, "n": 4096, "seed": 0},
           "net": {"name": "mlp", "dim": 2, "width": 64, "depth": 2},
           "path": "flow",
           "loss": {"prediction": "velocity", "time_sampler": "logit_normal"},
           "train": {"steps": 300, "batch_size": 256, "lr": 3e-3, "ema_half_life": 20000.0, "progress": False,
                     "log_every": 50, "out_dir": str(tmp_path / "run"), **train}}
    f = tmp_path / "run.json"
    f.write_text(json.dumps(cfg))
    return f


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("train", "sample", "list"):
        assert cmd in out


def test_train_then_sample_round_trip(tmp_path, capsys):
    f = _config(tmp_path)
    assert cli.main(["train", str(f), "train.steps=300", "net.width=64"]) == 0
    run = tmp_path / "run"
    saved = json.loads((run / "run_config.json").read_text())
    assert saved["train"]["steps"] == 300 and saved["net"]["width"] == 64
    out = tmp_path / "s.safetensors"
    assert cli.main(["sample", str(run), "--num", "2000", "--steps", "10", "--batch-size", "700",
                     "--out", str(out), "--plot", str(tmp_path / "s.png")]) == 0
    x = load_tensors(out)["samples"]
    assert x.shape == (2000, 2) and torch.isfinite(x).all()
    assert (tmp_path / "s.png").stat().st_size > 1000
    gmm = analytic.ring_mixture(2)
    exact = gmm.sample(2000, torch.Generator().manual_seed(1)).float()
    g = torch.Generator().manual_seed(2)
    sw_model = sliced_wasserstein(x, exact, generator=g)
    sw_noise = sliced_wasserstein(torch.randn(2000, 2) * exact.std(0), exact, generator=torch.Generator().manual_seed(2))
    assert sw_model < 0.5 * sw_noise       # the trained model learned the ring, not a blob
    # the same command with the same seed gives the same samples, whatever the batch size
    out2 = tmp_path / "s2.safetensors"
    assert cli.main(["sample", str(run), "--num", "2000", "--steps", "10", "--batch-size", "700",
                     "--out", str(out2)]) == 0
    assert torch.equal(load_tensors(out2)["samples"], x)


@pytest.mark.parametrize("args, message", [
    (["train", "missing.json"], "does not exist"),
    (["train", "{cfg}", "train.steps"], "KEY=VALUE"),
    (["train", "{cfg}", "nosection.x=1"], "SECTION.FIELD"),
    (["train", "{cfg}", "train.bogus=1"], "bad train config"),
    (["train", "{cfg}", "data.source=\"imagenet\""], "unknown data source"),
    (["train", "{cfg}", "net.name=\"nonet\""], "unknown network"),
    (["sample", "{tmp}/nothing"], ""),
])
def test_bad_input_gives_clear_errors(tmp_path, capsys, args, message):
    f = _config(tmp_path, steps=1)
    args = [a.format(cfg=f, tmp=tmp_path) for a in args]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"polydiff {args[0]}: error:") and message in err


def test_config_files_json_and_toml(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("a: 1")
    with pytest.raises(ValueError, match=r"\.json or \.toml"):
        cli.read_config(str(bad))
    t = tmp_path / "x.toml"
    t.write_text('[train]\nsteps = 5\n[net]\nname = "mlp"\ndim = 2\n')
    assert cli.read_config(str(t)) == {"train": {"steps": 5}, "net": {"name": "mlp", "dim": 2}}
    t.write_text('[train\n')
    with pytest.raises(ValueError, match="malformed TOML"):
        cli.read_config(str(t))
    j = tmp_path / "x.json"
    j.write_text('{"trian": {}}')
    with pytest.raises(ValueError, match="unknown section"):
        cli.read_config(str(j))


def test_list_names():
    assert "dpmpp_2m" in cli.list_names("solvers")
    assert "mlp" in cli.list_names("nets")
    assert "first_hitting" in cli.list_names("discrete")
    with pytest.raises(ValueError, match="valid"):
        cli.list_names("colors")


# ---------------------------------------------------------------- domain training configs
CONFIG_DIR = __import__("pathlib").Path(cli.__file__).resolve().parent / "configs"


def test_domain_argv_spells_every_kind_of_value():
    cfg = {"task": "audio.tts", "args": {"corpus": "c", "minutes": 1.5, "quiet": True, "resume": False,
                                         "init": None, "babble": ["a", "b"], "config": {"hidden": 64},
                                         "checkpoint_minutes": 2}}
    assert cli.domain_argv(cfg) == ["--corpus", "c", "--minutes", "1.5", "--quiet", "--babble", "a", "b",
                                    "--config", '{"hidden": 64}', "--checkpoint-minutes", "2"]


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIG_DIR.glob("*.toml")))
def test_shipped_domain_configs_parse_with_their_training_scripts(name):
    import importlib
    cfg = cli.read_config(str(CONFIG_DIR / name))
    if "task" not in cfg:
        assert {"data", "net", "train"} <= set(cfg)
        return
    assert set(cfg) == {"task", "args"}
    module = importlib.import_module(cli.DOMAIN_TRAINERS[cfg["task"]])
    parsed = vars(module.build_parser().parse_args(cli.domain_argv(cfg)))
    for key, value in cfg["args"].items():   # every option reached the script with its value
        got = parsed[key]
        want = json.dumps(value) if isinstance(value, dict) else value
        assert got == want or (isinstance(got, float) and got == float(want)), (key, got, want)


def test_domain_config_errors_are_clear(tmp_path, capsys):
    f = tmp_path / "bad.json"
    for cfg, message in (({"task": "audio.nope", "args": {}}, "unknown training task 'audio.nope'"),
                         ({"task": "audio.tts", "args": {}, "net": {}}, "takes only 'task' and 'args'"),
                         ({"task": "audio.tts", "args": {"no_such_option": 1}}, "rejected the options"),
                         ({"args": {"out": "x"}, "data": {}, "net": {}, "train": {}}, "'args' belongs to a domain")):
        f.write_text(json.dumps(cfg))
        assert cli.main(["train", str(f)]) == 2
        assert message in capsys.readouterr().err


def test_train_dispatches_a_domain_config_to_its_script(tmp_path):
    from polydiff.domains.audio import corpus, tts
    root = corpus.build_corpus(tmp_path / "c", voice="rms", n=3, seed=1, progress=False)
    cfg = {"task": "audio.tts", "args": {"corpus": str(root), "out": str(tmp_path / "run"), "steps": 4,
                                         "batch": 2, "quiet": True, "lr": 1e-3, "warmup": 1, "log_every": 1,
                                         "schedule": "cosine", "min_lr": 1e-4, "keep_checkpoints": True,
                                         "config": {"hidden": 32, "heads": 2, "ffn": 64, "dur_filters": 32}}}
    f = tmp_path / "tts.json"
    f.write_text(json.dumps(cfg))
    assert cli.main(["train", str(f), "args.seed=3"]) == 0
    model = tts.load(tmp_path / "run")
    assert model.config.hidden == 32
    assert json.loads((tmp_path / "run" / "progress.json").read_text())["step"] == 4
    # cosine decay over the 4-step budget: step k runs at p = (k - 1) / 4 of it
    lrs = [float(line.split(" lr ")[1].split()[0]) for line in (tmp_path / "run" / "train.log").read_text().splitlines()
           if line.startswith("step ")]
    expect = [1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert lrs == pytest.approx(expect, rel=1e-2)
    assert tts.load(tmp_path / "run" / "step-000004").config.hidden == 32        # --keep-checkpoints
