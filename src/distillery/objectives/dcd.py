"""Dynamic contrastive distillation (DCD) for image-text retrieval, and the pairwise
contrastive loss that trains a scorer's ``[B, B]`` score matrix.

DCD (J. Rao, L. Ding, S. Qi, M. Fang, Y. Liu, L. Shen, D. Tao, 2022, "Dynamic Contrastive
Distillation for Image-Text Retrieval", arXiv:2207.01426) compresses a fusion retrieval
model into a dual encoder: "we propose to use a teacher network to estimate the difficult
samples for students, making the students absorb the powerful knowledge from pre-trained
teachers, and master the knowledge from hard samples ... we propose dynamic distillation to
dynamically learn samples of different difficulties, from the perspective of better
balancing the difficulty of knowledge and students' self-learning ability."

Per query ``i`` and direction (image->text on the rows, text->image on the columns), with the
student's similarities ``S = cos(image_i, text_j) / tau`` and the teacher's scores
``T / tau_t`` (both ``[B, B]``, positives on the diagonal):

* self-learning: InfoNCE over the whole batch, ``nce_i = -log softmax(S_i)_i``;
* teacher-mined hard negatives: the ``k`` negatives the teacher scores highest
  (:func:`distillery.objectives.mining.candidate_set`), giving candidates ``C_i = {i} + hard_k(i)``;
* contrastive distillation on those candidates: ``kl_i = KL(softmax(T_i[C_i] / tau_t) ||
  softmax(S_i[C_i]))``;
* dynamic weighting by difficulty (:class:`distillery.weighting.difficulty.DifficultyWeight`):
  ``loss_i = alpha_i * kl_i + (1 - alpha_i) * nce_i`` with ``alpha_i = p_t(i) (1 - p_s(i))``,
  the teacher's and the student's probabilities of the positive among ``C_i`` (no gradient).

The abstract does not give the exact losses; the forms above (candidate-set KL, the
``alpha`` formula) are our reading [inferred]. A sample's loss is the mean of its two
directions.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..weighting.difficulty import DifficultyWeight
from ..errors import ConfigError, ShapeError
from .mining import candidate_set, gather_candidates
from ..registry import OBJECTIVES
from ._common import (
    check_reduction,
    check_temperature,
    compute_dtype,
    kl_from_log_probs,
    reduce,
    shape_str,
)
from .base import Objective

__all__ = ["DynamicContrastiveDistillation", "PairwiseScoreCE", "dcd_loss", "pairwise_score_ce_loss"]


def _direction(student: Tensor, teacher: Tensor, k: int, weighting: DifficultyWeight, weights: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per-query DCD loss of one direction (rows are queries); returns ``(loss [B], alpha [B])``."""
    nce = -F.log_softmax(student, dim=1).diagonal()
    index = candidate_set(teacher, k)
    log_ps = F.log_softmax(gather_candidates(student, index), dim=1)
    log_pt = F.log_softmax(gather_candidates(teacher, index), dim=1)
    kl = kl_from_log_probs(log_pt, log_ps)
    alpha = weights if weights is not None else weighting(log_pt[:, 0].exp(), log_ps[:, 0].exp())
    alpha = alpha.detach().to(nce.dtype)
    return alpha * kl + (1.0 - alpha) * nce, alpha


def dcd_loss(
    image: Tensor,
    text: Tensor,
    teacher_scores: Tensor,
    temperature: float = 0.07,
    teacher_temperature: float = 1.0,
    num_hard_negatives: int = 8,
    weighting: DifficultyWeight | None = None,
    weights: tuple[Tensor, Tensor] | None = None,
    reduction: str = "mean",
) -> Tensor:
    """DCD loss of a dual-encoder student against a teacher's pair scores (see the module
    docstring).

    Args:
        image, text: the student's embeddings ``[B, D]`` (pair ``i`` is row ``i`` of each;
            L2-normalised here).
        teacher_scores: ``[B, B]``, ``teacher_scores[i, j]`` the teacher's score (logit) of
            image ``i`` with text ``j``; divided by ``teacher_temperature``.
        temperature: the student's ``tau``.
        num_hard_negatives: ``k`` teacher-mined negatives per query (clipped to ``B - 1``).
        weighting: the :class:`~distillery.weighting.difficulty.DifficultyWeight` (default dynamic).
        weights: explicit ``(alpha_i2t [B], alpha_t2i [B])`` instead of ``weighting``.

    Returns ``[B]`` (mean of the two directions per pair) or its mean.
    """
    check_reduction(reduction)
    tau = check_temperature("temperature", temperature)
    tau_t = check_temperature("teacher_temperature", teacher_temperature)
    if image.ndim != 2 or image.shape != text.shape:
        raise ShapeError(f"dcd: image and text embeddings must both be [B, D], got {shape_str(image)} and {shape_str(text)}.")
    b = image.shape[0]
    if teacher_scores.shape != (b, b):
        raise ShapeError(f"dcd: teacher scores must be [B, B] = [{b}, {b}] (image i vs text j of the batch), got "
                         f"{shape_str(teacher_scores)}. Use a teacher with a 'scores' output (fusion_scorer, scoring_dual_encoder).")
    if b < 2:
        raise ShapeError("dcd: a batch needs at least 2 pairs (one positive and one negative per query).")
    dtype = compute_dtype(image, text, teacher_scores)
    i, t = F.normalize(image.to(dtype), dim=1), F.normalize(text.to(dtype), dim=1)
    s = i @ t.T / tau
    teacher = teacher_scores.detach().to(dtype) / tau_t
    weighting = weighting or DifficultyWeight()
    w_i2t, w_t2i = weights if weights is not None else (None, None)
    i2t, _ = _direction(s, teacher, num_hard_negatives, weighting, w_i2t)
    t2i, _ = _direction(s.T, teacher.T, num_hard_negatives, weighting, w_t2i)
    return reduce(0.5 * (i2t + t2i), reduction)


