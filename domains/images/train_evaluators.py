"""Train and save the digits evaluator networks (feature network and independent classifier).

    python -m polydiff.domains.images.train_evaluators [--epochs 40] [--out DIR]

Both train on the digits train split only (1 437 images; the 360 test digits are used once, at the
end, to report accuracy), on CPU with one thread, with light augmentation: random shifts of up to one
pixel (background -1 fills in), so that generated digits slightly off the data's centring are still
judged fairly. The feature network (seed 0) and the classifier (seed 1) differ in architecture and
seed (see ``evaluate.py``). Weights go to ``weights/evaluators/`` as safetensors with their test
accuracy in the metadata; README.md there records the command, time, accuracies and the real-vs-real
reference distances.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import evaluate
from .data import load_digits


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Shift each image by an integer offset in [-max_shift, max_shift] per axis, filling with -1."""
    if max_shift == 0:
        return x
    n, c, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, c, h, pad.shape[3])
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, c, h, w)
    return pad.gather(2, rows).gather(3, cols)


def accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    net.eval()
    with torch.no_grad():
        return float((net(x).argmax(1) == y).double().mean())


def train(net: nn.Module, x: Tensor, y: Tensor, epochs: int, seed: int, lr: float = 2e-3,
          batch_size: int = 64, max_shift: int = 1, weight_decay: float = 1e-4) -> nn.Module:
    """Cross-entropy training with AdamW, a cosine learning-rate decay and shift augmentation."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(x.shape[0] / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i:i + batch_size]
            xb = random_shift(x[idx], max_shift, g)
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    return net


def shifted_accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    """Mean test accuracy over the 8 one-pixel shifts (robustness to off-centre digits)."""
    accs = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dx == 0 and dy == 0:
                continue
            xs = F.pad(x, (1, 1, 1, 1), value=-1.0)[:, :, 1 + dy:1 + dy + x.shape[2], 1 + dx:1 + dx + x.shape[3]]
            accs.append(accuracy(net, xs, y))
    return sum(accs) / len(accs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--out", default=str(evaluate.WEIGHTS_DIR), help="output directory (default: shipped weights)")
    ap.add_argument("--no-readme", action="store_true", help="do not write README.md")
    ap.add_argument("--readme-only", action="store_true",
                    help="do not train: rewrite README.md from the saved networks' metadata")
    args = ap.parse_args(argv)
    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    torch.set_num_threads(1)
    x_tr, y_tr = load_digits("train")
    x_te, y_te = load_digits("test")
    results: Dict[str, Dict[str, float]] = {}
    for kind, seed in (("feature_net", 0), ("classifier", 1)):
        if args.readme_only:
            results[kind] = evaluate.load_network(kind, "digits", args.out).info
            continue
        torch.manual_seed(seed)
        net = evaluate.ARCHS[kind]()
        t0 = time.time()
        train(net, x_tr, y_tr, args.epochs, seed)
        info = {"test_accuracy": accuracy(net, x_te, y_te), "test_accuracy_shifted_1px": shifted_accuracy(net, x_te, y_te),
                "train_accuracy": accuracy(net, x_tr, y_tr), "epochs": args.epochs, "seed": seed,
                "train_seconds": round(time.time() - t0, 1),
                "params": sum(p.numel() for p in net.parameters())}
        path = evaluate.save_network(net, kind, "digits", args.out, info)
        results[kind] = info
        print(f"{kind}: {info} -> {path}", flush=True)
    ref = None
    if Path(args.out).resolve() == evaluate.WEIGHTS_DIR.resolve():
        evaluate.feature_net.cache_clear()
        evaluate.classifier.cache_clear()
        ref = evaluate.reference_distances()
        print(f"reference distances: {ref}", flush=True)
    if not args.no_readme:
        _write_readme(Path(args.out), results, ref)
    return 0


def _write_readme(out: Path, results: Dict[str, Dict[str, float]], ref: Optional[Dict[str, float]]) -> None:
    epochs = results["feature_net"]["epochs"]
    cmd = "python -m polydiff.domains.images.train_evaluators" + ("" if epochs == 40 else f" --epochs {epochs}")
    elapsed = sum(r["train_seconds"] for r in results.values())
    lines = ["# Digits evaluator networks", "",
             "Trained by `domains/images/train_evaluators.py` on the digits train split (1 437 images, 16x16,",
             "[-1, 1]) with random one-pixel shifts; the 360 test digits are used only for the numbers below.", "",
             f"Command: `{cmd}` (2-core x86_64 CPU, shared; `torch.set_num_threads(1)`; "
             f"torch {torch.__version__}); training time {elapsed:.0f} s in all.", "",
             "| file | architecture | params | seed | test acc. | test acc., 1-px shifts | train acc. | time |",
             "|---|---|---|---|---|---|---|---|"]
    arch = {"feature_net": "3 stages of 2x(3x3 conv+ReLU), avg-pool, 64-d global mean features, linear head",
            "classifier": "2x(5x5 conv+ReLU+max-pool), dropout, FC 640-100-10"}
    for kind, r in results.items():
        lines.append(f"| `{kind}_digits.safetensors` | {arch[kind]} | {r['params']} | {r['seed']} | "
                     f"{r['test_accuracy']:.4f} | {r['test_accuracy_shifted_1px']:.4f} | {r['train_accuracy']:.4f} | "
                     f"{r['train_seconds']:.0f} s |")
    if ref is not None:
        lines += ["", "Real-vs-real reference in the feature network's space (`evaluate.reference_distances()`):", "",
                  f"- Fréchet distance between two class-stratified halves of the train split ({ref['n_half']} / "
                  f"{ref['n_train'] - ref['n_half']}), mean ± std over {ref['splits']} splits: "
                  f"{ref['fd_halves']:.3f} ± {ref['fd_halves_std']:.3f}",
                  f"- Fréchet distance, train ({ref['n_train']}) vs test ({ref['n_test']}): {ref['fd_train_test']:.3f}",
                  f"- precision / recall (k=3), halves: {ref['precision_halves']:.4f} / {ref['recall_halves']:.4f}; "
                  f"test as real, train as generated: {ref['precision_train_test']:.4f} / {ref['recall_train_test']:.4f}"]
    (out / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
