"""MSD: momentum self-distillation with gradient accumulation for small-batch image-text
contrastive training.

P. Pham, N. Pham, N. Q. Ly, 2025, "Boosting Medical Vision-Language Pretraining via Momentum
Self-Distillation under Limited Computing Resources", arXiv:2512.02438. "Our contributions
can be summarized as follows: (1) leveraging momentum self-distillation to enhance
multimodal learning, and (2) integrating momentum mechanisms with gradient accumulation to
enlarge the effective batch size without increasing resource consumption ... improving
retrieval tasks by 2-3%."

Mechanism: a momentum (EMA) copy of both encoders supplies the contrastive keys, kept in
momentum queues, and soft similarity targets (ALBEF-style momentum distillation, see
:mod:`distillery.recipes.albef`); training runs on small micro-batches whose gradients are
accumulated over several micro-batches per optimizer step, and the momentum keys of every
micro-batch already seen in the step are negatives for the next ones (the keys need no
gradient, so this enlarges the contrastive batch at no memory cost). In distillery: an
``ema`` teacher, two ``soft_contrastive`` terms with ``step_negatives: true`` and a queue,
and ``train.grad_accum`` (:func:`msd_config`). Because the distiller runs one forward per micro-batch,
micro-batch ``j`` of a step sees the keys of micro-batches ``1..j`` of that step plus the
queue (the queue holds every earlier step's keys), not the keys of the later micro-batches.

The miniature (``distillery reproduce msd``) compares batch-16 CLIP, + momentum queue, and
the full method on retrieval R@1 and a few-shot linear probe. Config:
``configs/msd_digits.yaml``.
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
    Recipe("msd", "Pham et al. 2025, MSD, arXiv:2512.02438", "msd_digits.yaml",
           "Momentum self-distillation + gradient accumulation with in-step momentum negatives")
)


def msd_config(alpha: float = 0.4, momentum: float = 0.995, temperature: float = 0.07, queue_size: int = 256,
               accumulation: int = 4) -> dict[str, Any]:
    """The method as config fragments: an ``ema`` teacher of constant ``momentum``, momentum-
    distilled ITC in both directions whose negatives include the momentum keys of the earlier
    micro-batches of the same optimizer step (``step_negatives``), and ``train.grad_accum``
    (``accumulation`` micro-batches of ``data.batch_size`` per optimizer step)."""
    return {"teacher": ema_teacher(momentum, None),
            "objectives": momentum_itc_objectives(alpha=alpha, temperature=temperature, queue_size=queue_size,
                                                  step_negatives=True),
            "train": {"grad_accum": accumulation}}


def msd_terms(alpha: float = 0.4, temperature: float = 0.07, queue_size: int = 256) -> list[Term]:
    """Momentum-distilled ITC in both directions whose negatives include the momentum keys
    of the earlier micro-batches of the same optimizer step (``step_negatives``)."""
    return terms_from(msd_config(alpha, temperature=temperature, queue_size=queue_size)["objectives"])


def msd_distiller(
    student: nn.Module,
    alpha: float = 0.4,
    momentum: float = 0.995,
    temperature: float = 0.07,
    queue_size: int = 256,
) -> Distiller:
    """A distiller for a dual encoder with an EMA teacher of constant ``momentum``; train it
    with :func:`msd_trainer_kwargs` (micro-batches and gradient accumulation)."""
    teacher = EMATeacher(student, momentum=momentum, final_momentum=None)
    return Distiller(student, teacher, msd_terms(alpha, temperature, queue_size))


def msd_trainer_kwargs(micro_batch: int = 16, accumulation: int = 4) -> dict[str, Any]:
    """``Trainer`` keywords: ``batch_size`` is the micro-batch; ``grad_accum`` micro-batches
    make one optimizer step (effective batch ``micro_batch * accumulation``)."""
    return {"batch_size": int(micro_batch), "grad_accum": int(accumulation)}
