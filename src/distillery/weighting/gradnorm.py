"""Gradient-norm balancing of loss terms (a GradNorm-style reading of RT-DETRv4's "gradient norm
ratios", Liao et al. 2025, arXiv:2510.25257; the authors' released GAM rule is
:class:`distillery.weighting.gam.GradientGuidedModulation`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..engine import distributed as D
from ..errors import ConfigError
from ..registry import WEIGHTINGS


def gradnorm_config() -> type:
    """The section ``weighting: {gradnorm: {task, ratios, ...}}`` (keys: the constructor's
    arguments; made on first use, so that ``import distillery`` does not import pydantic)."""
    from typing import Annotated

    from pydantic import Field, model_validator

    from ..config.base import PosFloat, PosInt, Strict

    class GradNormCfg(Strict):
        task: str
        ratios: dict[str, PosFloat]
        params: str = ""
        every: PosInt = 1
        momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
        min_weight: Annotated[float, Field(ge=0)] = 0.0
        max_weight: PosFloat = 1e4

        @model_validator(mode="after")
        def _ordered(self) -> GradNormCfg:
            if self.min_weight > self.max_weight:
                raise ValueError(f"min_weight ({self.min_weight:g}) is larger than max_weight ({self.max_weight:g})")
            return self

    return GradNormCfg


@WEIGHTINGS.register("gradnorm", config=gradnorm_config, role="balancer")
class GradNormBalancer:
    """Keep each term's gradient norm at a target ratio to the task term's (gradient-norm balancing).

    On a shared parameter group ``theta`` (for example the student's backbone) the weight of
    each balanced term ``i`` is set so that
    ``||grad_theta (w_i * L_i)|| = ratio_i * ||grad_theta (w_task * L_task)||``, i.e.
    ``w_i = ratio_i * w_task * ||g_task|| / ||g_i||``. Weights are recomputed every ``every``
    steps (extra backward passes through ``theta`` only), optionally smoothed with an
    exponential moving average ``w <- momentum * w + (1 - momentum) * w_new``, and clamped to
    ``[min_weight, max_weight]``. They are treated as constants in the backward pass.

    Liao et al. 2025, "RT-DETRv4: Painlessly Furthering Real-Time Object Detection with Vision
    Foundation Models", arXiv:2510.25257 (Gradient-guided Adaptive Modulation).

    This is a GradNorm-style reading of the abstract's "gradient norm ratios". The authors'
    released GAM differs (one layer's L1 share of the applied gradient, an odds-ratio update
    of the distillation weight once per epoch, a tolerance band, no extra backward pass): it is
    :class:`distillery.weighting.gam.GradientGuidedModulation` (``weighting.gam``).
    """

    def __init__(
        self,
        task: str,
        ratios: dict[str, float],
        params: str = "",
        every: int = 1,
        momentum: float = 0.0,
        min_weight: float = 0.0,
        max_weight: float = 1e4,
        eps: float = 1e-12,
    ) -> None:
        if not ratios:
            raise ConfigError("gradnorm: 'ratios' must name at least one term to balance.")
        if task in ratios:
            raise ConfigError(f"gradnorm: the task term {task!r} cannot also be balanced.")
        if every < 1:
            raise ConfigError(f"gradnorm: every must be >= 1, got {every}.")
        if not 0 <= momentum < 1:
            raise ConfigError(f"gradnorm: momentum must be in [0, 1), got {momentum}.")
        self.task, self.ratios, self.params = task, dict(ratios), params
        self.every, self.momentum = int(every), float(momentum)
        self.min_weight, self.max_weight, self.eps = float(min_weight), float(max_weight), float(eps)
        self.weights: dict[str, float] = {}

    def balance(
        self,
        losses: dict[str, torch.Tensor],
        task_weight: float,
        params: Sequence[torch.Tensor],
        step: int,
    ) -> dict[str, float]:
        """Return the weights of the balanced terms for this step.

        ``losses`` maps term names to scalar losses still attached to the graph; ``params``
        is the shared group. Gradient norms are measured with ``torch.autograd.grad`` and
        ``retain_graph=True``, leaving ``.grad`` untouched.
        """
        if self.weights and step % self.every != 0:
            return dict(self.weights)
        g_task = _grad_norm(losses[self.task], params)
        for name, ratio in self.ratios.items():
            g = _grad_norm(losses[name], params)
            new = ratio * task_weight * g_task / (g + self.eps)
            new = min(max(new, self.min_weight), self.max_weight)
            old = self.weights.get(name)
            self.weights[name] = new if old is None else self.momentum * old + (1 - self.momentum) * new
        return dict(self.weights)

    def state_dict(self) -> dict[str, float]:
        return dict(self.weights)

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.weights = {k: float(v) for k, v in state.items()}


def _grad_norm(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> float:
    """``||d loss / d params||_2``. Under DDP the gradient is first averaged over ranks, so
    the norm is that of the global batch's gradient, the same on every rank and equal to the
    single-process one (each rank's loss is the mean over an equal slice of the batch)."""
    params = list(params)
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    if D.is_initialized() and D.world_size() > 1:
        flat = torch.cat([(g.detach() if g is not None else torch.zeros_like(p)).float().reshape(-1) for g, p in zip(grads, params)])
        return float(D.all_reduce_mean_(flat).norm())
    total = sum(float(g.detach().float().pow(2).sum()) for g in grads if g is not None)
    return math.sqrt(total)
