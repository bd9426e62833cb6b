"""The ``polydiff`` command line: train a model from a config file, sample from a saved model, list names.

    polydiff train CONFIG [KEY=VALUE ...]    # e.g. polydiff train ring.toml train.steps=500 net.width=64
    polydiff sample MODEL_DIR --num 1000 --solver dpmpp_2m --steps 20 --out samples.safetensors
    polydiff list [solvers|paths|nets|discrete]
    polydiff --help

A run config is a JSON or TOML file (TOML needs Python >= 3.11) with the sections

    data   where the training tensor comes from:
             {"source": "ring_mixture", "dim": 2, "n": 20000, "seed": 0}  exact samples of analytic.ring_mixture
             {"source": "file", "file": "x.safetensors", "key": "x0"}    a safetensors tensor (or .npy, no pickle)
    net    a network config for polydiff.core.nets.build ({"name": "mlp", "dim": 2, ...})
    path   a Gaussian path: a short name ("flow", "vp", ...) or a path config ({"name": "VP", ...})
    process  instead of path, a discrete process config ({"name": "masked", "vocab_size": 27, ...})
    loss   Gaussian: {"prediction": "eps", "weighting": "uniform", "time_sampler": "uniform"} (DiffusionLoss);
           discrete: {"kind": "elbo" | "d3pm" | "ce", ...} (ContinuousELBO, D3PMLoss, CrossEntropyLoss)
    train  polydiff.core.training.TrainConfig fields (steps, batch_size, lr, out_dir, ...)

A domain model (speech, molecules) has its own training script; its config names it instead:

    task   one of DOMAIN_TRAINERS ("audio.tts", "audio.enhance", "audio.vocoder", "molecules.graph",
           "molecules.selfies", "molecules.edm")
    args   that script's command-line options by name ({"corpus": "data/LJSpeech-1.1", "minutes": 600});
           true gives a bare flag, false or null leaves the option out, a list gives several values

e.g. ``polydiff train tasks/configs/tts_ljspeech.toml args.corpus=/data/LJSpeech-1.1``.

KEY=VALUE overrides set any field by its dotted name; VALUE is read as JSON when it parses (numbers,
true/false, null, lists) and as a string otherwise. The resolved config is written to
``<out_dir>/run_config.json`` beside the checkpoints, so every run can be repeated with
``polydiff train <out_dir>/run_config.json``. Under ``torchrun --nproc_per_node N`` both ``train`` and
``sample`` run data-parallel (samples are sharded by index, so the result does not depend on N).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path as FsPath
from typing import Any, Dict, List, Optional, Sequence

import torch

SECTIONS = ("data", "net", "path", "process", "loss", "train", "task", "args")
# domain training scripts a run config can name with ``task`` (each module has main(argv) -> int)
DOMAIN_TRAINERS = {
    "audio.tts": "polydiff.domains.audio.train_tts",
    "audio.enhance": "polydiff.domains.audio.train_enhance",
    "audio.vocoder": "polydiff.domains.audio.train_vocoder",
    "molecules.graph": "polydiff.domains.molecules.train_graph",
    "molecules.selfies": "polydiff.domains.molecules.train_selfies",
    "molecules.edm": "polydiff.domains.molecules.train_edm",
}


# ---------------------------------------------------------------- config files
def read_config(file: str) -> Dict[str, Any]:
    """A run config from a .json or .toml file, with a clear error for anything else."""
    p = FsPath(file)
    if not p.is_file():
        raise ValueError(f"config file {file!r} does not exist")
    text = p.read_text()
    if p.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # pragma: no cover - Python 3.10
            raise ValueError("reading TOML needs Python >= 3.11; write the config as JSON") from None
        try:
            cfg = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{file}: malformed TOML: {e}") from None
    elif p.suffix == ".json":
        try:
            cfg = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: malformed JSON: {e}") from None
    else:
        raise ValueError(f"config file {file!r} must end in .json or .toml")
    if not isinstance(cfg, dict):
        raise ValueError(f"{file}: a run config is a mapping of sections {SECTIONS}")
    unknown = sorted(set(cfg) - set(SECTIONS))
    if unknown:
        raise ValueError(f"{file}: unknown section(s) {unknown}; valid: {list(SECTIONS)}")
    return cfg


def apply_overrides(cfg: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Set dotted KEY=VALUE overrides (VALUE parsed as JSON when possible) in a copy of ``cfg``."""
    cfg = json.loads(json.dumps(cfg))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not KEY=VALUE (e.g. train.steps=500)")
        key, raw = item.split("=", 1)
        parts = key.split(".")
        if len(parts) < 2 or parts[0] not in SECTIONS or not all(parts):
            raise ValueError(f"override key {key!r} must be SECTION.FIELD with SECTION in {list(SECTIONS)}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = cfg
        for p in parts[:-1]:
            if not isinstance(node.setdefault(p, {}), dict):
                raise ValueError(f"override {key!r}: {p!r} is not a section")
            node = node[p]
        node[parts[-1]] = value
    return cfg


# ---------------------------------------------------------------- building a run
def build_data(spec: Dict[str, Any]) -> torch.Tensor:
    """The training tensor named by the ``data`` section."""
    spec = dict(spec)
    source = spec.pop("source", None)
    if source == "ring_mixture":
        from polydiff.core import analytic
        dim, n, seed = int(spec.pop("dim", 2)), int(spec.pop("n", 20000)), int(spec.pop("seed", 0))
        if spec:
            raise ValueError(f"data source 'ring_mixture' takes dim, n, seed; got also {sorted(spec)}")
        return analytic.ring_mixture(dim).sample(n, torch.Generator().manual_seed(seed)).float()
    if source == "file":
        file, key = spec.pop("file", None), spec.pop("key", None)
        if spec or not isinstance(file, str):
            raise ValueError("data source 'file' takes file (and key for .safetensors)")
        p = FsPath(file)
        if not p.is_file():
            raise ValueError(f"data file {file!r} does not exist")
        if p.suffix == ".npy":
            import numpy as np
            try:
                return torch.from_numpy(np.load(p, allow_pickle=False))
            except ValueError as e:
                raise ValueError(f"{file}: not a plain .npy array ({e})") from None
        if p.suffix == ".safetensors":
            from polydiff.core.training.files import load_tensors
            tensors = load_tensors(p)
            if key is None and len(tensors) == 1:
                key = next(iter(tensors))
            if key not in tensors:
                raise ValueError(f"{file}: no tensor {key!r}; it holds {sorted(tensors)}")
            return tensors[key]
        raise ValueError(f"data file {file!r} must be .safetensors or .npy (no pickle formats)")
    raise ValueError(f"unknown data source {source!r}; valid: 'ring_mixture', 'file'")


def build_path(cfg: Dict[str, Any]):
    """The Gaussian path or discrete process of a run config."""
    if ("path" in cfg) == ("process" in cfg):
        raise ValueError("a run config needs exactly one of the sections 'path' (Gaussian) and 'process' (discrete)")
    if "path" in cfg:
        from polydiff.core import paths
        spec = cfg["path"]
        return paths.get_path(spec) if isinstance(spec, str) else paths.path_from_config(spec)
    from polydiff.core import discrete
    return discrete.from_config(cfg["process"])


def build_loss(spec: Dict[str, Any], path: Any):
    """The training loss: DiffusionLoss on a Gaussian path, a discrete loss on a process."""
    spec = dict(spec or {})
    from polydiff.core import paths
    if isinstance(path, paths.Path):
        from polydiff.core.losses import DiffusionLoss
        if "kind" in spec and spec.pop("kind") != "diffusion":
            raise ValueError("on a Gaussian path the loss kind is 'diffusion'")
        try:
            return DiffusionLoss(path, **spec)
        except TypeError as e:
            raise ValueError(f"bad loss config: {e}") from None
    from polydiff.core import discrete
    kinds = {"elbo": discrete.ContinuousELBO, "d3pm": discrete.D3PMLoss, "ce": discrete.CrossEntropyLoss}
    kind = spec.pop("kind", "elbo")
    if kind not in kinds:
        raise ValueError(f"unknown discrete loss kind {kind!r}; valid: {sorted(kinds)}")
    try:
        return kinds[kind](path, **spec)
    except TypeError as e:
        raise ValueError(f"bad loss config: {e}") from None


def domain_argv(cfg: Dict[str, Any]) -> List[str]:
    """The command line of a domain training script from a config's ``args`` mapping."""
    spec = cfg.get("args", {})
    if not isinstance(spec, dict):
        raise ValueError("a run config's 'args' must be a mapping of option names to values")
    argv: List[str] = []
    for key, value in spec.items():
        flag = "--" + str(key).replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            argv += [flag, *[str(v) for v in value]]
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        else:
            argv += [flag, str(value)]
    return argv


def train_domain(cfg: Dict[str, Any]) -> int:
    """Run the domain training script that ``cfg["task"]`` names with the options of ``cfg["args"]``."""
    import importlib
    task = cfg.get("task")
    if task not in DOMAIN_TRAINERS:
        raise ValueError(f"unknown training task {task!r}; valid: {sorted(DOMAIN_TRAINERS)}")
    other = sorted(set(cfg) - {"task", "args"})
    if other:
        raise ValueError(f"a domain run config (task = {task!r}) takes only 'task' and 'args', not {other}")
    try:
        module = importlib.import_module(DOMAIN_TRAINERS[task])
    except ModuleNotFoundError as e:
        raise ValueError(f"training task {task!r} needs {e.name!r}, which is not installed") from None
    try:
        return int(module.main(domain_argv(cfg)) or 0)
    except SystemExit as e:       # argparse rejected an option: its message is already printed
        raise ValueError(f"training task {task!r} rejected the options in 'args' (exit {e.code})") from None


def train(cfg: Dict[str, Any]) -> FsPath:
    """Run a training job from a resolved config; returns the run directory."""
    from polydiff.core import nets
    from polydiff.core.training import TrainConfig, Trainer, is_main
    from polydiff.core.training.files import write_json
    if "args" in cfg:
        raise ValueError("'args' belongs to a domain run config: name its training script with task = ...")
    for section in ("data", "net", "train"):
        if section not in cfg:
            raise ValueError(f"a run config needs a {section!r} section")
    tcfg = dict(cfg["train"])
    if not tcfg.get("out_dir"):
        raise ValueError("train.out_dir must be set (where checkpoints and the model go)")
    try:
        config = TrainConfig(**tcfg)
    except TypeError as e:
        raise ValueError(f"bad train config: {e}") from None
    path = build_path(cfg)
    loss = build_loss(cfg.get("loss", {}), path)
    data = build_data(cfg["data"])
    torch.manual_seed(config.seed)          # the network's initial weights
    net = nets.build(cfg["net"])
    trainer = Trainer(net, loss, data, config)
    out = FsPath(config.out_dir)
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "run_config.json", cfg)
    trainer.resume()
    trainer.fit()
    return out


