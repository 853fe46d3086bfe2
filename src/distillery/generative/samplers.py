"""Samplers: integrating the probability-flow ODE of a denoiser, and classifier-free guidance.

Every process here writes ``x_t = alpha(t) x0 + sigma(t) eps`` (:mod:`.processes`); its
probability-flow ODE (Song et al. 2021, arXiv:2011.13456) is ``dx/dt = v(x, t) = alpha'(t)
x0_hat(x, t) + sigma'(t) eps_hat(x, t)``, the ``velocity`` a :class:`~.denoisers.Denoiser`
predicts. Three solvers step it from time ``t`` to time ``s`` (``s < t`` to denoise, ``s > t``
to invert):

* ``"euler"``: ``x_s = x_t + (s - t) v(x_t, t)``; one network evaluation per step, order 1;
* ``"ddim"``: ``x_s = alpha_s x0_hat + sigma_s eps_hat`` with ``eps_hat = (x_t - alpha_t x0_hat)
  / sigma_t`` (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models",
  arXiv:2010.02502, eta = 0): one evaluation per step, exact in one step when ``x0_hat`` does
  not depend on ``x_t`` (a point mass);
* ``"heun"``: Euler predictor ``x' = x_t + (s - t) v(x_t, t)``, trapezoidal corrector ``x_s = x_t
  + (s - t) (v(x_t, t) + v(x', s)) / 2``, skipped on a step that ends at ``sigma = 0`` (Karras
  et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
  arXiv:2206.00364, Algorithm 1 with ``S_churn = 0``): two evaluations per step, order 2.
  Algorithm 1 integrates in Karras' time, which is ``t`` for the VP and flow processes but
  ``sigma`` for :class:`~.processes.EDMProcess` (whose ``t`` only indexes the rho-spaced
  sigmas), so there the step is ``x' = x_t + (sigma_s - sigma_t) eps_hat`` and likewise for the
  corrector: exactly Algorithm 1, and 4-7 times more accurate than Heun in ``t`` at 8-32
  steps (measured on Gaussian data against the closed form).

Steps are uniform in ``t`` (:meth:`~.processes.Process.timesteps`; for the EDM process that is
Karras' rho-spacing of sigma). Nothing here runs under ``torch.no_grad``: students are trained
through these samplers, so callers decide (except :func:`ode_pairs`, which makes targets).

:class:`Guided` is classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598); every
function takes ``guidance=w`` to wrap the denoiser in it.

Example::

    x_T = process.prior((64, 2), generator=g)
    x_0 = sample(teacher, x_T, steps=50, solver="heun")
    pairs = ode_pairs(teacher, x_T, steps=8, solver="ddim")   # pairs["trajectory"]: (9, 64, 2)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .denoisers import Denoiser
from .processes import EDMProcess, check_interval, expand

SOLVERS = ("euler", "ddim", "heun")

__all__ = ["SOLVERS", "Guided", "nfe", "ode_pairs", "sample", "solve"]


# --------------------------------------------------------------------------------------
# Classifier-free guidance
# --------------------------------------------------------------------------------------


class Guided(nn.Module):
    """Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598) around a denoiser.

    ``pred = uncond + scale * (cond - uncond)`` where ``cond`` is the network called with the
    labels and ``uncond`` with ``cond=None`` (the null class). :meth:`forward` combines the
    raw predictions (the denoiser's own prediction space); :meth:`predict` combines the two
    converted predictions, which is the same thing (every conversion is affine in the
    prediction and the weights ``1 - scale`` and ``scale`` sum to one) and stays finite where
    a wrapped denoiser's own :meth:`~.denoisers.Denoiser.predict` is exact but a conversion of
    its raw output is not (the analytic teacher at ``alpha = 0``).

    ``scale = 1``: the conditional prediction (one call); ``scale = 0``: the unconditional one
    (one call); otherwise two network calls per evaluation. ``cond=None``: unconditional.

    Shapes: ``x_t`` ``(B, *sample_shape)``, ``t`` ``(B,)`` or scalar, ``cond`` ``(B,)`` int.
    """

    def __init__(self, denoiser: Denoiser, scale: float) -> None:
        super().__init__()
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ConfigError(f"guidance: the scale must be a finite number, got {scale!r}.")
        self.denoiser = denoiser
        self.scale = float(scale)

    @property
    def process(self) -> Any:
        return self.denoiser.process

    @property
    def prediction(self) -> str:
        return self.denoiser.prediction

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        return self.denoiser.sample_shape

    @property
    def num_classes(self) -> int | None:
        return getattr(self.denoiser, "num_classes", None)

    def _combine(self, call: Any, cond: torch.Tensor | None) -> torch.Tensor:
        if cond is None or self.scale == 0.0:
            return call(None)
        if self.scale == 1.0:
            return call(cond)
        uncond = call(None)
        return uncond + self.scale * (call(cond) - uncond)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self._combine(lambda c: self.denoiser(x_t, t, c), cond)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None, target: str = "x0") -> torch.Tensor:
        """The guided prediction converted to ``target`` (``eps``, ``x0``, ``v``, ``velocity``, ``score``)."""
        return self._combine(lambda c: self.denoiser.predict(x_t, t, c, target), cond)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def _guided(denoiser: Denoiser, guidance: float | None, cond: torch.Tensor | None) -> Denoiser:
    if guidance is None:
        return denoiser
    if cond is None:
        raise ConfigError(f"guidance={guidance!r} needs class labels: pass cond=(B,) labels, or guidance=None.")
    return Guided(denoiser, guidance)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------
# Network evaluations
# --------------------------------------------------------------------------------------


def _check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"The number of sampling steps must be a positive integer, got {steps!r}.")
    return steps


def _check_solver(solver: Any) -> str:
    if solver not in SOLVERS:
        raise ConfigError(f"Unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}.")
    return solver


def nfe(solver: str, steps: int, t_end_sigma_zero: bool = True) -> int:
    """Denoiser evaluations :func:`sample` spends for ``steps`` steps of ``solver``: ``steps``
    for Euler and DDIM, ``2 steps`` for Heun, less one when the last step ends at ``sigma = 0``
    (no correction there). Classifier-free guidance doubles the network calls of each
    evaluation (unless its scale is 0 or 1)."""
    _check_solver(solver)
    _check_steps(steps)
    if solver == "heun":
        return 2 * steps - (1 if t_end_sigma_zero else 0)
    return steps


# --------------------------------------------------------------------------------------
# One step
# --------------------------------------------------------------------------------------


def _step(denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, solver: str,
          cond: torch.Tensor | None) -> torch.Tensor:
    """One ``solver`` step from ``(x, t)`` to time ``s``. ``x``: ``(B, ...)``; ``t``, ``s``: ``(B,)``."""
    process = denoiser.process
    if solver == "ddim":
        a_t, sig_t = process.alpha_sigma(t)
        a_s, sig_s = process.alpha_sigma(s)
        if bool((sig_t > 0).all()):
            x0 = denoiser.predict(x, t, cond, "x0")
            eps = (x - expand(a_t, x) * x0) / expand(sig_t, x)
        else:  # starting on clean data (inversion from t = 0 of the flow process): alpha_t > 0
            eps = denoiser.predict(x, t, cond, "eps")
            x0 = (x - expand(sig_t, x) * eps) / expand(a_t, x)
        return expand(a_s, x) * x0 + expand(sig_s, x) * eps
    if solver == "euler":
        return x + expand(s - t, x) * denoiser.predict(x, t, cond, "velocity")
    # heun: Euler predictor, trapezoidal corrector, except where the step ends at sigma = 0
    in_sigma = isinstance(process, EDMProcess)
    du = expand(process.sigma(s) - process.sigma(t) if in_sigma else s - t, x)
    slope = "eps" if in_sigma else "velocity"  # dx/dsigma = eps when alpha = 1
    d = denoiser.predict(x, t, cond, slope)
    x_next = x + du * d
    _, sig_s = process.alpha_sigma(s)
    keep = sig_s > 0
    if bool(keep.all()):
        return x + du * 0.5 * (d + denoiser.predict(x_next, s, cond, slope))
    if not bool(keep.any()):
        return x_next
    idx = keep.nonzero().squeeze(1)
    sub_cond = None if cond is None else cond[idx]
    d_next = denoiser.predict(x_next[idx], s[idx], sub_cond, slope)
    out = x_next.clone()
    out[idx] = x[idx] + du[idx] * 0.5 * (d[idx] + d_next)
    return out


def _integrate(denoiser: Denoiser, x: torch.Tensor, times: torch.Tensor, solver: str,
               cond: torch.Tensor | None, keep: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Step through ``times`` ``(K + 1, B)``: ``x`` at ``times[0]`` to ``times[K]``."""
    path = [x] if keep else []
    for k in range(times.shape[0] - 1):
        x = _step(denoiser, x, times[k], times[k + 1], solver, cond)
        if keep:
            path.append(x)
    return x, path


def _batch_times(value: Any, name: str, x: torch.Tensor) -> torch.Tensor:
    """A time (float, 0-d or ``(B,)`` tensor) as a ``(B,)`` float64 tensor, checked to lie in [0, 1]."""
    t = torch.as_tensor(value, dtype=torch.float64, device=x.device).detach() if not torch.is_tensor(value) \
        else value.detach().to(device=x.device, dtype=torch.float64)
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ConfigError(f"{name} must be a float or a ({x.shape[0]},) tensor for a batch of {x.shape[0]}; got shape {tuple(t.shape)}.")
    lo, hi = float(t.min()), float(t.max())
    check_interval(min(lo, hi), max(lo, hi))
    return t


# --------------------------------------------------------------------------------------
# Public samplers
# --------------------------------------------------------------------------------------


def sample(denoiser: Denoiser, x: torch.Tensor, *, steps: int, solver: str = "euler",
           t_start: float | None = None, t_end: float | None = None, cond: torch.Tensor | None = None,
           guidance: float | None = None, trajectory: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Integrate the probability-flow ODE from ``t_start`` (default ``process.t_max``) down to
    ``t_end`` (default ``process.t_min``) in ``steps`` steps of ``solver`` on
    ``process.timesteps(steps, t_start, t_end)``.

    Args:
        denoiser: a :class:`~.denoisers.Denoiser` (or :class:`Guided`).
        x: ``(B, *sample_shape)`` the state at ``t_start`` (a full sample: ``process.prior``).
        steps: the number of steps (>= 1); :func:`nfe` gives the network evaluations.
        solver: ``"euler"``, ``"ddim"`` or ``"heun"``.
        t_start, t_end: the interval, inside [0, 1] with ``t_end <= t_start``.
        cond: ``(B,)`` int class labels, or ``None``.
        guidance: classifier-free guidance scale (wraps the denoiser in :class:`Guided`).
        trajectory: also return the states at every time (``steps + 1`` tensors, ``x`` first).

    Returns ``(B, *sample_shape)`` at ``t_end``, or ``(x_end, [x at each time])``.
    """
    _check_solver(solver)
    _check_steps(steps)
    denoiser = _guided(denoiser, guidance, cond)
    grid = denoiser.process.timesteps(steps, t_start, t_end).to(device=x.device, dtype=torch.float64)
    times = grid[:, None].expand(-1, x.shape[0]).to(x.dtype).contiguous()
    x_end, path = _integrate(denoiser, x, times, solver, cond, trajectory)
    return (x_end, path) if trajectory else x_end


def solve(denoiser: Denoiser, x_t: torch.Tensor, t: float | torch.Tensor, s: float | torch.Tensor, *,
          steps: int = 1, solver: str = "euler", cond: torch.Tensor | None = None,
          guidance: float | None = None) -> torch.Tensor:
    """``x_s``: ``x_t`` carried from time ``t`` to time ``s`` along the probability-flow ODE in
    ``steps`` uniform steps of ``solver`` (``s < t``: towards data; ``s > t``: towards noise,
    e.g. DDIM inversion; ``s == t``: ``x_t`` itself after ``steps`` zero steps).

    ``x_t``: ``(B, *sample_shape)``; ``t``, ``s``: floats or ``(B,)`` tensors (one interval per
    sample, as consistency and progressive distillation draw them), inside [0, 1]; ``cond``:
    ``(B,)`` or ``None``. Returns ``(B, *sample_shape)``.
    """
    _check_solver(solver)
    _check_steps(steps)
    denoiser = _guided(denoiser, guidance, cond)
    t64, s64 = _batch_times(t, "t", x_t), _batch_times(s, "s", x_t)
    frac = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64, device=x_t.device)[:, None]
    times = t64[None] + (s64 - t64)[None] * frac
    times[-1] = s64  # exact end
    x_s, _ = _integrate(denoiser, x_t, times.to(x_t.dtype), solver, cond, False)
    return x_s


def ode_pairs(teacher: Denoiser, x_T: torch.Tensor, *, steps: int, solver: str = "heun",
              times: torch.Tensor | list[float] | None = None, cond: torch.Tensor | None = None,
              guidance: float | None = None) -> dict[str, torch.Tensor]:
    """The teacher's ODE trajectory from the prior end, under ``torch.no_grad`` (these are
    regression targets): the ``(x_t, x_s)`` pairs of reflow (Liu et al. 2022,
    arXiv:2209.03003), DMD2's regression loss (Yin et al. 2024, arXiv:2405.14867) and
    ODE-pair initialisation.

    ``times``: ``(K + 1,)`` decreasing times in [0, 1] at which to record the state (``x_T``
    is at ``times[0]``), each interval integrated in ``steps`` solver steps; default
    ``process.timesteps(steps)`` (one solver step per interval, ``K = steps``).

    Returns ``{"x_T": (B, ...), "x_0": (B, ...) the state at times[-1], "times": (K + 1,),
    "trajectory": (K + 1, B, ...)}``.
    """
    _check_solver(solver)
    _check_steps(steps)
    teacher = _guided(teacher, guidance, cond)
    if times is None:
        grid = teacher.process.timesteps(steps).to(device=x_T.device, dtype=torch.float64)
        per_interval = 1
    else:
        grid = torch.as_tensor(times, dtype=torch.float64).to(x_T.device).reshape(-1)
        if grid.numel() < 2:
            raise ConfigError(f"ode_pairs: times needs at least two entries (start and end), got {grid.tolist()}.")
        if not bool((grid[1:] < grid[:-1]).all()):
            raise ConfigError(f"ode_pairs: times must be strictly decreasing (noise to data), got {grid.tolist()}.")
        check_interval(float(grid[-1]), float(grid[0]))
        per_interval = steps
    with torch.no_grad():
        path = [x_T]
        x = x_T
        for k in range(grid.numel() - 1):
            x = solve(teacher, x, float(grid[k]), float(grid[k + 1]), steps=per_interval, solver=solver, cond=cond)
            path.append(x)
    return {"x_T": x_T, "x_0": x, "times": grid.to(x_T.dtype), "trajectory": torch.stack(path)}
