"""Dense feature distillation through a splat: the teacher's features of context views, rendered
into the student's (novel) view, supervise the student's features there.

Paper: D. Shavin, S. Benaim, 2026, "Splat and Distill: Augmenting Teachers with Feed-Forward 3D
Reconstruction For 3D-Aware Distillation" (ICLR 2026), arXiv:2602.06032. "Given 2D features
produced by a teacher model, our method first lifts these features into an explicit 3D Gaussian
representation, in a feedforward manner. These 3D features are then 'splatted' onto novel
viewpoints, producing a set of novel 2D feature maps used to supervise the student model."

The lifting and splatting are geometry only (known depth and poses), so they reduce to an index
map ``index [B, H*W]`` into the stacked context pixels (:func:`distillery.generative.multiview.splat_index`,
``-1`` for holes); the loss compares the student's features ``s`` with the rendered teacher
features ``t = splat(teacher, index)`` on the covered pixels ``M`` (holes are left out, as the
authors mask pixels the splat does not reach):

* ``standardized_mse`` (default): ``mean_{q in M, c} (z(s)_cq - z(t)_cq)^2`` with ``z`` the
  per-sample, per-channel standardisation over ``M`` (``z(f)_c = (f_c - mean_M f_c) /
  sqrt(var_M f_c + eps)``, population variance). A map standardised per channel cannot collapse
  to a constant, which stands in for the centring of the paper's DINO-head cross-entropy
  [inferred substitute];
* ``cosine``: ``mean_{q in M} (1 - cos(s_q, t_q))`` over channels;
* ``mse``: ``mean_{q in M, c} (s_cq - t_cq)^2``.

A sample with no covered pixel contributes 0.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, ShapeError
from ..generative.multiview import splat_features
from ..registry import OBJECTIVES
from ._common import check_reduction, reduce, shape_str, upcast
from .base import Objective

__all__ = ["DISTANCES", "SplatFeatureKD", "masked_standardize", "splat_feature_loss"]

DISTANCES = ("standardized_mse", "cosine", "mse")


def masked_standardize(features: Tensor, mask: Tensor, eps: float = 1e-5) -> Tensor:
    """Standardise ``features [B, C, H, W]`` per sample and channel over the pixels where
    ``mask [B, H, W]`` (bool or 0/1) is set: ``(f - mean) / sqrt(var + eps)`` with the
    population mean and variance over those pixels. Pixels outside the mask are transformed
    with the same statistics (and are meant to be ignored)."""
    if features.ndim != 4 or mask.shape != (features.shape[0], *features.shape[-2:]):
        raise ShapeError(f"masked_standardize: features [B, C, H, W] and mask [B, H, W] needed, got "
                         f"{shape_str(features)} and {shape_str(mask)}.")
    m = mask.to(features.dtype).unsqueeze(1)
    n = m.sum(dim=(-2, -1), keepdim=True).clamp_min(1.0)
    mean = (features * m).sum(dim=(-2, -1), keepdim=True) / n
    var = ((features - mean).pow(2) * m).sum(dim=(-2, -1), keepdim=True) / n
    return (features - mean) / torch.sqrt(var + eps)


def splat_feature_loss(student: Tensor, teacher: Tensor, index: Tensor, distance: str = "standardized_mse",
                       eps: float = 1e-5, reduction: str = "mean") -> Tensor:
    """Splat-and-distill loss between the student's features of a target view and the teacher's
    features of ``V`` context views rendered into it.

    ``student [B, C, H, W]``; ``teacher [B, V, C, H, W]`` (or ``[B, C, H, W]``: one context view);
    ``index [B, H*W]`` (int64, into the ``V*H*W`` stacked context pixels, ``-1`` for a hole).
    ``distance``: one of :data:`DISTANCES` (see the module). Returns ``[B]`` or a scalar.
    """
    check_reduction(reduction)
    if distance not in DISTANCES:
        raise ConfigError(f"splat_kd: distance must be one of {DISTANCES}, got {distance!r}.")
    if teacher.ndim == 4:
        teacher = teacher.unsqueeze(1)
    if student.ndim != 4 or teacher.ndim != 5 or teacher.shape[0] != student.shape[0] or teacher.shape[2:] != student.shape[1:]:
        raise ShapeError(f"splat_kd: student [B, C, H, W] and teacher [B, V, C, H, W] of the same C, H, W needed, got "
                         f"{shape_str(student)} and {shape_str(teacher)}.")
    B, _, H, W = student.shape
    if index.shape != (B, H * W) or index.dtype not in (torch.int64, torch.int32):
        raise ShapeError(f"splat_kd: index must be an integer tensor [{B}, {H * W}], got {shape_str(index)} ({index.dtype}).")
    s, t = upcast(student, teacher)
    assert s is not None and t is not None
    rendered = splat_features(t, index.long())
    mask = (index >= 0).reshape(B, H, W)
    m = mask.to(s.dtype)
    covered = m.sum(dim=(-2, -1))
    if distance == "cosine":
        per_pixel = 1.0 - F.cosine_similarity(s, rendered, dim=1, eps=1e-8)
        per_sample = (per_pixel * m).sum(dim=(-2, -1)) / covered.clamp_min(1.0)
    else:
        if distance == "standardized_mse":
            s, rendered = masked_standardize(s, mask, eps), masked_standardize(rendered, mask, eps)
        per_pixel = (s - rendered).pow(2).mean(dim=1)
        per_sample = (per_pixel * m).sum(dim=(-2, -1)) / covered.clamp_min(1.0)
    return reduce(per_sample, reduction)


@OBJECTIVES.register("splat_kd")
class SplatFeatureKD(Objective):
    """Splat and Distill's dense feature loss (Shavin & Benaim 2026, arXiv:2602.06032).

    Inputs: ``student`` (``student.features``, ``[B, C, H, W]``), ``teacher``
    (``teacher.features`` of the context view(s), ``[B, C, H, W]`` or ``[B, V, C, H, W]``) and
    ``index`` (``batch.splat_index``, ``[B, H*W]``, from
    :func:`distillery.generative.multiview.splat_index`). See :func:`splat_feature_loss`.

    Example::

        >>> obj = SplatFeatureKD(distance="cosine")
        >>> s, t = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
        >>> loss = obj(student=s, teacher=t, index=torch.arange(9).repeat(2, 1))
    """

    inputs: ClassVar[dict[str, str]] = {"student": "student.features", "teacher": "teacher.features", "index": "batch.splat_index"}

    def __init__(self, distance: str = "standardized_mse", eps: float = 1e-5, reduction: str = "mean") -> None:
        super().__init__(reduction)
        if distance not in DISTANCES:
            raise ConfigError(f"splat_kd: distance must be one of {DISTANCES}, got {distance!r}.")
        if not float(eps) > 0:
            raise ConfigError(f"splat_kd: eps must be > 0, got {eps!r}.")
        self.distance = distance
        self.eps = float(eps)

    def forward(self, student: Tensor, teacher: Tensor, index: Tensor) -> Tensor:
        return splat_feature_loss(student, teacher, index, self.distance, self.eps, self.reduction)
