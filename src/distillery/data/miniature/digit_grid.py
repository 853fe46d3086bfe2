"""A 2x2 grid of digits with a question "which digit is in cell k?" and the cell's box, for
visual question answering with privileged grounding (V-Reflection's miniature).

Each sample is a 16x16 image made of four 8x8 digits (cells 0..3 in reading order: top-left,
top-right, bottom-left, bottom-right), a question ``k`` and the answer, the class of the digit
in cell ``k``. The ground-truth *box* of cell ``k`` is given as a mask over the image's 4x4
grid of 4x4-pixel patches (1 on the four patches of the cell): the privileged input of a
box-guided teacher (V-Reflection's Box-Guided Compression, Zhou et al. 2026,
arXiv:2604.03307), never read by the student.

Rows (flat, so the whole engine works unchanged): ``x = [image 256 | question one-hot 4 | box
mask 16]``; ``y`` the answer. Training grids draw their digits from the digits train split,
test grids from the test split (no digit image is shared between them).
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import ConfigError
from ...registry import DATASETS
from ..datasets import ArrayDataset, DataSplits, _check_count, _check_fraction
from ..uci_digits import digits

__all__ = ["CELLS", "GRID_LAYOUT", "box_mask", "digit_grid", "make_grids"]

CELLS = 4
PATCH = 4
SIDE = 16
#: Widths of the row's parts: image, question, box.
GRID_LAYOUT = {"image": SIDE * SIDE, "question": CELLS, "box": (SIDE // PATCH) ** 2}


def box_mask(cell: np.ndarray) -> np.ndarray:
    """Patch masks ``[N, 16]`` (4x4 patch grid, row-major) of cells ``[N]`` (0..3): each cell
    covers a 2x2 block of 4x4-pixel patches."""
    cell = np.asarray(cell, dtype=np.int64)
    if cell.ndim != 1 or ((cell < 0) | (cell >= CELLS)).any():
        raise ConfigError(f"box_mask: cells must be a 1-d array of values 0..{CELLS - 1}.")
    mask = np.zeros((len(cell), 4, 4), dtype=np.float32)
    for n, c in enumerate(cell):
        r0, c0 = 2 * (c // 2), 2 * (c % 2)
        mask[n, r0 : r0 + 2, c0 : c0 + 2] = 1.0
    return mask.reshape(len(cell), 16)


def make_grids(images: torch.Tensor, labels: torch.Tensor, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` grid samples from digit ``images`` ``[M, 1, 8, 8]`` / ``labels`` ``[M]``: rows
    ``[n, 276]`` (see the module docstring) and answers ``[n]``."""
    pick = rng.integers(0, len(images), size=(n, CELLS))
    cells = images[torch.as_tensor(pick)][:, :, 0]  # [n, 4, 8, 8]
    grid = torch.cat([torch.cat([cells[:, 0], cells[:, 1]], dim=2), torch.cat([cells[:, 2], cells[:, 3]], dim=2)], dim=1)
    k = rng.integers(0, CELLS, size=n)
    question = torch.eye(CELLS)[torch.as_tensor(k)]
    rows = torch.cat([grid.reshape(n, -1), question, torch.as_tensor(box_mask(k))], dim=1).float()
    answers = labels[torch.as_tensor(pick[np.arange(n), k])]
    return rows, answers


@DATASETS.register("digit_grid")
def digit_grid(n_train: int = 1000, n_test: int = 1000, test_fraction: float = 0.25, seed: int = 0) -> DataSplits:
    """2x2 digit grids with a cell question and the cell's box (see the module docstring).

    ``n_train`` / ``n_test`` grids are drawn (with ``seed``) from the digits train / test
    split (``test_fraction`` of the 1,797 digits). Rows ``[N, 276]``; ``info`` holds the
    layout (``image_dim`` 256, ``question_dim`` 4, ``box_dim`` 16, ``side`` 16, ``patch`` 4).

    Args:
        n_train: the number of training grids.
        n_test: the number of test grids.
        test_fraction: the share of the 1,797 digits whose grids form the test set, in (0, 1).
        seed: the seed of the digits' split and of the grids.
    """
    n_train, n_test = _check_count(n_train, "n_train", minimum=1), _check_count(n_test, "n_test", minimum=1)
    seed = _check_count(seed, "seed")
    base = digits(test_fraction=_check_fraction(test_fraction), seed=seed)
    x_tr, y_tr = make_grids(base.train.x, base.train.y, n_train, np.random.default_rng([seed, 23, 0]))
    x_te, y_te = make_grids(base.test.x, base.test.y, n_test, np.random.default_rng([seed, 23, 1]))
    return DataSplits(
        train=ArrayDataset(x_tr, y_tr),
        test=ArrayDataset(x_te, y_te),
        unlabeled=None,
        num_classes=10,
        input_shape=(int(x_tr.shape[1]),),
        name="digit_grid",
        class_names=tuple(str(i) for i in range(10)),
        info={"image_dim": GRID_LAYOUT["image"], "question_dim": GRID_LAYOUT["question"], "box_dim": GRID_LAYOUT["box"],
              "side": SIDE, "patch": PATCH},
    )
