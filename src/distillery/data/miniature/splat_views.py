"""Pairs of views of procedural 3-D scenes with their splat index (Splat and Distill miniature).

:func:`splat_views` (registered as ``splat_views``) renders ``scenes`` random scenes of coloured,
textured primitives on a ground disc from two orbit cameras each
(:func:`distillery.generative.multiview.multiview_set`) and serves both ordered pairs of a
scene as samples:

* ``x [3, S, S]``: the target view (what the student sees);
* ``x_context [3, S, S]``: the other view (what the teacher sees: ``teacher.view: x_context``);
* ``splat_index [S*S]``: for each target pixel, the context pixel splatted onto it (z-buffered,
  ``-1`` for a hole), the ``index`` input of the ``splat_kd`` objective;
* ``y``: the class (:data:`~distillery.generative.multiview.CLASSES`: sky, ground, sphere, box)
  of the target view's centre pixel, so that the classification metrics of a run apply.

Test scenes are drawn from a different stream than training scenes.
"""

from __future__ import annotations

import torch

from ...errors import ConfigError
from ...generative.multiview import CLASSES, multiview_set
from ...registry import DATASETS
from ..datasets import DataSplits, _check_count
from ..fields import FieldsDataset

__all__ = ["pair_dataset", "splat_views"]


def pair_dataset(views: dict[str, torch.Tensor]) -> FieldsDataset:
    """Both ordered pairs of every scene of a two-view :func:`multiview_set` as samples."""
    rgb, splat, classes = views["rgb"], views["splat"], views["classes"]
    if rgb.shape[1] != 2:
        raise ConfigError(f"splat_views: two views per scene needed, got {rgb.shape[1]}.")
    n, _, _, size, _ = rgb.shape
    c = size // 2
    target = torch.tensor([0, 1]).repeat(n)
    scene = torch.arange(n).repeat_interleave(2)
    return FieldsDataset(
        rgb[scene, target],
        classes[scene, target, c, c],
        {"x_context": rgb[scene, 1 - target], "splat_index": splat[scene, target]},
    )


@DATASETS.register("splat_views")
def splat_views(scenes: int = 256, test_scenes: int = 64, size: int = 16, seed: int = 0,
                azimuth_step: tuple[float, float] = (25.0, 45.0)) -> DataSplits:
    """Two-view pairs of procedural scenes ``x [N, 3, size, size]`` with ``x_context`` and
    ``splat_index``; ``scenes`` training and ``test_scenes`` test scenes (two samples each); the
    two cameras of a scene are ``azimuth_step`` degrees apart (drawn uniformly)."""
    scenes = _check_count(scenes, "scenes", 1)
    test_scenes = _check_count(test_scenes, "test_scenes", 1)
    size = _check_count(size, "size", 8)
    lo, hi = (float(a) for a in azimuth_step)
    if not 0 < lo <= hi < 180:
        raise ConfigError(f"splat_views: azimuth_step must be (lo, hi) with 0 < lo <= hi < 180, got {azimuth_step!r}.")
    train = pair_dataset(multiview_set(scenes, 2, size, seed=2 * seed + 1, azimuth_step=(lo, hi)))
    test = pair_dataset(multiview_set(test_scenes, 2, size, seed=2 * seed + 2, azimuth_step=(lo, hi)))
    return DataSplits(train=train, test=test, unlabeled=None, num_classes=len(CLASSES), input_shape=(3, size, size),
                      name="splat_views", class_names=CLASSES)
