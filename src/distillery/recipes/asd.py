"""ASD: Adversarial Self-Distillation and First-Frame Enhancement for few-step causal video students.

Y. Yang, H. Huang, X. Peng, X. Hu, D. Luo, J. Zhang, C. Wang, Y. Wu, 2025, "Towards One-step
Causal Video Generation via Adversarial Self-Distillation", arXiv:2511.01419 (ICLR 2026; code:
github.com/BigAandSmallq/SAD). "Our approach builds upon the Distribution Matching Distillation
(DMD) framework and proposes a novel Adversarial Self-Distillation (ASD) strategy, which aligns
the outputs of the student model's n-step denoising process with its (n+1)-step version at the
distribution level ... In addition, we present a First-Frame Enhancement (FFE) strategy, which
allocates more denoising steps to the initial frames ... while applying larger skipping steps to
later frames."

Mechanism, as expressed here (on the streaming engine's Self-Forcing, :class:`~distillery.streaming.objectives.self_forcing.SelfForcing`):

* per update a step count ``n`` is drawn uniformly from ``{1, ..., max_steps - 1}`` (one ``n``
  for the whole global batch, from the update's shared generator);
* the generator rolls out the causal student chunk by chunk with ``n`` steps per chunk
  (self forcing, KV cache, gradient at the last step of the marked chunks) and receives the
  DMD gradient against the bidirectional teacher (Self-Forcing's loss), plus the ASD term
  ``asd_weight * L_G``, ``L_G = E softplus(-D(x^{(n)}_s, s))``;
* a time-aware discriminator ``D`` (:class:`~distillery.generative.objectives.gan.TimeAwareDiscriminator`,
  an MLP on the flattened video with the noise level embedded) is trained to tell the
  student's own stop-grad ``(n+1)``-step rollouts ("real") from its ``n``-step rollouts
  ("fake"), both noised to a random ``s <= d_time_max``:
  ``L_D = E softplus(-D(sg x^{(n+1)}_s, s)) + E softplus(D(sg x^{(n)}_s, s))``
  (:func:`~distillery.generative.objectives.gan.d_loss`; hinge optional, R1 optional);
* First-Frame Enhancement (inference, and the rollouts of training when ``ffe_train``): the
  first generated chunk is denoised in ``ffe_steps`` steps, every later chunk in ``n`` steps on
  the coarser ``n``-step grid (a larger skip between its times): :func:`ffe_schedule`.

The fake-score player learns the distribution of the ``n``-step rollouts (``n`` drawn per
update as for the generator). Players, in order: ``fake_score`` (``fake_updates`` times),
``discriminator``, ``generator``.

[inferred] The paper's discriminator sits on the video diffusion backbone's features and the
paper draws ``n`` from a fixed 4-step grid's subsets; here the discriminator is the engine's
MLP one and each step count uses the process's own ``n``-step grid (``process.timesteps(n)``).
With a real prefix (video continuation), FFE applies to the first *generated* chunk.

Config: ``configs/asd_sprites.yaml``; reproduction: ``distillery reproduce asd``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError
from ..generative.method import METHODS
from ..generative.objectives.dmd import frozen
from ..generative.objectives.gan import (
    GAN_KINDS,
    TimeAwareDiscriminator,
    d_loss,
    flat_dim,
    g_loss,
    r1_penalty,
)
from ..streaming.objectives.self_forcing import SelfForcing
from ..streaming.rollout import rollout, shared_randint
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("asd", "Yang et al. 2025, ASD, arXiv:2511.01419", "asd_sprites.yaml",
           "Self-Forcing DMD plus a discriminator matching the causal student's n-step rollouts to its own "
           "(n+1)-step rollouts, with First-Frame Enhancement (more steps for the first chunk)")
)


def ffe_schedule(chunks: int, steps: int, *, prefix_chunks: int = 0, ffe_steps: int = 0) -> list[int]:
    """Denoising steps per chunk with First-Frame Enhancement: ``0`` for the ``prefix_chunks``
    real chunks, ``max(ffe_steps, steps)`` for the first generated chunk, ``steps`` for every
    later one (``ffe_steps = 0``: uniform). Its sum is the rollout's denoising NFE:
    ``max(ffe_steps, steps) + (chunks - prefix_chunks - 1) * steps``."""
    for key, value, low in (("chunks", chunks, 1), ("steps", steps, 1), ("prefix_chunks", prefix_chunks, 0),
                            ("ffe_steps", ffe_steps, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"asd: {key} must be an integer >= {low}, got {value!r}.")
    if prefix_chunks >= chunks:
        raise ConfigError(f"asd: prefix_chunks ({prefix_chunks}) must be fewer than the chunks ({chunks}).")
    out = [0] * prefix_chunks + [int(steps)] * (chunks - prefix_chunks)
    out[prefix_chunks] = max(int(ffe_steps), int(steps))
    return out


@METHODS.register("asd")
class ASD(SelfForcing):
    """Self-Forcing DMD + Adversarial Self-Distillation (``n`` vs ``n + 1`` steps) + FFE.

    Players ``fake_score``, ``discriminator``, ``generator``. Args (besides Self-Forcing's and
    DMD's; ``steps``/``schedule``/``first``/``last``/``exit`` are set by ASD):
        max_steps: the largest step count of the self-distillation pairs ``N``; ``n`` is drawn
            from ``{1, ..., N - 1}`` per update (``N >= 2``).
        asd_weight: the weight of the generator's adversarial term.
        ffe_steps: First-Frame Enhancement: steps of the first generated chunk at inference
            (``0``: off; used when larger than the step count).
        ffe_train: use FFE in the training rollouts too (default false).
        gan_kind: ``nonsaturating`` or ``hinge``; d_time_max: the largest noise level the
            discriminator sees; r1_gamma: R1 penalty weight (on the (n+1)-step side);
        disc_hidden, disc_features: the discriminator MLP's widths.
    """

    players = ("fake_score", "discriminator", "generator")

    def __init__(self, student: Any, teacher: Any, *, max_steps: int = 3, asd_weight: float = 0.1, ffe_steps: int = 0,
                 ffe_train: bool = False, gan_kind: str = "nonsaturating", d_time_max: float = 0.5, r1_gamma: float = 0.0,
                 disc_hidden: Sequence[int] = (256, 256), disc_features: int = 128, **params: Any) -> None:
        for key in ("steps", "schedule", "first", "last", "exit"):
            if key in params:
                raise ConfigError(f"method 'asd': {key} is set by ASD (n is drawn from 1..max_steps-1 per update); "
                                  "use max_steps and ffe_steps.")
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or not 2 <= max_steps <= 8:
            raise ConfigError(f"method 'asd': max_steps must be an integer in [2, 8], got {max_steps!r}.")
        if isinstance(ffe_steps, bool) or not isinstance(ffe_steps, int) or not 0 <= ffe_steps <= 16:
            raise ConfigError(f"method 'asd': ffe_steps must be an integer in [0, 16] (0: off), got {ffe_steps!r}.")
        for key, value in (("asd_weight", asd_weight), ("r1_gamma", r1_gamma)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"method 'asd': {key} must be a number >= 0, got {value!r}.")
        if gan_kind not in GAN_KINDS:
            raise ConfigError(f"method 'asd': gan_kind must be one of {', '.join(GAN_KINDS)}; got {gan_kind!r}.")
        super().__init__(student, teacher, steps=max_steps, schedule="uniform", exit="last", **params)
        if not 0.0 < float(d_time_max) <= float(student.process.t_max):
            raise ConfigError(f"method 'asd': d_time_max must lie in (0, {student.process.t_max}], got {d_time_max!r}.")
        self.max_steps, self.asd_weight, self.ffe_steps, self.ffe_train = int(max_steps), float(asd_weight), int(ffe_steps), bool(ffe_train)
        self.gan_kind, self.d_time_max, self.r1_gamma = gan_kind, float(d_time_max), float(r1_gamma)
        dtype = next(student.parameters()).dtype
        self.discriminator = TimeAwareDiscriminator(None, int(disc_features), sample_dim=flat_dim(tuple(student.sample_shape)),
                                                    hidden=list(disc_hidden), process=student.process).to(dtype)
        self._n: int | None = None  # the step count of the current update

    # -- schedules ------------------------------------------------------------------------------
    def inference_schedule(self, chunks: int, steps: int, prefix_chunks: int | None = None) -> list[int]:
        """Steps per chunk of an inference rollout of ``chunks`` chunks (``prefix_chunks`` real
        ones; default this method's) at ``steps`` steps per chunk: :func:`ffe_schedule` with
        ``ffe_steps`` (the streaming trainer's evaluation calls this)."""
        prefix = self.prefix_chunks if prefix_chunks is None else int(prefix_chunks)
        return ffe_schedule(chunks, int(steps), prefix_chunks=prefix, ffe_steps=self.ffe_steps)

    def training_schedule(self, n: int) -> list[int]:
        """Steps per chunk of an ``n``-step training rollout (FFE only with ``ffe_train``)."""
        return ffe_schedule(self.chunks, int(n), prefix_chunks=self.prefix_chunks, ffe_steps=self.ffe_steps if self.ffe_train else 0)

    def draw_steps(self) -> int:
        """``n`` uniform in ``{1, ..., max_steps - 1}``, the same on every rank."""
        return 1 + shared_randint(self.draw, self.max_steps - 1)

    def _rollout(self, n: int, cnt: int, cond: Any, device: torch.device, real: torch.Tensor | None, *,
                 grad: str) -> torch.Tensor:
        return rollout(self.generator, cnt, self.chunks, self.training_schedule(n), cond=cond, real=real,
                       prefix_chunks=self.prefix_chunks, context=self.context, context_noise=self.context_noise,
                       grad=grad, exit="last", draw=self.draw, device=device, reinject=self.reinject).video

    def generate(self, n: int, cond: Any, device: torch.device, *, real: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """An ``self._n``-step rollout ``(n, T, C, H, W)`` (``_n`` drawn here when the update has
        not drawn it), with gradient at the marked chunks' last step."""
        k = self._n if self._n is not None else self.draw_steps()
        return self._rollout(k, n, cond, device, real, grad=self.grad), None

    # -- losses ---------------------------------------------------------------------------------
    def loss(self, player: str, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if player not in self.players:
            raise ConfigError(f"asd: unknown player {player!r}; the players are {', '.join(self.players)}.")
        with self.drawing(player, step):
            self._n = self.draw_steps()
            try:
                if player == "discriminator":
                    loss, logs = self.discriminator_loss(batch)
                elif player == "fake_score":
                    loss, logs = self.fake_loss(batch, step)
                else:
                    loss, logs = self.generator_loss(batch, step)
                logs["n"] = float(self._n)
                return loss, logs
            finally:
                self._n = None

    def asd_logits(self, x: torch.Tensor, *, track: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Discriminator logits ``(B,)`` of videos ``x`` noised to ``s ~ U[t_min, d_time_max]``,
        and the noised input (requiring grad with ``track``, for R1)."""
        process = self.generator.process
        t = self.draw.times(process, x.shape[0], high=self.d_time_max, device=x.device, dtype=x.dtype)
        x_t = process.add_noise(x, self.draw.randn_like(x), t)
        if track:
            x_t = x_t.detach().requires_grad_(True)
        return self.discriminator(x_t, t), x_t

    def discriminator_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """``L_D`` on the student's stop-grad ``(n+1)``-step ("real") and ``n``-step ("fake") rollouts."""
        cnt, device, cond = self._batch(batch)
        n, real = int(self._n), batch.get("x")
        with torch.no_grad():
            x_fake = self._rollout(n, cnt, cond, device, real, grad="none")
            x_ref = self._rollout(n + 1, cnt, cond, device, real, grad="none")
        ref_logits, ref_t = self.asd_logits(x_ref, track=self.r1_gamma > 0)
        fake_logits, _ = self.asd_logits(x_fake)
        loss = d_loss(ref_logits, fake_logits, self.gan_kind)
        logs = {"asd_d": float(loss.detach()), "ref_logit": float(ref_logits.mean().detach()),
                "fake_logit": float(fake_logits.mean().detach())}
        if self.r1_gamma > 0:
            r1 = r1_penalty(ref_logits, ref_t)
            loss = loss + 0.5 * self.r1_gamma * r1
            logs["r1"] = float(r1.detach())
        return loss, logs

    def auxiliary_generator_terms(self, loss: torch.Tensor, logs: dict[str, float], x_gen: torch.Tensor, cond: Any, n: int,
                                  device: torch.device) -> torch.Tensor:
        """DMD's optional terms plus ``asd_weight * L_G`` on the ``n``-step rollout (the
        discriminator frozen)."""
        loss = super().auxiliary_generator_terms(loss, logs, x_gen, cond, n, device)
        if self.asd_weight > 0:
            with frozen(self.discriminator):
                logits, _ = self.asd_logits(x_gen)
            adv = g_loss(logits, self.gan_kind)
            loss = loss + self.asd_weight * adv
            logs["asd_g"] = float(adv.detach())
        return loss

    def parameters_of(self, player: str) -> list[torch.nn.Parameter]:
        if player == "discriminator":
            return [p for p in self.discriminator.parameters() if p.requires_grad]
        return super().parameters_of(player)

    def updates(self, player: str) -> int:
        return 1 if player == "discriminator" else super().updates(player)

    # -- sampling ---------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update({"method": "asd", "max_steps": self.max_steps, "asd_weight": self.asd_weight, "ffe_steps": self.ffe_steps,
                    "ffe_train": self.ffe_train, "gan_kind": self.gan_kind, "d_time_max": self.d_time_max,
                    "r1_gamma": self.r1_gamma, "schedule": None, "nfe_per_sample": None})
        return out


# -- config fragments ----------------------------------------------------------------------------
def asd_config(*, max_steps: int = 3, asd_weight: float = 0.1, ffe_steps: int = 3, prefix_chunks: int = 1,
               fake_updates: int = 2, d_time_max: float = 0.5, **extra: Any) -> dict[str, Any]:
    """The ``method`` section of ASD (Self-Forcing DMD + n/(n+1) discriminator + FFE)."""
    params = {"max_steps": int(max_steps), "asd_weight": float(asd_weight), "ffe_steps": int(ffe_steps),
              "prefix_chunks": int(prefix_chunks), "fake_updates": int(fake_updates), "d_time_max": float(d_time_max), **extra}
    return {"method": {"kind": "asd", "params": params}}


def self_forcing_config(*, steps: int = 2, exit: str = "random", prefix_chunks: int = 1, fake_updates: int = 2,
                        **extra: Any) -> dict[str, Any]:
    """The ``method`` section of the Self-Forcing DMD baseline (``steps`` per chunk, a random
    exit step so that it trains 1..steps-step outputs, as ASD trains 1..max_steps-1)."""
    params = {"steps": int(steps), "exit": exit, "prefix_chunks": int(prefix_chunks), "fake_updates": int(fake_updates), **extra}
    return {"method": {"kind": "self_forcing", "params": params}}


__all__ = ["ASD", "asd_config", "ffe_schedule", "self_forcing_config"]
