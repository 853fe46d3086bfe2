"""Rectified-flow reflow (Liu et al. 2022, "Flow Straight and Fast", arXiv:2209.03003).

The teacher's ODE couples noise with data: ``x = ODE_teacher(z)`` from the prior end to
``t_min``. The student is trained by flow matching on that **deterministic coupling**: with
``eps`` the teacher's standard-normal noise (``z = sigma(t_max) eps`` is the teacher's prior
draw), ``x_t = alpha(t) x + sigma(t) eps`` on the student's process and the regression target
its time derivative ``alpha'(t) x + sigma'(t) eps``. For the (unshifted) flow process this is
the paper's straight interpolation ``x_t = (1 - t) x + t eps`` toward the velocity ``eps - x``.
Because the coupling is deterministic, the optimal student's paths are straighter and a
1-step Euler sample lands near the teacher's ``x`` (exactly, for a linear teacher).
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import ConfigError
from ..denoisers import Denoiser
from ..method import METHODS, GenerativeMethod, drawn
from ..processes import Process, expand
from ..samplers import ode_pairs
from ..samplers import sample as ode_sample
from .common import (
    check_positive_int,
    check_solver,
    copy_teacher_weights,
    freeze,
    sample_shape_of,
)


def reflow_interpolation(process: Process, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_t, target)`` on the coupling ``(x, eps)``: ``x_t = alpha(t) x + sigma(t) eps`` and
    the velocity ``d x_t / dt = alpha'(t) x + sigma'(t) eps`` (``eps - x`` for the unshifted
    flow process). ``x``, ``eps``: ``(B, ...)``; ``t``: ``(B,)``."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    da, ds = process.d_alpha_sigma(t)
    return process.add_noise(x, eps, t), expand(da, x) * x + expand(ds, x) * eps


def reflow_loss(velocity: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean_b mean_d (velocity - target)^2``: flow matching's squared error; scalar."""
    return (velocity - target).pow(2).flatten(1).mean(1).mean()


@torch.no_grad()
def teacher_pairs(teacher: Denoiser, eps: torch.Tensor, *, steps: int, solver: str = "heun",
                  cond: torch.Tensor | None = None) -> torch.Tensor:
    """The teacher's sample ``x`` (``(B, ...)``) from standard-normal noise ``eps``: the ODE from
    ``z = sigma(t_max) eps`` at ``t_max`` to ``t_min`` in ``steps`` solver steps."""
    process = teacher.process
    _, s_max = process.alpha_sigma(torch.tensor(process.t_max, dtype=eps.dtype))
    return ode_pairs(teacher, s_max.to(eps.device) * eps, steps=steps, solver=solver, cond=cond)["x_0"]


