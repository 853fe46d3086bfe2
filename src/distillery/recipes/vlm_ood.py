"""Distilling a large vision-language model into a small image model, for open-vocabulary
out-of-distribution generalisation.

X. Li, Y. Fang, M. Liu, Z. Ling, Z. Tu, H. Su, 2023, "Distilling Large Vision-Language Model
with Out-of-Distribution Generalizability" (ICCV), arXiv:2307.03135. "We propose two
principles from vision and language modality perspectives to enhance student's OOD
generalization: (1) by better imitating teacher's visual representation space, and carefully
promoting better coherence in vision-language alignment with the teacher; (2) by enriching
the teacher's language representations with informative and finegrained semantic
attributes."

Mechanism (principle 1), for a CLIP-like teacher whose text embeddings of class prompts are
the class prototypes (its *text bank*):

* the student (an image-only network with a projector into the teacher's embedding space)
  imitates the teacher's image embedding: ``feature`` = ``1 - cos(student.image,
  teacher.image)`` (:class:`~distillery.objectives.FeatureCosine`);
* vision-language alignment: the student's image-text similarity distribution over the
  teacher's text bank matches the teacher's own, ``align`` = ``KL(softmax(s cos(t_img, T)) ||
  softmax(s cos(s_img, T)))`` with ``T`` the text bank of the *training* classes and ``s``
  the teacher's logit scale. Both models output those logits (the teacher a
  :class:`~distillery.models.zero_shot.ZeroShotDualEncoder`, the student a
  :class:`~distillery.models.zero_shot.ZeroShotStudent` whose text head holds the teacher's
  text bank), so the term is plain KD at temperature 1
  (:class:`~distillery.objectives.SoftTargetKD`).

At test time the student classifies images of classes it never saw by the teacher's text
embeddings of their prompts (open vocabulary). Principle 2 (LLM-written attribute
descriptions enriching the prompts) is not part of this recipe. The miniature (``distillery
reproduce vlm_ood``) distills a digits dual encoder trained on all ten classes into a small
MLP on five classes and measures zero-shot accuracy on the other five, with and without the
alignment term. Config: ``configs/vlm_ood_digits.yaml``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..engine.distiller import Distiller, Term
from ..teachers import FrozenTeacher
from . import Recipe, register_recipe
from ._fragments import terms_from

RECIPE = register_recipe(
    Recipe("vlm_ood", "Li et al. 2023, arXiv:2307.03135", "vlm_ood_digits.yaml",
           "Image-embedding imitation + image-text similarity alignment for open-vocabulary OOD")
)


def vlm_ood_config(feature_weight: float = 1.0, align_weight: float = 1.0, temperature: float = 1.0,
                   cls_weight: float = 0.0) -> dict[str, Any]:
    """Principle (1) as ``objectives``: ``feature``, ``1 - cos`` between the student's and the
    teacher's image embeddings, and ``align``, KL from the teacher's to the student's
    similarity distribution over the teacher's text bank (both models' ``logits`` are ``scale *
    cos(image, text bank)``); ``align_weight=0`` drops the alignment term (plain feature KD),
    ``feature_weight=0`` the feature term.

    ``cls_weight > 0`` adds ``cls``, cross-entropy of the student's ``logits`` (over the text
    bank) with the label: the authors' ``L-cls``, on by default in their code
    (``--clip-align-image-classification=1``), to which their ``L-vlalign`` is added."""
    objectives: list[dict[str, Any]] = []
    if feature_weight:
        objectives.append({"name": "feature", "kind": "cosine", "inputs": {"student": "student.image", "teacher": "teacher.image"},
                           "weight": feature_weight})
    if cls_weight:
        objectives.append({"name": "cls", "kind": "ce", "weight": cls_weight})
    if align_weight:
        objectives.append({"name": "align", "kind": "kd", "params": {"temperature": temperature},
                           "inputs": {"student": "student.logits", "teacher": "teacher.logits"}, "weight": align_weight})
    return {"objectives": objectives}


def feature_terms(weight: float = 1.0) -> list[Term]:
    """``feature``: ``1 - cos`` between the student's and the teacher's image embeddings."""
    return terms_from(vlm_ood_config(weight, 0.0)["objectives"])


def alignment_terms(weight: float = 1.0, temperature: float = 1.0) -> list[Term]:
    """``align``: KL from the teacher's to the student's similarity distribution over the
    teacher's text bank (both models' ``logits`` are ``scale * cos(image, text bank)``)."""
    return terms_from(vlm_ood_config(0.0, weight, temperature)["objectives"])


def vlm_ood_terms(feature_weight: float = 1.0, align_weight: float = 1.0, temperature: float = 1.0) -> list[Term]:
    """Principle (1): image-embedding imitation + vision-language alignment
    (``align_weight=0`` drops the alignment term: plain feature KD): :func:`vlm_ood_config`."""
    return terms_from(vlm_ood_config(feature_weight, align_weight, temperature)["objectives"])


def vlm_ood_distiller(student: nn.Module, teacher: nn.Module, align_weight: float = 1.0, temperature: float = 1.0) -> Distiller:
    """``student``: a ``zero_shot_student``; ``teacher``: a trained ``zero_shot_dual_encoder``
    whose prompts are the training classes. The frozen teacher gives the student's text head
    its text bank when the distiller is built."""
    return Distiller(student, FrozenTeacher(teacher), vlm_ood_terms(1.0, align_weight, temperature))
