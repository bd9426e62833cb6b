"""Image evaluators: exact Fréchet distances, enumerable precision/recall, PSNR/SSIM against closed forms
and scikit-image, the perceptual distance against its formula, the shipped digit networks, input errors."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from polydiff.domains.images import evaluate as ev
from polydiff.domains.images.data import load_digits
from polydiff.domains.images.train_evaluators import random_shift, train

torch.set_num_threads(1)


def exact_moments(mean, cov, n=50, seed=0):
    """n points whose sample mean and unbiased sample covariance are exactly ``mean`` and ``cov``."""
    g = torch.Generator().manual_seed(seed)
    d = len(mean)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    c = z.T @ z / (n - 1)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(c)).T          # sample covariance exactly I
    a = torch.linalg.cholesky(torch.as_tensor(cov, dtype=torch.float64))
    return torch.as_tensor(mean, dtype=torch.float64) + z @ a.T


# ---------------------------------------------------------------- Fréchet distance
def test_frechet_distance_diagonal_closed_form():
    m1, m2 = [0.0, 1.0, -2.0], [0.5, 1.0, 1.0]
    s1, s2 = [1.0, 4.0, 0.25], [9.0, 1.0, 0.25]
    fa, fb = exact_moments(m1, np.diag(s1), seed=1), exact_moments(m2, np.diag(s2), n=80, seed=2)
    exact = sum((a - b) ** 2 for a, b in zip(m1, m2)) + sum((math.sqrt(a) - math.sqrt(b)) ** 2 for a, b in zip(s1, s2))
    assert ev.frechet_distance(fa, fb) == pytest.approx(exact, rel=1e-9)
    assert ev.frechet_distance(fb, fa) == pytest.approx(exact, rel=1e-9)


def test_frechet_distance_noncommuting_2d_closed_form():
    # for a 2x2 PSD matrix M: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M))
    s1 = np.array([[2.0, 0.9], [0.9, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    m1, m2 = [1.0, -1.0], [0.0, 2.0]
    r1 = np.real(__import__("scipy").linalg.sqrtm(s1))
    m = r1 @ s2 @ r1
    tr_sqrt = math.sqrt(np.trace(m) + 2 * math.sqrt(np.linalg.det(m)))
    exact = 1.0 + 9.0 + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    # det(S1^1/2 S2 S1^1/2) = det S1 det S2 and tr = tr(S1 S2): no sqrtm needed for the reference
    tr_sqrt2 = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    assert tr_sqrt == pytest.approx(tr_sqrt2, rel=1e-12)
    fd = ev.frechet_distance(exact_moments(m1, s1, seed=3), exact_moments(m2, s2, n=30, seed=4))
    assert fd == pytest.approx(exact, rel=1e-9)


def test_frechet_distance_identical_and_singular():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(100, 8, generator=g)
    assert ev.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-9)
    # fewer samples than dimensions: singular covariances, still finite and >= 0; shifting by c adds |c|^2
    a, b = torch.randn(5, 20, generator=g, dtype=torch.float64), torch.randn(6, 20, generator=g, dtype=torch.float64)
    fd = ev.frechet_distance(a, b)
    assert math.isfinite(fd) and fd > 0
    assert ev.frechet_distance(a + 2.0, a) == pytest.approx(4.0 * 20, rel=1e-12)


def test_frechet_distance_matches_sqrtm_route():
    # N > D (QR factor) and N < D (data factor) both equal the textbook formula with scipy's sqrtm
    from scipy.linalg import sqrtm
    g = torch.Generator().manual_seed(5)
    for n, d in ((200, 6), (7, 12)):
        a = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
        b = torch.randn(n + 3, d, generator=g, dtype=torch.float64) + 0.3
        sa, sb = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
        ref = float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb)
                    - 2 * np.trace(np.real(sqrtm(sa @ sb))))
        assert ev.frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)


# ---------------------------------------------------------------- precision / recall
def test_precision_recall_enumerated_1d():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
    fake = torch.tensor([[0.5], [5.0], [20.0], [2.9]])
    # k=1 real radii: 1,1,1,1,7 -> 0.5 in, 5 in (|5-10| <= 7), 20 out, 2.9 in: precision 3/4
    # k=1 fake radii (sorted 0.5,2.9,5,20): 2.4,2.1,2.1,15 -> reals 0,1,2,3 near 0.5/2.9; 10 within 15 of 20
    pr = ev.precision_recall(real, fake, k=1)
    assert pr.precision == pytest.approx(0.75) and pr.recall == pytest.approx(1.0)
    # k=2 real radii: 2,1,1,2,8 -> 5 is within 8 of 10; 20 is not: precision 3/4 again; fake radii k=2:
    # 0.5->4.5, 2.9->2.4, 5->4.5, 20->17.1; every real point within some ball -> recall 1
    pr2 = ev.precision_recall(real, fake, k=2)
    assert pr2.precision == pytest.approx(0.75) and pr2.recall == pytest.approx(1.0)
    # a ball's boundary counts as inside (<=): 4.0 and -1.0 lie exactly at radius 1 from 3 and 0
    pr3 = ev.precision_recall(real[:4], torch.tensor([[4.0], [4.01], [-1.0], [-1.5]]), k=1)
    assert pr3.precision == pytest.approx(0.5)


def test_precision_recall_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(40, 3, generator=g), torch.randn(30, 3, generator=g) * 1.5 + 0.5

    def coverage(sup, q, k):
        inside = 0
        for x in q:
            for i, s in enumerate(sup):
                others = sorted(float((s - t).norm()) for j, t in enumerate(sup) if j != i)
                if float((x - s).norm()) <= others[k - 1]:
                    inside += 1
                    break
        return inside / len(q)

    pr = ev.precision_recall(real, fake, k=3)
    assert pr.precision == pytest.approx(coverage(real, fake, 3))
    assert pr.recall == pytest.approx(coverage(fake, real, 3))
    assert 0 < pr.precision < 1 and 0 < pr.recall <= 1
    same = ev.precision_recall(real, real, k=3)
    assert same.precision == 1.0 and same.recall == 1.0


# ---------------------------------------------------------------- PSNR, SSIM, perceptual distance
def test_psnr_exact():
    x = torch.zeros(3, 1, 16, 16)
    y = x.clone()
    y[0] += 0.1                                      # MSE 0.01 -> 10 log10(4 / 0.01)
    y[1, :, :8] = 1.0                                # half the pixels off by 1: MSE 0.5
    p = ev.psnr(x, y)
    assert p.shape == (3,)
    assert p[0].item() == pytest.approx(10 * math.log10(400.0), rel=1e-6)
    assert p[1].item() == pytest.approx(10 * math.log10(8.0), rel=1e-6)
    assert math.isinf(p[2].item())
    # the [-1, 1] number equals the [0, 1] number with data range 1
    assert ev.psnr(x, y, data_range=2.0)[0] == pytest.approx(ev.psnr((x + 1) / 2, (y + 1) / 2, data_range=1.0)[0])


def test_ssim_matches_scikit_image():
    from skimage.metrics import structural_similarity
    g = torch.Generator().manual_seed(0)
    x, _ = load_digits("test")
    x = x[:4]
    y = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    s = ev.ssim(x, y)
    for i in range(4):
        ref = structural_similarity(((x[i, 0] + 1) / 2).double().numpy(), ((y[i, 0] + 1) / 2).double().numpy(),
                                    data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert s[i].item() == pytest.approx(ref, abs=1e-5)
    # 3 channels, non-square, a smaller window
    a = torch.rand(2, 3, 20, 24, generator=g) * 2 - 1
    b = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    s3 = ev.ssim(a, b, window=9, sigma=1.0)        # scikit-image's Gaussian window is 2 int(3.5 sigma + .5) + 1
    for i in range(2):
        ref = structural_similarity(((a[i] + 1) / 2).double().numpy(), ((b[i] + 1) / 2).double().numpy(),
                                    data_range=1.0, gaussian_weights=True, sigma=1.0,
                                    use_sample_covariance=False, channel_axis=0)
        assert s3[i].item() == pytest.approx(ref, abs=1e-5)


def test_ssim_constant_images_exact():
    # constant images: variances and covariance vanish, SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1) on [0, 1]
    a, b = torch.full((1, 1, 16, 16), -0.5), torch.full((1, 1, 16, 16), 0.5)
    m1, m2, c1 = 0.25, 0.75, 1e-4
    assert ev.ssim(a, b).item() == pytest.approx((2 * m1 * m2 + c1) / (m1 ** 2 + m2 ** 2 + c1), rel=1e-6)
    assert ev.ssim(a, a).item() == pytest.approx(1.0, abs=1e-7)
    x, _ = load_digits("test")
    assert torch.allclose(ev.ssim(x[:5], x[:5]), torch.ones(5))


class IdentityLayers(nn.Module):
    """A 'network' whose only layer is the image itself."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def layers(self, x):
        return [x]


