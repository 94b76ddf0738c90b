"""Image augmentation drawn from the batch's generator (paper A.2.1, A.2.3).

Every random choice comes from the generator of the batch (``rng_for(seed, step)``),
example by example in batch order, so augmented batches depend only on
(data seed, step, example): every width and every seed trains on the same
augmented images (paper Appendix F), and a resumed run sees the same ones again.

- ``crop_flip`` (A.2.1, CIFAR-5m): ``RandomCrop(size, padding=4)`` (zero fill, as
  PyTorch's default) then ``RandomHorizontalFlip()`` (p = 0.5).
- ``autoaugment`` (A.2.3, ImageNet): the crop and flip above, then torchvision's
  ``AutoAugment(AutoAugmentPolicy.IMAGENET)``; needs the optional extra
  ``widthwise[vision]``. torchvision draws from torch's global generator, so each
  image is transformed inside ``torch.random.fork_rng`` under a seed drawn from the
  batch's generator: deterministic, and the global generator is left untouched.

Images are ``(n, C, H, W)`` uint8 (before normalization), as torchvision's
transforms see them.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from widthwise.errors import UserError

AugmentName = Literal["none", "crop_flip", "autoaugment"]


def crop_flip(images: np.ndarray, rng: np.random.Generator, padding: int = 4) -> np.ndarray:
    """Random crop of the zero-padded image back to its size, then a random horizontal flip.

    Draws, in this order: the crop's top offsets (n,), left offsets (n,), flips (n,),
    each offset uniform in [0, 2·padding]. Returns a new array of the input's shape/dtype.
    """
    n, c, h, w = images.shape
    top = rng.integers(0, 2 * padding + 1, size=n)
    left = rng.integers(0, 2 * padding + 1, size=n)
    flip = rng.random(n) < 0.5
    if n == 0:
        return images.copy()
    padded = np.pad(images, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    rows = top[:, None] + np.arange(h)  # (n, h)
    cols = left[:, None] + np.where(flip[:, None], np.arange(w)[::-1], np.arange(w))  # (n, w)
    return padded[
        np.arange(n)[:, None, None, None],
        np.arange(c)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def require_torchvision() -> Any:
    """torchvision.transforms, or a UserError naming the optional extra."""
    try:
        import torchvision.transforms as transforms
    except Exception as err:  # ImportError, or a torchvision built for another torch
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            "augment: autoaugment needs torchvision (AutoAugment, ImageNet policy): "
            "pip install 'widthwise[vision]' with a torchvision build matching your torch "
            f"(import failed: {reason})"
        ) from None
    return transforms


def autoaugment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """torchvision's AutoAugment (ImageNet policy) per image, seeded from ``rng``."""
    transforms = require_torchvision()
    import torch

    policy = transforms.AutoAugment(transforms.AutoAugmentPolicy.IMAGENET)
    seeds = rng.integers(0, 2**63 - 1, size=len(images))
    out = np.empty_like(images)
    with torch.random.fork_rng(devices=[]):
        for i, (img, s) in enumerate(zip(images, seeds)):
            torch.manual_seed(int(s))
            out[i] = policy(torch.from_numpy(np.ascontiguousarray(img))).numpy()
    return out


def augment(
    images: np.ndarray, kind: AugmentName, rng: np.random.Generator, padding: int = 4
) -> np.ndarray:
    """Apply augmentation ``kind`` to uint8 images ``(n, C, H, W)``; ``none`` returns them."""
    if kind == "none":
        return images
    out = crop_flip(images, rng, padding)
    if kind == "autoaugment":
        out = autoaugment(out, rng)
    return out


__all__ = ["AugmentName", "augment", "autoaugment", "crop_flip", "require_torchvision"]
