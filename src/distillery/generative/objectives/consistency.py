"""Consistency distillation (Song et al. 2023, "Consistency Models", arXiv:2303.01469; latent
consistency models, Luo et al. 2023, arXiv:2310.04378).

The **consistency function** of a student denoiser is

    f_theta(x, t) = c_skip(sigma~) x + c_out(sigma~) F_theta(x, t)

where ``F_theta`` is the student's ``x0`` prediction (``student.predict(x, t, cond, "x0")``,
converted from whatever the network predicts) and ``sigma~ = sigma(t) / alpha(t)`` is the
process's noise level in EDM units (the EDM sigma itself for :class:`EDMProcess`; for VP and
flow processes the sigma of the equivalent variance-exploding process ``x_t / alpha(t)``),
clamped to ``1e8`` where ``alpha = 0`` (the flow process at ``t = 1``). The coefficients satisfy
the boundary condition ``c_skip(sigma_min~) = 1``, ``c_out(sigma_min~) = 0`` exactly, so
``f_theta(x, t_min) = x`` (see :func:`boundary_coefficients`).

Training (Song et al. 2023, Algorithm 2): on the ``N``-point grid ``t_min = t_1 < ... < t_N =
t_max`` (uniform in ``t``: Karras' sigmas for the EDM process), ``x_{n+1} = alpha x + sigma eps``
at ``t_{n+1}``, ``x^_n`` = one teacher solver step to ``t_n``, and the loss is
``d(f_theta(x_{n+1}, t_{n+1}), f_theta-(x^_n, t_n))`` with ``theta-`` an EMA of ``theta``
(no gradient through the target).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ...errors import ConfigError
from ..denoisers import Denoiser
from ..method import METHODS, GenerativeMethod, drawn, ema_update
from ..processes import Process, expand
from ..samplers import solve
from .common import (
    batch_cond,
    check_decay,
    check_positive_int,
    check_same_process,
    check_solver,
    copy_teacher_weights,
    freeze,
    frozen_copy,
    prior_sample,
    times_like,
)

DISTANCES = ("l2", "pseudo_huber")
COEFFICIENTS = ("song", "lcm")
SIGMA_CAP = 1e8


def boundary_coefficients(sigma: torch.Tensor, sigma_min: float, sigma_data: float = 0.5,
                          form: str = "song") -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out)`` of the consistency parameterisation at EDM noise level ``sigma``
    (any shape), both shaped like ``sigma``:

    * ``song`` (Song et al. 2023, Appendix C): ``c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2)``,
      ``c_out = sd (sigma - sigma_min) / sqrt(sigma^2 + sd^2)``;
    * ``lcm`` (Luo et al. 2023, for ``F`` an ``x0`` prediction, so that ``c_out -> 1`` at high
      noise): the same ``c_skip`` and ``c_out = (sigma - sigma_min) / sqrt((sigma - sigma_min)^2 + sd^2)``.

    Both give ``c_skip = 1``, ``c_out = 0`` exactly at ``sigma = sigma_min``."""
    sd2 = sigma_data**2
    u = sigma - sigma_min
    c_skip = sd2 / (u**2 + sd2)
    if form == "song":
        return c_skip, sigma_data * u / torch.sqrt(sigma**2 + sd2)
    if form == "lcm":
        return c_skip, u / torch.sqrt(u**2 + sd2)
    raise ConfigError(f"consistency: unknown coefficient form {form!r}; choose one of {', '.join(COEFFICIENTS)}.")


def edm_sigma(process: Process, t: torch.Tensor) -> torch.Tensor:
    """``sigma(t) / alpha(t)`` (the EDM noise level of ``x_t / alpha``), capped at ``1e8``."""
    a, s = process.alpha_sigma(t)
    return torch.where(a > 0, s / a.clamp_min(1e-30), torch.full_like(s, SIGMA_CAP)).clamp_max(SIGMA_CAP)


