"""Image measurement operators: thin image-shaped constructors on ``polydiff.core.inverse``.

Every operator acts on the image tensor of this package, (B, C, H, W) with values in [-1, 1], and
declares the core's capability level (forward < linear < pinv < svd), so that every posterior
sampler of ``polydiff.core.posterior_sample`` can use it:

  task                 operator                                   level
  "inpaint-box"        ``MaskOperator`` (a centred or given box missing)      svd
  "inpaint-random"     ``MaskOperator`` (each pixel missing with prob. p)      svd
  "sr-avg2", "sr-avg4" ``BlockAverage`` (f x f average pooling)              svd
  "sr-bicubic2", ...   ``KroneckerOperator`` (torch's antialiased bicubic)    svd
  "deblur-gauss"       ``FFTConvolution`` (Gaussian kernel, circular)        svd
  "deblur-motion"      ``FFTConvolution`` (seeded random-walk motion kernel)  svd
  "colorize"           ``KroneckerOperator`` (RGB -> grey, mean of channels)  svd
  "phase-retrieval"    ``PhaseRetrieval`` (|F x| with oversampling)          forward (nonlinear)

``make_operator(task, shape, **options)`` builds one by name. Measurements y = A(x) + sigma_y n are
in the same [-1, 1] units as the images (phase retrieval: see its class).

``KroneckerOperator`` is the one new operator class here: y = (M_1 kron ... kron M_k) x, one
matrix per image axis (channels, rows, columns; identity where None), whose SVD is the Kronecker
product of the per-axis SVDs. Separable down-sampling (bicubic, as DDRM's separable "SRConv") and
per-pixel channel mixing (colorization) are both of this form, so neither needs a dense matrix.
"""
from __future__ import annotations

import inspect
import math
import re
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from polydiff.core.inverse import BlockAverage, CallableOperator, FFTConvolution, MaskOperator, SVDOperator

Tensor = torch.Tensor
Shape = Tuple[int, int, int]


# ============================================================================ shapes
def image_shape(shape: Sequence[int]) -> Shape:
    """(C, H, W) from (C, H, W) or (N, C, H, W) (the batch size is dropped); ValueError otherwise."""
    try:
        s = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"an image shape is (C, H, W) or (N, C, H, W) of positive integers, got {shape!r}") from None
    if len(s) == 4:
        s = s[1:]
    if len(s) != 3 or min(s) < 1:
        raise ValueError(f"an image shape is (C, H, W) or (N, C, H, W) of positive integers, got {shape!r}")
    return s  # type: ignore[return-value]


# ============================================================================ Kronecker (separable) operator
def _apply_axis(x: Tensor, M: Tensor, axis: int) -> Tensor:
    """Multiply axis ``axis`` (0-based over the non-batch dims) of x (B, ...) by the matrix M."""
    return torch.movedim(torch.movedim(x, axis + 1, -1) @ M.T, -1, axis + 1)


