"""Train the EDM 3-D molecule model on QM9 with hydrogens (CPU-friendly).

    nice -n 5 nohup python -m polydiff.domains.molecules.train_edm \
        --out domains/molecules/weights/qm9-3d --minutes 60 --threads 1 > train_edm.log 2>&1 &

Steps: QM9 train (EDM's split, 100 000 molecules with H and DFT coordinates; ``data.load_qm9``) is
grouped by atom count; every batch holds molecules of one size (bucketing: no padding work, and each
atom count appears as often as in the data). Positions are centred, types one-hot x 0.25
(``EDMModel.encode``). The eps loss of ``EDMModel.loss`` (EDM's L_simple on the CoM-free noise) is
minimised with AdamW (warm-up, cosine decay, gradient clipping) and an EMA of the weights
(``core.training.ema.EMA``; EDM uses an EMA of 0.999 per step). Every ``--save-every`` steps the EMA network is
exported to ``--out`` (``config.json`` + ``model.safetensors``, with the step, wall time and loss) and a
line is added to ``--out/log.jsonl``; ``--minutes`` stops at a wall-clock budget (after an export).
``--init FOLDER`` continues from a saved model's weights (a fresh optimizer and schedule).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from polydiff.core.training.schedule import lr_at
from polydiff.core.training.step import gradient_step


def size_buckets(ds) -> Dict[int, Dict[str, np.ndarray]]:
    """QM9 molecules grouped by atom count: {n: {"pos": (M_n, n, 3) float32, "types": (M_n, n) int64}}."""
    counts = ds.num_atoms()
    out = {}
    for n in np.unique(counts).tolist():
        rows = np.nonzero(counts == n)[0]
        idx = ds.offsets[rows][:, None] + np.arange(n)[None, :]
        out[int(n)] = {"pos": ds.positions[idx].astype(np.float32), "types": ds.types[idx].astype(np.int64)}
    return out


def epoch_batches(buckets: Dict[int, Dict[str, np.ndarray]], batch: int, gen: torch.Generator) -> List[tuple]:
    """(n, row indices) batches covering every molecule once, each of one atom count, in random order."""
    chunks = []
    for n, b in buckets.items():
        perm = torch.randperm(len(b["pos"]), generator=gen)
        chunks.extend((n, perm[k:k + batch]) for k in range(0, len(perm), batch))
    order = torch.randperm(len(chunks), generator=gen).tolist()
    return [chunks[i] for i in order]


def batch_stream(buckets: Dict[int, Dict[str, np.ndarray]], batch: int,
                 gen: torch.Generator) -> Iterator[Tuple[int, Tensor, List[Tuple[Tensor, Tensor]]]]:
    """Endless (n, row indices, point sets) batches, epoch after epoch of :func:`epoch_batches`; a new
    epoch is drawn from ``gen`` only when the previous one is used up."""
    batches: List[tuple] = []
    while True:
        if not batches:
            batches = epoch_batches(buckets, batch, gen)
        n, rows = batches.pop()
        b, r = buckets[n], rows.numpy()
        yield n, rows, list(zip(torch.from_numpy(b["pos"][r]), torch.from_numpy(b["types"][r])))


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (also read by ``polydiff train`` configs)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for config.json, model.safetensors and log.jsonl")
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--minutes", type=float, default=0.0, help="stop after this wall-clock budget (0: no limit)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=96)
    ap.add_argument("--ema-half-life", type=float, default=50_000.0, help="in samples")
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--molecules", type=int, default=0, help="use only this many training molecules (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--property", default=None,
                    help="train a property predictor for guidance instead (a QM9 property name, e.g. alpha)")
    ap.add_argument("--split", default="train", help="QM9 split to train on (e.g. train_first_half for a predictor)")
    ap.add_argument("--init", default=None, help="start from the weights of a saved EDM model folder (same "
                                                 "architecture; a fresh optimizer and learning-rate schedule)")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.save_every < 1 or args.lr <= 0 or args.molecules < 0:
        raise ValueError("--steps, --batch, --save-every must be >= 1, --lr > 0 and --molecules >= 0")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)            # the network initialisation; batches and noise use their own generator
    if args.property is not None:
        return train_property(args)

    from polydiff.core.training.ema import EMA
    from . import data
    from .edm import EDMModel, remove_mean

    t0 = time.time()
    ds = data.load_qm9(args.split, args.cache_dir)
    if args.molecules:
        ds = ds.subset(np.arange(min(args.molecules, len(ds))))
    counts = ds.num_atoms()
    sizes = np.bincount(counts, minlength=int(counts.max()) + 1).astype(np.float64)
    buckets = size_buckets(ds)
    model = EDMModel(sizes.tolist(), ds.elements, layers=args.layers, hidden=args.hidden)
    if args.init:
        init = EDMModel.load(args.init)
        if init.arch != model.arch or init.elements != model.elements:
            raise ValueError(f"--init {args.init}: architecture {init.arch} differs from this run's {model.arch}")
        model.net.load_state_dict(init.net.state_dict())
    n_params = sum(p.numel() for p in model.net.parameters())
    print(f"{len(ds)} molecules, {len(buckets)} sizes (max {model.n_max} atoms), {n_params} parameters; "
          f"data ready in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)

    loss_fn = model.loss()
    net = model.net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-12)
    ema = EMA(net, args.ema_half_life, rampup=0.05)
    gen = torch.Generator().manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "log.jsonl", "a")
    t_train = time.time()
    recent: List[float] = []

    def export(step: int) -> None:
        row = {"step": step, "train_seconds": round(time.time() - t_train, 1),
               "loss": float(np.mean(recent)) if recent else None}
        snap = EDMModel(sizes.tolist(), ds.elements, net=ema.module, **model.arch)
        extra = {"train": {**row, "molecules": len(ds), "batch": args.batch, "lr": args.lr, "warmup": args.warmup,
                           "steps_planned": args.steps, "minutes": args.minutes, "ema_half_life": args.ema_half_life,
                           "seed": args.seed, "parameters": n_params, "threads": args.threads,
                           "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s)"}}
        snap.save(out, extra=extra)
        log.write(json.dumps(row) + "\n")
        log.flush()
        print(json.dumps(row), file=sys.stderr, flush=True)
        recent.clear()

    step, stream = 0, batch_stream(buckets, args.batch, gen)
    while step < args.steps:
        n, rows, pts = next(stream)
        z0, mask = model.encode(pts, n)
        t = loss_fn.time_sampler(z0.shape[0], model.path, gen)
        eps = torch.randn(z0.shape, generator=gen)
        eps = remove_mean(eps, mask)
        loss = loss_fn.loss_at(net, z0, t, eps, mask=mask).mean()
        gradient_step(opt, loss, step=step, lr=lr_at(step, args.lr, args.steps, args.warmup, "cosine", args.lr / 20))
        step += 1
        ema.update(net, step * args.batch, args.batch)
        recent.append(float(loss.detach()))
        over = bool(args.minutes) and time.time() - t_train > 60 * args.minutes
        if step % args.save_every == 0 or step == args.steps or over:
            export(step)
        if over:
            print(f"wall-clock budget of {args.minutes} min reached at step {step}", file=sys.stderr)
            break
    log.close()
    print(f"done: {step} steps in {time.time() - t_train:.0f} s of training", file=sys.stderr)
    return 0


def train_property(args: argparse.Namespace) -> int:
    """Fit a ``PropertyPredictor`` (MSE on the standardised property, AdamW, cosine schedule) on clean
    QM9 geometries of ``--split``; exports to ``--out`` with its MAE on 2 000 molecules of the valid split."""
    from . import data
    from .edm import EDMModel, PropertyPredictor

    ds = data.load_qm9(args.split, args.cache_dir)
    if args.property not in ds.properties:
        raise ValueError(f"unknown QM9 property {args.property!r}; valid: {', '.join(sorted(ds.properties))}")
    if args.molecules:
        ds = ds.subset(np.arange(min(args.molecules, len(ds))))
    y_all = ds.properties[args.property]
    enc = EDMModel([0, 1], ds.elements)           # only for its encoding of point sets
    net = PropertyPredictor(len(ds.elements), args.property, args.hidden, args.layers, float(y_all.mean()),
                            float(y_all.std()))
    buckets = size_buckets(ds)
    counts = ds.num_atoms()
    rows_of = {n: np.nonzero(counts == n)[0] for n in buckets}
    va = data.load_qm9("valid", args.cache_dir).subset(np.arange(2000))
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-12)
    gen = torch.Generator().manual_seed(args.seed)
    out = Path(args.out)
    t_train, step, recent = time.time(), 0, []

    def mae() -> float:
        net.eval()
        err = []
        with torch.no_grad():
            for i in range(0, len(va), 100):
                rows = range(i, min(i + 100, len(va)))
                z, mask = enc.encode([va.molecule(j) for j in rows])      # padded; masked atoms do not count
                err.extend((net(z, mask).double() - torch.as_tensor(va.properties[args.property][rows.start:rows.stop],
                                                                      dtype=torch.float64)).abs().tolist())
        net.train()
        return float(np.mean(err))

    def export() -> None:
        row = {"step": step, "train_seconds": round(time.time() - t_train, 1), "loss": float(np.mean(recent)),
               "valid_mae": mae(), "split": args.split, "molecules": len(ds)}
        net.save(out, extra={"train": row})
        print(json.dumps(row), file=sys.stderr, flush=True)
        recent.clear()

    stream = batch_stream(buckets, args.batch, gen)
    while step < args.steps:
        n, rows, pts = next(stream)
        z, mask = enc.encode(pts, n)
        y = torch.as_tensor((y_all[rows_of[n][rows.numpy()]] - net.mean) / net.std, dtype=torch.float32)
        loss = (net.normalised(z, mask) - y).square().mean()
        gradient_step(opt, loss, step=step, lr=lr_at(step, args.lr, args.steps, args.warmup, "cosine", args.lr / 20))
        step += 1
        recent.append(float(loss.detach()))
        over = bool(args.minutes) and time.time() - t_train > 60 * args.minutes
        if step % args.save_every == 0 or step == args.steps or over:
            export()
        if over:
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