def consistency_function(denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None, *,
                         sigma_data: float = 0.5, form: str = "lcm") -> torch.Tensor:
    """``f(x, t) = c_skip x + c_out F(x, t)`` with ``F`` the denoiser's ``x0`` prediction and
    the coefficients of :func:`boundary_coefficients` at ``edm_sigma(t)``, with ``sigma_min =
    edm_sigma(t_min)`` of the denoiser's process. ``x``: ``(B, ...)``; ``t``: ``(B,)``."""
    process = denoiser.process
    t = times_like(t, x)
    sigma_min = edm_sigma(process, torch.full_like(t, process.t_min))  # same shape and path as sigma(t)
    c_skip, c_out = boundary_coefficients(edm_sigma(process, t), sigma_min, sigma_data, form)
    c_skip, c_out = expand(c_skip, x), expand(c_out, x)
    if bool((c_out == 0).all()):  # at the boundary f is x itself, without evaluating F
        return c_skip * x
    return c_skip * x + c_out * denoiser.predict(x, t, cond, "x0")


def consistency_distance(a: torch.Tensor, b: torch.Tensor, distance: str = "l2", huber_c: float | None = None) -> torch.Tensor:
    """Per-sample distance ``(B,)`` between ``(B, ...)`` tensors: ``l2``: ``||a - b||^2 / d``
    (mean over the ``d`` sample dimensions); ``pseudo_huber``: ``sqrt(||a - b||^2 + c^2) - c``
    (Song & Dhariwal 2023, arXiv:2310.14189), default ``c = 0.00054 sqrt(d)``."""
    diff = (a - b).flatten(1)
    sq = diff.pow(2).sum(1)
    if distance == "l2":
        return sq / diff.shape[1]
    if distance == "pseudo_huber":
        c = 0.00054 * math.sqrt(diff.shape[1]) if huber_c is None else float(huber_c)
        return torch.sqrt(sq + c * c) - c
    raise ConfigError(f"consistency distillation: unknown distance {distance!r}; choose one of {', '.join(DISTANCES)}.")