class KroneckerOperator(SVDOperator):
    """y = (M_1 kron M_2 kron ... kron M_k) x on x of shape (n_1, ..., n_k): axis i is multiplied by M_i.

    mats: one (m_i, n_i) matrix per axis of x_shape, or None for the identity on that axis; y has
    shape (m_1, ..., m_k). SVD: with M_i = U_i S_i V_i^T (full U_i, V_i), A = (kron U_i)(kron S_i)(kron V_i)^T,
    so the singular values are the products s_1[j_1] ... s_k[j_k] over the index box j_i < r_i =
    min(m_i, n_i); spectral coordinates list that box first (C order), then the remaining ones.
    The per-axis SVDs are computed once, in float64.
    """

    def __init__(self, mats: Sequence[Optional[Tensor]], x_shape: Sequence[int]) -> None:
        x_shape = tuple(int(n) for n in x_shape)
        if len(mats) != len(x_shape):
            raise ValueError(f"KroneckerOperator needs one matrix (or None) per axis of x_shape {x_shape}, "
                             f"got {len(mats)}")
        self.mats, us, ss, vhs, y_shape = [], [], [], [], []
        for i, (M, n) in enumerate(zip(mats, x_shape)):
            if M is None:
                self.mats.append(None)
                us.append(None)
                vhs.append(None)
                ss.append(torch.ones(n, dtype=torch.float64))
                y_shape.append(n)
                continue
            M = torch.as_tensor(M, dtype=torch.float64)
            if M.dim() != 2 or M.shape[1] != n:
                raise ValueError(f"KroneckerOperator: matrix {i} must be (m, {n}) for axis {i} of x_shape {x_shape}, "
                                 f"got {tuple(M.shape)}")
            if not bool(torch.isfinite(M).all()):
                raise ValueError(f"KroneckerOperator: matrix {i} has NaN or inf entries")
            U, s, Vh = torch.linalg.svd(M, full_matrices=True)
            self.mats.append(M)
            us.append(U)
            vhs.append(Vh)
            ss.append(s)
            y_shape.append(M.shape[0])
        super().__init__(x_shape, tuple(y_shape))
        self._U, self._Vh = us, vhs
        r = tuple(s.shape[0] for s in ss)
        sv = ss[0]
        for s in ss[1:]:
            sv = (sv[:, None] * s[None, :]).reshape(-1)
        self._svals = sv
        self._xperm, self._xinv = self._perm(x_shape, r)
        self._yperm, self._yinv = self._perm(tuple(y_shape), r)

    @staticmethod
    def _perm(shape: Tuple[int, ...], r: Tuple[int, ...]) -> Tuple[Tensor, Tensor]:
        """Flat indices of the box j_i < r_i (C order) followed by the rest, and the inverse permutation."""
        grids = torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij")
        inbox = torch.ones(shape, dtype=torch.bool)
        for g, ri in zip(grids, r):
            inbox &= g < ri
        flat = inbox.reshape(-1)
        perm = torch.cat([flat.nonzero().reshape(-1), (~flat).nonzero().reshape(-1)])
        return perm, torch.argsort(perm)

    def _apply(self, x: Tensor, mats, transpose: bool = False) -> Tensor:
        for i, M in enumerate(mats):
            if M is not None:
                M = M.to(x.device, x.dtype)
                x = _apply_axis(x, M.T if transpose else M, i)
        return x

    def A(self, x: Tensor) -> Tensor:
        return self._apply(x, self.mats)

    def At(self, y: Tensor) -> Tensor:
        return self._apply(y, self.mats, transpose=True)

    def Vt(self, x: Tensor) -> Tensor:
        return self._apply(x, self._Vh).flatten(1)[:, self._xperm.to(x.device)]

    def V(self, c: Tensor) -> Tensor:
        c = c[:, self._xinv.to(c.device)].reshape((-1,) + self.x_shape)
        return self._apply(c, self._Vh, transpose=True)

    def Ut(self, y: Tensor) -> Tensor:
        return self._apply(y, self._U, transpose=True).flatten(1)[:, self._yperm.to(y.device)]

    def U(self, c: Tensor) -> Tensor:
        c = c[:, self._yinv.to(c.device)].reshape((-1,) + self.y_shape)
        return self._apply(c, self._U)

    @property
    def singular_values(self) -> Tensor:
        return self._svals


# ============================================================================ kernels
def gaussian_kernel(std: float, size: Optional[int] = None) -> Tensor:
    """A normalised (size, size) Gaussian blur kernel (float64); size defaults to 2 ceil(3 std) + 1."""
    if not (isinstance(std, (int, float)) and math.isfinite(std) and std > 0):
        raise ValueError(f"the Gaussian kernel's std must be a finite number > 0, got {std!r}")
    size = 2 * math.ceil(3 * std) + 1 if size is None else int(size)
    if size < 1:
        raise ValueError(f"kernel size must be >= 1, got {size}")
    u = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (u / std) ** 2)
    k = g[:, None] * g[None, :]
    return k / k.sum()


