"""TMD: Transition Matching Distillation, a trunk + flow-head student distilled by DMD on its
head rollouts.

W. Nie, J. Berner, N. Ma, C. Liu, S. Xie, A. Vahdat, 2026, "Transition Matching Distillation
for Fast Video Generation", arXiv:2601.09881. "We decompose the original diffusion backbone into
two components: (1) a main backbone ... that extracts semantic representations at each outer
transition step; and (2) a flow head, consisting of the last few layers, that leverages these
representations to perform multiple inner flow updates ... we first introduce a flow head to
the model, and adapt it into a conditional flow map. We then apply distribution matching
distillation to the student model with flow head rollout in each transition step."

Parts (the mechanism and its equations: :mod:`distillery.generative.objectives.tmd`):

* the student network ``trunk_head2d``
  (:class:`~distillery.generative.trunk_head.TrunkHeadDenoiser`): MLP trunk, one fusion layer,
  MLP flow head rolled out ``inner_steps`` Euler steps per outer transition;
* the method ``tmd`` (:class:`~distillery.generative.objectives.tmd.TMD`, a subclass of DMD2):
  stage 1 flow matching of the head towards the teacher's ODE end points, stage 2 DMD2 on the
  rollouts (the fake-score player and the distribution-matching gradient are DMD2's, unchanged);
* the cost: :func:`~distillery.generative.trunk_head.linear_macs` (linear-layer multiply-adds
  per sample); :func:`equal_cost_mlp_width` sizes the plain ``mlp2d`` generator of the baseline
  (``K``-step DMD2) to the same cost per sample.

:func:`tmd_config` / :func:`dmd_baseline_config` give the ``student`` and ``method`` sections;
config: ``configs/tmd_mixture2d.yaml``; reproduction: ``distillery reproduce tmd``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("tmd", "Nie et al. 2026, TMD, arXiv:2601.09881", "tmd_mixture2d.yaml",
           "Trunk once per transition + flow head rolled out N inner steps; head flow-matching adaptation, then DMD2 on rollouts")
)


def tmd_config(*, trunk: Sequence[int] = (128, 128, 128), head: Sequence[int] = (64, 64), inner_steps: int = 4,
               outer_steps: int = 2, adapt_steps: int = 300, adapt_target: str = "teacher", fake_updates: int = 5,
               fake_hidden: Sequence[int] = (128, 128, 128), time_dim: int = 32, head_time_dim: int = 16) -> dict[str, Any]:
    """The ``student`` and ``method`` sections of a TMD run: a ``trunk_head2d`` student predicting
    ``x0`` (``outer_steps`` transitions of one trunk pass + ``inner_steps`` head passes), its head
    adapted for ``adapt_steps`` steps, then DMD2 with an ``mlp2d`` fake score of ``fake_hidden``."""
    return {
        "student": {"denoiser": {"name": "trunk_head2d", "params": {
            "trunk": list(trunk), "head": list(head), "inner_steps": int(inner_steps),
            "time_dim": int(time_dim), "head_time_dim": int(head_time_dim)}}, "prediction": "x0"},
        "method": {"kind": "tmd", "params": {
            "generator_steps": int(outer_steps), "adapt_steps": int(adapt_steps), "adapt_target": adapt_target,
            "fake_updates": int(fake_updates),
            "fake": {"name": "mlp2d", "params": {"hidden": list(fake_hidden), "time_dim": int(time_dim)}}}},
    }


def dmd_baseline_config(*, width: int, depth: int = 3, steps: int = 2, fake_updates: int = 5,
                        time_dim: int = 32) -> dict[str, Any]:
    """The baseline: ``steps``-step DMD2 with a plain ``mlp2d`` generator of ``depth`` layers of
    ``width`` (its fake score a copy of it)."""
    return {
        "student": {"denoiser": {"name": "mlp2d", "params": {"hidden": [int(width)] * depth, "time_dim": int(time_dim)}},
                    "prediction": "x0"},
        "method": {"kind": "dmd", "params": {"variant": "dmd2", "generator_steps": int(steps),
                                             "fake_updates": int(fake_updates), "fake_init": "student"}},
    }


def tmd_macs(trunk: Sequence[int], head: Sequence[int], inner_steps: int, outer_steps: int, *, time_dim: int = 32,
             head_time_dim: int = 16, dim: int = 2) -> float:
    """Linear-layer multiply-adds per sample of a TMD sample (measured on the network by
    :func:`~distillery.generative.trunk_head.linear_macs`, ``outer_steps`` transitions)."""
    from ..generative.trunk_head import TrunkHeadDenoiser, linear_macs

    net = TrunkHeadDenoiser(dim=dim, trunk=tuple(trunk), head=tuple(head), time_dim=time_dim,
                            head_time_dim=head_time_dim, inner_steps=int(inner_steps))
    x, t = torch.zeros(4, dim), torch.full((4,), 0.5)
    return outer_steps * linear_macs(net, lambda: net(x, t), 4)


def mlp_macs(width: int, depth: int, steps: int, *, time_dim: int = 32, dim: int = 2) -> float:
    """Linear-layer multiply-adds per sample of ``steps`` passes of an ``mlp2d`` (measured)."""
    from ..generative.denoisers import MLPDenoiser
    from ..generative.trunk_head import linear_macs

    net = MLPDenoiser(dim=dim, hidden=(int(width),) * depth, time_dim=time_dim)
    x, t = torch.zeros(4, dim), torch.full((4,), 0.5)
    return steps * linear_macs(net, lambda: net(x, t), 4)


def equal_cost_mlp_width(*, trunk: Sequence[int] = (128, 128, 128), head: Sequence[int] = (64, 64), inner_steps: int = 4,
                         outer_steps: int = 2, depth: int = 3, time_dim: int = 32, head_time_dim: int = 16) -> tuple[int, float, float]:
    """``(width, tmd_macs, baseline_macs)``: the width of a ``depth``-layer ``mlp2d`` whose
    ``outer_steps`` passes cost closest to TMD's ``outer_steps x (trunk + inner_steps x head)``."""
    target = tmd_macs(trunk, head, inner_steps, outer_steps, time_dim=time_dim, head_time_dim=head_time_dim)
    best = min(range(4, 2049), key=lambda w: abs(_mlp_macs_formula(w, depth, time_dim) * outer_steps - target))
    return best, target, mlp_macs(best, depth, outer_steps, time_dim=time_dim)


def _mlp_macs_formula(width: int, depth: int, time_dim: int, dim: int = 2) -> float:
    """The closed form of :func:`mlp_macs` for one pass (used for the search; the returned
    figure is measured)."""
    return 2 * time_dim * time_dim + (dim + time_dim) * width + (depth - 1) * width * width + width * dim
