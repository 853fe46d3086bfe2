"""Digits under corruption domains (rotation, pixel noise), as image-caption rows: in- and
out-of-distribution data for distilling a robust vision-language teacher (VL2V-ADiP,
Addepalli et al. 2024, arXiv:2310.08255: "naive distillation largely improves the
In-Domain (ID) accuracy of the student, [but] fails to transfer the superior
out-of-distribution (OOD) generalization of the VLM teacher").

Domains (:func:`corrupt_digits`), applied to 8x8 digits in ink space (``[0, 1]``, before
standardisation):

* ``clean``: unchanged;
* ``rotate``: a rotation by an angle drawn uniformly from ``[-max_angle, max_angle]`` degrees
  per image, about the image centre (bilinear, zero ink outside);
* ``noise``: additive Gaussian noise ``N(0, noise_std^2)`` on the standardised pixels.

Rows are ``[image 64 | caption 10]`` (:mod:`distillery.data.paired`, ``views="caption"``):
the caption is the class one-hot plus ``N(0, caption_noise^2)``, so with ``caption_noise=0``
it is exactly the class prompt ``e_y``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ...registry import DATASETS
from ..datasets import DataSplits, _check_count, _check_fraction
from ..uci_digits import digits
from ..paired import class_captions, paired_splits

__all__ = ["DOMAINS", "corrupt_digits", "ood_digits", "rotate_images"]

DOMAINS = ("clean", "rotate", "noise")


def rotate_images(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate images ``[N, C, H, W]`` by ``degrees`` ``[N]`` about their centre (a positive
    angle turns the image clockwise as displayed, rows downward); bilinear sampling, zeros
    outside. Returns ``[N, C, H, W]``."""
    theta = torch.deg2rad(degrees.to(torch.float64))
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(cos)
    # output pixel (x, y) samples the input at R(-theta) (x, y), in normalised coordinates
    mat = torch.stack([torch.stack([cos, sin, zero], -1), torch.stack([-sin, cos, zero], -1)], 1)
    grid = F.affine_grid(mat.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def corrupt_digits(
    x: torch.Tensor,
    domain: str,
    rng: np.random.Generator,
    mean: float,
    std: float,
    max_angle: float = 45.0,
    noise_std: float = 0.5,
) -> torch.Tensor:
    """Standardised digit images ``[N, 1, 8, 8]`` seen through ``domain`` (see the module
    docstring); ``mean``/``std`` undo and redo the standardisation. Returns ``[N, 1, 8, 8]``."""
    if domain not in DOMAINS:
        raise ConfigError(f"domain must be one of {DOMAINS}, got {domain!r}.")
    if domain == "clean":
        return x.clone()
    if domain == "rotate":
        ink = x.double() * std + mean
        angles = torch.as_tensor(rng.uniform(-max_angle, max_angle, size=len(x)))
        return ((rotate_images(ink, angles) - mean) / std).to(x.dtype)
    return x + torch.as_tensor(rng.normal(0.0, noise_std, size=tuple(x.shape)), dtype=x.dtype)


@DATASETS.register("ood_digits")
def ood_digits(
    train_domains: Sequence[str] = ("clean",),
    test_domain: str = "clean",
    max_angle: float = 45.0,
    noise_std: float = 0.5,
    caption_noise: float = 0.0,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> DataSplits:
    """Digit image-caption rows whose train and test images come from chosen domains.

    ``train_domains``: the training set is one copy of the train split per listed domain
    (``["clean", "rotate", "noise"]`` gives three copies: an augmented set for a robust
    teacher); ``test_domain``: the domain of the test split (``clean`` is in-distribution,
    ``rotate`` / ``noise`` out-of-distribution). The corruptions are drawn from generators
    seeded by ``seed`` and the domain, so a given ``(seed, domain)`` always gives the same
    images. Rows ``[image 64 | caption 10]``; ``info`` holds ``image_dim``, ``text_dim``,
    ``train_domains``, ``test_domain``.
    """
    if isinstance(train_domains, str):
        train_domains = [train_domains]
    train_domains = list(train_domains)
    bad = [d for d in [*train_domains, test_domain] if d not in DOMAINS]
    if bad or not train_domains:
        raise ConfigError(f"ood_digits: domains must be among {DOMAINS} (train_domains non-empty), got {bad or train_domains}.")
    for name, v in (("max_angle", max_angle), ("noise_std", noise_std), ("caption_noise", caption_noise)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"ood_digits: {name} must be a non-negative number, got {v!r}.")
    seed = _check_count(seed, "seed")
    base = digits(test_fraction=_check_fraction(test_fraction), seed=seed)
    mean, std = base.info["mean"], base.info["std"]
    rng_caption = np.random.default_rng([seed, 13])

    def domain_rng(split: int, domain: str) -> np.random.Generator:
        return np.random.default_rng([seed, 17, split, DOMAINS.index(domain)])

    images, ys = [], []
    for d in train_domains:
        images.append(corrupt_digits(base.train.x, d, domain_rng(0, d), mean, std, max_angle, noise_std))
        ys.append(base.train.y)
    y_tr = torch.cat(ys)
    train = (torch.cat(images), class_captions(y_tr.numpy(), 10, caption_noise, rng_caption), y_tr)
    x_te = corrupt_digits(base.test.x, test_domain, domain_rng(1, test_domain), mean, std, max_angle, noise_std)
    test = (x_te, class_captions(base.test.y.numpy(), 10, caption_noise, rng_caption), base.test.y)
    return paired_splits(train, test, name=f"ood_digits[{'+'.join(train_domains)} -> {test_domain}]", seed=seed,
                         info={"train_domains": train_domains, "test_domain": test_domain, "max_angle": float(max_angle),
                               "noise_std": float(noise_std), "mean": mean, "std": std})
