"""A toy cross-view localization task built from 8x8 digits (for GeoDistill, #15).

Each sample pairs a "satellite" map with a "ground" query taken somewhere on it:

* the map is a ``grid x grid`` torus of cells, each holding an 8x8 digit image (a random
  class; the image is drawn from the digits pool of that class);
* the camera stands on one cell; its panorama is the ring of the 8 neighbouring cells seen
  in heading order N, NE, E, SE, S, SW, W, NW, each shown as a *different* image of the same
  digit class as the map tile there (the same place seen from another view);
* the label is the camera's cell, ``row * grid + col``: localization is a distribution over
  the ``grid**2`` cells.

``x`` is ``[N, grid**2 + 8, 64]``: rows ``0 .. grid**2 - 1`` are the map tiles (row-major),
the last 8 rows the panorama ring (so a field of view is a contiguous, circular run of the
last 8 rows: view ``fov_mask`` with ``dim: 1, start: -8``). Pixels are standardised like the
``digits`` dataset. Training labels are *weak*: with probability ``label_noise`` the label is
replaced by one of the 8 neighbouring cells (a noisy GPS position); the true cells are kept
in ``train.hidden_y``. Test labels are exact, and test maps and queries use the held-out
digit images.
"""

from __future__ import annotations

import numpy as np

from ...errors import ConfigError
from ...registry import DATASETS
from ..datasets import ArrayDataset, DataSplits, _check_count
from ..uci_digits import digits

__all__ = ["RING_OFFSETS", "ring_cells", "tile_localization"]

#: (d_row, d_col) of the 8 panorama directions, clockwise from north.
RING_OFFSETS = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))


def ring_cells(cell: np.ndarray, grid: int) -> np.ndarray:
    """``[N] -> [N, 8]``: the cells around each cell on the ``grid x grid`` torus, in ring order."""
    r, c = np.divmod(np.asarray(cell), grid)
    return np.stack([((r + dr) % grid) * grid + (c + dc) % grid for dr, dc in RING_OFFSETS], axis=1)


def _images_of(classes: np.ndarray, by_class: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A random pool index of the given class for every entry of ``classes``."""
    idx = np.empty_like(classes)
    for k in range(10):
        mask = classes == k
        idx[mask] = by_class[k][rng.integers(0, len(by_class[k]), size=int(mask.sum()))]
    return idx


def _draw(pool_x: np.ndarray, pool_y: np.ndarray, n: int, grid: int, rng: np.random.Generator):
    """``n`` samples: ``x [n, grid**2 + 8, 64]`` and the camera cells ``[n]``."""
    by_class = [np.flatnonzero(pool_y == k) for k in range(10)]
    classes = rng.integers(0, 10, size=(n, grid * grid))
    map_idx = _images_of(classes, by_class, rng)  # [n, G*G]
    cell = rng.integers(0, grid * grid, size=n)
    ring = ring_cells(cell, grid)  # [n, 8]
    ring_classes = np.take_along_axis(classes, ring, 1)
    map_ring = np.take_along_axis(map_idx, ring, 1)
    query_idx = _images_of(ring_classes, by_class, rng)
    same = query_idx == map_ring
    while same.any():  # the ground view shows another image of the class than the map does
        redraw = _images_of(ring_classes, by_class, rng)
        query_idx[same] = redraw[same]
        same = query_idx == map_ring
    x = np.concatenate([pool_x[map_idx], pool_x[query_idx]], axis=1).astype(np.float32)
    return x, cell


@DATASETS.register("tile_localization")
def tile_localization(
    grid: int = 6,
    n_train: int = 3000,
    n_test: int = 1000,
    label_noise: float = 0.5,
    seed: int = 0,
) -> DataSplits:
    """Localize a ring-of-digits panorama on a digit-tile map (see the module docstring).

    ``x``: ``[N, grid**2 + 8, 64]``; ``y``: the cell index in ``[0, grid**2)`` (training
    labels noisy with probability ``label_noise``; true cells in ``train.hidden_y``).
    """
    grid = _check_count(grid, "grid", 3)
    n_train = _check_count(n_train, "n_train", 1)
    n_test = _check_count(n_test, "n_test", 1)
    if not 0.0 <= float(label_noise) < 1.0:
        raise ConfigError(f"label_noise must be in [0, 1), got {label_noise!r}.")
    base = digits()
    rng = np.random.default_rng(seed)
    pool_tr = base.train.x.numpy().reshape(len(base.train), 64), base.train.y.numpy()
    pool_te = base.test.x.numpy().reshape(len(base.test), 64), base.test.y.numpy()
    x_tr, cell_tr = _draw(*pool_tr, n_train, grid, rng)
    x_te, cell_te = _draw(*pool_te, n_test, grid, rng)
    noisy = cell_tr.copy()
    flip = rng.random(n_train) < float(label_noise)
    neighbours = ring_cells(cell_tr, grid)
    noisy[flip] = neighbours[flip, rng.integers(0, 8, size=int(flip.sum()))]
    return DataSplits(
        train=ArrayDataset(x_tr, noisy, hidden_y=cell_tr),
        test=ArrayDataset(x_te, cell_te),
        unlabeled=None,
        num_classes=grid * grid,
        input_shape=(grid * grid + 8, 64),
        name="tile_localization",
        info={"grid": grid, "ring": 8, "label_noise": float(label_noise), "seed": seed},
    )
