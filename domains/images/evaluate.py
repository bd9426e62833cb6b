"""Image evaluators: sample quality (Fréchet distance, precision/recall, class accuracy) and restoration
quality (PSNR, SSIM, a learned perceptual distance), all on the documented (N, C, H, W) tensors in [-1, 1].

Sample quality needs a feature space. Inception-v3 weights are not shipped and cannot be downloaded
here, so, as Diffusion-TS's context-FID does with its own encoder, this module ships two small
networks trained in this repository on the digits train split
(``python -m polydiff.domains.images.train_evaluators``; weights and their test accuracies in
``weights/evaluators/README.md``):

- ``feature_net("digits")``: a 3-stage convolutional net; its 64-d globally pooled last stage is the
  feature space of ``fid`` and ``precision_recall``, and its three stages are the layers of
  ``perceptual_distance``.
- ``classifier("digits")``: an independent classifier (different architecture: 5x5 kernels, max
  pooling, a fully connected head on the spatial layout; different seed) for ``classifier_accuracy``,
  so the accuracy check does not share the feature network's blind spots.

``reference_distances()`` computes, in one call, the real-vs-real numbers a generator is judged
against (two halves of the train split; train vs test). ``inception_fid`` uses torchvision's
Inception-v3 when the user has its weights file locally (never downloaded).
"""
from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from polydiff.core.metrics import check_features as _check_features
from polydiff.core.metrics import frechet_distance   # the one implementation (re-exported here)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights" / "evaluators"
NAMES = ("digits",)
NUM_CLASSES = {"digits": 10}
IMAGE_SHAPE = {"digits": (1, 16, 16)}
RANGE_TOL = 1e-3          # values may exceed [-1, 1] by this much (float rounding) before it is an error
PathLike = Union[str, "os.PathLike[str]"]


