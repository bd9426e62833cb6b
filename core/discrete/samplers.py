"""Samplers for discrete processes: pure functions of (denoiser, x1, process, time grid, generator, options).

``polydiff.core.sample(D, x1, path=process, solver=..., steps=...)`` dispatches here when ``path`` is
a ``discrete.Process``. The denoiser contract mirrors the Gaussian one:

    D(x_t, t, **cond) -> logits (B, L, V) of p(x0 | x_t) over the V data symbols (never the mask),

with x_t (B, L) int64 tokens (the mask id is V) and t of shape (B,) float64 (the rates and
posteriors depend on t to many digits near t = 1; a network casts it, as polydiff's time embeddings
do). A model that outputs probabilities returns their log. The conversion of logits happens here
only: ``x0_probs`` gives the x0 distribution a sampler uses (temperature, top-k, nucleus, and for
masked processes MDLM's carry-over of unmasked tokens), ``x0_log_probs`` its differentiable
log-probabilities for the losses; ``Process.posterior`` / ``Process.reverse_rates`` turn it into
reverse steps. Categorical draws are float64 inversions (``processes.categorical``).

``exact_distribution`` computes the exact output distribution of the ancestral, tau-leaping, ReMDM
and predictor-corrector samplers on small problems (every state at once), so their bias can be
measured without Monte-Carlo error.

Solvers (``solvers()`` lists them with their options):

  ancestral     exact per-position posterior steps q(x_s | x_t, x0-hat) on the grid (D3PM; MDLM).
  tau_leaping   Campbell et al. 2022 tau-leaping with the reverse rates.
  first_hitting Zheng et al. 2025 first-hitting sampler for masked processes: exact.
  remdm         Wang et al. 2025 ReMDM remasking (max-capped or rescaled sigma_t), masked processes.
  pc            ancestral predictor + Campbell et al. 2022 corrector (forward + reverse rates).
  svdd          SVDD reward guidance (Li et al. 2024), see ``guidance.py``.

Positions are sampled independently given x_t in every step, so ancestral, tau_leaping, remdm and pc
carry an O(1/steps) error from that factorisation even with the exact denoiser; the first-hitting
sampler changes one position per evaluation and has none.
"""
from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from ..grids import check_grid
from .processes import Masked, Process, categorical

Tensor = torch.Tensor
DISCRETE_GRIDS = ("uniform", "quadratic")
MAX_EXACT_STATES = 2 ** 16      # exact_distribution's limits: S^L states, and S^L * S^ceil(L/2) floats of
MAX_EXACT_ENTRIES = 2 ** 25     # work space (the half-sequence outer products, see _ExactContext.draw)


# --------------------------------------------------------------------------- x0 conversion
def _check_x0_options(temperature: float, top_k: Optional[int], top_p: Optional[float], vocab_size: int) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not (
            math.isfinite(float(temperature)) and float(temperature) > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocab_size):
        raise ValueError(f"top_k must be None or an integer in [1, {vocab_size}], got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, numbers.Real)
                              or not 0.0 < float(top_p) <= 1.0):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")


def _x0_probs(logits: Tensor, x_t: Tensor, process: Process, temperature: float = 1.0,
              top_k: Optional[int] = None, top_p: Optional[float] = None) -> Tensor:
    lg = logits.to(torch.float64)
    if temperature != 1.0:
        lg = lg / temperature
    if top_k is not None and top_k < lg.shape[-1]:
        kth = lg.topk(top_k, dim=-1).values[..., -1:]
        lg = lg.masked_fill(lg < kth, -math.inf)
    p = torch.softmax(lg, dim=-1)
    if top_p is not None and top_p < 1.0:
        sp, order = p.sort(dim=-1, descending=True)
        before = sp.cumsum(-1) - sp                     # mass strictly above each entry
        keep_sorted = before < top_p                    # the smallest prefix reaching top_p (>= 1 entry)
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        p = p * keep
        p = p / p.sum(-1, keepdim=True)
    if process.mask_id is not None and isinstance(process, Masked):
        # MDLM's carry-over: an unmasked token of a masked process is its own x0
        unmasked = x_t != process.mask_id
        oh = torch.nn.functional.one_hot(x_t.clamp_max(process.vocab_size - 1), process.vocab_size).to(p.dtype)
        p = torch.where(unmasked[..., None], oh, p)
    return p


