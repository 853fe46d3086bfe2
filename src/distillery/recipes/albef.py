"""ALBEF: image-text contrastive learning with momentum distillation (MoD).

J. Li, R. R. Selvaraju, A. D. Gotmare, S. Joty, C. Xiong, S. Hoi, 2021, "Align before Fuse:
Vision and Language Representation Learning with Momentum Distillation" (NeurIPS),
arXiv:2107.07651. "In order to improve learning from noisy web data, we propose momentum
distillation, a self-training method which learns from pseudo-targets produced by a
momentum model."

The part expressed here is ALBEF's image-text contrastive loss (ITC) with MoD: a momentum
model (an EMA of both towers, ``m = 0.995``) embeds the pair; the student's image embedding
is contrasted with the momentum text embeddings of the batch plus a queue of earlier ones
(and the other way round), against the target ``(1 - alpha) * onehot + alpha *
softmax(s_m / tau)`` where ``s_m`` are the momentum model's own similarities (``alpha =
0.4``). In distillery: an ``ema`` teacher and two ``soft_contrastive`` terms
(:func:`albef_config`; see :func:`distillery.recipes._itc.momentum_itc_objectives`). ALBEF's fusion encoder, ITM and MLM are
not part of it. The miniature (``distillery reproduce albef``) checks that MoD is more
robust than plain ITC when 30% of the training pairs are mismatched. Config:
``configs/albef_digits.yaml``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..engine.distiller import Distiller, Term
from ..teachers import EMATeacher
from . import Recipe, register_recipe
from ._fragments import ema_teacher, terms_from
from ._itc import momentum_itc_objectives

RECIPE = register_recipe(
    Recipe("albef", "Li et al. 2021, ALBEF, arXiv:2107.07651", "albef_digits.yaml",
           "Image-text contrastive loss with momentum distillation and a momentum queue")
)

#: ALBEF's defaults: momentum 0.995, distillation weight alpha 0.4, temperature 0.07.
MOMENTUM, ALPHA, TEMPERATURE = 0.995, 0.4, 0.07


def albef_config(alpha: float = ALPHA, momentum: float = MOMENTUM, temperature: float = TEMPERATURE,
                 queue_size: int = 256) -> dict[str, Any]:
    """The method as config fragments: the momentum model (an ``ema`` teacher of constant
    ``momentum``) and ITC with momentum distillation in both directions (``alpha=0``: ITC
    without MoD) for a dual encoder (``{"image", "text"}`` outputs)."""
    return {"teacher": ema_teacher(momentum, None),
            "objectives": momentum_itc_objectives(alpha=alpha, temperature=temperature, queue_size=queue_size)}


def albef_terms(alpha: float = ALPHA, temperature: float = TEMPERATURE, queue_size: int = 256) -> list[Term]:
    """ITC with momentum distillation in both directions (``alpha=0``: ITC without MoD)."""
    return terms_from(albef_config(alpha, temperature=temperature, queue_size=queue_size)["objectives"])


def albef_distiller(
    student: nn.Module,
    alpha: float = ALPHA,
    momentum: float = MOMENTUM,
    temperature: float = TEMPERATURE,
    queue_size: int = 256,
) -> Distiller:
    """A distiller for a dual encoder (``{"image", "text"}`` outputs): the momentum model is
    an :class:`~distillery.teachers.EMATeacher` with constant ``momentum``."""
    teacher = EMATeacher(student, momentum=momentum, final_momentum=None)
    return Distiller(student, teacher, albef_terms(alpha, temperature, queue_size))
