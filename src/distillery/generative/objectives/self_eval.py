"""Self-E: flow matching from scratch plus self-evaluation (Yu, Qi, Li, Zhang, Zhang, Lin,
Shechtman, Wang, Nitzan 2025, "Self-Evaluation Unlocks Any-Step Text-to-Image Generation",
arXiv:2512.22374).

One network ``D`` (a :class:`~distillery.generative.denoisers.Denoiser`, velocity prediction on
the flow process ``x_t = (1 - t) x0 + t eps``) is trained from data with no teacher, by two
signals summed in one loss (player ``model``):

* **learning from data** (flow matching, :mod:`.denoising`)::

      L_data = E_{x0, eps, t} || D(x_t, t) - (eps - x0) ||^2

* **learning by self-evaluation**: the model makes a jump to a clean landing point
  ``x_hat = D_x0(x_t, t)`` (its own ``x0`` prediction from ``x_t``; with ``t = t_max`` a
  one-step sample from noise) and evaluates it with its *own current, stop-grad* score:
  ``x_hat`` is re-noised to ``x_r = alpha_r x_hat + sigma_r eps'`` (``r`` uniform in
  ``t_range``) and DMD's distribution-matching direction (Yin et al. 2024, arXiv:2311.18828)
  is applied to it, with the model's own data-trained denoiser as the *real* score::

      g = (fake_x0(x_r, r) - sg[D_x0(x_r, r)]) / w,   w = mean_d |x_hat - sg[D_x0(x_r, r)]|
      L_self = 0.5 || x_hat - sg(x_hat - g) ||^2 / numel        (gradient in x_hat: g / numel)

  (:func:`~.dmd.dmd_generator_grad` and
  :func:`~.dmd.dmd_generator_loss`, reused as they are).

``L = L_data + lambda * L_self`` (``self_eval_weight``), with the self-evaluation switched on
after ``self_eval_start`` steps (the self-teacher must first know something of the data).

What plays the **fake score** (``fake``):

* ``"head"`` (default): an auxiliary denoiser (a copy of the model's architecture, player
  ``fake_score``, updated ``fake_updates`` times per step) trained by denoising score matching
  on the model's stop-grad landing points (DMD Eq. 6) [inferred: the abstract names no fake
  score; this is DMD's, and works for unconditional data];
* ``"uncond"``: the model's own *unconditional* prediction at the same ``x_r`` (the null class,
  learned by label dropout), so ``g`` is the negative classifier score ``uncond - cond`` of the
  model itself (the classifier-score form of Yu et al. 2023, arXiv:2310.19415, which the
  paper's "classifier-free guidance within a Tweedie formulation" points to) [inferred]; needs
  a class-conditional model and ``label_dropout > 0``; no second network.

Where jumps start [inferred]: a fraction ``prior_fraction`` of each batch jumps from pure noise
(``t = t_max``, the one-step case); the rest from real data noised to ``t`` uniform in
``jump_range`` (the paper evaluates jumps from noisy real inputs, so every step count of
Euler sampling is trained). The paper's network also takes the jump's target time ``s``; here
``s = 0`` always (the landing point is the ``x0`` prediction) and any-step sampling is plain
Euler on the velocity, whose ``k``-th step is the DDIM jump through that ``x0`` prediction.

Sampling (:meth:`SelfE.sample`): Euler on ``process.timesteps(steps)``, 1 to 1000 steps.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError, NonFiniteLossError
from ..method import METHODS, GenerativeMethod, drawn, ema_update
from .denoising import denoising_target
from .dmd import _interval, dmd_generator_grad, dmd_generator_loss, fake_score_loss

FAKES = ("head", "uncond")


def self_evaluation_direction(x_hat: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor, *,
                              normalize: bool = True) -> torch.Tensor:
    """The self-evaluation gradient direction ``(B, ...)`` on landing points ``x_hat``: DMD's
    ``(fake_x0 - real_x0) / w`` where ``real_x0`` is the model's own stop-grad ``x0``
    prediction at the re-noised landing point (the self-teacher) and ``fake_x0`` the fake
    score's (:func:`~distillery.generative.objectives.dmd.dmd_generator_grad`)."""
    return dmd_generator_grad(x_hat, real_x0, fake_x0, normalize=normalize)