def x0_log_probs(logits: Tensor, x_t: Tensor, process: Process) -> Tensor:
    """log p(x0 | x_t) (B, L, V) in the logits' dtype and differentiable: the losses' side of the same
    conversion (log-softmax, and MDLM's carry-over for masked processes: 0 at an unmasked position's own
    token, -inf elsewhere). No temperature or truncation: those are sampling choices."""
    lp = torch.log_softmax(logits, dim=-1)
    if isinstance(process, Masked):
        V = process.vocab_size
        unmasked = (x_t != process.mask_id)[..., None]
        own = torch.nn.functional.one_hot(x_t.clamp_max(V - 1), V).bool()
        carry = torch.zeros_like(lp).masked_fill(~own, -math.inf)
        lp = torch.where(unmasked, carry, lp)
    return lp


def x0_probs(logits: Tensor, x_t: Tensor, process: Process, temperature: float = 1.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None) -> Tensor:
    """The denoiser's p(x0 | x_t) as float64 probabilities (B, L, V): the single conversion point.

    logits (B, L, V): the denoiser output. temperature divides the logits; top_k keeps the k most
    likely symbols per position; top_p keeps the smallest set whose probability reaches top_p
    (nucleus sampling, Holtzman et al. 2020); both renormalise. For a Masked process an unmasked
    position's x0 is its token (MDLM's carry-over, Sahoo et al. 2024), whatever the logits say.
    """
    process.check_tokens(x_t)
    process.check_per_symbol(logits, x_t, "logits")
    _check_x0_options(temperature, top_k, top_p, process.vocab_size)
    return _x0_probs(logits, x_t, process, float(temperature), top_k, None if top_p is None else float(top_p))


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class DiscreteSolverInfo:
    """What the registry knows about a discrete solver."""

    name: str
    fn: Callable[..., Tensor]
    processes: Tuple[str, ...]   # process names it accepts, ("any",) for all
    nfe: str                     # denoiser evaluations, in words
    exact: bool                  # exact with the exact denoiser at any step count
    summary: str

    def options(self) -> Dict[str, Any]:
        """The solver's keyword options and their defaults."""
        sig = inspect.signature(self.fn)
        return {k: p.default for k, p in list(sig.parameters.items())[2:]}

    def accepts(self, process: Process) -> bool:
        return "any" in self.processes or process.name in self.processes


_REGISTRY: Dict[str, DiscreteSolverInfo] = {}


def register(name: str, *, nfe: str, processes: Tuple[str, ...] = ("any",), exact: bool = False):
    """Decorator: add a discrete solver ``fn(ctx, x, **options) -> x`` to the registry."""
    def deco(fn):
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _REGISTRY[name] = DiscreteSolverInfo(name, fn, tuple(processes), nfe, exact, summary)
        return fn
    return deco


def get_solver(name: str) -> DiscreteSolverInfo:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown discrete solver {name!r}; valid: {sorted(_REGISTRY)}") from None


def solvers() -> Dict[str, DiscreteSolverInfo]:
    """Every discrete solver by name."""
    return dict(sorted(_REGISTRY.items()))


# --------------------------------------------------------------------------- grids
def make_grid(name: str, steps: int, t_start: float = 1.0, t_end: float = 0.0) -> Tensor:
    """A decreasing float64 grid of steps + 1 times: "uniform" or "quadratic" (denser near the data)."""
    if name not in DISCRETE_GRIDS:
        raise ValueError(f"unknown discrete grid {name!r}; valid: {list(DISCRETE_GRIDS)} or a tensor of times")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not 0.0 <= t_end < t_start <= 1.0:
        raise ValueError(f"need 0 <= t_end < t_start <= 1, got t_start={t_start}, t_end={t_end}")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if name == "uniform":
        g = t_start + (t_end - t_start) * u
    else:
        g = t_end + (t_start - t_end) * (1.0 - u) ** 2
    g[0], g[-1] = t_start, t_end
    return g


