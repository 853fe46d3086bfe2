"""A trunk + flow-head generator for flat samples (TMD's decoupled student, in 2-D).

Transition Matching Distillation (W. Nie, J. Berner, N. Ma, C. Liu, S. Xie, A. Vahdat, 2026,
"Transition Matching Distillation for Fast Video Generation", arXiv:2601.09881) splits the
student backbone into

* a **trunk** (the "main backbone", most of the early layers), run once per *outer*
  transition: ``m = trunk(x_t, t, cond)``, ``(B, D) -> (B, F)`` features;
* a small **flow head** (the last few layers), run several times per transition: a conditional
  flow ``dy/ds = v(y_s, s | m)`` over an inner variable ``y`` whose inner time ``s`` runs from
  1 (``y_1 = z ~ N(0, I)``) to 0 (``y_0``: the transition's target, here the clean sample
  ``x0`` of the outer state) [inferred: the inner target is parameterised as ``x0``; the paper's
  Difference-Transition-Matching target ``eps - x0`` is the same quantity for the flow process
  given ``x_t``].

:class:`TrunkHeadDenoiser` (registered ``trunk_head2d``) is that network. Its ``forward`` is an
``x0`` prediction obtained by rolling out the head ``inner_steps`` Euler steps from fresh noise
(``y_{s_{j+1}} = y_{s_j} + (s_{j+1} - s_j) v(y_{s_j}, s_j | m)`` on ``s_j = 1 - j / N``), so it is
*stochastic*: wrapped as a ``Denoiser(prediction="x0")`` it is a few-step generator that
samples each transition instead of predicting a posterior mean. The trunk features reach the
head through one fusion layer computed once per transition (the paper's "simple fusion
layer"); the head's own layers see ``[y_s, emb(s)]`` plus that fused vector.

:func:`linear_macs` counts the multiply-adds of the ``nn.Linear`` layers a call runs (per
sample), the cost measure used to compare TMD with an equal-cost plain generator.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .denoisers import DENOISERS, TimeEmbedding


def _widths(name: str, value: Any) -> tuple[int, ...]:
    try:
        widths = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"trunk_head2d: {name} must be a list of positive layer widths, got {value!r}.") from None
    if not widths or any(w < 1 for w in widths) or any(isinstance(v, bool) for v in value):
        raise ConfigError(f"trunk_head2d: {name} must be a non-empty list of positive layer widths, got {value!r}.")
    return widths


@DENOISERS.register("trunk_head2d")
class TrunkHeadDenoiser(nn.Module):
    """TMD's student for flat samples ``(B, dim)``: an MLP trunk run once per outer transition and
    an MLP flow head rolled out ``inner_steps`` times per transition (Nie et al. 2026,
    arXiv:2601.09881).

    ``trunk``: widths of the trunk's SiLU layers (features ``F = trunk[-1]``); ``head``: widths
    of the head's SiLU layers; ``time_dim`` / ``head_time_dim``: sinusoidal+MLP embeddings of the
    outer time ``t`` and the inner time ``s``. ``forward(x_t, t, cond) -> (B, dim)``: an ``x0``
    sample of the transition (stochastic; the inner noise is drawn from the generator set with
    :meth:`noise_from`, else the global one)."""

    def __init__(self, dim: int = 2, trunk: tuple[int, ...] | list[int] = (128, 128, 128),
                 head: tuple[int, ...] | list[int] = (64, 64), time_dim: int = 32, head_time_dim: int = 16,
                 inner_steps: int = 4, num_classes: int | None = None) -> None:
        super().__init__()
        trunk_w, head_w = _widths("trunk", trunk), _widths("head", head)
        if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or not 1 <= inner_steps <= 256:
            raise ConfigError(f"trunk_head2d: inner_steps must be an integer in [1, 256], got {inner_steps!r}.")
        self.dim, self.num_classes, self.inner_steps = dim, num_classes, int(inner_steps)
        self.time = TimeEmbedding(time_dim)
        self.label = nn.Embedding(num_classes + 1, time_dim) if num_classes else None
        layers: list[nn.Module] = []
        width = dim + time_dim
        for h in trunk_w:
            layers += [nn.Linear(width, h), nn.SiLU()]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.feature_dim = width
        self.head_time = TimeEmbedding(head_time_dim)
        self.fuse = nn.Linear(width, head_w[0])  # once per transition
        self.head_in = nn.Linear(dim + head_time_dim, head_w[0])
        rest: list[nn.Module] = [nn.SiLU()]
        for a, b in itertools.pairwise(head_w):
            rest += [nn.Linear(a, b), nn.SiLU()]
        rest.append(nn.Linear(head_w[-1], dim))
        self.head_out = nn.Sequential(*rest)
        self._noise: torch.Generator | None = None

    # -- the two parts ---------------------------------------------------------------------------
    def features(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The trunk's features ``m`` ``(B, F)`` of ``x_t`` ``(B, dim)`` at outer times ``t`` ``(B,)``."""
        emb = self.time(t)
        if self.label is not None:
            labels = cond if cond is not None else torch.full((x_t.shape[0],), self.num_classes, device=x_t.device, dtype=torch.long)
            emb = emb + self.label(labels)
        return self.trunk(torch.cat([x_t, emb], dim=-1))

    def condition(self, m: torch.Tensor) -> torch.Tensor:
        """The fused conditioning ``c = W m + b`` ``(B, H)`` the head reads (once per transition)."""
        return self.fuse(m)

    def velocity(self, y: torch.Tensor, s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The head's inner velocity ``v(y_s, s | c)`` ``(B, dim)``; ``y`` ``(B, dim)``, ``s`` ``(B,)``
        inner times in [0, 1], ``c`` ``(B, H)`` from :meth:`condition`."""
        return self.head_out(self.head_in(torch.cat([y, self.head_time(s)], dim=-1)) + c)

    def rollout(self, c: torch.Tensor, noise: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """``y_0`` ``(B, dim)``: ``steps`` (default ``inner_steps``) Euler steps of the head's flow from
        ``y_1 = noise`` on the uniform inner grid ``s_j = 1 - j / steps``."""
        n = self.inner_steps if steps is None else int(steps)
        y = noise
        grid = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64).tolist()
        for j in range(n):
            s = torch.full((y.shape[0],), grid[j], dtype=y.dtype, device=y.device)
            y = y + (grid[j + 1] - grid[j]) * self.velocity(y, s, c)
        return y

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        c = self.condition(self.features(x_t, t, cond))
        noise = torch.randn(x_t.shape, generator=self._noise, device=x_t.device, dtype=x_t.dtype)
        return self.rollout(c, noise)

    @contextlib.contextmanager
    def noise_from(self, generator: torch.Generator | None) -> Iterator[None]:
        """Draw the inner noise of every forward inside the block from ``generator`` (seeded sampling)."""
        before, self._noise = self._noise, generator
        try:
            yield
        finally:
            self._noise = before


def linear_macs(module: nn.Module, fn: Callable[[], Any], batch: int) -> float:
    """Multiply-adds per sample of the ``nn.Linear`` layers inside ``module`` while ``fn()`` runs:
    each call of a layer ``in -> out`` on an input of ``R`` rows costs ``R * in * out``; the sum
    is divided by ``batch``. Biases, activations and elementwise updates are not counted (they are
    O(width), the matrix products O(width^2))."""
    total = [0]

    def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], _out: Any) -> None:
        rows = inputs[0].numel() // mod.in_features
        total[0] += rows * mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            fn()
    finally:
        for h in handles:
            h.remove()
    return total[0] / batch
