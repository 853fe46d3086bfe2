"""Per-sample difficulty weighting between learning from the teacher and self-learning.

A sample can be easy for the student (it already ranks the positive first), hard for it but
well understood by the teacher (the teacher's knowledge is worth transferring), or hard for
both (the teacher's soft target is unreliable; the ground truth is the better guide). DCD
(Rao et al. 2022, "Dynamic Contrastive Distillation for Image-Text Retrieval",
arXiv:2207.01426) proposes "dynamic distillation to dynamically learn samples of different
difficulties, from the perspective of better balancing the difficulty of knowledge and
students' self-learning ability". The abstract gives no formula; the weighting here is our
reading of it [inferred]:

``alpha_i = p_t(i) * (1 - p_s(i))``, where ``p_t(i)`` and ``p_s(i)`` are the teacher's and the
student's probabilities of sample ``i``'s positive among its candidates. The sample's loss is
``alpha_i * distill_i + (1 - alpha_i) * self_i``: distillation dominates where the teacher is
sure and the student is not; the student's own contrastive loss dominates where the teacher is
unsure or the student already succeeds. ``alpha`` is treated as a constant (no gradient).

:class:`DifficultyWeight` holds the choice (``dynamic``, or a ``static`` constant ``alpha``
for ablations); :func:`difficulty_weights` is the pure formula.

Example:
    >>> import torch
    >>> w = difficulty_weights(torch.tensor([0.9, 0.9, 0.1]), torch.tensor([0.1, 0.9, 0.1]))
    >>> [round(v, 4) for v in w.tolist()]
    [0.81, 0.09, 0.09]
"""

from __future__ import annotations

import torch

from ..errors import ConfigError, ShapeError

__all__ = ["DifficultyWeight", "difficulty_weights"]

MODES = ("dynamic", "static")


def difficulty_weights(teacher_positive: torch.Tensor, student_positive: torch.Tensor) -> torch.Tensor:
    """``alpha = p_t * (1 - p_s)`` elementwise, detached; both ``[B]`` probabilities in ``[0, 1]``."""
    if teacher_positive.shape != student_positive.shape or teacher_positive.ndim != 1:
        raise ShapeError(f"difficulty_weights needs two [B] tensors, got {list(teacher_positive.shape)} and "
                         f"{list(student_positive.shape)}.")
    return (teacher_positive.detach() * (1.0 - student_positive.detach())).clamp(0.0, 1.0)


class DifficultyWeight:
    """Per-sample mixing weight ``alpha_i`` of a distillation term against a self-learning term.

    Args:
        mode: ``"dynamic"`` (:func:`difficulty_weights`) or ``"static"`` (``alpha`` for every sample).
        alpha: the static weight, in ``[0, 1]``.

    ``__call__(teacher_positive [B], student_positive [B]) -> [B]`` (no gradient).
    """

    def __init__(self, mode: str = "dynamic", alpha: float = 0.5) -> None:
        if mode not in MODES:
            raise ConfigError(f"DifficultyWeight: mode must be one of {MODES}, got {mode!r}.")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"DifficultyWeight: alpha must be in [0, 1], got {alpha!r}.")
        self.mode, self.alpha = mode, float(alpha)

    def __call__(self, teacher_positive: torch.Tensor, student_positive: torch.Tensor) -> torch.Tensor:
        if self.mode == "static":
            if teacher_positive.ndim != 1:
                raise ShapeError(f"DifficultyWeight expects [B] probabilities, got {list(teacher_positive.shape)}.")
            return torch.full_like(teacher_positive.detach(), self.alpha)
        return difficulty_weights(teacher_positive, student_positive)

    def __repr__(self) -> str:
        return f"DifficultyWeight(mode={self.mode!r}" + (f", alpha={self.alpha}" if self.mode == "static" else "") + ")"
