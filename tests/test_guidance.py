"""Guidance wrappers against exact Gaussian-mixture answers (polydiff.core.guidance)."""
from __future__ import annotations

import functools
import math

import pytest
import torch

from polydiff.core import NFECounter, paths, sample
from polydiff.core.analytic import GaussianMixture
from polydiff.core.denoiser import coefficients, eps_from_x0
from polydiff.core.guidance import (ClassifierFreeGuidance, ClassifierGuidance, Compose,
                                    UniversalGuidance)

torch.set_num_threads(2)
F64 = torch.float64
NULL = -1

# a 3-D mixture of three components; label 0 -> components {0, 1}, label 1 -> component {2}
MEANS = torch.tensor([[-2.0, 0.0, 1.0], [0.0, 2.0, -1.0], [2.5, -1.0, 0.5]], dtype=F64)
VARS = torch.tensor([0.3, 0.5, 0.2], dtype=F64)
WEIGHTS = torch.tensor([0.5, 0.2, 0.3], dtype=F64)
SUBSETS = {0: [0, 1], 1: [2]}
FULL = GaussianMixture(MEANS, VARS, WEIGHTS)
SUBS = {k: GaussianMixture(MEANS[idx], VARS[idx], WEIGHTS[idx]) for k, idx in SUBSETS.items()}

PATHS = {"vp": paths.VP(), "flow": paths.Flow(), "vp_cosine": paths.VP("cosine")}


def conditional_model(path):
    """Exact E[x0 | x_t, label] of the mixture; label NULL (-1) is the full, unconditional mixture."""
    def D(x, t, label):
        t = torch.as_tensor(t, dtype=F64).expand(x.shape[0])
        a, s = path.alpha(t), path.sigma(t)
        out = FULL.denoise(x, a, s)
        for k, sub in SUBS.items():
            out = torch.where((label == k)[:, None], sub.denoise(x, a, s), out)
        return out
    return D


def exact_classifier(mixture: GaussianMixture, subset, path):
    """log p(component in subset | x_t), differentiable: log W_S + log p_S(x_t) - log p(x_t)."""
    sub = GaussianMixture(mixture.means[subset], mixture.eig[subset], mixture.weights[subset])
    log_w = torch.log(mixture.weights[subset].sum())

    def log_prob(x, t, **cond):
        a, s = path.alpha(t.to(F64)), path.sigma(t.to(F64))
        return log_w + sub.log_prob(x, a, s) - mixture.log_prob(x, a, s)
    return log_prob, sub


def _x(n=16, d=3, seed=0, scale=2.0):
    return scale * torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _labels(n=16):
    return torch.arange(n) % 2


def _cfg(p, scale, **kw):
    return ClassifierFreeGuidance(conditional_model(p), scale, uncond={"label": torch.full((16,), NULL)}, **kw)


# ------------------------------------------------------------------------------------------ CFG
@pytest.mark.parametrize("pname", ["vp", "flow"])
def test_cfg_scale_one_is_conditional_with_one_evaluation(pname):
    path = PATHS[pname]
    counter = NFECounter(conditional_model(path))
    g = ClassifierFreeGuidance(counter, 1.0, uncond={"label": torch.full((16,), NULL)})
    x, lab, t = _x(), _labels(), torch.linspace(0.05, 0.95, 16, dtype=F64)
    assert torch.equal(g(x, t, label=lab), conditional_model(path)(x, t, label=lab))
    assert counter.nfe == 1


@pytest.mark.parametrize("pname", ["vp", "flow"])
def test_cfg_scale_zero_is_unconditional_and_scale_w_elementwise(pname):
    path = PATHS[pname]
    D = conditional_model(path)
    x, lab, t = _x(), _labels(), torch.linspace(0.02, 0.98, 16, dtype=F64)
    d_c = D(x, t, label=lab)
    d_u = FULL.denoise(x, path.alpha(t), path.sigma(t))
    torch.testing.assert_close(_cfg(path, 0.0)(x, t, label=lab), d_u, rtol=0, atol=1e-12)
    for w in (-0.5, 2.0, 7.5):
        torch.testing.assert_close(_cfg(path, w)(x, t, label=lab), d_u + w * (d_c - d_u), rtol=0, atol=1e-12)


