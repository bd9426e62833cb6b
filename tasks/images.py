"""Image task commands: ``polydiff generate images`` (and, later, ``polydiff restore images``).

    polydiff generate images --class 7 -n 64 --out grid.png            # a PNG grid of 64 sevens
    polydiff generate images -n 20 --out digits.safetensors --steps 30  # classes 0..9 in turn, as a tensor
    polydiff generate images --class 3 -n 16 --guidance 2 --solver heun --out threes.png

The model is the shipped default (``--model digits``) or any saved image model directory.
"""
from __future__ import annotations

import argparse
from pathlib import Path as FsPath
from typing import Any, Callable

import torch


def _model(spec: str) -> Any:
    from polydiff.domains.images.pretrained import MODELS, load_model, pretrained
    if spec in MODELS:
        return pretrained(spec)
    if FsPath(spec).is_dir():
        return load_model(spec)
    raise ValueError(f"unknown model {spec!r}; valid: {sorted(MODELS)} or a saved model directory")


def generate(args: argparse.Namespace) -> int:
    """Handler of ``polydiff generate images``."""
    from polydiff.domains.images.data import save_grid
    if args.n < 1:
        raise ValueError(f"-n must be >= 1, got {args.n}")
    out = FsPath(args.out)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".pt", ".safetensors"):
        raise ValueError(f"--out must end in .png (an image grid), .pt or .safetensors (the tensor), got {args.out!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = _model(args.model)
    if args.unconditional:
        if args.cls is not None:
            raise ValueError("--class and --unconditional exclude each other")
        labels = None
    elif args.cls is not None:
        labels = torch.full((args.n,), args.cls, dtype=torch.long)
    else:
        labels = torch.arange(args.n) % max(model.num_classes, 1) if model.num_classes else None
    if labels is not None:
        labels = model.check_labels(labels)
    g = torch.Generator().manual_seed(args.seed)
    x = model.generate(labels=labels, n=None if labels is not None else args.n, steps=args.steps,
                       solver=args.solver, grid=args.grid, guidance=args.guidance, generator=g)
    if suffix == ".png":
        save_grid(out, x, nrow=args.nrow, scale=args.scale)
    elif suffix == ".pt":
        torch.save({"images": x, "labels": labels}, out)
    else:
        from polydiff.core.training.files import atomic_save_tensors
        tensors = {"images": x.contiguous()}
        if labels is not None:
            tensors["labels"] = labels
        atomic_save_tensors(out, tensors)
    print(f"wrote {args.n} images {tuple(x.shape[1:])} to {out}")
    return 0


def add_commands(verbs: Any) -> None:
    """Register the image commands with the ``polydiff`` CLI (see ``polydiff.tasks.cli``)."""
    add: Callable[..., argparse.ArgumentParser] = verbs["generate"]
    p = add("images", help="generate images with the default digits model (or a saved image model)",
            description="Generate images in [-1, 1] and write them as a PNG grid or a tensor file.")
    p.add_argument("--class", dest="cls", type=int, default=None,
                   help="class id of every image (default: classes 0, 1, ... in turn)")
    p.add_argument("--unconditional", action="store_true", help="sample the unconditional model (no labels)")
    p.add_argument("-n", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--out", default="images.png", help="output: .png grid, .pt or .safetensors tensor")
    p.add_argument("--steps", type=int, default=20, help="solver steps (default 20)")
    p.add_argument("--solver", default="dpmpp_2m", help="solver name (polydiff list solvers)")
    p.add_argument("--grid", default="logsnr", help="time grid (default logsnr)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--model", default="digits", help="a shipped model name or a saved model directory")
    p.add_argument("--nrow", type=int, default=8, help="images per row of the PNG grid")
    p.add_argument("--scale", type=int, default=4, help="PNG pixel enlargement (default 4: 16x16 digits -> 64x64)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=generate)

    # ------------------------------------------------------------------------------------------------
    from polydiff.domains.images.restore import add_restore_command
    add_restore_command(verbs)


__all__ = ["add_commands", "generate"]
