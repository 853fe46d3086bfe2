"""DMAE: masked-autoencoder distillation from a partially executed, MAE-pretrained teacher.

Bai et al. 2023, "Masked Autoencoders Enable Efficient Knowledge
Distillers" (CVPR), arXiv:2208.12256: "in addition to optimizing the pixel reconstruction loss
on masked inputs, we minimize the distance between the intermediate feature map of the teacher
model and that of the student model. This design leads to a computationally efficient
knowledge distillation framework, given 1) only a small visible subset of patches is used, and
2) the (cumbersome) teacher model only needs to be partially executed ... Compared to directly
distilling fine-tuned models, distilling pre-trained models substantially improves downstream
performance ... our method can robustly distill knowledge from teacher models even with
extremely high masking ratios".

How distillery expresses it:

* the student is an ``mae_vit`` with ``share_mask=True, hidden_in_training=False``: it masks
  its input, encodes the visible patches, decodes every patch
  (:class:`~distillery.models.MaskedAutoencoder`), and records its mask;
* the teacher is a frozen ``mae_vit`` run with ``until="encoder.blocks.k"``: it follows the
  student's mask (the same visible patches, see :meth:`MaskedAutoencoder.init_from_teacher`)
  and stops after block ``k``; no later block, no decoder, no head of it ever runs;
* the terms: ``masked_reconstruction`` (MSE on the removed patches) and ``normalized_l1``
  (DMAE's L1 between L2-normalised tokens) from the student's block output, through an
  ``mlp`` adapter (DMAE's projection head), to the teacher's.

:func:`dmae_config` states that as config fragments, :func:`dmae_terms` and
:func:`dmae_distiller` build it; :func:`with_encoder` makes the
"fine-tuned teacher" of the paper's baseline (an MAE whose encoder weights are replaced by a
fine-tuned ViT's). Config: ``configs/dmae_mnist1d.yaml`` (the teacher is pre-trained by MAE
inside the run). Claim check: ``distillery reproduce dmae``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..engine.distiller import Distiller, Term
from ..errors import ConfigError
from ..models.mae import MaskedAutoencoder
from ..teachers import FrozenTeacher
from . import Recipe, register_recipe
from ._fragments import frozen_teacher, terms_from

RECIPE = register_recipe(
    Recipe("dmae", "Bai et al. 2023, DMAE, arXiv:2208.12256", "dmae_mnist1d.yaml",
           "MAE + feature distillation from a truncated MAE teacher on the student's visible patches")
)


def mae_objective(name: str | None = "mae", norm_target: bool = False) -> dict[str, Any]:
    """Masked reconstruction (MSE on the removed patches) as one ``objectives`` entry."""
    entry: dict[str, Any] = {"kind": "masked_reconstruction"}
    if name is not None:
        entry["name"] = name
    if norm_target:
        entry["params"] = {"norm_target": True}
    return entry


def dmae_config(student_layer: str, teacher_layer: str, weight: float = 1.0, adapter: str = "mlp", norm_target: bool = False,
                teacher_model: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The method as config fragments: ``mae`` (masked reconstruction) and ``distill``
    (normalised L1 between the student's block ``student_layer`` and the teacher's
    ``teacher_layer``, the student's through ``adapter``); with ``teacher_model`` (an
    ``mae_vit`` model section with its checkpoint) also the frozen teacher, truncated after
    ``teacher_layer``."""
    out: dict[str, Any] = {"objectives": [
        mae_objective("mae", norm_target),
        {"kind": "normalized_l1", "name": "distill", "weight": weight, "adapter": adapter,
         "inputs": {"student": f"student.{student_layer}", "teacher": f"teacher.{teacher_layer}"}},
    ]}
    if teacher_model is not None:
        out["teacher"] = frozen_teacher(teacher_model, until=teacher_layer)
    return out


def dmae_terms(student_layer: str, teacher_layer: str, weight: float = 1.0, adapter: str = "mlp", norm_target: bool = False) -> list[Term]:
    """``mae`` (masked reconstruction) and ``distill`` (normalised L1 between the student's
    block ``student_layer`` and the teacher's ``teacher_layer``, both on the visible tokens
    ``[B, 1 + n_visible, dim]``, the student's through ``adapter``): :func:`dmae_config`."""
    return terms_from(dmae_config(student_layer, teacher_layer, weight, adapter, norm_target)["objectives"])


def dmae_distiller(
    student: MaskedAutoencoder,
    teacher: MaskedAutoencoder,
    student_layer: str = "encoder.blocks.1",
    teacher_layer: str = "encoder.blocks.2",
    weight: float = 1.0,
) -> Distiller:
    """The DMAE step: the teacher (frozen, truncated after ``teacher_layer``) follows the
    student's masks. ``student`` must be built with ``share_mask=True``."""
    if not isinstance(student, MaskedAutoencoder) or not student.share_mask:
        raise ConfigError("dmae: the student must be an mae_vit built with share_mask=True, hidden_in_training=False.")
    if not isinstance(teacher, MaskedAutoencoder):
        raise ConfigError(f"dmae: the teacher must be an mae_vit, got {type(teacher).__name__}.")
    return Distiller(student, FrozenTeacher(teacher, until=teacher_layer), dmae_terms(student_layer, teacher_layer, weight))


def with_encoder(mae_state: Mapping[str, torch.Tensor], vit_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An ``mae_vit`` state dict whose ``encoder.*`` weights are ``vit_state`` (a ``vit`` of the
    same shape, e.g. the MAE encoder after supervised fine-tuning); the decoder keys are kept.
    """
    out = {k: v for k, v in mae_state.items() if not k.startswith("encoder.")}
    mine = {k[len("encoder."):] for k in mae_state if k.startswith("encoder.")}
    if set(vit_state) != mine:
        raise ConfigError(
            "with_encoder: the ViT weights do not match the MAE's encoder: missing "
            f"{sorted(mine - set(vit_state))[:6]}, unexpected {sorted(set(vit_state) - mine)[:6]}."
        )
    out.update({f"encoder.{k}": v for k, v in vit_state.items()})
    return out