def test_cfg_interval_per_sample():
    path = PATHS["vp"]
    D = conditional_model(path)
    x, lab = _x(), _labels()
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, 0.29, 0.71, 1.0] * 2, dtype=F64)
    g = _cfg(path, 4.0, interval=(0.3, 0.7))
    out = g(x, t, label=lab)
    d_c = D(x, t, label=lab)
    d_full = _cfg(path, 4.0)(x, t, label=lab)
    inside = (t >= 0.3) & (t <= 0.7)
    assert inside.sum() == 6 and (~inside).sum() == 10
    torch.testing.assert_close(out[inside], d_full[inside], rtol=0, atol=0)
    torch.testing.assert_close(out[~inside], d_c[~inside], rtol=0, atol=0)
    # entirely outside: exactly the conditional model
    t_out = torch.full((16,), 0.9, dtype=F64)
    torch.testing.assert_close(g(x, t_out, label=lab), D(x, t_out, label=lab), rtol=0, atol=0)


@pytest.mark.parametrize("pname", ["vp", "flow"])
def test_cfg_rescale(pname):
    path = PATHS[pname]
    D = conditional_model(path)
    x, lab, t = _x(), _labels(), torch.linspace(0.1, 0.9, 16, dtype=F64)
    a, s, _, _ = coefficients(path, t, x)
    w = 5.0
    plain = _cfg(path, w)(x, t, label=lab)
    # rescale = 0 is plain CFG
    torch.testing.assert_close(_cfg(path, w, rescale=0.0, path=path)(x, t, label=lab), plain, rtol=0, atol=0)
    # rescale = 1: the guided eps has the conditional eps's per-sample std, and is parallel to the CFG eps
    eps_c = eps_from_x0(x, D(x, t, label=lab), a, s)
    eps_cfg = eps_from_x0(x, plain, a, s)
    eps_1 = eps_from_x0(x, _cfg(path, w, rescale=1.0, path=path)(x, t, label=lab), a, s)
    torch.testing.assert_close(eps_1.std(1), eps_c.std(1), rtol=1e-10, atol=0)
    torch.testing.assert_close(eps_1, eps_cfg * (eps_c.std(1) / eps_cfg.std(1))[:, None], rtol=1e-10, atol=1e-12)
    # intermediate: a linear mix in eps space
    eps_r = _cfg(path, w, rescale=0.3, path=path)(x, t, label=lab)
    torch.testing.assert_close(eps_from_x0(x, eps_r, a, s), 0.3 * eps_1 + 0.7 * eps_cfg, rtol=1e-10, atol=1e-10)


def test_cfg_rescale_at_zero_snr_is_plain_cfg():
    path = PATHS["flow"]
    x, lab, t = _x(), _labels(), torch.ones(16, dtype=F64)  # alpha = 0: eps = x / sigma for every model
    out = _cfg(path, 3.0, rescale=0.7, path=path)(x, t, label=lab)
    torch.testing.assert_close(out, _cfg(path, 3.0)(x, t, label=lab), rtol=0, atol=0)
    assert torch.isfinite(out).all()


def test_cfg_batched_is_one_call_and_matches():
    path = PATHS["vp"]
    calls = []

    def D(x, t, label, temperature=1.0):
        calls.append(x.shape[0])
        return conditional_model(path)(x, t, label=label) * temperature

    x, lab, t = _x(), _labels(), torch.linspace(0.1, 0.9, 16, dtype=F64)
    ref = ClassifierFreeGuidance(D, 3.0, uncond={"label": torch.full((16,), NULL)})(x, t, label=lab, temperature=1.0)
    assert calls == [16, 16]
    calls.clear()
    g = ClassifierFreeGuidance(D, 3.0, uncond={"label": torch.tensor([NULL])}, batched=True)  # broadcast null
    torch.testing.assert_close(g(x, t, label=lab, temperature=1.0), ref, rtol=0, atol=1e-14)
    assert calls == [32]
    bad = ClassifierFreeGuidance(D, 3.0, uncond={"label": torch.tensor([NULL]), "temperature": 2.0}, batched=True)
    with pytest.raises(ValueError, match="batched=False"):
        bad(x, t, label=lab, temperature=1.0)