@METHODS.register("reflow")
class Reflow(GenerativeMethod):
    """Reflow (Liu et al. 2022, arXiv:2209.03003): flow matching on the teacher's ODE coupling.

    ``pairs``: size of the pool of teacher ``(eps, x)`` pairs, generated at construction
    (buffers ``pool_eps``, ``pool_x``, ``pool_y``, checkpointed); ``pair_steps``: the teacher
    solver's steps per pair; ``solver``: ``euler``, ``ddim`` or ``heun``; ``refresh_every``:
    regenerate the pool every that many training steps (``None``: a fixed pool); ``distill``:
    train at ``t = t_max`` only (the paper's one-step distillation of a rectified flow);
    ``seed``: the pool's noise; ``init_from_teacher``: copy the teacher's weights first.
    The student may predict any kind; its prediction is converted to ``velocity``. The data
    batch is used only for its size and device. Sampling: ``steps`` Euler steps of the
    student's ODE from ``sigma(t_max) eps``.
    """

    players = ("student",)

    def __init__(self, student: Denoiser, teacher: Denoiser, pairs: int = 4096, pair_steps: int = 32, solver: str = "heun",
                 refresh_every: int | None = None, distill: bool = False, seed: int = 0, init_from_teacher: bool = False) -> None:
        super().__init__()
        where = "reflow"
        if teacher is None:
            raise ConfigError(f"{where} needs a teacher denoiser (its ODE makes the pairs).")
        check_positive_int(pairs, "pairs", where)
        check_positive_int(pair_steps, "pair_steps", where)
        check_solver(solver, where)
        if refresh_every is not None:
            check_positive_int(refresh_every, "refresh_every", where)
        shape = sample_shape_of(teacher, where)
        if student.sample_shape is not None and tuple(student.sample_shape) != tuple(shape):
            raise ConfigError(f"{where}: student sample_shape {student.sample_shape} differs from the teacher's {shape}.")
        if init_from_teacher:
            copy_teacher_weights(student, teacher, where)
        self.student = student
        self.teacher = freeze(teacher)
        self.pair_steps, self.solver, self.refresh_every, self.distill = pair_steps, solver, refresh_every, bool(distill)
        self.generator = torch.Generator().manual_seed(int(seed))
        dtype = next(teacher.parameters(), torch.empty(0)).dtype
        self.register_buffer("pool_eps", torch.zeros((pairs, *shape), dtype=dtype))
        self.register_buffer("pool_x", torch.zeros((pairs, *shape), dtype=dtype))
        self.register_buffer("pool_y", torch.zeros((pairs,), dtype=torch.long))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.refresh_pairs()

    @torch.no_grad()
    def refresh_pairs(self) -> None:
        """Draw new noise and solve the teacher's ODE for every pair of the pool."""
        eps = torch.randn(self.pool_eps.shape, generator=self.generator, dtype=self.pool_eps.dtype)
        self.pool_eps.copy_(eps)
        cond = None
        if self.teacher.num_classes:
            self.pool_y.copy_(torch.randint(0, self.teacher.num_classes, self.pool_y.shape, generator=self.generator))
            cond = self.pool_y
        self.pool_x.copy_(teacher_pairs(self.teacher, self.pool_eps, steps=self.pair_steps, solver=self.solver, cond=cond))

    @drawn
    def loss(self, player: str, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        b = batch["x"].shape[0]
        idx = self.draw.randint(0, self.pool_x.shape[0], b, device=self.pool_x.device)
        x, eps = self.pool_x[idx], self.pool_eps[idx]
        cond = self.pool_y[idx] if self.student.num_classes else None
        process = self.student.process
        if self.distill:
            t = torch.full((b,), process.t_max, dtype=x.dtype, device=x.device)
        else:
            t = self.draw.times(process, b, device=x.device, dtype=x.dtype)
        x_t, target = reflow_interpolation(process, x, eps, t)
        loss = reflow_loss(self.student.predict(x_t, t, cond, "velocity"), target)
        return loss, {"loss": float(loss.detach())}

    def after_step(self, step: int) -> None:
        self.steps_done += 1
        if self.refresh_every and int(self.steps_done) % self.refresh_every == 0:
            self.refresh_pairs()

    @torch.no_grad()
    def sample(self, n: int, steps: int, *, cond: torch.Tensor | None = None,
               generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        """``steps`` Euler steps of the student's ODE from ``sigma(t_max) eps``, ``(n, *shape)``."""
        check_positive_int(steps, "steps", "reflow sample")
        process = self.student.process
        eps = torch.randn((n, *self.pool_x.shape[1:]), generator=generator, device=device, dtype=self.pool_x.dtype)
        _, s_max = process.alpha_sigma(torch.tensor(process.t_max, dtype=eps.dtype))
        x = s_max.to(eps.device) * eps
        return ode_sample(self.student, x, steps=steps, solver="euler", cond=cond)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pairs": int(self.pool_x.shape[0]), "pair_steps": self.pair_steps,
                "solver": self.solver, "refresh_every": self.refresh_every, "distill": self.distill}