# ---------------------------------------------------------------- input checks
def check_images(x: Tensor, name: str = "images", channels: Optional[int] = None,
                 size: Optional[Tuple[int, int]] = None, min_batch: int = 1) -> Tensor:
    """Validate an image batch: a finite float tensor (N, C, H, W) in [-1, 1]; returns it as float32.

    ``channels``/``size`` pin C and (H, W) when the consumer needs them (e.g. a network trained on
    1x16x16 digits). Values outside [-1, 1] (beyond a 1e-3 tolerance) are an error: a [0, 1] or
    [0, 255] image here is the classic scaling bug."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [-1, 1], got dtype {x.dtype}")
    if x.shape[0] < min_batch:
        raise ValueError(f"{name} needs at least {min_batch} image(s), got {x.shape[0]}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channel(s), got {x.shape[1]} (shape {tuple(x.shape)})")
    if size is not None and tuple(x.shape[2:]) != tuple(size):
        raise ValueError(f"{name} must be {size[0]}x{size[1]} pixels, got {x.shape[2]}x{x.shape[3]}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = float(x.detach().min()), float(x.detach().max())
    if lo < -1.0 - RANGE_TOL or hi > 1.0 + RANGE_TOL:
        raise ValueError(f"{name} must lie in [-1, 1] (the documented image scale), found values in "
                         f"[{lo:.4g}, {hi:.4g}]; convert [0, 1] images with 2*x - 1")
    return x.float()


def _check_pair(a: Tensor, b: Tensor, names: Tuple[str, str] = ("a", "b")) -> Tuple[Tensor, Tensor]:
    a = check_images(a, names[0])
    b = check_images(b, names[1])
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape (N, C, H, W), got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    return a, b


def _check_name(name: str) -> str:
    if name not in NAMES:
        raise ValueError(f"unknown evaluator dataset {name!r}; valid: {', '.join(NAMES)}")
    return name


# ---------------------------------------------------------------- networks
class FeatureNet(nn.Module):
    """Feature network: stages of two 3x3 conv + ReLU, 2x average pooling between stages, a linear
    classification head on the globally averaged last stage (the head is what it was trained with)."""

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (32, 64, 64), num_classes: int = 10):
        super().__init__()
        self.config = {"in_channels": in_channels, "channels": list(channels), "num_classes": num_classes}
        stages, c_in = [], in_channels
        for c in channels:
            stages.append(nn.Sequential(nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(),
                                        nn.Conv2d(c, c, 3, padding=1), nn.ReLU()))
            c_in = c
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(c_in, num_classes)
        for m in self.modules():          # He initialisation: six un-normalised ReLU convs train from the start
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def layers(self, x: Tensor) -> List[Tensor]:
        """The activations at the end of each stage (before pooling): the perceptual-distance layers."""
        out = []
        for i, stage in enumerate(self.stages):
            if i:
                x = F.avg_pool2d(x, 2)
            x = stage(x)
            out.append(x)
        return out

    def features(self, x: Tensor) -> Tensor:
        """(N, channels[-1]) globally averaged last stage: the Fréchet / precision-recall feature space."""
        return self.layers(x)[-1].mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class Classifier(nn.Module):
    """Independent digit classifier (LeNet-like): two 5x5 conv + ReLU + 2x max-pool stages, then a
    fully connected head over the spatial layout with dropout. Returns logits."""

    def __init__(self, in_channels: int = 1, size: int = 16, channels: Sequence[int] = (20, 40),
                 hidden: int = 100, num_classes: int = 10, dropout: float = 0.3):
        super().__init__()
        self.config = {"in_channels": in_channels, "size": size, "channels": list(channels), "hidden": hidden,
                       "num_classes": num_classes, "dropout": dropout}
        c1, c2 = channels
        self.conv = nn.Sequential(nn.Conv2d(in_channels, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c2 * (size // 4) ** 2, hidden),
                                nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x))


ARCHS: Dict[str, Callable[..., nn.Module]] = {"feature_net": FeatureNet, "classifier": Classifier}


def weights_file(kind: str, name: str = "digits", directory: Optional[PathLike] = None) -> Path:
    """Where the shipped weights of ``kind`` ("feature_net" or "classifier") for dataset ``name`` live."""
    if kind not in ARCHS:
        raise ValueError(f"unknown evaluator network {kind!r}; valid: {', '.join(ARCHS)}")
    return Path(directory or WEIGHTS_DIR) / f"{kind}_{_check_name(name)}.safetensors"


def save_network(net: nn.Module, kind: str, name: str = "digits", directory: Optional[PathLike] = None,
                 info: Optional[Dict[str, object]] = None) -> Path:
    """Save an evaluator network as safetensors with its architecture config (and ``info``, e.g. the
    test accuracy) as JSON metadata; written to a temporary name and renamed."""
    from safetensors.torch import save_file
    path = weights_file(kind, name, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "polydiff-image-evaluator", "kind": kind, "dataset": name,
            "config": json.dumps(net.config), "info": json.dumps(info or {})}
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def load_network(kind: str, name: str = "digits", directory: Optional[PathLike] = None) -> nn.Module:
    """Rebuild an evaluator network from its safetensors file (no pickle); eval mode, frozen."""
    from safetensors import safe_open
    path = weights_file(kind, name, directory)
    if not path.is_file():
        raise ValueError(f"missing evaluator weights {path}; train them with "
                         "`python -m polydiff.domains.images.train_evaluators`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("kind") != kind:
            raise ValueError(f"holds a {meta.get('kind')!r} network, not {kind!r}")
        net = ARCHS[kind](**json.loads(meta["config"]))
        net.load_state_dict(state)
    except Exception as e:  # corrupt file, wrong metadata, mismatched tensors
        raise ValueError(f"{path} is not a valid polydiff evaluator file: {e}") from None
    net.info = json.loads(meta.get("info", "{}"))
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@functools.lru_cache(maxsize=None)
def feature_net(name: str = "digits") -> FeatureNet:
    """The shipped feature network for dataset ``name`` (cached; eval mode, frozen parameters)."""
    return load_network("feature_net", name)


@functools.lru_cache(maxsize=None)
def classifier(name: str = "digits") -> Classifier:
    """The shipped independent classifier for dataset ``name`` (cached; eval mode, frozen)."""
    return load_network("classifier", name)


def _net_input_check(images: Tensor, net: nn.Module, name: str) -> Tensor:
    cfg = getattr(net, "config", {})
    shape = IMAGE_SHAPE["digits"] if isinstance(net, (FeatureNet, Classifier)) and cfg.get("in_channels") == 1 \
        else None
    if shape is not None:
        return check_images(images, name, channels=shape[0], size=shape[1:])
    return check_images(images, name)


def _device(net: nn.Module) -> torch.device:
    return next(iter(net.parameters()), torch.empty(0)).device


def features(images: Tensor, net: Optional[nn.Module] = None, batch_size: int = 512) -> Tensor:
    """Feature vectors (N, D) of ``images`` under ``net.features`` (default: ``feature_net("digits")``)."""
    net = feature_net("digits") if net is None else net
    if not hasattr(net, "features"):
        raise ValueError("net must have a features(images) -> (N, D) method (e.g. feature_net('digits'))")
    images = _net_input_check(images, net, "images")
    dev = _device(net)
    with torch.no_grad():
        return torch.cat([net.features(images[i:i + batch_size].to(dev)).float().cpu()
                          for i in range(0, images.shape[0], batch_size)])


# ---------------------------------------------------------------- Fréchet distance, precision/recall
def fid(images_a: Tensor, images_b: Tensor, net: Optional[nn.Module] = None) -> float:
    """Fréchet distance between two image sets in the feature space of ``net`` (default: the shipped
    digits feature network, so this is a "Fréchet digit distance", not the Inception FID of papers;
    see ``inception_fid`` for that). The two sets may differ in size (each needs >= 2 images)."""
    return frechet_distance(features(images_a, net), features(images_b, net))


class PrecisionRecall(NamedTuple):
    precision: float
    recall: float


def _manifold_coverage(support: Tensor, query: Tensor, k: int) -> float:
    """Fraction of ``query`` points inside the union of balls around ``support`` points, each ball's
    radius the distance to its k-th nearest other support point."""
    d_ss = torch.cdist(support, support)
    radii = d_ss.kthvalue(k + 1, dim=1).values          # the 1st smallest is the point itself (0)
    inside = (torch.cdist(query, support) <= radii[None, :]).any(dim=1)
    return float(inside.double().mean())


def precision_recall(real_feats: Tensor, fake_feats: Tensor, k: int = 3) -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds: precision is the
    fraction of generated samples inside the real manifold (union of balls around each real feature
    with radius its distance to its k-th nearest real neighbour); recall swaps the roles. k = 3 is the
    paper's default. Takes feature matrices (N, D); use ``features(images)`` for images."""
    r, f = _check_features(real_feats, "real_feats"), _check_features(fake_feats, "fake_feats")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dimensions differ: {r.shape[1]} and {f.shape[1]}")
    if not isinstance(k, int) or k < 1 or k >= min(r.shape[0], f.shape[0]):
        raise ValueError(f"k must be an integer in [1, min(N_real, N_fake) - 1] = [1, "
                         f"{min(r.shape[0], f.shape[0]) - 1}], got {k!r}")
    return PrecisionRecall(_manifold_coverage(r, f, k), _manifold_coverage(f, r, k))


