"""Phased DMD: few-step distribution matching distillation, one expert per SNR phase.

X. Fan, Z. Qiu, Z. Wu, F. Wang, Z. Lin, T. Ren, D. Lin, R. Gong, L. Yang, 2025, "Phased DMD:
Few-step Distribution Matching Distillation via Score Matching within Subintervals",
arXiv:2510.27684. "While prior works propose stochastic gradient truncation as a potential
solution, we observe that it substantially reduces the generation diversity of multi-step
distilled models ... Phased DMD is built upon two key ideas: progressive distribution matching
and score matching within subintervals."

Mechanism, as expressed here (:class:`PhasedDMD`, registered as ``"phased_dmd"``; it builds on
:class:`~distillery.generative.objectives.dmd.DMD` and keeps its fake-score player, real/fake
comparison and gradient normalisation):

* the generator's ``N`` steps on ``t_0 = 1 > t_1 > ... > t_N = 0`` (``process.timesteps(N)``) are
  split into ``K`` phases of ``N / K`` consecutive steps; phase ``k`` runs from ``b_k =
  t_{kN/K}`` down to ``b_{k+1}`` (``b_K = t_min``);
* **mixture of experts over time**: phase ``k`` has its own expert, a copy of the generator
  network; a step at time ``t`` is denoised by the expert whose phase holds ``t``;
* **progressive distribution matching**: the phases are trained in turn, toward higher SNR
  (``phase_steps`` training steps each; the last phase keeps training after its share). In
  phase ``k`` the frozen experts ``0..k-1`` run from noise to ``x_{b_k}`` (no grad); the active
  expert takes a random number ``j < N/K`` of its own steps without grad (DMD2's stochastic
  gradient truncation, inside the phase only; none with one step per phase), then one step
  with grad: ``x0_hat = E_k(x, t)``, and its sample of the phase's end distribution is
  ``x_s = alpha_s x0_hat + sigma_s eps`` at ``s = b_{k+1}`` (``x_s = x0_hat`` in the last
  phase);
* the real and fake scores are compared only at times ``t`` in the phase's subinterval:
  ``x_t = alpha_{t|s} x_s + sigma_{t|s} eps`` with ``t ~ U(max(s, t_lo), t_hi)`` — the paper's
  "reverse nested intervals" ``(s, 1]`` (its supplementary ablation prefers them to disjoint
  ``(b_{k+1}, b_k]``, kept as ``interval: disjoint``); ``(t_lo, t_hi)`` is DMD's ``t_range``;
* the fake-score network learns the score of the generator's ``x_s`` noised to those ``t`` by
  **score matching within the subinterval**
  (:func:`~distillery.generative.objectives.subinterval.subinterval_score_loss`: the target is
  built from ``x_s``, not from an ``x0`` the phase never produces; paper's derived objective
  with its ``min(1, 10 sigma_{t|s}^2)`` weight);
* the generator's gradient is DMD's ``(fake_x0 - real_x0) / w`` applied to ``x_s / alpha_s =
  x0_hat + (sigma_s / alpha_s) eps`` [inferred: a positive per-sample rescaling of ``d
  KL(p_fake,t || p_real,t) / d x_s = alpha_{t|s} alpha_t / sigma_t^2 (fake_x0 - real_x0)``;
  ``w = mean |x_s / alpha_s - real_x0|`` is DMD's normalisation on the same tensor];
* [inferred] when phase ``k >= 1`` starts, its expert is initialised from expert ``k-1``
  (``expert_init: previous``; the paper trains LoRA experts on one base model); the one
  fake-score network carries over from phase to phase and adapts to the new ``x_s``.

Baselines (plain ``dmd``): a one-step DMD generator, and a multi-step DMD2 generator trained with
backward simulation and a gradient through its last step only (stochastic gradient truncation,
SGT). :func:`phased_dmd_config` and :func:`dmd_baseline_config` give the ``method:`` sections;
config: ``configs/phased_dmd_mixture2d.yaml``; miniature: ``distillery reproduce phased_dmd``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, NonFiniteLossError
from ..generative.method import METHODS
from ..generative.objectives.dmd import DMD, _check_int, dmd_generator_grad, dmd_generator_loss
from ..generative.objectives.subinterval import renoise, subinterval_score_loss
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("phased_dmd", "Fan et al. 2025, Phased DMD, arXiv:2510.27684", "phased_dmd_mixture2d.yaml",
           "Multi-step DMD split into SNR phases, one expert per phase, fake score matched within each subinterval")
)

INTERVALS = ("reverse_nested", "disjoint")
EXPERT_INITS = ("previous", "student")


# -- config fragments ------------------------------------------------------------------------------
def phased_dmd_config(*, generator_steps: int = 4, phases: int = 2, phase_steps: int | list[int] = 500,
                      fake_updates: int = 5, interval: str = "reverse_nested", subinterval_clamp: float | None = 10.0,
                      expert_init: str = "previous", fake_init: str = "student") -> dict[str, Any]:
    """The ``method:`` section of a Phased DMD run: ``generator_steps`` sampling steps split into
    ``phases`` phases, ``phase_steps`` training steps per phase (one number or one per phase)."""
    return {"method": {"kind": "phased_dmd", "params": {
        "generator_steps": generator_steps, "phases": phases, "phase_steps": phase_steps, "fake_updates": fake_updates,
        "interval": interval, "subinterval_clamp": subinterval_clamp, "expert_init": expert_init, "fake_init": fake_init}}}


def dmd_baseline_config(*, generator_steps: int = 1, fake_updates: int = 5, fake_init: str = "student") -> dict[str, Any]:
    """The ``method:`` section of the DMD baselines: one step, or ``generator_steps`` steps trained
    with DMD2's backward simulation and the gradient through the last step only (SGT)."""
    return {"method": {"kind": "dmd", "params": {"variant": "dmd2", "generator_steps": generator_steps,
                                                 "fake_updates": fake_updates, "backward_simulation": True,
                                                 "fake_init": fake_init}}}


