"""Shipped image models, loadable with one call and no download.

    model = pretrained("digits")
    x = model.generate(labels=torch.tensor([0, 1, 7]), steps=20, solver="dpmpp_2m", generator=g)  # (3, 1, 16, 16)
    D, path = model.denoiser, model.path      # the prior for polydiff.core.posterior_sample

``"digits"``: the class-conditional U-Net trained by ``python -m polydiff.domains.images.train_digits``
on scikit-learn's digits (16x16 grey, [-1, 1], train split); its README beside the weights records the
command, wall time and loss. The weights live in ``domains/images/weights/<name>/`` as safetensors +
JSON and are read with ``polydiff.core.load`` (no stored code runs).

``pretrained_autoencoder("digits")``: the KL autoencoder of the digits (16x16x1 -> 8x8x2), for latent
diffusion and latent posterior samplers, when it has been shipped.
"""
from __future__ import annotations

from pathlib import Path as FsPath
from typing import Any, Dict, Optional, Tuple, Union

import torch

Tensor = torch.Tensor

WEIGHTS_DIR = FsPath(__file__).resolve().parent / "weights"
#: name -> directory (under WEIGHTS_DIR) of the shipped diffusion models
MODELS: Dict[str, str] = {"digits": "digits"}
#: name -> directory of the shipped autoencoders
AUTOENCODERS: Dict[str, str] = {"digits": "digits_autoencoder"}


class ImageDiffusionModel:
    """A shipped image diffusion model: its denoiser, path, sample shape and classes, and ``generate``.

    denoiser: a ``polydiff.core.Denoiser``, D(x, t, class_labels=None) -> E[x0 | x_t]; without labels
        (or with the null label ``num_classes``) it is the unconditional prior, which posterior samplers use.
    path: the Gaussian path it was trained on. shape: (C, H, W) of one image. num_classes: the number of
        classes (labels 0 .. num_classes - 1; ``null_label`` = num_classes). cond_key: the keyword the
        denoiser takes labels by ("class_labels").
    """

    def __init__(self, denoiser: Any, shape: Tuple[int, int, int], num_classes: int, name: str = "",
                 cond_key: str = "class_labels") -> None:
        self.denoiser = denoiser
        self.path = denoiser.path
        self.shape = tuple(int(s) for s in shape)
        self.num_classes = int(num_classes)
        self.null_label = self.num_classes
        self.cond_key = cond_key
        self.name = name

    def __repr__(self) -> str:
        return (f"ImageDiffusionModel({self.name!r}, shape={self.shape}, num_classes={self.num_classes}, "
                f"path={self.path!r})")

    def check_labels(self, labels: Any) -> Tensor:
        """labels as an int64 tensor (N,) with every id in [0, num_classes); ValueError otherwise."""
        if self.num_classes == 0:
            raise ValueError("this model is unconditional (num_classes = 0); generate with labels=None and n=...")
        if not isinstance(labels, Tensor):
            try:
                labels = torch.as_tensor(labels)
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(f"labels must be a LongTensor of class ids, got {type(labels).__name__}") from None
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
        if labels.dim() == 0:
            labels = labels.reshape(1)
        if labels.dim() != 1 or labels.numel() == 0:
            raise ValueError(f"labels must have shape (N,) with N >= 1, got {tuple(labels.shape)}")
        if bool(((labels < 0) | (labels >= self.num_classes)).any()):
            bad = labels[(labels < 0) | (labels >= self.num_classes)][:5].tolist()
            raise ValueError(f"class ids must lie in [0, {self.num_classes - 1}], got {bad}")
        return labels.long()

    def generate(self, labels: Optional[Any] = None, n: Optional[int] = None, steps: int = 20,
                 solver: str = "dpmpp_2m", grid: str = "logsnr", guidance: float = 1.0,
                 generator: Optional[torch.Generator] = None, device: Optional[Union[str, torch.device]] = None,
                 **solver_options: Any) -> Tensor:
        """Images (N, C, H, W) in [-1, 1] (clamped), one per label.

        labels: class ids (N,) for class-conditional samples, or None for ``n`` unconditional samples.
        steps, solver, grid: as ``polydiff.core.sample`` (any registered solver; extra options pass on).
        guidance: classifier-free guidance scale w, D_u + w (D_c - D_u); 1 is the plain conditional
            model (one evaluation per step), > 1 sharpens class identity at two evaluations per step.
        generator: the only randomness (the starting noise and any stochastic solver's noise).
        """
        from polydiff.core import sample
        from polydiff.core.guidance import ClassifierFreeGuidance
        if labels is None:
            if n is None or isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"unconditional generation needs n >= 1 (or pass labels), got n={n!r}")
            cond: Dict[str, Any] = {}
            count = n
        else:
            labels = self.check_labels(labels)
            if n is not None and n != labels.numel():
                raise ValueError(f"n={n} differs from the number of labels {labels.numel()}")
            count = labels.numel()
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not guidance == guidance:
            raise ValueError(f"guidance must be a number, got {guidance!r}")
        if device is None:
            params = self.denoiser.parameters() if isinstance(self.denoiser, torch.nn.Module) else iter(())
            device = next(params, torch.empty(0)).device
        noise = torch.randn((count, *self.shape), generator=generator, device=device)
        D = self.denoiser
        if labels is not None:
            cond = {self.cond_key: labels.to(device)}
            if float(guidance) != 1.0:
                D = ClassifierFreeGuidance(self.denoiser, float(guidance), uncond={self.cond_key: self.null_label},
                                           batched=True)
        elif float(guidance) != 1.0:
            raise ValueError("guidance needs labels (it contrasts the conditional and unconditional models)")
        with torch.no_grad():
            x = sample(D, noise, path=self.path, solver=solver, steps=steps, grid=grid, cond=cond,
                       generator=generator, **solver_options)
        return x.clamp(-1.0, 1.0)