def consistency_grid(process: Process, num_scales: int, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """The ``N = num_scales`` discretisation times ``t_1 = t_min < ... < t_N = t_max``, ``(N,)``,
    uniform in ``t`` (Karras' sigmas for the EDM process); ``t_1`` is exactly ``t_min`` in ``dtype``."""
    grid = torch.linspace(process.t_min, process.t_max, num_scales, dtype=torch.float64)
    return grid.to(device=device, dtype=dtype)


@METHODS.register("consistency")
class ConsistencyDistillation(GenerativeMethod):
    """Consistency distillation (Song et al. 2023, arXiv:2303.01469; LCM, Luo et al. 2023,
    arXiv:2310.04378): the student's consistency function at ``t_{n+1}`` matches its EMA
    target's at ``t_n`` after one teacher solver step.

    ``num_scales``: ``N >= 2`` grid points; ``ema_decay``: the target's EMA rate ``mu`` in
    [0, 1] (``theta- <- mu theta- + (1 - mu) theta`` after every step); ``solver``: the
    teacher's step (``euler``, ``ddim``, ``heun``); ``distance``: ``l2`` or ``pseudo_huber``;
    ``guidance``: classifier-free guidance scale ``w`` of the teacher (LCM; ``None``: none;
    needs labels in the batch and a teacher trained with a null class); ``sigma_data``,
    ``coefficients`` (``lcm`` default, ``song``): see :func:`boundary_coefficients`.

    The EMA target is the child module ``target`` (checkpointed); the teacher is frozen.
    Sampling is multistep consistency sampling (Algorithm 1): ``x <- f(x, t_k)`` then re-noise
    ``x`` to ``t_{k+1}`` with fresh noise, for ``steps`` evaluations on the uniform grid.
    """

    players = ("student",)

    def __init__(self, student: Denoiser, teacher: Denoiser, num_scales: int = 18, ema_decay: float = 0.95,
                 solver: str = "heun", distance: str = "l2", huber_c: float | None = None, guidance: float | None = None,
                 sigma_data: float | None = None, coefficients: str = "lcm", init_from_teacher: bool = True) -> None:
        super().__init__()
        where = "consistency distillation"
        if teacher is None:
            raise ConfigError(f"{where} needs a teacher denoiser.")
        check_positive_int(num_scales, "num_scales", where, minimum=2)
        self.ema_decay = check_decay(ema_decay, "ema_decay", where)
        check_solver(solver, where)
        if distance not in DISTANCES:
            raise ConfigError(f"{where}: unknown distance {distance!r}; choose one of {', '.join(DISTANCES)}.")
        if coefficients not in COEFFICIENTS:
            raise ConfigError(f"{where}: unknown coefficients {coefficients!r}; choose one of {', '.join(COEFFICIENTS)}.")
        if guidance is not None and not teacher.num_classes:
            raise ConfigError(f"{where}: guidance={guidance} needs a class-conditional teacher (num_classes).")
        check_same_process(student, teacher, where)
        if init_from_teacher:
            copy_teacher_weights(student, teacher, where)
        self.student = student
        self.teacher = freeze(teacher)
        self.target = frozen_copy(student)
        self.num_scales, self.solver, self.distance, self.huber_c = num_scales, solver, distance, huber_c
        self.guidance, self.coefficients = guidance, coefficients
        self.sigma_data = float(sigma_data if sigma_data is not None else getattr(student.process, "sigma_data", 0.5))

    def f(self, denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The consistency function of ``denoiser`` (student or target) with this method's
        coefficients; see :func:`consistency_function`."""
        return consistency_function(denoiser, x, t, cond, sigma_data=self.sigma_data, form=self.coefficients)

    def teacher_step(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """One teacher solver step ``t -> s`` (with classifier-free guidance when set)."""
        guidance = self.guidance if cond is not None else None
        return solve(self.teacher, x, t, s, steps=1, solver=self.solver, cond=cond, guidance=guidance)

    def student_outputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f_theta(x_{n+1}, t_{n+1}), f_theta-(x^_n, t_n))`` for the batch, each shaped like
        ``batch["x"]``: the student at a random grid point and the target network (no gradient)
        one teacher step closer to the data."""
        x = batch["x"]
        process = self.teacher.process
        grid = consistency_grid(process, self.num_scales, x.dtype, x.device)
        n = self.draw.randint(0, self.num_scales - 1, x.shape[0], device=x.device)
        t_next, t_n = grid[n + 1], grid[n]
        x_next = process.add_noise(x, self.draw.randn_like(x), t_next)
        cond = batch_cond(batch, self.student)
        with torch.no_grad():
            x_hat = self.teacher_step(x_next, t_next, t_n, batch_cond(batch, self.teacher))
            target = self.f(self.target, x_hat, t_n, cond)
        return self.f(self.student, x_next, t_next, cond), target

    @drawn
    def loss(self, player: str, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        out, target = self.student_outputs(batch)
        d = consistency_distance(out, target, self.distance, self.huber_c)
        loss = d.mean()
        return loss, {"loss": float(loss.detach())}

    def after_step(self, step: int) -> None:
        """``target <- ema_decay * target + (1 - ema_decay) * student``."""
        ema_update(self.target, self.student, self.ema_decay)

    @torch.no_grad()
    def sample(self, n: int, steps: int, *, cond: torch.Tensor | None = None,
               generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        """Multistep consistency sampling with the student: ``steps`` evaluations at the first
        ``steps`` points of ``process.timesteps(steps)`` (from ``t_max``), re-noised between them."""
        check_positive_int(steps, "steps", "consistency sample")
        process = self.student.process
        x = prior_sample(self.student, n, generator=generator, device=device, where="consistency distillation")
        grid = process.timesteps(steps).to(device=x.device, dtype=x.dtype)
        for k in range(steps):
            if k > 0:
                eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = process.add_noise(x, eps, grid[k].expand(n))
            x = self.f(self.student, x, grid[k].expand(n), cond)
        return x

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "num_scales": self.num_scales, "ema_decay": self.ema_decay, "solver": self.solver,
                "distance": self.distance}

