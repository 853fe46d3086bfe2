"""CoTAP: patch-correspondence distillation with a continuous-target AP loss, through an object-aware filter.

Wen, Xu, Dai, Cong & Huang 2025, "Semantic Concentration for Self-Supervised Dense
Representations Learning" (TPAMI), arXiv:2509.09429. "Mainstream methods encounter an
over-dispersion phenomenon that patches from the same instance/category scatter ... to break the
strict spatial alignment, we propose to distill the patch correspondences. Facing noisy and
imbalanced pseudo labels, we propose a noise-tolerant ranking loss. The core idea is extending
the Average Precision (AP) loss to continuous targets ... we propose the object-aware filter to
map the output space to an object-based space. Specifically, patches are represented by
learnable prototypes of objects via cross-attention."

In distillery the term is ``cotap`` (:class:`~distillery.objectives.ranking.CoTAP`): the teacher's
patch-to-patch cosine similarities within an image and with the next image of the batch are the
soft targets; the student's similarities, read through the prototype filter, are ranked against
them by ``1 - CAP`` (:func:`~distillery.objectives.ranking.continuous_average_precision`, sigmoid
relaxation). The paper trains it inside a self-distillation (EMA teacher) framework; the
miniature uses a frozen teacher (``distillery reproduce cotap``: a ViT trained with per-patch labels
on two-digit canvases; ``configs/cotap_canvas.yaml``: a ViT pre-trained on single-digit canvases,
whose patch tokens carry little dense information) and adds the term to plain dense feature
distillation (cosine per patch: the "strict spatial alignment" baseline).
``distillery reproduce cotap`` measures a dense linear probe and the intra-class dispersion of
patch features on two-digit canvases. :func:`cotap_config` states the terms as config
fragments. Config: ``configs/cotap_canvas.yaml``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..engine.distiller import Distiller, Term
from ..teachers import Teacher
from . import Recipe, register_recipe
from ._fragments import terms_from

RECIPE = register_recipe(
    Recipe("cotap", "Wen et al. 2025, CoTAP, arXiv:2509.09429", "cotap_canvas.yaml",
           "Patch-correspondence distillation with a continuous-target AP ranking loss and an object-aware filter")
)

#: The miniature's CoTAP settings (fixed before any run).
COTAP = {"prototypes": 16, "filter_dim": 32, "temperature": 0.05, "target_temperature": 0.1}


def feature_objective(signal: str = "norm", weight: float = 1.0) -> dict[str, Any]:
    """Dense feature distillation (``feature``: 1 - cosine per token at ``signal``), the "strict
    spatial alignment" baseline, as one ``objectives`` entry."""
    return {"name": "feature", "kind": "cosine", "params": {"dim": -1}, "weight": weight,
            "inputs": {"student": f"student.{signal}", "teacher": f"teacher.{signal}"}}


def cotap_config(dim: int, signal: str = "norm", weight: float = 1.0, feature_weight: float = 1.0, **params: Any) -> dict[str, Any]:
    """The method's ``objectives``: :func:`feature_objective` + the CoTAP ranking term ``cotap``.

    ``dim``: the student's token width; ``params`` override :data:`COTAP`. ``feature_weight=0``
    leaves the ranking term alone.
    """
    refs = {"student": f"student.{signal}", "teacher": f"teacher.{signal}"}
    objectives = [{"name": "cotap", "kind": "cotap", "params": {"dim": dim, **COTAP, **params}, "inputs": refs, "weight": weight}]
    if feature_weight:
        objectives.insert(0, feature_objective(signal, feature_weight))
    return {"objectives": objectives}


def cotap_terms(dim: int, signal: str = "norm", weight: float = 1.0, feature_weight: float = 1.0, **params) -> list[Term]:
    """The terms of :func:`cotap_config`: dense feature distillation (cosine per token at
    ``signal``) + the CoTAP ranking term."""
    return terms_from(cotap_config(dim, signal, weight, feature_weight, **params)["objectives"])


def cotap_distiller(student: nn.Module, teacher: Teacher, dim: int, **kwargs) -> Distiller:
    """A distiller with :func:`cotap_terms` (no label term: dense self-supervised distillation)."""
    return Distiller(student, teacher, cotap_terms(dim, **kwargs))


def dispersion_ratio(features: torch.Tensor, labels: torch.Tensor, ignore: int | None = None) -> float:
    """Within-class share of the variance of L2-normalised features: ``sum_c sum_{i in c} |z_i - mu_c|^2 / sum_i |z_i - mu|^2``.

    ``features`` ``[P, D]``, ``labels`` ``[P]``; rows labelled ``ignore`` (e.g. background) are
    left out. 0: every class collapses to a point (full semantic concentration); 1: class means
    coincide (no class structure). Over-dispersion, in CoTAP's words, is a high value.
    """
    keep = labels != ignore if ignore is not None else torch.ones_like(labels, dtype=torch.bool)
    z = torch.nn.functional.normalize(features[keep].double(), dim=-1)
    y = labels[keep]
    total = (z - z.mean(0)).pow(2).sum()
    within = sum((z[y == c] - z[y == c].mean(0)).pow(2).sum() for c in y.unique())
    return float(within / total.clamp_min(1e-12))
