"""Weighting: how loss terms are combined over training.

* Schedules give a term's weight as a function of the optimizer step: :class:`Constant`,
  :class:`LinearWarmup`, :class:`CosineWarmup`, :class:`StepSchedule`, :class:`CosineSchedule`.
* :class:`GroundTruthMix` mixes a term's target with the labels:
  ``target = alpha * one_hot(y) + (1 - alpha) * teacher`` (Borup & Andersen 2021; ALBEF).
* :class:`GradNormBalancer` rescales terms so that each one's gradient norm on a shared
  parameter group keeps a target ratio to the task term's (a GradNorm-style reading of the
  "gradient norm ratios" of RT-DETRv4's abstract, Liao et al. 2025, arXiv:2510.25257; the
  authors' released GAM rule is :class:`distillery.gam.GradientGuidedModulation`).
* :class:`BlockAccuracyWeight` weights the blocks of a block-wise trained model by their
  reconstruction accuracy (the reconstruction-guided block weighting of Momentum-GS, Fan et
  al. 2024, arXiv:2412.04887).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import distributed as D
from .errors import ConfigError
from .registry import WEIGHTINGS


class Schedule:
    """A weight as a function of the optimizer step (0-based)."""

    def __call__(self, step: int) -> float:
        raise NotImplementedError


@WEIGHTINGS.register("constant")
class Constant(Schedule):
    """Constant weight ``value`` at every step."""

    def __init__(self, value: float = 1.0) -> None:
        if not math.isfinite(float(value)):
            raise ConfigError(f"A term weight must be a finite number, got {value!r}.")
        self.value = float(value)

    def __call__(self, step: int) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"Constant({self.value})"


@WEIGHTINGS.register("linear_warmup")
class LinearWarmup(Schedule):
    """Linear ramp from ``start`` to ``value`` over ``warmup_steps``, then ``value``.

    ``w(k) = start + (value - start) * min(k / warmup_steps, 1)``.
    """

    def __init__(self, value: float = 1.0, warmup_steps: int = 0, start: float = 0.0) -> None:
        if warmup_steps < 0:
            raise ConfigError(f"linear_warmup: warmup_steps must be >= 0, got {warmup_steps}.")
        self.value, self.warmup_steps, self.start = float(value), int(warmup_steps), float(start)

    def __call__(self, step: int) -> float:
        if self.warmup_steps == 0 or step >= self.warmup_steps:
            return self.value
        return self.start + (self.value - self.start) * step / self.warmup_steps


@WEIGHTINGS.register("cosine_warmup")
class CosineWarmup(Schedule):
    """Half-cosine ramp from ``start`` to ``value`` over ``warmup_steps``, then ``value``.

    ``w(k) = start + (value - start) * (1 - cos(pi * k / warmup_steps)) / 2``.
    """

    def __init__(self, value: float = 1.0, warmup_steps: int = 0, start: float = 0.0) -> None:
        if warmup_steps < 0:
            raise ConfigError(f"cosine_warmup: warmup_steps must be >= 0, got {warmup_steps}.")
        self.value, self.warmup_steps, self.start = float(value), int(warmup_steps), float(start)

    def __call__(self, step: int) -> float:
        if self.warmup_steps == 0 or step >= self.warmup_steps:
            return self.value
        return self.start + (self.value - self.start) * (1 - math.cos(math.pi * step / self.warmup_steps)) / 2


@WEIGHTINGS.register("step")
class StepSchedule(Schedule):
    """Piecewise constant: ``value * gamma ** (number of milestones <= step)``."""

    def __init__(self, value: float = 1.0, milestones: Sequence[int] = (), gamma: float = 0.1) -> None:
        self.value, self.milestones, self.gamma = float(value), sorted(int(m) for m in milestones), float(gamma)

    def __call__(self, step: int) -> float:
        passed = sum(1 for m in self.milestones if step >= m)
        return self.value * self.gamma**passed


@WEIGHTINGS.register("cosine")
class CosineSchedule(Schedule):
    """Cosine interpolation from ``start`` (step 0) to ``end`` (step ``total_steps``).

    ``w(k) = end - (end - start) * (1 + cos(pi * min(k, K) / K)) / 2`` with ``K = total_steps``;
    this is the momentum schedule of BYOL and DINO when ``start=m0, end=1``.
    """

    def __init__(self, start: float, end: float, total_steps: int) -> None:
        if total_steps <= 0:
            raise ConfigError(f"cosine: total_steps must be > 0, got {total_steps}.")
        self.start, self.end, self.total_steps = float(start), float(end), int(total_steps)

    def __call__(self, step: int) -> float:
        k = min(max(step, 0), self.total_steps)
        return self.end - (self.end - self.start) * (1 + math.cos(math.pi * k / self.total_steps)) / 2


def as_schedule(weight: float | Schedule) -> Schedule:
    """A float becomes :class:`Constant`; a schedule is returned as is."""
    if isinstance(weight, Schedule):
        return weight
    if isinstance(weight, (int, float)):
        return Constant(float(weight))
    raise ConfigError(f"A weight must be a number or a schedule, got {type(weight).__name__}.")


@WEIGHTINGS.register("gt_mix")
class GroundTruthMix:
    """Mix a term's target with the ground truth: ``alpha * one_hot(y) + (1 - alpha) * teacher``.

    The iterated self-distillation target of Borup & Andersen (2021, "Even your Teacher Needs
    Guidance", arXiv:2102.13088) and ALBEF's momentum-distillation target (Li et al. 2021,
    with ``alpha`` there weighting the pseudo-target instead).

    * ``space="logits"``: ``teacher`` holds logits ``[B, K]``; the mix happens on
      probabilities ``softmax(teacher / T)`` and the result ``[B, K]`` is a probability vector.
    * ``space="values"``: ``teacher`` is a regression target and ``labels`` has its shape.

    Rows whose label is ``-1`` (unlabeled; ``space="logits"`` only) keep the pure teacher target.
    ``alpha`` may be a schedule over optimizer steps.
    """

    def __init__(self, alpha: float | Schedule = 0.5) -> None:
        self.alpha = as_schedule(alpha)

    def __call__(
        self,
        teacher: torch.Tensor,
        labels: torch.Tensor,
        step: int,
        *,
        space: str,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        alpha = self.alpha(step)
        if space == "logits":
            probs = F.softmax(teacher.float() / temperature, dim=-1)
            labeled = labels >= 0
            one_hot = F.one_hot(labels.clamp(min=0).long(), probs.shape[-1]).to(probs.dtype)
            mixed = alpha * one_hot + (1 - alpha) * probs
            return torch.where(labeled.unsqueeze(-1), mixed, probs)
        if space == "values":
            labels = labels.to(teacher.dtype)
            if labels.shape != teacher.shape:
                labels = labels.reshape(teacher.shape)
            return alpha * labels + (1 - alpha) * teacher
        raise ConfigError(f"Ground-truth mixing is not defined for target space {space!r}.")


@WEIGHTINGS.register("gradnorm")
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
    :class:`distillery.gam.GradientGuidedModulation` (``weighting.gam``).
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


@WEIGHTINGS.register("block_accuracy")
class BlockAccuracyWeight:
    """Per-block loss weights from each block's reconstruction accuracy (Momentum-GS).

    Fan et al. 2024, "Momentum-GS: Momentum Gaussian Self-Distillation for High-Quality Large
    Scene Reconstruction", arXiv:2412.04887: "block weighting, dynamically adjusting each
    block's weight according to its reconstruction accuracy", so that blocks lagging behind the
    best one get more weight. Here the accuracy of block ``k`` is a running PSNR ``q_k`` (dB),
    updated whenever the block is measured: ``q_k <- psnr`` the first time, then ``q_k <- m q_k +
    (1 - m) psnr``. The weight is

        w_k = 2 - exp(-(max_j q_j - q_k)^2 / (2 sigma^2))

    1 for the most accurate block, rising toward 2 for blocks far below it (``sigma`` in dB);
    blocks never measured weigh 1. (A Gaussian of the deviation from the best block, as the
    paper's weighting; the paper also uses SSIM, left out here.)

    Example::

        >>> w = BlockAccuracyWeight(num_blocks=3, sigma=1.0, momentum=0.0)
        >>> w.update(0, 30.0); w.update(1, 29.0)
        >>> [round(v, 4) for v in w.weights().tolist()]
        [1.0, 1.3935, 1.0]
    """

    def __init__(self, num_blocks: int, sigma: float = 1.0, momentum: float = 0.9) -> None:
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
            raise ConfigError(f"block_accuracy: num_blocks must be a positive int, got {num_blocks!r}.")
        if not float(sigma) > 0:
            raise ConfigError(f"block_accuracy: sigma must be > 0 (dB), got {sigma!r}.")
        if not 0.0 <= float(momentum) < 1.0:
            raise ConfigError(f"block_accuracy: momentum must be in [0, 1), got {momentum!r}.")
        self.num_blocks, self.sigma, self.momentum = num_blocks, float(sigma), float(momentum)
        self.psnr = torch.full((num_blocks,), float("nan"), dtype=torch.float64)

    def _check(self, block: int) -> int:
        if not 0 <= int(block) < self.num_blocks:
            raise ConfigError(f"block_accuracy: block {block} is out of range 0..{self.num_blocks - 1}.")
        return int(block)

    def update(self, block: int, psnr: float) -> None:
        """Record a new PSNR (dB) measured on ``block``."""
        k = self._check(block)
        old = float(self.psnr[k])
        self.psnr[k] = float(psnr) if math.isnan(old) else self.momentum * old + (1 - self.momentum) * float(psnr)

    def update_mse(self, block: int, mse: float, data_range: float = 1.0) -> None:
        """Record a mean squared error: ``psnr = 10 log10(data_range^2 / mse)``."""
        self.update(block, 10 * math.log10(data_range**2 / max(float(mse), 1e-12)))

    def weights(self) -> torch.Tensor:
        """``[num_blocks]`` weights ``w_k`` (float64)."""
        known = ~torch.isnan(self.psnr)
        if not bool(known.any()):
            return torch.ones(self.num_blocks, dtype=torch.float64)
        gap = self.psnr[known].max() - self.psnr
        w = 2 - torch.exp(-gap**2 / (2 * self.sigma**2))
        return torch.where(known, w, torch.ones_like(w))

    def __call__(self, block: int) -> float:
        """The weight of one block."""
        return float(self.weights()[self._check(block)])

    def state_dict(self) -> dict[str, list[float]]:
        return {"psnr": self.psnr.tolist()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.psnr = torch.tensor(state["psnr"], dtype=torch.float64)