def motion_kernel(size: int = 9, intensity: float = 0.5, seed: int = 0, points: int = 64) -> Tensor:
    """A normalised (size, size) motion-blur kernel from a seeded random camera trajectory (float64).

    The trajectory is a 2-D random walk with momentum: ``points`` unit steps whose direction turns by
    N(0, intensity^2) radians per step (0: a straight line; larger: a more curved, shaken path), in
    the spirit of Boracchi & Foi, "Modeling the performance of image restoration from motion blur"
    (IEEE TIP 2012). It is centred, scaled to fit the kernel's inscribed circle, and splatted onto the
    grid bilinearly. The same (size, intensity, seed, points) always gives the same kernel.
    """
    if not isinstance(size, int) or size < 3:
        raise ValueError(f"motion kernel size must be an integer >= 3, got {size!r}")
    if not (isinstance(intensity, (int, float)) and math.isfinite(intensity) and intensity >= 0):
        raise ValueError(f"motion kernel intensity must be a finite number >= 0, got {intensity!r}")
    if not isinstance(points, int) or points < 2:
        raise ValueError(f"points must be an integer >= 2, got {points!r}")
    g = torch.Generator().manual_seed(int(seed))
    angle = 2 * math.pi * torch.rand((), generator=g, dtype=torch.float64)
    turns = intensity * torch.randn(points - 1, generator=g, dtype=torch.float64)
    ang = angle + torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(turns, 0)])
    pos = torch.cumsum(torch.stack([torch.cos(ang), torch.sin(ang)], 1), 0)
    pos = pos - pos.mean(0)
    radius = float(pos.norm(dim=1).max().clamp_min(1e-12))
    c = (size - 1) / 2
    pos = c + pos * ((size - 1) / 2 - 1e-9) / radius
    k = torch.zeros(size, size, dtype=torch.float64)
    i0 = pos.floor().long().clamp(0, size - 2)
    fr = pos - i0
    for di in (0, 1):
        for dj in (0, 1):
            w = (fr[:, 0] if di else 1 - fr[:, 0]) * (fr[:, 1] if dj else 1 - fr[:, 1])
            k.index_put_((i0[:, 0] + di, i0[:, 1] + dj), w.clamp_min(0), accumulate=True)
    return k / k.sum()