def self_evaluation_loss(x_hat: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor, *,
                         normalize: bool = True) -> torch.Tensor:
    """``L_self``: the surrogate whose gradient in ``x_hat`` is
    :func:`self_evaluation_direction` ``/ x_hat.numel()``; ``x_hat`` ``(B, ...)`` with grad."""
    return dmd_generator_loss(x_hat, self_evaluation_direction(x_hat, real_x0, fake_x0, normalize=normalize))


@METHODS.register("self_e")
class SelfE(GenerativeMethod):
    """Self-E (Yu et al. 2025, arXiv:2512.22374): one network trained from scratch by flow
    matching plus self-evaluation with its own stop-grad score (module docstring).

    Players: ``fake_score`` (with ``fake="head"`` and ``self_eval_weight > 0``), then ``model``.

    Parameters (config ``params``): ``self_eval_weight`` (lambda >= 0; 0 is plain flow
    matching), ``self_eval_start`` (steps of flow matching alone first), ``fake`` (``head`` or
    ``uncond``), ``fake_updates`` (1-100), ``t_range`` (where landings are re-noised, default
    ``(0.02, 0.98)``), ``prior_fraction`` (share of jumps from pure noise, [0, 1]),
    ``jump_range`` (``(low, high)`` start times of the other jumps, default the process
    interval), ``normalize`` (DMD's per-sample normalisation), ``label_dropout``, ``ema_decay``
    (``None``: the model samples), ``max_sample_steps``.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, *, self_eval_weight: float = 1.0,
                 self_eval_start: int = 0, fake: str = "head", fake_updates: int = 1,
                 t_range: tuple[float, float] | list[float] | None = None, prior_fraction: float = 0.5,
                 jump_range: tuple[float, float] | list[float] | None = None, normalize: bool = True,
                 label_dropout: float = 0.0, ema_decay: float | None = None, max_sample_steps: int = 1000,
                 seed: int = 0) -> None:
        super().__init__()
        if teacher is not None:
            raise ConfigError("self_e trains from scratch and takes no teacher (its self-teacher is itself); remove the teacher section.")
        if not (hasattr(student, "predict") and hasattr(student, "process")):
            raise ConfigError(f"self_e: the student must be a Denoiser (with .predict and .process); got {type(student).__name__}.")
        if isinstance(self_eval_weight, bool) or not (isinstance(self_eval_weight, (int, float)) and math.isfinite(self_eval_weight) and self_eval_weight >= 0):
            raise ConfigError(f"self_e: self_eval_weight must be a number >= 0, got {self_eval_weight!r}.")
        _check_int("self_eval_start", self_eval_start, 0, 10**9)
        _check_int("fake_updates", fake_updates, 1, 100)
        _check_int("max_sample_steps", max_sample_steps, 1, 100_000)
        if fake not in FAKES:
            raise ConfigError(f"self_e: fake must be one of {', '.join(FAKES)}; got {fake!r}.")
        if not (isinstance(prior_fraction, (int, float)) and 0.0 <= prior_fraction <= 1.0):
            raise ConfigError(f"self_e: prior_fraction must lie in [0, 1], got {prior_fraction!r}.")
        if not (isinstance(label_dropout, (int, float)) and 0.0 <= label_dropout <= 1.0):
            raise ConfigError(f"self_e: label_dropout must lie in [0, 1], got {label_dropout!r}.")
        if label_dropout and not student.num_classes:
            raise ConfigError("self_e: label_dropout needs a class-conditional network (data.conditional: true).")
        if fake == "uncond" and self_eval_weight > 0 and not (student.num_classes and label_dropout > 0):
            raise ConfigError("self_e: fake 'uncond' reads the model's own unconditional prediction; it needs a class-conditional "
                              "network (data.conditional: true) and label_dropout > 0 to learn it.")
        if ema_decay is not None and not 0.0 <= ema_decay <= 1.0:
            raise ConfigError(f"self_e: ema_decay must lie in [0, 1], got {ema_decay!r}.")
        self.model = student
        process = student.process
        self.self_eval_weight, self.self_eval_start = float(self_eval_weight), int(self_eval_start)
        self.fake_kind, self.fake_updates, self.normalize = fake, int(fake_updates), bool(normalize)
        self.prior_fraction, self.label_dropout = float(prior_fraction), float(label_dropout)
        self.t_range = _interval("t_range", t_range, process)
        self.jump_range = (process.t_min, process.t_max) if jump_range is None else _interval("jump_range", jump_range, process)
        self.max_sample_steps, self.seed = int(max_sample_steps), int(seed)
        self.ema_decay = ema_decay
        self.ema = copy.deepcopy(student).requires_grad_(False) if ema_decay is not None else None
        self.fake: nn.Module | None = None
        if fake == "head" and self.self_eval_weight > 0:
            self.fake = copy.deepcopy(student).requires_grad_(True).train()
        self.players = ("fake_score", "model") if self.fake is not None else ("model",)

    @property
    def process(self) -> Any:
        return self.model.process

    def frozen_prefixes(self) -> tuple[str, ...]:
        return ()

    def parameters_of(self, player: str) -> list[nn.Parameter]:
        if player == "model":
            return [p for p in self.model.parameters() if p.requires_grad]
        if player == "fake_score" and self.fake is not None:
            return [p for p in self.fake.parameters() if p.requires_grad]
        raise ConfigError(f"self_e: unknown player {player!r}; the players are {', '.join(self.players)}.")

    def updates(self, player: str) -> int:
        return self.fake_updates if player == "fake_score" else 1

    @drawn
    def loss(self, player: str, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if player == "model":
            return self.model_loss(batch, step)
        if player == "fake_score":
            return self.fake_loss(batch, step)
        raise ConfigError(f"self_e: unknown player {player!r}; the players are {', '.join(self.players)}.")

    # -- pieces -----------------------------------------------------------------------------
    def _cond(self, batch: dict[str, torch.Tensor], *, dropout: bool) -> torch.Tensor | None:
        if not self.model.num_classes:
            return None
        cond = batch["y"].clone()
        if dropout and self.label_dropout:
            cond[self.draw.rand(cond.shape[0], device=cond.device) < self.label_dropout] = self.model.num_classes
        return cond

    def _uniform(self, n: int, interval: tuple[float, float], like: torch.Tensor) -> torch.Tensor:
        lo, hi = interval
        return lo + (hi - lo) * self.draw.rand(n, device=like.device, dtype=like.dtype)

    def jump_starts(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_t, t)``: where the evaluated jumps start, ``(B, ...)`` and ``(B,)``: pure noise at
        ``t_max`` for a ``prior_fraction`` of the batch, real data noised to ``t ~
        U(jump_range)`` for the rest."""
        n, process = x0.shape[0], self.process
        t = self._uniform(n, self.jump_range, x0)
        t = torch.where(self.draw.rand(n, device=x0.device) < self.prior_fraction, torch.full_like(t, process.t_max), t)
        return process.add_noise(x0, self.draw.randn_like(x0), t), t

    def flow_matching_loss(self, x0: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """``L_data``: ``mean_b mean_d (D(x_t, t) - target)^2``, ``t`` uniform on the process
        interval, ``target`` the regression target of the model's prediction kind."""
        process = self.process
        eps = self.draw.randn_like(x0)
        t = self._uniform(x0.shape[0], (process.t_min, process.t_max), x0)
        pred = self.model(process.add_noise(x0, eps, t), t, cond)
        return (pred - denoising_target(process, x0, eps, t, self.model.prediction)).pow(2).flatten(1).mean(1).mean()

    def scores(self, x_r: torch.Tensor, r: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(real_x0, fake_x0)`` at ``(x_r, r)``, no grad: the model's own ``x0`` prediction
        (the self-teacher) and the fake score's (the head, or the model's unconditional one)."""
        with torch.no_grad():
            real = self.model.predict(x_r, r, cond, "x0")
            if self.fake is not None:
                fake = self.fake.predict(x_r, r, cond, "x0")
            else:
                fake = self.model.predict(x_r, r, None, "x0")
        return real, fake

    def model_loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """``L_data + lambda L_self`` (``L_self`` from ``self_eval_start`` on)."""
        x0 = batch["x"]
        fm = self.flow_matching_loss(x0, self._cond(batch, dropout=True))
        logs = {"flow_matching": float(fm.detach())}
        loss = fm
        if self.self_eval_weight > 0 and step >= self.self_eval_start:
            cond = self._cond(batch, dropout=False)
            x_t, t = self.jump_starts(x0)
            x_hat = self.model.predict(x_t, t, cond, "x0")
            r = self._uniform(x0.shape[0], self.t_range, x0)
            x_r = self.process.add_noise(x_hat.detach(), self.draw.randn_like(x_hat), r)
            real, fake = self.scores(x_r, r, cond)
            if not (torch.isfinite(fake).all() and torch.isfinite(real).all()):
                raise NonFiniteLossError(f"self_e: a score estimate is not finite at step {step}; lower the learning rates.")
            se = self_evaluation_loss(x_hat, real, fake, normalize=self.normalize)
            loss = loss + self.self_eval_weight * se
            logs["self_eval"] = float(se.detach())
        return loss, logs

    def fake_loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The fake head's denoising loss on the model's stop-grad landing points."""
        assert self.fake is not None
        x0 = batch["x"]
        cond = self._cond(batch, dropout=False)
        with torch.no_grad():
            x_t, t = self.jump_starts(x0)
            x_hat = self.model.predict(x_t, t, cond, "x0")
        r = self._uniform(x0.shape[0], self.t_range, x0)
        loss = fake_score_loss(self.fake, x_hat, r, self.draw.randn_like(x_hat), cond=cond)
        return loss, {"denoising": float(loss.detach())}

    def after_step(self, step: int) -> None:
        if self.ema is not None:
            ema_update(self.ema, self.model, float(self.ema_decay))

    def sampler_net(self) -> nn.Module:
        return self.ema if self.ema is not None else self.model

    @torch.no_grad()
    def sample(self, n: int, steps: int, *, cond: torch.Tensor | None = None,
               generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        """``(n, *sample_shape)`` samples by ``steps`` Euler steps of the model's velocity (any
        step count, one network)."""
        from ..samplers import sample

        _check_int("steps", steps, 1, self.max_sample_steps)
        net = self.sampler_net()
        if net.sample_shape is None:
            raise ConfigError("self_e: the network has no sample shape; build it with sample_shape.")
        x = self.process.prior((n, *net.sample_shape), generator=generator, device="cpu").to(device)
        return sample(net, x, steps=steps, solver="euler", cond=None if cond is None else cond.to(device))

    def exported(self) -> dict[str, nn.Module]:
        return {"model": self.sampler_net()}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update({"method": "self_e", "self_eval_weight": self.self_eval_weight, "self_eval_start": self.self_eval_start,
                    "fake": self.fake_kind if self.self_eval_weight > 0 else None, "fake_updates": self.fake_updates,
                    "t_range": list(self.t_range), "jump_range": list(self.jump_range),
                    "prior_fraction": self.prior_fraction, "sample_solver": "euler"})
        return out


def _check_int(key: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"self_e: {key} must be an integer in [{low}, {high}], got {value!r}.")