def test_cfg_through_sample_with_cond():
    path = PATHS["vp"]
    noise = torch.randn(64, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    lab = torch.ones(64, dtype=torch.long)
    g = ClassifierFreeGuidance(conditional_model(path), 1.0, uncond={"label": torch.full((64,), NULL)})
    out = sample(g, noise, path=path, solver="dpmpp_2m", steps=8, cond={"label": lab})
    ref = sample(SUBS[1].denoiser(path), noise, path=path, solver="dpmpp_2m", steps=8)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------ classifier
@pytest.mark.parametrize("pname", ["vp", "flow", "vp_cosine"])
def test_classifier_guidance_exact_is_conditional_denoiser(pname):
    path = PATHS[pname]
    for label, subset in SUBSETS.items():
        log_p, sub = exact_classifier(FULL, subset, path)
        g = ClassifierGuidance(FULL.denoiser(path), log_p, 1.0, path)
        x = _x(seed=label)
        for tv in (0.0, 0.02, 0.2, 0.5, 0.8, 0.98):
            t = torch.full((16,), tv, dtype=F64)
            with torch.no_grad():
                out = g(x, t)
            assert not out.requires_grad
            torch.testing.assert_close(out, sub.denoise(x, path.alpha(t), path.sigma(t)), rtol=0, atol=1e-6)
    # at alpha = 0 (Flow, t = 1) the correction is 0 * inf and is dropped: the inner prediction comes back
    t1 = torch.ones(16, dtype=F64)
    torch.testing.assert_close(ClassifierGuidance(FULL.denoiser(PATHS["flow"]), exact_classifier(
        FULL, SUBSETS[0], PATHS["flow"])[0], 1.0, PATHS["flow"])(x, t1), FULL.denoiser(PATHS["flow"])(x, t1),
        rtol=0, atol=0)
    # per-sample t in one call, grad mode on, x not requiring grad: output carries no graph
    t = torch.linspace(0.01, 0.99, 16, dtype=F64)
    out = g(x, t)
    assert not out.requires_grad
    torch.testing.assert_close(out, sub.denoise(x, path.alpha(t), path.sigma(t)), rtol=0, atol=1e-6)


# 2-D two-component mixture: guidance to component 1 must land every sample there
MIX2 = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=F64), 0.25)


@pytest.mark.parametrize("pname,solver", [("vp", "dpmpp_2m"), ("vp", "heun"), ("vp", "ddpm"),
                                          ("vp", "euler_maruyama"), ("flow", "dpmpp_2m"),
                                          ("flow", "euler_maruyama")])
