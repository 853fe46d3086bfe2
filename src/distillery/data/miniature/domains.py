"""Shifted target domains for adaptation experiments (pre-train on one domain, adapt to another).

``mnist1d_shifted`` is MNIST-1D seen through a fixed, deterministic domain transform, with
optionally only a few labels per class and extra unlabeled target samples: the setting of
further pre-training (continue self-supervised pre-training on unlabeled *target* data,
then fine-tune on few target labels), e.g. Lee et al. 2023, arXiv:2210.02871.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...errors import ConfigError
from ...registry import DATASETS
from ..datasets import ArrayDataset, DataSplits, _check_count
from ..mnist_1d import mnist1d

__all__ = ["SHIFTS", "domain_shift", "mnist1d_shifted"]

SHIFTS = ("none", "reverse_wave")


def domain_shift(x: torch.Tensor, shift: str, wave_amplitude: float = 1.0, wave_period: float = 10.0) -> torch.Tensor:
    """Apply a named domain transform to signals ``x`` ``[N, L]`` (returns ``[N, L]``).

    * ``none``: unchanged;
    * ``reverse_wave``: time reversal plus a fixed sinusoidal baseline,
      ``x'[t] = x[L - 1 - t] + a * sin(2 * pi * t / P)`` with ``a = wave_amplitude`` and
      ``P = wave_period`` (in samples).
    """
    if shift not in SHIFTS:
        raise ConfigError(f"domain shift must be one of {SHIFTS}, got {shift!r}.")
    if shift == "none":
        return x
    if x.ndim != 2:
        raise ConfigError(f"domain shift {shift!r} expects signals [N, L], got {list(x.shape)}.")
    t = torch.arange(x.shape[1], dtype=torch.float64)
    wave = (float(wave_amplitude) * torch.sin(2 * math.pi * t / float(wave_period))).to(x.dtype)
    return x.flip(-1) + wave


def _first_per_class(y: np.ndarray, k: int) -> np.ndarray:
    """Indices of the first ``k`` samples of every class, in dataset order (sorted)."""
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < k:
            raise ConfigError(f"labels_per_class={k}, but class {c} has only {len(idx)} training samples.")
        keep.append(idx[:k])
    return np.sort(np.concatenate(keep))


@DATASETS.register("mnist1d_shifted")
def mnist1d_shifted(
    shift: str = "reverse_wave",
    labels_per_class: int | None = None,
    unlabeled: int = 0,
    unlabeled_seed: int = 2,
    wave_amplitude: float = 1.0,
    wave_period: float = 10.0,
    seed: int = 42,
) -> DataSplits:
    """MNIST-1D under a fixed domain shift (default: time-reversed plus a sinusoidal baseline).

    Train is the canonical train set (or its first ``labels_per_class`` samples of each
    class, in order), test the canonical test set, and ``unlabeled`` extra generator samples
    (``unlabeled_seed``, default 2, so they differ from the ``mnist1d`` default extras of
    seed 1), all normalised as in :func:`~distillery.data.mnist1d` and then shifted by
    :func:`domain_shift`. Signals ``[N, 40]``.
    """
    if shift not in SHIFTS:
        raise ConfigError(f"mnist1d_shifted: shift must be one of {SHIFTS}, got {shift!r}.")
    for name, v in (("wave_amplitude", wave_amplitude), ("wave_period", wave_period)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"mnist1d_shifted: {name} must be a number, got {v!r}.")
    if float(wave_period) <= 0:
        raise ConfigError(f"mnist1d_shifted: wave_period must be > 0, got {wave_period!r}.")
    base = mnist1d(unlabeled=unlabeled, seed=seed, unlabeled_seed=unlabeled_seed)
    train_x, train_y = base.train.x, base.train.y
    if labels_per_class is not None:
        k = _check_count(labels_per_class, "labels_per_class", minimum=1)
        keep = torch.from_numpy(_first_per_class(train_y.numpy(), k))
        train_x, train_y = train_x[keep], train_y[keep]

    def move(x: torch.Tensor) -> torch.Tensor:
        return domain_shift(x, shift, wave_amplitude, wave_period)

    unl = None
    if base.unlabeled is not None:
        unl = ArrayDataset(move(base.unlabeled.x), None, hidden_y=base.unlabeled.hidden_y)
    return DataSplits(
        train=ArrayDataset(move(train_x), train_y),
        test=ArrayDataset(move(base.test.x), base.test.y),
        unlabeled=unl,
        num_classes=base.num_classes,
        input_shape=base.input_shape,
        name="mnist1d_shifted",
        class_names=base.class_names,
        info=dict(base.info, shift=shift, wave_amplitude=float(wave_amplitude), wave_period=float(wave_period),
                  labels_per_class=labels_per_class),
    )
