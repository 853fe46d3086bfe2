"""Noising processes: ``x_t = alpha(t) x0 + sigma(t) eps`` for continuous ``t`` in [0, 1].

``t = 0`` is clean data and ``t = 1`` the prior end. Every process here is that one form with a
different ``(alpha, sigma)``:

* :class:`VPProcess` (variance preserving, ``alpha^2 + sigma^2 = 1``): ``schedule="linear"``
  (Ho et al. 2020 in continuous time, Song et al. 2021: ``beta(t) = beta_min + t (beta_max -
  beta_min)``) or ``"cosine"`` (Nichol & Dhariwal 2021, ``s = 0.008``);
* :class:`EDMProcess` (variance exploding, Karras et al. 2022): ``alpha = 1``, ``sigma(t) =
  (sigma_min^(1/rho) + t (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho``; uniform steps in ``t``
  are Karras' sigma steps;
* :class:`FlowProcess` (rectified flow / flow matching, Liu et al. 2022; Lipman et al. 2023):
  ``x_t = (1 - s) x0 + s eps`` with ``s = shift t / (1 + (shift - 1) t)`` (the timestep shift
  of Esser et al. 2024; ``shift = 1``: none).

Parameterisations (what a denoiser predicts), converted by :func:`convert` given ``x_t`` and t:

* ``eps``: the noise; ``x0``: the clean sample;
* ``v``: ``alpha eps - sigma x0`` (Salimans & Ho 2022);
* ``velocity``: ``d x_t / dt = alpha'(t) x0 + sigma'(t) eps`` (flow matching's target;
  ``eps - x0`` for the unshifted flow process);
* ``score``: ``grad log p_t(x_t) = -eps / sigma`` (conversion target only).

Shapes: ``t`` is ``(B,)`` (or a scalar); ``x`` is ``(B, ...)``; coefficients broadcast over
the trailing dimensions of ``x``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import ConfigError
from ..registry import Registry

PROCESSES = Registry("process")

PARAMETERISATIONS = ("eps", "x0", "v", "velocity")


def expand(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``coef`` of shape ``(B,)`` or ``()`` reshaped to broadcast against ``like`` ``(B, ...)``;
    a ``(B, T)`` coefficient (one per frame of a video ``(B, T, ...)``) broadcasts the same way."""
    coef = torch.as_tensor(coef, dtype=like.dtype, device=like.device)
    if coef.dim() == 0:
        return coef
    return coef.reshape(*coef.shape, *([1] * (like.dim() - coef.dim())))


class Process:
    """A noising process ``x_t = alpha(t) x0 + sigma(t) eps``; subclasses define
    :meth:`alpha_sigma`. ``t_min``/``t_max``: the interval samplers and training draw from."""

    name = "process"
    t_min: float = 0.0
    t_max: float = 1.0

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha(t), sigma(t))``, each shaped like ``t``."""
        raise NotImplementedError

    def d_alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha'(t), sigma'(t))``: time derivatives. The processes here override it with
        closed forms; this default (for a user's process) is forward-mode autodiff of
        :meth:`alpha_sigma`."""
        t = torch.as_tensor(t, dtype=torch.get_default_dtype() if not torch.is_tensor(t) else t.dtype)
        t = t.contiguous()  # an expanded (stride-0) t, as Denoiser makes from a scalar, cannot carry a tangent
        _, (da, ds) = torch.func.jvp(self.alpha_sigma, (t,), (torch.ones_like(t),))
        return da, ds

    # -- noising --------------------------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t = alpha(t) x0 + sigma(t) eps``. ``x0``, ``eps``: ``(B, ...)``; ``t``: ``(B,)``."""
        a, s = self.alpha_sigma(torch.as_tensor(t, dtype=x0.dtype, device=x0.device))
        return expand(a, x0) * x0 + expand(s, x0) * eps

    def prior(self, shape: tuple[int, ...], *, generator: torch.Generator | None = None,
              device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
        """A draw from the prior end, ``sigma(t_max) eps`` (plus nothing of the data: ``alpha(t_max)``
        is 0 or negligible for these processes)."""
        eps = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        _, s = self.alpha_sigma(torch.tensor(self.t_max, dtype=eps.dtype, device=eps.device))
        return s * eps

    def sample_t(self, n: int, *, generator: torch.Generator | None = None, device: str | torch.device = "cpu",
                 low: float | None = None, high: float | None = None) -> torch.Tensor:
        """``(n,)`` times uniform in ``[low, high]`` (default ``[t_min, t_max]``)."""
        lo = self.t_min if low is None else low
        hi = self.t_max if high is None else high
        check_interval(lo, hi, self)
        return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)

    def timesteps(self, steps: int, start: float | None = None, end: float | None = None) -> torch.Tensor:
        """``steps + 1`` times from ``start`` (default ``t_max``) down to ``end`` (default ``t_min``),
        uniform in ``t`` (for :class:`EDMProcess` that is Karras' sigma spacing)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"The number of sampling steps must be a positive integer, got {steps!r}.")
        start = self.t_max if start is None else float(start)
        end = self.t_min if end is None else float(end)
        check_interval(end, start, self)
        return torch.linspace(start, end, steps + 1, dtype=torch.float64).float()

    # -- parameterisations ----------------------------------------------------------------
    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ``alpha^2 / sigma^2``."""
        a, s = self.alpha_sigma(t)
        return a**2 / s**2

    def convert(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, source: str, target: str) -> torch.Tensor:
        """Convert a prediction of kind ``source`` at ``(x_t, t)`` into kind ``target``
        (``eps``, ``x0``, ``v``, ``velocity``; ``target`` may also be ``score``)."""
        return convert(self, pred, x_t, t, source, target)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "kind")
        return f"{type(self).__name__}({args})"


