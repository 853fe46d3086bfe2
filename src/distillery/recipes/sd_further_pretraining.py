"""Self-distillation as a regulariser of further pre-training (MAE on target data).

Seanie Lee, Minki Kang, Juho Lee, Sung Ju Hwang, Kenji Kawaguchi 2023, "Self-Distillation
for Further Pre-training of Transformers" (ICLR 2023), arXiv:2210.02871. "We empirically
find that a Vision Transformer is vulnerable to overfitting as we continue to pretrain the
model on target unlabeled data ... we first further pre-train the initial pre-trained model
on the target unlabeled data and then consider it as a teacher for self-distillation. Then we
take the same initial pre-trained model as a student and enforce its hidden representations
to be close to those of the teacher while optimizing the student with a masked auto-encoding
objective."

The stages, each one ordinary distillery training (a :class:`~distillery.engine.Distiller`):

1. ``theta0``: a :func:`~distillery.models.mae_vit` pre-trained by masked reconstruction on
   the source domain (given; the paper starts from a public MAE checkpoint);
2. further pre-training: ``theta0`` trained on target unlabeled data by masked
   reconstruction (:func:`further_pretraining_distiller`); frozen, it is the teacher;
3. self-distillation: a student *re-initialised from theta0* (:func:`reinitialise`), trained
   by masked reconstruction plus the MSE between its hidden states and the teacher's on the
   same input (:func:`self_distillation_distiller`);
4. fine-tuning of the encoder (:func:`export_encoder` gives a plain ``vit``) on few labels.

Hidden states are the encoder's final normalised tokens ``[B, 1 + N, dim]`` of the unmasked
input (signal ``hidden`` of ``mae_vit``); the paper's exact layer and input for the
distillation term are not in its abstract (our reading: the final representation of the
input; see docs/methods/sd_further_pretraining.md).

Config: ``configs/sd_further_pretraining_mnist1d.yaml`` (stage 3; as shipped it first fits
the teacher by masked reconstruction itself). Claim check: ``distillery reproduce
sd_further_pretraining`` (all four stages on a shifted MNIST-1D target domain).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine import checkpoint as ckpt
from ..engine.distiller import Distiller
from ..errors import CheckpointError, ConfigError
from ..models.mae import MaskedAutoencoder, encoder_state_dict
from ..teachers import FrozenTeacher
from . import Recipe, register_recipe
from ._fragments import frozen_teacher, terms_from
from .dmae import mae_objective

RECIPE = register_recipe(
    Recipe(
        "sd_further_pretraining",
        "Lee et al. 2023, Self-Distillation for Further Pre-training of Transformers, arXiv:2210.02871",
        "sd_further_pretraining_mnist1d.yaml",
        "Further pre-training by MAE on target data, regularised by self-distillation from the further-pretrained model",
    )
)

#: The signal compared by the self-distillation term (``mae_vit``'s final encoder tokens).
HIDDEN = "hidden"


def _check_mae(model: nn.Module, what: str) -> None:
    if not isinstance(model, MaskedAutoencoder):
        raise ConfigError(f"{what} must be a MaskedAutoencoder (model 'mae_vit'), got {type(model).__name__}.")


def further_pretraining_config(norm_target: bool = False) -> dict[str, Any]:
    """Stage 2 as ``objectives``: masked reconstruction only (``mae``), on target unlabeled data."""
    return {"objectives": [mae_objective("mae", norm_target)]}


def self_distillation_config(hidden_weight: float = 1.0, norm_target: bool = False,
                             teacher_model: Mapping[str, Any] | None = None, **teacher: Any) -> dict[str, Any]:
    """Stage 3 as config fragments: ``mae`` + ``self_distillation`` (MSE between the student's
    and the teacher's ``hidden`` tokens, weight ``hidden_weight``); with ``teacher_model`` (the
    further-pretrained ``mae_vit`` with its checkpoint) also the frozen teacher section
    (``teacher`` keywords such as ``precompute=True`` added to it)."""
    if float(hidden_weight) < 0:
        raise ConfigError(f"self-distillation: hidden_weight must be >= 0, got {hidden_weight}.")
    out: dict[str, Any] = {"objectives": [
        mae_objective("mae", norm_target),
        {"kind": "mse", "name": "self_distillation", "weight": float(hidden_weight),
         "inputs": {"student": f"student.{HIDDEN}", "teacher": f"teacher.{HIDDEN}"}},
    ]}
    if teacher_model is not None:
        out["teacher"] = frozen_teacher(teacher_model, **teacher)
    return out


def further_pretraining_distiller(model: MaskedAutoencoder, norm_target: bool = False) -> Distiller:
    """Stage 2: masked reconstruction only (MAE), on target unlabeled data."""
    _check_mae(model, "further pre-training: the model")
    return Distiller(model, None, terms_from(further_pretraining_config(norm_target)["objectives"]))


def self_distillation_distiller(
    student: MaskedAutoencoder, teacher: MaskedAutoencoder, hidden_weight: float = 1.0, norm_target: bool = False
) -> Distiller:
    """Stage 3: ``L = L_MAE(student) + hidden_weight * mean((h_student - h_teacher)^2)``
    (:func:`self_distillation_config`).

    ``student`` should hold the initial weights theta0 (:func:`reinitialise`), ``teacher``
    the further-pretrained weights; the teacher is frozen (eval mode: no masking, so it
    returns only ``logits`` and ``hidden`` ``[B, 1 + N, dim]``).
    """
    _check_mae(student, "self-distillation: the student")
    _check_mae(teacher, "self-distillation: the teacher")
    terms = terms_from(self_distillation_config(hidden_weight, norm_target)["objectives"])
    return Distiller(student, FrozenTeacher(teacher), terms)


def reinitialise(model: nn.Module, theta0: str | Path | Mapping[str, torch.Tensor]) -> nn.Module:
    """Load the initial weights ``theta0`` (a safetensors file or a state dict) into ``model``
    (strictly: every key must match); returns the model."""
    if isinstance(theta0, Mapping):
        missing, unexpected = model.load_state_dict(dict(theta0), strict=False)
        if missing or unexpected:
            raise CheckpointError(f"theta0 does not match the model: missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}.")
        return model
    ckpt.load_weights(model, Path(theta0), what="student (theta0)")
    return model


def export_encoder(mae_weights: str | Path, out: str | Path) -> Path:
    """Write the ``encoder.*`` weights of an ``mae_vit`` safetensors file as a ``vit`` file
    (prefix removed), ready for ``student: {name: vit, checkpoint: ...}``."""
    from safetensors.torch import load_file

    path = Path(mae_weights)
    if not path.is_file():
        raise CheckpointError(f"export_encoder: {path} does not exist.")
    state = encoder_state_dict(load_file(str(path)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt.save_state(state, out)
    return out


def student_from_checkpoint(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """The student's weights from a training checkpoint folder (``checkpoints/step-*/``),
    whose ``model.safetensors`` holds the whole distiller state."""
    from safetensors.torch import load_file

    path = Path(checkpoint_dir) / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"student_from_checkpoint: {path} does not exist.")
    state = {k[len("student."):]: v for k, v in load_file(str(path)).items() if k.startswith("student.")}
    if not state:
        raise CheckpointError(f"student_from_checkpoint: no 'student.*' weights in {path}.")
    return state
