"""Multi-band images: digits with synthetic extra "spectral" bands, and a view that blanks bands.

The setting of dual-teacher distillation for multispectral Earth observation (Wolf, Rolih &
Čehovin Zajc 2026, "Brewing Stronger Features: Dual-Teacher Distillation for Multispectral Earth
Observation", DEO, arXiv:2602.19863): a sensor records optical (RGB) bands and further bands; an optical foundation model
reads only the optical ones; a multispectral student reads all of them and is also probed on
optical-only inputs (the other bands blanked).

``multiband_digits``: scikit-learn's 8x8 digits, standardised as ``digits`` does, as
``[6, 8, 8]`` images whose bands are the clean image ``I`` seen through fixed maps plus
independent Gaussian noise (drawn once per sample and band, seeded):

* bands 0-2, "optical": ``I + noise``, three times;
* band 3: ``I + noise``; band 4: ``-I + noise`` (inverted contrast); band 5:
  ``blur(I) + noise`` (3x3 box blur, zero padded).

With noise as strong as the signal, the extra bands carry information the optical ones lack
(fresh noise on the same digit), so a model that reads them can do better.

``zero_bands``: sets the given channels of ``[B, C, ...]`` to zero (the data's mean), e.g. the
extra bands, to evaluate a model on optical-only input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ...errors import ConfigError
from ...registry import DATASETS, VIEWS
from ..datasets import (
    ArrayDataset,
    DataSplits,
    _check_count,
    _check_fraction,
    stratified_split,
)
from ..views import View

__all__ = ["EXTRA_BANDS", "OPTICAL_BANDS", "ZeroBands", "make_bands", "multiband_digits"]

OPTICAL_BANDS = (0, 1, 2)
EXTRA_BANDS = (3, 4, 5)


def _box_blur(images: np.ndarray) -> np.ndarray:
    """3x3 mean filter with zero padding over the last two dims of ``[N, H, W]``."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    h, w = images.shape[1:]
    return sum(padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) / 9.0


def make_bands(images: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """``[N, H, W]`` clean images -> ``[N, 6, H, W]`` bands (see the module docstring)."""
    clean = np.stack([images, images, images, images, -images, _box_blur(images)], axis=1)
    return clean + noise * rng.standard_normal(clean.shape)


@DATASETS.register("multiband_digits")
def multiband_digits(noise: float = 1.0, copies: int = 1, test_fraction: float = 0.25, seed: int = 0,
                     noise_seed: int = 0) -> DataSplits:
    """Digits as 6-band ``[6, 8, 8]`` images: 3 optical bands + 3 extra bands, each with noise.

    ``noise``: the standard deviation of the per-band Gaussian noise, in units of the
    standardised pixels; ``copies``: the train set holds each train digit this many times,
    each with its own noise draw (the test set once). Split as ``digits`` (stratified, ``seed``).

    Args:
        noise: the standard deviation of each band's Gaussian noise, in standardised pixels.
        copies: how many noisy copies of each train digit the train set holds.
        test_fraction: the share of each class held out as the test set, in (0, 1).
        seed: the seed of the stratified train/test split.
        noise_seed: the seed of the noise.
    """
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not float(noise) >= 0:
        raise ConfigError(f"multiband_digits: noise must be a number >= 0, got {noise!r}.")
    copies = _check_count(copies, "copies", minimum=1)
    test_fraction = _check_fraction(test_fraction)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float64) / 16.0
    y = bunch.target.astype(np.int64)
    tr, te = stratified_split(y, test_fraction, seed)
    mean, std = float(x[tr].mean()), float(x[tr].std())
    x = (x - mean) / std
    rng = np.random.default_rng(noise_seed)
    train_x = np.concatenate([make_bands(x[tr], float(noise), rng) for _ in range(copies)])
    train_y = np.concatenate([y[tr]] * copies)
    test_x = make_bands(x[te], float(noise), rng)
    return DataSplits(
        train=ArrayDataset(train_x.astype(np.float32), train_y),
        test=ArrayDataset(test_x.astype(np.float32), y[te]),
        unlabeled=None,
        num_classes=10,
        input_shape=(6, 8, 8),
        name="multiband_digits",
        class_names=tuple(str(i) for i in range(10)),
        info={"mean": mean, "std": std, "noise": float(noise), "copies": copies,
              "optical_bands": list(OPTICAL_BANDS), "extra_bands": list(EXTRA_BANDS)},
    )


@VIEWS.register("zero_bands")
class ZeroBands(View):
    """Sets channels ``bands`` (dim 1 of ``[B, C, ...]``) to zero; deterministic.

    E.g. ``{name: zero_bands, bands: [3, 4, 5]}`` shows a multispectral model optical-only input.

    Args:
        bands: the channel indices to set to zero (dim 1), a non-empty list.
    """

    name = "zero_bands"

    def __init__(self, bands: Sequence[int]) -> None:
        if isinstance(bands, (str, bytes)) or not isinstance(bands, Sequence) or not bands:
            raise ConfigError(f"view 'zero_bands': bands must be a non-empty list of channel indices, got {bands!r}.")
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in bands):
            raise ConfigError(f"view 'zero_bands': bands must be channel indices >= 0, got {list(bands)!r}.")
        self.bands = [int(b) for b in bands]

    def _params(self) -> dict[str, Any]:
        return {"bands": self.bands}

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.ndim < 2 or max(self.bands) >= x.shape[1]:
            raise ConfigError(f"view 'zero_bands': bands {self.bands} do not fit an input of shape {list(x.shape)} (channels are dim 1).")
        out = x.clone()
        out[:, self.bands] = 0
        return out
