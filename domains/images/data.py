"""Image data for polydiff: the documented tensor convention and the embedded default dataset.

Convention: an image batch is a float tensor of shape (N, C, H, W) with values in [-1, 1]
(0 is mid-grey). Every dataset and decoder in this package produces that; every evaluator and
operator expects it.

The embedded default needs no download: scikit-learn's 1 797 handwritten digits (8x8, 16 grey
levels, 10 classes), scaled to [-1, 1] and upsampled to 16x16 with bilinear interpolation, so that a
U-Net has room for two down-sampling levels and x2 super-resolution is meaningful. The train/test
split is fixed: a permutation drawn with ``torch.Generator().manual_seed(0)``, the last 20% (360
digits) held out; generative models and evaluators train on ``"train"`` only.

Encoders/decoders: ``to_tensor`` (uint8 pixels, PIL or numpy -> [-1, 1]), ``to_uint8`` (back),
``read_image`` (a file -> (1, C, H, W)), ``write_image`` and ``save_grid`` (PNG). ``check_images``
validates a batch (shape, channels, size, finite, range) with errors that say what is wrong.
Datasets: ``load_digits`` (embedded), ``ImageFolder`` (a directory, optionally with class folders) and
torchvision's ``mnist`` / ``cifar10`` / ``celeba`` read from local files only (never downloaded).
"""
from __future__ import annotations

import os
from pathlib import Path as FsPath
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

DIGITS_SIZE = 16
DIGITS_TEST = 360
SPLITS = ("train", "test", "all")


def load_digits(split: str = "train", size: int = DIGITS_SIZE) -> Tuple[Tensor, Tensor]:
    """scikit-learn's digits as (images (N, 1, size, size) float32 in [-1, 1], labels (N,) int64).

    ``size`` 8 gives the original pixels; 16 (default) upsamples bilinearly. ``split`` is "train"
    (1 437), "test" (360) or "all" (1 797, in scikit-learn's order)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an integer >= 8, got {size!r}")
    from sklearn.datasets import load_digits as _sk_digits
    d = _sk_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0      # 0..16 -> [-1, 1]
    y = torch.as_tensor(d.target, dtype=torch.int64)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(-1.0, 1.0)
    if split == "all":
        return x, y
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    idx = perm[:-DIGITS_TEST] if split == "train" else perm[-DIGITS_TEST:]
    return x[idx], y[idx]


# ================================================================== the tensor convention
#: image file extensions ``read_image`` and ``ImageFolder`` accept
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
#: tolerance on the [-1, 1] range (float rounding of a scaled uint8 image)
RANGE_TOL = 1e-4


def check_images(x: Tensor, name: str = "images", channels: Optional[int] = None,
                 size: Optional[Union[int, Tuple[int, int]]] = None) -> Tensor:
    """Validate an image batch in polydiff's convention and return it.

    Checks: a floating-point tensor of shape (N, C, H, W), C in (1, 3) or ``channels``, (H, W) equal to
    ``size`` when given, every value finite and within [-1, 1] (up to ``RANGE_TOL``). Raises ValueError
    naming what is wrong (a [0, 1] or [0, 255] image is the usual mistake; the message says so).
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        hint = " (a single image: add the batch dimension with x[None])" if x.dim() == 3 else ""
        raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point in [-1, 1], got dtype {x.dtype} "
                         "(uint8 pixels: convert with polydiff.domains.images.to_tensor)")
    c = x.shape[1]
    if channels is not None and c != channels:
        raise ValueError(f"{name} must have {channels} channel(s), got {c} (shape {tuple(x.shape)})")
    if channels is None and c not in (1, 3):
        raise ValueError(f"{name} must have 1 (grey) or 3 (RGB) channels, got {c} (shape {tuple(x.shape)}); "
                         "channels-last input (N, H, W, C) must be permuted to (N, C, H, W)")
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(x.shape[2:]) != hw:
            raise ValueError(f"{name} must be {hw[0]}x{hw[1]} pixels, got {x.shape[2]}x{x.shape[3]}")
    if x.numel():
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1 - RANGE_TOL or hi > 1 + RANGE_TOL:
            hint = ""
            if lo >= 0 and hi > 1.5:
                hint = " (it looks like [0, 255] pixels: use to_tensor on uint8, or x / 127.5 - 1)"
            raise ValueError(f"{name} values must lie in [-1, 1], got [{lo:.4g}, {hi:.4g}]{hint}; "
                             "clamp model output with .clamp(-1, 1)")
    return x


