"""``gaussian_mixture``: a synthetic mixture of isotropic Gaussians, one per class."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..registry import DATASETS
from .datasets import ArrayDataset, DataSplits, _check_count

__all__ = ["gaussian_mixture"]


@DATASETS.register("gaussian_mixture")
def gaussian_mixture(
    num_classes: int = 4,
    dim: int = 2,
    n_train: int = 1000,
    n_test: int = 1000,
    n_unlabeled: int = 0,
    separation: float = 3.0,
    noise: float = 1.0,
    seed: int = 0,
) -> DataSplits:
    """Synthetic Gaussian mixture: one isotropic Gaussian per class, in ``dim`` dimensions.

    Class means are drawn from ``N(0, separation^2 I)``; a sample is its class mean plus
    ``N(0, noise^2 I)``. Classes are balanced (sample ``i`` of a split before shuffling is
    class ``i % num_classes``). The means and each split use their own random stream derived
    from ``seed``, so changing one split's size does not change the others.

    Args:
        num_classes: the number of classes (Gaussians), at least 2.
        dim: the dimension of a sample; input shape ``(dim,)``.
        n_train: the number of training samples.
        n_test: the number of test samples.
        n_unlabeled: the number of extra unlabeled samples (their labels kept in ``hidden_y``).
        separation: the standard deviation of the class means around the origin.
        noise: the standard deviation of a sample around its class mean.
        seed: the seed of the means and of every split.
    """
    num_classes = _check_count(num_classes, "num_classes", 2)
    dim = _check_count(dim, "dim", 1)
    n_train = _check_count(n_train, "n_train", 1)
    n_test = _check_count(n_test, "n_test", 1)
    n_unlabeled = _check_count(n_unlabeled, "n_unlabeled", 0)
    seed = _check_count(seed, "seed")
    if separation < 0 or noise < 0:
        raise ConfigError(f"separation and noise must be >= 0, got {separation} and {noise}.")
    means = np.random.default_rng([seed, 0]).normal(0.0, separation, size=(num_classes, dim))

    def draw(n: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, stream])
        y = rng.permutation(np.arange(n) % num_classes)
        x = means[y] + rng.normal(0.0, noise, size=(n, dim))
        return x.astype(np.float32), y.astype(np.int64)

    xtr, ytr = draw(n_train, 1)
    xte, yte = draw(n_test, 2)
    unl = None
    if n_unlabeled:
        xu, yu = draw(n_unlabeled, 3)
        unl = ArrayDataset(xu, None, hidden_y=yu)
    return DataSplits(
        train=ArrayDataset(xtr, ytr),
        test=ArrayDataset(xte, yte),
        unlabeled=unl,
        num_classes=num_classes,
        input_shape=(dim,),
        name="gaussian_mixture",
        info={"means": means.tolist()},
    )