def _weights(name: str, table: Dict[str, str], what: str) -> FsPath:
    if name not in table:
        raise ValueError(f"unknown pretrained {what} {name!r}; valid: {sorted(table)}")
    d = WEIGHTS_DIR / table[name]
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise ValueError(f"the {what} {name!r} is not shipped in this checkout: {d} lacks config.json or "
                         f"model.safetensors (train it with python -m polydiff.domains.images.train_digits)")
    return d


def pretrained(name: str = "digits", device: Optional[Union[str, torch.device]] = None) -> ImageDiffusionModel:
    """The shipped diffusion model ``name`` (valid: ``MODELS``) as an ``ImageDiffusionModel`` (eval mode)."""
    return load_model(_weights(name, MODELS, "model"), device=device, name=name)


def load_model(directory: Union[str, FsPath], device: Optional[Union[str, torch.device]] = None,
               name: str = "") -> ImageDiffusionModel:
    """An ``ImageDiffusionModel`` from any saved image model directory, checkpoint directory or training
    run directory whose config records extra.sample_shape (C, H, W) (``train_digits`` and the Trainer
    write it); the class count is extra.num_classes, else the network config's num_classes."""
    from polydiff.core.training import load
    from polydiff.core.training.files import read_json
    d = FsPath(directory)
    if not (d / "config.json").is_file():
        raise ValueError(f"{str(directory)!r} is not a saved model directory (no config.json)")
    D = load(d, device=device)
    cfg = read_json(d / "config.json")
    extra = cfg.get("extra", {})
    shape = tuple(extra.get("sample_shape", ()))
    if len(shape) != 3:
        raise ValueError(f"{d / 'config.json'} lacks extra.sample_shape (C, H, W)")
    num_classes = int(extra.get("num_classes", cfg.get("net", {}).get("num_classes", 0)))
    return ImageDiffusionModel(D, shape, num_classes, name=name or d.name,
                               cond_key=str(extra.get("cond_key", "class_labels")))


def pretrained_autoencoder(name: str = "digits", device: Optional[Union[str, torch.device]] = None) -> Any:
    """The shipped KL autoencoder ``name`` (valid: ``AUTOENCODERS``), eval mode."""
    from .autoencoder import load_autoencoder
    return load_autoencoder(_weights(name, AUTOENCODERS, "autoencoder"), device=device)


__all__ = ["ImageDiffusionModel", "pretrained", "load_model", "pretrained_autoencoder", "MODELS", "AUTOENCODERS",
           "WEIGHTS_DIR"]
