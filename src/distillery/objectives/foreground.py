"""UniDistill's sparse foreground losses on a BEV grid, and a centre-heatmap focal loss.

Paper: S. Zhou, W. Liu, C. Hu, S. Zhou, C. Ma, 2023, "UniDistill: A Universal Cross-Modality
Knowledge Distillation Framework for 3D Object Detection in Bird's-Eye View" (CVPR),
arXiv:2303.15083. "Three distillation losses are calculated to sparsely align the foreground
features ... [they] filter the effect of misaligned background information and balance between
objects of different sizes."

All three read the ground-truth boxes (``batch.boxes``, ``[B, M, 4]`` rows ``(r0, c0, r1, c1)``,
padding rows empty; see :mod:`distillery.objectives.foreground_grid`):

* ``fg_feature_kd`` - feature distillation: both BEV maps sampled at each object's 9 keypoints
  (:func:`~distillery.objectives.foreground_grid.box_keypoints`), L1 (or squared) distance averaged over the
  keypoints and channels of an object;
* ``fg_relation_kd`` - relation distillation: per object, the ``9 x 9`` cosine-similarity
  matrix of its keypoint features, student vs teacher, L1 averaged over the 81 entries (the
  channel counts may differ);
* ``fg_response_kd`` - response distillation: L1 between the student's and the teacher's
  class-max heatmap probabilities, weighted by the Gaussian centre mask of the objects
  (:func:`~distillery.objectives.foreground_grid.gaussian_center_mask`), normalised by the mask's sum.

Each object counts once whatever its area (9 samples each: the size balancing). As in the
authors' code, the first two sum over every object of the batch and divide by the number of
objects, the third divides by the total mask; ``reduction="none"`` returns per-sample shares
``[B]`` whose mean is exactly that value (a sample's sum times ``B`` over the batch total).

``center_focal`` is the task loss of centre-based detectors (CenterNet's penalty-reduced focal
loss, Zhou, Wang & Krähenbühl 2019, arXiv:1904.07850), which the miniature's detectors train with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, ShapeError
from .foreground_grid import box_keypoints, gaussian_center_mask, sample_points, valid_boxes
from ..registry import OBJECTIVES
from ._common import check_reduction, reduce, shape_str, upcast
from .base import Objective

__all__ = [
    "CenterFocal",
    "ForegroundFeatureKD",
    "ForegroundRelationKD",
    "ForegroundResponseKD",
    "center_focal_loss",
    "foreground_feature_loss",
    "foreground_relation_loss",
    "foreground_response_loss",
]

DISTANCES = ("l1", "mse")


def _check_maps(name: str, student: Tensor, teacher: Tensor, boxes: Tensor, same_channels: bool) -> None:
    if student.ndim != 4 or teacher.ndim != 4:
        raise ShapeError(f"{name}: student {shape_str(student)} and teacher {shape_str(teacher)} must be BEV maps [B, C, H, W].")
    if student.shape[0] != teacher.shape[0] or student.shape[-2:] != teacher.shape[-2:]:
        raise ShapeError(f"{name}: student {shape_str(student)} and teacher {shape_str(teacher)} must share B, H and W (the common grid).")
    if same_channels and student.shape[1] != teacher.shape[1]:
        raise ShapeError(
            f"{name}: student {shape_str(student)} and teacher {shape_str(teacher)} have different channel counts; "
            "add an adapter (conv1x1) to the term."
        )
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or boxes.shape[0] != student.shape[0]:
        raise ShapeError(f"{name}: boxes must be [B, M, 4] for the student's batch {shape_str(student)}, got {shape_str(boxes)}.")


def _per_sample_share(per_object: Tensor, valid: Tensor) -> Tensor:
    """``[B, M]`` object losses -> ``[B]`` shares whose mean is sum(valid) / count(valid)."""
    per_object = torch.where(valid, per_object, torch.zeros_like(per_object))
    total = valid.sum().clamp_min(1).to(per_object.dtype)
    return per_object.sum(dim=1) * valid.shape[0] / total


def _distance(a: Tensor, b: Tensor, distance: str) -> Tensor:
    return (a - b).abs() if distance == "l1" else (a - b).pow(2)


def foreground_feature_loss(student: Tensor, teacher: Tensor, boxes: Tensor, distance: str = "l1", reduction: str = "mean") -> Tensor:
    """UniDistill feature distillation: keypoint features of every object, student vs teacher.

    ``student``, ``teacher``: ``[B, C, H, W]`` (same shape); ``boxes``: ``[B, M, 4]``.
    Per object: ``mean_{p, c} d(S(k_p)_c, T(k_p)_c)`` over its 9 keypoints ``k_p`` (bilinear
    samples) and C channels, ``d`` = ``|.|`` (``"l1"``) or ``(.)^2`` (``"mse"``); objects of a
    batch are averaged (see the module docstring for ``reduction="none"``).
    """
    check_reduction(reduction)
    if distance not in DISTANCES:
        raise ConfigError(f"fg_feature_kd: distance must be one of {DISTANCES}, got {distance!r}.")
    _check_maps("fg_feature_kd", student, teacher, boxes, same_channels=True)
    s, t = upcast(student, teacher)
    points = box_keypoints(boxes.to(s.dtype))
    fs, ft = sample_points(s, points), sample_points(t.detach(), points)  # [B, M, 9, C]
    per_object = _distance(fs, ft, distance).mean(dim=(2, 3))
    return reduce(_per_sample_share(per_object, valid_boxes(boxes)), reduction)


def keypoint_relations(feature_map: Tensor, boxes: Tensor) -> Tensor:
    """``[B, M, 9, 9]`` cosine similarities between the 9 keypoint features of each object."""
    f = sample_points(feature_map, box_keypoints(boxes.to(feature_map.dtype)))  # [B, M, 9, C]
    z = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return z @ z.transpose(-1, -2)


def foreground_relation_loss(student: Tensor, teacher: Tensor, boxes: Tensor, reduction: str = "mean") -> Tensor:
    """UniDistill relation distillation: per object, ``mean |R_s - R_t|`` over the ``9 x 9`` entries.

    ``R`` is the cosine-similarity matrix of the object's keypoint features
    (:func:`keypoint_relations`); ``student`` ``[B, C_s, H, W]`` and ``teacher`` ``[B, C_t, H, W]``
    may differ in channels. Objects of a batch are averaged.
    """
    check_reduction(reduction)
    _check_maps("fg_relation_kd", student, teacher, boxes, same_channels=False)
    s, t = upcast(student, teacher)
    per_object = (keypoint_relations(s, boxes) - keypoint_relations(t.detach(), boxes)).abs().mean(dim=(2, 3))
    return reduce(_per_sample_share(per_object, valid_boxes(boxes)), reduction)


def foreground_response_loss(student: Tensor, teacher: Tensor, boxes: Tensor, min_overlap: float = 0.7, reduction: str = "mean",
                             teacher_temperature: float = 1.0) -> Tensor:
    """UniDistill response distillation on centre heatmaps, inside the objects' Gaussian masks.

    ``student``, ``teacher``: heatmap logits ``[B, K, H, W]`` (K classes); ``p_s = max_k
    sigmoid(s)``, ``p_t = max_k sigmoid(t / teacher_temperature)``. Loss
    ``sum_cells G * |p_s - p_t| / sum_cells G`` with ``G`` the Gaussian centre mask of ``boxes``
    (zero on the background). The authors' code softens the teacher's heatmap with
    ``teacher_temperature = 2`` (``_sigmoid(resp["hm"] / 2)`` in ``ResponseDistillLoss``), the
    student's is not softened; 1 (the default) compares the two heatmaps as they are.
    """
    check_reduction(reduction)
    _check_maps("fg_response_kd", student, teacher, boxes, same_channels=True)
    s, t = upcast(student, teacher)
    p_s = torch.sigmoid(s).amax(dim=1)
    if not teacher_temperature > 0:
        raise ConfigError(f"fg_response_kd: teacher_temperature must be > 0, got {teacher_temperature!r}.")
    p_t = torch.sigmoid(t.detach() / teacher_temperature).amax(dim=1)
    mask = gaussian_center_mask(boxes, tuple(s.shape[-2:]), min_overlap).to(s.dtype)  # [B, H, W]
    per_sample = (mask * (p_s - p_t).abs()).sum(dim=(1, 2))
    total = mask.sum().clamp_min(1e-12)
    return reduce(per_sample * s.shape[0] / total, reduction)


def center_focal_loss(student: Tensor, target: Tensor, alpha: float = 2.0, beta: float = 4.0, reduction: str = "mean") -> Tensor:
    """CenterNet's penalty-reduced focal loss of heatmap logits ``[B, K, H, W]`` vs targets in ``[0, 1]``.

    With ``p = sigmoid(logit)`` and target ``y``: ``-(1 - p)^alpha log p`` where ``y == 1`` (object
    centres) and ``-(1 - y)^beta p^alpha log(1 - p)`` elsewhere, summed and divided by the number
    of centres in the batch (at least 1); ``"none"`` gives per-sample shares ``[B]`` (see the module
    docstring).
    """
    check_reduction(reduction)
    if student.shape != target.shape or student.ndim != 4:
        raise ShapeError(f"center_focal: logits {shape_str(student)} and target {shape_str(target)} must both be [B, K, H, W].")
    s, y = upcast(student, target)
    log_p, log_1p = F.logsigmoid(s), F.logsigmoid(-s)
    p = torch.sigmoid(s)
    pos = y >= 1.0
    pos_term = (1 - p).pow(alpha) * log_p
    neg_term = (1 - y).pow(beta) * p.pow(alpha) * log_1p
    per_cell = -torch.where(pos, pos_term, neg_term)
    n_pos = pos.sum().clamp_min(1).to(s.dtype)
    per_sample = per_cell.flatten(1).sum(1) * s.shape[0] / n_pos
    return reduce(per_sample, reduction)


_BOX_INPUTS = {"student": "student.features", "teacher": "teacher.features", "boxes": "batch.boxes"}


@OBJECTIVES.register("fg_feature_kd")
class ForegroundFeatureKD(Objective):
    """UniDistill feature distillation at 9 keypoints per object (BEV maps, L1).

    Paper: S. Zhou, W. Liu, C. Hu, S. Zhou, C. Ma, 2023, "UniDistill: A Universal
    Cross-Modality Knowledge Distillation Framework for 3D Object Detection in Bird's-Eye View"
    (CVPR), arXiv:2303.15083. See :func:`foreground_feature_loss`.

    Args of ``forward``: ``student``, ``teacher`` ``[B, C, H, W]`` (same shape; use an adapter
    otherwise), ``boxes`` ``[B, M, 4]``.

    Example:
        >>> import torch
        >>> boxes = torch.tensor([[[1.0, 1.0, 4.0, 3.0], [0.0, 0.0, 0.0, 0.0]]])
        >>> x = torch.randn(1, 3, 6, 6)
        >>> float(ForegroundFeatureKD()(x, x, boxes))
        0.0
    """

    inputs = dict(_BOX_INPUTS)
    target_space = None

    def __init__(self, distance: str = "l1", reduction: str = "mean") -> None:
        super().__init__(reduction)
        if distance not in DISTANCES:
            raise ConfigError(f"fg_feature_kd: distance must be one of {DISTANCES}, got {distance!r}.")
        self.distance = distance

    def forward(self, student: Tensor, teacher: Tensor, boxes: Tensor) -> Tensor:
        return foreground_feature_loss(student, teacher, boxes, self.distance, self.reduction)


@OBJECTIVES.register("fg_relation_kd")
class ForegroundRelationKD(Objective):
    """UniDistill relation distillation: 9x9 keypoint cosine-similarity matrices per object.

    Paper: S. Zhou, W. Liu, C. Hu, S. Zhou, C. Ma, 2023, "UniDistill", arXiv:2303.15083.
    See :func:`foreground_relation_loss`.

    Args of ``forward``: ``student`` ``[B, C_s, H, W]``, ``teacher`` ``[B, C_t, H, W]``,
    ``boxes`` ``[B, M, 4]``.

    Example:
        >>> import torch
        >>> boxes = torch.tensor([[[1.0, 1.0, 4.0, 3.0]]])
        >>> x = torch.randn(1, 3, 6, 6)
        >>> float(ForegroundRelationKD()(2 * x, x, boxes)) < 1e-6   # scale-invariant
        True
    """

    inputs = dict(_BOX_INPUTS)
    target_space = None

    def forward(self, student: Tensor, teacher: Tensor, boxes: Tensor) -> Tensor:
        return foreground_relation_loss(student, teacher, boxes, self.reduction)


@OBJECTIVES.register("fg_response_kd")
class ForegroundResponseKD(Objective):
    """UniDistill response distillation: L1 of heatmap probabilities inside Gaussian object masks.

    Paper: S. Zhou, W. Liu, C. Hu, S. Zhou, C. Ma, 2023, "UniDistill", arXiv:2303.15083.
    See :func:`foreground_response_loss`.

    Args of ``forward``: ``student``, ``teacher`` heatmap logits ``[B, K, H, W]``,
    ``boxes`` ``[B, M, 4]``.

    Example:
        >>> import torch
        >>> boxes = torch.tensor([[[1.0, 1.0, 4.0, 3.0]]])
        >>> x = torch.randn(1, 1, 6, 6)
        >>> float(ForegroundResponseKD()(x, x, boxes))
        0.0
    """

    inputs = {"student": "student.heatmap", "teacher": "teacher.heatmap", "boxes": "batch.boxes"}
    target_space = None

    def __init__(self, min_overlap: float = 0.7, teacher_temperature: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        if not 0.0 < float(min_overlap) < 1.0:
            raise ConfigError(f"fg_response_kd: min_overlap must be in (0, 1), got {min_overlap!r}.")
        if not float(teacher_temperature) > 0.0:
            raise ConfigError(f"fg_response_kd: teacher_temperature must be > 0, got {teacher_temperature!r}.")
        self.min_overlap = float(min_overlap)
        self.teacher_temperature = float(teacher_temperature)

    def forward(self, student: Tensor, teacher: Tensor, boxes: Tensor) -> Tensor:
        return foreground_response_loss(student, teacher, boxes, self.min_overlap, self.reduction, self.teacher_temperature)


@OBJECTIVES.register("center_focal")
class CenterFocal(Objective):
    """CenterNet's penalty-reduced focal loss on centre heatmaps (task loss of BEV detectors).

    Paper: X. Zhou, D. Wang, P. Krähenbühl, 2019, "Objects as Points", arXiv:1904.07850
    (also CenterPoint, T. Yin, X. Zhou, P. Krähenbühl, 2021, arXiv:2006.11275).
    See :func:`center_focal_loss`.

    Args of ``forward``: ``student`` heatmap logits ``[B, K, H, W]``, ``target`` ``[B, K, H, W]``
    Gaussian heatmaps with 1 at object centres (``batch.heatmap``).

    Example:
        >>> import torch
        >>> target = torch.zeros(1, 1, 4, 4); target[0, 0, 1, 2] = 1.0
        >>> confident = torch.full((1, 1, 4, 4), -20.0); confident[0, 0, 1, 2] = 20.0
        >>> float(CenterFocal()(confident, target)) < 1e-6
        True
    """

    inputs = {"student": "student.heatmap", "target": "batch.heatmap"}
    target_space = None

    def __init__(self, alpha: float = 2.0, beta: float = 4.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.alpha, self.beta = float(alpha), float(beta)

    def forward(self, student: Tensor, target: Tensor) -> Tensor:
        return center_focal_loss(student, target, self.alpha, self.beta, self.reduction)
