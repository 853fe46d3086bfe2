"""PH-Reg: post hoc registers for a trained ViT, learned by self-distillation from its TTA-denoised features.

Chen, Yan, Zhou, Dai & Luo 2025, "Vision Transformers with Self-Distilled Registers",
arXiv:2505.21501. "PH-Reg initializes both teacher and student networks from the same
pre-trained ViT. The teacher remains frozen and unmodified, while the student is augmented with
randomly initialized register tokens. By applying test-time augmentation to the teacher's inputs,
we generate denoised dense embeddings free of artifacts, which are then used to optimize only a
small subset of unlocked student weights. We show that our approach can effectively reduce the
number of artifact tokens, improving the segmentation and depth prediction of the student ViT
under zero-shot and linear probing."

In distillery:

* teacher: :class:`~distillery.teachers.tta.DenseTTATeacher` (config kind ``tta_dense``): the
  frozen ViT run on whole-patch shifts and flips of the input, each copy's tokens warped back
  onto the patch grid and averaged;
* student: the same weights plus register tokens and partial unfreezing
  (:func:`~distillery.models.surgery.add_registers`, :func:`~distillery.models.surgery.freeze_except`; the
  model ``register_vit`` for configs);
* loss: cosine distance (per token) + MSE between the student's and the teacher's ``norm``
  tokens (class token and patches).

The miniature (``distillery reproduce ph_reg``) pre-trains a tiny ViT on 16x16 digit canvases,
counts its outlier-norm patch tokens and probes its patch features, with and without PH-Reg.
Config: ``configs/ph_reg_canvas.yaml``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .. import taps
from ..engine.distiller import Distiller, Term
from ..models.surgery import add_registers, freeze_except
from ..teachers import DenseTTATeacher, Teacher
from . import Recipe, register_recipe
from ._fragments import terms_from

RECIPE = register_recipe(
    Recipe("ph_reg", "Chen et al. 2025, PH-Reg, arXiv:2505.21501", "ph_reg_canvas.yaml",
           "Post hoc register tokens distilled from a frozen ViT's test-time-augmented dense features")
)


def ph_reg_student(pretrained: nn.Module, registers: int = 4, unfreeze: Sequence[str] | None = None, depth: int | None = None) -> nn.Module:
    """A copy of ``pretrained`` (a distillery ``vit``) with ``registers`` fresh register tokens.

    Only the parameters matching ``unfreeze`` stay trainable; default: the registers, the
    position embedding and the last block (``blocks.<depth-1>.*``, ``depth`` read from
    ``pretrained.blocks``).
    """
    student = copy.deepcopy(pretrained)
    add_registers(student, registers)
    if unfreeze is None:
        last = (depth if depth is not None else len(student.blocks)) - 1
        unfreeze = ["registers.*", "pos_embed", f"blocks.{last}.*"]
    freeze_except(student, unfreeze)
    student.train()
    return student


def tta_teacher(pretrained: nn.Module, patch: int, shifts: int = 1, flip: bool = True) -> DenseTTATeacher:
    """The frozen teacher: a copy of ``pretrained`` under whole-patch shifts in ``[-shifts, shifts]^2`` and flips."""
    model = copy.deepcopy(pretrained)
    return DenseTTATeacher(model, model.grid, (patch, patch), shifts=shifts, flip=flip, prefix_tokens=1)


def ph_reg_config(signal: str = "norm") -> dict[str, Any]:
    """The loss as ``objectives``: cosine (per token) + MSE between the student's and the
    teacher's tokens at ``signal`` (terms ``cosine`` and ``mse``)."""
    refs = {"student": f"student.{signal}", "teacher": f"teacher.{signal}"}
    return {"objectives": [{"name": "cosine", "kind": "cosine", "params": {"dim": -1}, "inputs": refs},
                           {"name": "mse", "kind": "mse", "inputs": refs}]}


def ph_reg_terms(signal: str = "norm") -> list[Term]:
    """Cosine (per token) + MSE between the student's and the teacher's tokens at ``signal``."""
    return terms_from(ph_reg_config(signal)["objectives"])


def ph_reg_distiller(student: nn.Module, teacher: Teacher, signal: str = "norm") -> Distiller:
    """The PH-Reg step: the register student regresses the TTA teacher's dense features."""
    return Distiller(student, teacher, ph_reg_terms(signal))


# -- measurements ------------------------------------------------------------------------------
@torch.no_grad()
def tokens_at(model: nn.Module, x: torch.Tensor, address: str, batch_size: int = 512) -> torch.Tensor:
    """The signal at ``address`` (e.g. ``blocks.2`` or ``norm``) for inputs ``x``, in eval mode."""
    was = model.training
    model.eval()
    try:
        out = [taps.run_tapped(model, x[i:i + batch_size], [address])[address] for i in range(0, len(x), batch_size)]
    finally:
        model.train(was)
    return torch.cat(out)


def patch_token_norms(model: nn.Module, x: torch.Tensor, num_patches: int, address: str | None = None) -> torch.Tensor:
    """L2 norms ``[B, N]`` of the patch tokens in the residual stream after the last block.

    Artifact tokens (Darcet et al. 2024) show as patch tokens of much larger norm there, before
    the final LayerNorm (which would equalise norms). Registers, if any, are left out (they sit
    after the patches).
    """
    address = address or f"blocks.{len(model.blocks) - 1}"
    t = tokens_at(model, x, address)
    return t[:, 1:1 + num_patches].norm(dim=-1)


def outlier_rate(norms: torch.Tensor, factor: float = 2.0) -> float:
    """Share of tokens whose norm exceeds ``factor`` times the median norm (over all tokens given;
    ``torch.median``: the lower of the two middle values for an even count)."""
    return float((norms > factor * norms.median()).float().mean())
