"""Foundational recipes, expressed entirely by their configs in ``configs/``."""

from __future__ import annotations

from typing import Any

from . import Recipe, register_recipe

RECIPES = [
    Recipe("hinton_kd", "Hinton, Vinyals & Dean 2015, arXiv:1503.02531", "kd_mnist1d.yaml",
           "Soft-target KD from a frozen 1D-CNN teacher into an MLP, plus cross-entropy"),
    Recipe("kd_unlabeled", "Hinton et al. 2015; SSLD, Cui et al. 2021, arXiv:2103.05959", "kd_unlabeled_mnist1d.yaml",
           "KD on labeled data plus teacher soft targets on extra unlabeled samples"),
    Recipe("dkd", "Zhao et al. 2022, Decoupled Knowledge Distillation, arXiv:2203.08679", "dkd_digits.yaml",
           "Decoupled KD (target-class and non-target-class terms) on digits"),
    Recipe("fitnets", "Romero et al. 2015, FitNets, arXiv:1412.6550", "fitnets_digits.yaml",
           "Hint-layer feature regression through a trained adapter, plus KD"),
    Recipe("attention_transfer", "Zagoruyko & Komodakis 2017, arXiv:1612.03928", "attention_digits.yaml",
           "Attention-map transfer from a ResNet teacher to a CNN student"),
    Recipe("rkd", "Park et al. 2019, Relational Knowledge Distillation, arXiv:1904.05068", "rkd_mnist1d.yaml",
           "Distance- and angle-wise relational KD on penultimate embeddings"),
    Recipe("mean_teacher", "Tarvainen & Valpola 2017, arXiv:1703.01780", "mean_teacher_mnist1d.yaml",
           "EMA self-distillation with augmented views and unlabeled samples"),
    Recipe("born_again", "Furlanello et al. 2018, Born-Again Neural Networks, arXiv:1805.04770", "snapshot_mnist1d.yaml",
           "Distillation from a periodically refreshed snapshot of the student itself"),
    Recipe("self_ensemble", "Lee et al. 2020 (SLA+SD), arXiv:1910.05872", "self_ensemble_mnist1d.yaml",
           "The student's own mean prediction over shifted inputs teaches its single pass"),
    Recipe("privileged_view", "Lopez-Paz et al. 2016, Unifying distillation and privileged information", "privileged_mnist1d.yaml",
           "The network sees the full signal as teacher and a patch-masked one as student"),
    Recipe("teacher_bank", "Hinton et al. 2015 (ensemble teachers); You et al. 2017", "bank_mnist1d.yaml",
           "A weighted bank of two frozen teachers averaged in probability space"),
    Recipe("gradnorm_balancing", "after RT-DETRv4's abstract, Liao et al. 2025, arXiv:2510.25257", "gradnorm_digits.yaml",
           "Feature distillation whose weight keeps a gradient-norm ratio to the task loss (see 'gam' for the released GAM)"),
]

for _recipe in RECIPES:
    register_recipe(_recipe)


def hinton_kd_objectives(temperature: float = 4.0, kd_weight: float = 1.0, ce_weight: float = 1.0) -> list[dict[str, Any]]:
    """Hinton et al.'s KD with labels, as ``objectives``: ``ce_weight * CE(y) + kd_weight * KD``
    at ``temperature`` (terms ``ce`` and ``kd``); the usual baseline of the reproductions."""
    return [{"kind": "ce", "weight": ce_weight}, {"kind": "kd", "params": {"temperature": temperature}, "weight": kd_weight}]
