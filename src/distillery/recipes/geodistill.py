"""GeoDistill: field-of-view self-distillation for weakly supervised cross-view localization.

Tong et al. 2025, "GeoDistill: Geometry-Guided Self-Distillation for Weakly Supervised
Cross-View Localization", arXiv:2507.10935. "the teacher model localizes a panoramic image,
while the student model predicts locations from a limited FoV counterpart created by
FoV-based masking. By aligning the student's predictions with those of the teacher, the
student focuses on key features ... This results in more accurate predictions and reduced
uncertainty, regardless of whether the query images are panoramas or limited FoV images."

Which teacher: the abstract does not say. The authors' code (github.com/tongshw/GeoDistill,
``train_vigor.py``) starts student and teacher from the same weakly supervised model, keeps
the teacher frozen within an epoch and moves it toward the student by an EMA (decay 0.9 per
epoch), and trains the student with the cross-entropy between the teacher's and the
student's softmaxed localization maps (equal temperatures in the released config), with no
other loss. So distillery uses an :class:`~distillery.teachers.EMATeacher` reading the full
panorama (``view: x``) while the student reads an FoV-masked one
(:class:`~distillery.data.miniature.fov.FieldOfView`); the per-epoch decay ``d`` becomes the per-step
momentum ``d ** (1 / steps_per_epoch)`` (:func:`ema_momentum_per_step`). The loss is ``kd``
(T^2 KL(teacher || student) over the cells): the soft cross-entropy minus the teacher's
entropy, which has the same gradient.

Two stages: (1) weakly supervised training (here: cross-entropy on noisy cell labels) on
panoramas; (2) GeoDistill from that model. ``configs/geodistill_digits.yaml`` is stage 2
(set ``student.checkpoint`` to a stage-1 model; the reproduction ``distillery reproduce
geodistill`` runs both stages).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..batch import BatchView
from ..data.miniature.fov import FieldOfView
from ..engine.distiller import Distiller
from ..errors import ConfigError, ShapeError
from ..teachers import EMATeacher
from . import Recipe, register_recipe
from ._fragments import ema_teacher, terms_from

RECIPE = register_recipe(
    Recipe("geodistill", "Tong et al. 2025, GeoDistill, arXiv:2507.10935", "geodistill_digits.yaml",
           "EMA teacher on the panorama teaches the same network on a limited field of view (heatmap KL)")
)

__all__ = ["RECIPE", "ema_momentum_per_step", "fov_spec", "geodistill_config", "geodistill_distiller", "localization_metrics",
           "ring_fov"]


def ring_fov(min_degrees: float = 180.0, max_degrees: float = 240.0, ring: int = 8) -> FieldOfView:
    """FoV masking of the panorama ring (the last ``ring`` rows of a ``tile_localization``
    sample); the paper's code draws 180 to 240 degrees."""
    return FieldOfView(min_degrees, max_degrees, dim=1, start=-ring, length=ring)


def fov_spec(min_degrees: float = 180.0, max_degrees: float = 240.0, ring: int = 8) -> dict[str, Any]:
    """:func:`ring_fov` as a config transform (``fov_mask``)."""
    return {"name": "fov_mask", "min_degrees": min_degrees, "max_degrees": max_degrees, "dim": 1, "start": -ring, "length": ring}


def ema_momentum_per_step(per_epoch: float, steps_per_epoch: int) -> float:
    """The per-step EMA momentum equivalent to ``per_epoch`` once per epoch: ``d ** (1/S)``."""
    if not 0.0 <= per_epoch <= 1.0 or steps_per_epoch < 1:
        raise ConfigError(f"need 0 <= per_epoch <= 1 and steps_per_epoch >= 1, got {per_epoch}, {steps_per_epoch}.")
    return per_epoch ** (1.0 / steps_per_epoch)


def geodistill_config(momentum: float, fov: dict[str, Any] | None = None, temperature: float = 1.0) -> dict[str, Any]:
    """Stage 2 as config fragments: an ``ema`` teacher (constant ``momentum``) reading the full
    input ``x``, the student reading ``fov`` (a :func:`fov_spec`; default the paper's 180-240
    degrees), and ``kd`` between the location heatmaps; no label term."""
    return {"teacher": ema_teacher(momentum, None, view="x"),
            "objectives": [{"kind": "kd", "params": {"temperature": temperature}}],
            "data": {"student_view": [fov if fov is not None else fov_spec()]}}


def geodistill_distiller(student: nn.Module, fov: FieldOfView, momentum: float, temperature: float = 1.0) -> Distiller:
    """Stage 2: EMA teacher on the full input ``x``; student on ``fov(x)``; ``kd`` on the heatmaps
    (:func:`geodistill_config`).

    Build it after the student holds its stage-1 weights: the teacher starts as their copy.
    """
    teacher = EMATeacher(student, momentum=momentum, final_momentum=None, view="x")
    terms = terms_from(geodistill_config(momentum, temperature=temperature)["objectives"])
    return Distiller(student, teacher, terms, student_view=BatchView("x", fov))


def localization_metrics(logits: torch.Tensor, cells: torch.Tensor, grid: int) -> dict[str, float]:
    """Error and uncertainty of location heatmaps on a ``grid x grid`` torus.

    ``logits``: ``[N, grid**2]``; ``cells``: int ``[N]``, the true cells. Returns ``error``
    (mean Euclidean distance, in cells, on the torus between the arg-max cell and the true
    one), ``median_error``, ``accuracy`` (arg-max is the true cell) and ``entropy`` (mean
    entropy of ``softmax(logits)`` in nats; ``log(grid**2)`` is uniform).
    """
    if logits.ndim != 2 or logits.shape[1] != grid * grid or cells.shape != (logits.shape[0],):
        raise ShapeError(f"localization_metrics: expected logits [N, {grid * grid}] and cells [N]; got "
                         f"{list(logits.shape)} and {list(cells.shape)}.")
    pred = logits.argmax(-1)
    pr, pc = pred // grid, pred % grid
    tr, tc = cells // grid, cells % grid
    dr = (pr - tr).abs()
    dc = (pc - tc).abs()
    dr = torch.minimum(dr, grid - dr).double()
    dc = torch.minimum(dc, grid - dc).double()
    dist = torch.sqrt(dr**2 + dc**2)
    logp = F.log_softmax(logits.double(), -1)
    entropy = -(logp.exp() * logp).sum(-1)
    return {
        "error": float(dist.mean()),
        "median_error": float(dist.median()),
        "accuracy": float((pred == cells).double().mean()),
        "entropy": float(entropy.mean()),
        "uniform_entropy": math.log(grid * grid),
    }
