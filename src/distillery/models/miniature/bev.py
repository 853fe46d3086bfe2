"""A small centre-based detector on a bird's-eye-view grid (UniDistill miniature).

:class:`BEVDetector` (registered as ``bev_detector``), in the spirit of CenterPoint (Yin, Zhou &
Krähenbühl 2021, arXiv:2006.11275) on a toy grid: a stack of 3x3 convolutions keeps the grid's
resolution (the common BEV grid teacher and student share), a heatmap head predicts object
centres, and a small count head classifies the number of objects (so the engine's accuracy has
a meaning). ``forward`` returns a dict:

* ``features`` ``[B, width, H, W]``: the BEV feature map at the backbone's output (the
  high-level BEV features, which UniDistill's relation distillation compares);
* ``low_features`` ``[B, width, H, W]``: the output of the first half of the backbone's layers
  (``depth // 2`` of them, at least 1), the miniature's analogue of the modality encoder's BEV features
  that enter the shared BEV backbone (which UniDistill's feature distillation compares);
* ``heatmap`` ``[B, 1, H, W]``: centre logits (response distillation, focal loss);
* ``logits`` ``[B, num_classes]``: the count head.

Input ``[B, C, H, W]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ...errors import ConfigError
from ...registry import MODELS
from ..reference import _num_classes, _shape

__all__ = ["BEVDetector", "bev_detector"]


class BEVDetector(nn.Module):
    """``backbone`` (3x3 convs, same resolution) -> ``heatmap_head`` and ``count_head``."""

    def __init__(self, in_channels: int, num_classes: int, width: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for _ in range(depth):
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU()]
            cin = width
        self.backbone = nn.Sequential(*layers)
        self._low_at = 2 * max(depth // 2, 1)  # conv + ReLU per layer: the end of layer depth // 2
        self.heatmap_head = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 1, 1))
        nn.init.constant_(self.heatmap_head[-1].bias, -math.log((1 - 0.1) / 0.1))  # CenterNet's prior: p = 0.1
        self.count_head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 4:
            raise ConfigError(f"bev_detector: expected BEV grids [B, C, H, W], got a tensor of shape {list(x.shape)}.")
        f, low = x, x
        for i, layer in enumerate(self.backbone):
            f = layer(f)
            if i + 1 == self._low_at:
                low = f
        return {"logits": self.count_head(f.mean(dim=(2, 3))), "heatmap": self.heatmap_head(f), "features": f, "low_features": low}


@MODELS.register("bev_detector")
def bev_detector(input_shape: Sequence[int], num_classes: int, width: int = 16, depth: int = 4) -> BEVDetector:
    """Centre-heatmap detector on a ``(C, H, W)`` grid: ``depth`` 3x3 conv layers of ``width`` channels."""
    shape = _shape(input_shape, "bev_detector")
    if len(shape) != 3:
        raise ConfigError(f"bev_detector: input_shape must be (C, H, W), got {shape}.")
    for name, v in (("width", width), ("depth", depth)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"bev_detector: {name} must be a positive int, got {v!r}.")
    return BEVDetector(shape[0], _num_classes(num_classes, "bev_detector"), width, depth)
