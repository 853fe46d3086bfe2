"""What the generative loop trains: a :class:`GenerativeMethod` and its players.

A step-distillation method has several **players**, each a set of parameters with its own
optimizer and its own loss, updated in a fixed order within one training step, some several
times per step (DMD2's two time scales: ``k`` fake-score updates per generator update):

====================  =======================================  ==============================
method                players (update order)                    state outside the players
====================  =======================================  ==============================
denoising (teacher)   ``model``                                 (optional EMA)
progressive           ``student``                               frozen teacher
consistency           ``student``                               EMA target, frozen teacher
reflow                ``student``                               frozen teacher (ODE pairs)
DMD / DMD2            ``fake_score`` (k times), ``generator``   frozen real score, (GAN head)
====================  =======================================  ==============================

The loop (:mod:`.trainer`) owns the optimizers, checkpoints, logs and the non-finite guard; a
method only says, per player, which parameters it trains (:meth:`GenerativeMethod.parameters_of`),
how often (:meth:`GenerativeMethod.updates`) and its loss on a batch
(:meth:`GenerativeMethod.loss`), plus what happens after each step (EMA updates,
:meth:`GenerativeMethod.after_step`) and how its student samples (:meth:`GenerativeMethod.sample`).

Every trainable or stateful module a method holds must be an attribute (an ``nn.Module``
child), so that the loop checkpoints and restores all of it with one ``state_dict``; frozen
teachers are excluded from checkpoints by :meth:`GenerativeMethod.frozen_prefixes`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..registry import Registry

METHODS = Registry("generative method")


class GenerativeMethod(nn.Module):
    """Base class of the generative engine's training procedures. Subclasses set ``players``
    and implement :meth:`loss` and :meth:`sample`.

    ``batch`` given to :meth:`loss` is a dict: ``{"x": (B, *sample_shape) data samples,
    "y": (B,) int labels (when the data has classes)}``; data-free methods (DMD from an
    analytic teacher) may ignore ``x`` and use only its batch size.
    """

    #: player names, in update order within one step
    players: tuple[str, ...] = ("student",)

    def parameters_of(self, player: str) -> list[nn.Parameter]:
        """The parameters ``player``'s optimizer updates (default: the child module named like it)."""
        return [p for p in getattr(self, player).parameters() if p.requires_grad]

    def updates(self, player: str) -> int:
        """How many times ``player`` is updated per training step (default 1)."""
        return 1

    def loss(self, player: str, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """``player``'s scalar loss on ``batch`` at training ``step`` and the figures to log
        (``{name: float}``; the loop logs them as ``<player>/<name>``)."""
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Called once after every training step (all players updated): EMA updates, syncs."""

    def sample(self, n: int, steps: int, *, cond: torch.Tensor | None = None,
               generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        """``(n, *sample_shape)`` samples of the trained model in ``steps`` network evaluations."""
        raise NotImplementedError

    def frozen_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes not saved in checkpoints (frozen teachers built from their own
        files or closed forms). Default: ``("teacher.",)``."""
        return ("teacher.",)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The state dict without frozen parts: what a checkpoint holds."""
        skip = self.frozen_prefixes()
        return {k: v for k, v in self.state_dict().items() if not k.startswith(skip)}

    def exported(self) -> dict[str, nn.Module]:
        """The modules written as final weights (``<name>.safetensors`` in the run directory);
        default: the ``student`` (or ``generator``/``model``) child."""
        for name in ("student", "generator", "model"):
            if isinstance(getattr(self, name, None), nn.Module):
                return {name: getattr(self, name)}
        return {}

    def describe(self) -> dict[str, Any]:
        """Figures for ``summary.json`` (NFE per sample, parameter counts, ...)."""
        return {"players": list(self.players),
                "parameters": {p: sum(x.numel() for x in self.parameters_of(p)) for p in self.players}}

    def named_players(self) -> Iterator[tuple[str, list[nn.Parameter], int]]:
        for player in self.players:
            yield player, self.parameters_of(player), self.updates(player)


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """``target <- decay * target + (1 - decay) * source``, parameter by parameter (buffers
    copied). ``decay`` in [0, 1]: 1 keeps the target, 0 copies the source."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must lie in [0, 1], got {decay}.")
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(s.detach(), 1.0 - decay)
    for t, s in zip(target.buffers(), source.buffers(), strict=True):
        t.copy_(s)
