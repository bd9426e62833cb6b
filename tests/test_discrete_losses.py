"""Discrete losses: each ELBO is a true bound, tight (continuous time) or within 0.01 nats (D3PM, 1000
steps) for the exact denoiser; Monte-Carlo estimates are unbiased; the masked weighted CE is the general
bound; bad input is refused."""
import math

import pytest
import torch

import polydiff.core.discrete as discrete
from polydiff.core import analytic

V, L = 3, 4
CHAIN = analytic.MarkovChain.random(V, L, seed=1)
X0 = CHAIN.sample(3, torch.Generator().manual_seed(3))
NLL = -CHAIN.log_prob(X0)

PROCS = [discrete.Masked(V), discrete.Masked(V, "cosine"), discrete.Uniform(V), discrete.Marginal([0.7, 0.3, 0.0]),
         discrete.Hybrid(V, p_uniform=0.3), discrete.Hybrid(V, p_uniform=0.2, gamma=2.0, schedule="cosine")]
IDS = [repr(p) for p in PROCS]


def perturbed(D, scale=0.7, seed=0):
    """The exact denoiser with fixed, state-dependent noise on its logits (a 'trained' but imperfect net)."""
    def net(x, t):
        lg = D(x, t)
        h = torch.sin(1.7 * x[..., None].double() * torch.arange(1, V + 1) + 3.1 * t[:, None, None] + seed)
        return torch.where(torch.isfinite(lg), lg + scale * h, lg)
    return net


@pytest.mark.parametrize("proc", PROCS, ids=IDS)
def test_continuous_elbo_is_tight_for_the_exact_denoiser(proc):
    """-ELBO - NLL = 0 for the exact denoiser, up to the quadrature error: below 1e-6 with 64 nodes
    (measured 8e-7 for GIDD gamma = 1, whose integrand has a t^(-1/2) log^2 t singularity at t = 0)."""
    D = CHAIN.denoiser(proc)
    loss = discrete.ContinuousELBO(proc)
    gap = loss.nelbo_exact(D, X0, nodes=64) - NLL
    assert gap.abs().max() < 1e-6, gap


@pytest.mark.parametrize("proc", [PROCS[0], PROCS[3]], ids=[IDS[0], IDS[3]])
def test_an_imperfect_model_pays_on_average(proc):
    """E_x0[-ELBO] >= E_x0[-log p_model(x0)] >= H(p): exact over all 81 sequences (16 nodes: error < 1e-5)."""
    loss = discrete.ContinuousELBO(proc)
    seqs = CHAIN.sequences()
    exact = float((CHAIN.probs() * loss.nelbo_exact(CHAIN.denoiser(proc), seqs, nodes=16)).sum())
    worse = float((CHAIN.probs() * loss.nelbo_exact(perturbed(CHAIN.denoiser(proc)), seqs, nodes=16)).sum())
    assert abs(exact - CHAIN.entropy()) < 1e-5 and worse > CHAIN.entropy() + 0.05


@pytest.mark.parametrize("proc", [PROCS[0], PROCS[2], PROCS[4]], ids=[IDS[0], IDS[2], IDS[4]])
def test_d3pm_bound_holds_and_tightens_with_steps(proc):
    D = CHAIN.denoiser(proc)
    gaps = [discrete.D3PMLoss(proc, steps=T).nelbo_exact(D, X0[:2]) - NLL[:2] for T in (4, 16, 64)]
    assert (gaps[0] > gaps[1]).all() and (gaps[1] > gaps[2]).all() and (gaps[2] > 0).all()
    # averaged over the data the bound can never go below the entropy (every sequence, exactly)
    seqs = CHAIN.sequences()
    e = discrete.D3PMLoss(proc, steps=4).nelbo_exact(D, seqs)
    assert float((CHAIN.probs() * e).sum()) > CHAIN.entropy() + 0.1


@pytest.mark.parametrize("proc", [PROCS[0], PROCS[2]], ids=[IDS[0], IDS[2]])
def test_d3pm_bound_is_within_a_hundredth_of_a_nat_at_1000_steps(proc):
    gap = discrete.D3PMLoss(proc, steps=1000).nelbo_exact(CHAIN.denoiser(proc), X0[:2]) - NLL[:2]
    assert (gap > 0).all() and (gap < 0.01).all(), gap       # measured 0.0016 - 0.0027


@pytest.mark.parametrize("proc", [PROCS[0], PROCS[2], PROCS[4]], ids=[IDS[0], IDS[2], IDS[4]])
def test_monte_carlo_estimates_are_unbiased(proc):
    net = perturbed(CHAIN.denoiser(proc))
    x0 = X0[:1].expand(6000, -1)
    for loss in (discrete.ContinuousELBO(proc, "stratified"), discrete.D3PMLoss(proc, steps=20)):
        exact = float(loss.nelbo_exact(net, X0[:1], nodes=48)[0])
        est = loss.nelbo(net, x0, generator=torch.Generator().manual_seed(1))
        se = float(est.std()) / math.sqrt(est.numel())
        assert abs(float(est.mean()) - exact) < 4 * se + 1e-9, (float(est.mean()), exact, se)