@OBJECTIVES.register("dcd")
class DynamicContrastiveDistillation(Objective):
    """DCD: teacher-mined hard negatives, similarity-distribution distillation on them, and
    InfoNCE self-learning, mixed per sample by difficulty (Rao et al. 2022, arXiv:2207.01426).

    See :func:`dcd_loss` and the module docstring for the formula.

    Args:
        temperature: the student's similarity temperature ``tau`` (CLIP's 0.07).
        teacher_temperature: divides the teacher's scores (1: they are logits already).
        num_hard_negatives: ``k``, the teacher-mined negatives per query.
        weighting: ``"dynamic"`` (``alpha_i = p_t (1 - p_s)``) or ``"static"`` (``alpha``).
        alpha: the static mixing weight.

    Args of ``forward``: ``image`` ``[B, D]`` (``student.image``), ``text`` ``[B, D]``
    (``student.text``), ``teacher`` ``[B, B]`` (``teacher.scores``). ``last_alpha`` holds the
    mean ``alpha`` of the last call (for logging).

    Example:
        >>> import torch
        >>> i, t, s = torch.randn(6, 8), torch.randn(6, 8), torch.randn(6, 6)
        >>> DynamicContrastiveDistillation(num_hard_negatives=2)(i, t, s).shape
        torch.Size([])
    """

    inputs = {"image": "student.image", "text": "student.text", "teacher": "teacher.scores"}
    target_space = None

    def __init__(
        self,
        temperature: float = 0.07,
        teacher_temperature: float = 1.0,
        num_hard_negatives: int = 8,
        weighting: str = "dynamic",
        alpha: float = 0.5,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        self.temperature = check_temperature("temperature", temperature)
        self.teacher_temperature = check_temperature("teacher_temperature", teacher_temperature)
        if isinstance(num_hard_negatives, bool) or not isinstance(num_hard_negatives, int) or num_hard_negatives < 1:
            raise ConfigError(f"dcd: num_hard_negatives must be a positive int, got {num_hard_negatives!r}.")
        self.num_hard_negatives = num_hard_negatives
        self.weighting = DifficultyWeight(weighting, alpha)

    def forward(self, image: Tensor, text: Tensor, teacher: Tensor) -> Tensor:
        return dcd_loss(image, text, teacher, self.temperature, self.teacher_temperature, self.num_hard_negatives,
                        self.weighting, None, self.reduction)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, teacher_temperature={self.teacher_temperature}, "
                f"num_hard_negatives={self.num_hard_negatives}, weighting={self.weighting!r}, reduction={self.reduction!r}")


def pairwise_score_ce_loss(scores: Tensor, reduction: str = "mean") -> Tensor:
    """Symmetric cross-entropy of a pair-score matrix ``[B, B]`` toward its diagonal:
    per pair ``0.5 * (-log softmax(scores[i, :])_i - log softmax(scores[:, i])_i)``."""
    check_reduction(reduction)
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise ShapeError(f"pairwise_score_ce: scores must be a square [B, B] matrix, got {shape_str(scores)}.")
    s = scores.to(compute_dtype(scores))
    per_pair = -0.5 * (F.log_softmax(s, dim=1).diagonal() + F.log_softmax(s, dim=0).diagonal())
    return reduce(per_pair, reduction)


@OBJECTIVES.register("pairwise_score_ce")
class PairwiseScoreCE(Objective):
    """Trains a pairwise scorer (a fusion model) for retrieval: its scores of every (image,
    text) pair of the batch are logits, the true pair the target, in both directions (the
    contrastive image-text matching used to fine-tune fusion models for retrieval, e.g.
    ViLT's and METER's ITR heads scored against in-batch negatives).

    Args of ``forward``: ``scores`` ``[B, B]`` (default ``student.scores``). See
    :func:`pairwise_score_ce_loss`.
    """

    inputs = {"scores": "student.scores"}
    target_space = None

    def forward(self, scores: Tensor) -> Tensor:
        return pairwise_score_ce_loss(scores, self.reduction)
