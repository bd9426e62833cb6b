"""Train the SELFIES masked-diffusion model on MOSES (CPU-friendly).

    python -m polydiff.domains.molecules.train_selfies --out domains/molecules/weights/moses-selfies \
        --molecules 200000 --steps 6000 --minutes 40 --threads 1

Steps: a deterministic random subset of MOSES train (``--molecules``; ``0`` = all 1.58 M) is encoded
to SELFIES (cached, about 1 ms per molecule), the tokenizer's alphabet and the length L (longest string,
rounded up to a multiple of 4) are taken from it, and MDLM's continuous-time ELBO (Sahoo et al. 2024;
``discrete.ContinuousELBO`` with stratified times) is minimised by the core ``Trainer`` (AdamW, warm-up
and cosine decay, EMA of the weights). Every ``--save-every`` steps the EMA network is exported to
``--out`` (``config.json`` + ``model.safetensors``) with the step, wall time and loss, so an interrupted
run still leaves its latest model; ``--minutes`` stops the run at a wall-clock budget (after an export);
``--init FOLDER`` continues from a saved model's weights (a fresh optimizer and schedule), keeping its alphabet
and length: molecules of the new subset that it cannot encode are dropped, and their number is printed.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch


class _Budget(Exception):
    """Raised by the export hook when the wall-clock budget is spent."""


def encode_moses(n: int, seed: int = 0, cache_dir: Optional[str] = None, split: str = "train") -> List[str]:
    """SELFIES of ``n`` MOSES molecules drawn without replacement with ``seed`` (all when n = 0), cached."""
    import selfies as sf
    from . import data
    path = data._cache_path(cache_dir, f"moses_{split}_selfies_n{n}_seed{seed}_sf-{sf.__version__}.txt.gz")
    cached = data.read_cached_lines(path)
    if cached is not None:
        return cached
    smiles = data.load_moses(split)
    if n:
        if n > len(smiles):
            raise ValueError(f"--molecules {n} exceeds the {len(smiles)} MOSES {split} molecules")
        rows = np.sort(np.random.RandomState(seed).choice(len(smiles), n, replace=False))
        smiles = [smiles[i] for i in rows]
    out = []
    for k, s in enumerate(smiles):
        try:
            out.append(sf.encoder(s, strict=True))
        except sf.EncoderError:
            continue
        if k % 50_000 == 0:
            print(f"encoding SELFIES: {k}/{len(smiles)}", file=sys.stderr, flush=True)
    data.write_cached_lines(path, out)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (also read by ``polydiff train`` configs)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for config.json, model.safetensors and log.jsonl")
    ap.add_argument("--molecules", type=int, default=200_000, help="MOSES train molecules used (0: all)")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--minutes", type=float, default=0.0, help="stop after this wall-clock budget (0: no limit)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--schedule", default="cosine", choices=["cosine", "constant"])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ema-half-life", type=float, default=100_000.0, help="in samples")
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--init", default=None, help="start from the weights of a saved SELFIES model folder (same "
                                                 "alphabet, length and architecture; the optimizer starts afresh)")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)

    from polydiff.core import discrete
    from polydiff.core.training import TrainConfig, Trainer
    from .convert import SelfiesTokenizer
    from .selfies_model import SelfiesModel

    t_start = time.time()
    strings = encode_moses(args.molecules, args.seed, args.cache_dir)
    if args.init:
        # continue a saved model: keep its alphabet and length, and drop the strings it cannot encode
        init = SelfiesModel.load(args.init)
        tok, length = init.tokenizer, init.length
        symbols = [tok.tokens(s) for s in strings]
        keep = [k for k, r in enumerate(symbols) if len(r) <= length and all(t in tok.ids for t in r)]
        if len(keep) < len(strings):
            print(f"--init: {len(strings) - len(keep)} of {len(strings)} molecules dropped (longer than {length} "
                  f"symbols or outside the model's alphabet)", file=sys.stderr, flush=True)
        strings, symbols = [strings[k] for k in keep], [symbols[k] for k in keep]
        model = SelfiesModel(tok, length, hidden=args.hidden, depth=args.depth, heads=args.heads)
        if init.config() != model.config():
            raise ValueError(f"--init {args.init} has config {init.config()}, this run {model.config()} "
                             "(--hidden, --depth and --heads must match)")
        model.net.load_state_dict(init.net.state_dict())
    else:
        tok = SelfiesTokenizer.from_selfies(strings)
        symbols = [tok.tokens(s) for s in strings]
        length = int(math.ceil(max(len(r) for r in symbols) / 4) * 4)
        model = SelfiesModel(tok, length, hidden=args.hidden, depth=args.depth, heads=args.heads)
    lengths = np.array([len(r) for r in symbols])
    x = model.encode(strings)
    t_data = time.time() - t_start
    n_params = sum(p.numel() for p in model.net.parameters())
    print(f"{len(strings)} molecules, {len(tok)} symbols, length {length} (mean {lengths.mean():.1f}), "
          f"{n_params} parameters; data ready in {t_data:.0f} s", file=sys.stderr, flush=True)

    loss = discrete.ContinuousELBO(model.process, time_sampler="stratified")
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, warmup_steps=args.warmup,
                      schedule=args.schedule, min_lr=args.lr / 20, grad_clip=1.0, ema_half_life=args.ema_half_life,
                      ema_rampup=None, precision="fp32", progress=False, log_every=args.save_every,
                      eval_every=args.save_every, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "log.jsonl", "a")
    t_train = time.time()

    def export(trainer, step):
        recent = [l for _, l in trainer.history[-args.save_every:]]
        row = {"step": step, "train_seconds": round(time.time() - t_train, 1),
               "loss_nats_per_molecule": float(np.mean(recent)) if recent else None}
        ema = SelfiesModel(tok, length, hidden=args.hidden, depth=args.depth, heads=args.heads,
                           net=trainer.ema.module)
        ema.save(out, extra={"train": {**row, "molecules": len(strings), "batch": args.batch, "lr": args.lr,
                                       "steps_planned": args.steps, "seed": args.seed, "threads": args.threads,
                                       "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s)"}})
        log.write(json.dumps(row) + "\n")
        log.flush()
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.minutes and time.time() - t_train > 60 * args.minutes:
            raise _Budget
        return {}

    trainer = Trainer(model.net, loss, x, cfg, eval_fn=export)   # log_every = eval_every: history is current
    try:
        trainer.fit()
        if trainer.step % args.save_every:
            export(trainer, trainer.step)
    except _Budget:
        print(f"wall-clock budget of {args.minutes} min reached at step {trainer.step}", file=sys.stderr)
    log.close()
    print(f"done: {trainer.step} steps in {time.time() - t_train:.0f} s of training", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