def classifier_accuracy(images: Tensor, labels: Tensor, net: Optional[nn.Module] = None,
                        batch_size: int = 512) -> float:
    """Fraction of ``images`` that ``net`` (default: the independent ``classifier("digits")``) labels
    as ``labels``: the class-conditional accuracy of generated samples."""
    net = classifier("digits") if net is None else net
    images = _net_input_check(images, net, "images")
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.dtype.is_floating_point:
        raise ValueError("labels must be an integer tensor of shape (N,)")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {labels.shape[0]} labels")
    n_cls = getattr(net, "config", {}).get("num_classes")
    if n_cls is not None and (int(labels.min()) < 0 or int(labels.max()) >= n_cls):
        raise ValueError(f"labels must lie in [0, {n_cls - 1}], found [{int(labels.min())}, {int(labels.max())}]")
    dev = _device(net)
    with torch.no_grad():
        pred = torch.cat([net(images[i:i + batch_size].to(dev)).argmax(1).cpu()
                          for i in range(0, images.shape[0], batch_size)])
    return float((pred == labels.cpu()).double().mean())


def sample_quality(images: Tensor, labels: Optional[Tensor] = None, reference: str = "test",
                   k: int = 3) -> Dict[str, float]:
    """Everything the issue's bar needs for generated digits in one call: Fréchet distance and
    precision/recall (generated as the "fake" set) against the real ``reference`` split ("test",
    "train" or "all") in the shipped feature space, and (when ``labels`` are given) the independent
    classifier's accuracy. Compare ``fd`` with ``reference_distances()``, generating at least 1 437
    digits with the test split's label proportions (FD grows as the sample shrinks)."""
    from .data import load_digits
    real, _ = load_digits(reference)
    fr, ff = features(real), features(images)
    pr = precision_recall(fr, ff, k=k)
    out = {"fd": frechet_distance(ff, fr), "precision": pr.precision, "recall": pr.recall, "n": images.shape[0]}
    if labels is not None:
        out["accuracy"] = classifier_accuracy(images, labels)
    return out


