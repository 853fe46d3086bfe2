"""Test-time-augmented dense teacher: token features averaged over warped inputs, each warp undone.

PH-Reg (Chen, Yan, Zhou, Dai & Luo 2025, "Vision Transformers with Self-Distilled Registers",
arXiv:2505.21501) denoises a frozen ViT's dense features by test-time augmentation: the image
is shifted and flipped, the features of each augmented copy are warped back onto the original
patch grid, and the average is the target ("denoised dense embeddings free of artifacts").

:class:`DenseTTATeacher` does this exactly on the patch grid: shifts are whole patches (an
image shifted by ``(dy * ph, dx * pw)`` pixels, zeros shifted in, moves token ``(i, j)`` to
``(i + dy, j + dx)``) and flips are horizontal (column ``j`` -> ``gw - 1 - j``), so the inverse
warp is an index map. A patch that a shift pushed off the grid has no feature in that copy;
each patch is averaged over the copies that still show it (the identity always does).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from ..batch import Batch
from ..errors import ConfigError, ShapeError
from ..registry import TEACHERS
from .base import BuildContext, FrozenModelMixin, Teacher, freeze, run_model


__all__ = ["DenseTTATeacher", "GridWarp", "grid_warps"]


class GridWarp:
    """Horizontal flip (optional) then a shift by ``(dy, dx)`` patches; applies to images and undoes on grids.

    ``grid`` ``(gh, gw)`` is the patch grid, ``patch`` ``(ph, pw)`` the patch size in pixels.
    """

    def __init__(self, dy: int, dx: int, flip: bool, grid: tuple[int, int], patch: tuple[int, int]) -> None:
        self.dy, self.dx, self.flip = int(dy), int(dx), bool(flip)
        self.grid, self.patch = (int(grid[0]), int(grid[1])), (int(patch[0]), int(patch[1]))

    def __repr__(self) -> str:
        return f"GridWarp(dy={self.dy}, dx={self.dx}, flip={self.flip})"

    @staticmethod
    def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
        """``out[..., r, c] = x[..., r - dy, c - dx]`` (zeros where that is outside)."""
        out = torch.zeros_like(x)
        h, w = x.shape[-2:]
        rs, rd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
        cs, cd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        out[..., rd, cd] = x[..., rs, cs]
        return out

    def image(self, x: torch.Tensor) -> torch.Tensor:
        """The warped image batch ``[B, C, H, W]``."""
        if self.flip:
            x = x.flip(-1)
        return self._shift(x, self.dy * self.patch[0], self.dx * self.patch[1])

    def source(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For each original patch (row-major), its row and column in the warped grid and whether it is on it."""
        gh, gw = self.grid
        a = torch.arange(gh).view(-1, 1).expand(gh, gw)
        b = torch.arange(gw).view(1, -1).expand(gh, gw)
        rows = a + self.dy
        cols = (gw - 1 - b if self.flip else b) + self.dx
        valid = (rows >= 0) & (rows < gh) & (cols >= 0) & (cols < gw)
        return rows.reshape(-1), cols.reshape(-1), valid.reshape(-1)

    def unwarp_grid(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``[B, gh * gw, D]`` of the warped input back on the original grid, and the valid mask ``[gh * gw]``."""
        rows, cols, valid = self.source()
        idx = (rows.clamp(0, self.grid[0] - 1) * self.grid[1] + cols.clamp(0, self.grid[1] - 1)).to(f.device)
        return f[:, idx], valid.to(f.device)


def grid_warps(grid: tuple[int, int], patch: tuple[int, int], shifts: int = 1, flip: bool = True) -> list[GridWarp]:
    """Every shift ``(dy, dx)`` in ``[-shifts, shifts]^2`` (in patches), with and without a flip; identity first."""
    offsets = sorted(itertools.product(range(-shifts, shifts + 1), repeat=2), key=lambda o: (o != (0, 0), o))
    flips = (False, True) if flip else (False,)
    return [GridWarp(dy, dx, f, grid, patch) for f in flips for dy, dx in offsets]


@TEACHERS.register("tta_dense")
class DenseTTATeacher(FrozenModelMixin, Teacher):
    """A frozen model whose dense signals are averaged over patch-grid warps of the input, each undone.

    Args:
        model: the network (frozen here: eval mode, no gradients).
        grid: the patch grid ``(gh, gw)``; patch: the patch size ``(ph, pw)`` in pixels.
        shifts: largest shift, in patches (``(2 shifts + 1)^2`` offsets); flip: add flipped copies.
        prefix_tokens: leading tokens that are not patches (1: a class token), averaged as they are.
        view: the batch view the teacher reads (e.g. ``"x"``).

    Signals: a tensor ``[B, prefix + gh*gw, D]`` (tokens) or ``[B, D, gh, gw]`` (a map) is
    unwarped copy by copy and averaged over the copies that show each patch; anything else
    (``logits``) is averaged as it is.

    Example:
        >>> import torch
        >>> from distillery.models import vit
        >>> net = vit((1, 8, 8), 3, patch_size=4, dim=8, depth=1, heads=2)
        >>> tta = DenseTTATeacher(net, grid=(2, 2), patch=(4, 4), shifts=1, flip=True)
        >>> len(tta.warps), tta.signals(torch.randn(3, 1, 8, 8), {}, ["norm"])["norm"].shape
        (18, torch.Size([3, 5, 8]))
    """

    def __init__(
        self,
        model: nn.Module,
        grid: Sequence[int],
        patch: Sequence[int] | int,
        shifts: int = 1,
        flip: bool = True,
        prefix_tokens: int = 1,
        view=None,
    ) -> None:
        super().__init__(view)
        patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
        grid = tuple(int(g) for g in grid)
        if len(grid) != 2 or len(patch) != 2 or min(grid) < 1 or min(patch) < 1:
            raise ConfigError(f"tta_dense: grid and patch must be pairs of positive ints, got {grid} and {patch}.")
        if isinstance(shifts, bool) or not isinstance(shifts, int) or shifts < 0:
            raise ConfigError(f"tta_dense: shifts must be an int >= 0, got {shifts!r}.")
        if isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int) or prefix_tokens < 0:
            raise ConfigError(f"tta_dense: prefix_tokens must be an int >= 0, got {prefix_tokens!r}.")
        self.model = freeze(model)
        self.grid, self.patch, self.prefix_tokens = grid, patch, prefix_tokens
        self.warps = grid_warps(grid, patch, shifts, flip)

    def tap_model(self) -> nn.Module:
        return self.model

    def _kind(self, t: torch.Tensor) -> str:
        n = self.grid[0] * self.grid[1]
        if t.ndim == 3 and t.shape[1] == self.prefix_tokens + n:
            return "tokens"
        if t.ndim == 4 and tuple(t.shape[-2:]) == self.grid:
            return "map"
        return "plain"

    @torch.no_grad()
    def signals(self, inputs: torch.Tensor, batch: Batch, names: Sequence[str]) -> dict[str, torch.Tensor]:
        if inputs.ndim != 4:
            raise ShapeError(f"tta_dense: the teacher's input must be images [B, C, H, W], got {list(inputs.shape)}.")
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}
        p = self.prefix_tokens
        for warp in self.warps:
            out = run_model(self.model, warp.image(inputs), names)
            for name, t in out.items():
                t = t.float()
                kind = self._kind(t)
                if kind == "plain":
                    value, valid = t, None
                elif kind == "tokens":
                    patches, valid = warp.unwarp_grid(t[:, p:])
                    value = torch.cat([t[:, :p], patches * valid.view(1, -1, 1)], dim=1)
                    valid = torch.cat([torch.ones(p, dtype=torch.bool, device=t.device), valid]).view(1, -1, 1)
                else:  # map [B, D, gh, gw]
                    flat, valid = warp.unwarp_grid(t.flatten(2).transpose(1, 2))
                    value = (flat * valid.view(1, -1, 1)).transpose(1, 2).reshape(t.shape)
                    valid = valid.view(1, 1, *self.grid)
                sums[name] = sums[name] + value if name in sums else value.clone()
                ones = torch.ones((), device=t.device) if valid is None else valid.float()
                counts[name] = counts[name] + ones if name in counts else ones.clone()
        return {name: sums[name] / counts[name] for name in sums}


# -- in a config: teacher: {kind: tta_dense, model, fit, patch, shifts, flip, prefix_tokens} ---
def tta_dense_config() -> type:
    """The config section of a dense TTA teacher (made on first use, see :mod:`distillery.registry`)."""
    from ..config.base import (
        ModelCfg,
        NonNegInt,
        PosInt,
        TeacherCfgBase,
        needs_weights,
        pair,
    )
    from ..config.training import FitCfg

    class TTADenseTeacherCfg(TeacherCfgBase):
        """A frozen model whose dense (token) signals are averaged over whole-patch shifts and flips
        of the input, each warped back onto the patch grid (PH-Reg's denoised targets). ``patch`` is
        the model's patch size; the grid is the input size divided by it."""

        kind: Literal["tta_dense"]
        model: ModelCfg
        fit: FitCfg | None = None
        patch: PosInt | pair(PosInt)
        shifts: NonNegInt = 1
        flip: bool = True
        prefix_tokens: NonNegInt = 1

        _needs_weights = needs_weights("tta_dense")

    return TTADenseTeacherCfg


@TEACHERS.builder("tta_dense", config=tta_dense_config)
def build_tta_dense(cfg: Any, ctx: BuildContext, where: str) -> Teacher:
    """The model (trained first when it has no checkpoint) on the patch grid of the run's images ``(C, H, W)``."""
    view = ctx.view(cfg, where)
    model = ctx.trained_model(cfg.model, cfg.fit, where)
    shape = tuple(ctx.input_shape)
    patch = (cfg.patch, cfg.patch) if isinstance(cfg.patch, int) else tuple(cfg.patch)
    if len(shape) != 3 or shape[1] % patch[0] or shape[2] % patch[1]:
        raise ConfigError(f"{where}.patch: {cfg.patch} must divide the image size of inputs {shape} (C, H, W).")
    grid = (shape[1] // patch[0], shape[2] // patch[1])
    return DenseTTATeacher(model, grid, patch, cfg.shifts, cfg.flip, cfg.prefix_tokens, view=view)