def to_tensor(images: Any) -> Tensor:
    """uint8 pixels -> float32 (N, C, H, W) in [-1, 1] (0 -> -1, 255 -> 1).

    Accepts a PIL image or a list of them; a numpy uint8 array in image-library layout (H, W),
    (H, W, C) or (N, H, W, C); or a torch uint8 tensor in torchvision layout (C, H, W) or (N, C, H, W).
    C must be 1 or 3 (PIL images in other modes are converted: "L"-like modes to grey, the rest to RGB).
    Float input is refused: its scale is ambiguous ([0, 1] is x * 2 - 1 in polydiff's convention).
    """
    import numpy as np
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("to_tensor got an empty list of images")
        parts = [to_tensor(im) for im in images]
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) > 1:
            raise ValueError(f"images in the list differ in shape (C, H, W): {sorted(shapes)}")
        return torch.cat(parts)
    if _is_pil(images):
        images = np.asarray(_pil_to_mode(images, None))
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise ValueError(f"to_tensor takes uint8 pixels (0..255), got a {images.dtype} array; a float image "
                             "in [0, 1] is x * 2 - 1 in polydiff's [-1, 1] convention")
        a = images
        if a.ndim == 2:
            a = a[None, :, :, None]
        elif a.ndim == 3:
            a = a[None]
        if a.ndim != 4:
            raise ValueError(f"a numpy image must be (H, W), (H, W, C) or (N, H, W, C), got shape {images.shape}")
        t = torch.from_numpy(np.array(a, copy=True)).permute(0, 3, 1, 2)
    elif isinstance(images, Tensor):
        if images.dtype != torch.uint8:
            raise ValueError(f"to_tensor takes uint8 pixels (0..255), got a {images.dtype} tensor; a float image "
                             "in [0, 1] is x * 2 - 1 in polydiff's [-1, 1] convention")
        t = images[None] if images.dim() == 3 else images
        if t.dim() != 4:
            raise ValueError(f"a uint8 tensor must be (C, H, W) or (N, C, H, W), got shape {tuple(images.shape)}")
    else:
        raise ValueError("to_tensor takes PIL images, uint8 numpy arrays or uint8 tensors, got "
                         f"{type(images).__name__}")
    if t.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {t.shape[1]} (shape (N, C, H, W) = {tuple(t.shape)})")
    return t.float().div(127.5).sub(1.0).contiguous()


