"""Datasets of the generative engine: 2-D Gaussian mixtures and the bundled digits as images.

* ``mixture2d``: draws of a :class:`~.teachers.Mixture` (a ``grid`` of ``n x n`` modes or a
  ``ring``), labelled by mode. The splits carry the mixture itself (``splits.mixture``; or
  :func:`mixture_of` from the same parameters), so that the analytic teacher
  (:func:`~.teachers.analytic_teacher`) and the metrics (mode coverage) use exactly the
  distribution the data came from.
* ``digit_images``: scikit-learn's bundled 8x8 digits (Alpaydin & Kaynak 1998; loaded as the
  ``digits`` dataset does, offline) as ``(1, size, size)`` images in [-1, 1], the range image
  diffusion models are trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data.datasets import (
    ArrayDataset,
    DataSplits,
    _check_count,
    _check_fraction,
    stratified_split,
)
from ..errors import ConfigError
from ..registry import DATASETS

if TYPE_CHECKING:  # the teachers module (and the denoisers it imports) load only when a mixture is built
    from .teachers import Mixture

__all__ = ["digit_images", "mixture2d", "mixture_of"]

LAYOUTS = ("grid", "ring")


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
        raise ConfigError(f"mixture2d: {name} must be a positive number, got {value!r}.")
    return float(value)


def _build_mixture(layout: str, modes: int, std: float, spacing: float, radius: float) -> Mixture:
    from .teachers import Mixture

    if layout not in LAYOUTS:
        raise ConfigError(f"mixture2d: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}.")
    modes = _check_count(modes, "modes", 1)
    std = _positive(std, "std")
    if layout == "grid":
        n = round(modes**0.5)
        if n * n != modes:
            raise ConfigError(f"mixture2d: a grid layout needs a square number of modes (4, 9, 25, ...), got modes={modes}.")
        return Mixture.grid(n, spacing=_positive(spacing, "spacing"), std=std)
    return Mixture.ring(modes, radius=_positive(radius, "radius"), std=std)


def mixture_of(params: Mapping[str, Any] | None = None) -> Mixture:
    """The :class:`~.teachers.Mixture` that ``mixture2d(**params)`` draws from (the defaults of
    ``mixture2d`` for missing keys; sizes and seed are accepted and ignored)."""
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(mixture2d).parameters.items()}
    params = dict(params or {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ConfigError(f"mixture2d: unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(defaults)}.")
    p = {**defaults, **params}
    return _build_mixture(p["layout"], p["modes"], p["std"], p["spacing"], p["radius"])


def _generator(seed: int, stream: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


@DATASETS.register("mixture2d")
def mixture2d(
    layout: str = "grid",
    modes: int = 25,
    std: float = 0.05,
    spacing: float = 1.0,
    radius: float = 2.0,
    n_train: int = 10000,
    n_test: int = 2000,
    seed: int = 0,
) -> DataSplits:
    """A 2-D Gaussian mixture (a grid or a ring of equal isotropic modes), labelled by mode.

    ``x``: float32 ``(N, 2)``; ``y``: the mode each point was drawn from (``num_classes`` =
    ``modes``). The returned splits carry the mixture as ``splits.mixture`` (also
    :func:`mixture_of` with the same parameters). Each split draws from its own random stream
    derived from ``seed``.

    Args:
        layout: ``grid`` (``sqrt(modes)`` x ``sqrt(modes)`` modes centred at the origin) or ``ring``.
        modes: the number of modes (a square number for ``grid``; 25 is the 5 x 5 benchmark).
        std: the standard deviation of every mode.
        spacing: the distance between neighbouring grid modes (``grid`` only).
        radius: the radius of the circle the modes lie on (``ring`` only).
        n_train: the number of training points.
        n_test: the number of test points.
        seed: the seed of both splits.
    """
    mixture = _build_mixture(layout, modes, std, spacing, radius)
    n_train = _check_count(n_train, "n_train", 1)
    n_test = _check_count(n_test, "n_test", 1)
    seed = _check_count(seed, "seed")
    xtr, ytr = mixture.sample(n_train, _generator(seed, 1))
    xte, yte = mixture.sample(n_test, _generator(seed, 2))
    splits = DataSplits(
        train=ArrayDataset(xtr.float(), ytr),
        test=ArrayDataset(xte.float(), yte),
        unlabeled=None,
        num_classes=mixture.num_modes,
        input_shape=(2,),
        name="mixture2d",
        info={"layout": layout, "modes": mixture.num_modes, "std": float(std),
              "means": mixture.means.tolist()},
    )
    splits.mixture = mixture  # type: ignore[attr-defined]
    return splits


@DATASETS.register("digit_images")
def digit_images(size: int = 8, test_fraction: float = 0.25, seed: int = 0) -> DataSplits:
    """scikit-learn's bundled 8x8 digits as ``(1, size, size)`` images in [-1, 1], labelled by digit.

    Pixels (0..16) are mapped linearly to [-1, 1]; ``size = 16`` upsamples bilinearly (which
    stays inside [-1, 1]). The split is stratified by class, as the ``digits`` dataset's.

    Args:
        size: the image side, 8 (native) or 16 (bilinear upsampling).
        test_fraction: the share of each class held out as the test set, in (0, 1).
        seed: the seed of the stratified train/test split.
    """
    if isinstance(size, bool) or size not in (8, 16):
        raise ConfigError(f"digit_images: size must be 8 or 16, got {size!r}.")
    test_fraction = _check_fraction(test_fraction)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float64)[:, None] / 8.0 - 1.0  # (N, 1, 8, 8) in [-1, 1]
    if size == 16:
        x = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    y = bunch.target.astype(np.int64)
    tr, te = stratified_split(y, test_fraction, seed)
    tr_t, te_t = torch.as_tensor(tr), torch.as_tensor(te)
    return DataSplits(
        train=ArrayDataset(x[tr_t].float(), y[tr]),
        test=ArrayDataset(x[te_t].float(), y[te]),
        unlabeled=None,
        num_classes=10,
        input_shape=(1, size, size),
        name="digit_images",
        class_names=tuple(str(i) for i in range(10)),
        info={"size": size, "range": [-1.0, 1.0]},
    )