# --------------------------------------------------------------------------- per-call context
class Context:
    """One sampling call: the grid (host float64 and device copies), denoiser access, callback, checks."""

    def __init__(self, denoiser: Callable[..., Tensor], process: Process, grid: Tensor, x: Tensor,
                 cond: Dict[str, Any], generator: Optional[torch.Generator],
                 callback: Optional[Callable[..., Any]], check_finite: bool, x0_options: Dict[str, Any],
                 fixed: Optional[Tensor] = None) -> None:
        self.denoiser, self.process, self.cond = denoiser, process, cond
        self.fixed = fixed                                         # (B, L) bool: positions kept at x's tokens
        self.known = x if fixed is not None else None
        self.generator, self.callback, self.check_finite = generator, callback, check_finite
        self.x0_options = x0_options
        self.batch, self.length = x.shape
        self.device = x.device
        self.grid = grid                                           # (N + 1, Bg) float64, host
        self.n = grid.shape[0] - 1
        self.shared = grid.shape[1] == 1
        self.alpha = process.alpha(grid)                           # host
        self.t64 = grid.to(self.device).expand(-1, self.batch) if self.shared else grid.to(self.device)
        # host flags per step: the step starts at alpha = 0 / ends at alpha = 1 (data) for some sample
        self.starts_at_zero = (self.alpha[:-1] == 0).any(1).tolist()
        self.ends_at_data = (self.alpha[1:] == 1).any(1).tolist()
        self.nfe = 0
        self._bad: List[Tensor] = []
        self._bad_steps: List[int] = []

    def time(self, i: int) -> Tensor:
        """Grid time i for every sequence: (B,) float64 on the samples' device."""
        return self.t64[i]

    def probs(self, x: Tensor, t: Tensor, step: int, cond: Optional[Dict[str, Any]] = None) -> Tensor:
        """x0_probs of D(x, t) with the call's temperature / top-k / top-p (float64, (B', L, V))."""
        out = self.denoiser(x, t, **(self.cond if cond is None else cond))
        V = self.process.vocab_size
        if not isinstance(out, Tensor) or out.shape != x.shape + (V,):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            hint = " (logits over the data symbols only: drop the mask column)" if (
                isinstance(out, Tensor) and out.shape == x.shape + (V + 1,)) else ""
            raise ValueError(f"the denoiser returned {shape} for tokens {tuple(x.shape)}; expected logits of shape "
                             f"{tuple(x.shape) + (V,)}{hint}")
        if not out.is_floating_point():
            raise ValueError(f"the denoiser must return floating-point logits, got {out.dtype}")
        self.nfe += 1
        p = _x0_probs(out, x, self.process, **self.x0_options)
        if self.check_finite:
            self._bad.append(torch.isnan(p).any())
            self._bad_steps.append(step)
        return p

    def draw(self, probs: Tensor) -> Tensor:
        """One independent draw per position from per-position probabilities (B, L, S), kept positions
        clamped (``clamp``)."""
        return self.clamp(categorical(probs, self.generator))

    def clamp(self, x: Tensor) -> Tensor:
        """Put the kept tokens (``sample(..., fixed=...)``) back into x (B * m, L), m >= 1 candidates per
        sequence in sequence-major order (as ``repeat_interleave``); x itself without ``fixed``."""
        if self.fixed is None:
            return x
        m = x.shape[0] // self.batch
        fixed, known = self.fixed, self.known
        if m != 1:
            fixed, known = fixed.repeat_interleave(m, 0), known.repeat_interleave(m, 0)
        return torch.where(fixed, known, x)

    def report(self, step: int, t: Union[float, Tensor], x: Tensor, p: Optional[Tensor]) -> None:
        if self.callback is not None:
            self.callback(step, t, x, p)

    def report_grid(self, step: int, x: Tensor, p: Optional[Tensor]) -> None:
        """Callback after grid step ``step`` (the state is at grid point step + 1)."""
        if self.callback is not None:
            t = self.grid[step + 1]
            self.callback(step, float(t[0]) if self.shared else self.t64[step + 1], x, p)

    def finish(self, x: Tensor) -> Tensor:
        if self.check_finite and self._bad:
            bad = torch.stack(self._bad).cpu()
            if bad.any():
                k = int(bad.nonzero()[0])
                raise FloatingPointError(
                    f"the denoiser's x0 distribution was NaN at step {self._bad_steps[k]} (NaN logits, or every "
                    "symbol at -inf / removed by top-k / top-p); check the model")
        return x


# --------------------------------------------------------------------------- shared steps
def _ancestral_step(ctx: Context, x: Tensor, p: Tensor, t: Tensor, s: Tensor) -> Tensor:
    return ctx.draw(ctx.process._posterior(x, p, s, t))


def leap_probs(x: Tensor, rates: Tensor, h: Tensor) -> Tensor:
    """Per-position transition probabilities (B, L, S) of one tau-leap of length h (B,) with jump
    rates (B, L, S) (0 at the current state): a position moves iff its Poisson number of jumps is
    exactly one, to y with probability proportional to its rate."""
    total = rates.sum(-1, keepdim=True)
    m = total * h[:, None, None]
    p_one = m * torch.exp(-m)
    pos = total > 0
    move = torch.where(pos, p_one * rates / torch.where(pos, total, torch.ones_like(total)), torch.zeros_like(rates))
    return move + (1.0 - p_one) * torch.nn.functional.one_hot(x, rates.shape[-1]).to(rates.dtype)


def _leap(ctx: Context, x: Tensor, rates: Tensor, h: Tensor) -> Tensor:
    return ctx.draw(leap_probs(x, rates, h))