def test_masked_weighted_ce_is_the_general_bound():
    """For a masked process the MDLM/MD4 weighted CE equals the general rate-based integrand term by term."""
    proc = discrete.Masked(V)
    net = perturbed(CHAIN.denoiser(proc))
    loss = discrete.ContinuousELBO(proc)
    g = torch.Generator().manual_seed(2)
    x0 = CHAIN.sample(256, g)
    t = loss.sample_t(256, g)
    xt = proc.sample_marginal(x0, t, generator=g)
    weighted = loss.nelbo_at(net, x0, t, xt)
    general = loss._general(net(xt, t), x0, t, xt)
    torch.testing.assert_close(weighted, general, rtol=1e-10, atol=1e-10)


def test_training_losses_and_their_relations():
    proc = discrete.Uniform(V)
    net = perturbed(CHAIN.denoiser(proc))
    g = torch.Generator().manual_seed(3)
    x0 = CHAIN.sample(64, g)
    t = torch.full((64,), 5 / 10, dtype=torch.float64)
    xt = proc.sample_marginal(x0, t, generator=g)
    d3pm = discrete.D3PMLoss(proc, steps=10, ce_weight=0.5)
    ce = -torch.log_softmax(net(xt, t), -1).gather(-1, x0[..., None])[..., 0].sum(1)
    torch.testing.assert_close(d3pm.loss_at(net, x0, t, xt), d3pm.nelbo_at(net, x0, t, xt) + 0.5 * ce)
    cel = discrete.CrossEntropyLoss(proc)
    torch.testing.assert_close(cel.loss_at(net, x0, t, xt), ce)
    torch.testing.assert_close(cel.nelbo_at(net, x0, t, xt), discrete.ContinuousELBO(proc).nelbo_at(net, x0, t, xt))
    # masked CE only counts masked positions (carry-over)
    m = discrete.Masked(V)
    xm = x0.clone()
    xm[:, :2] = V
    mnet = perturbed(CHAIN.denoiser(m))
    ce_m = -torch.log_softmax(mnet(xm, t), -1).gather(-1, x0[..., None])[..., 0][:, :2].sum(1)
    torch.testing.assert_close(discrete.CrossEntropyLoss(m).loss_at(mnet, x0, t, xm), ce_m)
    # stratified times cover each stratum once
    ts = discrete.ContinuousELBO(proc, "stratified").sample_t(8, torch.Generator().manual_seed(0))
    assert sorted((ts * 8).floor().long().tolist()) == list(range(8))


def test_losses_train_a_small_network():
    """Gradients flow: a few plain gradient steps on a tiny network lower the exact -ELBO (a true bound
    throughout). (torch.optim's first use costs seconds of imports, so the update is written out.)"""
    torch.manual_seed(0)
    proc = discrete.Masked(V)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(V + 1, 16)
            self.out = torch.nn.Linear(16 * L + 1, L * V)

        def forward(self, x, t):
            h = torch.cat([self.emb(x).flatten(1), t.float()[:, None]], 1)
            return self.out(torch.tanh(h)).view(-1, L, V)

    net = Net()
    loss = discrete.ContinuousELBO(proc)
    seqs = CHAIN.sequences()
    before = float((CHAIN.probs() * loss.nelbo_exact(net, seqs, nodes=12)).sum())
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        l = loss(net, CHAIN.sample(128, g), generator=g).mean()
        net.zero_grad()
        l.backward()
        with torch.no_grad():
            for prm in net.parameters():
                prm -= 0.5 * prm.grad
    after = float((CHAIN.probs() * loss.nelbo_exact(net, seqs, nodes=12)).sum())
    assert after < before - 0.5 and after > CHAIN.entropy()


def test_prior_term_and_refused_processes():
    eps = 1e-3
    u = discrete.Uniform(V, discrete.Schedule("loglinear", eps=eps))
    kl = discrete.ContinuousELBO(u).prior_kl(X0)
    a, b = eps + (1 - eps) / V, (1 - eps) / V
    per = a * math.log(a * V) + (V - 1) * b * math.log(b * V)
    torch.testing.assert_close(kl, torch.full((3,), L * per, dtype=torch.float64))
    assert (discrete.ContinuousELBO(discrete.Uniform(V)).prior_kl(X0) == 0).all()
    with pytest.raises(ValueError, match="alpha\\(1\\) = 0.001 > 0.*no finite ELBO"):
        discrete.ContinuousELBO(discrete.Masked(V, "loglinear"))
    with pytest.raises(ValueError, match="no finite ELBO"):
        discrete.D3PMLoss(discrete.Marginal([0.7, 0.3, 0.0], schedule="loglinear"))


def test_bad_input_is_refused_clearly():
    proc = discrete.Masked(V)
    D = CHAIN.denoiser(proc)
    loss = discrete.ContinuousELBO(proc)
    with pytest.raises(ValueError, match="x0 has token ids out of range \\[0, 3\\).*mask id 3"):
        loss(D, torch.tensor([[0, 1, 3, 2]]))
    with pytest.raises(ValueError, match="logits must have shape \\(2, 4, 3\\)"):
        loss(lambda x, t: torch.zeros(2, 4, 4), X0[:2])
    with pytest.raises(ValueError, match="x_t shape"):
        loss.nelbo_at(D, X0, torch.full((3,), 0.5), X0[:, :2])
    with pytest.raises(ValueError, match="grid i / 10"):
        discrete.D3PMLoss(proc, steps=10).nelbo_at(D, X0, torch.full((3,), 0.55, dtype=torch.float64), X0)
    with pytest.raises(ValueError, match="unknown time sampler 'beta'; valid: \\['uniform', 'stratified'\\]"):
        discrete.ContinuousELBO(proc, "beta")
    with pytest.raises(ValueError, match="steps"):
        discrete.D3PMLoss(proc, steps=0)
