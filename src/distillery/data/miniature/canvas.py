"""Canvases of 8x8 digits with a label for every patch (dense probes for ViTs).

:func:`digit_canvas` (registered as ``digit_canvas``) pastes ``min_digits``..``max_digits``
non-overlapping scikit-learn digits (8x8, intensities scaled to ``[0, 1]``) at random pixel
positions on a ``size x size`` black canvas. Train canvases use 75% of the digit images, test
canvases the held-out 25% (stratified), so a test canvas never repeats a training digit image.

Batch fields (a :class:`~distillery.data.fields.FieldsDataset`):

* ``x`` ``[1, size, size]``;
* ``y``: the class of the digit with the most ink on the canvas;
* ``patch_labels`` ``[(size / patch)^2]`` (row-major patches, as a ViT numbers its tokens): the
  class of the digit with the most ink in the patch, or 10 ("background") when the patch holds
  less than ``ink`` total intensity.
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import ConfigError
from ...registry import DATASETS
from ..datasets import DataSplits, _check_count, stratified_split
from ..fields import FieldsDataset

__all__ = ["BACKGROUND", "digit_canvas", "patch_labels_of"]

#: ``patch_labels`` value of a patch without (enough) ink.
BACKGROUND = 10


def patch_labels_of(layers: np.ndarray, classes: np.ndarray, patch: int, ink: float) -> np.ndarray:
    """Per-patch labels ``[N, P]`` from per-digit layers ``[N, K, S, S]`` and their classes ``[N, K]`` (-1: none)."""
    n, k, s, _ = layers.shape
    g = s // patch
    per_patch = layers.reshape(n, k, g, patch, g, patch).sum(axis=(3, 5)).reshape(n, k, g * g)  # ink per digit, per patch
    per_patch = np.where((classes >= 0)[..., None], per_patch, -1.0)
    best = per_patch.argmax(1)  # [N, P]
    amount = np.take_along_axis(per_patch, best[:, None], 1)[:, 0]
    label = np.take_along_axis(classes, best, 1)
    return np.where(amount >= ink, label, BACKGROUND).astype(np.int64)


def _draw(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, n: int, size: int,
          min_digits: int, max_digits: int, patch: int, ink: float) -> FieldsDataset:
    layers = np.zeros((n, max_digits, size, size), dtype=np.float32)
    classes = np.full((n, max_digits), -1, dtype=np.int64)
    for i in range(n):
        want = int(rng.integers(min_digits, max_digits + 1))
        taken = np.zeros((size, size), dtype=bool)
        placed, tries = 0, 0
        while placed < want and tries < 200:
            tries += 1
            r, c = (int(v) for v in rng.integers(0, size - 8 + 1, 2))
            if taken[r: r + 8, c: c + 8].any():
                continue
            taken[r: r + 8, c: c + 8] = True
            j = int(rng.integers(0, len(images)))
            layers[i, placed, r: r + 8, c: c + 8] = images[j]
            classes[i, placed] = labels[j]
            placed += 1
    canvas = layers.max(1, keepdims=True)
    ink_per_digit = layers.sum(axis=(2, 3))
    ink_per_digit[classes < 0] = -1.0
    y = np.take_along_axis(classes, ink_per_digit.argmax(1)[:, None], 1)[:, 0]
    fields = {"patch_labels": torch.from_numpy(patch_labels_of(layers, classes, patch, ink))}
    return FieldsDataset(canvas, y, fields)


@DATASETS.register("digit_canvas")
def digit_canvas(
    size: int = 24,
    min_digits: int = 1,
    max_digits: int = 1,
    patch: int = 4,
    n_train: int = 2000,
    n_test: int = 500,
    ink: float = 1.0,
    seed: int = 0,
) -> DataSplits:
    """Canvases ``[1, size, size]`` of ``min_digits``..``max_digits`` digits with per-patch labels.

    ``patch`` must divide ``size``; ``ink`` is the least total intensity (digit pixels are in
    ``[0, 1]``) that makes a patch foreground. 11 patch classes: digits 0-9 and 10 = background.

    Args:
        size: the canvas side in pixels (at least 8, with room for ``max_digits`` digits).
        min_digits: the fewest digits pasted on a canvas.
        max_digits: the most digits pasted on a canvas.
        patch: the side of a labelled patch; must divide ``size``.
        n_train: the number of training canvases.
        n_test: the number of test canvases.
        ink: the least total digit intensity that makes a patch foreground.
        seed: the seed of the digits' train/test split and of the canvases.
    """
    from sklearn.datasets import load_digits

    size, patch = _check_count(size, "size", 8), _check_count(patch, "patch", 1)
    if size % patch:
        raise ConfigError(f"digit_canvas: patch ({patch}) must divide size ({size}).")
    min_digits, max_digits = _check_count(min_digits, "min_digits", 1), _check_count(max_digits, "max_digits", 1)
    if min_digits > max_digits or max_digits * 64 > size * size:
        raise ConfigError(f"digit_canvas: need 1 <= min_digits <= max_digits and room for them on a {size}x{size} canvas, got {min_digits}..{max_digits}.")
    n_train, n_test = _check_count(n_train, "n_train", 1), _check_count(n_test, "n_test", 1)
    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)
    tr, te = stratified_split(d.target, 0.25, seed)
    args = (size, min_digits, max_digits, patch, float(ink))
    train = _draw(np.random.default_rng([seed, 41, 0]), images[tr], d.target[tr], n_train, *args)
    test = _draw(np.random.default_rng([seed, 41, 1]), images[te], d.target[te], n_test, *args)
    return DataSplits(
        train=train,
        test=test,
        unlabeled=None,
        num_classes=10,
        input_shape=(1, size, size),
        name="digit_canvas",
        info={"patch": patch, "grid": size // patch, "background": BACKGROUND},
    )