def remdm_sigma(process: Process, t: Tensor, s: Tensor, schedule: str, eta: float,
                interval: Tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """ReMDM's remasking probability sigma_t (B,) for a step t -> s (Wang et al. 2025, Sec. 4.1)."""
    a_t, a_s = process.alpha(t), process.alpha(s)
    pos_a = a_t > 0
    smax = torch.where(pos_a, ((1.0 - a_s) / torch.where(pos_a, a_t, torch.ones_like(a_t))).clamp_max(1.0),
                       torch.zeros_like(a_t))
    sigma = smax.clamp_max(eta) if schedule == "cap" else eta * smax
    lo, hi = interval
    return torch.where((t >= lo) & (t <= hi), sigma, torch.zeros_like(sigma))


def remdm_probs(process: Process, x: Tensor, p: Tensor, t: Tensor, s: Tensor, sigma: Tensor) -> Tensor:
    """ReMDM's per-position step probabilities (B, L, S) from t to s with remasking probability sigma (B,)."""
    mask = process.mask_id
    sig = sigma[:, None, None]
    at, as_ = process.alpha(t)[:, None, None], process.alpha(s)[:, None, None]
    unmask = ((as_ - (1.0 - sig) * at) / (1.0 - at)).clamp_min(0.0)
    stay_mask = ((1.0 - as_ - sig * at) / (1.0 - at)).clamp_min(0.0)
    from_mask = torch.cat([unmask * p, stay_mask.expand(-1, x.shape[1], 1)], dim=-1)
    oh = torch.nn.functional.one_hot(x, process.num_states).to(torch.float64)
    remask = torch.nn.functional.one_hot(torch.full_like(x, mask), process.num_states).to(torch.float64)
    from_token = (1.0 - sig) * oh + sig * remask
    return torch.where((x == mask)[..., None], from_mask, from_token)


def _need_masked(ctx: Context, who: str) -> None:
    if not isinstance(ctx.process, Masked):
        raise ValueError(f"{who} needs a Masked process, got {type(ctx.process).__name__}; "
                         "use 'ancestral', 'tau_leaping' or 'pc' for other processes")


# --------------------------------------------------------------------------- solvers
@register("ancestral", nfe="1 per step")
def ancestral(ctx: Context, x: Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
              top_p: Optional[float] = None) -> Tensor:
    """Ancestral sampling with the exact per-position posterior (D3PM; MDLM).

    Each step draws x_s from sum_x0 q(x_s | x_t, x0) p(x0 | x_t) independently per position (Austin et
    al. 2021, D3PM; Sahoo et al. 2024, MDLM). The last step to t = 0 draws x0 itself."""
    for i in range(ctx.n):
        t, s = ctx.time(i), ctx.time(i + 1)
        p = ctx.probs(x, t, i)
        x = _ancestral_step(ctx, x, p, t, s)
        ctx.report_grid(i, x, p)
    return x


@register("tau_leaping", nfe="1 per step")
def tau_leaping(ctx: Context, x: Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                top_p: Optional[float] = None) -> Tensor:
    """Tau-leaping on the reverse CTMC (Campbell et al. 2022).

    Campbell et al., "A Continuous Time Framework for Discrete Denoising Models", NeurIPS 2022, Sec. 4.1.

    The reverse rates R-hat_t(x -> y) (``Process.reverse_rates``) are frozen at the start of each step
    and every position's jumps over the step are Poisson; Campbell et al. add the jumps of ordinal
    data, which has no meaning for categorical symbols, so here a position moves iff it jumps exactly
    once (to y with probability proportional to its rate) and stays otherwise, a first-order rule. A
    step that ends at the data (alpha = 1, where the rates blow up) is an exact ancestral step, as
    is a step starting at alpha = 0 for a non-masked process (whose forward rates are infinite
    there).
    """
    masked = isinstance(ctx.process, Masked)
    for i in range(ctx.n):
        t, s = ctx.time(i), ctx.time(i + 1)
        p = ctx.probs(x, t, i)
        if ctx.ends_at_data[i] or (ctx.starts_at_zero[i] and not masked):
            x = _ancestral_step(ctx, x, p, t, s)
        else:
            x = _leap(ctx, x, ctx.process._reverse_rates(x, p, t), t - s)
        ctx.report_grid(i, x, p)
    return x


@register("first_hitting", nfe="1 per masked token (L from all-mask); steps unused",
          processes=("masked",), exact=True)
def first_hitting(ctx: Context, x: Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                  top_p: Optional[float] = None) -> Tensor:
    """First-hitting sampler for masked processes: one exact reveal per evaluation (Zheng et al. 2025).

    Zheng et al., "Masked Diffusion Models are Secretly Time-Agnostic Masked Models and Exploit
    Inaccurate Categorical Sampling", ICLR 2025, Sec. 4.

    With n masked positions at time t, the next time any of them unmasks is drawn exactly:
    1 - alpha(tau) = (1 - alpha(t)) u^(1/n), u ~ U(0, 1]; one masked position, uniform at random,
    then takes a symbol from p(x0 | x_t) evaluated at tau. One position changes per denoiser
    evaluation, so the sampler is exact with the exact denoiser (any-order autoregressive sampling
    with exact conditionals); it costs one evaluation per masked token. ``steps`` and the grid's
    inner points are not used: only the grid's ends matter (t_start; and t_end > 0 returns an exact
    draw of x_{t_end}, the tokens whose hitting times fall below t_end staying masked). The callback
    sees every reveal, with the per-sequence times (B,).
    """
    _need_masked(ctx, "first_hitting")
    proc = ctx.process
    mask = proc.mask_id
    t_cur = ctx.time(0).clone()
    t_stop = ctx.time(ctx.n)
    n_masked = (x == mask).sum(1)
    iters = int(n_masked.max())                 # one host sync, before the loop
    done = n_masked == 0
    x = x.clone()
    rows = torch.arange(ctx.batch, device=x.device)
    for i in range(iters):
        n = n_masked.clamp_min(1).to(torch.float64)
        u = 1.0 - torch.rand(ctx.batch, generator=ctx.generator, device=x.device, dtype=torch.float64)
        one_minus_a = (1.0 - proc.alpha(t_cur)) * u.pow(1.0 / n)
        t_new = torch.minimum(proc.schedule.t_from_alpha(1.0 - one_minus_a), t_cur)
        done = done | (n_masked == 0) | (t_new < t_stop)
        t_eval = torch.where(done, t_cur, t_new)
        p = ctx.probs(x, t_eval, i)
        scores = torch.rand(x.shape, generator=ctx.generator, device=x.device, dtype=torch.float64)
        pos = torch.where(x == mask, scores, torch.full_like(scores, -1.0)).argmax(1)
        value = categorical(p[rows, pos], ctx.generator)
        new = torch.where(done, x[rows, pos], value)
        x[rows, pos] = new
        n_masked = n_masked - (~done).long()
        t_cur = t_eval
        ctx.report(i, t_cur, x, p)
    return x


@register("remdm", nfe="1 per step", processes=("masked",))
def remdm(ctx: Context, x: Tensor, schedule: str = "cap", eta: float = 0.02,
          interval: Tuple[float, float] = (0.0, 1.0), temperature: float = 1.0, top_k: Optional[int] = None,
          top_p: Optional[float] = None) -> Tensor:
    """ReMDM remasking sampler for masked processes (Wang et al. 2025).

    Wang et al., "Remasking Discrete Diffusion Models with Inference-Time Scaling", 2025, Sec. 3-4:
    an unmasked token is remasked with probability sigma_t, and a masked one unmasks with probability
    (alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t), which keeps the marginals q(x_s | x0) of the
    masked process for any 0 <= sigma_t <= sigma_max = min(1, (1 - alpha_s) / alpha_t).

    schedule "cap": sigma_t = min(eta, sigma_max) (ReMDM-cap); "rescale": sigma_t = eta * sigma_max
    (ReMDM-rescale), eta in [0, 1]. interval (t_lo, t_hi): remask only for t_lo <= t <= t_hi (sigma = 0
    elsewhere). eta = 0 is the ancestral sampler. More steps let remasking correct the factorisation
    errors of earlier steps (ReMDM's inference-time scaling).
    """
    _need_masked(ctx, "remdm")
    if schedule not in ("cap", "rescale"):
        raise ValueError(f"unknown remdm schedule {schedule!r}; valid: ['cap', 'rescale']")
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"interval must be a pair (t_lo, t_hi), got {interval!r}") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"interval must satisfy 0 <= t_lo <= t_hi <= 1, got {interval!r}")
    eta = float(eta)
    proc = ctx.process
    for i in range(ctx.n):
        t, s = ctx.time(i), ctx.time(i + 1)
        p = ctx.probs(x, t, i)
        sigma = remdm_sigma(proc, t, s, schedule, eta, (lo, hi))
        x = ctx.draw(remdm_probs(proc, x, p, t, s, sigma))
        ctx.report_grid(i, x, p)
    return x


