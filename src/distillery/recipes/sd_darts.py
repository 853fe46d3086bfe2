"""SD-DARTS: a DARTS supernet distilled from a vote of its own previous snapshots.

Xunyu Zhu, Jian Li, Yong Liu, Weiping Wang 2023, "Improving Differentiable Architecture
Search via Self-Distillation" (Neural Networks), arXiv:2302.05629. "We utilize
self-distillation to distill knowledge from previous steps of the supernet to guide its
training in the current step, effectively reducing the sharpness of the supernet's loss and
bridging the performance gap between the supernet and the optimal architecture. Furthermore,
we introduce the concept of voting teachers, where multiple previous supernets are selected as
teachers, and their output probabilities are aggregated through voting."

Wiring (each part a general component):

* the supernet: :func:`~distillery.models.darts` (mixed ops, shared ``alpha``);
* the teacher: :class:`~distillery.teachers.VotingSnapshotTeacher`, the ``size`` most recent
  snapshots of the supernet (weights *and* ``alpha``), one every ``every`` steps, voting;
* the weight step's loss: ``CE(y, p_s) + weight * T^2 * KL(p_vote^T || p_s^T)``
  (:func:`sd_darts_distiller`; plain DARTS is CE alone, :func:`darts_distiller`);
* the search: :class:`~distillery.engine.bilevel.BilevelSearch`, first-order DARTS
  alternation of an ``alpha`` step on a validation split and a weight step on the training split;
* the measurements: :func:`sharpness` (``lambda_max`` of ``nabla^2_alpha L_val`` by power
  iteration, :mod:`distillery.evaluation.sharpness`) and :func:`discretization_gap` (supernet accuracy
  minus the accuracy of the derived architecture with inherited weights, BatchNorm statistics
  re-estimated for both).

Config: ``configs/sd_darts_digits.yaml`` (the distillation stage, with ``alpha`` trained
jointly with the weights, i.e. one-level; the bilevel alternation is driven by this module
and ``distillery reproduce sd_darts``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.datasets import collate_batch
from ..engine.bilevel import BilevelSearch, search_batches
from ..engine.distiller import Distiller
from ..errors import ConfigError
from ..evaluation.sharpness import top_hessian_eigenvalue
from ..models.miniature.nas import DartsSupernet
from ..teachers import VotingSnapshotTeacher
from . import Recipe, register_recipe
from ._fragments import terms_from

RECIPE = register_recipe(
    Recipe(
        "sd_darts",
        "Zhu et al. 2023, Improving Differentiable Architecture Search via Self-Distillation, arXiv:2302.05629",
        "sd_darts_digits.yaml",
        "DARTS supernet distilled from a vote of its previous snapshots (lower sharpness, smaller discretization gap)",
    )
)


def _check(model: nn.Module) -> DartsSupernet:
    if not isinstance(model, DartsSupernet):
        raise ConfigError(f"sd_darts: the student must be a DartsSupernet (model 'darts'), got {type(model).__name__}.")
    return model


def sd_darts_config(size: int = 3, every: int | None = 1, vote: str = "soft", temperature: float = 1.0,
                    weight: float = 1.0, self_distill: bool = True) -> dict[str, Any]:
    """The weight step's loss as config fragments: ``ce`` plus, with ``self_distill``, ``sd``
    (KD at ``temperature``, weight ``weight``) toward a ``voting_snapshots`` teacher of the
    supernet (``size`` snapshots, one every ``every`` steps, ``vote``); without: plain DARTS."""
    if not self_distill:
        return {"objectives": [{"kind": "ce"}]}
    return {"teacher": {"kind": "voting_snapshots", "size": size, "every": every, "vote": vote},
            "objectives": [{"kind": "ce"}, {"kind": "kd", "name": "sd", "params": {"temperature": temperature}, "weight": weight}]}


def darts_distiller(supernet: DartsSupernet) -> Distiller:
    """Plain DARTS: the weight step is cross-entropy only."""
    return Distiller(_check(supernet), None, terms_from(sd_darts_config(self_distill=False)["objectives"]))


def sd_darts_distiller(
    supernet: DartsSupernet,
    size: int = 3,
    every: int | None = 1,
    vote: str = "soft",
    temperature: float = 1.0,
    weight: float = 1.0,
) -> Distiller:
    """SD-DARTS: cross-entropy plus KD toward a :class:`VotingSnapshotTeacher` of the supernet
    (:func:`sd_darts_config`)."""
    teacher = VotingSnapshotTeacher(_check(supernet), size=size, every=every, vote=vote)
    return Distiller(supernet, teacher, terms_from(sd_darts_config(size, every, vote, temperature, weight)["objectives"]))


def make_search(
    distiller: Distiller,
    total_steps: int,
    weight_lr: float = 0.025,
    weight_lr_min: float = 0.001,
    momentum: float = 0.9,
    weight_decay: float = 3e-4,
    arch_lr: float = 3e-4,
    arch_weight_decay: float = 1e-3,
) -> BilevelSearch:
    """DARTS's optimizers: SGD with momentum and a cosine schedule (``weight_lr`` ->
    ``weight_lr_min``) for the weights, Adam (betas 0.5, 0.999) with weight decay for ``alpha``."""
    model = _check(distiller.student)
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=weight_lr, momentum=momentum, weight_decay=weight_decay)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=arch_lr, betas=(0.5, 0.999), weight_decay=arch_weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=max(1, total_steps), eta_min=weight_lr_min)
    return BilevelSearch(distiller, model.arch_parameters(), w_opt, a_opt, weight_scheduler=sched)


def loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_batch, generator=g)


def run_search(search: BilevelSearch, train: Dataset, val: Dataset, epochs: int, batch_size: int, seed: int) -> list[dict[str, float]]:
    """``epochs`` passes over ``train`` (each step paired with a ``val`` batch); returns the
    mean losses of each epoch."""
    history = []
    train_loader = loader(train, batch_size, True, seed)
    val_loader = loader(val, batch_size, True, seed + 1)
    for _ in range(epochs):
        sums: dict[str, float] = {}
        n = 0
        for tb, vb in search_batches(train_loader, val_loader):
            for k, v in search.step(tb, vb).items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
        history.append({k: v / max(n, 1) for k, v in sums.items()})
    return history


@torch.no_grad()
def recalibrate_bn(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``dataset`` (cumulative average over
    one pass in train mode, no gradients); returns the model in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for batch in loader(dataset, batch_size, False, 0):
        model(batch["x"])
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``dataset``."""
    model.eval()
    correct = total = 0
    for batch in loader(dataset, batch_size, False, 0):
        correct += int((model(batch["x"]).argmax(-1) == batch["y"]).sum())
        total += int(batch["y"].numel())
    return correct / max(total, 1)


