"""VL2V-ADiP: Align, Distill, Predict - distilling a (black-box) vision-language model into a
pre-trained vision model without losing the student's pre-trained features.

S. Addepalli, A. R. Asokan, L. Sharma, R. V. Babu, 2024, "Leveraging Vision-Language Models
for Improving Domain Generalization in Image Classification" (CVPR), arXiv:2310.08255.
"While naive distillation largely improves the In-Domain (ID) accuracy of the student, it
fails to transfer the superior out-of-distribution (OOD) generalization of the VLM teacher
... we propose Vision-Language to Vision - Align, Distill, Predict (VL2V-ADiP), which first
aligns the vision and language modalities of the teacher model with the vision modality of a
pre-trained student model, and further distills the aligned VLM embeddings to the student.
This maximally retains the pre-trained features of the student."

Mechanism (as in the authors' released code, ``DFC_STAGE1`` / ``DFC_STAGE2``), for a student
``backbone -> proj -> text head`` (:class:`~distillery.models.zero_shot.ZeroShotStudent`):

* the loss of both stages: ``lmd * (1 - cos(proj(f(x)), t_img(x))) + (1 - lmd) * (1 -
  cos(proj(f(x)), t_txt(y)))``, the student's projected embedding against the teacher's
  image embedding and against the teacher's text embedding of the label's prompt
  (``lmd = 0.5``); two :class:`~distillery.objectives.FeatureCosine` terms reading only the
  teacher's *outputs* (so a :class:`~distillery.teachers.BlackBoxTeacher` serves as well as a
  frozen one). ``t_txt(y)`` is the teacher's ``text`` output on rows whose caption is the
  noise-free class prompt;
* **Align**: the pre-trained backbone is frozen and only the new projector ``proj`` trains
  (:func:`align_student`);
* **Distill**: the projector is frozen and the backbone trains (:func:`distill_student`), so
  the features move toward the teacher only as far as the aligned projector requires;
* **Predict**: the classifier is the teacher's text embeddings of the class prompts (the
  text head, given to the student by the frozen teacher when the distiller is built, or by
  :func:`set_text_head` from a black-box text API).

Naive distillation, the baseline (:func:`naive_kd_terms`): the pre-trained student with its
own linear head, fine-tuned end to end with cross-entropy + KD on the teacher's zero-shot
logits. The miniature (``distillery reproduce vl2v_adip``) distills a rotation-robust
digits dual encoder into an MLP pre-trained on clean digits and measures OOD accuracy on
rotated test digits. Config (the Distill stage):
``configs/vl2v_adip_digits.yaml``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..engine.distiller import Distiller, Term
from ..errors import ConfigError
from ..models.zero_shot import PrototypeHead, ZeroShotStudent
from ..teachers import Teacher
from . import Recipe, register_recipe
from ._fragments import terms_from
from .basic import hinton_kd_objectives

RECIPE = register_recipe(
    Recipe("vl2v_adip", "Addepalli et al. 2024, VL2V-ADiP, arXiv:2310.08255", "vl2v_adip_digits.yaml",
           "Align a projector, distill the teacher's image and text embeddings, predict with its text head")
)

#: The weight of the image-embedding term (the authors' scripts default ``lmd=0.5``).
LMD = 0.5


def adip_config(lmd: float = LMD) -> dict[str, Any]:
    """The loss of both stages as ``objectives``: ``distill_image`` (weight ``lmd``): ``1 -
    cos(student.image, teacher.image)``; ``distill_text`` (weight ``1 - lmd``): ``1 -
    cos(student.image, teacher.text)``. Which parameters train is the student's ``freeze``
    (Align: ``["backbone"]``; Distill: ``["proj"]``)."""
    if not 0.0 <= float(lmd) <= 1.0:
        raise ConfigError(f"vl2v_adip: lmd must be in [0, 1], got {lmd!r}.")
    return {"objectives": [
        {"name": "distill_image", "kind": "cosine", "inputs": {"student": "student.image", "teacher": "teacher.image"},
         "weight": float(lmd)},
        {"name": "distill_text", "kind": "cosine", "inputs": {"student": "student.image", "teacher": "teacher.text"},
         "weight": 1.0 - float(lmd)},
    ]}


def adip_terms(lmd: float = LMD) -> list[Term]:
    """``distill_image`` (weight ``lmd``): ``1 - cos(student.image, teacher.image)``;
    ``distill_text`` (weight ``1 - lmd``): ``1 - cos(student.image, teacher.text)``."""
    return terms_from(adip_config(lmd)["objectives"])


def naive_kd_terms(temperature: float = 4.0) -> list[Term]:
    """The naive baseline: ``ce`` on the labels + ``kd`` on the teacher's zero-shot logits
    (:func:`~distillery.recipes.basic.hinton_kd_objectives`)."""
    return terms_from(hinton_kd_objectives(temperature))


def _set_trainable(model: nn.Module, trainable: bool) -> None:
    for p in model.parameters():
        p.requires_grad_(trainable)


def align_student(pretrained: ZeroShotStudent, embed_dim: int, num_prototypes: int = 10, scale: float = 1 / 0.07) -> ZeroShotStudent:
    """The Align stage's student: the pre-trained ``backbone`` (copied, frozen), a new
    trainable projector ``proj`` ``[F] -> [embed_dim]`` and an empty text head
    ``[num_prototypes, embed_dim]`` (filled from the teacher)."""
    if not isinstance(pretrained, ZeroShotStudent):
        raise ConfigError(f"align_student needs a ZeroShotStudent, got {type(pretrained).__name__}.")
    student = ZeroShotStudent(pretrained.in_dim, pretrained.image_dim, [], embed_dim, num_prototypes, "text", "relu", scale)
    student.backbone = copy.deepcopy(pretrained.backbone)
    student.proj = nn.Linear(pretrained.feature_dim, int(embed_dim))
    student.feature_dim = pretrained.feature_dim
    _set_trainable(student.backbone, False)
    return student.to(next(pretrained.parameters()).device)


def distill_student(student: ZeroShotStudent) -> ZeroShotStudent:
    """Switch an aligned student to the Distill stage: backbone trainable, projector frozen."""
    if student.proj is None:
        raise ConfigError("distill_student: the student has no projector (embed_dim=None); run align_student first.")
    _set_trainable(student.backbone, True)
    _set_trainable(student.proj, False)
    return student


@torch.no_grad()
def set_text_head(student: ZeroShotStudent, text_embeddings: torch.Tensor, scale: float | None = None) -> None:
    """Predict: give the student's text head the teacher's text embeddings ``[C, E]`` of the
    class prompts (e.g. from a black-box text API)."""
    if not isinstance(student.head, PrototypeHead):
        raise ConfigError("set_text_head: the student's head is not a text head (build it with head='text').")
    student.head.set_prototypes(text_embeddings, scale)


def adip_distiller(student: ZeroShotStudent, teacher: Teacher, lmd: float = LMD) -> Distiller:
    """A distiller for either stage (which parameters train is set on the student by
    :func:`align_student` / :func:`distill_student`). ``teacher``: a frozen zero-shot dual
    encoder, or a :class:`~distillery.teachers.BlackBoxTeacher` whose function returns
    ``{"image", "text"}`` embeddings (then fill the text head with :func:`set_text_head`)."""
    return Distiller(student, teacher, adip_terms(lmd))