@register("pc", nfe="1 + corrector_steps per step (no corrector at the first grid point)")
def pc(ctx: Context, x: Tensor, corrector_steps: int = 1, corrector_step_size: float = 1.0,
       temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None) -> Tensor:
    """Predictor-corrector: ancestral predictor, tau-leaping correctors (Campbell et al. 2022).

    Campbell et al. 2022, Sec. 4.2: before each ancestral predictor step from t, ``corrector_steps``
    tau-leaps with the corrector rates R_t + R-hat_t (forward plus reverse rates), whose stationary
    distribution is the marginal q_t when the denoiser is exact, so the corrector pulls the state back
    toward q_t and removes part of the predictor's factorisation error.

    Each corrector leap lasts corrector_step_size * (t_i - t_{i+1}). Correctors run only at grid
    points with 0 < alpha(t) < 1 (not at the pure-noise start, where the forward rates are infinite).
    For a masked process the corrector remasks tokens at rate -alpha'/alpha and unmasks at the
    reverse rate, much as ReMDM does.
    """
    if isinstance(corrector_steps, bool) or not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be an integer >= 0, got {corrector_steps!r}")
    if isinstance(corrector_step_size, bool) or not isinstance(corrector_step_size, numbers.Real) or not (
            math.isfinite(float(corrector_step_size)) and float(corrector_step_size) > 0):
        raise ValueError(f"corrector_step_size must be a finite number > 0, got {corrector_step_size!r}")
    proc = ctx.process
    interior = ((ctx.alpha > 0) & (ctx.alpha < 1)).all(1).tolist()
    for i in range(ctx.n):
        t, s = ctx.time(i), ctx.time(i + 1)
        if i > 0 and interior[i]:
            h = float(corrector_step_size) * (t - s)
            for _ in range(corrector_steps):
                p = ctx.probs(x, t, i)
                rates = proc._forward_rates(x, t) + proc._reverse_rates(x, p, t)
                x = _leap(ctx, x, rates, h)
        p = ctx.probs(x, t, i)
        x = _ancestral_step(ctx, x, p, t, s)
        ctx.report_grid(i, x, p)
    return x