def discretized(supernet: DartsSupernet) -> DartsSupernet:
    """A copy of the supernet computing the derived architecture (:meth:`DartsSupernet.genotype`)
    with the inherited weights: one-hot edge weights instead of ``softmax(alpha)``."""
    derived = copy.deepcopy(_check(supernet))
    derived.set_fixed_weights(supernet.discrete_weights())
    return derived


def discretization_gap(supernet: DartsSupernet, calibration: Dataset, evaluation: Dataset) -> dict[str, Any]:
    """Accuracy on ``evaluation`` of the supernet and of its discretised copy, both after
    :func:`recalibrate_bn` on ``calibration``; ``gap = supernet - derived`` (no retraining)."""
    net = recalibrate_bn(copy.deepcopy(_check(supernet)), calibration)
    derived = recalibrate_bn(discretized(supernet), calibration)
    acc_s, acc_d = accuracy(net, evaluation), accuracy(derived, evaluation)
    return {"supernet": acc_s, "derived": acc_d, "gap": acc_s - acc_d, "genotype": supernet.genotype()}


def sharpness(supernet: DartsSupernet, val: Dataset, iters: int = 20, seed: int = 0) -> float:
    """``lambda_max`` of the Hessian of the validation cross-entropy w.r.t. ``alpha``.

    ``L_val`` is the cross-entropy over all of ``val`` as one batch, with the supernet in
    train mode (batch statistics, as in the search's architecture step), on a copy so that
    its BatchNorm running statistics are left untouched.
    """
    net = copy.deepcopy(_check(supernet)).train()
    batch = next(iter(loader(val, len(val), False, 0)))

    def loss() -> torch.Tensor:
        return F.cross_entropy(net(batch["x"]), batch["y"])

    g = torch.Generator().manual_seed(seed)
    value, _ = top_hessian_eigenvalue(loss, net.arch_parameters(), iters=iters, generator=g)
    return value
