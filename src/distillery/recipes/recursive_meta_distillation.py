"""Recursive meta-distillation: generations anchored to a base teacher.

"Recursive Meta-Distillation: An Axiomatic Framework for Iterative Knowledge Refinement"
(2025, 2 authors; seed paper #12). "We introduce an axiomatic and operator-theoretic framework
for recursive meta-distillation, formalizing iterative knowledge distillation as a sequence of
probability-distribution operators with explicit anchoring to base teachers ... Under mild
realizability and convexity assumptions, we show that anchored recursive distillation induces
contraction in KL divergence, yielding geometric convergence to base teacher distributions and
a unique, globally attractive fixed point."

The abstract fixes no operator ("without specifying particular algorithms or loss
functions"); distillery provides the two standard anchored operators as a teacher kind,
:class:`~distillery.teachers.anchored.AnchoredTeacher` (``kind: anchored`` in configs):
arithmetic ``T(q) = lam p + (1 - lam) q`` and geometric ``T(q) ∝ p^lam q^(1 - lam)``. A
generation is the student trained by KD (temperature 1, i.e. the KL projection onto its model
family) toward ``T(q_{t-1})``; the generation loop (:func:`anchored_loop`) runs the sequence.

For a student that cannot represent ``p`` (a projection ``Pi`` onto a model family) trained
with an ``l2`` penalty ``mu/2 ||w||^2``, the arithmetic fixed point is known exactly: the
gradient of ``CE(lam p + (1 - lam) q_w, q_w')`` is linear in the target, so at a fixed point
``lam J^T (q* - p) + mu w* = 0``, the optimality condition of projecting ``p`` itself with
regularization ``mu / lam`` (:func:`projected_fixed_point`): anchoring amplifies the
regularization by ``1 / lam``, as ground-truth mixing does in Borup & Andersen 2021.

Config (one run in which a snapshot of the student plays ``q_t``):
``configs/recursive_meta_distillation_digits.yaml``; claim check:
``distillery reproduce recursive_meta_distillation``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..engine.distiller import Distiller, Term
from ..engine.generations import FullBatchLBFGS, GenerationLoop, TermsFn, anchored_to
from ..teachers import FrozenTeacher, Teacher
from ..teachers.anchored import AnchoredTeacher, anchor_log_probs, anchor_probs
from . import Recipe, register_recipe
from ._fragments import terms_from

__all__ = [
    "RECIPE",
    "AnchoredTeacher",
    "anchor_log_probs",
    "anchor_probs",
    "anchored_loop",
    "anchored_objectives",
    "anchored_terms",
    "projected_fixed_point",
]

RECIPE = register_recipe(
    Recipe("recursive_meta_distillation", "Recursive Meta-Distillation (2025), seed paper #12",
           "recursive_meta_distillation_digits.yaml",
           "Generations distilled toward targets anchored to a base teacher (arithmetic or geometric)")
)


def anchored_objectives(generation: int, first: str = "labels") -> list[dict[str, Any]]:
    """The ``objectives`` of generation ``generation``: cross-entropy on the labels at generation 0
    (``first="labels"``), otherwise KD (temperature 1) toward the teacher: the base teacher at
    generation 0 (``first="teacher"``), the anchored teacher after, i.e. ``KL(T(q_{t-1}) || q_t)``."""
    if generation == 0 and first == "labels":
        return [{"kind": "ce"}]
    return [{"kind": "kd", "params": {"temperature": 1.0}}]


def anchored_terms(first: str = "labels") -> TermsFn:
    """Generation 0: cross-entropy on the labels (``first="labels"``) or KD toward the base
    teacher (``first="teacher"``); generations ``t >= 1``: KD (temperature 1) toward the
    anchored teacher, i.e. ``KL(T(q_{t-1}) || q_t)`` (:func:`anchored_objectives`)."""

    def terms(generation: int) -> list[Term]:
        return terms_from(anchored_objectives(generation, first))

    return terms


def anchored_loop(
    make_student: Callable[[], nn.Module],
    base: Teacher | nn.Module,
    train_data: Dataset,
    *,
    strength: float,
    mode: str = "arithmetic",
    generations: int,
    first: str = "labels",
    init: str = "reinit",
    **loop_kwargs: Any,
) -> GenerationLoop:
    """Generations ``q_t = Pi(T(q_{t-1}))`` anchored to ``base`` with weight ``strength``.

    ``first="labels"`` trains generation 0 on the labels; ``first="teacher"`` distils it from
    ``base`` (so ``strength=0`` gives classic KD followed by unanchored self-distillation).
    ``loop_kwargs`` go to :class:`~distillery.engine.generations.GenerationLoop`.
    """
    anchor = base if isinstance(base, Teacher) else FrozenTeacher(base)
    policy = anchored_to(anchor, strength, mode, first=anchor if first == "teacher" else None)
    return GenerationLoop(make_student, anchored_terms(first), train_data, generations=generations,
                          teacher=policy, init=init, **loop_kwargs)


def projected_fixed_point(
    make_student: Callable[[], nn.Module],
    base: Teacher | nn.Module,
    train_data: Dataset,
    *,
    strength: float,
    l2: float,
    dtype: torch.dtype = torch.float64,
    **lbfgs: Any,
) -> nn.Module:
    """The fixed point of arithmetic anchoring for an ``l2``-regularised projection.

    Solves ``min_w CE(p, q_w) + (l2 / strength) / 2 * ||w||^2`` over the training set by
    full-batch L-BFGS (the regularization amplified by ``1 / strength``); this is the unique
    fixed point of ``q -> Pi_l2(strength p + (1 - strength) q)`` for a convex family.
    """
    if not 0.0 < strength <= 1.0:
        from ..errors import ConfigError

        raise ConfigError(f"projected_fixed_point: strength must be in (0, 1], got {strength}.")
    anchor = base if isinstance(base, Teacher) else FrozenTeacher(base)
    student = make_student()
    distiller = Distiller(student, anchor, terms_from(anchored_objectives(1)))
    FullBatchLBFGS(train_data, l2=l2 / strength, dtype=dtype, **lbfgs)(distiller, 0)
    return student.eval()
