"""Ground-truth mixing of a term's target (Borup & Andersen 2021; ALBEF)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import WEIGHTINGS
from .schedules import Schedule, as_schedule


@WEIGHTINGS.register("gt_mix")
class GroundTruthMix:
    """Mix a term's target with the ground truth: ``alpha * one_hot(y) + (1 - alpha) * teacher``.

    The iterated self-distillation target of Borup & Andersen (2021, "Even your Teacher Needs
    Guidance", arXiv:2102.13088) and ALBEF's momentum-distillation target (Li et al. 2021,
    with ``alpha`` there weighting the pseudo-target instead).

    * ``space="logits"``: ``teacher`` holds logits ``[B, K]``; the mix happens on
      probabilities ``softmax(teacher / T)`` and the result ``[B, K]`` is a probability vector.
    * ``space="values"``: ``teacher`` is a regression target and ``labels`` has its shape.

    Rows whose label is ``-1`` (unlabeled; ``space="logits"`` only) keep the pure teacher target.
    ``alpha`` may be a schedule over optimizer steps.
    """

    def __init__(self, alpha: float | Schedule = 0.5) -> None:
        self.alpha = as_schedule(alpha)

    def __call__(
        self,
        teacher: torch.Tensor,
        labels: torch.Tensor,
        step: int,
        *,
        space: str,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        alpha = self.alpha(step)
        if space == "logits":
            probs = F.softmax(teacher.float() / temperature, dim=-1)
            labeled = labels >= 0
            one_hot = F.one_hot(labels.clamp(min=0).long(), probs.shape[-1]).to(probs.dtype)
            mixed = alpha * one_hot + (1 - alpha) * probs
            return torch.where(labeled.unsqueeze(-1), mixed, probs)
        if space == "values":
            labels = labels.to(teacher.dtype)
            if labels.shape != teacher.shape:
                labels = labels.reshape(teacher.shape)
            return alpha * labels + (1 - alpha) * teacher
        raise ConfigError(f"Ground-truth mixing is not defined for target space {space!r}.")
