"""polydiff.domains.images: image data in the [-1, 1] (N, C, H, W) convention, image networks, a KL
autoencoder for latent diffusion, and the shipped default digits model.

    from polydiff.domains import images
    x, y = images.load_digits("train")                    # (1437, 1, 16, 16) in [-1, 1], labels
    model = images.pretrained("digits")
    samples = model.generate(labels=torch.tensor([3, 7]), steps=20, generator=g)

Heavy pieces (torchvision datasets, scikit-learn) are imported only when used.
"""
from .autoencoder import (KLAutoencoder, build_autoencoder, kl_divergence, load_autoencoder, save_autoencoder,
                          train_autoencoder)
from .data import (ImageFolder, celeba, check_images, cifar10, load_digits, make_grid, mnist, read_image, save_grid,
                   to_tensor, to_uint8, write_image)
from .pretrained import ImageDiffusionModel, load_model, pretrained, pretrained_autoencoder

__all__ = ["load_digits", "check_images", "to_tensor", "to_uint8", "read_image", "write_image", "make_grid",
           "save_grid", "ImageFolder", "mnist", "cifar10", "celeba", "KLAutoencoder", "kl_divergence",
           "build_autoencoder", "train_autoencoder", "save_autoencoder", "load_autoencoder", "ImageDiffusionModel",
           "pretrained", "pretrained_autoencoder", "load_model", "nets"]

from . import nets  # noqa: E402