# --------------------------------------------------------------------------- entry point
def sample_discrete(denoiser: Callable[..., Tensor], x1: Tensor, *, process: Process,
                    solver: Optional[str] = None, steps: Optional[int] = None,
                    grid: Union[str, Tensor, None] = None, t_start: float = 1.0, t_end: float = 0.0,
                    cond: Optional[Dict[str, Any]] = None, generator: Optional[torch.Generator] = None,
                    callback: Optional[Callable[..., Any]] = None, check_finite: bool = True,
                    grid_options: Optional[Dict[str, Any]] = None, fixed: Optional[Tensor] = None,
                    **options: Any) -> Tensor:
    """Sample a discrete process from tokens x1 at t_start down to t_end (``polydiff.core.sample``).

    x1: (B, L) int64 tokens, usually ``process.prior_sample((B, L), generator)``.
    solver: a name in ``solvers()`` (default "ancestral"). steps / grid: a named grid
    ("uniform" in t, default; "quadratic") with ``steps`` steps, or a decreasing tensor of times
    (N + 1,) or per-sequence (N + 1, B). "first_hitting" needs no steps.
    callback(i, t, x, x0_probs) after every step. options: the solver's own (``solvers()[name].options()``).

    fixed: infilling. A bool tensor (B, L) or (L,) marking positions whose x1 tokens (data symbols) are
    kept at every step; the other positions are sampled given them. For a Masked process kept tokens
    are visible, so the exact denoiser's p(x0 | x_t) is that of the conditional distribution
    p(x | kept tokens), and every solver samples the conditional exactly as it samples p(x) (the usual
    start is x1 = the kept tokens with the mask elsewhere; "first_hitting" and "ancestral" keep
    unmasked tokens anyway, while "remdm" and "pc" would remask them without ``fixed``). For the other
    processes a kept token is only noisy evidence to the denoiser (q(x_t | x0) does not pin x0), so the
    conditioning is approximate, as for the replacement method of continuous diffusion.
    Returns int64 tokens (B, L); at t_end = 0 every position holds a data symbol.
    """
    if not isinstance(process, Process):
        raise ValueError(f"process must be a polydiff.core.discrete.Process, got {type(process).__name__}")
    name = "ancestral" if solver is None else solver
    info = get_solver(name)
    if not info.accepts(process):
        raise ValueError(f"solver {name!r} works with {list(info.processes)} processes, got "
                         f"{type(process).__name__}; solvers for it: "
                         f"{sorted(n for n, s in _REGISTRY.items() if s.accepts(process))}")
    allowed = info.options()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"solver {name!r} has no option(s) {unknown}; its options: {allowed or 'none'}")
    process.check_tokens(x1, "x1")
    if fixed is not None:
        if not isinstance(fixed, Tensor) or fixed.dtype != torch.bool:
            got = fixed.dtype if isinstance(fixed, Tensor) else type(fixed).__name__
            raise ValueError(f"fixed must be a bool tensor of shape {tuple(x1.shape)} or ({x1.shape[1]},) marking the "
                             f"positions to keep, got {got}")
        if fixed.shape == (x1.shape[1],):
            fixed = fixed.expand(x1.shape)
        if fixed.shape != x1.shape:
            raise ValueError(f"fixed must have shape {tuple(x1.shape)} (B, L) or ({x1.shape[1]},), "
                             f"got {tuple(fixed.shape)}")
        fixed = fixed.to(x1.device)
        if bool((x1[fixed] >= process.vocab_size).any()):
            raise ValueError(f"x1 must hold data symbols (ids < {process.vocab_size}) at the fixed positions: they "
                             "are the tokens to keep")
    if grid_options:
        raise ValueError(f"discrete grids take no grid_options, got {sorted(grid_options)}")
    grid = "uniform" if grid is None else grid
    if isinstance(grid, str):
        if steps is None:
            if not info.exact:
                raise ValueError(f"solver {name!r} needs steps (or a tensor grid)")
            g = make_grid(grid, 1, t_start, t_end)
        else:
            g = make_grid(grid, steps, t_start, t_end)
    else:
        g = check_grid(grid, x1.shape[0])
        if steps is not None and g.shape[0] != steps + 1:
            raise ValueError(f"grid has {g.shape[0] - 1} steps but steps={steps}")
    if g.dim() == 1:
        g = g[:, None]
    if cond is not None and not isinstance(cond, dict):
        raise ValueError(f"cond must be a dict of keyword arguments for the denoiser, got {type(cond).__name__}")
    x0_opts = {k: options[k] for k in ("temperature", "top_k", "top_p") if k in options}
    _check_x0_options(x0_opts.get("temperature", 1.0), x0_opts.get("top_k"), x0_opts.get("top_p"),
                      process.vocab_size)
    x0_opts = {"temperature": float(x0_opts.get("temperature", 1.0)), "top_k": x0_opts.get("top_k"),
               "top_p": None if x0_opts.get("top_p") is None else float(x0_opts["top_p"])}
    ctx = Context(denoiser, process, g, x1.long(), cond or {}, generator, callback, check_finite, x0_opts, fixed)
    x = info.fn(ctx, x1.long(), **options)
    return ctx.finish(x)