def test_classifier_guidance_sampling_lands_in_component(pname, solver):
    path = PATHS[pname]
    log_p, _ = exact_classifier(MIX2, [1], path)
    g = ClassifierGuidance(MIX2.denoiser(path), log_p, 1.0, path)
    noise = torch.randn(600, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    xs = sample(g, noise, path=path, solver=solver, steps=20, generator=torch.Generator().manual_seed(1))
    assert (xs[:, 0] > 0).double().mean() > 0.995
    # sampling error of the mean: std 0.5 / sqrt(600) ~ 0.02 per coordinate
    assert (xs.mean(0) - MIX2.means[1]).abs().max() < 0.1  # plus first-order solver bias (EM at 20 steps)


# ------------------------------------------------------------------------------------------ universal
def _quadratic_loss(c):
    return lambda x0: ((x0 - c) ** 2).sum(1)


@pytest.mark.parametrize("pname", ["vp", "flow"])
def test_universal_forward_guidance_exact_on_gaussian(pname):
    # single Gaussian N(mu, v I): D = mu + k (x - a mu), k = a v / (a^2 v + s^2), dD/dx = k I, so
    # D_g = D - w (s^2/a) 2 k (D - c) = D - 2 w s^2 v / (a^2 v + s^2) (D - c)
    path = PATHS[pname]
    v = 0.4
    gauss = GaussianMixture(torch.tensor([[1.0, -1.0, 0.5]], dtype=F64), v)
    c = torch.tensor([0.0, 2.0, 1.0], dtype=F64)
    x, t = _x(), torch.linspace(0.01, 0.99, 16, dtype=F64)
    a, s, _, _ = coefficients(path, t, x)
    d = gauss.denoise(x, path.alpha(t), path.sigma(t))
    for w in (0.3, 1.5):
        g = UniversalGuidance(gauss.denoiser(path), _quadratic_loss(c), w, path)
        with torch.no_grad():
            out = g(x, t)
        assert not out.requires_grad
        torch.testing.assert_close(out, d - 2 * w * s * s * v / (a * a * v + s * s) * (d - c), rtol=0, atol=1e-10)


def test_universal_backward_guidance_contracts_exactly():
    # gradient descent on |x0 + Delta - c|^2 with step lr: the residual shrinks by (1 - 2 lr) per step
    path = PATHS["vp"]
    c = torch.tensor([0.0, 3.0, 0.0], dtype=F64)
    loss = _quadratic_loss(c)
    x, t = _x(), torch.linspace(0.1, 0.9, 16, dtype=F64)
    d = FULL.denoise(x, path.alpha(t), path.sigma(t))
    prev = loss(d)
    for m in (1, 3, 10):
        g = UniversalGuidance(FULL.denoiser(path), loss, 0.0, path, backward_steps=m, backward_lr=0.1)
        out = g(x, t)
        torch.testing.assert_close(out - c, 0.8 ** m * (d - c), rtol=0, atol=1e-12)
        assert (loss(out) < prev).all()
        prev = loss(out)
    # forward + backward: Delta is computed at the unguided x0-hat and added to the forward-guided one
    fwd = UniversalGuidance(FULL.denoiser(path), loss, 0.7, path)(x, t)
    both = UniversalGuidance(FULL.denoiser(path), loss, 0.7, path, backward_steps=2, backward_lr=0.1)(x, t)
    torch.testing.assert_close(both, fwd + (0.8 ** 2 - 1) * (d - c), rtol=0, atol=1e-12)


def test_universal_guidance_pulls_sample_mean_monotonically():
    path = PATHS["vp"]
    c = torch.tensor([0.0, 3.0], dtype=F64)
    noise = torch.randn(500, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    dist = []
    for w in (0.0, 0.1, 0.3, 1.0, 3.0):
        g = UniversalGuidance(MIX2.denoiser(path), _quadratic_loss(c), w, path)
        xs = sample(g, noise, path=path, solver="dpmpp_2m", steps=15)
        dist.append(float((xs.mean(0) - c).norm()))
    assert all(b < a for a, b in zip(dist, dist[1:])), dist
    assert dist[0] > 2.5 and dist[-1] < 0.6, dist


# ------------------------------------------------------------------------------------------ composition
@pytest.mark.parametrize("pname", ["vp", "flow"])
def test_classifier_guidance_on_cfg_adds_scales(pname):
    # CFG with D_c = D_S adds w * grad log p(S | x_t) to the score, so CG(CFG(D, w), exact, lam) = CFG(D, w + lam)
    path = PATHS[pname]
    lab = torch.zeros(16, dtype=torch.long)
    log_p, _ = exact_classifier(FULL, SUBSETS[0], path)
    x, t = _x(), torch.linspace(0.05, 0.95, 16, dtype=F64)
    nested = ClassifierGuidance(_cfg(path, 2.0), log_p, 1.5, path)
    flat = Compose(conditional_model(path),
                   functools.partial(ClassifierFreeGuidance, scale=2.0, uncond={"label": torch.full((16,), NULL)}),
                   functools.partial(ClassifierGuidance, log_prob_fn=log_p, scale=1.5, path=path))
    ref = _cfg(path, 3.5)(x, t, label=lab)
    with torch.no_grad():
        torch.testing.assert_close(nested(x, t, label=lab), ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(flat(x, t, label=lab), ref, rtol=0, atol=1e-6)
    assert flat.n_wrappers == 2 and isinstance(flat.denoiser, ClassifierGuidance)


def test_universal_through_classifier_guidance_uses_second_order_gradients():
    # CG(D_full, exact classifier, 1) is D_S as a function, so its Jacobian must be D_S's too
    path = PATHS["vp"]
    log_p, sub = exact_classifier(FULL, SUBSETS[1], path)
    c = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    x, t = _x(), torch.linspace(0.05, 0.95, 16, dtype=F64)
    nested = Compose(FULL.denoiser(path), lambda d: ClassifierGuidance(d, log_p, 1.0, path),
                     lambda d: UniversalGuidance(d, _quadratic_loss(c), 0.8, path))
    ref = UniversalGuidance(sub.denoiser(path), _quadratic_loss(c), 0.8, path)
    with torch.no_grad():
        out = nested(x, t)
    assert not out.requires_grad
    torch.testing.assert_close(out, ref(x, t), rtol=0, atol=1e-6)
    # and the caller can differentiate through a wrapper: d/dx of CG(D_full) == d/dx of D_S
    xr = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(ClassifierGuidance(FULL.denoiser(path), log_p, 1.0, path)(xr, t).sum(), xr)
    xs = x.clone().requires_grad_(True)
    (gs,) = torch.autograd.grad(sub.denoiser(path)(xs, t).sum(), xs)
    torch.testing.assert_close(gx, gs, rtol=0, atol=1e-6)


def test_no_host_sync_on_meta_tensors():
    # meta tensors have no values: any .item(), bool() or Python branch on data would raise
    path = PATHS["vp"]
    x, t = torch.empty(8, 3, device="meta"), torch.empty(8, device="meta")
    lab = torch.empty(8, dtype=torch.long, device="meta")

    def D(x, t, label):
        return 0.5 * x + label[:, None].to(x.dtype) * t[:, None]

    null = torch.full((1,), NULL, device="meta")
    for batched in (False, True):
        g = ClassifierFreeGuidance(D, 3.0, uncond={"label": null.expand(8) if not batched else null}, rescale=0.7,
                                   interval=(0.2, 0.8), path=path, batched=batched)
        assert g(x, t, label=lab).shape == x.shape
    g = Compose(D, lambda d: ClassifierGuidance(d, lambda x, t, **c: -(x ** 2).sum(1), 2.0, path),
                lambda d: UniversalGuidance(d, lambda x0: (x0 ** 2).sum(1), 1.0, path, backward_steps=2))
    with torch.no_grad():
        assert g(x, t, label=lab).shape == x.shape


# ------------------------------------------------------------------------------------------ errors
def _D(x, t, **cond):
    return x


@pytest.mark.parametrize("make,match", [
    (lambda: ClassifierFreeGuidance(_D, math.inf, uncond={"label": 0}), "scale"),
    (lambda: ClassifierFreeGuidance(_D, float("nan"), uncond={"label": 0}), "scale"),
    (lambda: ClassifierFreeGuidance(_D, "3", uncond={"label": 0}), "scale"),
    (lambda: ClassifierFreeGuidance(_D, 3.0, uncond={}), "uncond"),
    (lambda: ClassifierFreeGuidance(_D, 3.0, uncond=None), "uncond"),
    (lambda: ClassifierFreeGuidance(_D, 3.0, uncond={"label": 0}, rescale=0.5), "path"),
    (lambda: ClassifierFreeGuidance(_D, 3.0, uncond={"label": 0}, rescale=1.5, path=paths.VP()), "rescale"),
    (lambda: ClassifierFreeGuidance(_D, 3.0, uncond={"label": 0}, interval=(0.6, 0.4)), "interval"),
    (lambda: ClassifierFreeGuidance(_D, 3.0, uncond={"label": 0}, interval=(-0.1, 0.4)), "interval"),
    (lambda: ClassifierFreeGuidance(_D, 3.0, uncond={"label": 0}, interval=(0.1, 1.2)), "interval"),
    (lambda: ClassifierFreeGuidance(_D, 3.0, uncond={"label": 0}, interval=0.5), "interval"),
    (lambda: ClassifierFreeGuidance("D", 3.0, uncond={"label": 0}), "callable"),
    (lambda: ClassifierGuidance(_D, lambda x, t: x.sum(1), 1.0, None), "path"),
    (lambda: ClassifierGuidance(_D, lambda x, t: x.sum(1), math.inf, paths.VP()), "scale"),
    (lambda: ClassifierGuidance(_D, None, 1.0, paths.VP()), "log_prob_fn"),
    (lambda: UniversalGuidance(_D, lambda x0: x0.sum(1), 1.0, None), "path"),
    (lambda: UniversalGuidance(_D, lambda x0: x0.sum(1), 1.0, "vp"), "path"),
    (lambda: UniversalGuidance(_D, lambda x0: x0.sum(1), 1.0, paths.VP(), backward_steps=-1), "backward_steps"),
    (lambda: UniversalGuidance(_D, lambda x0: x0.sum(1), 1.0, paths.VP(), backward_lr=0.0), "backward_lr"),
    (lambda: Compose(_D, 3), "wrapper 0"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_call_shapes():
    path = PATHS["vp"]
    x = _x()
    with pytest.raises(ValueError, match=r"shape \(16,\)"):
        ClassifierGuidance(_D, lambda x, t: x, 1.0, path)(x, torch.full((16,), 0.5, dtype=F64))
    with pytest.raises(ValueError, match=r"shape \(16,\)"):
        UniversalGuidance(_D, lambda x0: x0.sum(), 1.0, path)(x, torch.full((16,), 0.5, dtype=F64))
    with pytest.raises(ValueError, match="t must be"):
        UniversalGuidance(_D, lambda x0: x0.sum(1), 1.0, path)(x, torch.full((3,), 0.5, dtype=F64))
