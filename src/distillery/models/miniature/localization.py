"""A small cross-view localizer: a ring-of-tiles query scored against every cell of a tile map.

For the ``tile_localization`` toy of GeoDistill (#15; Tong et al. 2025, arXiv:2507.10935).
Input ``[B, G*G + R, F]``: ``G*G`` map tiles (row-major cells of a torus) followed by the
``R = 8`` panorama tiles in ring order (N, NE, E, ..., NW). Output: logits ``[B, G*G]``, a
location heatmap over the cells (``softmax`` is the predicted location distribution).

* ``map_encoder`` / ``query_encoder`` (MLPs, one per view, as in cross-view networks) embed
  each tile; a query tile that is all zeros (masked out of the field of view) gets a zero
  embedding, so masking acts on the features too, as in the paper's code;
* ``map_descriptor``: for every cell, the embeddings of its 8 neighbours in ring order,
  concatenated and projected; ``query_descriptor``: the same for the panorama;
* ``logits[c] = <query, map_c> / sqrt(D)``: a correlation over all cells.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ...data.miniature.localization import RING_OFFSETS  # the dataset's ring order
from ...errors import ConfigError, ShapeError
from ...registry import MODELS

__all__ = ["RingLocalizer", "ring_localizer"]


def _mlp(cin: int, hidden: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(), nn.Linear(hidden, cout))


class RingLocalizer(nn.Module):
    """Location heatmap of a ring query on a tile map; see the module docstring for shapes."""

    def __init__(self, grid: int, ring: int, tile_features: int, hidden: int, embed: int, descriptor: int) -> None:
        super().__init__()
        if ring != len(RING_OFFSETS):
            raise ConfigError(f"ring_localizer: the ring has {len(RING_OFFSETS)} neighbours, got ring={ring}.")
        self.grid, self.ring, self.tile_features = grid, ring, tile_features
        self.map_encoder = _mlp(tile_features, hidden, embed)
        self.query_encoder = _mlp(tile_features, hidden, embed)
        self.map_descriptor = nn.Linear(ring * embed, descriptor)
        self.query_descriptor = nn.Linear(ring * embed, descriptor)
        g = torch.arange(grid * grid)
        r, c = g // grid, g % grid
        neigh = torch.stack([((r + dr) % grid) * grid + (c + dc) % grid for dr, dc in RING_OFFSETS], 1)
        self.register_buffer("neighbours", neigh, persistent=False)  # [G*G, 8]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cells = self.grid * self.grid
        if x.ndim != 3 or x.shape[1] != cells + self.ring or x.shape[2] != self.tile_features:
            raise ShapeError(
                f"ring_localizer: expected input [B, {cells + self.ring}, {self.tile_features}] "
                f"({cells} map tiles then {self.ring} query tiles), got {list(x.shape)}."
            )
        b = x.shape[0]
        map_emb = self.map_encoder(x[:, :cells])  # [B, G*G, E]
        query = x[:, cells:]
        seen = (query != 0).any(-1, keepdim=True).to(x.dtype)  # [B, R, 1]: masked tiles are all zero
        query_emb = self.query_encoder(query) * seen  # [B, R, E]
        around = map_emb[:, self.neighbours]  # [B, G*G, 8, E]
        m = self.map_descriptor(around.reshape(b, cells, -1))  # [B, G*G, D]
        q = self.query_descriptor(query_emb.reshape(b, -1))  # [B, D]
        return torch.einsum("bcd,bd->bc", m, q) / math.sqrt(m.shape[-1])


@MODELS.register("ring_localizer")
def ring_localizer(
    input_shape: Sequence[int],
    num_classes: int,
    hidden: int = 128,
    embed: int = 32,
    descriptor: int = 64,
    ring: int = 8,
) -> RingLocalizer:
    """Cross-view localizer for ``tile_localization``: input ``[B, G*G + 8, F]``, logits ``[B, G*G]``."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 2:
        raise ConfigError(f"ring_localizer: input_shape must be (G*G + {ring}, F), got {shape}.")
    cells = int(num_classes)
    grid = round(math.sqrt(cells))
    if grid * grid != cells or shape[0] != cells + ring:
        raise ConfigError(
            f"ring_localizer: num_classes ({cells}) must be a square number of cells and input_shape[0] "
            f"({shape[0]}) must be cells + {ring}."
        )
    for name, v in (("hidden", hidden), ("embed", embed), ("descriptor", descriptor)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"ring_localizer: {name} must be a positive integer, got {v!r}.")
    return RingLocalizer(grid, ring, shape[1], hidden, embed, descriptor)