def _bicubic_matrix(n: int, factor: int) -> Tensor:
    """The (n / factor, n) matrix of torch's antialiased bicubic down-sampling along one axis."""
    # rows of the identity as (n, 1, 1, n) images, resized along the last axis (torch 2.11 resizes a
    # singleton last axis wrongly when the other one shrinks, so the resized axis is the last one)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, 1, 1, n)
    out = F.interpolate(eye, size=(1, n // factor), mode="bicubic", antialias=True, align_corners=False)
    return out.reshape(n, n // factor).T.contiguous()


# ============================================================================ constructors
def inpaint_box(shape: Sequence[int], box: Optional[Sequence[int]] = None) -> MaskOperator:
    """Box inpainting: the pixels of ``box`` = (top, left, height, width) are missing in every channel.

    Default box: the centred square of half the image's height and width. y = the observed pixels,
    flattened (``MaskOperator``); ``op.At(y)`` is the zero-filled image.
    """
    C, H, W = image_shape(shape)
    if box is None:
        h, w = H // 2, W // 2
        box = ((H - h) // 2, (W - w) // 2, h, w)
    if len(tuple(box)) != 4:
        raise ValueError(f"box must be (top, left, height, width), got {box!r}")
    top, left, h, w = (int(v) for v in box)
    if top < 0 or left < 0 or h < 1 or w < 1 or top + h > H or left + w > W:
        raise ValueError(f"box {tuple(box)} (top, left, height, width) does not fit inside a {H}x{W} image")
    mask = torch.ones(C, H, W, dtype=torch.bool)
    mask[:, top:top + h, left:left + w] = False
    if not mask.any():
        raise ValueError("the box covers the whole image: nothing is observed")
    return MaskOperator(mask)


def inpaint_random(shape: Sequence[int], p_missing: float = 0.5, seed: int = 0) -> MaskOperator:
    """Random inpainting: each pixel (all its channels together) is missing with probability ``p_missing``,
    drawn once from ``seed`` (the same seed gives the same mask)."""
    C, H, W = image_shape(shape)
    if not (isinstance(p_missing, (int, float)) and 0 <= p_missing < 1):
        raise ValueError(f"p_missing must be in [0, 1), got {p_missing!r}")
    g = torch.Generator().manual_seed(int(seed))
    keep = torch.rand(H, W, generator=g) >= p_missing
    if not keep.any():
        keep.view(-1)[0] = True
    return MaskOperator(keep.expand(C, H, W).clone())


def sr_avg(shape: Sequence[int], factor: int = 2) -> BlockAverage:
    """Super-resolution by f x f average pooling (``BlockAverage``); y is (C, H/f, W/f)."""
    C, H, W = image_shape(shape)
    if not isinstance(factor, int) or factor < 1 or H % factor or W % factor:
        raise ValueError(f"the super-resolution factor {factor!r} must be a positive integer dividing "
                         f"the image size {H}x{W}")
    return BlockAverage((C, H, W), (factor, factor))


def sr_bicubic(shape: Sequence[int], factor: int = 2) -> KroneckerOperator:
    """Super-resolution by bicubic down-sampling: y = F.interpolate(x, (H/f, W/f), mode="bicubic",
    antialias=True) exactly (torch's / PIL's antialiased bicubic, Keys a = -0.5 widened by f), written as
    a separable ``KroneckerOperator`` with its SVD."""
    C, H, W = image_shape(shape)
    if not isinstance(factor, int) or factor < 1 or H % factor or W % factor:
        raise ValueError(f"the super-resolution factor {factor!r} must be a positive integer dividing "
                         f"the image size {H}x{W}")
    return KroneckerOperator([None, _bicubic_matrix(H, factor), _bicubic_matrix(W, factor)], (C, H, W))


def _check_kernel_fits(kernel: Tensor, H: int, W: int) -> None:
    if kernel.shape[0] > H or kernel.shape[1] > W:
        raise ValueError(f"the blur kernel ({kernel.shape[0]}x{kernel.shape[1]}) is larger than the image ({H}x{W})")


def deblur_gauss(shape: Sequence[int], std: float = 1.0, size: Optional[int] = None) -> FFTConvolution:
    """Gaussian deblurring: circular convolution with a normalised Gaussian kernel of ``std`` pixels
    (``FFTConvolution``, whose SVD is the Fourier/Hartley basis). The kernel is cropped to the image."""
    C, H, W = image_shape(shape)
    if size is None:
        size = min(2 * math.ceil(3 * std) + 1, H - (H + 1) % 2, W - (W + 1) % 2) if std > 0 else 1
    k = gaussian_kernel(std, size)
    _check_kernel_fits(k, H, W)
    return FFTConvolution(k, (C, H, W))


def deblur_motion(shape: Sequence[int], size: int = 9, intensity: float = 0.5, seed: int = 0,
                  kernel: Optional[Tensor] = None) -> FFTConvolution:
    """Motion deblurring: circular convolution with ``motion_kernel(size, intensity, seed)`` (or a given
    ``kernel``), as an ``FFTConvolution`` with its SVD."""
    C, H, W = image_shape(shape)
    if kernel is None:
        kernel = motion_kernel(size, intensity, seed)
    kernel = torch.as_tensor(kernel, dtype=torch.float64)
    if kernel.dim() != 2 or not bool(torch.isfinite(kernel).all()):
        raise ValueError(f"a motion kernel is a finite 2-D tensor, got shape {tuple(kernel.shape)}")
    _check_kernel_fits(kernel, H, W)
    return FFTConvolution(kernel, (C, H, W))


def colorize(shape: Sequence[int], weights: Optional[Sequence[float]] = None) -> KroneckerOperator:
    """Colorization: y = sum_c w_c x_c, a (1, H, W) grey image from a (C, H, W) colour one.

    Default weights: the channel mean (1/C each, as DDRM and DDNM), which keeps [-1, 1]. Per pixel the
    map is the 1 x C matrix w^T, so the operator is ``KroneckerOperator([w^T, None, None])``: one
    singular value |w| per pixel, V = an orthonormal basis of the colour space starting at w / |w|.
    """
    C, H, W = image_shape(shape)
    if C < 2:
        raise ValueError(f"colorization needs a colour image (C >= 2 channels, usually 3), got C = {C}")
    w = (torch.full((C,), 1.0 / C, dtype=torch.float64) if weights is None
         else torch.as_tensor(weights, dtype=torch.float64))
    if w.shape != (C,) or not bool(torch.isfinite(w).all()) or float(w.abs().sum()) == 0:
        raise ValueError(f"colorization weights must be {C} finite numbers, not all zero; got {weights!r}")
    return KroneckerOperator([w[None, :], None, None], (C, H, W))


class PhaseRetrieval(CallableOperator):
    """Fourier phase retrieval y = |F pad((x + 1) / 2)| (nonlinear; level "forward").

    The image in [-1, 1] is first mapped to intensities u = (x + 1)/2 in [0, 1] (phase retrieval
    recovers a non-negative object; on [-1, 1] the global sign x -> -x would be invisible too), then
    zero-padded to (oversampling H, oversampling W), centred, and the magnitude of its orthonormal 2-D
    FFT is measured, channel by channel: y has shape (C, oversampling H, oversampling W). The
    oversampling (DPS uses 2) makes the magnitudes determine the image up to the trivial ambiguities
    (translation within the padding, point reflection). Setting as in Chung et al., "Diffusion
    Posterior Sampling for General Noisy Inverse Problems" (ICLR 2023), Sec. 4.
    """

    def __init__(self, shape: Sequence[int], oversampling: float = 2.0) -> None:
        C, H, W = image_shape(shape)
        if not (isinstance(oversampling, (int, float)) and oversampling >= 1):
            raise ValueError(f"oversampling must be a number >= 1, got {oversampling!r}")
        self.oversampling = float(oversampling)
        Hp, Wp = int(round(H * oversampling)), int(round(W * oversampling))
        self.pad = ((Wp - W) // 2, Wp - W - (Wp - W) // 2, (Hp - H) // 2, Hp - H - (Hp - H) // 2)
        super().__init__(self._forward, (C, H, W), (C, Hp, Wp))

    def _forward(self, x: Tensor) -> Tensor:
        u = F.pad((x + 1) / 2, self.pad)
        return torch.fft.fft2(u, norm="ortho").abs()


def phase_retrieval(shape: Sequence[int], oversampling: float = 2.0) -> PhaseRetrieval:
    """Phase retrieval with the given oversampling (see ``PhaseRetrieval``)."""
    return PhaseRetrieval(shape, oversampling)


# ============================================================================ factory
_FIXED: Dict[str, Callable] = {
    "inpaint-box": inpaint_box,
    "inpaint-random": inpaint_random,
    "deblur-gauss": deblur_gauss,
    "deblur-motion": deblur_motion,
    "colorize": colorize,
    "phase-retrieval": phase_retrieval,
}
#: the task names ``make_operator`` accepts (sr-avg<f> and sr-bicubic<f> take any integer factor f >= 2)
TASKS = ("inpaint-box", "inpaint-random", "sr-avg2", "sr-avg4", "sr-bicubic2", "sr-bicubic4", "deblur-gauss",
         "deblur-motion", "colorize", "phase-retrieval")


def make_operator(task: str, shape: Sequence[int], **options) -> Union[SVDOperator, PhaseRetrieval]:
    """The image operator for ``task`` on images of ``shape`` (C, H, W) (or (N, C, H, W)).

    Tasks: see ``TASKS`` ("sr-avg<f>" / "sr-bicubic<f>" for any integer factor f >= 2). ``options``
    go to the task's constructor (e.g. ``box=`` for "inpaint-box", ``p_missing=``, ``seed=`` for
    "inpaint-random", ``std=`` for "deblur-gauss", ``size=``, ``intensity=``, ``seed=`` for
    "deblur-motion", ``weights=`` for "colorize", ``oversampling=`` for "phase-retrieval").
    """
    if not isinstance(task, str):
        raise ValueError(f"task must be a string, one of {', '.join(TASKS)}; got {task!r}")
    m = re.fullmatch(r"sr-(avg|bicubic)(\d+)", task)
    if m:
        fn = sr_avg if m.group(1) == "avg" else sr_bicubic
        factor = int(m.group(2))
        if factor < 2:
            raise ValueError(f"unknown image task {task!r}: the super-resolution factor must be >= 2")
        if options:
            raise ValueError(f"task {task!r} takes no options (the factor is in its name), got {sorted(options)}")
        return fn(shape, factor)
    if task not in _FIXED:
        raise ValueError(f"unknown image task {task!r}; valid: {', '.join(TASKS)} (sr-avg<f> / sr-bicubic<f> "
                         f"for any integer factor f >= 2)")
    fn = _FIXED[task]
    allowed = list(inspect.signature(fn).parameters)[1:]
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise ValueError(f"task {task!r} has no option(s) {bad}; its options: {allowed or 'none'}")
    return fn(shape, **options)


__all__ = ["TASKS", "make_operator", "image_shape", "KroneckerOperator", "PhaseRetrieval", "gaussian_kernel",
           "motion_kernel", "inpaint_box", "inpaint_random", "sr_avg", "sr_bicubic", "deblur_gauss", "deblur_motion",
           "colorize", "phase_retrieval"]
