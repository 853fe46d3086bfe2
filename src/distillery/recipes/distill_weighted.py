"""DistillNearest / DistillWeighted: semi-supervised distillation from source models of other
domains, chosen or weighted by task similarity measured on the target data.

Borup, Phoo & Hariharan 2023, "Distilling from Similar Tasks for Transfer Learning on a
Budget" (ICCV), arXiv:2304.12314. "We show how to use task similarity metrics to select a
single suitable source model to distill from ... (DistillNearest) ... we propose a weighted
multi-source distillation method to distill multiple source models trained on different
domains weighted by their relevance for the target task into a single efficient model
(DistillWeighted). Our methods need no access to source data, and merely need features and
pseudo-labels of the source models." Claim: both "outperform both transfer learning from
strong ImageNet initializations as well as ... FixMatch"; "averaged over 8 diverse target
tasks our multi-source method outperforms the baselines by 5.6%-points and 4.5%-points".

The wiring, in distillery's parts:

1. **Score** every frozen source on the few labeled target samples
   (:func:`score_sources`): k-NN accuracy of the target labels in the source's feature space
   (:func:`distillery.weighting.similarity.knn_task_similarity`), turned into bank weights
   ``w_s ∝ max(score_s - chance, 0)`` by :class:`~distillery.weighting.similarity.SimilarityWeight`.
2. **Pseudo-label heads** (:func:`target_teachers`): a linear head fitted on each source's
   features of the labeled target samples (:func:`~distillery.models.rehead.fit_linear_head`)
   makes the source a target-task teacher (:class:`~distillery.models.rehead.Reheaded`)
   whose predictions on unlabeled target data are its pseudo-labels.
3. **Distill** (:func:`distill_weighted_distiller`) on labeled + unlabeled target data:
   cross-entropy on the labels, KD toward the bank's weighted pseudo-label distribution
   ``log sum_s w_s softmax(l_s)`` (a :class:`~distillery.teachers.TeacherBank` with
   ``combine="probs"``), and per source a cosine feature term through its own linear
   adapter (the per-source projection head), weighted by ``w_s``.
   :func:`distill_nearest_distiller` is the same with the best-scoring source alone.

Source data is never used after the sources are trained. The miniature
(``distillery reproduce distill_weighted``) uses MNIST-1D sources trained on class subsets and
transformed domains; ``configs/distill_weighted_mnist1d.yaml`` expresses the distillation
stage (sources fitted on their own domains via ``fit.data``; bank weights as numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..engine.distiller import Distiller
from ..errors import ConfigError
from ..evaluation.probes import extract_features
from ..models.rehead import Reheaded, fit_linear_head
from ..teachers import FrozenTeacher, PrecomputedTeacher, TeacherBank
from ..weighting.similarity import SimilarityWeight, knn_task_similarity, leep
from . import Recipe, register_recipe
from ._fragments import terms_from

RECIPE = register_recipe(
    Recipe("distill_weighted", "Borup, Phoo & Hariharan 2023, arXiv:2304.12314", "distill_weighted_mnist1d.yaml",
           "Multi-source distillation weighted by task similarity (DistillWeighted; DistillNearest: the best source)")
)

__all__ = [
    "distill_nearest_distiller",
    "distill_weighted_distiller",
    "distill_weighted_objectives",
    "leep_scores",
    "score_sources",
    "target_teachers",
]


def score_sources(sources: Sequence[nn.Module], labeled: Dataset, feature: str = "head:input", k: int = 5,
                  chance: float | None = None) -> SimilarityWeight:
    """Task similarity of each source to the target, from target data only.

    ``sources``: trained models; ``labeled``: the labeled target samples (labels ``>= 0``);
    ``feature``: the tap address of each source's features (``[B, D_s]`` after flattening).
    Score: :func:`~distillery.weighting.similarity.knn_task_similarity` with ``k`` neighbours; weights
    ``∝ max(score - chance, 0)`` with ``chance = 1 / num_classes`` by default.
    """
    scores, labels = [], None
    for src in sources:
        feats, labels = extract_features(src, labeled, feature)
        scores.append(knn_task_similarity(feats, labels, k))
    if labels is None:
        raise ConfigError("score_sources: give at least one source model.")
    if chance is None:
        chance = 1.0 / (int(labels.max()) + 1)
    return SimilarityWeight(scores, chance=chance)


def leep_scores(sources: Sequence[nn.Module], labeled: Dataset) -> list[float]:
    """LEEP of each source from its own predictions (pseudo-labels over its own label set) on
    the labeled target samples; an alternative similarity (:func:`~distillery.weighting.similarity.leep`)."""
    out = []
    for src in sources:
        logits, labels = extract_features(src, labeled, "logits")
        out.append(leep(torch.softmax(logits.double(), -1), labels))
    return out


def target_teachers(sources: Sequence[nn.Module], labeled: Dataset, num_classes: int, feature: str = "head:input",
                    C: float = 1.0) -> list[Reheaded]:
    """Each source with a linear head for the target task, fitted on its features of the labeled
    target samples (logistic regression, inverse regularisation ``C``). Outputs ``logits``
    ``[B, num_classes]`` (the source's pseudo-labels) and ``features`` ``[B, D_s]``."""
    out = []
    for src in sources:
        feats, labels = extract_features(src, labeled, feature)
        out.append(Reheaded(src, fit_linear_head(feats, labels, num_classes, C=C), feature))
    return out


def distill_weighted_objectives(
    weights: Sequence[float],
    *,
    student_feature: str = "head:input",
    ce_weight: float = 1.0,
    kd_weight: float = 1.0,
    feature_weight: float = 1.0,
    temperature: float = 1.0,
) -> list[dict[str, Any]]:
    """DistillWeighted's terms as ``objectives``, for a ``bank`` teacher (``combine: probs``,
    member weights ``weights``, normalised) whose members output ``logits`` and ``features``:
    ``ce`` on the labels, ``kd`` toward the bank's weighted pseudo-labels (when ``kd_weight >
    0``) and, per member ``i`` of positive weight, ``feat{i}``: ``1 - cos`` between the student's
    ``student_feature`` through its own linear adapter and the member's ``features``, weighted
    ``feature_weight * w_i``."""
    objectives: list[dict[str, Any]] = [{"kind": "ce", "weight": ce_weight}]
    if kd_weight > 0:
        objectives.append({"kind": "kd", "params": {"temperature": temperature}, "weight": kd_weight})
    for i, wi in enumerate(weights):
        if wi > 0 and feature_weight > 0:
            objectives.append({"name": f"feat{i}", "kind": "cosine", "weight": feature_weight * wi, "adapter": "linear",
                               "inputs": {"student": f"student.{student_feature}", "teacher": f"teacher.{i}/features"}})
    return objectives


def distill_weighted_distiller(
    student: nn.Module,
    teachers: Sequence[nn.Module],
    weights: Sequence[float] | torch.Tensor | SimilarityWeight,
    *,
    student_feature: str = "head:input",
    ce_weight: float = 1.0,
    kd_weight: float = 1.0,
    feature_weight: float = 1.0,
    temperature: float = 1.0,
    precompute: Dataset | None = None,
) -> Distiller:
    """DistillWeighted's distiller: CE on labels + KD toward the weighted pseudo-labels + one
    weighted cosine feature term per source, each through its own linear adapter
    (:func:`distill_weighted_objectives`).

    ``teachers``: target-task teachers with outputs ``logits`` and ``features`` (see
    :func:`target_teachers`); ``weights``: one relevance weight per teacher (normalised to sum
    to 1; a :class:`SimilarityWeight` gives its :attr:`~SimilarityWeight.weights`). Teachers
    with weight 0 get no feature term (their pseudo-labels have weight 0 in the bank).
    ``student_feature``: the student's tap for the feature terms (``[B, D]``).
    Train on labeled + unlabeled target samples (labels ``-1`` are skipped by the CE term).
    ``precompute``: that training set, to run each teacher over it once and read its signals
    by sample index (:class:`~distillery.teachers.PrecomputedTeacher`; exact, because the
    teachers see un-augmented inputs).
    """
    w = weights.weights if isinstance(weights, SimilarityWeight) else torch.as_tensor(list(weights), dtype=torch.float32)
    if w.shape != (len(teachers),) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ConfigError(f"distill_weighted: need {len(teachers)} non-negative weights with a positive sum, got {w.tolist()}.")
    w = w / w.sum()
    if precompute is not None:
        members = [PrecomputedTeacher.from_model(t, precompute, ["logits", "features"]) for t in teachers]
    else:
        members = [FrozenTeacher(t) for t in teachers]
    bank = TeacherBank(members, weights=w.tolist(), combine="probs")
    terms = terms_from(distill_weighted_objectives(w.tolist(), student_feature=student_feature, ce_weight=ce_weight, kd_weight=kd_weight,
                                                   feature_weight=feature_weight, temperature=temperature))
    return Distiller(student, bank, terms)


def distill_nearest_distiller(student: nn.Module, teachers: Sequence[nn.Module], similarity: SimilarityWeight,
                              **kwargs) -> Distiller:
    """DistillNearest: :func:`distill_weighted_distiller` with the best-scoring teacher alone
    (``similarity.nearest()``); keyword arguments as there."""
    if len(similarity.scores) != len(teachers):
        raise ConfigError(f"distill_nearest: {len(similarity.scores)} scores for {len(teachers)} teachers.")
    return distill_weighted_distiller(student, [teachers[similarity.nearest()]], [1.0], **kwargs)
