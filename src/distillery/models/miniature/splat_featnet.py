"""A dense feature network with a learned absolute position embedding (Splat and Distill miniature).

:class:`SplatFeatureNet` (registered as ``splat_featnet``) stands in for the paper's vision
foundation model (Shavin & Benaim 2026, arXiv:2602.06032, distil DINOv2): a stride-1 CNN whose
first layer adds a learned per-pixel embedding to the stem's output, as a ViT adds position
embeddings to its patch tokens. Features that carry where a pixel sits in the *image* are a 2-D
bias that a multi-view objective can remove and a same-view one cannot.

Modules: ``stem`` (3x3 conv) + ``position`` (``[1, width, H, W]``), ``body`` (``depth`` 3x3
convs with ReLU), ``proj`` (1x1 conv to ``features`` channels: the dense features a distiller
taps as ``student.features``), and two pre-training heads on them: ``seg`` (1x1 conv to the
classes) and ``recon`` (1x1 conv to the 27 values of the input's 3x3 neighbourhood).

``forward(x [B, 3, H, W])`` returns ``{"features": [B, C, H, W], "segmentation": [B, K, H, W],
"reconstruction": [B, 27, H, W], "logits": [B, K]}``; ``logits`` are the segmentation logits of
the centre pixel (so that the classification metrics of a run apply).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...errors import ConfigError, ShapeError
from ...registry import MODELS
from ..reference import _num_classes, _shape

__all__ = ["SplatFeatureNet", "splat_featnet"]


class SplatFeatureNet(nn.Module):
    """Stride-1 CNN with a learned position embedding; dense features at ``proj``."""

    def __init__(self, size: int, num_classes: int, width: int = 16, features: int = 16, depth: int = 2,
                 position_scale: float = 1.0) -> None:
        super().__init__()
        self.size = int(size)
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.position = nn.Parameter(position_scale * torch.randn(1, width, size, size))
        layers: list[nn.Module] = [nn.ReLU()]
        for _ in range(depth):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.proj = nn.Conv2d(width, features, 1)
        self.seg = nn.Conv2d(features, num_classes, 1)
        self.recon = nn.Conv2d(features, 27, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2:] != (self.size, self.size):
            raise ShapeError(f"splat_featnet: expected images [B, 3, {self.size}, {self.size}], got {list(x.shape)}.")
        f = self.proj(self.body(self.stem(x) + self.position))
        seg = self.seg(f)
        c = self.size // 2
        return {"features": f, "segmentation": seg, "reconstruction": self.recon(f), "logits": seg[:, :, c, c]}


@MODELS.register("splat_featnet")
def splat_featnet(
    input_shape: Sequence[int],
    num_classes: int,
    width: int = 16,
    features: int = 16,
    depth: int = 2,
    position_scale: float = 1.0,
) -> SplatFeatureNet:
    """Dense feature CNN for square RGB views ``(3, S, S)``: features ``[B, features, S, S]`` at
    ``proj``; ``position_scale``: the standard deviation of the initial position embedding."""
    shape = _shape(input_shape, "splat_featnet")
    if len(shape) != 3 or shape[0] != 3 or shape[1] != shape[2]:
        raise ConfigError(f"splat_featnet: input_shape must be (3, S, S), got {shape}.")
    for name, v in (("width", width), ("features", features), ("depth", depth)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"splat_featnet: {name} must be a positive int, got {v!r}.")
    if not float(position_scale) >= 0:
        raise ConfigError(f"splat_featnet: position_scale must be >= 0, got {position_scale!r}.")
    return SplatFeatureNet(shape[1], _num_classes(num_classes, "splat_featnet"), width, features, depth, float(position_scale))
