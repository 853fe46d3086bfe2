"""Weighting: how loss terms are combined over training.

* :mod:`.schedules`: a term's weight as a function of the optimizer step (:class:`Constant`,
  :class:`LinearWarmup`, :class:`CosineWarmup`, :class:`StepSchedule`, :class:`CosineSchedule`).
* :mod:`.mix`: :class:`GroundTruthMix` mixes a term's target with the labels,
  ``target = alpha * one_hot(y) + (1 - alpha) * teacher`` (Borup & Andersen 2021; ALBEF).
* Balancers, which set term weights from gradients during training:
  :class:`GradNormBalancer` (:mod:`.gradnorm`) keeps each term's gradient norm at a ratio to
  the task term's; :class:`GradientGuidedModulation` (:mod:`.gam`) is RT-DETRv4's GAM rule.
* Per-sample and per-block weights: :mod:`.difficulty` (DCD's difficulty mix),
  :mod:`.similarity` (task-similarity weights of DistillWeighted), :mod:`.block_accuracy`
  (Momentum-GS's reconstruction-guided block weighting).

Every class registers itself in :data:`distillery.registry.WEIGHTINGS` under its config kind;
the schedules and balancers also register their config sections (``role="schedule"``: a
term's ``weight: {kind: ...}``; ``role="balancer"``: a key of the run's ``weighting``), which
the config schema collects and :mod:`distillery.engine.build` builds through the registry.
"""

# The order of these imports is the order in which the sections register, which is the order
# of the keys of ``weighting`` and of the kinds in error messages. Keep it when sorting imports.
# isort: off
from .schedules import (
    Constant,
    CosineSchedule,
    CosineWarmup,
    LinearWarmup,
    Schedule,
    StepSchedule,
    as_schedule,
)
from .gradnorm import GradNormBalancer
from .gam import GradientGuidedModulation
from .block_accuracy import BlockAccuracyWeight
from .mix import GroundTruthMix
# isort: on

__all__ = [
    "Schedule",
    "Constant",
    "LinearWarmup",
    "CosineWarmup",
    "StepSchedule",
    "CosineSchedule",
    "as_schedule",
    "GroundTruthMix",
    "GradNormBalancer",
    "GradientGuidedModulation",
    "BlockAccuracyWeight",
]
