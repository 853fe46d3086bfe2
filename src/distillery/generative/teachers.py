"""An analytic teacher: the exact denoiser of a Gaussian mixture under any noising process.

If the data is the isotropic mixture ``p_0 = sum_k w_k N(mu_k, s_k^2 I)`` and ``x_t = alpha x0 +
sigma eps`` (:mod:`.processes`), the noised marginal is again a mixture,

    p_t(x) = sum_k w_k N(x; alpha mu_k, (alpha^2 s_k^2 + sigma^2) I),

so its score, the optimal ``eps`` prediction ``eps_hat = -sigma grad log p_t`` and the
posterior mean ``E[x0 | x_t] = sum_k r_k (mu_k + alpha s_k^2 / v_k (x_t - alpha mu_k))`` (with
``v_k = alpha^2 s_k^2 + sigma^2`` and responsibilities ``r_k`` = the posterior of component
``k``) are all closed forms. This is the "real score" that distribution-matching methods need,
without training a teacher: DMD (Yin et al. 2024, arXiv:2311.18828) and Phased DMD are studied
on such 2-D mixtures (a 5 x 5 grid, a ring).

Responsibilities are a softmax of log-densities (``logsumexp``), so points far from every mode
and tiny ``sigma`` stay finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from .denoisers import Denoiser, _times
from .processes import Process, expand

__all__ = ["AnalyticDenoiser", "AnalyticMixtureScore", "Mixture", "analytic_teacher"]


@dataclass
class Mixture:
    """An isotropic Gaussian mixture: ``means`` ``(K, D)``, ``stds`` ``(K,)`` (> 0), ``weights``
    ``(K,)`` (non-negative, normalised on construction). Component ``k`` is mode (class) ``k``."""

    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor

    def __post_init__(self) -> None:
        means = torch.as_tensor(self.means)
        if not torch.is_floating_point(means):
            means = means.float()
        if means.dim() != 2 or means.shape[0] < 1:
            raise ConfigError(f"Mixture: means must have shape (K, D) with K >= 1, got {tuple(means.shape)}.")
        k = means.shape[0]
        stds = torch.as_tensor(self.stds, dtype=means.dtype).reshape(-1)
        weights = torch.as_tensor(self.weights, dtype=means.dtype).reshape(-1)
        if stds.numel() == 1 and k > 1:
            stds = stds.expand(k).clone()
        if stds.shape != (k,) or weights.shape != (k,):
            raise ConfigError(f"Mixture: stds and weights must have shape ({k},), got {tuple(stds.shape)} and {tuple(weights.shape)}.")
        if not bool(torch.isfinite(means).all()):
            raise ConfigError("Mixture: means must be finite.")
        if not bool((stds > 0).all()) or not bool(torch.isfinite(stds).all()):
            raise ConfigError(f"Mixture: stds must be positive and finite, got {stds.tolist()}.")
        if not bool((weights >= 0).all()) or not float(weights.sum()) > 0:
            raise ConfigError(f"Mixture: weights must be non-negative with a positive sum, got {weights.tolist()}.")
        self.means, self.stds, self.weights = means, stds, weights / weights.sum()

    @property
    def num_modes(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @classmethod
    def grid(cls, n: int = 5, spacing: float = 1.0, std: float = 0.05) -> Mixture:
        """``n x n`` equal modes on a square grid centred at the origin, ``spacing`` apart
        (``n = 5``: the 25-mode benchmark, means in ``{-2, ..., 2} * spacing``)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"Mixture.grid: n must be a positive integer, got {n!r}.")
        axis = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * float(spacing)
        gx, gy = torch.meshgrid(axis, axis, indexing="ij")
        means = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1).float()
        return cls(means, torch.full((n * n,), float(std)), torch.ones(n * n))

    @classmethod
    def ring(cls, k: int = 8, radius: float = 2.0, std: float = 0.05) -> Mixture:
        """``k`` equal modes evenly spaced on a circle of ``radius`` (the first at angle 0)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"Mixture.ring: k must be a positive integer, got {k!r}.")
        angle = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
        means = (float(radius) * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)).float()
        return cls(means, torch.full((k,), float(std)), torch.ones(k))

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x (n, D), mode (n,) int64)``: ``n`` draws and the component each came from."""
        mode = torch.multinomial(self.weights.double(), n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means.double()[mode] + self.stds.double()[mode, None] * noise
        return x.to(self.means.dtype), mode

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``(N,)`` log-density of ``x`` ``(N, D)``."""
        means, stds, weights = (v.to(x) for v in (self.means, self.stds, self.weights))
        return _component_logits(x, means, stds**2, torch.log(weights)).logsumexp(dim=1)


def _component_logits(x: torch.Tensor, centres: torch.Tensor, var: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` ``log w_k + log N(x; centres_k, var_k I)``. ``x`` ``(B, D)``; ``centres``
    ``(K, D)`` or ``(B, K, D)``; ``var`` ``(K,)`` or ``(B, K)``."""
    d = x.shape[-1]
    sq = (x[:, None, :] - centres).pow(2).sum(-1)
    return log_w - 0.5 * d * torch.log(2 * math.pi * var) - 0.5 * sq / var


class AnalyticMixtureScore(nn.Module):
    """The exact ``eps`` prediction of a :class:`Mixture` noised by ``process``.

    ``forward(x_t (B, D), t (B,), cond=None) -> (B, D)`` ``eps_hat = -sigma grad log p_t(x_t)``
    with ``p_t = sum_k w_k N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I)``; ``cond`` ``(B,)`` mode
    indices restricts each sample to one component (class = mode), ``None`` uses the whole
    mixture. :meth:`posterior` returns ``(x0_hat, eps_hat)`` together, both finite where a
    conversion from one to the other is not (``x0_hat`` at ``alpha = 0``).
    """

    def __init__(self, mixture: Mixture, process: Process) -> None:
        super().__init__()
        self.process = process
        self.register_buffer("means", mixture.means.detach().clone())
        self.register_buffer("variances", mixture.stds.detach().clone() ** 2)
        self.register_buffer("log_weights", torch.log(mixture.weights.detach().clone()))

    def _responsibilities(self, x_t: torch.Tensor, var: torch.Tensor, centres: torch.Tensor,
                          cond: torch.Tensor | None) -> torch.Tensor:
        logits = _component_logits(x_t, centres, var, self.log_weights.to(x_t))
        if cond is not None:
            cond = torch.as_tensor(cond, device=x_t.device).long().reshape(-1)
            k = self.means.shape[0]
            if cond.shape != (x_t.shape[0],) or bool(((cond < 0) | (cond >= k)).any()):
                raise ConfigError(f"analytic teacher: cond must be ({x_t.shape[0]},) mode indices in [0, {k}), got {cond.tolist()}.")
            mask = torch.nn.functional.one_hot(cond, k).bool()
            logits = logits.masked_fill(~mask, float("-inf"))
        return torch.softmax(logits, dim=1)

    def posterior(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0_hat, eps_hat)``, each ``(B, D)``: ``E[x0 | x_t]`` and ``E[eps | x_t]``."""
        x0, eps, _ = self.closed_forms(x_t, t, cond)
        return x0, eps

    def score(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, D)`` ``grad_x log p_t(x_t)`` (of the component ``cond`` when given); finite at ``sigma = 0``."""
        return self.closed_forms(x_t, t, cond)[2]

    def closed_forms(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x0_hat, eps_hat, score)``, each ``(B, D)``."""
        t = _times(t, x_t)
        a, s = self.process.alpha_sigma(t)
        a, s = a.to(x_t)[:, None], s.to(x_t)[:, None]  # (B, 1)
        means, v0 = self.means.to(x_t), self.variances.to(x_t)
        var = a**2 * v0 + s**2  # (B, K)
        centres = a[:, :, None] * means  # (B, K, D)
        r = self._responsibilities(x_t, var, centres, cond)  # (B, K)
        diff = x_t[:, None, :] - centres  # (B, K, D)
        scaled = diff / var[:, :, None]
        score = -(r[:, :, None] * scaled).sum(1)
        x0 = (r[:, :, None] * (means + a[:, :, None] * v0[None, :, None] * scaled)).sum(1)
        return x0, -s * score, score

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.posterior(x_t, t, cond)[1]


class AnalyticDenoiser(Denoiser):
    """A :class:`~.denoisers.Denoiser` around :class:`AnalyticMixtureScore` (prediction
    ``eps``) whose :meth:`predict` uses both closed forms ``(x0_hat, eps_hat)`` instead of
    converting the ``eps`` output, so that ``x0`` and ``velocity`` stay exact where ``alpha =
    0`` (the flow process at ``t = 1``)."""

    net: AnalyticMixtureScore

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None, target: str = "x0") -> torch.Tensor:
        t = _times(t, x_t)
        x0, eps, score = self.net.closed_forms(x_t, t, cond)
        a, s = (expand(c.to(x_t), x_t) for c in self.process.alpha_sigma(t))
        if target == "x0":
            return x0
        if target == "eps":
            return eps
        if target == "v":
            return a * eps - s * x0
        if target == "velocity":
            da, ds = (expand(c.to(x_t), x_t) for c in self.process.d_alpha_sigma(t))
            return da * x0 + ds * eps
        if target == "score":
            return score
        raise ConfigError(f"Unknown prediction kind {target!r}; choose one of eps, x0, v, velocity, score.")


def analytic_teacher(mixture: Mixture, process: Process) -> AnalyticDenoiser:
    """The exact denoiser of ``mixture`` under ``process``: prediction ``eps``, sample shape
    ``(D,)``, ``num_classes`` = the number of modes (``cond`` = mode index). No parameters."""
    return AnalyticDenoiser(AnalyticMixtureScore(mixture, process), process, "eps",
                            sample_shape=(mixture.dim,), num_classes=mixture.num_modes)
