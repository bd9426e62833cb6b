"""Image data: the [-1, 1] (N, C, H, W) convention, exact uint8 round trips, files, folders, torchvision
wrappers from local files, and clear errors for bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from polydiff.domains.images import data

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ digits
def test_load_digits_splits_are_a_partition_in_range():
    xa, ya = data.load_digits("all")
    xtr, ytr = data.load_digits("train")
    xte, yte = data.load_digits("test")
    assert xa.shape == (1797, 1, 16, 16) and xtr.shape == (1437, 1, 16, 16) and xte.shape == (360, 1, 16, 16)
    assert xa.min() >= -1 and xa.max() <= 1 and xa.dtype == torch.float32
    # train + test is exactly "all" as a multiset of (image, label) rows
    key = lambda x, y: sorted(map(tuple, torch.cat([x.flatten(1), y[:, None].float()], 1).tolist()))
    assert key(torch.cat([xtr, xte]), torch.cat([ytr, yte])) == key(xa, ya)
    x8, _ = data.load_digits("all", size=8)
    from sklearn.datasets import load_digits
    assert torch.allclose(x8[:, 0], torch.as_tensor(load_digits().images, dtype=torch.float32) / 8 - 1)
    with pytest.raises(ValueError, match="valid: train, test, all"):
        data.load_digits("val")


# ------------------------------------------------------------------------------------------ encoders
def test_uint8_round_trip_is_exact_for_every_level_and_layout():
    levels = torch.arange(256, dtype=torch.uint8)
    u = levels.reshape(1, 1, 16, 16)
    x = data.to_tensor(u)
    assert x.shape == (1, 1, 16, 16) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() == 1 and x.flatten()[128] == pytest.approx(128 / 127.5 - 1, abs=1e-6)
    assert torch.equal(data.to_uint8(x), u)
    rgb = torch.randint(0, 256, (2, 4, 5, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    x_np = data.to_tensor(rgb.numpy())                    # numpy is channels-last
    assert x_np.shape == (2, 3, 4, 5)
    assert torch.equal(data.to_uint8(x_np), rgb.permute(0, 3, 1, 2))
    x_pil = data.to_tensor([Image.fromarray(rgb[i].numpy()) for i in range(2)])
    assert torch.equal(x_pil, x_np)
    grey = data.to_tensor(Image.fromarray(rgb[0, :, :, 0].numpy(), mode="L"))
    assert grey.shape == (1, 1, 4, 5) and torch.equal(data.to_uint8(grey)[0, 0], rgb[0, :, :, 0])


def test_encoder_errors():
    with pytest.raises(ValueError, match="uint8"):
        data.to_tensor(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8"):
        data.to_tensor(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        data.to_tensor(np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        data.to_uint8(torch.full((1, 1, 2, 2), 1.5))


def test_check_images_errors_name_the_problem():
    ok = torch.zeros(2, 1, 16, 16)
    assert data.check_images(ok, size=16) is ok
    with pytest.raises(ValueError, match=r"x\[None\]"):
        data.check_images(torch.zeros(1, 16, 16))
    with pytest.raises(ValueError, match="1 \\(grey\\) or 3 \\(RGB\\)"):
        data.check_images(torch.zeros(2, 16, 16, 3))
    with pytest.raises(ValueError, match="3 channel"):
        data.check_images(ok, channels=3)
    with pytest.raises(ValueError, match="must be 8x8 pixels, got 16x16"):
        data.check_images(ok, size=8)
    with pytest.raises(ValueError, match="NaN"):
        data.check_images(torch.full((1, 1, 2, 2), float("nan")))
    with pytest.raises(ValueError, match=r"0, 255"):
        data.check_images(torch.full((1, 1, 4, 4), 200.0))
    with pytest.raises(ValueError, match="floating point"):
        data.check_images(torch.zeros(1, 1, 2, 2, dtype=torch.uint8))


# ------------------------------------------------------------------------------------------ files
def test_png_round_trip_grid_layout_and_file_errors(tmp_path):
    g = torch.Generator().manual_seed(1)
    u = torch.randint(0, 256, (1, 3, 6, 7), generator=g, dtype=torch.uint8)
    x = data.to_tensor(u)
    f = data.write_image(tmp_path / "a.png", x)
    assert torch.equal(data.read_image(f), x)                   # PNG is lossless: exact
    assert data.read_image(f, channels=1).shape == (1, 1, 6, 7)
    with pytest.raises(ValueError, match="must be 16x16 pixels, got 6x7"):
        data.read_image(f, size=16)
    # a grid of 5 images, 2 per row, padding 1: image i sits at row i // 2, column i % 2
    batch = data.to_tensor(torch.randint(0, 256, (5, 1, 3, 4), generator=g, dtype=torch.uint8))
    data.save_grid(tmp_path / "grid.png", batch, nrow=2, padding=1)
    grid = data.read_image(tmp_path / "grid.png")
    assert grid.shape == (1, 1, 3 * 4 + 1, 2 * 5 + 1)
    for i in range(5):
        r, c = divmod(i, 2)
        assert torch.equal(grid[0, :, 1 + r * 4:1 + r * 4 + 3, 1 + c * 5:1 + c * 5 + 4], batch[i])
    assert torch.all(grid[0, :, 9:, 6:] == 1)                   # the empty sixth cell is padding (white)
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="cannot read .*bad.png"):
        data.read_image(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="does not exist"):
        data.read_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="one image"):
        data.write_image(tmp_path / "b.png", batch)


def test_image_folder_labelled_flat_and_errors(tmp_path):
    g = torch.Generator().manual_seed(2)
    imgs = torch.randint(0, 256, (4, 8, 8), generator=g, dtype=torch.uint8)
    for i, cls in enumerate(["cat", "cat", "dog", "ant"]):
        (tmp_path / "lab" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(imgs[i].numpy(), mode="L").save(tmp_path / "lab" / cls / f"{i}.png")
    ds = data.ImageFolder(tmp_path / "lab")
    assert ds.classes == ["ant", "cat", "dog"] and len(ds) == 4
    items = {int(y): x for x, y in (ds[i] for i in range(4))}
    assert torch.equal(items[0], data.to_tensor(imgs[3].numpy())[0])     # "ant" is class 0
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(imgs[0].numpy(), mode="L").save(flat / "a.png")
    Image.fromarray(np.zeros((10, 6), dtype=np.uint8), mode="L").save(flat / "b.png")
    fds = data.ImageFolder(flat)
    assert not fds.labelled and fds[0].shape == (1, 8, 8)
    with pytest.raises(ValueError, match="b.png.*pass size="):
        fds[1]
    resized = data.ImageFolder(flat, size=4, channels=3)
    assert resized[1].shape == (3, 4, 4) and torch.equal(resized[1], torch.full((3, 4, 4), -1.0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        data.ImageFolder(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        data.ImageFolder(tmp_path / "nope")


# ------------------------------------------------------------------------------------------ torchvision
def _idx(path, arr: np.ndarray, magic: int) -> None:
    header = np.array([0, 0, 8, magic], dtype=np.uint8).tobytes()
    dims = np.array(arr.shape, dtype=">i4").tobytes()
    path.write_bytes(header + dims + arr.astype(np.uint8).tobytes())


def test_mnist_from_local_files_and_missing_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = np.random.default_rng(0)
    for split, n in (("train", 3), ("t10k", 2)):
        _idx(raw / f"{split}-images-idx3-ubyte", g.integers(0, 256, (n, 28, 28)), 3)
        _idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) + 4, 1)
    ds = data.mnist(tmp_path, "test")
    assert len(ds) == 2
    x, y = ds[1]
    assert x.shape == (1, 28, 28) and int(y) == 5 and x.min() >= -1 and x.max() <= 1
    images = np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes()[16:], dtype=np.uint8).reshape(2, 28, 28)
    assert torch.equal(data.to_uint8(x[None])[0, 0], torch.from_numpy(images[1].copy()))
    assert data.mnist(tmp_path, "train", size=32)[0][0].shape == (1, 32, 32)
    with pytest.raises(ValueError, match="(?s)MNIST files not found.*train-images-idx3-ubyte"):
        data.mnist(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="(?s)CIFAR-10 files not found.*data_batch_1"):
        data.cifar10(tmp_path)
    with pytest.raises(ValueError, match="(?s)CelebA files not found.*list_eval_partition.txt"):
        data.celeba(tmp_path)
    with pytest.raises(ValueError, match="valid: train, test"):
        data.mnist(tmp_path, "val")


def test_save_grid_scale_enlarges_each_pixel(tmp_path):
    from polydiff.domains.images.data import read_image, save_grid
    x = torch.linspace(-1, 1, 2 * 3 * 3).reshape(2, 1, 3, 3)
    save_grid(tmp_path / "a.png", x, nrow=2, padding=0, scale=1)
    save_grid(tmp_path / "b.png", x, nrow=2, padding=0, scale=3)
    a = read_image(tmp_path / "a.png")
    b = read_image(tmp_path / "b.png")
    assert b.shape[-2:] == (9, 18)
    torch.testing.assert_close(b[..., ::3, ::3], a)
    with pytest.raises(ValueError, match="scale"):
        save_grid(tmp_path / "c.png", x, scale=0)
