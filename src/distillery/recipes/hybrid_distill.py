"""Hybrid Distill: token relations from a MIM teacher, feature maps from a supervised/CL teacher,
and progressive redundant-token masking of the student.

Shi, Zhang, Wang, Li, Dai, Zou, Xiong & Tian 2023, "Hybrid Distillation: Connecting Masked
Autoencoders with Contrastive Learners", arXiv:2306.15876 (ICLR 2024). "CL and supervised
pre-training excel at capturing longer-range global patterns and enabling better feature
discrimination, while MIM can introduce more local and diverse attention across all
transformer layers ... Hybrid Distill imitates the token relations of the MIM teacher to
alleviate attention collapse, as well as distills the feature maps of the supervised/CL teacher
to enable discrimination. Furthermore, a progressive redundant token masking strategy is also
utilized to reduce the distilling costs and avoid falling into local optima." (The OpenReview
version: relations "at intermediate layers", "the final features of the CL teacher".)

In distillery's parts:

* teachers: a :class:`~distillery.teachers.TeacherBank` of two
  :class:`~distillery.teachers.FrozenTeacher` ViTs, member 0 the MIM teacher (e.g. the encoder
  of an MAE, :mod:`distillery.models.mae`), member 1 the supervised/CL teacher; no combined
  signal is used, each term addresses one member (``teacher.0/...``, ``teacher.1/...``);
* student: :class:`~distillery.models.miniature.token_masking.TokenMaskingViT`, which drops a growing
  fraction of its patch tokens while training; here the tokens the supervised teacher attends
  to least from its class token (``select="scorer"``);
* terms (:func:`hybrid_terms`): ``masked_token_relation`` (KL between attention rows, the
  teacher's restricted to the kept tokens) at the intermediate blocks from the MIM teacher, and
  ``masked_token_feature`` (MSE of the final normalised tokens at the kept positions) from the
  supervised teacher. :func:`single_teacher_terms` takes both from one teacher (the ablations).

Evaluation helpers: :func:`token_features` (mean-pooled final tokens for a linear probe) and
:func:`distillery.evaluation.attention.attention_statistics` (per-head attention distance, entropy
and head diversity). Miniature: ``distillery reproduce hybrid_distill``; config:
``configs/hybrid_distill_mnist1d.yaml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .. import taps
from ..engine.distiller import Distiller, Term
from ..errors import ConfigError
from ..models.miniature.token_masking import TokenMaskingViT
from ..models.reference import ViT
from ..teachers import FrozenTeacher, TeacherBank
from . import Recipe, register_recipe
from ._fragments import terms_from

RECIPE = register_recipe(
    Recipe("hybrid_distill", "Shi et al. 2023, arXiv:2306.15876", "hybrid_distill_mnist1d.yaml",
           "MIM-teacher token relations + supervised-teacher features, progressive token masking (Hybrid Distill)")
)

__all__ = ["hybrid_distiller", "hybrid_objectives", "hybrid_terms", "single_teacher_terms", "token_features"]


def hybrid_objectives(relation_blocks: Sequence[int], relation_member: int = 0, feature_member: int = 1,
                      relation_weight: float = 1.0, feature_weight: float = 1.0) -> list[dict[str, Any]]:
    """The terms as ``objectives``: ``relation{i}`` (``masked_token_relation``: student block ``i``
    vs teacher member ``relation_member``'s block ``i``) and ``feature``
    (``masked_token_feature``: student ``tokens`` vs member ``feature_member``'s ``norm``), all
    restricted to the student's kept tokens."""
    if not relation_blocks:
        raise ConfigError("hybrid_distill: give at least one relation block.")
    objectives = [
        {"name": f"relation{i}", "kind": "masked_token_relation", "weight": relation_weight,
         "inputs": {"student": f"student.blocks.{i}.attn.softmax",
                    "teacher": f"teacher.{relation_member}/blocks.{i}.attn.softmax", "keep": "student.keep"}}
        for i in relation_blocks
    ]
    objectives.append({"name": "feature", "kind": "masked_token_feature", "weight": feature_weight,
                       "inputs": {"student": "student.tokens", "teacher": f"teacher.{feature_member}/norm", "keep": "student.keep"}})
    return objectives


def hybrid_terms(relation_blocks: Sequence[int], relation_member: int = 0, feature_member: int = 1,
                 relation_weight: float = 1.0, feature_weight: float = 1.0) -> list[Term]:
    """Relation terms ``relation{i}`` (student block ``i`` vs teacher member ``relation_member``'s
    block ``i``) and the feature term ``feature`` (student ``tokens`` vs member
    ``feature_member``'s ``norm``), all restricted to the student's kept tokens
    (:func:`hybrid_objectives`)."""
    return terms_from(hybrid_objectives(relation_blocks, relation_member, feature_member, relation_weight, feature_weight))


def single_teacher_terms(relation_blocks: Sequence[int], member: int, **weights: float) -> list[Term]:
    """Both the relation and the feature terms from one teacher (the single-teacher ablations)."""
    return hybrid_terms(relation_blocks, relation_member=member, feature_member=member, **weights)


def hybrid_distiller(student: TokenMaskingViT, mim_teacher: ViT, feature_teacher: ViT, relation_blocks: Sequence[int],
                     terms: list[Term] | None = None, score_with_teacher: bool = True) -> Distiller:
    """Student, the bank ``[mim_teacher, feature_teacher]`` and :func:`hybrid_terms` (or ``terms``).

    ``student``: a :class:`TokenMaskingViT` of the teachers' width, heads and patch grid;
    ``mim_teacher``, ``feature_teacher``: frozen ViTs (``blocks.<i>.attn.softmax``, ``norm``).
    With ``score_with_teacher`` and a student whose ``select`` is ``"scorer"``, the feature
    teacher ranks the redundant tokens (its class-token attention).
    """
    if not isinstance(student, TokenMaskingViT):
        raise ConfigError("hybrid_distiller: the student must be a TokenMaskingViT (models.token_masking).")
    if score_with_teacher and student.select == "scorer":
        student.set_scorer(feature_teacher)
    bank = TeacherBank([FrozenTeacher(mim_teacher), FrozenTeacher(feature_teacher)])
    return Distiller(student, bank, terms if terms is not None else hybrid_terms(relation_blocks))


@torch.no_grad()
def token_features(model: nn.Module, dataset: Dataset, address: str = "norm", batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features [N, D], labels [N])``: the mean over all tokens of ``model``'s final normalised
    tokens (tap ``address``, ``[B, 1 + N, D]``) on every token, in eval mode."""
    from ..engine.loading import make_loader

    loader, _ = make_loader(dataset, batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        for batch in loader:
            t = taps.run_tapped(model, batch["x"], [address], owner="model")[address]
            feats.append(t.float().mean(1))
            labels.append(batch["y"])
    finally:
        model.train(was_training)
    return torch.cat(feats), torch.cat(labels)
