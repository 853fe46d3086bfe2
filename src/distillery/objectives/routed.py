"""Token-level KD applied only to the samples a data router selects (LinguDistill, #40).

LinguDistill ("LinguDistill: Recovering Linguistic Ability in Vision-Language Models via
Selective Cross-Modal Distillation", 2026; the seed listing gives no arXiv id): "we then
selectively distill the teacher's strong linguistic signal on language-intensive data to
recover language capability, while preserving the student's visual grounding on multimodal
tasks." The router is a per-sample boolean (``route``): KD is computed on routed samples only.

Per routed sample ``b`` and text position ``t`` whose target is not ignored (``targets >= 0``):
``T^2 * KL(softmax(teacher_bt / T) || softmax(student_bt / T))``. ``"mean"``: the mean over
all counted (sample, position) pairs of the batch (0, with a graph, when none is routed);
``"none"``: ``[B]``, each sample's mean over its counted positions (0 if not routed).

Computed by the sequence engine: :func:`distillery.sequence.vlm.routed_token_divergence`, i.e.
:func:`distillery.sequence.divergences.token_divergence` (``forward_kl``) with the router as
its token mask (:func:`distillery.sequence.vlm.router_mask`).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from ..errors import ShapeError
from ..registry import OBJECTIVES
from ._common import (
    check_reduction,
    check_temperature,
    shape_str,
)
from .base import Objective

__all__ = ["RoutedTokenKD", "routed_token_kd_loss"]


def routed_token_kd_loss(
    student: Tensor,
    teacher: Tensor,
    route: Tensor,
    targets: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Token-level forward KL on routed samples.

    Args:
        student, teacher: logits ``[B, L, V]``.
        route: bool (or 0/1) ``[B]``: which samples are distilled.
        targets: int ``[B, L]`` (``-1`` = position not counted, e.g. padding), or ``None``
            (every position counts).
    """
    check_reduction(reduction)
    T = check_temperature("routed_kd: temperature", temperature)
    if student.ndim != 3 or student.shape != teacher.shape:
        raise ShapeError(f"routed_kd: student and teacher logits must both be [B, L, V]; got "
                         f"{shape_str(student)} and {shape_str(teacher)}.")
    b, length = student.shape[:2]
    if route.shape != (b,):
        raise ShapeError(f"routed_kd: route must have shape [{b}], got {shape_str(route)}.")
    if targets is not None and targets.shape != (b, length):
        raise ShapeError(f"routed_kd: targets must have shape [{b}, {length}], got {shape_str(targets)}.")
    # the sequence engine's per-token divergence under the router's mask (imported here: the
    # sequence package is loaded only when used)
    from ..sequence.vlm import router_mask, routed_token_divergence

    if reduction == "mean":
        return routed_token_divergence(student, teacher, route, targets, "forward_kl", temperature=T)
    kl = routed_token_divergence(student, teacher, route, targets, "forward_kl", temperature=T, reduction="none")
    return kl.sum(1) / router_mask(route, targets, length).sum(1).clamp(min=1)  # [B]


@OBJECTIVES.register("routed_kd")
class RoutedTokenKD(Objective):
    """Token-level KD on the samples a router selects (LinguDistill's language-only KD).

    Inputs: ``student`` (``student.tokens``), ``teacher`` (``teacher.tokens``), ``route``
    (``student.language``: True for samples without an image) and ``targets``
    (``student.targets``: positions with target ``-1`` are skipped). Shapes and formula:
    :func:`routed_token_kd_loss`.

    Example (only the first sample is routed, and its last position is padding):
        >>> import torch
        >>> teacher = torch.zeros(2, 3, 4); teacher[..., 0] = 2.0
        >>> route = torch.tensor([True, False])
        >>> targets = torch.tensor([[1, 2, -1], [0, 0, 0]])
        >>> round(RoutedTokenKD()(torch.zeros(2, 3, 4), teacher, route, targets).item(), 4)
        0.468
    """

    inputs: ClassVar[dict[str, str]] = {"student": "student.tokens", "teacher": "teacher.tokens", "route": "student.language",
              "targets": "student.targets"}
    target_space = None

    def __init__(self, temperature: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.temperature = check_temperature("routed_kd: temperature", temperature)

    def forward(self, student: Tensor, teacher: Tensor, route: Tensor, targets: Tensor) -> Tensor:
        return routed_token_kd_loss(student, teacher, route, targets, self.temperature, self.reduction)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}"