def check_interval(low: float, high: float, process: Process | None = None) -> None:
    """Refuse a time interval outside [0, 1] or empty, naming it."""
    if not (0.0 <= low <= 1.0 and 0.0 <= high <= 1.0) or not math.isfinite(low) or not math.isfinite(high):
        raise ConfigError(f"A time interval must lie inside [0, 1] (0: data, 1: noise); got [{low}, {high}].")
    if low > high:
        raise ConfigError(f"A time interval must have low <= high; got [{low}, {high}].")


def convert(process: Process, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, source: str, target: str) -> torch.Tensor:
    """See :meth:`Process.convert`. Every source is first turned into ``(x0, eps)``."""
    if source not in PARAMETERISATIONS:
        raise ConfigError(f"Unknown prediction kind {source!r}; choose one of {', '.join(PARAMETERISATIONS)}.")
    if target not in PARAMETERISATIONS + ("score",):
        raise ConfigError(f"Unknown prediction kind {target!r}; choose one of {', '.join(PARAMETERISATIONS + ('score',))}.")
    t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device)
    if source == target:
        return pred
    a, s = process.alpha_sigma(t)
    a, s = expand(a, x_t), expand(s, x_t)
    if source == "eps":
        x0, eps = (x_t - s * pred) / a, pred
    elif source == "x0":
        x0, eps = pred, (x_t - a * pred) / s
    elif source == "v":
        norm = a**2 + s**2
        x0, eps = (a * x_t - s * pred) / norm, (s * x_t + a * pred) / norm
    else:  # velocity
        da, ds = process.d_alpha_sigma(t)
        da, ds = expand(da, x_t), expand(ds, x_t)
        det = a * ds - s * da
        x0, eps = (ds * x_t - s * pred) / det, (a * pred - da * x_t) / det
    if target == "x0":
        return x0
    if target == "eps":
        return eps
    if target == "v":
        return a * eps - s * x0
    if target == "score":
        return -eps / s
    da, ds = process.d_alpha_sigma(t)
    return expand(da, x_t) * x0 + expand(ds, x_t) * eps


