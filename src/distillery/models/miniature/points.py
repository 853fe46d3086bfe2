"""A small point network for point-cloud classification (PointDistiller miniature).

:class:`PointNet` (registered as ``pointnet``) is PointNet (Qi et al. 2017, arXiv:1612.00593)
with one DGCNN EdgeConv layer in front (Wang et al. 2019, arXiv:1801.07829), so that per-point
features see their local neighbourhood:

* ``edge``: for each point, ``max_j relu(W [p_j - p_i, p_i])`` over its ``k`` nearest points
  ``j`` (xyz), ``[B, N, edge_width]``;
* ``point_mlp``: a shared per-point MLP, output ``[B, N, widths[-1]]``: the per-point
  features a distiller taps (``student.point_mlp``);
* max-pooling over the points, then ``head`` (an MLP) gives the class logits.

Input ``[B, N, 3]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...errors import ConfigError
from ...objectives.knn_graph import edge_features, knn_indices
from ...registry import MODELS
from ..reference import _ints, _num_classes, _shape

__all__ = ["EdgeConv", "PointNet", "pointnet"]


class EdgeConv(nn.Module):
    """``[B, N, C]`` -> ``[B, N, D]``: ``max_j relu(W [x_j - x_i, x_i] + b)`` over the kNN of each point."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.mlp = nn.Sequential(nn.Linear(2 * cin, cout), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = knn_indices(x, min(self.k, x.shape[1]))
        return self.mlp(edge_features(x, index)).amax(dim=2)


class PointNet(nn.Module):
    """EdgeConv on xyz, a per-point MLP (``point_mlp``), max-pool, MLP ``head``."""

    def __init__(self, num_points: int, num_classes: int, edge_width: int, widths: Sequence[int], head_hidden: int, k: int) -> None:
        super().__init__()
        self.edge = EdgeConv(3, edge_width, k)
        layers: list[nn.Module] = []
        cin = edge_width
        for w in widths:
            layers += [nn.Linear(cin, w), nn.ReLU()]
            cin = w
        self.point_mlp = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(cin, head_hidden), nn.ReLU(), nn.Linear(head_hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ConfigError(f"pointnet: expected point clouds [B, N, 3], got a tensor of shape {list(x.shape)}.")
        f = self.point_mlp(self.edge(x))
        return self.head(f.amax(dim=1))


@MODELS.register("pointnet")
def pointnet(
    input_shape: Sequence[int],
    num_classes: int,
    edge_width: int = 64,
    widths: int | Sequence[int] = (128, 256),
    head_hidden: int = 256,
    k: int = 16,
) -> PointNet:
    """PointNet with one EdgeConv layer: input ``(N, 3)``; per-point features at ``point_mlp``.

    Halving every width (``edge_width``, ``widths``, ``head_hidden``) divides the number of
    weights by about 4 (PointDistiller's "4x compressed" student).
    """
    shape = _shape(input_shape, "pointnet")
    if len(shape) != 2 or shape[1] != 3:
        raise ConfigError(f"pointnet: input_shape must be (N, 3), got {shape}.")
    for name, v in (("edge_width", edge_width), ("head_hidden", head_hidden), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"pointnet: {name} must be a positive int, got {v!r}.")
    return PointNet(shape[0], _num_classes(num_classes, "pointnet"), edge_width, _ints(widths, "widths", "pointnet"), head_hidden, k)
