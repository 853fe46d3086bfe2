"""A block-wise hybrid field: per-block latent grids (explicit) and one shared MLP decoder
(implicit), the 2D miniature of a block-partitioned hybrid Gaussian scene (Momentum-GS).

Momentum-GS (Fan et al. 2024, arXiv:2412.04887) splits a large scene into blocks, each with its
own anchors and features, and decodes every block's Gaussians with one shared decoder. Here the
"scene" is the unit square ``[0, 1]^2`` split into ``blocks = (nr, nc)`` equal blocks; block ``b``
owns a grid of ``features``-dim latent vectors at ``grid x grid`` nodes spanning the block, its
corners included. A position ``p = (row, col)`` belongs to block ``(min(floor(row * nr), nr - 1),
min(floor(col * nc), nc - 1))`` (row-major index); its feature is the bilinear interpolation of
that block's grid at the local position, and the shared ``decoder`` maps it to an intensity:

    f(p) = decoder( bilinear(latents[block(p)], local(p)) )

Neighbouring blocks keep separate nodes on their common border, so nothing forces their values
to agree there: disagreements show as seams.

``forward(x [B, 2]) -> {"value": [B, 1], "features": [B, F], "logits": [B, bins]}``; ``logits``
(only when ``bins > 0``) is ``-(value - c_q)^2 / (2 w^2)`` over the bin centres ``c_q = (q +
0.5) / bins`` with ``w = 1 / bins``, so its argmax is the bin the value falls in and the usual
accuracy metric counts pixels reconstructed within the right intensity bin.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...errors import ConfigError, ShapeError
from ...registry import MODELS

__all__ = ["BlockLatentField", "block_field"]


class BlockLatentField(nn.Module):
    """Per-block latent grids + a shared decoder (see module doc).

    Modules / parameters: ``latents`` (a ``ParameterList``, one ``[F, grid, grid]`` grid per
    block, row-major), ``decoder`` (an ``nn.Sequential``: ``Linear(F, hidden)``, ``SiLU``, ...,
    ``Linear(hidden, 1)``). Only the blocks of the positions in a forward pass enter its graph,
    so the latents of other blocks receive no gradient (``grad`` stays ``None``).
    """

    def __init__(self, blocks: Sequence[int] = (4, 4), grid: int = 5, features: int = 8, hidden: int = 64,
                 depth: int = 2, bins: int = 0, init_std: float = 0.1) -> None:
        super().__init__()
        if len(blocks) != 2 or any(int(b) < 1 for b in blocks):
            raise ConfigError(f"block_field: blocks must be [rows, cols] of positive ints, got {blocks!r}.")
        for name, v, low in (("grid", grid, 2), ("features", features, 1), ("hidden", hidden, 1), ("depth", depth, 1), ("bins", bins, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"block_field: {name} must be an int >= {low}, got {v!r}.")
        self.blocks = (int(blocks[0]), int(blocks[1]))
        self.grid, self.features, self.bins = grid, features, bins
        self.latents = nn.ParameterList(
            nn.Parameter(init_std * torch.randn(features, grid, grid)) for _ in range(self.num_blocks)
        )
        layers: list[nn.Module] = []
        d = features
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.SiLU()]
            d = hidden
        layers.append(nn.Linear(d, 1))
        self.decoder = nn.Sequential(*layers)

    @property
    def num_blocks(self) -> int:
        return self.blocks[0] * self.blocks[1]

    def locate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(block index [B] (row-major), local position [B, 2] in [0, 1]^2)`` of positions ``x [B, 2]``."""
        if x.ndim != 2 or x.shape[1] != 2:
            raise ShapeError(f"block_field expects positions [B, 2] (row, col) in [0, 1]; got {list(x.shape)}.")
        n = torch.tensor(self.blocks, dtype=x.dtype, device=x.device)
        scaled = x * n
        cell = torch.minimum(scaled.floor().clamp(min=0), n - 1)
        local = (scaled - cell).clamp(0, 1)
        index = cell[:, 0].long() * self.blocks[1] + cell[:, 1].long()
        return index, local

    def features_at(self, x: torch.Tensor) -> torch.Tensor:
        """Bilinearly interpolated latent features ``[B, F]`` at positions ``x [B, 2]``."""
        index, local = self.locate(x)
        g = self.grid - 1
        pos = local * g
        i0 = pos.floor().clamp(max=g - 1).long()  # [B, 2]
        t = pos - i0.to(pos.dtype)  # [B, 2]
        # only the blocks present take part in the graph, so the others get no gradient at all
        # (an optimizer with momentum then leaves them untouched)
        present, slot = torch.unique(index, return_inverse=True)
        lat = torch.stack([self.latents[int(k)] for k in present])[slot]  # [B, F, grid, grid]
        b = torch.arange(x.shape[0], device=x.device)

        def node(di: int, dj: int) -> torch.Tensor:
            return lat[b, :, i0[:, 0] + di, i0[:, 1] + dj]  # [B, F]

        tr, tc = t[:, :1], t[:, 1:]
        return ((1 - tr) * (1 - tc) * node(0, 0) + (1 - tr) * tc * node(0, 1)
                + tr * (1 - tc) * node(1, 0) + tr * tc * node(1, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features_at(x)
        value = self.decoder(feats)
        out = {"value": value, "features": feats}
        if self.bins:
            centers = (torch.arange(self.bins, device=x.device, dtype=value.dtype) + 0.5) / self.bins
            out["logits"] = -((value - centers) ** 2) * (self.bins**2 / 2)
        return out


@MODELS.register("block_field")
def block_field(blocks: Sequence[int] = (4, 4), grid: int = 5, features: int = 8, hidden: int = 64, depth: int = 2,
                bins: int = 0, num_classes: int | None = None) -> BlockLatentField:
    """Block-wise latent grids + shared MLP decoder over positions ``[B, 2]`` in ``[0, 1]^2``.

    ``bins=0`` with a dataset's ``num_classes`` (the intensity bins of ``procedural_image``)
    uses that many bins for the ``logits`` output. Modules: ``latents``, ``decoder``.
    """
    if bins == 0 and num_classes is not None:
        bins = int(num_classes)
    return BlockLatentField(blocks, grid, features, hidden, depth, bins)
