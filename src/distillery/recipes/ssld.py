"""SSLD: distillation by the teacher's soft labels only, which admits extra unlabeled data.

Cui, Guo, Zhang et al. 2021, "Beyond Self-Supervision: A Simple Yet Effective Network
Distillation Alternative to Improve Backbones" (the SSLD recipe of PaddleClas),
arXiv:2103.05959. "Our solution performs distillation by only driving prediction of the
student model consistent with that of the teacher model ... and can be trained with extra
unlabeled data."

The recipe is one term: soft-target KD toward a frozen teacher, with no hard-label term, over
the labeled set plus unlabeled samples (their labels are ``-1`` and are never read):
:func:`ssld_config` states it as config fragments, :func:`ssld_distiller` builds it. The
miniature reproduction (``distillery reproduce ssld``) checks that this beats cross-entropy
and KD+labels on MNIST-1D. Config: ``configs/ssld_mnist1d.yaml``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..engine.distiller import Distiller
from ..teachers import Teacher
from . import Recipe, register_recipe
from ._fragments import terms_from

RECIPE = register_recipe(
    Recipe("ssld", "Cui et al. 2021, SSLD, arXiv:2103.05959", "ssld_mnist1d.yaml",
           "Teacher-only soft-label distillation, with extra unlabeled data")
)


def ssld_config(temperature: float = 1.0) -> dict[str, Any]:
    """The method's ``objectives``: one ``kd`` term toward the teacher (no label term).

    In a run config, add a frozen ``teacher`` and ``data.unlabeled: true`` (the dataset given
    extra unlabeled samples): labeled and unlabeled samples are treated alike.
    """
    return {"objectives": [{"kind": "kd", "params": {"temperature": temperature}}]}


def ssld_distiller(student: nn.Module, teacher: Teacher, temperature: float = 1.0) -> Distiller:
    """A distiller whose only term is KD toward ``teacher`` (no label term, :func:`ssld_config`).

    Train it on ``splits.train_with_unlabeled()``: labeled and unlabeled samples are treated
    alike, which is the point of the method.
    """
    return Distiller(student, teacher, terms_from(ssld_config(temperature)["objectives"]))
