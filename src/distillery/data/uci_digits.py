"""``digits``: scikit-learn's 8x8 handwritten digits (a copy of the UCI ML test set), as images.

Alpaydin & Kaynak 1998, "Optical Recognition of Handwritten Digits" (UCI Machine Learning
Repository); loaded with :func:`sklearn.datasets.load_digits`.
"""

from __future__ import annotations

import numpy as np

from ..registry import DATASETS
from .datasets import ArrayDataset, DataSplits, _check_fraction, stratified_split

__all__ = ["digits"]


@DATASETS.register("digits")
def digits(test_fraction: float = 0.25, seed: int = 0) -> DataSplits:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), as [1, 8, 8] images.

    Pixels are scaled to [0, 1] and then standardised with the train set's mean and
    standard deviation (one scalar each). The split is stratified by class.

    Args:
        test_fraction: the share of each class held out as the test set, in (0, 1)
            (0.25: 1,347 train and 450 test images).
        seed: the seed of the stratified train/test split.
    """
    test_fraction = _check_fraction(test_fraction)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float64)[:, None, :, :] / 16.0
    y = bunch.target.astype(np.int64)
    tr, te = stratified_split(y, test_fraction, seed)
    mean = float(x[tr].mean())
    std = float(x[tr].std())
    x = (x - mean) / std
    return DataSplits(
        train=ArrayDataset(x[tr].astype(np.float32), y[tr]),
        test=ArrayDataset(x[te].astype(np.float32), y[te]),
        unlabeled=None,
        num_classes=10,
        input_shape=(1, 8, 8),
        name="digits",
        class_names=tuple(str(i) for i in range(10)),
        info={"mean": mean, "std": std},
    )
