"""SLA+SD: self-supervised label augmentation, aggregated inference and its self-distillation.

Lee, Hwang & Shin 2020, "Self-supervised Label Augmentation via Input Transformations",
ICML 2020, arXiv:1910.05872. "Our main idea is to learn a single unified task with respect to
the joint distribution of the original and self-supervised labels ... It also enables an
aggregated inference which combines the predictions from different augmentations to improve
the prediction accuracy. Furthermore, we propose a novel knowledge transfer technique, which
we refer to as self-distillation, that has the effect of the aggregated inference in a single
(faster) inference."

Wiring in distillery (no teacher object: the teacher is the stop-gradient aggregate of the
student's own joint head, computed from the same forward pass over the M copies, as in the
paper's code):

* student view :class:`~distillery.data.enumeration.TransformEnumerator`: the M transformed
  copies of the batch, stacked transform-major (``[M*B, ...]``);
* student :class:`~distillery.models.miniature.joint_label.JointLabelNet`: a backbone with a joint head
  over ``N*M`` labels and a single-pass head over ``N``;
* terms ``sla_ce`` (joint labels ``i*M + j``) and ``sla_sd`` (``KL(aggregate || single) + beta
  * CE(single, y)``; :mod:`distillery.objectives.joint_label`).

Why not :class:`~distillery.teachers.SelfEnsembleTeacher`: it re-runs the network over the
transforms (M more passes) and averages *one* label space, whereas SLA's aggregate picks, for
copy ``j``, the joint logits of transform ``j`` and averages those logits; the training forward
already holds them. For inference the same idea is :meth:`JointLabelNet.aggregated_logits`.

Config: ``configs/sla_digits.yaml``; claim check: ``distillery reproduce sla_sd``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..batch import BatchView
from ..data.enumeration import TransformEnumerator
from ..engine.distiller import Distiller, Term
from ..errors import ConfigError
from ..objectives.joint_label import SLACrossEntropy, SLASelfDistillation
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("sla", "Lee, Hwang & Shin 2020, SLA, arXiv:1910.05872", "sla_digits.yaml",
           "Joint (class x transform) labels, aggregated inference, and self-distillation into one pass")
)

__all__ = ["RECIPE", "evaluate_sla", "inference_cost", "multitask_terms", "rotation_enumerator", "sla_distiller", "sla_terms"]


def rotation_enumerator(num_transforms: int = 4) -> TransformEnumerator:
    """The paper's transforms for images: rotations by 0, 90, 180, 270 degrees."""
    return TransformEnumerator.rotations(num_transforms)


def sla_terms(num_transforms: int, self_distill: bool = True, temperature: float = 1.0, beta: float = 1.0) -> list[Term]:
    """``sla_ce`` on the joint head (+ ``sla_sd`` into the single-pass head)."""
    terms = [Term("sla_ce", SLACrossEntropy(num_transforms))]
    if self_distill:
        terms.append(Term("sla_sd", SLASelfDistillation(num_transforms, temperature, beta)))
    return terms


def multitask_terms(num_transforms: int, beta: float = 1.0) -> list[Term]:
    """The multi-task baseline: class CE on every copy + ``beta`` * transform-prediction CE
    (``L = CE(u(t_j x), y) + beta * CE(v(t_j x), j)``, averaged over the copies)."""
    return [
        Term("class_ce", SLACrossEntropy(num_transforms, labels="class"), inputs={"student": "student.logits"}),
        Term("transform_ce", SLACrossEntropy(num_transforms, labels="transform"), inputs={"student": "student.transform"},
             weight=beta),
    ]


def sla_distiller(student: nn.Module, enumerator: TransformEnumerator, self_distill: bool = True,
                  temperature: float = 1.0, beta: float = 1.0) -> Distiller:
    """A distiller whose student sees the enumerated copies and learns SLA (+SD).

    ``student`` must return ``joint`` (and ``single`` with ``self_distill``), e.g. a
    ``joint_label`` model built with ``num_transforms=len(enumerator)``.
    """
    m = len(enumerator)
    if getattr(student, "num_transforms", m) != m:
        raise ConfigError(f"The student was built for {student.num_transforms} transforms but the enumerator has {m}.")
    return Distiller(student, None, sla_terms(m, self_distill, temperature, beta), student_view=BatchView("x", enumerator))


def inference_cost(fn, x: torch.Tensor) -> dict[str, float]:
    """FLOPs of ``fn(x)`` per sample, counted by ``torch.utils.flop_counter.FlopCounterMode``
    (matrix multiplies and convolutions; elementwise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn(x)
    return {"flops_per_sample": counter.get_total_flops() / x.shape[0]}


@torch.no_grad()
def evaluate_sla(model: nn.Module, x: torch.Tensor, y: torch.Tensor, enumerator: TransformEnumerator) -> dict[str, Any]:
    """Accuracy of each inference mode of a ``joint_label`` model on ``x [N, ...]``, ``y [N]``,
    with its cost (backbone passes and FLOPs per sample).

    Modes: ``conditional`` (SLA+SI: ``z_(i,0)`` on the original input, 1 pass), ``marginal``
    (the joint softmax summed over transforms, 1 pass), ``aggregated`` (SLA+AG, M passes)
    and, when the model has one, ``single`` (the self-distilled head, 1 pass).
    """
    from ..objectives.joint_label import marginal_joint_logits

    was = model.training
    model.eval()
    try:
        m = len(enumerator)
        modes = {
            "conditional": (lambda v: model.single_pass_logits(v, "conditional"), 1),
            "marginal": (lambda v: marginal_joint_logits(model(v)["joint"], m), 1),
            "aggregated": (lambda v: model.aggregated_logits(v, enumerator), m),
        }
        if getattr(model, "single_head", None) is not None:
            modes["single"] = (lambda v: model.single_pass_logits(v, "single"), 1)
        out: dict[str, Any] = {}
        for name, (fn, passes) in modes.items():
            pred = fn(x).argmax(-1)
            out[name] = {"accuracy": float((pred == y).float().mean()), "passes_per_sample": passes,
                         **inference_cost(fn, x[:8])}
        return out
    finally:
        model.train(was)
