"""Self-E (Yu et al. 2025, "Self-Evaluation Unlocks Any-Step Text-to-Image Generation",
arXiv:2512.22374): config fragments and the recipe entry.

The method itself, :class:`~distillery.generative.objectives.self_eval.SelfE` (registered as
generative method ``"self_e"``), and its loss live in
:mod:`distillery.generative.objectives.self_eval` (the engine imports that package when it
resolves a method name); they are re-exported here.
"""

from __future__ import annotations

from typing import Any

from ..generative.objectives.self_eval import SelfE, self_evaluation_direction, self_evaluation_loss
from . import Recipe, register_recipe

__all__ = ["SelfE", "flow_matching_config", "self_e_config", "self_evaluation_direction", "self_evaluation_loss"]


# -- config fragments ------------------------------------------------------------------------
def self_e_config(*, self_eval_weight: float = 1.0, self_eval_start: int = 0, fake: str = "head", fake_updates: int = 1,
                  prior_fraction: float = 0.5, **params: Any) -> dict[str, Any]:
    """The ``method:`` section of a Self-E run (``self_eval_weight=0``: plain flow matching
    through the same code)."""
    p = {"self_eval_weight": self_eval_weight, "self_eval_start": self_eval_start, "fake": fake,
         "fake_updates": fake_updates, "prior_fraction": prior_fraction, **params}
    return {"method": {"kind": "self_e", "params": p}}


def flow_matching_config(**params: Any) -> dict[str, Any]:
    """The ``method:`` section of the plain flow-matching baseline (Self-E without
    self-evaluation, same sampler and time draws)."""
    return self_e_config(self_eval_weight=0.0, **params)


RECIPE = register_recipe(
    Recipe("self_e", "Yu et al. 2025, Self-E, arXiv:2512.22374", "self_e_mixture2d.yaml",
           "Self-E: flow matching from scratch + self-evaluation with the model's own stop-grad score (any-step)")
)
