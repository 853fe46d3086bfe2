"""A procedural grey-level image as a dataset of pixels: coordinates in, intensity out.

For coordinate-based ("neural field") students such as the block-wise latent field of the
Momentum-GS miniature (:mod:`distillery.models.miniature.block_field`): each sample is one position
``x = (row, col)`` in ``[0, 1]^2`` with its intensity as a float ``target [1]`` and, so that the
ordinary classification metrics apply, the index of its intensity bin as the label ``y``.

:func:`procedural_image_fn` is a smooth random image defined everywhere on the unit square (a
sum of plane waves and Gaussian blobs with a soft-edged disc, squashed to ``[0, 1]``), so it
can be evaluated off the training grid. :func:`procedural_image` (registered as
``procedural_image``) trains on the ``size x size`` pixel centres ``((i + 0.5) / size, (j + 0.5)
/ size)`` and tests at the pixel corners ``(i / size, j / size)``, ``i, j = 1 .. size - 1``, which
the training set never shows (a novel-view check in miniature).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ...errors import ConfigError
from ...registry import DATASETS
from ..datasets import ArrayDataset, DataSplits, _check_count

__all__ = ["PixelDataset", "intensity_bins", "pixel_centers", "procedural_image", "procedural_image_fn"]


class PixelDataset(ArrayDataset):
    """Positions ``x [N, 2]``, bin labels ``y [N]`` and float intensities ``target [N, 1]``.

    Batches are ``{"x", "y", "index", "target"}``; an objective reads the intensity as
    ``batch.target``.
    """

    def __init__(self, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        super().__init__(x, y)
        t = torch.as_tensor(target, dtype=torch.float32).reshape(-1, 1)
        if t.shape[0] != len(self):
            raise ConfigError(f"PixelDataset: {len(self)} positions but {t.shape[0]} targets.")
        self.target = t.contiguous()

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        item["target"] = self.target[int(i)]
        return item

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = super().__getitems__(indices)
        batch["target"] = self.target[batch["index"]]
        return batch


def procedural_image_fn(seed: int = 0, waves: int = 6, blobs: int = 5) -> Callable[[np.ndarray], np.ndarray]:
    """A random smooth image ``f(p)`` on ``[0, 1]^2``: ``p [..., 2]`` (row, col) -> ``[...]`` in ``(0, 1)``.

    ``f = sigmoid(s)`` with ``s`` a sum of ``waves`` plane waves (1 to 4 cycles across the image,
    random directions and phases, amplitude 0.6), ``blobs`` Gaussian blobs (width 0.05 to 0.15,
    amplitude +-1.5) and a disc of radius 0.2 with a soft edge (amplitude 1.5). Deterministic
    given ``seed``.
    """
    rng = np.random.default_rng([seed, 32])
    freq = rng.uniform(1.0, 4.0, waves)
    angle = rng.uniform(0, 2 * np.pi, waves)
    phase = rng.uniform(0, 2 * np.pi, waves)
    k = np.stack([np.cos(angle), np.sin(angle)], 1) * freq[:, None] * 2 * np.pi  # [waves, 2]
    centers = rng.uniform(0.15, 0.85, (blobs, 2))
    widths = rng.uniform(0.05, 0.15, blobs)
    amps = rng.choice([-1.5, 1.5], blobs)
    disc = rng.uniform(0.3, 0.7, 2)

    def f(p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        s = 0.6 * np.sin(p @ k.T + phase).sum(-1)
        d2 = ((p[..., None, :] - centers) ** 2).sum(-1)  # [..., blobs]
        s = s + (amps * np.exp(-d2 / (2 * widths**2))).sum(-1)
        r = np.sqrt(((p - disc) ** 2).sum(-1))
        s = s + 1.5 / (1 + np.exp((r - 0.2) / 0.01))
        return 1 / (1 + np.exp(-s))

    return f


def pixel_centers(size: int) -> np.ndarray:
    """``[size * size, 2]`` row-major pixel centres ``((i + 0.5) / size, (j + 0.5) / size)``."""
    c = (np.arange(size) + 0.5) / size
    return np.stack(np.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)


def intensity_bins(values: np.ndarray | torch.Tensor, bins: int) -> np.ndarray:
    """Index of the equal-width bin of ``[0, 1]`` each intensity falls in (clipped to ``0 .. bins-1``)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    return np.clip(np.floor(v * bins), 0, bins - 1).astype(np.int64)


@DATASETS.register("procedural_image")
def procedural_image(size: int = 32, bins: int = 16, seed: int = 0) -> DataSplits:
    """Pixels of a procedural grey image: positions in, intensities out (Momentum-GS miniature).

    Train: the pixel centres (``size^2`` samples); test: the interior pixel corners
    (``(size - 1)^2`` samples). ``x [N, 2]`` (row, col) in ``[0, 1]``, ``target [N, 1]``,
    ``y``: intensity bin of ``bins``. ``info["image"]`` is the ``[size, size]`` image,
    ``info["fn"]`` the function itself.

    Args:
        size: the image side in pixels: ``size^2`` training pixels, ``(size - 1)^2`` test points.
        bins: the number of equal-width intensity bins, the classes ``y``.
        seed: the seed of the procedural image (its waves and blobs).
    """
    size = _check_count(size, "size", 2)
    bins = _check_count(bins, "bins", 2)
    f = procedural_image_fn(seed)
    train_p = pixel_centers(size)
    c = np.arange(1, size) / size
    test_p = np.stack(np.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)
    train_v, test_v = f(train_p), f(test_p)
    return DataSplits(
        train=PixelDataset(train_p.astype(np.float32), intensity_bins(train_v, bins), train_v),
        test=PixelDataset(test_p.astype(np.float32), intensity_bins(test_v, bins), test_v),
        unlabeled=None,
        num_classes=bins,
        input_shape=(2,),
        name="procedural_image",
        info={"image": train_v.reshape(size, size), "fn": f, "size": size},
    )
