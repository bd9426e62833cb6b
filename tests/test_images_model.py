"""Image networks, the KL autoencoder, label dropout, the shipped digits model and `polydiff generate images`."""
from __future__ import annotations

import json

import pytest
import torch

from polydiff.core import paths
from polydiff.core.nets import num_params
from polydiff.core.training import save_model
from polydiff.domains.images import autoencoder as ae_mod
from polydiff.domains.images import data, nets
from polydiff.domains.images.pretrained import ImageDiffusionModel, load_model, pretrained
from polydiff.domains.images.train_digits import LabelDropoutLoss, make_loss

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ networks
@pytest.mark.parametrize("name", sorted(nets.CONFIGS))
@pytest.mark.parametrize("num_classes", [0, 10])
def test_image_configs_build_and_keep_shape(name, num_classes):
    c, size = nets.SIZES[name]
    with torch.device("meta"):                    # the RGB configs are tens of millions of parameters
        net = nets.build(name, num_classes)
        x = torch.empty(2, c, size, size)
        if num_classes:                            # label checks read values, which meta tensors lack
            assert net.cond.label.num_embeddings == num_classes + 1      # + the null label
        else:
            assert net(x, torch.empty(2)).shape == x.shape
    assert net.config["num_classes"] == num_classes and net.config["in_channels"] == c
    json.dumps(net.config)                         # saved beside the weights


def test_digits_net_conditional_and_unconditional_forward():
    torch.manual_seed(0)
    net = nets.build("digits-unet", 10, channels=16, head_dim=16, num_res_blocks=1).eval()   # no dropout
    with torch.no_grad():
        for p in net.parameters():                 # leave the zero-initialised output layers' zero
            p.add_(0.05 * torch.randn_like(p))
    x, t = torch.randn(3, 1, 16, 16), torch.rand(3)
    out_null = net(x, t)
    assert torch.equal(out_null, net(x, t, class_labels=torch.full((3,), 10)))   # no labels = null label
    assert not torch.allclose(out_null, net(x, t, class_labels=torch.tensor([0, 1, 2])))
    with pytest.raises(ValueError, match="class labels"):
        net(x, t, class_labels=torch.tensor([0, 1, 11]))
    with pytest.raises(ValueError, match="unknown image network 'digits'; valid"):
        nets.config("digits")
    with pytest.raises(ValueError, match="num_classes"):
        nets.config("digits-unet", -1)


# ------------------------------------------------------------------------------------------ autoencoder
def _tiny_ae(**kw):
    torch.manual_seed(0)
    return ae_mod.build_autoencoder(in_channels=1, z_channels=2, channels=8, channel_mult=[1, 2], norm_groups=4, **kw)


def test_kl_term_matches_the_closed_form_of_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 2, 3, 3, generator=g)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    assert torch.allclose(ae_mod.kl_divergence(mean, logvar), expected, atol=1e-5)
    assert torch.equal(ae_mod.kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2))


def test_autoencoder_encode_sample_loss_scale_and_save_load(tmp_path):
    ae = _tiny_ae().eval()
    x, _ = data.load_digits("test")
    x = x[:32]
    assert ae.latent_shape((1, 16, 16)) == (2, 8, 8)
    mean, logvar = ae.moments(x)
    # encode(sample=True) is mean + exp(logvar / 2) * eps with eps drawn from the generator
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    z = ae.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(z, mean + (0.5 * logvar).exp() * eps, atol=1e-6)
    assert torch.equal(ae.encode(x), mean)                          # scale factor 1 before fitting
    terms = ae.loss(x, beta=0.1, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(terms["total"], terms["recon"] + 0.1 * terms["kl"])
    assert torch.allclose(terms["kl"], ae_mod.kl_divergence(mean, logvar))
    s = ae.fit_scale_factor(x)
    with torch.no_grad():
        assert float(ae.encode(x).double().std()) == pytest.approx(1.0, rel=1e-5)
        assert torch.allclose(ae.decode(ae.encode(x)), ae.decoder(mean), atol=1e-5)   # decode undoes the scale
    d = ae_mod.save_autoencoder(tmp_path / "ae", ae)
    back = ae_mod.load_autoencoder(d)
    assert float(back.scale_factor) == pytest.approx(s) and torch.equal(back(x), ae(x))
    with pytest.raises(ValueError, match="1 channel"):
        ae.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="divisible by the autoencoder's factor 2"):
        ae.encode(torch.zeros(1, 1, 15, 15))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        ae.encode(torch.full((1, 1, 16, 16), 2.0))
    with pytest.raises(ValueError, match=r"\(B, 2, h, w\)"):
        ae.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="not a saved autoencoder"):
        ae_mod.load_autoencoder(tmp_path)


