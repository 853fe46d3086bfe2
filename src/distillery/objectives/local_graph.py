"""Local-structure distillation over k-nearest-neighbour graphs (PointDistiller).

Paper: L. Zhang, R. Dong, H.-S. Tai, K. Ma, 2023, "PointDistiller: Structured Knowledge
Distillation Towards Efficient and Compact 3D Detection" (CVPR), arXiv:2205.11098. "Local
distillation ... extracts and distills the local geometric structure of point clouds with
dynamic graph convolution and reweighted learning strategy, which highlights student learning
on the crucial points or voxels."

For a batch of point (or voxel, or BEV cell) features, student ``S`` ``[B, N, C_s]`` and teacher
``T`` ``[B, N, C_t]`` over the same N points:

1. importance ``a_i`` of each point from the teacher features (:func:`~distillery.objectives.knn_graph.point_importance`);
   the ``m`` most important points are the queries (all N when ``num_points`` is None);
2. the kNN graph of each query among all N points, in the teacher's feature space (rebuilt at
   every step: a dynamic graph), shared by student and teacher, the query itself included;
3. each edge ``i -> j`` is encoded EdgeConv-style: ``g_s(i, j) = relu(BN(W_s [S_j - S_i, S_i] + b_s))``
   and ``g_t(i, j) = relu(BN(W_t [T_j - T_i, T_i] + b_t))``, both in ``R^D`` (batch norm over
   the edges of the batch, as the authors' 1x1 conv + BN + ReLU encoders);
4. weights ``w = m * softmax((a / mean(a)) / tau)`` over the queries (uniform if ``tau`` is None);
5. loss per sample ``(1 / (m k D)) sum_i w_i sum_j |g_s(i, j) - g_t(i, j)|^2``.

As in the authors' code, the neighbour indices come from the teacher's features and both sides
have their own edge encoder. The authors train both encoders; with both trainable the loss has
a trivial minimum (both encoders constant), so here the teacher-side encoder stays at its random
initialisation by default (a fixed random-feature map of the teacher's local structure) and
``train_teacher_encoder=True`` gives the authors' variant.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ShapeError
from .knn_graph import (
    EDGE_MODES,
    IMPORTANCE_MODES,
    edge_features,
    gather_neighbors,
    gather_rows,
    importance_weights,
    knn_indices,
    point_importance,
    top_importance,
)
from ..registry import OBJECTIVES
from ._common import check_reduction, reduce, shape_str, upcast
from .base import Objective

__all__ = ["EdgeEncoder", "LocalGraphKD", "as_point_features", "local_graph_loss"]


def as_point_features(x: Tensor, name: str = "local_graph_kd") -> Tensor:
    """``[B, N, C]`` as is; a feature map ``[B, C, H, W]`` as ``[B, H*W, C]`` (row-major cells)."""
    if x.ndim == 3:
        return x
    if x.ndim == 4:
        return x.flatten(2).transpose(1, 2)
    raise ShapeError(f"{name}: expected point features [B, N, C] or a map [B, C, H, W], got {shape_str(x)}.")


def _encode(encoder: nn.Module, features: Tensor, index: Tensor, centers: Tensor, mode: str) -> Tensor:
    if isinstance(encoder, EdgeEncoder):
        return encoder.encode(features, index, centers, mode)
    return encoder(edge_features(features, index, centers, mode))


def local_graph_loss(
    student: Tensor,
    teacher: Tensor,
    student_encoder: nn.Module,
    teacher_encoder: nn.Module,
    k: int = 16,
    num_points: int | None = None,
    temperature: float | None = None,
    importance: str = "norm",
    edge: str = "edge",
    reduction: str = "mean",
) -> Tensor:
    """PointDistiller's local-graph loss per sample (``[B]``) or its mean.

    ``student``: ``[B, N, C_s]`` (or ``[B, C_s, H, W]``), ``teacher``: ``[B, N, C_t]`` (or a map);
    ``student_encoder``: ``[..., 2 C_s] -> [..., D]``; ``teacher_encoder``: ``[..., 2 C_t] -> [..., D]``.
    See the module docstring for the formula.
    """
    check_reduction(reduction)
    s, t = as_point_features(student), as_point_features(teacher)
    if s.shape[:2] != t.shape[:2]:
        raise ShapeError(
            f"local_graph_kd: student {shape_str(s)} and teacher {shape_str(t)} must hold the same "
            "batch B and number of points N (channels may differ)."
        )
    s, t = upcast(s, t)
    n = s.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ConfigError(f"local_graph_kd: k must be an integer in [1, {n}] (points per sample), got {k!r}.")
    t = t.detach()
    scores = point_importance(t, importance)  # [B, N]
    queries = top_importance(scores, num_points)  # [B, m]
    t_q, s_q = gather_rows(t, queries), gather_rows(s, queries)  # [B, m, C]
    index = knn_indices(t, k, queries=t_q)  # [B, m, k]
    g_t = _encode(teacher_encoder, t, index, t_q, edge)  # [B, m, k, D]
    g_s = _encode(student_encoder, s, index, s_q, edge)
    if g_s.shape != g_t.shape:
        raise ShapeError(f"local_graph_kd: the encoders give {shape_str(g_s)} (student) and {shape_str(g_t)} (teacher); they must agree.")
    q_scores = gather_rows(scores, queries)  # [B, m]
    if temperature is not None:
        q_scores = q_scores / q_scores.mean(dim=1, keepdim=True).clamp_min(1e-12)
    w = importance_weights(q_scores, temperature).to(g_s.dtype)  # [B, m]
    per_query = (g_s - g_t).pow(2).mean(dim=(2, 3))  # [B, m]
    return reduce((w * per_query).mean(dim=1), reduction)


class EdgeEncoder(nn.Module):
    """``[..., 2C] -> [..., D]``: ``relu(BN(W e + b))``, batch norm over every edge of the batch.

    The authors' edge encoder is a 1x1 convolution, batch norm and ReLU (``ConvModule``); batch
    norm keeps the codes at unit scale, so the MSE between them starts near 1 whatever the
    features' magnitudes.
    """

    def __init__(self, channels: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * channels, dim)
        self.norm = nn.BatchNorm1d(dim)

    def _activate(self, z: Tensor) -> Tensor:
        return torch.relu(self.norm(z.reshape(-1, z.shape[-1])).reshape(z.shape))

    def forward(self, e: Tensor) -> Tensor:
        """Codes ``[..., D]`` of explicit edge features ``[..., 2C]``."""
        return self._activate(self.linear(e))

    def encode(self, features: Tensor, index: Tensor, centers: Tensor, mode: str = "edge") -> Tensor:
        """The same codes as ``forward(edge_features(features, index, centers, mode))``, ``[B, M, k, D]``,
        computed without building the edge tensor.

        ``W [x_j - x_i, x_i] = W_1 x_j + (W_2 - W_1) x_i`` (``W = [W_1 | W_2]``): each point is
        projected once (``[B, N, D]``) and the projections are gathered, which costs ``N C D``
        instead of ``M k 2C D`` multiply-adds.
        """
        c = features.shape[-1]
        w1, w2 = self.linear.weight[:, :c], self.linear.weight[:, c:]
        center_w = w2 - w1 if mode == "edge" else w2
        u = features @ w1.T  # [B, N, D]
        v = centers @ center_w.T + self.linear.bias  # [B, M, D]
        return self._activate(gather_neighbors(u, index) + v.unsqueeze(2))


def _edge_encoder(channels: int, dim: int) -> EdgeEncoder:
    return EdgeEncoder(channels, dim)


@OBJECTIVES.register("local_graph_kd")
class LocalGraphKD(Objective):
    """PointDistiller local distillation: EdgeConv codes of kNN graphs, importance-weighted MSE.

    Paper: L. Zhang, R. Dong, H.-S. Tai, K. Ma, 2023, "PointDistiller: Structured Knowledge
    Distillation Towards Efficient and Compact 3D Detection" (CVPR), arXiv:2205.11098; the edge
    encoding follows DGCNN (Y. Wang et al. 2019, arXiv:1801.07829).

    Args:
        student_dim, teacher_dim: channels ``C_s``, ``C_t`` of the two signals.
        k: neighbours per query (the query included).
        num_points: queries per sample, the most important ones (None: every point).
        embed_dim: ``D``, the width of the edge codes.
        temperature: of the importance softmax over the queries (scores divided by their mean
            first, so it is scale-free); None: uniform weights.
        importance: ``"norm"``, ``"max"`` or ``"mean"`` of the teacher features per point.
        edge: ``"edge"`` (``[x_j - x_i, x_i]``, EdgeConv) or ``"concat"`` (``[x_j, x_i]``).
        train_teacher_encoder: also train the teacher-side edge encoder (the authors' setting).

    Args of ``forward``: ``student`` ``[B, N, C_s]`` and ``teacher`` ``[B, N, C_t]`` (or feature
    maps ``[B, C, H, W]``, read as ``H*W`` points). ``reduction="none"`` gives ``[B]``.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> loss = LocalGraphKD(student_dim=4, teacher_dim=8, k=3, embed_dim=6)
        >>> loss(torch.randn(2, 10, 4), torch.randn(2, 10, 8)).shape
        torch.Size([])
    """

    inputs = {"student": "student.features", "teacher": "teacher.features"}
    target_space = None

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        k: int = 16,
        num_points: int | None = None,
        embed_dim: int = 32,
        temperature: float | None = None,
        importance: str = "norm",
        edge: str = "edge",
        train_teacher_encoder: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        for name, v in (("student_dim", student_dim), ("teacher_dim", teacher_dim), ("k", k), ("embed_dim", embed_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"local_graph_kd: {name} must be a positive integer, got {v!r}.")
        if num_points is not None and (isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1):
            raise ConfigError(f"local_graph_kd: num_points must be a positive integer or null, got {num_points!r}.")
        if temperature is not None and not float(temperature) > 0:
            raise ConfigError(f"local_graph_kd: temperature must be > 0 or null, got {temperature!r}.")
        if importance not in IMPORTANCE_MODES:
            raise ConfigError(f"local_graph_kd: importance must be one of {IMPORTANCE_MODES}, got {importance!r}.")
        if edge not in EDGE_MODES:
            raise ConfigError(f"local_graph_kd: edge must be one of {EDGE_MODES}, got {edge!r}.")
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        self.k, self.num_points, self.embed_dim = k, num_points, embed_dim
        self.temperature = None if temperature is None else float(temperature)
        self.importance, self.edge = importance, edge
        self.student_encoder = _edge_encoder(student_dim, embed_dim)
        self.teacher_encoder = _edge_encoder(teacher_dim, embed_dim)
        self.train_teacher_encoder = bool(train_teacher_encoder)
        self.teacher_encoder.requires_grad_(self.train_teacher_encoder)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        for name, x, c in (("student", student, self.student_dim), ("teacher", teacher, self.teacher_dim)):
            channels = x.shape[-1] if x.ndim == 3 else (x.shape[1] if x.ndim == 4 else None)
            if channels is not None and channels != c:
                raise ShapeError(
                    f"local_graph_kd: the {name} signal {shape_str(x)} has {channels} channels, but the "
                    f"objective was built with {name}_dim={c} (student {shape_str(student)}, teacher {shape_str(teacher)})."
                )
        return local_graph_loss(
            student, teacher, self.student_encoder, self.teacher_encoder, self.k, self.num_points,
            self.temperature, self.importance, self.edge, self.reduction,
        )

    def extra_repr(self) -> str:
        return (f"k={self.k}, num_points={self.num_points}, embed_dim={self.embed_dim}, temperature={self.temperature}, "
                f"importance={self.importance!r}, edge={self.edge!r}, train_teacher_encoder={self.train_teacher_encoder}")
