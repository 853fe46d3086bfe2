"""A stack of equal-width residual MLP blocks: the reference model for depth pruning (PPCL).

Every block maps ``[B, width]`` to ``[B, width]`` (``x + fc2(act(fc1(norm(x))))``, pre-norm),
so any contiguous interval of blocks can be removed and the rest still composes; block
``i``'s output is the signal ``blocks.i`` and its input ``blocks.i:input`` (taps).

``residual_mlp(..., depth=12, remove=[3, 4, 5])`` builds the 12-block layout and removes
the listed blocks (indices of the full stack) with :func:`distillery.models.surgery.remove_blocks`;
with ``inherit_teacher_weights=True`` a frozen teacher that is the full ``residual_mlp``
(same ``width`` and ``depth``) gives the pruned student its weights when the distiller is
built (:meth:`ResidualMLP.init_from_teacher`), which is how a config expresses "prune the
teacher, then recover the student by distillation" (Ma et al. 2025, PPCL, arXiv:2511.16156).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from . import surgery
from ..errors import ConfigError
from ..registry import MODELS

__all__ = ["ResidualBlock", "ResidualMLP", "residual_mlp"]


class ResidualBlock(nn.Module):
    """Pre-norm residual MLP block ``[B, D] -> [B, D]``: ``x + fc2(act(fc1(norm(x))))``."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class ResidualMLP(nn.Module):
    """``stem`` (Linear in -> width), ``blocks.i`` (:class:`ResidualBlock`), ``norm``, ``head``.

    Attributes: ``full_depth`` (blocks of the unpruned layout), ``removed`` (indices of the
    full layout that this model lacks), ``inherit_teacher_weights``.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        width: int,
        depth: int,
        hidden: int,
        removed: Sequence[int] = (),
        inherit_teacher_weights: bool = False,
    ) -> None:
        super().__init__()
        self.input_shape = input_shape
        self.full_depth = depth
        self.stem = nn.Linear(math.prod(input_shape), width)
        self.blocks = nn.ModuleList(ResidualBlock(width, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        self.removed = sorted(int(i) for i in removed)
        if self.removed:
            surgery.remove_blocks(self, "blocks", self.removed, copy_model=False)
        self.inherit_teacher_weights = bool(inherit_teacher_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x.flatten(1))
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))

    def init_from_teacher(self, teacher: nn.Module) -> None:
        """Copy the weights of a full-depth ``residual_mlp`` teacher into this (pruned) model
        when ``inherit_teacher_weights`` is set; called by :class:`~distillery.FrozenTeacher`."""
        if not self.inherit_teacher_weights:
            return
        if not isinstance(teacher, ResidualMLP) or teacher.removed or len(teacher.blocks) != self.full_depth:
            raise ConfigError(
                "residual_mlp with inherit_teacher_weights=true needs a frozen teacher that is a full "
                f"residual_mlp of depth {self.full_depth} (no blocks removed); got {type(teacher).__name__}"
                + (f" with {len(teacher.blocks)} blocks" if isinstance(teacher, ResidualMLP) else "") + "."
            )
        surgery.copy_kept_weights(self, teacher, "blocks", self.removed)


@MODELS.register("residual_mlp")
def residual_mlp(
    input_shape: Sequence[int],
    num_classes: int,
    width: int = 64,
    depth: int = 12,
    mlp_ratio: float = 2.0,
    remove: Sequence[int] = (),
    inherit_teacher_weights: bool = False,
) -> ResidualMLP:
    """Residual MLP on flattened inputs: ``stem``, ``blocks.0`` .. ``blocks.{depth-1}``, ``norm``, ``head``.

    Each block: ``norm`` (LayerNorm), ``fc1`` (width -> mlp_ratio * width), ``act`` (GELU),
    ``fc2``, plus the residual. ``remove``: block indices (of the ``depth`` layout) taken out;
    the remaining blocks are renumbered ``0..`` (see :func:`distillery.models.surgery.block_index_map`).
    ``inherit_teacher_weights``: copy a full-depth teacher's weights in at distiller build time.
    """
    for name, v in (("width", width), ("depth", depth)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"residual_mlp: {name} must be a positive int, got {v!r}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"residual_mlp: num_classes must be a positive int, got {num_classes!r}.")
    if not float(mlp_ratio) > 0:
        raise ConfigError(f"residual_mlp: mlp_ratio must be > 0, got {mlp_ratio!r}.")
    try:
        shape = tuple(int(s) for s in input_shape)
        removed = [int(i) for i in remove]
    except (TypeError, ValueError):
        raise ConfigError(f"residual_mlp: input_shape and remove must be lists of ints, got {input_shape!r} and {remove!r}.") from None
    bad = [i for i in removed if not 0 <= i < depth]
    if bad or len(set(removed)) != len(removed):
        raise ConfigError(f"residual_mlp: remove must list distinct block indices in 0..{depth - 1}, got {list(remove)}.")
    hidden = max(1, int(round(width * float(mlp_ratio))))
    return ResidualMLP(shape, num_classes, width, depth, hidden, removed, bool(inherit_teacher_weights))