def test_autoencoder_training_beats_the_mean_image():
    x, _ = data.load_digits("train")
    x = x[:256]
    ae = ae_mod.train_autoencoder(x, _tiny_ae(), steps=100, batch_size=32, lr=3e-3, beta=1e-3)
    with torch.no_grad():
        mse = (ae(x) - x).square().mean()
    baseline = (x - x.mean(0, keepdim=True)).square().mean()      # the best constant reconstruction
    assert mse < 0.2 * baseline


# ------------------------------------------------------------------------------------------ label dropout
class _Spy:
    path, prediction, sigma_data = paths.VP(), "edm", 0.5

    def __call__(self, net, x0, generator=None, **cond):
        self.labels = cond["class_labels"]
        return torch.zeros(x0.shape[0])


def test_label_dropout_rates_and_forwarded_attributes():
    spy = _Spy()
    labels = torch.arange(4000) % 10
    x = torch.zeros(4000, 1)
    LabelDropoutLoss(spy, 0.0, 10)(None, x, torch.Generator().manual_seed(0), class_labels=labels)
    assert torch.equal(spy.labels, labels)
    LabelDropoutLoss(spy, 1.0, 10)(None, x, torch.Generator().manual_seed(0), class_labels=labels)
    assert torch.equal(spy.labels, torch.full_like(labels, 10))
    wrapped = LabelDropoutLoss(spy, 0.25, 10)
    wrapped(None, x, torch.Generator().manual_seed(0), class_labels=labels)
    dropped = spy.labels == 10
    assert torch.equal(spy.labels[~dropped], labels[~dropped])
    assert abs(float(dropped.float().mean()) - 0.25) < 0.03        # 4 standard deviations
    first = spy.labels.clone()
    wrapped(None, x, torch.Generator().manual_seed(0), class_labels=labels)
    assert torch.equal(spy.labels, first)                           # deterministic given the generator
    assert (wrapped.path, wrapped.prediction, wrapped.sigma_data) == (spy.path, "edm", 0.5)
    loss = make_loss()
    assert loss.prediction == "edm" and isinstance(loss.path, paths.VP)


# ------------------------------------------------------------------------------------------ generate
class _PointMassDenoiser(torch.nn.Module):
    """The exact denoiser of a point mass at mu[label]: E[x0 | x_t] = mu[label] for every x_t and t.
    Label 10 (or none) is the unconditional model, a point mass at mu[10]."""

    def __init__(self):
        super().__init__()
        self.path = paths.VP()
        self.mu = torch.nn.Parameter(torch.linspace(-0.9, 0.9, 11)[:, None, None, None].expand(11, 1, 4, 4).clone())

    def forward(self, x, t, class_labels=None):
        if class_labels is None:
            class_labels = torch.full((x.shape[0],), 10)
        return self.mu[class_labels].detach().to(x.dtype)


def test_generate_wires_labels_guidance_and_unconditional_exactly():
    D = _PointMassDenoiser()
    model = ImageDiffusionModel(D, (1, 4, 4), 10)
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 3, 9])
    x = model.generate(labels=labels, steps=3, solver="ddim", generator=g)
    assert torch.allclose(x, D.mu[labels], atol=1e-5)              # a point mass is reproduced exactly
    w = 1.5
    xg = model.generate(labels=labels, steps=3, solver="ddim", guidance=w, generator=g)
    want = (D.mu[10] + w * (D.mu[labels] - D.mu[10])).clamp(-1, 1)
    assert torch.allclose(xg, want, atol=1e-5)
    xu = model.generate(n=2, steps=3, solver="ddim", generator=g)
    assert torch.allclose(xu, D.mu[[10, 10]], atol=1e-5)
    for bad, msg in ((torch.tensor([10]), r"\[0, 9\], got \[10\]"), (torch.tensor([-1]), "got \\[-1\\]"),
                     (torch.tensor([0.5]), "integer"), (torch.zeros(2, 2, dtype=torch.long), "shape")):
        with pytest.raises(ValueError, match=msg):
            model.generate(labels=bad, steps=2)
    with pytest.raises(ValueError, match="needs n"):
        model.generate(steps=2)
    with pytest.raises(ValueError, match="guidance needs labels"):
        model.generate(n=2, steps=2, guidance=2.0)


