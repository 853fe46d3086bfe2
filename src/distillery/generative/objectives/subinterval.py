"""Score matching within a subinterval ``(s, 1]``: Phased DMD (Fan et al. 2025, arXiv:2510.27684).

A phase of Phased DMD ends at an intermediate time ``s > 0``: its generator's samples are
noised samples ``x_s``, not clean ``x0``. The fake-score network must still learn the score of
the generator's distribution noised to a later time ``t > s``; with ``x0`` unknown, the
denoising target is built from ``x_s`` through the Gaussian transition of the process
(paper, Sec. "score matching within subintervals")::

    p(x_t | x_s) = N(alpha_{t|s} x_s, sigma_{t|s}^2 I),
    alpha_{t|s} = alpha_t / alpha_s,   sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2,
    x_t = alpha_{t|s} x_s + sigma_{t|s} eps.

Denoising score matching anchored at ``x_s`` gives the marginal score ``grad log p_t(x_t) =
E[-eps / sigma_{t|s} | x_t]``; in the prediction spaces of a denoiser this is (all with the
same ``(x_t, eps)``; ``hat`` marks the regression target)::

    eps_hat = sigma_t / sigma_{t|s} * eps
    x0_hat  = (x_t - sigma_t eps_hat) / alpha_t
            = x_s / alpha_s - alpha_t sigma_s^2 / (alpha_s^2 sigma_{t|s}) * eps     (paper, x-prediction)
    v_hat (flow velocity eps - x0)
            = (alpha_s^2 sigma_t + alpha_t sigma_s^2) / (alpha_s^2 sigma_{t|s}) * eps - x_s / alpha_s
                                                                                  (paper, flow prediction)

(the ``x0`` and velocity forms are the paper's; :func:`subinterval_targets` computes ``eps_hat``
and ``x0_hat`` and converts them, so every parameterisation of the engine follows). At ``s = 0``
(``alpha_s = 1``, ``sigma_s = 0``) these are ordinary denoising targets. The minimiser of the
loss is the fake distribution's ``E[x0 | x_t]`` at ``t``, exactly what DMD compares with the
teacher's.

Near ``t -> s`` the ``1 / sigma_{t|s}`` factors blow up; the paper writes the loss as
``clamp(1 / sigma_{t|s}^2) || sigma_{t|s} psi - sigma_{t|s} target ||^2`` with the clamp at 10,
i.e. the per-sample weight ``min(1, clamp * sigma_{t|s}^2)`` on ``||psi - target||^2``
(:func:`subinterval_weight`).
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ConfigError
from ..processes import Process, expand


def conditional_alpha_sigma(process: Process, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha_{t|s}, sigma_{t|s})``, each ``(B,)``: the transition ``x_s -> x_t`` (``t >= s``) of
    ``process``. ``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2`` is floored at 0."""
    a_t, s_t = process.alpha_sigma(t)
    a_s, s_s = process.alpha_sigma(s)
    a_ts = a_t / a_s
    var = (s_t**2 - a_ts**2 * s_s**2).clamp_min(0.0)
    return a_ts, var.sqrt()


def renoise(process: Process, x_s: torch.Tensor, eps: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = alpha_{t|s} x_s + sigma_{t|s} eps``: ``x_s`` ``(B, ...)`` at time ``s`` ``(B,)``
    noised further to ``t`` ``(B,)``, ``t >= s``."""
    a_ts, s_ts = conditional_alpha_sigma(process, s, t)
    return expand(a_ts, x_s) * x_s + expand(s_ts, x_s) * eps


def subinterval_targets(process: Process, kind: str, x_s: torch.Tensor, eps: torch.Tensor, s: torch.Tensor,
                        t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_t, target)``: the input ``x_t = alpha_{t|s} x_s + sigma_{t|s} eps`` and the regression
    target of a denoiser predicting ``kind`` (``eps``, ``x0``, ``v``, ``velocity``) for score
    matching within ``(s, 1]`` (module docstring). ``x_s``, ``eps``: ``(B, ...)``; ``s``, ``t``:
    ``(B,)`` with ``t > s`` (``sigma_{t|s} > 0``)."""
    x_t = renoise(process, x_s, eps, s, t)
    a_t, s_t = process.alpha_sigma(t)
    _, s_ts = conditional_alpha_sigma(process, s, t)
    eps_hat = expand(s_t / s_ts, eps) * eps
    x0_hat = (x_t - expand(s_t, x_t) * eps_hat) / expand(a_t, x_t)
    if kind == "eps":
        return x_t, eps_hat
    if kind == "x0":
        return x_t, x0_hat
    if kind == "v":
        return x_t, expand(a_t, x_t) * eps_hat - expand(s_t, x_t) * x0_hat
    if kind == "velocity":
        da, ds = process.d_alpha_sigma(t)
        return x_t, expand(da, x_t) * x0_hat + expand(ds, x_t) * eps_hat
    raise ConfigError(f"Unknown prediction kind {kind!r}; choose one of eps, x0, v, velocity.")


def subinterval_weight(process: Process, s: torch.Tensor, t: torch.Tensor, clamp: float | None = 10.0) -> torch.Tensor:
    """Per-sample weights ``(B,)``: ``min(1, clamp * sigma_{t|s}^2)`` (the paper's
    ``clamp(1 / sigma_{t|s}^2, 0, clamp) * sigma_{t|s}^2``), or 1 with ``clamp=None``."""
    if clamp is None:
        return torch.ones_like(t)
    _, s_ts = conditional_alpha_sigma(process, s, t)
    return (1.0 / s_ts.clamp_min(1e-12) ** 2).clamp(max=float(clamp)) * s_ts**2


def subinterval_score_loss(fake: nn.Module, x_s: torch.Tensor, s: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, *,
                           cond: torch.Tensor | None = None, clamp: float | None = 10.0) -> torch.Tensor:
    """Score matching within ``(s, 1]`` of the fake-score network (a ``Denoiser``) on stop-grad
    samples ``x_s`` ``(B, ...)`` at times ``s`` ``(B,)``: ``mean_b( w_b * mean_d (fake(x_t, t)_bd -
    target_bd)^2 )`` with ``(x_t, target)`` from :func:`subinterval_targets` in the fake network's
    own prediction space and ``w`` from :func:`subinterval_weight`. ``t``: ``(B,)``, ``t > s``."""
    process = fake.process
    x_t, target = subinterval_targets(process, fake.prediction, x_s.detach(), eps, s, t)
    pred = fake(x_t, t, cond)
    per_sample = ((pred - target.detach()) ** 2).flatten(1).mean(dim=1)
    return (subinterval_weight(process, s, t, clamp).to(per_sample.dtype) * per_sample).mean()
