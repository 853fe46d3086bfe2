"""Gradient-guided Adaptive Modulation (GAM) of RT-DETRv4: a distillation weight steered by
the share of the gradient that reaches the module where the teacher's features are injected.

Liao, Zhao, Shan, Yan, Liu, Lu, Ji, Chen 2025, "RT-DETRv4: Painlessly Furthering Real-Time
Object Detection with Vision Foundation Models", arXiv:2510.25257: "a Gradient-guided Adaptive
Modulation (GAM) strategy, which dynamically adjusts the intensity of semantic transfer based
on gradient norm ratios". The abstract gives no formula; this follows the authors' released
training code (RT-DETRs/RT-DETRv4, ``engine/solver/det_solver.py`` and ``det_engine.py``):

* after every backward pass of the total loss ``L_task + lambda * L_distill`` the share of the
  gradient's L1 mass that lies on the injection module's parameters is measured,
  ``p = sum_{theta in injection} |g_theta| / sum_{theta trainable} |g_theta|`` (the released
  code: the ``encoder.encoder`` AIFI layer, whose output F5 the Deep Semantic Injector aligns
  to the teacher, against all parameters);
* every ``every`` optimizer steps (the released code: once per epoch) the mean ``p_bar`` of
  the period is compared with a band ``[rho - delta, rho + delta]`` (there: ``rho = 11%``,
  ``delta = 1%``). Outside the band, with ``p*`` its *far* edge (``rho + delta`` when below,
  ``rho - delta`` when above, as released),
  ``lambda <- lambda * max(0.1, p*(1 - p_bar) / (p_bar (1 - p*)))``, the result clamped to
  ``[lambda / 10, 10 lambda]`` (the odds ratio: if ``p = c lambda / (c lambda + d)`` the update
  lands on ``p*`` in one step); a zero share resets ``lambda`` to ``default`` (when given).
  (The released code also sets ``lambda`` to that default during its final epochs without
  strong augmentation; distillery has no such phase and leaves it out.)

This differs from :class:`distillery.weighting.GradNormBalancer`, which sets a weight every
step from two extra backward passes so that ``||grad (w L_i)||_2 = ratio * ||grad L_task||_2``
on one parameter group (GradNorm-style balancing). GAM measures the *one* gradient the
optimizer applies (no extra backward: hooks on the parameters), acts on the distillation
term only, and moves slowly.

Example::

    >>> round(gam_update(1.0, share=0.05, rho=0.11, delta=0.01), 4)   # too little gradient there
    2.5909
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..engine import distributed as D
from ..errors import ConfigError
from ..registry import WEIGHTINGS

__all__ = ["GradientGuidedModulation", "gam_update", "gradient_share"]


def gam_update(
    weight: float,
    share: float,
    rho: float,
    delta: float,
    *,
    default: float | None = None,
    max_factor: float = 10.0,
    min_ratio: float = 0.1,
) -> float:
    """One GAM step: the new distillation weight from the current one and the mean share.

    ``share``, ``rho``, ``delta`` are fractions in ``[0, 1]``. Inside ``[rho - delta, rho +
    delta]`` the weight is kept; outside, it is multiplied by the odds ratio
    ``p*(1 - share) / (share (1 - p*))`` toward the band's far edge ``p*`` (floored at
    ``min_ratio``), then clamped to ``[weight / max_factor, weight * max_factor]``. A share of
    (almost) zero gives ``default`` (or keeps the weight); a weight of (almost) zero is kept.
    """
    weight, share = float(weight), float(share)
    if share < 1e-8:
        return float(default) if default is not None else weight
    lo, hi = rho - delta, rho + delta
    if lo <= share <= hi or weight <= 1e-6:
        return weight
    target = hi if share < lo else lo
    denominator = share * (1.0 - target)
    if abs(denominator) < 1e-9:
        return weight
    ratio = max(target * (1.0 - share) / denominator, min_ratio)
    return min(max(weight * ratio, weight / max_factor), weight * max_factor)


def gradient_share(grads_inside: Sequence[torch.Tensor | None], grads_all: Sequence[torch.Tensor | None]) -> float:
    """``sum |g| over grads_inside / sum |g| over grads_all`` (L1 masses; ``None`` entries skipped)."""
    inside = sum(float(g.detach().abs().sum()) for g in grads_inside if g is not None)
    total = sum(float(g.detach().abs().sum()) for g in grads_all if g is not None)
    return inside / total if total > 0 and math.isfinite(total) else 0.0


def gam_config() -> type:
    """The section ``weighting: {gam: {task, term, params, ...}}`` (keys: the constructor's
    arguments; made on first use, so that ``import distillery`` does not import pydantic)."""
    from typing import Annotated

    from pydantic import Field

    from ..config.base import PosFloat, PosInt, Strict

    class GamCfg(Strict):
        """RT-DETRv4's Gradient-guided Adaptive Modulation (:class:`distillery.weighting.gam.GradientGuidedModulation`)."""

        task: str
        term: str
        params: str
        rho: Annotated[float, Field(gt=0, lt=1)] = 0.11
        delta: Annotated[float, Field(ge=0, lt=1)] = 0.01
        initial: PosFloat = 1.0
        every: PosInt = 100
        default: PosFloat | None = None
        max_factor: Annotated[float, Field(gt=1)] = 10.0

    return GamCfg


