"""DeGLA: compositional fine-tuning of a dual encoder with hard negatives, while global
alignment is self-distilled toward an EMA teacher to limit forgetting.

X. Hu, K. Yang, J. Wang, H. Xu, Z. Feng, Y. Wang, 2025, "Decoupled Global-Local Alignment
for Improving Compositional Understanding", arXiv:2504.16801. "We incorporate a
self-distillation mechanism within the global alignment process, aligning the learnable
image-text encoder with a frozen teacher model derived from an exponential moving average.
Under the constraint of self-distillation, it effectively mitigates the catastrophic
forgetting of pretrained knowledge during fine-tuning."

Mechanism, as expressed here, for fine-tuning a pre-trained dual encoder on captions with
hard negatives:

* global alignment: CLIP's symmetric InfoNCE on the paired captions (``itc_i2t``,
  ``itc_t2i``; in-batch negatives only, the hard negatives are kept out of it: "decoupled");
* local / compositional alignment: the image must prefer its caption over its own
  hard-negative captions (``igc``, the Image-Grounded Contrast, a ``hard_negative_contrast``
  term on ``student.text_negatives``);
* self-distillation: the student's image and text embeddings are pulled toward those of an
  EMA teacher that starts as the pre-trained model and moves slowly (``momentum = 0.999``):
  ``sd_image``, ``sd_text`` (``cosine`` feature terms; the abstract does not give the form
  of the distillation loss, the cosine/L2-normalised distance is our choice [inferred]).

Left out: the LLM-made negatives (replaced by templated attribute swaps) and the
Text-Grounded Contrast (TGC) loss, which the abstract names but does not define. The
miniature (``distillery reproduce degla``) pre-trains on class captions, fine-tunes on
attribute captions of half the classes with and without self-distillation, and measures
compositional accuracy and retained zero-shot accuracy. Config (the fine-tuning stage):
``configs/degla_digits.yaml``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..engine.distiller import Distiller, Term
from ..teachers import EMATeacher
from . import Recipe, register_recipe
from ._fragments import ema_teacher, terms_from
from ._itc import clip_objectives

RECIPE = register_recipe(
    Recipe("degla", "Hu et al. 2025, DeGLA, arXiv:2504.16801", "degla_digits.yaml",
           "Hard-negative compositional fine-tuning with EMA self-distillation of global alignment")
)


def finetune_objectives(temperature: float = 0.07, igc_weight: float = 1.0) -> list[dict[str, Any]]:
    """Global ITC (both directions) + the image-grounded hard-negative contrast (no SD), as
    ``objectives``."""
    return clip_objectives(temperature) + [
        {"name": "igc", "kind": "hard_negative_contrast", "params": {"temperature": temperature}, "weight": igc_weight}]


def self_distillation_objectives(weight: float = 1.0) -> list[dict[str, Any]]:
    """``sd_image`` / ``sd_text``: ``1 - cos`` between student and EMA-teacher embeddings."""
    return [
        {"name": "sd_image", "kind": "cosine", "inputs": {"student": "student.image", "teacher": "teacher.image"}, "weight": weight},
        {"name": "sd_text", "kind": "cosine", "inputs": {"student": "student.text", "teacher": "teacher.text"}, "weight": weight},
    ]


def degla_config(momentum: float = 0.999, temperature: float = 0.07, igc_weight: float = 1.0, sd_weight: float = 1.0,
                 self_distill: bool = True) -> dict[str, Any]:
    """The fine-tuning stage as config fragments: :func:`finetune_objectives` and, with
    ``self_distill``, :func:`self_distillation_objectives` toward an ``ema`` teacher of constant
    ``momentum`` (it starts as the pre-trained ``student.checkpoint``)."""
    if not self_distill:
        return {"objectives": finetune_objectives(temperature, igc_weight)}
    return {"teacher": ema_teacher(momentum, None),
            "objectives": finetune_objectives(temperature, igc_weight) + self_distillation_objectives(sd_weight)}


def finetune_terms(temperature: float = 0.07, igc_weight: float = 1.0) -> list[Term]:
    """Global ITC (both directions) + the image-grounded hard-negative contrast (no SD)."""
    return terms_from(finetune_objectives(temperature, igc_weight))


def self_distillation_terms(weight: float = 1.0) -> list[Term]:
    """``sd_image`` / ``sd_text``: ``1 - cos`` between student and EMA-teacher embeddings."""
    return terms_from(self_distillation_objectives(weight))


def degla_terms(temperature: float = 0.07, igc_weight: float = 1.0, sd_weight: float = 1.0) -> list[Term]:
    """The full DeGLA miniature: :func:`finetune_terms` + :func:`self_distillation_terms`."""
    return terms_from(degla_config(temperature=temperature, igc_weight=igc_weight, sd_weight=sd_weight)["objectives"])


def degla_distiller(
    student: nn.Module,
    momentum: float = 0.999,
    temperature: float = 0.07,
    igc_weight: float = 1.0,
    sd_weight: float = 1.0,
) -> Distiller:
    """``student``: the *pre-trained* dual encoder; the EMA teacher starts as its copy."""
    teacher = EMATeacher(student, momentum=momentum, final_momentum=None)
    return Distiller(student, teacher, degla_terms(temperature, igc_weight, sd_weight))