# -- the method ------------------------------------------------------------------------------------
@METHODS.register("phased_dmd")
class PhasedDMD(DMD):
    """Phased DMD (Fan et al. 2025, arXiv:2510.27684): a ``generator_steps``-step generator made
    of ``phases`` experts (one per SNR phase), trained phase after phase by distribution matching
    within each phase's subinterval (module docstring).

    ``student``: expert 0 (the others are copies of it, ``experts``); ``teacher``: the frozen
    real score. Players as DMD's: ``fake_score`` (``fake_updates`` times per step),
    ``generator`` (all experts; only the active phase's receives gradients).

    Parameters (config ``params``):

    * ``generator_steps`` (1-8), ``phases`` (a divisor of ``generator_steps``);
    * ``phase_steps``: training steps of each phase (an integer, or a list of ``phases``
      integers); after the last phase's share the last phase keeps training;
    * ``interval``: ``reverse_nested`` (default, ``t`` in ``(s, t_hi)``) or ``disjoint`` (``t`` in
      ``(s, b_k)``): where real and fake scores are compared and the fake network is trained;
    * ``subinterval_clamp``: the clamp of the paper's ``1 / sigma_{t|s}^2`` weight (default 10;
      ``null``: unweighted);
    * ``expert_init``: ``previous`` (default: expert ``k`` copies expert ``k-1`` when its phase
      starts) or ``student`` (every expert starts from the student's initial weights);
    * ``fake_updates``, ``guidance``, ``t_range``, ``normalize``, ``fake_init``,
      ``max_sample_steps``: as :class:`~distillery.generative.objectives.dmd.DMD`.
    """

    players = ("fake_score", "generator")

    def __init__(self, student: nn.Module, teacher: nn.Module, *, generator_steps: int = 4, phases: int = 2,
                 phase_steps: int | list[int] = 500, fake_updates: int = 5, guidance: float | None = None,
                 t_range: tuple[float, float] | list[float] | None = None, interval: str = "reverse_nested",
                 subinterval_clamp: float | None = 10.0, expert_init: str = "previous", normalize: bool = True,
                 fake_init: str | nn.Module = "student", max_sample_steps: int = 64) -> None:
        super().__init__(student, teacher, variant="dmd2", generator_steps=generator_steps, fake_updates=fake_updates,
                         guidance=guidance, t_range=t_range, backward_simulation=True, normalize=normalize,
                         fake_init=fake_init, max_sample_steps=max_sample_steps)
        if isinstance(phases, bool) or not isinstance(phases, int) or not 1 <= phases <= self.generator_steps:
            raise ConfigError(f"phased_dmd: phases must be an integer in [1, generator_steps={self.generator_steps}], got {phases!r}.")
        if self.generator_steps % phases:
            raise ConfigError(f"phased_dmd: phases = {phases} must divide generator_steps = {self.generator_steps} "
                              "(every phase has the same number of sampling steps).")
        if interval not in INTERVALS:
            raise ConfigError(f"phased_dmd: interval must be one of {', '.join(INTERVALS)}; got {interval!r}.")
        if expert_init not in EXPERT_INITS:
            raise ConfigError(f"phased_dmd: expert_init must be one of {', '.join(EXPERT_INITS)}; got {expert_init!r}.")
        if subinterval_clamp is not None and (isinstance(subinterval_clamp, bool) or not isinstance(subinterval_clamp, (int, float))
                                              or not (math.isfinite(subinterval_clamp) and subinterval_clamp > 0)):
            raise ConfigError(f"phased_dmd: subinterval_clamp must be a positive number or null, got {subinterval_clamp!r}.")
        self.phases, self.steps_per_phase = int(phases), self.generator_steps // int(phases)
        self.phase_steps = _phase_steps(phase_steps, self.phases)
        self.interval, self.expert_init = interval, expert_init
        self.subinterval_clamp = None if subinterval_clamp is None else float(subinterval_clamp)
        # experts 1..K-1 (expert 0 is ``self.generator``): copies of the student's initial weights
        import copy

        self.experts = nn.ModuleList([copy.deepcopy(student) for _ in range(self.phases - 1)])
        times = self.generator.process.timesteps(self.generator_steps)
        # phase boundaries b_0 = t_max > b_1 > ... > b_K = t_min
        self.register_buffer("boundaries", times[:: self.steps_per_phase].clone(), persistent=False)

    # -- the schedule ----------------------------------------------------------------------------
    def expert(self, k: int) -> nn.Module:
        """Expert ``k`` (phase ``k``, ``0 <= k < phases``)."""
        return self.generator if k == 0 else self.experts[k - 1]

    def phase_at(self, step: int) -> int:
        """The phase trained at training step ``step`` (0-based)."""
        end = 0
        for k, n in enumerate(self.phase_steps):
            end += n
            if step < end:
                return k
        return self.phases - 1

    def expert_of_time(self, t: float) -> int:
        """The phase whose interval ``(b_{k+1}, b_k]`` holds time ``t`` (``t = b_k`` starts phase ``k``)."""
        for k in range(self.phases):
            if t > float(self.boundaries[k + 1]):
                return k
        return self.phases - 1

    # -- players -------------------------------------------------------------------------------
    def parameters_of(self, player: str) -> list[nn.Parameter]:
        if player == "generator":
            return [p for k in range(self.phases) for p in self.expert(k).parameters() if p.requires_grad]
        return super().parameters_of(player)

    def loss(self, player: str, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if player in ("fake_score", "generator"):
            with self.drawing(player, step):  # per-sample draws for the global batch, this rank's slice
                return self.fake_loss(batch, step) if player == "fake_score" else self.generator_loss(batch, step)
        raise ConfigError(f"phased_dmd: unknown player {player!r}; the players are {', '.join(self.players)}.")

    def after_step(self, step: int) -> None:
        """At the start of phase ``k >= 1`` (``expert_init: previous``), expert ``k`` copies expert ``k-1``."""
        nxt = self.phase_at(step + 1)
        if self.expert_init == "previous" and nxt > 0 and nxt != self.phase_at(step):
            self.expert(nxt).load_state_dict(self.expert(nxt - 1).state_dict())

    # -- the generator's samples --------------------------------------------------------------
    def generate_phase(self, phase: int, n: int, cond: torch.Tensor | None,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_s, s, x0_hat)``: the active expert's samples ``(n, ...)`` of phase ``phase``'s end
        distribution at times ``s = b_{phase+1}`` ``(n,)``, and its ``x0`` predictions (with grad
        unless called under ``no_grad``). Earlier experts and the phase's first ``j`` steps (random
        per sample, ``j < steps_per_phase``) run without grad."""
        gen = self.generator
        dtype = next(gen.parameters()).dtype
        times = self.generator_times.to(device=device, dtype=dtype)
        full = torch.cat([times, torch.tensor([gen.process.t_min], device=device, dtype=dtype)])
        x = self.draw.prior(gen.process, n, self._sample_shape(), device=device, dtype=dtype)
        first = phase * self.steps_per_phase
        j = self.draw.randint(0, self.steps_per_phase, n, device=device)
        last = first + int(j.max())
        # the re-noising draws of every step this phase may need, whatever this rank's largest j
        noise = [self.draw.randn_like(x) for _ in range(first + self.steps_per_phase - 1)]
        states = [x]
        with torch.no_grad():
            for i in range(last):
                x0 = self.expert(i // self.steps_per_phase).predict(states[-1], full[i].expand(n), cond, "x0")
                states.append(gen.process.add_noise(x0, noise[i], full[i + 1].expand(n)))
        idx = first + j
        x_in = torch.stack(states)[idx, torch.arange(n, device=device)]
        x0_hat = self.expert(phase).predict(x_in, full[idx], cond, "x0")
        s = self.boundaries[phase + 1].to(device=device, dtype=dtype).expand(n)
        x_s = gen.process.add_noise(x0_hat, self.draw.randn_like(x0_hat), s)
        return x_s, s, x0_hat

    def _phase_times(self, phase: int, s: torch.Tensor) -> torch.Tensor:
        """``(n,)`` times in the phase's subinterval, strictly above ``s``."""
        lo = max(float(s[0]), self.t_range[0])
        hi = self.t_range[1] if self.interval == "reverse_nested" else min(float(self.boundaries[phase]), self.t_range[1])
        hi = max(hi, lo)
        t = lo + (hi - lo) * self.draw.rand(s.shape[0], device=s.device, dtype=s.dtype)
        return torch.maximum(t, s + 1e-4)

    # -- losses ---------------------------------------------------------------------------------
    def generator_loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Distribution matching of the active phase's expert within its subinterval."""
        phase = self.phase_at(step)
        n, device, cond = self._batch(batch)
        x_s, s, _ = self.generate_phase(phase, n, cond, device)
        t = self._phase_times(phase, s)
        x_t = renoise(self.teacher.process, x_s.detach(), self.draw.randn_like(x_s), s, t)
        real_x0, fake_x0 = self.real_fake_x0(x_t, t, cond)
        if not torch.isfinite(fake_x0).all():
            raise NonFiniteLossError(
                f"phased_dmd: the fake_score network's prediction is not finite (NaN/inf) at step {step}; the fake-score "
                "player diverged (lower its learning rate or fake_updates). The last good checkpoint is kept."
            )
        a_s, _ = self.teacher.process.alpha_sigma(s)
        x_scaled = x_s / a_s.reshape(n, *([1] * (x_s.dim() - 1)))
        grad = dmd_generator_grad(x_scaled, real_x0, fake_x0, normalize=self.normalize)
        dm = dmd_generator_loss(x_scaled, grad)
        return dm, {"dm": float(dm.detach()), "grad_norm": float(grad.flatten(1).norm(dim=1).mean()), "phase": float(phase)}

    def fake_loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Score matching within the active phase's subinterval on stop-grad ``x_s``."""
        phase = self.phase_at(step)
        n, device, cond = self._batch(batch)
        with torch.no_grad():
            x_s, s, _ = self.generate_phase(phase, n, cond, device)
        t = self._phase_times(phase, s)
        loss = subinterval_score_loss(self.fake, x_s, s, t, self.draw.randn_like(x_s), cond=cond, clamp=self.subinterval_clamp)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"phased_dmd: the fake_score player's loss is not finite ({float(loss.detach())}) at step {step}; the "
                "fake-score network diverged (lower its learning rate or fake_updates). The last good checkpoint is kept."
            )
        return loss, {"denoising": float(loss.detach()), "phase": float(phase)}

    # -- sampling -------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, steps: int, *, cond: torch.Tensor | None = None,
               generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        """``(n, *sample_shape)`` samples in ``steps`` evaluations, as DMD's multistep sampler,
        each step denoised by the expert whose phase holds its time (``steps = generator_steps``:
        the training times)."""
        _check_int("steps", steps, 1, self.max_sample_steps)
        gen = self.generator
        dtype = next(gen.parameters()).dtype
        times = gen.process.timesteps(steps)[:-1].to(device=device, dtype=dtype)
        x = gen.process.prior((n, *self._sample_shape()), generator=generator, device=device, dtype=dtype)
        x0 = x
        for i in range(steps):
            x0 = self.expert(self.expert_of_time(float(times[i]))).predict(x, times[i].expand(n), cond, "x0")
            if i + 1 < steps:
                eps = torch.randn(x0.shape, generator=generator, device=device, dtype=dtype)
                x = gen.process.add_noise(x0, eps, times[i + 1].expand(n))
        return x0

    def exported(self) -> dict[str, nn.Module]:
        return {f"expert{k}": self.expert(k) for k in range(self.phases)}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update({"method": "phased_dmd", "phases": self.phases, "steps_per_phase": self.steps_per_phase,
                    "phase_steps": list(self.phase_steps), "phase_boundaries": [float(b) for b in self.boundaries],
                    "interval": self.interval, "subinterval_clamp": self.subinterval_clamp, "expert_init": self.expert_init})
        return out


def _phase_steps(value: Any, phases: int) -> list[int]:
    values = [value] * phases if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(values, (list, tuple)) or len(values) != phases or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ConfigError(f"phased_dmd: phase_steps must be a positive integer or a list of {phases} positive integers "
                          f"(one per phase), got {value!r}.")
    return [int(v) for v in values]