# --------------------------------------------------------------------------- exact output distributions
class _ExactContext(Context):
    """Runs a solver on every state at once and propagates the exact distribution over states: each
    ``draw`` of independent per-position probabilities is the transition T[x, y] = prod_l probs[x, l, y_l]
    between all S^L states, applied without forming T (see ``draw``)."""

    def __init__(self, *args: Any, states: Tensor, start: Tensor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.states, self.dist = states, start

    def probs(self, x: Tensor, t: Tensor, step: int, cond: Optional[Dict[str, Any]] = None) -> Tensor:
        """Evaluate the denoiser on the reachable states only (others may be impossible under the
        model, with NaN posteriors); unreachable rows get uniform probabilities, which carry no mass."""
        reach = self.dist > 0
        p = torch.full(x.shape + (self.process.vocab_size,), 1.0 / self.process.vocab_size, dtype=torch.float64,
                       device=x.device)
        p[reach] = super().probs(x[reach], t[reach], step, cond)
        return p

    @staticmethod
    def _outer(P: Tensor) -> Tensor:
        """prod_l P[x, l, y_l] over the positions of P (X, k, S), as (X, S^k), first position slowest."""
        out = torch.ones(P.shape[0], 1, dtype=P.dtype, device=P.device)
        for l in range(P.shape[1]):
            out = (out[:, :, None] * P[:, l, None, :]).reshape(P.shape[0], -1)
        return out

    def draw(self, probs: Tensor) -> Tensor:
        # new[y] = sum_x dist[x] prod_l P[x, l, y_l]. Split the positions into a front and a back half:
        # new[(y_front, y_back)] = sum_x (dist[x] F[x, y_front]) B[x, y_back] = (dist F)^T B, one
        # (S^h, X) @ (X, S^(L-h)) product instead of the (X, S^L) transition matrix.
        reach = self.dist > 0
        P = probs[reach].to(torch.float64)
        h = self.states.shape[1] // 2
        front = self._outer(P[:, :h]) * self.dist[reach][:, None]
        self.dist = (front.T @ self._outer(P[:, h:])).reshape(-1)
        return self.states


def exact_distribution(denoiser: Callable[..., Tensor], process: Process, length: int, *, solver: str = "ancestral",
                       steps: Optional[int] = None, grid: Union[str, Tensor, None] = None, t_start: float = 1.0,
                       t_end: float = 0.0, start: Optional[Tensor] = None, data_only: bool = True,
                       cond: Optional[Dict[str, Any]] = None, **options: Any) -> Tensor:
    """The exact distribution of a solver's output on a small problem (S^L <= 2^16 states), with no
    Monte-Carlo error: for measuring a sampler's bias, e.g. the TV distance to an exact model.

    Works for the solvers whose randomness is independent per-position draws: "ancestral",
    "tau_leaping", "remdm" and "pc" ("first_hitting" is exact anyway). ``start``: a distribution over
    the S^L states at t_start (default: the prior). States are ordered as
    ``torch.cartesian_prod`` over positions (first position slowest). data_only: return the
    distribution over the V^L data sequences in the same lexicographic order (as
    ``analytic`` models' ``index``); it needs every state at t_end to be data (t_end = 0). ``cond``
    values must not depend on the batch (the batch is the set of states).
    """
    name = "ancestral" if solver is None else solver
    info = get_solver(name)
    if name not in ("ancestral", "tau_leaping", "remdm", "pc"):
        raise ValueError(f"exact_distribution supports 'ancestral', 'tau_leaping', 'remdm' and 'pc', got {name!r}")
    if not info.accepts(process):
        raise ValueError(f"solver {name!r} does not accept {type(process).__name__}")
    unknown = sorted(set(options) - set(info.options()))
    if unknown:
        raise ValueError(f"solver {name!r} has no option(s) {unknown}; its options: {info.options()}")
    S, V = process.num_states, process.vocab_size
    if isinstance(length, bool) or not isinstance(length, int) or length < 1 or S ** length > MAX_EXACT_STATES \
            or S ** length * S ** (length - length // 2) > MAX_EXACT_ENTRIES:
        raise ValueError(f"length must be an integer >= 1 with S^L <= {MAX_EXACT_STATES} states and "
                         f"S^L * S^ceil(L/2) <= {MAX_EXACT_ENTRIES} (S = {S}), got {length!r}")
    states = torch.cartesian_prod(*[torch.arange(S)] * length).reshape(-1, length)
    if start is None:
        pi = process.prior
        start = torch.ones(states.shape[0], dtype=torch.float64)
        for l in range(length):
            start = start * pi[states[:, l]]
    else:
        start = torch.as_tensor(start, dtype=torch.float64)
        if start.shape != (states.shape[0],) or (start < 0).any() or abs(float(start.sum()) - 1) > 1e-9:
            raise ValueError(f"start must be a distribution over the {states.shape[0]} states")
    grid = "uniform" if grid is None else grid
    if isinstance(grid, str):
        if steps is None:
            raise ValueError("steps is required with a named grid")
        g = make_grid(grid, steps, t_start, t_end)
    else:
        g = check_grid(grid, 1)
    g = g.reshape(g.shape[0], -1)
    if g.shape[1] != 1:
        raise ValueError("exact_distribution needs a grid shared by all states, shape (N + 1,)")
    x0_opts = {k: options[k] for k in ("temperature", "top_k", "top_p") if k in options}
    _check_x0_options(x0_opts.get("temperature", 1.0), x0_opts.get("top_k"), x0_opts.get("top_p"), V)
    x0_opts = {"temperature": float(x0_opts.get("temperature", 1.0)), "top_k": x0_opts.get("top_k"),
               "top_p": None if x0_opts.get("top_p") is None else float(x0_opts["top_p"])}
    ctx = _ExactContext(denoiser, process, g, states, cond or {}, None, None, True, x0_opts,
                        states=states, start=start)
    info.fn(ctx, states, **options)
    ctx.finish(states)
    dist = ctx.dist
    if not data_only:
        return dist
    data = (states < V).all(1)
    if float(dist[~data].sum()) > 1e-9:
        raise ValueError("data_only needs every state at t_end to be data (t_end = 0)")
    powers = V ** torch.arange(length - 1, -1, -1)
    out = torch.zeros(V ** length, dtype=torch.float64)
    out[(states[data] * powers).sum(1)] = dist[data]
    return out


__all__ = ["x0_probs", "x0_log_probs", "sample_discrete", "solvers", "get_solver", "register", "make_grid", "Context",
           "DiscreteSolverInfo", "DISCRETE_GRIDS", "leap_probs", "remdm_sigma", "remdm_probs", "exact_distribution"]