def to_uint8(x: Tensor) -> Tensor:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, C, H, W), rounding (x + 1) * 127.5 to the nearest level.

    The inverse of ``to_tensor`` on uint8 images. Values outside [-1, 1] raise ValueError (clamp model
    output first: ``x.clamp(-1, 1)``)."""
    check_images(x, "images")
    return ((x.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def _is_pil(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with torchvision
        return False
    return isinstance(obj, Image.Image)


def _pil_to_mode(im: Any, channels: Optional[int]) -> Any:
    """A PIL image in mode "L" (grey) or "RGB": ``channels`` 1 or 3 forces it, None keeps grey as grey."""
    if channels is None:
        channels = 1 if im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else 3
    if channels == 1:
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            import numpy as np
            a = np.asarray(im, dtype=np.float64)
            hi = 65535.0 if a.max() > 255 else 255.0
            from PIL import Image
            return Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
        return im.convert("L")
    if channels == 3:
        return im.convert("RGB")
    raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")


def read_image(path: Union[str, os.PathLike], channels: Optional[int] = None,
               size: Optional[Union[int, Tuple[int, int]]] = None) -> Tensor:
    """One image file -> float32 (1, C, H, W) in [-1, 1].

    ``channels`` 1 or 3 converts the file to grey or RGB (None: grey files stay grey, everything else
    becomes RGB; an alpha channel is dropped). ``size`` (an int or (H, W)) is checked, not resized: a file
    of another size raises ValueError. Missing and unreadable files raise ValueError naming the file.
    """
    p = FsPath(path)
    if not p.is_file():
        raise ValueError(f"image file {str(path)!r} does not exist")
    try:
        from PIL import Image, UnidentifiedImageError
        with Image.open(p) as im:
            im.load()
            im = _pil_to_mode(im, channels)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read {str(path)!r} as an image: {e}") from None
    x = to_tensor(im)
    if size is not None:
        check_images(x, f"image {str(path)!r}", size=size)
    return x


def write_image(path: Union[str, os.PathLike], x: Tensor) -> FsPath:
    """Write one image (C, H, W) or (1, C, H, W) in [-1, 1] to a PNG (or any format PIL knows by the suffix)."""
    if isinstance(x, Tensor) and x.dim() == 3:
        x = x[None]
    check_images(x, "image")
    if x.shape[0] != 1:
        raise ValueError(f"write_image writes one image, got a batch of {x.shape[0]}; use save_grid")
    return _write_uint8(path, to_uint8(x)[0])


def _write_uint8(path: Union[str, os.PathLike], u: Tensor) -> FsPath:
    from PIL import Image
    p = FsPath(path)
    if p.parent and not p.parent.exists():
        raise ValueError(f"cannot write {str(path)!r}: directory {str(p.parent)!r} does not exist")
    a = u.permute(1, 2, 0).numpy()
    im = Image.fromarray(a[:, :, 0], mode="L") if a.shape[2] == 1 else Image.fromarray(a, mode="RGB")
    try:
        im.save(p)
    except (ValueError, OSError) as e:    # unknown extension, unwritable place
        raise ValueError(f"cannot write image {str(path)!r}: {e}") from None
    return p


def make_grid(images: Tensor, nrow: int = 8, padding: int = 1, pad_value: float = 1.0) -> Tensor:
    """Tile a batch (N, C, H, W) in [-1, 1] into one image (C, rows * (H + p) + p, nrow * (W + p) + p),
    row-major, with ``padding`` pixels of ``pad_value`` between and around the tiles."""
    check_images(images, "images")
    if not isinstance(nrow, int) or nrow < 1 or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"need nrow >= 1 and padding >= 0 (integers), got {nrow!r}, {padding!r}")
    n, c, h, w = images.shape
    if n == 0:
        raise ValueError("make_grid got an empty batch")
    cols = min(nrow, n)
    rows = (n + cols - 1) // cols
    grid = torch.full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), float(pad_value),
                      dtype=images.dtype)
    for i in range(n):
        r, k = divmod(i, cols)
        y0, x0 = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, y0:y0 + h, x0:x0 + w] = images[i].detach().cpu()
    return grid


def save_grid(path: Union[str, os.PathLike], images: Tensor, nrow: int = 8, padding: int = 1,
              pad_value: float = 1.0, scale: int = 1) -> FsPath:
    """Write a batch (N, C, H, W) in [-1, 1] as one PNG grid with ``nrow`` images per row; ``scale``
    enlarges each pixel to scale x scale (nearest neighbour) so that tiny images are visible."""
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    grid = make_grid(images, nrow, padding, pad_value)
    if scale > 1:
        grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return _write_uint8(path, to_uint8(grid[None])[0])


# ================================================================== datasets
def _resize_center_crop(im: Any, size: Tuple[int, int]) -> Any:
    """Resize so that the image covers ``size`` (H, W) keeping its aspect ratio, then crop the centre."""
    from PIL import Image
    h, w = size
    W, H = im.size
    s = max(h / H, w / W)
    nw, nh = max(w, round(W * s)), max(h, round(H * s))
    if (nw, nh) != (W, H):
        im = im.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - w) // 2, (nh - h) // 2
    return im.crop((left, top, left + w, top + h))


def _as_hw(size: Optional[Union[int, Tuple[int, int]]]) -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, int) and v >= 1 for v in hw):
        raise ValueError(f"size must be a positive int or (H, W), got {size!r}")
    return hw


class ImageFolder(torch.utils.data.Dataset):
    """Images from a directory, as float32 (C, H, W) in [-1, 1].

    Layout: ``root/<class name>/<file>`` gives labelled items ``(x, label)`` with labels numbered by
    sorted class name (``classes`` lists them; torchvision's ImageFolder convention); image files
    directly in ``root`` (and no class folders) give unlabelled items ``x``. ``channels`` 1 / 3 converts
    every file (None: 3, or 1 when the first file is grey). ``size`` (int or (H, W)) resizes the
    shorter side and centre-crops; without it every file must have the first file's size (ValueError
    naming the file otherwise). Unreadable files raise ValueError naming the file when read.
    The Trainer takes this dataset directly (items (x, label) feed ``class_labels``).
    """

    def __init__(self, root: Union[str, os.PathLike], size: Optional[Union[int, Tuple[int, int]]] = None,
                 channels: Optional[int] = None, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        self.root = FsPath(root)
        if not self.root.is_dir():
            raise ValueError(f"image folder {str(root)!r} does not exist or is not a directory")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
        self.size = _as_hw(size)
        exts = tuple(e.lower() for e in extensions)
        classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        files: List[Tuple[FsPath, int]] = []
        for i, cname in enumerate(classes):
            files += [(f, i) for f in sorted((self.root / cname).rglob("*")) if f.suffix.lower() in exts]
        self.labelled = bool(files)
        if not files:
            files = [(f, -1) for f in sorted(self.root.iterdir()) if f.is_file() and f.suffix.lower() in exts]
            classes = []
        if not files:
            raise ValueError(f"no image files ({', '.join(exts)}) in {str(root)!r} or its class folders")
        self.classes = classes
        self.files = files
        first = read_image(files[0][0], channels)
        self.channels = channels if channels is not None else first.shape[1]
        self._first_hw = tuple(first.shape[2:])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Any:
        path, label = self.files[i]
        if self.size is None:
            x = read_image(path, self.channels)
            if tuple(x.shape[2:]) != self._first_hw:
                raise ValueError(f"{str(path)!r} is {x.shape[2]}x{x.shape[3]} but the folder's first image is "
                                 f"{self._first_hw[0]}x{self._first_hw[1]}; pass size= to resize")
        else:
            from PIL import Image
            try:
                with Image.open(path) as im:
                    im.load()
                    im = _pil_to_mode(im, self.channels)
            except (OSError, SyntaxError) as e:
                raise ValueError(f"cannot read {str(path)!r} as an image: {e}") from None
            x = to_tensor(_resize_center_crop(im, self.size))
        return (x[0], torch.tensor(label)) if self.labelled else x[0]


class _Converted(torch.utils.data.Dataset):
    """A torchvision dataset of (PIL image, label) turned into (float (C, H, W) in [-1, 1], int64 label)."""

    def __init__(self, base: Any, size: Optional[Tuple[int, int]], channels: int) -> None:
        self.base, self.size, self.channels = base, size, channels

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Tuple[Tensor, Tensor]:
        im, label = self.base[i]
        im = _pil_to_mode(im, self.channels)
        if self.size is not None:
            im = _resize_center_crop(im, self.size)
        target = label if isinstance(label, Tensor) else torch.tensor(int(label))
        return to_tensor(im)[0], target.long()


def _missing(name: str, root: Union[str, os.PathLike], expected: Sequence[str], err: Exception) -> ValueError:
    lines = "\n  ".join(str(FsPath(root) / e) for e in expected)
    return ValueError(f"{name} files not found under {str(root)!r} (polydiff never downloads them; put the "
                      f"dataset's files there). Expected:\n  {lines}")


MNIST_FILES = ("MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/train-labels-idx1-ubyte",
               "MNIST/raw/t10k-images-idx3-ubyte", "MNIST/raw/t10k-labels-idx1-ubyte")
CIFAR10_FILES = tuple(f"cifar-10-batches-py/{f}" for f in
                      ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                       "test_batch", "batches.meta"))
CELEBA_FILES = ("celeba/img_align_celeba/", "celeba/list_eval_partition.txt", "celeba/list_attr_celeba.txt",
                "celeba/identity_CelebA.txt", "celeba/list_bbox_celeba.txt",
                "celeba/list_landmarks_align_celeba.txt")


def _split(split: str, valid: Sequence[str]) -> str:
    if split not in valid:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(valid)}")
    return split


def _train_test_dataset(cls, name: str, files, root: Union[str, os.PathLike], split: str,
                        size: Optional[Union[int, Tuple[int, int]]], channels: int) -> torch.utils.data.Dataset:
    """A torchvision dataset with a ``train=`` flag, from local files only, converted to [-1, 1]."""
    train = _split(split, ("train", "test")) == "train"
    try:
        base = cls(str(root), train=train, download=False)
    except (RuntimeError, OSError) as e:
        raise _missing(name, root, files, e) from None
    return _Converted(base, _as_hw(size), channels)


def mnist(root: Union[str, os.PathLike], split: str = "train",
          size: Optional[Union[int, Tuple[int, int]]] = None) -> torch.utils.data.Dataset:
    """torchvision's MNIST from local files (``MNIST_FILES`` under ``root``; never downloaded): items
    (float (1, 28, 28) in [-1, 1], label). ``split``: "train" (60 000) or "test" (10 000); ``size``
    resizes (e.g. 32 for a 3-level U-Net)."""
    from torchvision.datasets import MNIST
    return _train_test_dataset(MNIST, "MNIST", MNIST_FILES, root, split, size, 1)


def cifar10(root: Union[str, os.PathLike], split: str = "train",
            size: Optional[Union[int, Tuple[int, int]]] = None) -> torch.utils.data.Dataset:
    """torchvision's CIFAR-10 from local files (``CIFAR10_FILES`` under ``root``, the official python
    version; never downloaded): items (float (3, 32, 32) in [-1, 1], label). ``split``: "train" (50 000) or
    "test" (10 000). torchvision reads these batches with pickle: use only files from the official source."""
    from torchvision.datasets import CIFAR10
    return _train_test_dataset(CIFAR10, "CIFAR-10", CIFAR10_FILES, root, split, size, 3)


def celeba(root: Union[str, os.PathLike], split: str = "train",
           size: Optional[Union[int, Tuple[int, int]]] = 64) -> torch.utils.data.Dataset:
    """torchvision's CelebA (aligned 178x218 faces) from local files (``CELEBA_FILES`` under ``root``; never
    downloaded): items (float (3, size, size) in [-1, 1], 40 binary attributes). ``split``: "train",
    "valid", "test" or "all"; ``size`` resizes the shorter side and centre-crops (default 64)."""
    from torchvision.datasets import CelebA
    _split(split, ("train", "valid", "test", "all"))
    try:
        base = CelebA(str(root), split=split, target_type="attr", download=False)
    except (RuntimeError, OSError) as e:
        raise _missing("CelebA", root, CELEBA_FILES, e) from None
    return _Converted(base, _as_hw(size), 3)
