"""UniDistill: sparse foreground distillation (feature, relation, response) on a common BEV grid.

Zhou, Liu, Hu, Zhou & Ma 2023, "UniDistill: A Universal Cross-Modality Knowledge Distillation
Framework for 3D Object Detection in Bird's-Eye View" (CVPR), arXiv:2303.15083. "UniDistill
projects the features of both the teacher and the student detector into Bird's-Eye-View (BEV)
... three distillation losses are calculated to sparsely align the foreground features ... [they]
filter the effect of misaligned background information and balance between objects of different
sizes ... improves the mAP and NDS of student detectors by 2.0%~3.2%."

The teacher and the student each see their own modality (``teacher.view: x_clean``, the student
``x``) but predict on the same grid. On top of the detection loss the recipe adds, from the
ground-truth boxes (``batch.boxes``):

* ``fg_feature_kd`` (weight 10): the *low-level* BEV features (``low_features``: what the
  modality's encoder hands to the shared BEV backbone) at 9 keypoints per object, L1;
* ``fg_relation_kd`` (weight 5): the 9x9 cosine-similarity matrix of each object's keypoints on
  the *high-level* BEV features (``features``: the BEV backbone's output), L1;
* ``fg_response_kd`` (weight 1): heatmap probabilities inside each object's Gaussian mask, L1,
  the teacher's heatmap softened with temperature 2 (``sigmoid(logit / 2)``), the student's not;

as in the authors' training code (``FeatureDistillLoss`` on the encoder output ``model_output``,
``BEVDistillLoss`` on the BEV backbone's output ``x[0]``, ``ResponseDistillLoss`` with
``_sigmoid(hm / 2)`` for the teacher). The weights 10 / 5 / 1 are the authors' for one path
(a LiDAR student, a camera teacher: ``BEVFusion_nuscenes_centerhead_lidar_exp_distill_camera``);
their other paths use 100 / 40 / 10 (LiDAR to camera), 10 / 5 / 10 (fusion to camera) and
10 / 1 / 10 (fusion to LiDAR), for BatchNorm-ed BEV features. Keypoints, bilinear sampling and Gaussian
masks are in :mod:`distillery.objectives.foreground_grid`; the losses in :mod:`distillery.objectives.foreground`.
The miniature (``distillery reproduce unidistill``) detects rectangles on a 16x16 grid: the
teacher sees the clean occupancy, the student a sparse, cluttered, noisy view. Config:
``configs/unidistill_bev.yaml``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..engine.distiller import Distiller, Term
from ..objectives.foreground_grid import center_average_precision
from ..teachers import FrozenTeacher
from . import Recipe, register_recipe
from ._fragments import terms_from

RECIPE = register_recipe(
    Recipe("unidistill", "Zhou et al. 2023, UniDistill, arXiv:2303.15083", "unidistill_bev.yaml",
           "Sparse foreground feature/relation/response distillation at object keypoints on a BEV grid")
)

#: The authors' loss weights of their camera-to-LiDAR path: 10 (feature), 5 (relation), 1 (response).
WEIGHTS = {"feature": 10.0, "relation": 5.0, "response": 1.0}
#: The authors' softening of the teacher's heatmap in the response loss (``sigmoid(logit / 2)``).
TEACHER_TEMPERATURE = 2.0


def detection_objectives(count_weight: float = 0.1, named: bool = False) -> list[dict[str, Any]]:
    """The task loss of the miniature's detector as ``objectives``: centre focal loss + a small
    counting CE (``named``: terms called ``focal`` and ``count``; default: their kinds)."""
    focal: dict[str, Any] = {"kind": "center_focal"}
    count: dict[str, Any] = {"kind": "ce", "weight": count_weight}
    if named:
        focal["name"], count["name"] = "focal", "count"
    return [focal, count]


def unidistill_objectives(weights: dict[str, float] | None = None, features: str | None = None,
                          heatmap: str | None = None, low_features: str | None = "low_features",
                          teacher_temperature: float = TEACHER_TEMPERATURE) -> list[dict[str, Any]]:
    """UniDistill's three terms as ``objectives`` (``feature``, ``relation``, ``response``; the
    authors' :data:`WEIGHTS` unless ``weights``): the feature term on ``low_features`` (the
    encoder's BEV features, ``[B, C, H, W]``), the relation term on ``features`` (the BEV
    backbone's output), the response term on ``heatmap`` (``[B, K, H, W]``) with the teacher's
    heatmap softened by ``teacher_temperature``. ``None``: the objectives' defaults
    (``features``, ``heatmap``, on both sides)."""
    w = {**WEIGHTS, **(weights or {})}

    def on(signal: str | None) -> dict[str, Any]:
        return {"inputs": {"student": f"student.{signal}", "teacher": f"teacher.{signal}"}} if signal else {}

    return [
        {"name": "feature", "kind": "fg_feature_kd", "weight": w["feature"], **on(low_features)},
        {"name": "relation", "kind": "fg_relation_kd", "weight": w["relation"], **on(features)},
        {"name": "response", "kind": "fg_response_kd", "weight": w["response"], **on(heatmap),
         "params": {"teacher_temperature": float(teacher_temperature)}},
    ]


def unidistill_config(weights: dict[str, float] | None = None, count_weight: float = 0.1) -> dict[str, Any]:
    """The method's ``objectives``: :func:`detection_objectives` + :func:`unidistill_objectives`
    (add a frozen ``teacher`` reading its own modality, e.g. ``view: x_clean``)."""
    return {"objectives": detection_objectives(count_weight) + unidistill_objectives(weights)}


def detection_terms(count_weight: float = 0.1) -> list[Term]:
    """The task loss of the miniature's detector: centre focal loss + a small counting CE."""
    return terms_from(detection_objectives(count_weight, named=True))


def unidistill_terms(features: str = "features", heatmap: str = "heatmap", weights: dict[str, float] | None = None,
                     low_features: str = "low_features") -> list[Term]:
    """UniDistill's three terms: feature on ``low_features``, relation on ``features`` (both
    ``[B, C, H, W]``), response on ``heatmap`` (``[B, K, H, W]``)."""
    return terms_from(unidistill_objectives(weights, features, heatmap, low_features))


def unidistill_distiller(student: nn.Module, teacher: nn.Module, teacher_view: str = "x_clean") -> Distiller:
    """Detection loss + the three UniDistill terms, the frozen ``teacher`` reading ``batch[teacher_view]``."""
    return Distiller(student, FrozenTeacher(teacher, view=teacher_view), detection_terms() + unidistill_terms())


@torch.no_grad()
def heatmap_ap(model: nn.Module, dataset, view: str = "x", batch_size: int = 512, max_distance: float = 1.5) -> float:
    """Centre-detection AP (:func:`~distillery.objectives.foreground_grid.center_average_precision`) of a BEV
    detector whose output has a ``heatmap`` ``[B, 1, H, W]``, over a dataset with ``boxes``."""
    was = model.training
    model.eval()
    try:
        x = dataset.fields[view] if view != "x" else dataset.x
        heat = torch.cat([torch.sigmoid(model(x[i:i + batch_size])["heatmap"]).amax(1) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was)
    return center_average_precision(heat, dataset.fields["boxes"], max_distance=max_distance)
