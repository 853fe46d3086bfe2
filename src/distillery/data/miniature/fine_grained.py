"""Synthetic fine-grained categories: classes that differ only in one small patch.

Fine-grained categories (bird species, car models) share the coarse appearance of their
super-category and are told apart by a few key parts; self-supervised features built from
every patch alike tend to miss them (the premise of CMD, Bi et al. 2024, arXiv:2401.08860).
:func:`fine_grained_digits` makes such a problem from scikit-learn's 8x8 digits, offline:

* a ``canvas x canvas`` image (default 16x16) holds one handwritten digit (any of the ten,
  in a random quadrant): the large, varied, class-agnostic content;
* a small ``marker_size x marker_size`` marker (default 4x4, 1/16 of the area) sits at a random
  position inside another quadrant; its binary pattern is one of ``num_classes`` patterns that
  all have the same number of lit pixels, so the mean intensity says nothing about the class;
* the label is the marker's pattern only; the digit is a nuisance. Gaussian pixel noise is
  added, then the images are standardised with the train set's mean and std.

Base digit images are split (stratified by digit) before composition, so test images contain
handwritten digits never seen in training. ``info`` holds the marker patterns and each image's
marker box ``(top, left, size)`` (``train_marker_boxes``, ``test_marker_boxes``).
"""

from __future__ import annotations

import numpy as np

from ...errors import ConfigError
from ...registry import DATASETS
from ..datasets import (
    ArrayDataset,
    DataSplits,
    _check_count,
    _check_fraction,
    stratified_split,
)

__all__ = ["compose_fine_grained", "fine_grained_digits", "marker_patterns"]


def marker_patterns(num_classes: int, size: int, lit: int, rng: np.random.Generator) -> np.ndarray:
    """``num_classes`` distinct binary ``size x size`` patterns with exactly ``lit`` ones each."""
    cells = size * size
    if not 0 < lit < cells:
        raise ConfigError(f"fine_grained_digits: marker_lit must be in [1, {cells - 1}], got {lit}.")
    from math import comb

    if comb(cells, lit) < num_classes:
        raise ConfigError(f"fine_grained_digits: only {comb(cells, lit)} patterns with {lit} lit pixels exist; "
                          f"{num_classes} classes were asked for.")
    seen: set[bytes] = set()
    out = []
    while len(out) < num_classes:
        p = np.zeros(cells, dtype=np.float64)
        p[rng.choice(cells, lit, replace=False)] = 1.0
        key = p.tobytes()
        if key not in seen:
            seen.add(key)
            out.append(p.reshape(size, size))
    return np.stack(out)


def compose_fine_grained(
    digits: np.ndarray,
    labels: np.ndarray,
    patterns: np.ndarray,
    canvas: int,
    noise: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Compose ``canvas x canvas`` images: each digit (``[N, 8, 8]`` in [0, 1]) in a random
    quadrant, the marker ``patterns[labels[n]]`` at a random position in another quadrant.

    Returns ``(images [N, canvas, canvas], marker boxes [N, 3] = (top, left, size))``.
    """
    n = digits.shape[0]
    half = canvas // 2
    d = digits.shape[-1]
    m = patterns.shape[-1]
    if d > half or m > half:
        raise ConfigError(f"fine_grained_digits: canvas {canvas} is too small for {d}x{d} digits and {m}x{m} markers.")
    images = np.zeros((n, canvas, canvas), dtype=np.float64)
    boxes = np.zeros((n, 3), dtype=np.int64)
    quad = np.array([[0, 0], [0, half], [half, 0], [half, half]])
    q_digit = rng.integers(0, 4, n)
    q_marker = (q_digit + rng.integers(1, 4, n)) % 4  # another quadrant
    jitter_d = rng.integers(0, half - d + 1, (n, 2))
    jitter_m = rng.integers(0, half - m + 1, (n, 2))
    for i in range(n):
        r, c = quad[q_digit[i]] + jitter_d[i]
        images[i, r : r + d, c : c + d] = digits[i]
        r, c = quad[q_marker[i]] + jitter_m[i]
        images[i, r : r + m, c : c + m] = patterns[labels[i]]
        boxes[i] = (r, c, m)
    images += noise * rng.standard_normal(images.shape)
    return images, boxes


@DATASETS.register("fine_grained_digits")
def fine_grained_digits(
    num_classes: int = 10,
    canvas: int = 16,
    marker_size: int = 4,
    marker_lit: int = 8,
    copies: int = 3,
    test_copies: int = 1,
    noise: float = 0.05,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> DataSplits:
    """Digits with fine-grained classes that differ only in one small marker pattern (CMD miniature).

    See the module docstring for the construction. Images ``[1, canvas, canvas]``; labels: the marker pattern, ``0..num_classes-1`` (balanced).
    Each base digit image of the train split is composed ``copies`` times (different marker
    classes and positions), each test one ``test_copies`` times.
    """
    test_fraction = _check_fraction(test_fraction)
    num_classes = _check_count(num_classes, "num_classes", 2)
    canvas = _check_count(canvas, "canvas", 4)
    marker_size = _check_count(marker_size, "marker_size", 1)
    marker_lit = _check_count(marker_lit, "marker_lit", 1)
    copies = _check_count(copies, "copies", 1)
    test_copies = _check_count(test_copies, "test_copies", 1)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
        raise ConfigError(f"fine_grained_digits: noise must be a number >= 0, got {noise!r}.")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    base = bunch.images.astype(np.float64) / 16.0
    tr, te = stratified_split(bunch.target, test_fraction, seed)
    rng = np.random.default_rng([seed, 16])
    patterns = marker_patterns(num_classes, marker_size, marker_lit, rng)

    def make(idx: np.ndarray, reps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        digits = np.repeat(base[idx], reps, axis=0)
        n = digits.shape[0]
        labels = rng.permutation(np.arange(n) % num_classes)
        images, boxes = compose_fine_grained(digits, labels, patterns, canvas, float(noise), rng)
        return images, labels.astype(np.int64), boxes

    x_tr, y_tr, b_tr = make(tr, copies)
    x_te, y_te, b_te = make(te, test_copies)
    mean, std = float(x_tr.mean()), float(x_tr.std())
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    return DataSplits(
        train=ArrayDataset(x_tr[:, None].astype(np.float32), y_tr),
        test=ArrayDataset(x_te[:, None].astype(np.float32), y_te),
        unlabeled=None,
        num_classes=num_classes,
        input_shape=(1, canvas, canvas),
        name="fine_grained_digits",
        class_names=tuple(f"marker{i}" for i in range(num_classes)),
        info={"mean": mean, "std": std, "patterns": patterns, "train_marker_boxes": b_tr, "test_marker_boxes": b_te},
    )
