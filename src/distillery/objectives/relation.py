"""Relational terms: compare the structure of a batch (distances, angles, similarities).

Only ``B x B`` (or ``B x B x B``) relation tensors are compared, so the student's and the
teacher's embedding sizes may differ. Inputs are flattened to ``[B, D]``. These are
batch-level losses; see each class for what ``reduction="none"`` returns.

The RKD terms average over ``average_over="all"`` entries of the relation tensor (all
``B^2`` pairs, all ``B^3`` triplets, the degenerate ones contributing 0, as the authors'
code github.com/lenscloth/RKD ``metric/loss.py`` and torchdistill do) or over the
``"distinct"`` ones only (``B(B-1)`` ordered pairs, ``B(B-1)(B-2)`` triplets). The two
differ by a constant factor: ``distinct = all * B / (B-1)`` for the distance term and
``distinct = all * B^2 / ((B-1)(B-2))`` for the angle term.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, ShapeError
from ..registry import OBJECTIVES
from ._common import (
    check_reduction,
    check_temperature,
    kl_from_log_probs,
    reduce,
    shape_str,
    upcast,
)
from .base import Objective

__all__ = [
    "RKD_AVERAGES",
    "RKDAngle",
    "RKDDistance",
    "SimilarityKL",
    "pairwise_distances",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "similarity_kl_loss",
]

_EPS = 1e-12

#: Values of the RKD terms' ``average_over``: the authors' ``"all"`` entries of the relation
#: tensor (``B^2`` pairs, ``B^3`` triplets) or only the ``"distinct"`` ones.
RKD_AVERAGES = ("all", "distinct")
RKDAverage = Literal["all", "distinct"]


def _check_average_over(name: str, average_over: str) -> str:
    if average_over not in RKD_AVERAGES:
        raise ConfigError(
            f"{name}: average_over must be one of {RKD_AVERAGES} (\"all\": every pair/triplet "
            f"of the batch as in the authors' code, \"distinct\": distinct indices only), got "
            f"{average_over!r}."
        )
    return average_over


def _flatten_pair(name: str, student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    if student.ndim < 1 or teacher.ndim < 1 or student.shape[0] != teacher.shape[0]:
        raise ShapeError(
            f"{name}: student {shape_str(student)} and teacher {shape_str(teacher)} must be "
            "batches of the same size B (embedding sizes may differ)."
        )
    s, t = upcast(student.reshape(student.shape[0], -1), teacher.reshape(teacher.shape[0], -1))
    assert s is not None and t is not None
    return s, t


def _zero(*tensors: Tensor) -> Tensor:
    """A scalar 0 attached to the graph of the inputs."""
    zero = tensors[0].sum() * 0
    for t in tensors[1:]:
        zero = zero + t.sum() * 0
    return zero


def _gram_centered(e: Tensor) -> tuple[Tensor, Tensor]:
    # distances and angles are translation invariant: centring first limits cancellation
    e = e - e.mean(0, keepdim=True)
    gram = e @ e.T
    return gram, gram.diagonal()


def pairwise_distances(embeddings: Tensor) -> Tensor:
    """Euclidean distances ``[B, B]`` between the rows of ``[B, D]``; the diagonal is 0.

    Squared distances are clamped at 1e-12 before the square root (finite gradients for
    duplicate rows).
    """
    gram, sq = _gram_centered(embeddings)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * gram).clamp(min=_EPS)
    off = ~torch.eye(embeddings.shape[0], dtype=torch.bool, device=embeddings.device)
    return torch.where(off, d2.sqrt(), torch.zeros_like(d2))


def rkd_distance_loss(
    student: Tensor, teacher: Tensor, reduction: str = "mean", average_over: RKDAverage = "all"
) -> Tensor:
    """RKD distance-wise loss; per anchor (``"none"``, ``[B]``) or its mean (scalar).

    ``student``: ``[B, ...]``, ``teacher``: ``[B, ...]``, flattened to ``[B, D_s]``,
    ``[B, D_t]``. Anchor ``i``'s value is ``sum_{j != i} huber_ij`` divided by ``B``
    (``average_over="all"``, the authors' code) or by ``B - 1`` (``"distinct"``). Fewer than
    2 samples give 0 (attached to the graph).
    """
    check_reduction(reduction)
    _check_average_over("rkd_distance", average_over)
    s, t = _flatten_pair("rkd_distance", student, teacher)
    batch = s.shape[0]
    if batch < 2:
        zero = _zero(s, t)
        return zero if reduction == "mean" else zero.expand(batch)
    off = ~torch.eye(batch, dtype=torch.bool, device=s.device)
    ds, dt = pairwise_distances(s), pairwise_distances(t)
    ds = ds / ds[off].mean()
    dt = dt / dt[off].mean()
    huber = F.smooth_l1_loss(ds, dt, reduction="none", beta=1.0)
    count = batch if average_over == "all" else batch - 1
    per_anchor = torch.where(off, huber, torch.zeros_like(huber)).sum(1) / count
    return reduce(per_anchor, reduction)


def _angle_cosines(e: Tensor, valid: Tensor) -> Tensor:
    """``cos[v, a, b]`` of the angle at vertex ``e_v`` between ``e_a`` and ``e_b``."""
    gram, sq = _gram_centered(e)
    # <e_a - e_v, e_b - e_v> = G_ab - G_va - G_vb + G_vv
    dot = gram.unsqueeze(0) - gram.unsqueeze(2) - gram.unsqueeze(1) + sq.view(-1, 1, 1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * gram).clamp(min=_EPS)
    dist = d2.sqrt()
    denom = dist.unsqueeze(2) * dist.unsqueeze(1)
    dot = torch.where(valid, dot, torch.zeros_like(dot))
    denom = torch.where(valid, denom, torch.ones_like(denom))
    return dot / denom


def rkd_angle_loss(
    student: Tensor, teacher: Tensor, reduction: str = "mean", average_over: RKDAverage = "all"
) -> Tensor:
    """RKD angle-wise loss; per vertex (``"none"``, ``[B]``) or its mean (scalar).

    Vertex ``v``'s value is the sum of the Huber terms of its ``(B-1)(B-2)`` triplets of
    distinct indices divided by ``B^2`` (``average_over="all"``, the authors' code, where the
    degenerate triplets contribute 0) or by ``(B-1)(B-2)`` (``"distinct"``). Memory is
    ``O(B^3)``. Fewer than 3 samples give 0 (attached to the graph).
    """
    check_reduction(reduction)
    _check_average_over("rkd_angle", average_over)
    s, t = _flatten_pair("rkd_angle", student, teacher)
    batch = s.shape[0]
    if batch < 3:
        zero = _zero(s, t)
        return zero if reduction == "mean" else zero.expand(batch)
    idx = torch.arange(batch, device=s.device)
    v, a, b = idx.view(-1, 1, 1), idx.view(1, -1, 1), idx.view(1, 1, -1)
    valid = (v != a) & (v != b) & (a != b)
    huber = F.smooth_l1_loss(
        _angle_cosines(s, valid), _angle_cosines(t, valid), reduction="none", beta=1.0
    )
    huber = torch.where(valid, huber, torch.zeros_like(huber))
    count = batch * batch if average_over == "all" else (batch - 1) * (batch - 2)
    per_vertex = huber.sum((1, 2)) / count
    return reduce(per_vertex, reduction)


def similarity_kl_loss(
    student: Tensor, teacher: Tensor, temperature: float = 1.0, reduction: str = "mean"
) -> Tensor:
    """KL between rows of the (diagonal-free) cosine-similarity matrices, per row.

    ``student``: ``[B, ...]``, ``teacher``: ``[B, ...]`` (flattened; sizes may differ).
    Row ``i``: ``KL(softmax_{j != i}(S_t[i]/tau) || softmax_{j != i}(S_s[i]/tau))``.
    Fewer than 2 samples give 0.
    """
    check_reduction(reduction)
    tau = check_temperature("temperature", temperature)
    s, t = _flatten_pair("gram_kl", student, teacher)
    batch = s.shape[0]
    if batch < 2:
        zero = _zero(s, t)
        return zero if reduction == "mean" else zero.expand(batch)
    eye = torch.eye(batch, dtype=torch.bool, device=s.device)

    def row_log_probs(e: Tensor) -> Tensor:
        z = F.normalize(e, dim=1)
        return F.log_softmax((z @ z.T / tau).masked_fill(eye, -math.inf), dim=1)

    per_row = kl_from_log_probs(row_log_probs(t), row_log_probs(s))
    return reduce(per_row, reduction)


_REL_INPUTS = {"student": "student.logits", "teacher": "teacher.logits"}


class _RKDObjective(Objective):
    """Shared body of the RKD terms: a pure loss called as
    ``fn(student, teacher, reduction, average_over)``, registered under :attr:`_name`."""

    inputs = dict(_REL_INPUTS)
    target_space = None
    _name: str
    _loss_fn: Callable[..., Tensor]

    def __init__(self, reduction: str = "mean", average_over: RKDAverage = "all") -> None:
        super().__init__(reduction)
        self.average_over = _check_average_over(self._name, average_over)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        return self._loss_fn(student, teacher, self.reduction, self.average_over)

    def extra_repr(self) -> str:
        return f"average_over={self.average_over!r}, reduction={self.reduction!r}"

@OBJECTIVES.register("rkd_distance")
class RKDDistance(_RKDObjective):
    """Relational KD, distance-wise (Park et al. 2019): Huber on mean-normalised distances.

    Paper: W. Park, D. Kim, Y. Lu, M. Cho, 2019, "Relational Knowledge Distillation"
    (CVPR), arXiv:1904.05068.

    ``psi(x_i, x_j) = |x_i - x_j|_2 / mu`` with ``mu`` the mean distance over the off-diagonal
    pairs ``i != j`` of the batch, for student and teacher separately; loss
    ``l_delta(psi_t(i, j), psi_s(i, j))`` with the Huber loss ``l_delta`` (``delta = 1``,
    i.e. smooth L1), averaged over

    * ``average_over="all"`` (default): all ``B^2`` pairs, the diagonal (0 for both)
      included, as the authors' code (github.com/lenscloth/RKD, ``RkdDistance``) and
      torchdistill do;
    * ``average_over="distinct"``: the ``B(B-1)`` ordered pairs ``i != j`` only, i.e. the
      ``"all"`` value times ``B / (B-1)`` (distillery's former default).

    ``reduction="none"`` returns ``[B]``: for each anchor ``i``, the sum over ``j != i``
    divided by ``B`` (``"all"``) or ``B - 1`` (``"distinct"``); the mean of that vector is
    the ``"mean"`` value. A batch of fewer than 2 gives 0.

    Args of ``forward``: ``student`` ``[B, ...]`` and ``teacher`` ``[B, ...]``, flattened to
    ``[B, D_s]`` and ``[B, D_t]`` (``D_s`` and ``D_t`` may differ).

    Example:
        >>> import torch
        >>> x = torch.randn(6, 5)
        >>> RKDDistance()(x, 2 * x).abs().item() < 1e-6  # scale-invariant
        True
    """

    inputs = dict(_REL_INPUTS)
    _name = "rkd_distance"
    _loss_fn = staticmethod(rkd_distance_loss)


@OBJECTIVES.register("rkd_angle")
class RKDAngle(_RKDObjective):
    """Relational KD, angle-wise (Park et al. 2019): Huber on triplet angle cosines.

    Paper: W. Park, D. Kim, Y. Lu, M. Cho, 2019, "Relational Knowledge Distillation"
    (CVPR), arXiv:1904.05068.

    For a triplet with vertex ``v`` and ends ``a``, ``b``:
    ``psi(v, a, b) = <e_va, e_vb>`` with ``e_va = (x_a - x_v) / |x_a - x_v|_2``; loss
    ``l_delta(psi_t, psi_s)`` (Huber, ``delta = 1``) averaged over

    * ``average_over="all"`` (default): all ``B^3`` index triplets, as the authors' code
      (github.com/lenscloth/RKD, ``RKdAngle``) and torchdistill do; the degenerate triplets
      (``a = v``, ``b = v`` or ``a = b``) give the same cosine (0 or 1) for student and
      teacher and contribute 0, but enter the denominator;
    * ``average_over="distinct"``: the ``B(B-1)(B-2)`` triplets of distinct indices only,
      i.e. the ``"all"`` value times ``B^2 / ((B-1)(B-2))`` (distillery's former default).

    ``reduction="none"`` returns ``[B]``: for each vertex ``v``, the sum over its
    ``(B-1)(B-2)`` distinct triplets divided by ``B^2`` (``"all"``) or ``(B-1)(B-2)``
    (``"distinct"``); the mean of that vector is the ``"mean"`` value. Memory is
    ``O(B^3)``; a batch of fewer than 3 gives 0.

    Args of ``forward``: ``student`` ``[B, ...]`` and ``teacher`` ``[B, ...]``, flattened to
    ``[B, D_s]`` and ``[B, D_t]`` (``D_s`` and ``D_t`` may differ).

    Example:
        >>> import torch
        >>> x = torch.randn(6, 5)
        >>> RKDAngle()(x, 3 * x + 1).abs().item() < 1e-6  # similarity-invariant
        True
    """

    inputs = dict(_REL_INPUTS)
    _name = "rkd_angle"
    _loss_fn = staticmethod(rkd_angle_loss)


@OBJECTIVES.register("gram_kl")
class SimilarityKL(Objective):
    """KL between rows of student and teacher cosine-similarity matrices (relational KD).

    Relational knowledge as a batch similarity structure, after Tung & Mori 2019
    ("Similarity-Preserving Knowledge Distillation", ICCV, arXiv:1907.09682) and Park et al.
    2019 ("Relational Knowledge Distillation", arXiv:1904.05068), with rows turned into
    distributions as in similarity-distribution distillation (e.g. SEED: Z. Fang et al. 2021,
    "SEED: Self-supervised Distillation For Visual Representation", arXiv:2101.04731).

    ``z = x / |x|_2`` per sample, ``S = z z^T`` (``[B, B]``). The diagonal (always 1, a
    sample's similarity to itself) is excluded: row ``i`` is the distribution
    ``softmax_{j != i}(S[i, j] / tau)`` over the other ``B - 1`` samples. Per sample (row):
    ``KL(teacher row || student row)``; ``"mean"`` averages over rows. A batch of fewer
    than 2 gives 0.

    Args of ``forward``: ``student`` ``[B, ...]`` and ``teacher`` ``[B, ...]``, flattened to
    ``[B, D_s]`` and ``[B, D_t]`` (sizes may differ; only ``B x B`` matrices are compared).

    Example:
        >>> import torch
        >>> x = torch.randn(6, 5)
        >>> SimilarityKL(temperature=0.5)(x, 2 * x).abs().item() < 1e-6
        True
    """

    inputs = dict(_REL_INPUTS)
    target_space = None

    def __init__(self, temperature: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.temperature = check_temperature("temperature", temperature)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        return similarity_kl_loss(student, teacher, self.temperature, self.reduction)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}"