@WEIGHTINGS.register("gam", config=gam_config, role="balancer")
class GradientGuidedModulation:
    """RT-DETRv4's GAM as a distiller balancer: modulates the weight of one distillation term.

    Args:
        task: the task term (its weight is left alone; named for checks and logs).
        term: the distillation term whose weight ``lambda`` is modulated.
        params: module path prefix of the injection module in the *student* (e.g.
            ``"blocks.2"``); its parameters are the numerator of the share.
        rho, delta: target share of the gradient's L1 mass and the half-width of the band
            (fractions; the released RT-DETRv4 configs use 0.11 and 0.01).
        initial: ``lambda`` at step 0.
        every: optimizer steps per modulation (the paper: one epoch).
        default: ``lambda`` after a period with no gradient on the module (``None``: keep).
        max_factor: the most ``lambda`` changes in one modulation (x or / this factor).

    The denominator is every trainable parameter of the distiller (student, adapters,
    objectives), as the released code sums over the whole model including the projector.
    Shares are recorded by gradient hooks registered on the first :meth:`balance` call (after
    :meth:`Distiller.prepare` has built the adapters); with gradient accumulation the
    micro-batches' L1 masses are summed before the ratio is taken. Under DDP the hooks see each
    rank's own gradients; their masses are averaged over ranks, so every rank sets the same
    ``lambda`` (the share is then that of the per-rank gradients' L1 masses, which can differ
    slightly from the share of the averaged gradient one process would see). ``history`` lists
    ``(step, mean share, new lambda)`` per modulation.
    """

    def __init__(
        self,
        task: str,
        term: str,
        params: str,
        rho: float = 0.11,
        delta: float = 0.01,
        initial: float = 1.0,
        every: int = 100,
        default: float | None = None,
        max_factor: float = 10.0,
    ) -> None:
        if task == term:
            raise ConfigError(f"gam: the task term and the modulated term must differ, both are {task!r}.")
        if not isinstance(params, str) or not params:
            raise ConfigError("gam: params must name the injection module in the student (e.g. 'blocks.2').")
        if not (0.0 < float(rho) < 1.0) or not (0.0 <= float(delta) < min(float(rho), 1.0 - float(rho))):
            raise ConfigError(f"gam: need 0 < rho < 1 and 0 <= delta < min(rho, 1 - rho); got rho={rho!r}, delta={delta!r}.")
        if not float(initial) > 0:
            raise ConfigError(f"gam: initial must be > 0, got {initial!r}.")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"gam: every must be a positive int (optimizer steps), got {every!r}.")
        if default is not None and not float(default) > 0:
            raise ConfigError(f"gam: default must be > 0 or null, got {default!r}.")
        if not float(max_factor) > 1:
            raise ConfigError(f"gam: max_factor must be > 1, got {max_factor!r}.")
        self.task, self.term, self.params = task, term, params
        self.rho, self.delta, self.every = float(rho), float(delta), int(every)
        self.default = None if default is None else float(default)
        self.max_factor = float(max_factor)
        self.weight = float(initial)
        self.shares: list[float] = []  # per optimizer step in the current period
        self.history: list[tuple[int, float, float]] = []
        self._inside = 0.0
        self._total = 0.0
        self._pending_step: int | None = None  # the step whose gradients the accumulators hold
        self._last_update = 0
        self._distiller: list[nn.Module] = []
        self._handles: list[Any] = []

    # -- the interface the Distiller uses ------------------------------------------------------
    @property
    def ratios(self) -> dict[str, float]:
        """``{term: rho}`` (the Distiller checks that these terms exist)."""
        return {self.term: self.rho}

    def bind(self, distiller: nn.Module) -> None:
        """Called by the distiller it balances; hooks are registered lazily in :meth:`balance`."""
        self._distiller = [distiller]

    def balance(self, losses: dict[str, torch.Tensor], task_weight: float, params: Sequence[torch.Tensor], step: int) -> dict[str, float]:
        """The modulated weight ``{term: lambda}`` for optimizer step ``step``.

        ``params`` is the injection group (the student's parameters under ``self.params``).
        """
        if not self._handles:
            self._register(params)
        self._close_step(step)
        if step > 0 and step % self.every == 0 and step != self._last_update:
            self._modulate(step)
        return {self.term: self.weight}

    # -- internals -------------------------------------------------------------------------------
    def _register(self, inside: Sequence[torch.Tensor]) -> None:
        if not self._distiller:
            raise ConfigError("gam: the balancer is not bound to a distiller (Distiller(..., balancer=...) does it).")
        inside_ids = {id(p) for p in inside}
        everything = self._distiller[0].trainable_parameters()
        if not inside_ids:
            raise ConfigError(f"gam: no trainable student parameters under {self.params!r}.")
        for p in everything:
            self._handles.append(p.register_hook(self._hook(id(p) in inside_ids)))

    def _hook(self, is_inside: bool):
        def hook(grad: torch.Tensor) -> None:
            mass = grad.detach().abs().sum().double()  # stays on the device: no sync per parameter
            self._total = self._total + mass
            if is_inside:
                self._inside = self._inside + mass
        return hook

    def _close_step(self, step: int) -> None:
        """The gradients accumulated since the last call belong to the previous optimizer step."""
        if self._pending_step is not None and self._pending_step != step:
            # under DDP the hooks see each rank's own gradients: the masses are averaged over
            # ranks (the same collective on every rank, every optimizer step), so that every
            # rank takes the same share and sets the same lambda
            device = next((p.device for p in self._distiller[0].parameters()), torch.device("cpu"))
            masses = torch.stack([torch.as_tensor(self._inside, dtype=torch.float64, device=device),
                                  torch.as_tensor(self._total, dtype=torch.float64, device=device)])
            inside, total = D.all_reduce_mean_(masses).tolist()
            if total > 0:
                self.shares.append(inside / total)
            self._inside = self._total = 0.0
        self._pending_step = step

    def _modulate(self, step: int) -> None:
        mean = sum(self.shares) / len(self.shares) if self.shares else 0.0
        self.weight = gam_update(self.weight, mean, self.rho, self.delta, default=self.default, max_factor=self.max_factor)
        self.history.append((step, mean, self.weight))
        self.shares = []
        self._last_update = step

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "shares": list(self.shares), "history": [list(h) for h in self.history],
                "inside": float(self._inside), "total": float(self._total), "pending_step": self._pending_step,
                "last_update": self._last_update}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.weight = float(state["weight"])
        self.shares = [float(v) for v in state.get("shares", [])]
        self.history = [tuple(h) for h in state.get("history", [])]  # type: ignore[misc]
        self._inside, self._total = float(state.get("inside", 0.0)), float(state.get("total", 0.0))
        self._pending_step = state.get("pending_step")
        self._last_update = int(state.get("last_update", 0))
