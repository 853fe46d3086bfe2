"""Image-text contrastive (ITC) terms for dual encoders, shared by the ALBEF, MSD and DeGLA
recipes.

A :class:`~distillery.models.dual.DualEncoder` returns ``{"image": [B, E], "text": [B, E]}``;
the terms below address those signals as ``student.image`` / ``teacher.text``.

Each is stated once as config ``objectives`` (``*_objectives``) and built into terms by
the ``*_terms`` function.

* :func:`clip_terms`: CLIP's symmetric InfoNCE between the student's own image and text
  embeddings (in-batch negatives; Radford et al. 2021, arXiv:2103.00020);
* :func:`momentum_itc_terms`: ALBEF's ITC, where the keys are the *momentum (EMA) model's*
  embeddings plus a queue of earlier ones, with soft targets mixed from the momentum
  model's similarities (``alpha > 0``: momentum distillation; ``alpha = 0``: plain ITC with
  a momentum queue, as MoCo).
"""

from __future__ import annotations

from typing import Any

from ..engine.distiller import Term
from ._fragments import terms_from


def clip_objectives(temperature: float = 0.07, step_negatives: bool = False) -> list[dict[str, Any]]:
    """``itc_i2t`` + ``itc_t2i`` (weight 1/2 each) as ``objectives``: InfoNCE of
    ``student.image`` against ``student.text`` and back; gradients flow into both towers."""
    params: dict[str, Any] = {"temperature": temperature}
    if step_negatives:
        params["step_negatives"] = True
    nce = {"kind": "infonce", "params": params, "weight": 0.5}
    return [dict(nce, name="itc_i2t", inputs={"student": "student.image", "teacher": "student.text"}),
            dict(nce, name="itc_t2i", inputs={"student": "student.text", "teacher": "student.image"})]


def clip_terms(temperature: float = 0.07, step_negatives: bool = False) -> list[Term]:
    """The terms of :func:`clip_objectives`."""
    return terms_from(clip_objectives(temperature, step_negatives))


def momentum_itc_objectives(
    alpha: float = 0.4,
    temperature: float = 0.07,
    queue_size: int = 256,
    step_negatives: bool | None = None,
) -> list[dict[str, Any]]:
    """ALBEF's ITC in both directions (weight 1/2 each) as ``objectives``, for a run with an
    EMA teacher.

    ``itc_i2t``: query ``student.image``, keys ``[teacher.text; text queue]``, target
    ``(1 - alpha) * onehot + alpha * softmax(teacher.image @ keys^T / tau)``; ``itc_t2i``
    the same with the modalities exchanged. Each term keeps its own queue of ``queue_size``
    momentum keys (ALBEF's ``text_queue`` / ``image_queue``). ``step_negatives``: the momentum
    keys of the step's earlier micro-batches are negatives too (``None``: not written, the
    objective's default, off).
    """
    params: dict[str, Any] = {"temperature": temperature, "alpha": alpha, "queue_size": queue_size}
    if step_negatives is not None:
        params["step_negatives"] = step_negatives
    itc = {"kind": "soft_contrastive", "params": params, "weight": 0.5}
    return [dict(itc, name="itc_i2t", inputs={"student": "student.image", "teacher": "teacher.image", "keys": "teacher.text"}),
            dict(itc, name="itc_t2i", inputs={"student": "student.text", "teacher": "teacher.text", "keys": "teacher.image"})]


def momentum_itc_terms(
    alpha: float = 0.4,
    temperature: float = 0.07,
    queue_size: int = 256,
    step_negatives: bool = False,
) -> list[Term]:
    """The terms of :func:`momentum_itc_objectives`."""
    return terms_from(momentum_itc_objectives(alpha, temperature, queue_size, step_negatives))
