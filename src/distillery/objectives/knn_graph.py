"""k-nearest-neighbour graphs over sets of points or features, and importance weights.

The local-structure distillation of PointDistiller (Zhang, Dong, Tai & Ma 2023, arXiv:2205.11098)
encodes each point's neighbourhood in the style of DGCNN's EdgeConv (Wang et al. 2019, "Dynamic
Graph CNN for Learning on Point Clouds", arXiv:1801.07829): the graph is rebuilt from the
current features at every step ("dynamic"), and every edge ``i -> j`` carries
``[x_j - x_i, x_i]``. This module holds the graph part, with no learnable weights:

* :func:`knn_indices` - the ``k`` nearest neighbours of each query among a set, by squared
  Euclidean distance (the query itself is its own nearest neighbour when it is in the set);
* :func:`gather_neighbors` - the neighbours' rows, ``[B, M, k, C]`` (:func:`gather_rows`: rows ``[B, M, ...]``);
* :func:`edge_features` - EdgeConv inputs ``[x_j - x_i, x_i]`` (or ``[x_j, x_i]``);
* :func:`top_importance` - the indices of the ``m`` most important points per sample;
* :func:`importance_weights` - ``m * softmax(a / tau)`` over the selected points, the
  reweighting that makes "crucial" points count more while the weights still average to 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError, ShapeError

__all__ = ["edge_features", "gather_neighbors", "gather_rows", "importance_weights", "knn_indices", "point_importance", "top_importance"]

EDGE_MODES = ("edge", "concat")
IMPORTANCE_MODES = ("norm", "max", "mean")


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(str(int(s)) for s in t.shape) + "]"


def knn_indices(points: Tensor, k: int, queries: Tensor | None = None) -> Tensor:
    """Indices ``[B, M, k]`` of the ``k`` rows of ``points`` nearest to each query.

    ``points``: ``[B, N, C]``; ``queries``: ``[B, M, C]`` (default: ``points`` itself, M = N).
    Distances are squared Euclidean; neighbours are sorted nearest first (the order among
    exactly equal distances is unspecified). A query that is one of the points finds itself
    first (distance 0, unless a duplicate point ties with it). No gradient flows through the
    selection (it is piecewise constant).
    """
    if points.ndim != 3:
        raise ShapeError(f"knn_indices: points must be [B, N, C], got {_shape(points)}.")
    q = points if queries is None else queries
    if q.ndim != 3 or q.shape[0] != points.shape[0] or q.shape[2] != points.shape[2]:
        raise ShapeError(f"knn_indices: queries {_shape(q)} must be [B, M, C] with the points' B and C {_shape(points)}.")
    n = points.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ConfigError(f"knn_indices: k must be an integer in [1, {n}] (the number of points), got {k!r}.")
    with torch.no_grad():
        p, qq = points.detach(), q.detach()
        d2 = (qq * qq).sum(-1, keepdim=True) - 2 * qq @ p.transpose(1, 2) + (p * p).sum(-1).unsqueeze(1)  # [B, M, N]
        return d2.topk(k, dim=-1, largest=False, sorted=True).indices


def gather_neighbors(features: Tensor, index: Tensor) -> Tensor:
    """Rows of ``features`` ``[B, N, C]`` picked by ``index`` ``[B, M, k]`` -> ``[B, M, k, C]``."""
    if features.ndim != 3 or index.ndim != 3 or index.shape[0] != features.shape[0]:
        raise ShapeError(f"gather_neighbors: features [B, N, C] and index [B, M, k] needed, got {_shape(features)} and {_shape(index)}.")
    b, m, k = index.shape
    flat = index.reshape(b, m * k, 1).expand(-1, -1, features.shape[-1])
    return features.gather(1, flat).reshape(b, m, k, features.shape[-1])


def gather_rows(features: Tensor, index: Tensor) -> Tensor:
    """Rows of ``features`` ``[B, N, ...]`` picked by ``index`` ``[B, M]`` -> ``[B, M, ...]``."""
    b, m = index.shape
    rest = features.shape[2:]
    flat = index.reshape(b, m, *([1] * len(rest))).expand(b, m, *rest)
    return features.gather(1, flat)


def edge_features(features: Tensor, index: Tensor, centers: Tensor | None = None, mode: str = "edge") -> Tensor:
    """EdgeConv inputs ``[B, M, k, 2C]`` of each query's ``k`` edges.

    ``features``: ``[B, N, C]`` (the neighbours are read here); ``index``: ``[B, M, k]``;
    ``centers``: ``[B, M, C]``, the query rows (default: ``features`` itself, M = N).
    ``mode="edge"``: ``[x_j - x_i, x_i]`` (DGCNN's EdgeConv); ``"concat"``: ``[x_j, x_i]``.
    """
    if mode not in EDGE_MODES:
        raise ConfigError(f"edge_features: mode must be one of {EDGE_MODES}, got {mode!r}.")
    c = features if centers is None else centers
    if c.shape[:2] != index.shape[:2] or c.shape[-1] != features.shape[-1]:
        raise ShapeError(f"edge_features: centers {_shape(c)} must be [B, M, C] for index {_shape(index)} and features {_shape(features)}.")
    nb = gather_neighbors(features, index)  # [B, M, k, C]
    ci = c.unsqueeze(2).expand_as(nb)
    first = nb - ci if mode == "edge" else nb
    return torch.cat([first, ci], dim=-1)


def point_importance(features: Tensor, mode: str = "norm") -> Tensor:
    """A score per point ``[B, N]`` from its features ``[B, N, C]``, without gradient.

    ``"norm"``: the L2 norm; ``"max"``: the largest channel; ``"mean"``: the mean of ``|x|``.
    (PointDistiller ranks voxels by how many points they hold and falls back on pooled teacher
    features when there is no such count; a point set has no counts, so a pooled teacher
    activation is the score here.)
    """
    if mode not in IMPORTANCE_MODES:
        raise ConfigError(f"importance must be one of {IMPORTANCE_MODES}, got {mode!r}.")
    f = features.detach()
    if mode == "norm":
        return f.norm(dim=-1)
    if mode == "max":
        return f.amax(dim=-1)
    return f.abs().mean(dim=-1)


def top_importance(scores: Tensor, m: int | None) -> Tensor:
    """Indices ``[B, m]`` of the ``m`` highest ``scores`` ``[B, N]`` (all N, in order, if ``m`` is None)."""
    if scores.ndim != 2:
        raise ShapeError(f"top_importance: scores must be [B, N], got {_shape(scores)}.")
    n = scores.shape[1]
    if m is None or m >= n:
        return torch.arange(n, device=scores.device).expand(scores.shape[0], n)
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ConfigError(f"top_importance: m must be a positive integer, got {m!r}.")
    return scores.topk(m, dim=1, sorted=True).indices


def importance_weights(scores: Tensor, temperature: float | None) -> Tensor:
    """``m * softmax(scores / temperature)`` along the last dim (``[B, m]``); ones if ``temperature`` is None.

    The weights average to 1 over the ``m`` points, so the loss keeps its scale; a small
    temperature concentrates the weight on the highest-scoring points (PointDistiller's
    reweighted learning strategy). No gradient flows into the scores.
    """
    if temperature is None:
        return torch.ones_like(scores)
    t = float(temperature)
    if not t > 0:
        raise ConfigError(f"importance temperature must be > 0 (or None for uniform weights), got {temperature!r}.")
    return scores.shape[-1] * torch.softmax(scores.detach() / t, dim=-1)
