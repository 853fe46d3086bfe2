"""Guided (ground-truth-weighted) iterated self-distillation.

Borup & Andersen 2021, "Even your Teacher Needs Guidance: Ground-Truth Targets Dampen
Regularization Imposed by Self-Distillation" (NeurIPS 2021), arXiv:2102.13088. "We show that
any such function obtained with self-distillation can be calculated directly as a function of
the initial fit, and that infinite distillation steps yields the same optimization problem as
the original with amplified regularization. Furthermore, we provide a closed form solution for
the optimal choice of weighting parameter at each step."

The method: generation 0 fits the labels; generation ``t`` fits (with the same architecture
and ``l2`` regularization) the weighted objective
``alpha * loss(student, labels) + (1 - alpha) * loss(student, generation t-1)``. For squared
error this equals the loss to the mixed target ``alpha * y + (1 - alpha) * f^(t-1)``, which is
what :class:`~distillery.weighting.GroundTruthMix` builds (on values for regression, on
probabilities for classification). ``alpha = 0`` is pure self-distillation (Mobahi et al.
2020), whose repeated regularization collapses the fit; ``alpha > 0`` converges to ridge
regression with regularization ``lam / alpha``.

distillery expresses it with the generation loop (:mod:`distillery.engine.generations`,
teacher policy ``previous_generation``) and these terms; the kernel ridge regression setting,
where all three results are exact, is :mod:`distillery.theory.krr`. Config (one distillation
step): ``configs/guided_sd_digits.yaml``; claim check: ``distillery reproduce guided_sd``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from ..engine.distiller import Term
from ..engine.generations import GenerationLoop, TermsFn, previous_generation
from ..errors import ConfigError
from ..theory.krr import (
    closed_form_fit,
    guided_path,
    limit_fit,
    optimal_alpha,
    step_candidates,
)
from . import Recipe, register_recipe
from ._fragments import terms_from

__all__ = [
    "RECIPE",
    "TASKS",
    "closed_form_fit",
    "guided_path",
    "guided_sd_loop",
    "guided_sd_objectives",
    "guided_sd_terms",
    "limit_fit",
    "optimal_alpha",
    "step_candidates",
]

RECIPE = register_recipe(
    Recipe("guided_sd", "Borup & Andersen 2021, arXiv:2102.13088", "guided_sd_digits.yaml",
           "Iterated self-distillation toward alpha * labels + (1 - alpha) * the previous generation")
)

TASKS = ("classification", "regression")


def guided_sd_objectives(alpha: float, generation: int, task: str = "classification", temperature: float = 1.0) -> list[dict[str, Any]]:
    """The ``objectives`` of generation ``generation``: labels at generation 0, the mixed target after.

    * ``"classification"``: generation 0 is cross-entropy (``ce``); generation ``t >= 1`` is KD
      (``sd``, with ``temperature``) toward ``alpha * one_hot(y) + (1 - alpha) * softmax(teacher / T)``.
    * ``"regression"`` (targets ``y`` ``[B, D]``): generation 0 is the squared error to ``y``
      (``mse``); generation ``t >= 1`` the squared error to ``alpha * y + (1 - alpha) * teacher``
      (``sd``; the paper's weighted MSE up to a constant).
    """
    if task not in TASKS:
        raise ConfigError(f"guided_sd: task must be one of {TASKS}, got {task!r}.")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"guided_sd: alpha must be in [0, 1], got {alpha}.")
    if task == "classification":
        if generation == 0:
            return [{"kind": "ce"}]
        return [{"kind": "kd", "name": "sd", "params": {"temperature": temperature}, "mix": {"alpha": alpha}}]
    if generation == 0:
        return [{"kind": "mse", "name": "mse", "inputs": {"teacher": "batch.y"}}]
    return [{"kind": "mse", "name": "sd", "mix": {"alpha": alpha}}]


def guided_sd_terms(alpha: float, task: str = "classification", temperature: float = 1.0) -> TermsFn:
    """The terms of each generation (:func:`guided_sd_objectives`): labels at generation 0,
    the mixed target ``alpha * y + (1 - alpha) * teacher`` after."""
    guided_sd_objectives(alpha, 0, task, temperature)  # checks the arguments now, not at the first generation

    def terms(generation: int) -> list[Term]:
        return terms_from(guided_sd_objectives(alpha, generation, task, temperature))

    return terms


def guided_sd_loop(
    make_student: Callable[[], nn.Module],
    train_data: Dataset,
    *,
    alpha: float,
    generations: int,
    task: str = "classification",
    temperature: float = 1.0,
    init: str = "reinit",
    **loop_kwargs: Any,
) -> GenerationLoop:
    """A :class:`~distillery.engine.generations.GenerationLoop` running guided self-distillation.

    Each generation's teacher is a frozen copy of the previous one; students are
    re-initialised by default, as in the paper. ``loop_kwargs`` go to the loop (``trainer``
    or ``fit``, ``metrics``, ``initial``, ``out_dir``, ``seed``, ...).
    """
    return GenerationLoop(make_student, guided_sd_terms(alpha, task, temperature), train_data,
                          generations=generations, teacher=previous_generation, init=init, **loop_kwargs)
