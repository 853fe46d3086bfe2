"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of
Diffusion Models", arXiv:2202.00512).

A student (initialised from the teacher) learns to do in one deterministic DDIM step what the
teacher does in two (Algorithm 2). On the student's grid of ``N`` steps, for a grid time ``t``
and the next one ``s`` (toward data), the teacher takes two DDIM steps ``z_t -> z_mid -> z_s``
(``mid = (t + s) / 2``); the target is the ``x~`` for which one DDIM step of the student from
``t`` lands exactly on ``z_s``::

    x~ = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t)

and the loss is ``w(t) ||x~ - x^_student(z_t, t)||^2`` with the truncated-SNR weight
``w = max(SNR(t), 1)`` (the paper's "truncated SNR" loss, ``max(||x - x^||^2, ||eps - eps^||^2)``)
or ``SNR + 1`` (the ``v``-loss). After each round the student becomes the teacher and the
number of steps halves.
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import ConfigError
from ..denoisers import Denoiser
from ..method import METHODS, GenerativeMethod, drawn
from ..processes import Process, expand
from ..samplers import sample as ode_sample
from ..samplers import solve
from .common import (
    batch_cond,
    check_positive_int,
    check_same_process,
    copy_teacher_weights,
    freeze,
    frozen_copy,
    prior_sample,
)

WEIGHTINGS = ("truncated_snr", "snr_plus_one", "none")


def progressive_target(process: Process, z_t: torch.Tensor, z_s: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Salimans & Ho (2022), Algorithm 2: the ``x0`` target ``x~`` such that one DDIM step
    from ``(z_t, t)`` to ``s`` lands on ``z_s``. ``z_t``, ``z_s``: ``(B, ...)``; ``t``, ``s``:
    ``(B,)`` with ``s < t``. Returns ``(B, ...)``."""
    a_t, s_t = process.alpha_sigma(t)
    a_s, s_s = process.alpha_sigma(s)
    ratio = expand(s_s / s_t, z_t)
    return (z_s - ratio * z_t) / (expand(a_s, z_t) - ratio * expand(a_t, z_t))


def snr_weight(snr: torch.Tensor, weighting: str = "truncated_snr") -> torch.Tensor:
    """The weight of an ``x0`` squared error: ``max(SNR, 1)`` (``truncated_snr``), ``SNR + 1``
    (``snr_plus_one``) or ``1`` (``none``). ``snr``: ``(B,)``."""
    if weighting == "truncated_snr":
        return snr.clamp_min(1.0)
    if weighting == "snr_plus_one":
        return snr + 1.0
    if weighting == "none":
        return torch.ones_like(snr)
    raise ConfigError(f"progressive distillation: unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}.")


def progressive_loss(x0_student: torch.Tensor, target: torch.Tensor, snr: torch.Tensor,
                     weighting: str = "truncated_snr") -> torch.Tensor:
    """``mean_b w(snr_b) * mean_d (x0_student - target)^2``: the weighted ``x0`` regression.
    ``x0_student``, ``target``: ``(B, ...)``; ``snr``: ``(B,)``. Returns a scalar."""
    err = (x0_student - target).pow(2).flatten(1).mean(1)
    return (snr_weight(snr.to(err.dtype), weighting) * err).mean()


def teacher_two_steps(teacher: Denoiser, z_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                      cond: torch.Tensor | None = None) -> torch.Tensor:
    """Two teacher DDIM steps ``t -> (t + s)/2 -> s``; ``(B, ...)``."""
    return solve(teacher, z_t, t, s, steps=2, solver="ddim", cond=cond)


@METHODS.register("progressive")
class ProgressiveDistillation(GenerativeMethod):
    """Progressive distillation (Salimans & Ho 2022, arXiv:2202.00512): the student learns one
    DDIM step from two teacher steps; each round the step count halves.

    ``student_steps``: the student's step count in the first round (the teacher then samples
    with ``2 * student_steps``); ``rounds``: how many halvings (the last round's student samples
    in ``student_steps / 2**(rounds - 1)`` steps, so ``student_steps`` must be divisible by
    it); ``steps_per_round``: training steps per round (after the last round training goes on
    at the last step count); ``weighting``: ``truncated_snr`` (default), ``snr_plus_one`` or
    ``none``; ``init_from_teacher``: copy the teacher's weights into the student first.

    After a round the teacher becomes a frozen copy of the student (its architecture and
    prediction kind); from then on it is part of the checkpoint (:meth:`frozen_prefixes`), and
    :meth:`load_state_dict` rebuilds it from the student before loading such a checkpoint.
    The loop's optimizer state is kept across rounds (the paper restarts it). Give the student
    an ``x0`` or ``v`` prediction: an ``eps`` student's ``x0 = (z - sigma eps^) / alpha`` blows
    up where ``alpha -> 0`` (the paper's Section 4), and the loss there with it.

    Example::

        method = ProgressiveDistillation(student, teacher, student_steps=8, rounds=3, steps_per_round=2000)
        loss, logs = method.loss("student", {"x": x}, step)
    """

    players = ("student",)

    def __init__(self, student: Denoiser, teacher: Denoiser, student_steps: int = 8, rounds: int = 1,
                 steps_per_round: int = 1000, weighting: str = "truncated_snr", init_from_teacher: bool = True) -> None:
        super().__init__()
        where = "progressive distillation"
        if teacher is None:
            raise ConfigError(f"{where} needs a teacher denoiser.")
        check_positive_int(student_steps, "student_steps", where)
        check_positive_int(rounds, "rounds", where)
        check_positive_int(steps_per_round, "steps_per_round", where)
        if student_steps % 2 ** (rounds - 1):
            raise ConfigError(f"{where}: student_steps={student_steps} cannot be halved {rounds - 1} times "
                              f"(rounds={rounds}); it must be divisible by {2 ** (rounds - 1)}.")
        snr_weight(torch.ones(1), weighting)  # refuses an unknown weighting
        check_same_process(student, teacher, where)
        if init_from_teacher:
            copy_teacher_weights(student, teacher, where)
        self.student = student
        self.teacher = freeze(teacher)
        self.first_steps, self.rounds, self.steps_per_round, self.weighting = student_steps, rounds, steps_per_round, weighting
        self.register_buffer("round_index", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    # -- state ----------------------------------------------------------------------------------
    @property
    def student_steps(self) -> int:
        """The student's step count in the current round."""
        return self.first_steps // 2 ** int(self.round_index)

    def frozen_prefixes(self) -> tuple[str, ...]:
        return ("teacher.",) if int(self.round_index) == 0 else ()

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Before loading a checkpoint written after the first round, the teacher is rebuilt as
        a copy of the student (its weights then come from the checkpoint)."""
        if int(state_dict.get("round_index", 0)) > 0 and int(self.round_index) == 0:
            self.teacher = frozen_copy(self.student)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # -- training -------------------------------------------------------------------------------
    @drawn
    def loss(self, player: str, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["x"]
        process = self.teacher.process
        n = self.student_steps
        grid = process.timesteps(n).to(device=x.device, dtype=x.dtype)
        i = self.draw.randint(0, n, x.shape[0], device=x.device)
        t, s = grid[i], grid[i + 1]
        cond = batch_cond(batch, self.teacher)
        z_t = process.add_noise(x, self.draw.randn_like(x), t)
        with torch.no_grad():
            target = progressive_target(process, z_t, teacher_two_steps(self.teacher, z_t, t, s, cond), t, s)
        x0 = self.student.predict(z_t, t, batch_cond(batch, self.student), "x0")
        loss = progressive_loss(x0, target, process.snr(t), self.weighting)
        return loss, {"loss": float(loss.detach()), "student_steps": float(n), "round": float(self.round_index)}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Counts training steps; at the end of a round (not the last) the teacher becomes a
        frozen copy of the student and the step count halves."""
        self.steps_done += 1
        if int(self.round_index) < self.rounds - 1 and int(self.steps_done) >= (int(self.round_index) + 1) * self.steps_per_round:
            self.teacher = frozen_copy(self.student)
            self.round_index += 1

    @torch.no_grad()
    def sample(self, n: int, steps: int, *, cond: torch.Tensor | None = None,
               generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        """``steps`` deterministic DDIM steps of the student from its prior."""
        check_positive_int(steps, "steps", "progressive distillation sample")
        x = prior_sample(self.student, n, generator=generator, device=device, where="progressive distillation")
        return ode_sample(self.student, x, steps=steps, solver="ddim", cond=cond)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "student_steps": self.student_steps, "round": int(self.round_index),
                "rounds": self.rounds, "nfe": self.student_steps}

