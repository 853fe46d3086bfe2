"""The generative engine's datasets: ``mixture2d`` and ``digit_images``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distillery.data import load_dataset
from distillery.errors import ConfigError
from distillery.generative.data import mixture_of
from distillery.registry import DATASETS


def test_registered_with_documented_parameters():
    from distillery.config.describe import docstring_args
    from distillery.config.signatures import keyword_names

    for name in ("mixture2d", "digit_images"):
        assert name in DATASETS and DATASETS.summary(name)
        fn = DATASETS.get(name)
        names, _ = keyword_names(fn)
        meanings = docstring_args(fn.__doc__)
        assert all(meanings.get(n) for n in names), (name, set(names) - set(meanings))


def test_mixture2d_grid_carries_its_mixture():
    params = {"layout": "grid", "modes": 25, "std": 0.05, "spacing": 1.0, "n_train": 2000, "n_test": 500, "seed": 3}
    splits = load_dataset("mixture2d", **params)
    assert splits.train.x.shape == (2000, 2) and splits.train.x.dtype == torch.float32
    assert splits.test.x.shape == (500, 2) and splits.num_classes == 25 and splits.input_shape == (2,)
    m = splits.mixture
    torch.testing.assert_close(m.means, mixture_of(params).means)
    assert m.num_modes == 25 and set(splits.train.y.tolist()) == set(range(25))
    # every point sits next to the mode it is labelled with
    err = splits.train.x - m.means[splits.train.y]
    assert float(err.std()) == pytest.approx(0.05, rel=0.1)
    # deterministic by seed; a split's draws do not depend on the other split's size
    again = load_dataset("mixture2d", **{**params, "n_test": 7})
    assert torch.equal(again.train.x, splits.train.x)
    other = load_dataset("mixture2d", **{**params, "seed": 4})
    assert not torch.equal(other.train.x, splits.train.x)


def test_mixture2d_ring_and_bad_params():
    splits = load_dataset("mixture2d", layout="ring", modes=8, radius=2.0, std=0.02, n_train=100, n_test=10)
    torch.testing.assert_close(splits.mixture.means.norm(dim=1), torch.full((8,), 2.0))
    torch.testing.assert_close(mixture_of({"layout": "ring", "modes": 8}).means, splits.mixture.means)
    with pytest.raises(ConfigError, match="square number of modes"):
        load_dataset("mixture2d", modes=24)
    with pytest.raises(ConfigError, match="layout must be one of grid, ring"):
        load_dataset("mixture2d", layout="spiral")
    with pytest.raises(ConfigError, match="std must be a positive number"):
        load_dataset("mixture2d", std=0.0)
    with pytest.raises(ConfigError, match="unknown parameter"):
        mixture_of({"mode": 25})


@pytest.mark.parametrize("size", [8, 16])
def test_digit_images(size):
    splits = load_dataset("digit_images", size=size, seed=1)
    digits = load_dataset("digits", seed=1)
    assert splits.input_shape == (1, size, size) and splits.train.x.shape[1:] == (1, size, size)
    assert torch.equal(splits.train.y, digits.train.y) and torch.equal(splits.test.y, digits.test.y)
    assert float(splits.train.x.min()) == -1.0 and float(splits.train.x.max()) == 1.0
    if size == 8:
        # the same images as ``digits``, only rescaled: pixels 0..16 -> [-1, 1]
        raw = digits.train.x * digits.info["std"] + digits.info["mean"]
        np.testing.assert_allclose(splits.train.x.numpy(), (raw * 2 - 1).numpy(), atol=1e-5)
    else:
        small = load_dataset("digit_images", size=8, seed=1).train.x
        torch.testing.assert_close(torch.nn.functional.avg_pool2d(splits.train.x, 2).mean(), small.mean(), atol=0.02, rtol=0)
    with pytest.raises(ConfigError, match="size must be 8 or 16"):
        load_dataset("digit_images", size=12)
