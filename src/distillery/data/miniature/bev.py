"""Synthetic bird's-eye-view scenes of rectangles: a clean view and a noisy, partial one.

For cross-modal BEV distillation (UniDistill miniature): a teacher sees the clean occupancy
grid of a scene (a "LiDAR" view), the student a degraded one of the same scene (a "camera"
view): only a fraction of the object cells are seen, background clutter appears, and every
cell is noisy. Both predict object centres on the same grid.

:func:`bev_rectangles` (registered as ``bev_rectangles``) gives a
:class:`~distillery.data.fields.FieldsDataset` per split, with batch fields

* ``x`` ``[1, H, W]``: the student's degraded view (also what evaluation feeds the student);
* ``x_clean`` ``[1, H, W]``: the clean occupancy (the teacher's view: ``teacher.view: x_clean``);
* ``boxes`` ``[max_objects, 4]``: rows ``(r0, c0, r1, c1)``, padding rows all 0;
* ``heatmap`` ``[1, H, W]``: the centre heatmap target
  (:func:`~distillery.objectives.foreground_grid.gaussian_center_mask`);
* ``y``: the number of objects minus 1 (so the usual accuracy is a counting accuracy).
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import ConfigError
from ...objectives.foreground_grid import gaussian_center_mask
from ...registry import DATASETS
from ..datasets import DataSplits, _check_count
from ..fields import FieldsDataset

__all__ = ["bev_rectangles", "draw_scenes"]


def draw_scenes(rng: np.random.Generator, n: int, size: int, max_objects: int, min_side: int, max_side: int) -> np.ndarray:
    """Boxes ``[n, max_objects, 4]`` of 1..max_objects non-touching rectangles per scene."""
    boxes = np.zeros((n, max_objects, 4), dtype=np.float32)
    for i in range(n):
        want = int(rng.integers(1, max_objects + 1))
        occupied = np.zeros((size, size), dtype=bool)
        placed, tries = 0, 0
        while placed < want and tries < 200:
            tries += 1
            h, w = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
            r, c = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            if occupied[max(r - 1, 0): r + h + 1, max(c - 1, 0): c + w + 1].any():
                continue
            occupied[r: r + h, c: c + w] = True
            boxes[i, placed] = (r, c, r + h, c + w)
            placed += 1
    return boxes


def _occupancy(boxes: np.ndarray, size: int) -> np.ndarray:
    occ = np.zeros((len(boxes), 1, size, size), dtype=np.float32)
    for i, rows in enumerate(boxes):
        for r0, c0, r1, c1 in rows.astype(int):
            occ[i, 0, r0:r1, c0:c1] = 1.0
    return occ


def _split(rng: np.random.Generator, n: int, size: int, max_objects: int, min_side: int, max_side: int,
           keep: float, clutter: float, noise: float) -> FieldsDataset:
    boxes = draw_scenes(rng, n, size, max_objects, min_side, max_side)
    clean = _occupancy(boxes, size)
    seen = clean * (rng.random(clean.shape) < keep)
    spurious = (1 - clean) * (rng.random(clean.shape) < clutter)
    degraded = (seen + spurious + rng.normal(scale=noise, size=clean.shape)).astype(np.float32)
    b = torch.from_numpy(boxes)
    heat = gaussian_center_mask(b, (size, size)).unsqueeze(1)
    count = (boxes[..., 2] > boxes[..., 0]).sum(1) - 1
    return FieldsDataset(degraded, count, {"x_clean": clean, "boxes": b, "heatmap": heat})


@DATASETS.register("bev_rectangles")
def bev_rectangles(
    size: int = 16,
    n_train: int = 2000,
    n_test: int = 500,
    max_objects: int = 3,
    min_side: int = 2,
    max_side: int = 6,
    keep: float = 0.5,
    clutter: float = 0.05,
    noise: float = 0.3,
    seed: int = 0,
) -> DataSplits:
    """BEV scenes of 1..``max_objects`` rectangles (sides ``min_side``..``max_side`` cells) on a ``size``-cell grid.

    The degraded view keeps each object cell with probability ``keep``, turns each background
    cell on with probability ``clutter`` and adds ``N(0, noise^2)`` to every cell.
    """
    size = _check_count(size, "size", 4)
    n_train, n_test = _check_count(n_train, "n_train", 1), _check_count(n_test, "n_test", 1)
    max_objects = _check_count(max_objects, "max_objects", 1)
    min_side, max_side = _check_count(min_side, "min_side", 1), _check_count(max_side, "max_side", 1)
    if min_side > max_side or max_side > size:
        raise ConfigError(f"bev_rectangles: need min_side <= max_side <= size, got {min_side}, {max_side}, {size}.")
    for name, v in (("keep", keep), ("clutter", clutter)):
        if not 0.0 <= float(v) <= 1.0:
            raise ConfigError(f"bev_rectangles: {name} must be in [0, 1], got {v!r}.")
    if float(noise) < 0:
        raise ConfigError(f"bev_rectangles: noise must be >= 0, got {noise!r}.")
    args = (size, max_objects, min_side, max_side, float(keep), float(clutter), float(noise))
    train = _split(np.random.default_rng([seed, 57, 0]), n_train, *args)
    test = _split(np.random.default_rng([seed, 57, 1]), n_test, *args)
    return DataSplits(
        train=train,
        test=test,
        unlabeled=None,
        num_classes=max_objects,
        input_shape=(1, size, size),
        name="bev_rectangles",
        class_names=tuple(f"{k + 1} object{'s' if k else ''}" for k in range(max_objects)),
        info={"size": size},
    )
