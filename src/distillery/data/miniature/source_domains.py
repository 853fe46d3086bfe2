"""Source domains for cross-domain transfer: MNIST-1D seen through other transforms, or
restricted to a subset of its classes, drawn from a generator seed of its own.

The setting of multi-source distillation (Borup, Phoo & Hariharan 2023, "Distilling from
Similar Tasks for Transfer Learning on a Budget", arXiv:2304.12314): several *source* models
are trained on other domains or tasks, and only they (never their data) are available when a
small model is trained for the *target* task. ``mnist1d_source`` makes such a source task:

* its training set is ``samples`` fresh MNIST-1D signals drawn with ``generator_seed``
  (default 11, distinct from the canonical seed 42 and from the default unlabeled seeds 1
  and 2, so no source sample is a target sample), with their true labels;
* its test set is the canonical MNIST-1D test set;
* both are kept only for ``classes`` (a class subset; labels stay the digit ids) and then
  moved into ``domain`` by :func:`source_domain_transform`.

The target task of the miniature is plain MNIST-1D with few labels (``mnist1d_shifted`` with
``shift: none`` and ``labels_per_class``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ...errors import ConfigError
from ...registry import DATASETS
from ..datasets import ArrayDataset, DataSplits, _check_count
from ..mnist_1d import mnist1d
from .domains import domain_shift

__all__ = ["SOURCE_DOMAINS", "mnist1d_source", "source_domain_transform"]

SOURCE_DOMAINS = ("none", "reverse_wave", "permute", "negate")


def source_domain_transform(x: torch.Tensor, domain: str, permutation_seed: int = 0) -> torch.Tensor:
    """Move signals ``x`` ``[N, L]`` into a named domain (returns ``[N, L]``).

    * ``none``: unchanged;
    * ``reverse_wave``: time reversal plus a sinusoid of amplitude 1 and period 10
      (:func:`distillery.data.miniature.domains.domain_shift`);
    * ``permute``: the time steps in a fixed random order, ``x'[:, t] = x[:, pi(t)]`` with
      ``pi = torch.randperm(L, generator=manual_seed(permutation_seed))``;
    * ``negate``: ``x' = -x``.
    """
    if domain not in SOURCE_DOMAINS:
        raise ConfigError(f"source domain must be one of {SOURCE_DOMAINS}, got {domain!r}.")
    if x.ndim != 2:
        raise ConfigError(f"source domain {domain!r} expects signals [N, L], got {list(x.shape)}.")
    if domain == "none":
        return x
    if domain == "reverse_wave":
        return domain_shift(x, "reverse_wave")
    if domain == "negate":
        return -x
    g = torch.Generator().manual_seed(int(permutation_seed))
    return x[:, torch.randperm(x.shape[1], generator=g)]


def _keep_classes(y: np.ndarray, classes: Sequence[int] | None) -> np.ndarray:
    if classes is None:
        return np.arange(len(y))
    return np.flatnonzero(np.isin(y, np.asarray(list(classes))))


@DATASETS.register("mnist1d_source")
def mnist1d_source(
    domain: str = "none",
    classes: Sequence[int] | None = None,
    samples: int = 4000,
    generator_seed: int = 11,
    permutation_seed: int = 0,
) -> DataSplits:
    """A source task: ``samples`` generated MNIST-1D signals (``generator_seed``), labeled,
    restricted to ``classes`` and moved into ``domain``; test: the canonical test set, alike.

    Signals ``[N, 40]``; labels are the digit ids (``num_classes`` stays 10, so a model
    trained on a class subset simply never sees the other ids). Normalised with the canonical
    set's statistics, as :func:`~distillery.data.mnist1d`.
    """
    if domain not in SOURCE_DOMAINS:
        raise ConfigError(f"mnist1d_source: domain must be one of {SOURCE_DOMAINS}, got {domain!r}.")
    samples = _check_count(samples, "samples", minimum=1)
    generator_seed = _check_count(generator_seed, "generator_seed")
    if generator_seed in (1, 2, 42):
        raise ConfigError(
            f"mnist1d_source: generator_seed {generator_seed} is used by the target data (42: the canonical "
            "set, 1 and 2: the default unlabeled extras); pick another, e.g. 11."
        )
    if classes is not None:
        classes = [int(c) for c in classes]
        if not classes or any(c < 0 or c > 9 for c in classes) or len(set(classes)) != len(classes):
            raise ConfigError(f"mnist1d_source: classes must be distinct digits 0..9, got {classes!r}.")
    base = mnist1d(unlabeled=samples, unlabeled_seed=generator_seed)
    assert base.unlabeled is not None and base.unlabeled.hidden_y is not None
    xs, ys = base.unlabeled.x, base.unlabeled.hidden_y
    keep = torch.from_numpy(_keep_classes(ys.numpy(), classes))
    keep_test = torch.from_numpy(_keep_classes(base.test.y.numpy(), classes))

    def move(x: torch.Tensor) -> torch.Tensor:
        return source_domain_transform(x, domain, permutation_seed)

    return DataSplits(
        train=ArrayDataset(move(xs[keep]), ys[keep]),
        test=ArrayDataset(move(base.test.x[keep_test]), base.test.y[keep_test]),
        unlabeled=None,
        num_classes=10,
        input_shape=base.input_shape,
        name="mnist1d_source",
        class_names=base.class_names,
        info={"domain": domain, "classes": classes, "samples": samples, "generator_seed": generator_seed},
    )
