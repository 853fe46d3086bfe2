"""DependencyViT-Lite recovered by distillation: leaf pruning of the dependency tree, logit KD from the full model.

Ding, Shen, Fan, Chen, Chen, Luo, Tenenbaum & Gan 2023, "Visual Dependency Transformers:
Dependency Tree Emerges from Reversed Attention", arXiv:2304.03282 (CVPR 2023): "a child token
in reversed attention is trained to attend to its parent tokens and send information following a
normalized probability distribution rather than gathering information in conventional
self-attention ... The leaf nodes which rarely send messages can be pruned without hindering the
model performance, based on which we propose the lightweight DependencyViT-Lite to reduce the
computational and memory footprints".

Not really a distillation method (methods.md row 34): the paper is about an operator and the
tree it induces. What distils here is the recovery of the pruned model: the Lite network starts
from the full model's weights (pruning adds no weights) and is trained to match the full
model's logits (the library's ``kd`` objective), the full model being its frozen teacher.

In distillery's parts:

* the model: :mod:`distillery.models.miniature.dependency` (registered ``dependency_vit``):
  :func:`~distillery.models.miniature.dependency.reversed_attention`,
  :func:`~distillery.models.miniature.dependency.leaf_scores`,
  :func:`~distillery.models.miniature.dependency.dependency_parents`, ``keep_ratios`` for the
  Lite schedule, ``inherit_teacher_weights`` to start from the full model, and
  :func:`~distillery.models.miniature.dependency.multiply_adds` for the cost;
* config fragments here: :func:`dependency_vit_model` (a ``student``/teacher ``model``
  section), :func:`lite_config` (the Lite student + its recovery objective), and
  :func:`cost` (multiply-adds of full vs Lite);
* :func:`lite_distiller`: the same in Python from a trained full model;
* :func:`pruning_trace`: which patches each block of a model keeps and the tree of its first
  block, for pictures.

Config: ``configs/dependency_vit_digits.yaml``. Claim check: ``distillery reproduce dependency_vit``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..engine.distiller import Distiller, Term
from ..errors import ConfigError
from ..models.miniature.dependency import (
    DependencyViT,
    dependency_parents,
    keep_counts,
    multiply_adds,
)
from ..teachers import FrozenTeacher
from . import Recipe, register_recipe
from ._fragments import terms_from

RECIPE = register_recipe(
    Recipe("dependency_vit", "Ding et al. 2023, DependencyViT, arXiv:2304.03282", "dependency_vit_digits.yaml",
           "Reversed attention -> patch dependency tree; leaf pruning (DependencyViT-Lite) recovered by logit KD from the full model")
)

__all__ = ["cost", "dependency_vit_model", "lite_config", "lite_distiller", "lite_objectives", "pruning_trace"]

_SHAPE_KEYS = ("patch_size", "dim", "depth", "heads", "mlp_ratio", "temperature")


def dependency_vit_model(vit: Mapping[str, Any], keep_ratios: Sequence[float] | None = None, *, select: str = "leaf",
                         inherit: bool = False) -> dict[str, Any]:
    """A ``{"name": "dependency_vit", "params": ...}`` model section: ``vit`` (its shape:
    patch_size, dim, depth, heads, mlp_ratio) with ``keep_ratios`` (``None``: the full model),
    ``select`` and ``inherit_teacher_weights``."""
    unknown = sorted(set(vit) - set(_SHAPE_KEYS))
    if unknown:
        raise ConfigError(f"dependency_vit_model: vit has unknown keys {unknown}; allowed: {list(_SHAPE_KEYS)}.")
    params: dict[str, Any] = dict(vit)
    if keep_ratios is not None:
        params["keep_ratios"] = [float(r) for r in keep_ratios]
    if select != "leaf":
        params["select"] = select
    if inherit:
        params["inherit_teacher_weights"] = True
    return {"name": "dependency_vit", "params": params}


def lite_objectives(*, kd: float = 1.0, ce: float = 0.0, temperature: float = 2.0) -> list[dict[str, Any]]:
    """The recovery objective: ``kd`` on the logits (Hinton et al. 2015, temperature
    ``temperature``) from the full model, plus ``ce`` on the labels when its weight is > 0;
    ``kd=0, ce=1`` is recovery without distillation."""
    out: list[dict[str, Any]] = []
    if ce:
        out.append({"kind": "ce", "weight": float(ce)})
    if kd:
        if not float(temperature) > 0:
            raise ConfigError(f"lite_objectives: temperature must be > 0, got {temperature!r}.")
        out.append({"kind": "kd", "params": {"temperature": float(temperature)}, "weight": float(kd)})
    if not out:
        raise ConfigError("lite_objectives: kd and ce are both 0; nothing to train.")
    return out


def lite_config(vit: Mapping[str, Any], keep_ratios: Sequence[float], *, kd: float = 1.0, ce: float = 0.0,
                temperature: float = 2.0, select: str = "leaf") -> dict[str, Any]:
    """Config fragments of the Lite recovery: ``student`` (the Lite ``dependency_vit``, started
    from the teacher's weights) and ``objectives`` (:func:`lite_objectives`). Add a frozen
    full ``dependency_vit`` teacher of the same ``vit`` shape."""
    if keep_ratios is None:
        raise ConfigError("lite_config: keep_ratios is required (the Lite schedule, one fraction per block).")
    return {"student": dependency_vit_model(vit, keep_ratios, select=select, inherit=True),
            "objectives": lite_objectives(kd=kd, ce=ce, temperature=temperature)}


def cost(vit: Mapping[str, Any], keep_ratios: Sequence[float], input_shape: Sequence[int] = (1, 8, 8),
         num_classes: int = 10) -> dict[str, Any]:
    """Multiply-adds per image of the full model and of the Lite one
    (:func:`~distillery.models.miniature.dependency.multiply_adds`), the reduction
    ``1 - lite / full`` and the tokens each block sees."""
    from ..models import build_model

    full = build_model("dependency_vit", input_shape, num_classes, **dependency_vit_model(vit)["params"])
    lite = build_model("dependency_vit", input_shape, num_classes, **dependency_vit_model(vit, keep_ratios)["params"])
    f, lt = multiply_adds(full), multiply_adds(lite)
    return {"full_macs": f, "lite_macs": lt, "reduction": 1.0 - lt / f, "tokens_full": list(full.keep), "tokens_lite": list(lite.keep)}


def lite_distiller(full: DependencyViT, keep_ratios: Sequence[float], *, kd: float = 1.0, ce: float = 0.0,
                   temperature: float = 2.0, select: str = "leaf") -> Distiller:
    """A trainable Lite copy of the trained ``full`` model, distilled from it (frozen)."""
    if not isinstance(full, DependencyViT):
        raise ConfigError(f"lite_distiller: full must be a DependencyViT, got {type(full).__name__}.")
    student = copy.deepcopy(full)
    student.keep = keep_counts(keep_ratios, len(student.blocks), student.num_patches)
    student.select = select
    for p in student.parameters():
        p.requires_grad_(True)
    terms: list[Term] = terms_from(lite_objectives(kd=kd, ce=ce, temperature=temperature))
    return Distiller(student.train(), FrozenTeacher(copy.deepcopy(full)), terms)


@torch.no_grad()
def pruning_trace(model: DependencyViT, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``kept`` ``[B, depth, gh, gw]`` (bool: the patches block ``b`` sees) and ``parents``
    ``[B, N]`` (the parent of each patch in the first block's tree), in eval mode."""
    was = model.training
    model.eval()
    out = model.trace(x)
    model.train(was)
    b, n = x.shape[0], model.num_patches
    kept = torch.zeros(b, len(model.blocks), n, dtype=torch.bool)
    for i, index in enumerate(out["kept"]):
        kept[:, i].scatter_(1, index.cpu(), True)
    return {"kept": kept.reshape(b, len(model.blocks), *model.grid), "parents": dependency_parents(out["dependency"][0]).cpu()}