def _stratified_halves(labels: Tensor, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
    """Index sets of two halves with (within one per class) the same label counts."""
    a, b = [], []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        # alternate which half gets the odd one out, so the halves' sizes differ by at most one
        cut = idx.numel() // 2 + (idx.numel() % 2) * (len(a) % 2)
        a.append(idx[:cut])
        b.append(idx[cut:])
    return torch.cat(a), torch.cat(b)


def reference_distances(splits: int = 10, k: int = 3, seed: int = 0) -> Dict[str, float]:
    """The real-vs-real reference numbers in the shipped digits feature space, in one call.

    - ``fd_halves`` (and ``fd_halves_std``): Fréchet distance between two halves of the train split
      (718 / 719 digits, split class by class so both halves hold the same label counts), averaged
      over ``splits`` random splits (seeded with ``seed``): one split alone varies by a factor 3.
      The issue's bar: a generator's FD to the held-out test digits, ``fid(samples, test)``, is within
      2x of this. Compute it on at least 1 437 samples whose labels follow the test's (e.g. the
      test labels repeated 4 times): FD grows as samples shrink (a real 360-sample set scores about
      2x ``fd_halves`` against the test split).
    - ``fd_train_test``: FD between the whole train split (1 437) and the test split (360): what a
      perfect generator scores against the test split with 1 437 samples.
    - ``precision_halves``/``recall_halves`` (means over the splits) and
      ``precision_train_test``/``recall_train_test`` (test as the real set, train as the generated
      one): Kynkäänniemi precision/recall for the same pairs, with ``k``.
    """
    if not isinstance(splits, int) or splits < 1:
        raise ValueError(f"splits must be a positive integer, got {splits!r}")
    from .data import load_digits
    train, ytr = load_digits("train")
    test, _ = load_digits("test")
    ftr, fte = features(train), features(test)
    g = torch.Generator().manual_seed(seed)
    fds, precs, recs = [], [], []
    for _ in range(splits):
        ia, ib = _stratified_halves(ytr, g)
        fds.append(frechet_distance(ftr[ia], ftr[ib]))
        pr = precision_recall(ftr[ia], ftr[ib], k)
        precs.append(pr.precision)
        recs.append(pr.recall)
    pr_tt = precision_recall(fte, ftr, k)
    return {"fd_halves": float(np.mean(fds)), "fd_halves_std": float(np.std(fds)),
            "fd_train_test": frechet_distance(ftr, fte),
            "precision_halves": float(np.mean(precs)), "recall_halves": float(np.mean(recs)),
            "precision_train_test": pr_tt.precision, "recall_train_test": pr_tt.recall,
            "n_half": int(ia.numel()), "n_train": ftr.shape[0], "n_test": fte.shape[0], "splits": splits}


# ---------------------------------------------------------------- restoration metrics
def psnr(a: Tensor, b: Tensor, data_range: float = 2.0) -> Tensor:
    """Peak signal-to-noise ratio per image (N,), in dB: 10 log10(data_range^2 / MSE). The default
    range 2 is the documented [-1, 1] scale (the same number as for [0, 1] images with range 1).
    Identical images give +inf."""
    a, b = _check_pair(a, b)
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return (10.0 * torch.log10(data_range ** 2 / mse)).float()


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype) -> Tensor:
    r = torch.arange(size, dtype=dtype) - (size - 1) / 2
    w = torch.exp(-0.5 * (r / sigma) ** 2)
    return w / w.sum()


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Structural similarity per image (N,) (Wang et al. 2004): an 11x11 Gaussian window with
    sigma 1.5, K1 = 0.01, K2 = 0.03, population (not sample) local variances, averaged over the valid
    window positions and the channels.

    Images are mapped from [-1, 1] to [0, 1] (data range 1) first, because SSIM's luminance term
    assumes non-negative intensities: this is the number scikit-image's
    ``structural_similarity(x01, y01, data_range=1, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)`` gives on the [0, 1] images. On the 16x16 digits the 11x11 window
    has 6x6 valid positions, each covering most of a digit; the window must fit the image (pass a
    smaller odd ``window``, e.g. 7 with sigma 1.0, for 8x8 images)."""
    a, b = _check_pair(a, b)
    if not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd integer, got {window!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    if window > min(a.shape[2], a.shape[3]):
        raise ValueError(f"the {window}x{window} SSIM window does not fit {a.shape[2]}x{a.shape[3]} images; "
                         "pass a smaller odd window (e.g. window=7, sigma=1.0)")
    n, c, h, w = a.shape
    x = ((a.double() + 1) / 2).reshape(n * c, 1, h, w)
    y = ((b.double() + 1) / 2).reshape(n * c, 1, h, w)
    g = _gaussian_window(window, sigma, torch.float64)
    kx, ky = g.view(1, 1, 1, window), g.view(1, 1, window, 1)

    def filt(z: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(z, kx), ky)

    mx, my = filt(x), filt(y)
    vx, vy, cxy = filt(x * x) - mx ** 2, filt(y * y) - my ** 2, filt(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.reshape(n, c, -1).mean(dim=(1, 2)).float()


def perceptual_distance(a: Tensor, b: Tensor, net: Optional[nn.Module] = None) -> Tensor:
    """LPIPS-style learned perceptual distance per image (N,) (Zhang et al. 2018): for each layer of
    ``net.layers`` (default: the three stages of ``feature_net("digits")``), unit-normalize the
    activations along channels, take the channel-averaged squared difference, average over space, and
    sum over layers. LPIPS's learned "lin" channel weights are not available offline, so every channel
    gets weight 1/C (the uniform-weight LPIPS variant). Differentiable in ``a`` and ``b``."""
    net = feature_net("digits") if net is None else net
    if not hasattr(net, "layers"):
        raise ValueError("net must have a layers(images) -> list of (N, C, H, W) activations method")
    a, b = _check_pair(a, b)
    a, b = _net_input_check(a, net, "a"), _net_input_check(b, net, "b")
    dev = _device(net)
    total = torch.zeros(a.shape[0], dtype=torch.float32, device=dev)
    for fa, fb in zip(net.layers(a.to(dev)), net.layers(b.to(dev))):
        na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + (na - nb).pow(2).mean(dim=(1, 2, 3))
    return total


# ---------------------------------------------------------------- Inception FID (user-supplied weights)
def inception_model(weights: Optional[PathLike] = None) -> nn.Module:
    """torchvision's Inception-v3 as a 2048-d pool feature extractor (classifier head removed).

    ``weights``: a local file of torchvision's ``inception_v3`` ImageNet weights (the
    ``inception_v3_google-*.pth`` state dict, or the same tensors as .safetensors); nothing is ever
    downloaded. ``None`` gives a randomly initialised network, useful only to test plumbing."""
    from torchvision.models import inception_v3
    state = None
    if weights is not None:
        p = Path(weights)
        if not p.is_file():
            raise ValueError(f"Inception weights file {str(p)!r} does not exist; polydiff never downloads "
                             "weights: save torchvision's inception_v3 IMAGENET1K_V1 state dict there")
        try:
            if p.suffix == ".safetensors":
                from safetensors.torch import load_file
                state = load_file(str(p))
            else:
                state = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{p} is not a readable weights file: {e}") from None
        if not isinstance(state, dict) or "Conv2d_1a_3x3.conv.weight" not in state:
            raise ValueError(f"{p} does not hold torchvision inception_v3 weights (no 'Conv2d_1a_3x3.conv.weight')")
    net = inception_v3(weights=None, aux_logits=True, transform_input=False, init_weights=False)
    if state is not None:
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{weights} does not hold torchvision inception_v3 weights: {e}") from None
    net.fc = nn.Identity()
    net.eval()
    for q in net.parameters():
        q.requires_grad_(False)
    return net


def inception_features(images: Tensor, net: nn.Module, batch_size: int = 32, size: int = 299) -> Tensor:
    """2048-d Inception pool features (N, 2048): grey images are repeated to RGB and resized to
    ``size`` x ``size`` (299, Inception's input size; >= 75 runs) bilinearly; [-1, 1] is the scale the
    Google Inception weights expect (torchvision's ``transform_input`` maps ImageNet-normalised input
    to exactly this)."""
    images = check_images(images, "images")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"Inception features need 1 or 3 channels, got {images.shape[1]}")
    if not isinstance(size, int) or size < 75:
        raise ValueError(f"Inception needs inputs of at least 75x75 pixels, got size={size!r}")
    dev = _device(net)
    out = []
    with torch.no_grad():
        for i in range(0, images.shape[0], batch_size):
            x = images[i:i + batch_size].to(dev)
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            out.append(net(x).float().cpu())
    return torch.cat(out)


def inception_fid(images_a: Tensor, images_b: Tensor, weights: Union[PathLike, nn.Module], size: int = 299) -> float:
    """FID with torchvision's Inception-v3 pool features (Heusel et al. 2017). ``weights`` is the local
    weights file (see ``inception_model``) or an already built ``inception_model(...)``. Note that
    torchvision's Inception is not the TF-ported network of the reference FID code, so values are
    comparable between polydiff runs, not to published FIDs."""
    if weights is None:
        raise ValueError("inception_fid needs weights: a local torchvision inception_v3 weights file")
    net = weights if isinstance(weights, nn.Module) else inception_model(weights)
    return frechet_distance(inception_features(images_a, net, size=size), inception_features(images_b, net, size=size))


__all__ = ["check_images", "FeatureNet", "Classifier", "feature_net", "classifier", "save_network", "load_network",
           "weights_file", "features", "frechet_distance", "fid", "PrecisionRecall", "precision_recall",
           "classifier_accuracy", "sample_quality", "reference_distances", "psnr", "ssim",
           "perceptual_distance", "inception_model", "inception_features", "inception_fid"]