def sample_model(model_dir: str, num: int, *, solver: Optional[str], steps: Optional[int], grid: str,
                 seed: int, batch_size: int, shape: Optional[List[int]], out: Optional[str],
                 plot: Optional[str], progress: bool = True) -> torch.Tensor:
    """Draw ``num`` samples from a saved model (sharded by index under torchrun); returns this rank's share."""
    from polydiff.core import sample
    from polydiff.core.training import gather_samples, is_main, load, sharded_sample, barrier
    from polydiff.core.training.checkpoint import _read_model_config, _resolve_model
    if num < 1 or batch_size < 1:
        raise ValueError(f"--num and --batch-size must be >= 1, got {num}, {batch_size}")
    D = load(model_dir)
    cfg = _read_model_config(_resolve_model(FsPath(model_dir), True)[0])
    shape = shape or cfg.get("extra", {}).get("sample_shape")
    if not shape:
        raise ValueError(f"{model_dir} does not record the sample shape; pass --shape (e.g. --shape 2)")
    discrete = cfg["process"]["kind"] == "discrete"
    solver = solver or ("first_hitting" if discrete else "dpmpp_2m")

    def draw(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = idx.numel()
        with torch.no_grad():
            if discrete:
                x1 = D.process.prior_sample((n, *shape), generator=g)
                return sample(D, x1, path=D.process, solver=solver, steps=steps, generator=g)
            noise = torch.randn((n, *shape), generator=g)
            return sample(D, noise, path=D.path, solver=solver, steps=steps, grid=grid, generator=g)

    tmp = FsPath(out).with_suffix(".parts") if out else None
    _, x = sharded_sample(draw, num, batch_size, tmp, seed=seed, progress=progress)
    barrier()
    if tmp is not None and is_main():
        from polydiff.core.training.files import atomic_save_tensors
        x = gather_samples(tmp, num)
        atomic_save_tensors(out, {"samples": x.contiguous()})
        import shutil
        shutil.rmtree(tmp)            # the per-batch files only serve to resume an interrupted job
        if plot:
            _plot(x, plot, title=f"{num} samples, {solver}, {steps or 'default'} steps")
    return x


def _plot(x: torch.Tensor, file: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = x.float().reshape(x.shape[0], -1)
    fig, ax = plt.subplots(figsize=(5, 5))
    if x.shape[1] >= 2:
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
        ax.set_xlabel("x[0]"), ax.set_ylabel("x[1]")
    else:
        ax.hist(x[:, 0].numpy(), bins=100)
    ax.set_title(title)
    fig.savefig(file, dpi=120, bbox_inches="tight")
    plt.close(fig)


def list_names(what: str) -> str:
    """A listing of the registered names of one kind."""
    if what == "solvers":
        from polydiff.core import solvers
        return "\n".join(f"{n:<16} nfe/step {i.nfe_per_step}  order {i.order}  {i.summary}"
                         for n, i in solvers().items())
    if what == "paths":
        from polydiff.core import paths
        return "\n".join(sorted(paths.PATH_CLASSES)) + "\nshort names: " + ", ".join(sorted(paths._PATHS))
    if what == "nets":
        from polydiff.core import nets
        return "\n".join(sorted(nets.NETS))
    if what == "discrete":
        from polydiff.core import discrete
        return "\n".join(f"{n:<16} {i.summary}" if hasattr(i, "summary") else n
                         for n, i in discrete.solvers().items())
    raise ValueError(f"unknown listing {what!r}; valid: solvers, paths, nets, discrete")


# ---------------------------------------------------------------- entry point
def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="polydiff", description="polydiff: diffusion models across data types.",
                                 epilog="Each command has its own --help. Under torchrun, train and sample run "
                                        "data-parallel.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    tr = sub.add_parser("train", help="train a model from a JSON/TOML run config",
                        description="Train a model from a run config with the sections data, net, path (or "
                                    "process), loss and train; see `python -m polydiff.tasks.cli` docs.")
    tr.add_argument("config", help="run config (.json or .toml)")
    tr.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.steps=500")
    tr.add_argument("--threads", type=int, default=None, help="torch CPU threads (set it on shared machines)")
    sa = sub.add_parser("sample", help="draw samples from a saved model directory")
    sa.add_argument("model_dir", help="a saved model directory or a training run's out_dir")
    sa.add_argument("--num", type=int, default=1000, help="number of samples (default 1000)")
    sa.add_argument("--solver", default=None, help="solver name (default dpmpp_2m; first_hitting for discrete)")
    sa.add_argument("--steps", type=int, default=None, help="solver steps")
    sa.add_argument("--grid", default="logsnr", help="time grid for Gaussian paths (default logsnr)")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--batch-size", type=int, default=1000)
    sa.add_argument("--shape", type=int, nargs="*", default=None, help="sample shape without the batch dim")
    sa.add_argument("--out", default="samples.safetensors", help="output file (safetensors, key 'samples')")
    sa.add_argument("--plot", default=None, help="also write a scatter plot / histogram (PNG)")
    sa.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    li = sub.add_parser("list", help="list registered names")
    li.add_argument("what", nargs="?", default="solvers", choices=["solvers", "paths", "nets", "discrete"])
    add_domain_commands(sub)
    return ap


# Domain task modules (polydiff.tasks.<module>) each define ``add_commands(verbs)``: ``verbs`` maps a verb
# ("generate", "restore", "evaluate", "data", or a top-level command such as "speak") to a callable
# ``add(name, **kwargs) -> ArgumentParser``; every parser they add sets ``func=handler(args) -> int``.
# A module whose optional dependencies are missing is skipped, so the core CLI always works.
DOMAIN_TASK_MODULES = ("images", "audio", "molecules")
VERBS = {"generate": "generate samples with a domain's default model",
         "restore": "solve an inverse problem (restoration) with a domain's default prior",
         "evaluate": "evaluate a file of samples with a domain's metrics",
         "data": "build or prepare a domain's datasets"}


def add_domain_commands(sub: "argparse._SubParsersAction") -> None:
    """Add the domain verbs (``polydiff generate images ...``) and domain top-level commands."""
    import importlib
    verb_subs: Dict[str, Any] = {}

    def verb_adder(verb: str):
        def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
            if verb not in verb_subs:
                vp = sub.add_parser(verb, help=VERBS[verb])
                verb_subs[verb] = vp.add_subparsers(dest="domain", metavar="DOMAIN", required=True)
            return verb_subs[verb].add_parser(name, **kwargs)
        return add

    def top_adder(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, **kwargs)

    class Verbs(dict):
        def __missing__(self, key: str):
            return verb_adder(key) if key in VERBS else top_adder

    for module in DOMAIN_TASK_MODULES:
        try:
            mod = importlib.import_module(f"polydiff.tasks.{module}")
        except ModuleNotFoundError as e:     # the domain's optional dependencies are not installed
            if e.name is None or e.name.startswith("polydiff") and e.name != f"polydiff.tasks.{module}":
                raise
            continue
        mod.add_commands(Verbs())


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.command is None:
        ap.print_help()
        return 0
    try:
        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
        if args.command == "train":
            cfg = apply_overrides(read_config(args.config), args.overrides)
            if "task" in cfg:
                return train_domain(cfg)
            out = train(cfg)
            print(f"trained; model in {out / 'model'}")
        elif args.command == "sample":
            sample_model(args.model_dir, args.num, solver=args.solver, steps=args.steps, grid=args.grid,
                         seed=args.seed, batch_size=args.batch_size, shape=args.shape, out=args.out,
                         plot=args.plot)
            print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
        elif args.command == "list":
            print(list_names(args.what))
        elif hasattr(args, "func"):
            return int(args.func(args) or 0)
    except ValueError as e:
        print(f"polydiff {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