def _vp_derivatives(process: Any, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha', sigma')`` of a variance-preserving process from ``log alpha_bar`` and its
    derivative ``d``: ``alpha' = d alpha / 2``, ``sigma' = -alpha^2 d / (2 sigma)``."""
    t = torch.as_tensor(t, dtype=torch.get_default_dtype() if not torch.is_tensor(t) else t.dtype)
    a, s = process.alpha_sigma(t)
    d = process.d_log_alpha_bar(t)
    return 0.5 * d * a, -(a**2) * d / (2 * s)


@PROCESSES.register("vp")
class VPProcess(Process):
    """Variance preserving: ``alpha^2 + sigma^2 = 1``; ``schedule`` ``linear`` or ``cosine``."""

    name = "vp"

    def __init__(self, schedule: str = "cosine", beta_min: float = 0.1, beta_max: float = 20.0,
                 cosine_s: float = 0.008, t_min: float = 1e-3, t_max: float = 1.0) -> None:
        if schedule not in ("linear", "cosine"):
            raise ConfigError(f"vp process: schedule must be 'linear' or 'cosine', got {schedule!r}.")
        if not 0 < beta_min < beta_max:
            raise ConfigError(f"vp process: need 0 < beta_min < beta_max, got {beta_min}, {beta_max}.")
        check_interval(t_min, t_max)
        self.schedule, self.beta_min, self.beta_max, self.cosine_s = schedule, float(beta_min), float(beta_max), float(cosine_s)
        self.t_min, self.t_max = float(t_min), float(t_max)

    def log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        if self.schedule == "linear":
            return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)
        s = self.cosine_s
        f = torch.cos((t + s) / (1 + s) * math.pi / 2)
        f0 = math.cos(s / (1 + s) * math.pi / 2)
        return 2 * torch.log((f / f0).clamp_min(1e-4))  # alpha floored at 1e-4 near t = 1

    def d_log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """``d/dt log alpha_bar(t)`` in closed form (0 where the cosine schedule's floor holds)."""
        if self.schedule == "linear":
            return -(self.beta_min + (self.beta_max - self.beta_min) * t)
        s = self.cosine_s
        u = (t + s) / (1 + s) * math.pi / 2
        floored = torch.cos(u) / math.cos(s / (1 + s) * math.pi / 2) <= 1e-4
        return torch.where(floored, torch.zeros_like(t), -torch.tan(u) * math.pi / (1 + s))

    def d_alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _vp_derivatives(self, t)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.get_default_dtype() if not torch.is_tensor(t) else t.dtype)
        lab = self.log_alpha_bar(t)
        return torch.exp(0.5 * lab), torch.sqrt(-torch.expm1(lab)).clamp_min(1e-12)

    def describe(self) -> dict[str, Any]:
        return {"kind": "vp", "schedule": self.schedule, "beta_min": self.beta_min, "beta_max": self.beta_max,
                "cosine_s": self.cosine_s, "t_min": self.t_min, "t_max": self.t_max}