def test_perceptual_distance_formula():
    # one layer = the image with C = 1: unit normalisation gives sign(x), so the distance is
    # mean over pixels of (sign a - sign b)^2 = 4 x the fraction of pixels whose sign differs
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1
    b = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1
    d = ev.perceptual_distance(a, b, net=IdentityLayers())
    expect = 4 * (torch.sign(a) != torch.sign(b)).double().flatten(1).mean(1)
    assert torch.allclose(d.double(), expect, atol=1e-6)
    # C = 3: per pixel |u - v|^2 / 3 for unit vectors u, v
    a3, b3 = torch.rand(2, 3, 4, 4, generator=g) * 2 - 1, torch.rand(2, 3, 4, 4, generator=g) * 2 - 1
    u, v = a3 / a3.norm(dim=1, keepdim=True), b3 / b3.norm(dim=1, keepdim=True)
    assert torch.allclose(ev.perceptual_distance(a3, b3, net=IdentityLayers()),
                          (u - v).pow(2).sum(1).mean((1, 2)) / 3, atol=1e-6)


def test_perceptual_distance_shipped_net():
    x, _ = load_digits("test")
    a, b = x[:6], x[6:12]
    d = ev.perceptual_distance(a, b)
    assert d.shape == (6,) and bool((d > 0).all())
    assert torch.allclose(d, ev.perceptual_distance(b, a), atol=1e-6)
    assert torch.allclose(ev.perceptual_distance(a, a), torch.zeros(6), atol=1e-6)
    # a mildly noisy copy is closer than a different digit
    noisy = (a + 0.05 * torch.randn(a.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    assert bool((ev.perceptual_distance(a, noisy) < d).all())
    # differentiable in the images (usable as a loss)
    z = noisy.clone().requires_grad_(True)
    ev.perceptual_distance(z, a).sum().backward()
    assert z.grad is not None and float(z.grad.abs().sum()) > 0


# ---------------------------------------------------------------- shipped networks and sample quality
def test_shipped_networks_accuracy_and_independence():
    x, y = load_digits("test")
    acc = ev.classifier_accuracy(x, y)
    assert acc >= 0.97
    assert acc == pytest.approx(ev.classifier("digits").info["test_accuracy"], abs=1e-9)
    fnet = ev.feature_net("digits")
    with torch.no_grad():
        assert float((fnet(x).argmax(1) == y).double().mean()) >= 0.95
    assert type(fnet) is not type(ev.classifier("digits"))
    # robust to one-pixel shifts (the augmentation it was trained with)
    shifted = torch.nn.functional.pad(x, (1, 0, 0, 1), value=-1.0)[:, :, 1:, :16]
    assert ev.classifier_accuracy(shifted, y) >= 0.9
    # wrong labels are scored as wrong
    assert ev.classifier_accuracy(x, (y + 1) % 10) <= 0.05


def test_fid_and_sample_quality_orderings():
    xte, yte = load_digits("test")
    q = ev.sample_quality(xte, yte, reference="test")
    assert q["fd"] == pytest.approx(0.0, abs=1e-6) and q["precision"] == 1.0 and q["recall"] == 1.0
    assert q["accuracy"] >= 0.97
    xtr, _ = load_digits("train")
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(360, 1, 16, 16, generator=g) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(xtr, 3, stride=1, padding=1, count_include_pad=False)
    fd_real, fd_blur, fd_noise = ev.fid(xtr, xte), ev.fid(blurred, xte), ev.fid(noise, xte)
    assert 0 < fd_real < fd_blur < fd_noise
    ref = ev.reference_distances(splits=2)
    assert ref["fd_train_test"] == pytest.approx(fd_real, rel=1e-9)
    assert 0 < ref["fd_halves"] < fd_blur
    for key in ("precision_halves", "recall_halves", "precision_train_test", "recall_train_test"):
        assert 0.7 <= ref[key] <= 1.0
    assert ev.precision_recall(ev.features(xte), ev.features(noise)).precision < 0.2


# ---------------------------------------------------------------- files
def test_evaluator_save_load_roundtrip_and_bad_files(tmp_path):
    torch.manual_seed(0)
    net = ev.Classifier(channels=(4, 8), hidden=16)
    path = ev.save_network(net, "classifier", "digits", tmp_path, info={"test_accuracy": 0.5})
    back = ev.load_network("classifier", "digits", tmp_path)
    x, _ = load_digits("test")
    net.eval()
    assert torch.equal(net(x[:4]), back(x[:4])) and back.info["test_accuracy"] == 0.5
    path.write_bytes(path.read_bytes()[:100])                 # truncated file
    with pytest.raises(ValueError, match="not a valid polydiff evaluator"):
        ev.load_network("classifier", "digits", tmp_path)
    ev.save_network(net, "classifier", "digits", tmp_path)
    path.rename(ev.weights_file("feature_net", "digits", tmp_path))   # a classifier under the feature net's name
    with pytest.raises(ValueError, match="not a valid polydiff evaluator"):
        ev.load_network("feature_net", "digits", tmp_path)
    with pytest.raises(ValueError, match="missing evaluator weights"):
        ev.load_network("classifier", "digits", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="valid: digits"):
        ev.feature_net("cifar10")
    with pytest.raises(ValueError, match="valid: feature_net, classifier"):
        ev.weights_file("inception")


def test_random_shift_semantics():
    x = torch.arange(2 * 16.0).view(2, 1, 4, 4) / 32
    out = random_shift(x, 1, torch.Generator().manual_seed(0))
    for i in range(2):   # each output is the input moved by one integer offset in [-1, 1]^2, -1 filled in
        found = False
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                p = torch.nn.functional.pad(x[i:i + 1], (1, 1, 1, 1), value=-1.0)
                found |= torch.equal(out[i:i + 1], p[:, :, 1 + dy:5 + dy, 1 + dx:5 + dx])
        assert found


def test_train_loop_learns():
    # the training script's loop, 10 epochs on 256 digits: far above chance (0.1) on other digits
    x, y = load_digits("train")
    torch.manual_seed(0)
    net = train(ev.Classifier(channels=(8, 16), hidden=32), x[:256], y[:256], epochs=10, seed=0,
                batch_size=32, lr=3e-3)
    with torch.no_grad():
        assert float((net(x[1000:1300]).argmax(1) == y[1000:1300]).double().mean()) > 0.6


# ---------------------------------------------------------------- Inception (random weights: plumbing only)
def test_inception_fid_plumbing(tmp_path):
    torch.manual_seed(0)
    net = ev.inception_model(None)
    x, _ = load_digits("test")
    f = ev.inception_features(x[:3], net, size=75)            # 75: Inception's smallest input, for speed
    assert f.shape == (3, 2048) and bool(torch.isfinite(f).all())
    fd = ev.inception_fid(x[:3], x[3:6], weights=net, size=75)
    assert math.isfinite(fd) and fd > 0
    assert ev.inception_fid(x[:3], x[:3], weights=net, size=75) == pytest.approx(0.0, abs=1e-6)
    # the weights file round trip: a saved state dict loads back into the same features
    from safetensors.torch import save_file
    good = tmp_path / "inception.safetensors"
    # (fc is Identity in the feature extractor; a torchvision file has fc.*: add them back)
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    save_file(sd, str(good))
    assert torch.allclose(ev.inception_features(x[:3], ev.inception_model(good), size=75), f, atol=1e-5)
    with pytest.raises(ValueError, match="does not exist"):
        ev.inception_fid(x[:3], x[3:6], weights=tmp_path / "inception.pth")
    bad = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad))
    with pytest.raises(ValueError, match="inception_v3 weights"):
        ev.inception_model(bad)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        ev.inception_features(torch.zeros(2, 2, 16, 16), net)
    with pytest.raises(ValueError, match="at least 75x75"):
        ev.inception_features(x[:2], net, size=32)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad, match", [
    (torch.zeros(4, 16, 16), r"\(N, C, H, W\)"),
    (torch.zeros(4, 3, 16, 16), "1 channel"),
    (torch.zeros(4, 1, 28, 28), "16x16"),
    (torch.full((4, 1, 16, 16), 255.0), r"\[-1, 1\]"),
    (torch.full((4, 1, 16, 16), float("nan")), "NaN"),
    (torch.zeros(4, 1, 16, 16, dtype=torch.int64), "float"),
    (np.zeros((4, 1, 16, 16)), "torch.Tensor"),
])
def test_bad_images_for_digit_networks(bad, match):
    with pytest.raises(ValueError, match=match):
        ev.features(bad)
    with pytest.raises(ValueError, match=match):
        ev.classifier_accuracy(bad, torch.zeros(4, dtype=torch.int64))


def test_bad_input_messages():
    x, y = load_digits("test")
    with pytest.raises(ValueError, match="same shape"):
        ev.psnr(x[:4], x[:5])
    with pytest.raises(ValueError, match="same shape"):
        ev.ssim(x[:4], x[:4, :, :, :15])
    with pytest.raises(ValueError, match="same shape"):
        ev.perceptual_distance(x[:4], x[:3])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        ev.psnr(x[:2] * 0 + 2, x[:2])
    with pytest.raises(ValueError, match="does not fit"):
        ev.ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="odd"):
        ev.ssim(x[:1], x[:1], window=6)
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        ev.classifier_accuracy(x[:4], y[:3])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\]"):
        ev.classifier_accuracy(x[:2], torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="integer tensor"):
        ev.classifier_accuracy(x[:2], torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="at least 2 samples"):
        ev.fid(x[:1], x[:5])
    with pytest.raises(ValueError, match="feature dimensions differ"):
        ev.frechet_distance(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="NaN"):
        ev.frechet_distance(torch.full((3, 2), float("nan")), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="k must be"):
        ev.precision_recall(torch.zeros(3, 2), torch.zeros(5, 2), k=3)
