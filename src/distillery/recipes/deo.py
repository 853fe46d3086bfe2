"""DEO: dual-teacher distillation for multispectral images, contrastive self-distillation from a
multispectral EMA teacher plus feature distillation from a frozen optical foundation model.

Wolf, Rolih & Čehovin Zajc 2026, "Brewing Stronger Features: Dual-Teacher Distillation for
Multispectral Earth Observation" (CVPR 2026), arXiv:2602.19863. The optical VFM teacher there is
DINOv3; the multispectral teacher follows a DINO-style (EMA) architecture. "We propose a dual-teacher
contrastive distillation framework for multispectral imagery that aligns the student's
pretraining objective with the contrastive self-distillation paradigm of modern optical vision
foundation models (VFMs). Our approach combines a multispectral teacher with an optical VFM
teacher ... our model adapts to multispectral data without compromising performance on
optical-only inputs", with "an average improvement of 3.64 percentage points in semantic
segmentation, 1.2 in change detection, and 1.31 in classification tasks".

In distillery's parts:

* student: :class:`~distillery.models.miniature.bands.BandAdapter`, an optical backbone whose input gets
  the extra bands through a zero-initialised convolution (the input adapter), so the student
  takes more channels than the optical teacher knows;
* teacher 0, the multispectral teacher: an :class:`~distillery.teachers.EMATeacher` of the
  student on its own augmented view, compared by the ``dino`` objective (centering and
  sharpening, Caron et al. 2021) with the student's prototype scores;
* teacher 1, the optical VFM: a :class:`~distillery.teachers.FrozenTeacher` reading the
  optical bands of the very view the student sees (a ``BandAdapter`` with no extra bands),
  whose pooled features the student's match through a linear projector (``cosine``);
* both in one :class:`~distillery.teachers.TeacherBank`; each term addresses its member
  (``teacher.0/logits``, ``teacher.1/backbone.head:input``).

:func:`single_teacher_distiller` is the DINO-only ablation. Optical-only evaluation blanks the
extra bands with the ``zero_bands`` view (:class:`~distillery.data.miniature.bands.ZeroBands`). Miniature:
``distillery reproduce deo``; config: ``configs/deo_multiband_digits.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..batch import BatchView
from ..engine.distiller import Distiller
from ..teachers import EMATeacher, FrozenTeacher, TeacherBank
from . import Recipe, register_recipe
from ._fragments import ema_teacher, frozen_teacher, terms_from

RECIPE = register_recipe(
    Recipe("deo", "Wolf, Rolih & Čehovin Zajc 2026, DEO, arXiv:2602.19863",
           "deo_multiband_digits.yaml",
           "Multispectral student: DINO from its EMA teacher + feature KD from a frozen optical teacher, input adapter for extra bands")
)

__all__ = ["deo_config", "deo_distiller", "single_teacher_config", "single_teacher_distiller"]

#: DINO's settings in both teachers' ``dino`` term (the reproduction's; ``dino`` overrides them).
DINO = {"student_temperature": 0.1, "teacher_temperature": 0.04, "warmup_teacher_temperature": 0.04, "center_momentum": 0.9}


def _dino(out_dim: int, dino: dict | None, **entry: Any) -> dict[str, Any]:
    return {"kind": "dino", "name": "dino", **entry, "params": {"out_dim": out_dim, **DINO, **(dino or {})}}


def _ema(momentum: float, view: list[dict[str, Any]] | None) -> dict[str, Any]:
    return ema_teacher(momentum, 1.0, **({"view": {"transforms": view}} if view is not None else {}))


def _dual_objectives(out_dim: int, feature: str, teacher_feature: str, feature_weight: float, dino: dict | None) -> list[dict[str, Any]]:
    return [
        _dino(out_dim, dino, inputs={"student": "student.logits", "teacher": "teacher.0/logits"}),
        {"kind": "cosine", "name": "optical_kd", "weight": feature_weight, "adapter": "linear",
         "inputs": {"student": f"student.{feature}", "teacher": f"teacher.1/{teacher_feature}"}},
    ]


def single_teacher_config(out_dim: int, view: list[dict[str, Any]] | None = None, *, momentum: float = 0.99,
                          dino: dict | None = None) -> dict[str, Any]:
    """The DINO-only ablation as config fragments: an ``ema`` teacher (``momentum`` -> 1) and a
    ``dino`` term; ``view``: the augmentation (config transforms), drawn by the student and the
    teacher each."""
    out: dict[str, Any] = {"teacher": _ema(momentum, view), "objectives": [_dino(out_dim, dino)]}
    if view is not None:
        out["data"] = {"student_view": {"transforms": view}}
    return out


def deo_config(out_dim: int, optical: dict[str, Any], view: list[dict[str, Any]] | None = None, *, momentum: float = 0.99,
               feature: str = "backbone.head:input", teacher_feature: str = "backbone.head:input",
               feature_weight: float = 1.0, dino: dict | None = None) -> dict[str, Any]:
    """The dual-teacher method as config fragments: a ``bank`` of the EMA teacher (member 0) and
    the frozen optical network ``optical`` (member 1, a model section with its checkpoint); terms
    ``dino`` (student vs ``teacher.0/logits``) and ``optical_kd`` (``1 - cos`` through a linear
    adapter between the student's ``feature`` and member 1's ``teacher_feature``)."""
    bank = {"kind": "bank", "members": [_ema(momentum, view), frozen_teacher(optical)]}
    out: dict[str, Any] = {"teacher": bank, "objectives": _dual_objectives(out_dim, feature, teacher_feature, feature_weight, dino)}
    if view is not None:
        out["data"] = {"student_view": {"transforms": view}}
    return out


def single_teacher_distiller(student: nn.Module, view: Callable[[torch.Tensor], torch.Tensor], out_dim: int, *,
                             momentum: float = 0.99, dino: dict | None = None) -> Distiller:
    """Contrastive self-distillation only: DINO between the student on one augmented view and its
    EMA teacher on another. ``student(x)`` returns prototype scores ``[B, out_dim]``. Terms:
    :func:`single_teacher_config`."""
    teacher = EMATeacher(student, momentum=momentum, final_momentum=1.0, view=BatchView("x", view))
    terms = terms_from(single_teacher_config(out_dim, momentum=momentum, dino=dino)["objectives"])
    return Distiller(student, teacher, terms, student_view=BatchView("x", view))


def deo_distiller(student: nn.Module, optical_teacher: nn.Module, view: Callable[[torch.Tensor], torch.Tensor], out_dim: int, *,
                  momentum: float = 0.99, feature: str = "backbone.head:input", teacher_feature: str = "backbone.head:input",
                  feature_weight: float = 1.0, dino: dict | None = None) -> Distiller:
    """The dual-teacher distiller.

    ``student``: multi-band network returning ``[B, out_dim]`` prototype scores, with features
    at the tap ``feature`` (``[B, D_s]``); ``optical_teacher``: frozen network that takes the
    same multi-band tensor and reads only its optical bands, features at ``teacher_feature``
    (``[B, D_t]``); ``view``: the augmentation (the student and the EMA teacher each draw one).
    Terms (:func:`deo_config`): ``dino`` (student vs ``teacher.0/logits``) and ``optical_kd``
    (``1 - cos(P f_s, f_t)`` with a trained linear projector ``P``, weight ``feature_weight``).
    """
    ema = EMATeacher(student, momentum=momentum, final_momentum=1.0, view=BatchView("x", view))
    bank = TeacherBank([ema, FrozenTeacher(optical_teacher)])
    terms = terms_from(_dual_objectives(out_dim, feature, teacher_feature, feature_weight, dino))
    return Distiller(student, bank, terms, student_view=BatchView("x", view))