@PROCESSES.register("edm")
class EDMProcess(Process):
    """EDM / Karras: ``alpha = 1``, ``sigma`` from ``sigma_min`` (t = 0) to ``sigma_max`` (t = 1) in
    Karras' rho-spacing."""

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, sigma_data: float = 0.5) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ConfigError(f"edm process: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}.")
        if rho <= 0:
            raise ConfigError(f"edm process: rho must be positive, got {rho}.")
        self.sigma_min, self.sigma_max, self.rho, self.sigma_data = float(sigma_min), float(sigma_max), float(rho), float(sigma_data)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return (lo + t * (hi - lo)) ** self.rho

    def d_alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.get_default_dtype() if not torch.is_tensor(t) else t.dtype)
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return torch.zeros_like(t), self.rho * (lo + t * (hi - lo)) ** (self.rho - 1) * (hi - lo)

    def t_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`sigma`."""
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return (torch.as_tensor(sigma) ** (1 / self.rho) - lo) / (hi - lo)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.get_default_dtype() if not torch.is_tensor(t) else t.dtype)
        return torch.ones_like(t), self.sigma(t)

    def describe(self) -> dict[str, Any]:
        return {"kind": "edm", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "rho": self.rho, "sigma_data": self.sigma_data}


@PROCESSES.register("flow")
class FlowProcess(Process):
    """Flow matching / rectified flow: ``x_t = (1 - s) x0 + s eps``, ``s = shift t / (1 + (shift - 1) t)``."""

    name = "flow"

    def __init__(self, shift: float = 1.0, t_min: float = 0.0, t_max: float = 1.0) -> None:
        if not (shift > 0 and math.isfinite(shift)):
            raise ConfigError(f"flow process: shift must be a positive number, got {shift}.")
        check_interval(t_min, t_max)
        self.shift, self.t_min, self.t_max = float(shift), float(t_min), float(t_max)

    def shifted(self, t: torch.Tensor) -> torch.Tensor:
        return self.shift * t / (1 + (self.shift - 1) * t)

    def d_alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.get_default_dtype() if not torch.is_tensor(t) else t.dtype)
        ds = self.shift / (1 + (self.shift - 1) * t) ** 2
        return -ds, ds

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.get_default_dtype() if not torch.is_tensor(t) else t.dtype)
        s = self.shifted(t)
        return 1 - s, s

    def describe(self) -> dict[str, Any]:
        return {"kind": "flow", "shift": self.shift, "t_min": self.t_min, "t_max": self.t_max}


@PROCESSES.register("vp_discrete")
class DiscreteVPProcess(Process):
    """Variance preserving with DDPM's discrete table ``alpha_bar_k = prod_{j<=k} (1 - beta_j)``,
    ``k = 1..N`` (Ho et al. 2020, arXiv:2006.11239), at ``t = k / N``; ``log alpha_bar`` is
    interpolated linearly between the table's points, with ``alpha_bar = 1`` at ``t = 0``.

    diffusers indexes the same table from 0 (``scheduler.alphas_cumprod[k - 1]``, model
    timestep ``k - 1 = N t - 1``); with that convention uniform steps ``t_i = 1 - i / steps``
    are exactly diffusers' ``timestep_spacing="trailing"`` grid and ``t = 0`` its
    ``set_alpha_to_one`` end. Built from ``alphas_cumprod`` (a length-``N`` sequence, as a
    diffusers scheduler holds it) or from ``num_train_timesteps``, ``beta_start``, ``beta_end``
    and ``beta_schedule`` (``linear``, ``scaled_linear``, ``squaredcos_cap_v2``: diffusers' names).
    """

    name = "vp_discrete"

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 beta_schedule: str = "linear", alphas_cumprod: Any = None, t_min: float = 0.0, t_max: float = 1.0) -> None:
        check_interval(t_min, t_max)
        self.t_min, self.t_max = float(t_min), float(t_max)
        if alphas_cumprod is not None:
            table = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
            self.params: dict[str, Any] = {"alphas_cumprod": table.tolist()}
        else:
            n = int(num_train_timesteps)
            if n < 2:
                raise ConfigError(f"vp_discrete process: num_train_timesteps must be at least 2, got {num_train_timesteps}.")
            if beta_schedule == "linear":
                betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
            elif beta_schedule == "scaled_linear":
                betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float32) ** 2
            elif beta_schedule == "squaredcos_cap_v2":
                def f(u: float) -> float:  # Nichol & Dhariwal's alpha_bar, as diffusers' betas_for_alpha_bar
                    return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
                betas = torch.tensor([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)], dtype=torch.float32)
            else:
                raise ConfigError(f"vp_discrete process: beta_schedule must be 'linear', 'scaled_linear' or "
                                  f"'squaredcos_cap_v2', got {beta_schedule!r}.")
            table = torch.cumprod(1.0 - betas, dim=0).double()  # float32 products, as diffusers computes them
            self.params = {"num_train_timesteps": n, "beta_start": float(beta_start), "beta_end": float(beta_end),
                           "beta_schedule": beta_schedule}
        if table.numel() < 2 or not bool(((table > 0) & (table <= 1)).all()) or not bool((table[1:] <= table[:-1]).all()):
            raise ConfigError("vp_discrete process: alphas_cumprod must be a decreasing sequence in (0, 1] of length >= 2.")
        self.num_train_timesteps = table.numel()
        # log alpha_bar at t = k / N, k = 0..N (k = 0: clean data, alpha_bar = 1)
        self.log_table = torch.cat([torch.zeros(1, dtype=torch.float64), table.log()])

    def log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        n = self.num_train_timesteps
        table = self.log_table.to(device=t.device, dtype=t.dtype if t.is_floating_point() else torch.float64)
        u = (t * n).clamp(0, n)
        k = u.detach().floor().clamp(max=n - 1)
        i = k.long()
        return table[i] + (u - k) * (table[i + 1] - table[i])

    def d_log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """The slope of the piecewise-linear ``log alpha_bar`` (the right-hand slope at knots)."""
        n = self.num_train_timesteps
        table = self.log_table.to(device=t.device, dtype=t.dtype if t.is_floating_point() else torch.float64)
        i = (t * n).clamp(0, n).detach().floor().clamp(max=n - 1).long()
        return (table[i + 1] - table[i]) * n

    def d_alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _vp_derivatives(self, t)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.get_default_dtype() if not torch.is_tensor(t) else t.dtype)
        lab = self.log_alpha_bar(t)
        return torch.exp(0.5 * lab), torch.sqrt(-torch.expm1(lab)).clamp_min(1e-12)

    def describe(self) -> dict[str, Any]:
        return {"kind": "vp_discrete", **self.params, "t_min": self.t_min, "t_max": self.t_max}


def build_process(spec: dict[str, Any] | Process | None) -> Process:
    """A process from ``{"kind": "vp" | "vp_discrete" | "edm" | "flow", **params}`` (default: flow)."""
    if isinstance(spec, Process):
        return spec
    spec = dict(spec or {"kind": "flow"})
    kind = spec.pop("kind", "flow")
    cls = PROCESSES.get(kind)
    try:
        return cls(**spec)
    except TypeError as exc:
        raise ConfigError(f"process {kind!r}: {exc}") from None
