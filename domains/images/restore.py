"""Image restoration with a diffusion prior: measure, restore, compare with the measurement's own baseline.

    from polydiff.domains import images
    from polydiff.domains.images.restore import restore, baseline, scores
    x, _ = images.load_digits("test")
    g = torch.Generator().manual_seed(0)
    xr, y, op = restore(x[:8], "sr-bicubic2", "diffpir", sigma_y=0.05, generator=g)   # default model, 20 steps
    scores(xr, x[:8], op)            # {"psnr": ..., "ssim": ..., "perceptual": ...}
    scores(baseline(y, op), x[:8], op)

``restore`` builds the task's operator (``operators.make_operator``), draws the measurement
y = A(x) + sigma_y n from the generator, and runs a posterior sampler of the core
(``polydiff.core.inverse.posterior_sample``) with the model's unconditional prior. Everything is in
the documented [-1, 1] image scale, sigma_y included. ``restore_measurement`` does the same from a
measurement the user already has (the ``polydiff restore images`` command uses it).

``METHOD_DEFAULTS`` fixes, per method, a step count and options that work at the size of the default
model (16x16 digits). The step counts follow each paper's own setting scaled to this small model,
and keep the literature's ordering of cost: the gradient-guided DPS needs many more network
evaluations (NFE) than the proximal / spectral methods (DiffPIR, DDRM) for similar quality.

``baseline`` is what the measurement gives without any prior: the zero-filled image (inpainting),
the bicubic upsampling (super-resolution), the blurred image itself (deblurring), the replicated grey
image (colorization), the pseudo-inverse otherwise, and, for phase retrieval, Fienup's hybrid
input-output algorithm. ``align_ambiguity`` resolves phase retrieval's point-reflection ambiguity
before scoring.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path as FsPath
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from polydiff.core.inverse import (BlockAverage, FFTConvolution, MaskOperator, Operator, PseudoInverseOperator,
                                   get_method, level_rank, methods, posterior_sample)

from .operators import KroneckerOperator, PhaseRetrieval, make_operator

Tensor = torch.Tensor

#: per-method settings at the default model's size (16x16 digits, VP path). "steps" is the grid size;
#: "nfe" the resulting network evaluations per image (backward passes in "backward"); "options" go to
#: the method (``polydiff.core.inverse.methods()[name].options()``); "forward_options" replace them on
#: a nonlinear (forward-only) operator such as phase retrieval.
METHOD_DEFAULTS: Dict[str, Dict[str, Any]] = {
    # Chung et al. 2023 use 1000 steps with zeta in 0.3-1.0 (non-squared norm: the step length is fixed);
    # 200 steps with zeta = 1 here (2 CPU cores); it is still the most expensive method by far.
    "dps": {"steps": 200, "options": {"scale": 1.0}, "nfe": 200, "backward": 200},
    # Song et al. 2023: 100 steps, eta = 1, the adaptive Tweedie weight; 50 here.
    "pigdm": {"steps": 50, "options": {}, "nfe": 50, "backward": 50},
    # Kawar et al. 2022: 20 steps, eta = 0.85, eta_b = 1 (the paper's setting).
    "ddrm": {"steps": 20, "options": {}, "nfe": 20, "backward": 0},
    # Wang et al. 2023: 100 steps, eta = 0.85 (DDNM+ for noisy measurements); 50 here.
    "ddnm": {"steps": 50, "options": {}, "nfe": 50, "backward": 0},
    # Zhu et al. 2023: 20-100 steps; lambda = 7, zeta = 0.1 (deepinv's defaults); 20 here.
    "diffpir": {"steps": 20, "options": {}, "nfe": 20, "backward": 0},
    # Mardani et al. 2024: 1000 Adam steps, lambda = 0.25, lr = 0.1, init A^+ y; 100 here, and init
    # zeros where A^+ y is useless (no pseudo-inverse, or condition number > 1e3: deblurring).
    "reddiff": {"steps": 100, "options": {}, "nfe": 100, "backward": 0},
    # Zhang et al. 2025: DAPS-1K is 200 annealing levels x 5 ODE steps. At 100 NFE, more levels with
    # shorter ODEs (50 x 2) beat 20 x 5 here (the last level's r_t noise stays in the output). On a
    # nonlinear operator the data step is Langevin (50 steps, no network evaluation).
    "daps": {"steps": 50, "options": {"ode_steps": 2}, "nfe": 100, "backward": 0,
             "forward_options": {"ode_steps": 2, "langevin_steps": 50, "lr": 0.1}},
    # the particle methods of the core, with 8 particles per image (the cost is K times larger)
    "mcgdiff": {"steps": 50, "options": {"particles": 8}, "nfe": 400, "backward": 0},
    "fps": {"steps": 50, "options": {"particles": 8}, "nfe": 400, "backward": 0},
    "tds": {"steps": 50, "options": {"particles": 8}, "nfe": 400, "backward": 400},
    "fk": {"steps": 50, "options": {"particles": 8}, "nfe": 400, "backward": 400},
}

#: the methods the notebook and the benchmark compare (the issue's list)
COMPARED = ("dps", "pigdm", "ddrm", "ddnm", "diffpir", "reddiff", "daps")

#: what ``baseline`` computes for each operator kind
BASELINE_NAMES = {"MaskOperator": "zero-filled", "BlockAverage": "bicubic upsampling",
                  "KroneckerOperator": "bicubic upsampling", "FFTConvolution": "blurred input",
                  "PhaseRetrieval": "HIO (Fienup)"}


# ============================================================================ model and inputs
def resolve_model(model: Any = None) -> Any:
    """The prior: None -> ``pretrained("digits")``; a name of a shipped model or a saved model directory;
    or any object with ``denoiser``, ``path`` and ``shape`` (C, H, W) (an ``ImageDiffusionModel``)."""
    if model is None or isinstance(model, (str, FsPath)):
        from .pretrained import MODELS, load_model, pretrained
        spec = "digits" if model is None else str(model)
        if spec in MODELS:
            return pretrained(spec)
        if FsPath(spec).is_dir():
            return load_model(spec)
        raise ValueError(f"unknown model {spec!r}; valid: {sorted(MODELS)} or a saved model directory")
    for attr in ("denoiser", "path", "shape"):
        if not hasattr(model, attr):
            raise ValueError(f"model must be an ImageDiffusionModel (denoiser, path, shape) or a model name, "
                             f"got {type(model).__name__} without .{attr}")
    return model


def _device(model: Any) -> torch.device:
    D = model.denoiser
    if isinstance(D, torch.nn.Module):
        p = next(D.parameters(), None)
        if p is not None:
            return p.device
    return torch.device("cpu")


def _check_batch(images: Tensor, shape: Sequence[int]) -> Tensor:
    from .data import check_images
    C, H, W = (int(s) for s in shape)
    return check_images(images, "images", channels=C, size=(H, W))


def get_operator(task: Union[str, Operator], shape: Sequence[int], task_options: Optional[Mapping[str, Any]] = None
                 ) -> Operator:
    """``task`` as an operator on images of ``shape``: a task name (``operators.TASKS``, built with
    ``task_options``) or an already built ``polydiff.core.inverse`` operator whose x_shape is ``shape``."""
    if isinstance(task, Operator):
        if task_options:
            raise ValueError("task_options apply to a task name, not to an operator instance")
        if tuple(task.x_shape) != tuple(int(s) for s in shape):
            raise ValueError(f"the operator acts on images of shape {tuple(task.x_shape)}, but the model's images "
                             f"are {tuple(shape)}")
        return task
    return make_operator(task, shape, **dict(task_options or {}))


def measure(images: Tensor, operator: Operator, sigma_y: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """y = A(x) + sigma_y n with n ~ N(0, I) drawn from ``generator`` (images in [-1, 1])."""
    sigma_y = _check_sigma(sigma_y)
    operator.check_x(images, "images")
    with torch.no_grad():
        Ax = operator.A(images)
        if sigma_y == 0:
            return Ax
        dev = Ax.device if generator is None else generator.device
        return Ax + sigma_y * torch.randn(Ax.shape, generator=generator, dtype=Ax.dtype, device=dev).to(Ax.device)


def _check_sigma(sigma_y: Any) -> float:
    if isinstance(sigma_y, bool) or not isinstance(sigma_y, (int, float)) or not math.isfinite(sigma_y) or sigma_y < 0:
        raise ValueError(f"sigma_y must be a finite number >= 0 (in the [-1, 1] image scale), got {sigma_y!r}")
    return float(sigma_y)


def method_settings(method: str, operator: Optional[Operator] = None, steps: Optional[int] = None,
                    **options: Any) -> Tuple[int, Dict[str, Any]]:
    """(steps, options) for ``method``: ``METHOD_DEFAULTS`` (its "forward_options" on a nonlinear
    operator) overridden by the given ``steps`` and ``options``. RED-diff starts from zeros instead of
    A^+ y where that is noise (no pseudo-inverse, or an ill-conditioned SVD such as a blur)."""
    if not isinstance(method, str):
        raise ValueError(f"method must be a name, one of {sorted(methods())}; got {method!r}")
    info = get_method(method)      # ValueError listing the valid names
    d = METHOD_DEFAULTS.get(method, {"steps": 100, "options": {}})
    base = d["options"]
    if operator is not None and operator.level == "forward" and "forward_options" in d:
        base = d["forward_options"]
    merged = {**base, **options}
    n = d["steps"] if steps is None else steps
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if operator is not None and method == "reddiff" and not _well_conditioned(operator):
        merged.setdefault("init", "zeros")
    if not info.particles:
        merged.pop("particles", None)
    return n, merged


def supports(method: str, operator: Operator) -> bool:
    """Whether ``method`` accepts ``operator`` (its capability level is at least the method's)."""
    return level_rank(operator.level) >= level_rank(get_method(method).level)


def _well_conditioned(operator: Operator, max_condition: float = 1e3) -> bool:
    """Whether A^+ y is a usable starting point: a pseudo-inverse exists and, with an SVD, the singular
    values span less than ``max_condition`` (A^+ multiplies the noise on s_j by 1 / s_j; a Gaussian blur's
    smallest singular values are ~1e-8, which makes A^+ y pure noise)."""
    if not isinstance(operator, PseudoInverseOperator):
        return False
    s = getattr(operator, "singular_values", None) if operator.level == "svd" else None
    if s is None or s.numel() == 0:
        return True
    return float(s.abs().max()) <= max_condition * float(s.abs().min())


# ============================================================================ restoration
def restore_measurement(y: Tensor, operator: Operator, method: str, *, model: Any = None, sigma_y: float = 0.05,
                        steps: Optional[int] = None, generator: Optional[torch.Generator] = None,
                        return_info: bool = False, **options: Any):
    """Restored images (B, C, H, W) in [-1, 1] (clamped) from a measurement y (B, *operator.y_shape).

    method: a posterior sampler of ``polydiff.core.inverse.methods()``; its level must fit the
    operator's (e.g. DDRM needs an SVD, so it refuses phase retrieval). steps/options: default
    ``METHOD_DEFAULTS[method]``. sigma_y: the measurement noise std in the [-1, 1] image scale.
    return_info: also return {"nfe", "backward", "seconds"} per image.
    """
    model = resolve_model(model)
    sigma_y = _check_sigma(sigma_y)
    if not isinstance(operator, Operator):
        raise ValueError(f"operator must be a polydiff.core.inverse Operator, got {type(operator).__name__}")
    if tuple(operator.x_shape) != tuple(model.shape):
        raise ValueError(f"the operator acts on images of shape {tuple(operator.x_shape)}, but the model's images "
                         f"are {tuple(model.shape)}")
    n, opts = method_settings(method, operator, steps, **options)
    if not supports(method, operator):
        raise ValueError(f"method {method!r} needs an operator of level {get_method(method).level!r}, but "
                         f"{type(operator).__name__} has level {operator.level!r}; methods that fit: "
                         f"{sorted(k for k in methods() if supports(k, operator))}")
    dev = _device(model)
    t0 = time.perf_counter()
    x, inf = posterior_sample(model.denoiser, y.to(dev), operator, path=model.path, method=method, steps=n,
                              sigma_y=sigma_y, generator=generator, return_info=True, **opts)
    inf["seconds"] = time.perf_counter() - t0
    x = x.detach().clamp(-1.0, 1.0)
    return (x, inf) if return_info else x


def restore(images: Tensor, task: Union[str, Operator], method: str, *, model: Any = None, sigma_y: float = 0.05,
            steps: Optional[int] = None, generator: Optional[torch.Generator] = None,
            task_options: Optional[Mapping[str, Any]] = None, **options: Any) -> Tuple[Tensor, Tensor, Operator]:
    """Measure clean ``images`` with ``task`` and restore them: (restored, measurement, operator).

    images: (N, C, H, W) in [-1, 1] at the model's shape. task: a name of ``operators.TASKS`` (options
    in ``task_options``, e.g. {"std": 1.5} for "deblur-gauss") or an operator. method: a core posterior
    sampler (``METHOD_DEFAULTS`` gives its steps and options; ``steps`` and ``options`` override).
    model: None (the shipped digits model), a name, or an ``ImageDiffusionModel``. sigma_y: noise std in
    the [-1, 1] scale. generator: the only randomness (the measurement noise first, then the sampler).
    The restored images are clamped to [-1, 1].
    """
    model = resolve_model(model)
    images = _check_batch(images, model.shape).to(_device(model))
    op = get_operator(task, model.shape, task_options)
    y = measure(images, op, sigma_y, generator)
    x = restore_measurement(y, op, method, model=model, sigma_y=sigma_y, steps=steps, generator=generator, **options)
    return x, y, op


# ============================================================================ baselines and scores
def hio(y: Tensor, operator: PhaseRetrieval, iterations: int = 300, beta: float = 0.9, restarts: int = 4,
        generator: Optional[torch.Generator] = None) -> Tensor:
    """Fienup's hybrid input-output phase retrieval (Fienup, "Phase retrieval algorithms: a comparison",
    Applied Optics 21, 1982), the classical baseline without a learned prior.

    Works on the intensities u = (x + 1) / 2 zero-padded as in ``PhaseRetrieval``: impose the measured
    magnitudes, then inside the image support with 0 <= u <= 1 keep the result and elsewhere push
    u <- u - beta u'; the last 20 iterations are error reduction (project onto the constraints). The best
    of ``restarts`` random starts (smallest magnitude residual) is returned, as x in [-1, 1]."""
    if not isinstance(operator, PhaseRetrieval):
        raise ValueError(f"hio needs a PhaseRetrieval operator, got {type(operator).__name__}")
    operator.check_y(y)
    C, H, W = operator.x_shape
    l, r, t, b = operator.pad
    Hp, Wp = H + t + b, W + l + r
    support = torch.zeros(Hp, Wp, dtype=torch.bool, device=y.device)
    support[t:t + H, l:l + W] = True
    mag = y.clamp_min(0).to(torch.float64)
    best, best_err = None, None
    for _ in range(max(int(restarts), 1)):
        u = torch.rand(mag.shape, generator=generator, dtype=torch.float64).to(y.device) * support
        for k in range(int(iterations)):
            Fu = torch.fft.fft2(u, norm="ortho")
            up = torch.fft.ifft2(mag * torch.exp(1j * torch.angle(Fu)), norm="ortho").real
            ok = support & (up >= 0) & (up <= 1)
            if k >= iterations - 20:
                u = up.clamp(0, 1) * support
            else:
                u = torch.where(ok, up, u - beta * up)
        err = (torch.fft.fft2(u, norm="ortho").abs() - mag).flatten(1).norm(dim=1)
        if best is None:
            best, best_err = u, err
        else:
            better = (err < best_err).view(-1, *([1] * (u.dim() - 1)))
            best = torch.where(better, u, best)
            best_err = torch.minimum(err, best_err)
    x = best[..., t:t + H, l:l + W] * 2 - 1
    return x.to(y.dtype).clamp(-1, 1)


def baseline(y: Tensor, operator: Operator, generator: Optional[torch.Generator] = None) -> Tensor:
    """The measurement's own estimate of the images, without a prior (``BASELINE_NAMES``), in [-1, 1]:
    zero-filled (masks), bicubic upsampling (image-shaped measurements smaller than the image), the
    measurement itself (a same-shape blur), grey replicated to every channel (colorization), Fienup's
    HIO (phase retrieval), the pseudo-inverse otherwise."""
    if isinstance(operator, PhaseRetrieval):
        return hio(y, operator, generator=generator)
    x_shape, y_shape = tuple(operator.x_shape), tuple(operator.y_shape)
    if isinstance(operator, MaskOperator):
        x = operator.At(y)
    elif len(y_shape) == 3 and y_shape == x_shape:
        x = y.clone()
    elif len(y_shape) == 3 and y_shape[1:] == x_shape[1:] and y_shape[0] == 1:
        x = y.expand((y.shape[0],) + x_shape)
    elif len(y_shape) == 3 and y_shape[0] == x_shape[0] and y_shape[1] <= x_shape[1] and y_shape[2] <= x_shape[2]:
        x = F.interpolate(y, size=x_shape[1:], mode="bicubic", align_corners=False)
    elif isinstance(operator, PseudoInverseOperator):
        x = operator.pinv(y)
    else:
        raise ValueError(f"no baseline for {type(operator).__name__} (a nonlinear operator without one)")
    return x.clamp(-1.0, 1.0)


def baseline_name(operator: Operator) -> str:
    """A short name of what ``baseline`` does for ``operator``."""
    return BASELINE_NAMES.get(type(operator).__name__, "pseudo-inverse")


def _mirror(x: Tensor) -> Tensor:
    """The twin image with the same Fourier magnitudes under ``PhaseRetrieval``: the image rotated by 180
    degrees (reflecting the zero-padded image, n -> N - 1 - n, keeps |F u| and maps the support onto
    the image rotated inside its swapped padding; the magnitudes ignore that shift)."""
    return torch.flip(x, dims=(-2, -1))


def align_ambiguity(x_hat: Tensor, x: Tensor, operator: Operator) -> Tensor:
    """For phase retrieval, each restored image or its twin (``_mirror``: the same Fourier magnitudes),
    whichever is closer to the truth ``x`` (the trivial ambiguity no method can resolve from |F x|);
    other operators: ``x_hat`` unchanged."""
    if not isinstance(operator, PhaseRetrieval):
        return x_hat
    m = _mirror(x_hat)
    d0 = (x_hat - x).flatten(1).pow(2).sum(1)
    d1 = (m - x).flatten(1).pow(2).sum(1)
    return torch.where((d1 < d0).view(-1, 1, 1, 1), m, x_hat)


def scores(x_hat: Tensor, x: Tensor, operator: Optional[Operator] = None) -> Dict[str, float]:
    """Mean PSNR (dB), SSIM and perceptual distance (``evaluate``) of ``x_hat`` against ``x`` (both in
    [-1, 1]), after ``align_ambiguity`` when ``operator`` is given."""
    from .evaluate import perceptual_distance, psnr, ssim
    if operator is not None:
        x_hat = align_ambiguity(x_hat, x, operator)
    with torch.no_grad():
        return {"psnr": float(psnr(x_hat, x).mean()), "ssim": float(ssim(x_hat, x).mean()),
                "perceptual": float(perceptual_distance(x_hat, x).mean())}


def compare(images: Tensor, tasks: Sequence[str], methods_: Sequence[str] = COMPARED, *, model: Any = None,
            sigma_y: float = 0.05, steps: Optional[Mapping[str, int]] = None, seed: int = 0,
            task_options: Optional[Mapping[str, Mapping[str, Any]]] = None,
            options: Optional[Mapping[str, Mapping[str, Any]]] = None,
            log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Run every method on every task over ``images`` (the notebook's and the benchmark's table).

    The measurement of each task is drawn once (seed ``seed``) and shared by all methods; each method
    then runs with its own generator (seed ``seed`` + 1). Methods whose operator level does not fit a
    task are skipped (recorded as None). steps / options: per-method overrides of ``METHOD_DEFAULTS``;
    task_options: per-task operator options. Returns {"rows": [dict(task, method, psnr, ssim,
    perceptual, seconds, nfe, backward)], "outputs": {(task, method): images}, "measurements": {task: y},
    "operators": {task: op}}; the baseline is the row with method "baseline"."""
    model = resolve_model(model)
    images = _check_batch(images, model.shape).to(_device(model))
    rows, outputs, ys, ops = [], {}, {}, {}
    for task in tasks:
        op = get_operator(task, model.shape, (task_options or {}).get(task))
        g = torch.Generator().manual_seed(seed)
        y = measure(images, op, sigma_y, g)
        ys[task], ops[task] = y, op
        t0 = time.perf_counter()
        xb = baseline(y, op, generator=torch.Generator().manual_seed(seed))
        rows.append({"task": task, "method": "baseline", "name": baseline_name(op), **scores(xb, images, op),
                     "seconds": time.perf_counter() - t0, "nfe": 0, "backward": 0})
        outputs[(task, "baseline")] = xb
        for m in methods_:
            if not supports(m, op):
                rows.append({"task": task, "method": m, "name": m, "psnr": None, "ssim": None, "perceptual": None,
                             "seconds": None, "nfe": None, "backward": None})
                continue
            gm = torch.Generator().manual_seed(seed + 1)
            n = None if steps is None else steps.get(m)
            xr, inf = restore_measurement(y, op, m, model=model, sigma_y=sigma_y, steps=n, generator=gm,
                                          return_info=True, **dict((options or {}).get(m, {})))
            row = {"task": task, "method": m, "name": m, **scores(xr, images, op), "seconds": inf["seconds"],
                   "nfe": inf["nfe"], "backward": inf["backward"]}
            rows.append(row)
            outputs[(task, m)] = xr
            if log is not None:
                log(f"{task:16s} {m:8s} PSNR {row['psnr']:6.2f}  SSIM {row['ssim']:.3f}  "
                    f"{row['seconds']:6.1f} s  NFE {row['nfe']}")
    return {"rows": rows, "outputs": outputs, "measurements": ys, "operators": ops}


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows of ``compare`` as a markdown table (one line per task and method; n/a where skipped)."""
    lines = ["| task | method | PSNR (dB) | SSIM | perceptual | NFE (backward) | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        name = r["name"] if r["method"] != "baseline" else f"baseline: {r['name']}"
        if r["psnr"] is None:
            lines.append(f"| {r['task']} | {name} | n/a (needs a linear operator) | | | | |")
            continue
        nfe = f"{r['nfe']} ({r['backward']})" if r["nfe"] else "0"
        lines.append(f"| {r['task']} | {name} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['perceptual']:.4f} | "
                     f"{nfe} | {r['seconds']:.1f} |")
    return "\n".join(lines)


# ============================================================================ command line
def _resize_to(x: Tensor, hw: Tuple[int, int], what: str) -> Tensor:
    """Resize a (1, C, h, w) image to hw = (H, W) (antialiased bicubic) when the aspect ratio matches."""
    h, w = x.shape[-2:]
    H, W = hw
    if (h, w) == (H, W):
        return x
    if h * W != w * H:
        raise ValueError(f"{what} is {h}x{w} pixels but must be {H}x{W} (the aspect ratio differs, so it cannot "
                         f"be resized without distortion; crop it to a {H}:{W} shape first)")
    return F.interpolate(x, size=(H, W), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)


def measurement_from_image(image: Tensor, operator: Operator) -> Tensor:
    """A user's degraded image (1, C, h, w) in [-1, 1] as the measurement y of ``operator``: the observed
    pixels of a masked image, or the image itself (resized to the measurement's size when the aspect
    ratio allows) for super-resolution, blur and colorization. Phase retrieval's measurement is not an
    image: ValueError."""
    if isinstance(operator, MaskOperator):
        C, H, W = operator.x_shape
        img = _convert_channels(image, C, "the input image")
        return operator.A(_resize_to(img, (H, W), "the input image"))
    y_shape = tuple(operator.y_shape)
    if len(y_shape) != 3 or isinstance(operator, PhaseRetrieval):
        raise ValueError(f"the measurement of {type(operator).__name__} is not an image; pass the clean image "
                         "with --simulate to measure it first")
    img = _convert_channels(image, y_shape[0], "the input image")
    return _resize_to(img, y_shape[1:], "the input image (the measurement)")


def _convert_channels(x: Tensor, C: int, what: str) -> Tensor:
    c = x.shape[1]
    if c == C:
        return x
    if C == 1 and c == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    if C == 3 and c == 1:
        return x.expand(x.shape[0], 3, *x.shape[2:])
    raise ValueError(f"{what} has {c} channels but {C} are needed")


def restore_command(args: argparse.Namespace) -> int:
    """Handler of ``polydiff restore images``."""
    from .data import read_image, write_image
    if args.threads:
        torch.set_num_threads(args.threads)
    out = FsPath(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"):
        raise ValueError(f"--out must be an image file (.png, ...), got {args.out!r}")
    model = resolve_model(args.model)
    get_method(args.method)
    C, H, W = model.shape
    op = get_operator(args.task, model.shape)
    image = read_image(args.input)
    g = torch.Generator().manual_seed(args.seed)
    if args.simulate:
        x = _resize_to(_convert_channels(image, C, "the input image"), (H, W), "the input image")
        y = measure(x, op, args.sigma_y, g)
    else:
        y = measurement_from_image(image, op)
    xr, inf = restore_measurement(y, op, args.method, model=model, sigma_y=args.sigma_y, steps=args.steps,
                                  generator=g, return_info=True)
    write_image(out, xr[:1])
    if args.measurement_out:
        write_image(args.measurement_out, baseline(y, op, generator=g)[:1])
    print(f"restored {args.input} ({args.task}, {args.method}, {inf['nfe']} NFE, {inf['seconds']:.1f} s) -> {out}")
    return 0


def add_restore_command(verbs: Any) -> argparse.ArgumentParser:
    """Add ``polydiff restore images`` to the CLI (``verbs`` as in ``polydiff.tasks.cli``)."""
    from .operators import TASKS
    p = verbs["restore"]("images", help="restore an image with the default digits prior (inpainting, SR, deblurring)",
                         description="Restore a degraded image with a diffusion prior and a posterior sampler. "
                                     "INPUT is the degraded image (the observed pixels for inpainting, the "
                                     "low-resolution image for super-resolution, the blurred image for "
                                     "deblurring), or with --simulate a clean image that is measured first.")
    p.add_argument("input", help="input image file (PNG, ...)")
    p.add_argument("--task", default="inpaint-box", help=f"measurement: {', '.join(TASKS)}")
    p.add_argument("--method", default="diffpir", help=f"posterior sampler: {', '.join(sorted(methods()))}")
    p.add_argument("--out", default="restored.png", help="output image (default restored.png)")
    p.add_argument("--sigma-y", dest="sigma_y", type=float, default=0.05,
                   help="measurement noise std in the [-1, 1] image scale (default 0.05)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the method's own, see "
                                                          "restore.METHOD_DEFAULTS)")
    p.add_argument("--simulate", action="store_true",
                   help="INPUT is a clean image: measure it (with --sigma-y noise) before restoring")
    p.add_argument("--measurement-out", dest="measurement_out", default=None,
                   help="also write the measurement's own baseline image (zero-filled, upsampled, ...)")
    p.add_argument("--model", default="digits", help="a shipped model name or a saved model directory")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=restore_command)
    return p


__all__ = ["METHOD_DEFAULTS", "COMPARED", "restore", "restore_measurement", "measure", "get_operator",
           "method_settings", "supports", "resolve_model", "baseline", "baseline_name", "hio", "align_ambiguity", "scores",
           "compare", "markdown_table", "measurement_from_image", "add_restore_command", "restore_command"]
