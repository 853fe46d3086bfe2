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

:func:`sla_config` and :func:`multitask_config` state the method and its baseline as config
fragments. Config: ``configs/sla_digits.yaml``; claim check: ``distillery reproduce sla_sd``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..batch import BatchView
from ..data.enumeration import TransformEnumerator
from ..engine.distiller import Distiller, Term
from ..errors import ConfigError
from . import Recipe, register_recipe
from ._fragments import terms_from

RECIPE = register_recipe(
    Recipe("sla", "Lee, Hwang & Shin 2020, SLA, arXiv:1910.05872", "sla_digits.yaml",
           "Joint (class x transform) labels, aggregated inference, and self-distillation into one pass")
)

__all__ = ["RECIPE", "evaluate_sla", "inference_cost", "multitask_config", "multitask_terms", "rotation_enumerator", "rotations_view",
           "sla_config", "sla_distiller", "sla_terms"]


def rotation_enumerator(num_transforms: int = 4) -> TransformEnumerator:
    """The paper's transforms for images: rotations by 0, 90, 180, 270 degrees."""
    return TransformEnumerator.rotations(num_transforms)


def rotations_view(num_transforms: int = 4) -> list[dict[str, Any]]:
    """The student view of :func:`rotation_enumerator` as config transforms (``enumerate`` over
    ``rotate90`` by ``k = 0 .. M-1``)."""
    return [{"name": "enumerate", "transforms": [{"name": "rotate90", "k": k} for k in range(num_transforms)]}]


def sla_config(num_transforms: int, backbone: Mapping[str, Any] | None = None, self_distill: bool = True,
               temperature: float = 1.0, beta: float = 1.0) -> dict[str, Any]:
    """The method as config fragments: ``sla_ce`` on the joint head (+ ``sla_sd`` into the
    single-pass head), the enumerated rotations as the student's view and, with ``backbone``
    (a model section), the ``joint_label`` student around it."""
    objectives: list[dict[str, Any]] = [{"kind": "sla_ce", "params": {"num_transforms": num_transforms}}]
    if self_distill:
        objectives.append({"kind": "sla_sd", "params": {"num_transforms": num_transforms, "temperature": temperature, "beta": beta}})
    out: dict[str, Any] = {"objectives": objectives, "data": {"student_view": rotations_view(num_transforms)}}
    if backbone is not None:
        params: dict[str, Any] = {"num_transforms": num_transforms, "backbone": dict(backbone)}
        if self_distill:
            params["single_head"] = True
        out["student"] = {"name": "joint_label", "params": params}
    return out


def multitask_config(num_transforms: int, backbone: Mapping[str, Any] | None = None, beta: float = 1.0) -> dict[str, Any]:
    """The multi-task baseline as config fragments: class CE on every copy + ``beta`` *
    transform-prediction CE (``L = CE(u(t_j x), y) + beta * CE(v(t_j x), j)``, averaged over the
    copies), the enumerated rotations and, with ``backbone``, the ``transform_multitask`` student."""
    m = num_transforms
    out: dict[str, Any] = {
        "objectives": [
            {"kind": "sla_ce", "name": "class_ce", "params": {"num_transforms": m, "labels": "class"},
             "inputs": {"student": "student.logits"}},
            {"kind": "sla_ce", "name": "transform_ce", "params": {"num_transforms": m, "labels": "transform"},
             "inputs": {"student": "student.transform"}, "weight": beta},
        ],
        "data": {"student_view": rotations_view(m)},
    }
    if backbone is not None:
        out["student"] = {"name": "transform_multitask", "params": {"num_transforms": m, "backbone": dict(backbone)}}
    return out


def sla_terms(num_transforms: int, self_distill: bool = True, temperature: float = 1.0, beta: float = 1.0) -> list[Term]:
    """``sla_ce`` on the joint head (+ ``sla_sd`` into the single-pass head): :func:`sla_config`."""
    return terms_from(sla_config(num_transforms, None, self_distill, temperature, beta)["objectives"])


def multitask_terms(num_transforms: int, beta: float = 1.0) -> list[Term]:
    """The multi-task baseline's terms (:func:`multitask_config`)."""
    return terms_from(multitask_config(num_transforms, beta=beta)["objectives"])


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