def test_shipped_digits_model_loads_and_generates():
    with pytest.raises(ValueError, match=r"unknown pretrained model 'mnist'; valid: \['digits'\]"):
        pretrained("mnist")
    model = pretrained("digits")
    assert model.shape == (1, 16, 16) and model.num_classes == 10 and model.path is model.denoiser.path
    assert num_params(model.denoiser.net) < 2_000_000
    g = torch.Generator().manual_seed(0)
    x = model.generate(labels=torch.tensor([1, 7]), steps=4, generator=g)
    assert x.shape == (2, 1, 16, 16) and x.min() >= -1 and x.max() <= 1
    x2 = model.generate(labels=torch.tensor([1, 7]), steps=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)
    t = torch.full((2,), 0.5)
    xt = torch.randn(2, 1, 16, 16, generator=g)
    assert model.denoiser(xt, t).shape == (2, 1, 16, 16)           # the unconditional prior needs no labels


# ------------------------------------------------------------------------------------------ CLI
def _tiny_model_dir(tmp_path):
    torch.manual_seed(0)
    net = nets.build("digits-unet", 10, channels=8, head_dim=8, num_res_blocks=1, norm_groups=4)
    return save_model(tmp_path / "tiny", net, paths.VP(), "edm", 0.65,
                      extra={"sample_shape": [1, 16, 16], "num_classes": 10, "cond_key": "class_labels"})


def test_cli_generate_images_png_and_tensor(tmp_path, capsys):
    from polydiff.core.training.files import load_tensors
    from polydiff.tasks import cli
    d = _tiny_model_dir(tmp_path)
    assert load_model(d).num_classes == 10
    png = tmp_path / "grid.png"
    assert cli.main(["generate", "images", "--model", str(d), "--class", "7", "-n", "5", "--steps", "2",
                     "--nrow", "4", "--out", str(png)]) == 0
    assert data.read_image(png).shape == (1, 1, 4 * (2 * 17 + 1), 4 * (4 * 17 + 1))   # --scale 4 by default
    st = tmp_path / "x.safetensors"
    assert cli.main(["generate", "images", "--model", str(d), "-n", "3", "--steps", "2", "--guidance", "2",
                     "--out", str(st)]) == 0
    t = load_tensors(st)
    assert t["images"].shape == (3, 1, 16, 16) and t["labels"].tolist() == [0, 1, 2]
    assert cli.main(["generate", "images", "--model", str(d), "--class", "12", "-n", "2", "--out",
                     str(png)]) == 2
    assert "[0, 9]" in capsys.readouterr().err
    assert cli.main(["generate", "images", "--model", str(d), "--out", str(tmp_path / "x.jpg")]) == 2
    assert cli.main(["generate", "images", "--model", "nope", "--out", str(png)]) == 2
    assert "valid: ['digits']" in capsys.readouterr().err


def test_shipped_digits_autoencoder_reconstructs_held_out_digits():
    from polydiff.domains.images import pretrained_autoencoder
    ae = pretrained_autoencoder("digits")
    x, _ = data.load_digits("test")
    x = x[:64]
    with torch.no_grad():
        z = ae.encode(x)
        x_hat = ae.decode(z)
    assert z.shape == (64, 2, 8, 8)
    assert 0.7 < float(z.std()) < 1.3                                # scaled to about unit variance
    psnr = 10 * torch.log10(4.0 / (x_hat - x).square().mean())       # data range 2
    assert psnr > 35.0
    with pytest.raises(ValueError, match="unknown pretrained autoencoder 'cifar'; valid"):
        pretrained_autoencoder("cifar")
