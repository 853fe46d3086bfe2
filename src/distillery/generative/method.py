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

**Per-sample randomness under data parallelism.** A loss draws noise, times, step indices and
labels per sample. Inside :meth:`GenerativeMethod.drawing` (what every method's :meth:`loss`
runs in) :attr:`GenerativeMethod.draw` is a :class:`BatchDraws`: each draw is made for the
*global* batch from a generator seeded by ``(seed, step, player, update)``
(:func:`update_seed`) and this rank keeps its slice ``[rank * n, (rank + 1) * n)``. With the
batch stream handing rank ``r`` the same slice of the global batch, a run on ``R`` processes sees
exactly the draws of one process (and a resumed run those of the uninterrupted one); the
gradients, averaged over ranks, are then those of one process up to the order of the sums.
The loop announces each update with :meth:`GenerativeMethod.begin_update`; a loss called
without that announcement (by hand, in unit tests, by ``validate``), and a method's helpers
called directly, draw from the global torch RNG (:class:`GlobalDraws`), as before.

What this cannot make equal: a loss that couples the samples of a batch (an OT plan or a
Sinkhorn term over the batch, VDOT; batch statistics) sees only its rank's slice, so such
terms differ from one process by construction and are excluded from the equivalence claim.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..registry import Registry

METHODS = Registry("generative method")


def update_seed(seed: int, step: int, player: str, update: int) -> int:
    """The seed of player ``player``'s ``update``-th update (0-based) at training ``step``: a
    stable hash of the four (the same on every rank, every process and every run), in ``[0, 2^63)``."""
    key = f"{int(seed)}/{int(step)}/{player}/{int(update)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % (2**63)


def _draw_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """Floating draws are made in float32 or float64 (on CPU) and cast; half types are cast from float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class BatchDraws:
    """Random draws for this rank's slice of the global batch.

    Every method draws ``world * n`` values from one CPU ``torch.Generator`` seeded with
    ``seed`` and returns rows ``[rank * n, (rank + 1) * n)``, moved to ``device``; so ``R``
    ranks each holding ``n`` samples draw, together, exactly what one process holding ``R n``
    samples draws. Ranks must make the same calls in the same order (call counts may not depend
    on the local data: draw for the global batch, use what is needed).

    Args:
        seed: the generator's seed (see :func:`update_seed`).
        rank, world: this process's rank and the number of processes (default: one process).
    """

    def __init__(self, seed: int, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"BatchDraws: rank {rank} outside [0, {world}).")
        self.generator = torch.Generator().manual_seed(int(seed))
        self.rank, self.world = int(rank), int(world)

    def take(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows of ``full`` ``(world * n, ...)``: a draw for the global batch made
        from :attr:`generator` by other means (a custom time distribution)."""
        n = full.shape[0] // self.world
        return full[self.rank * n:(self.rank + 1) * n]

    def _mine(self, full: torch.Tensor, n: int, device: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
        part = full[self.rank * n:(self.rank + 1) * n]
        return part.to(device=device, dtype=dtype) if dtype is not None else part.to(device)

    def randn(self, n: int, shape: tuple[int, ...] = (), *, device: Any = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
        """``(n, *shape)`` standard normal draws."""
        dtype = dtype or torch.get_default_dtype()
        full = torch.randn((n * self.world, *shape), generator=self.generator, dtype=_draw_dtype(dtype))
        return self._mine(full, n, device, dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal draws shaped like ``x`` ``(n, ...)`` (its dtype and device)."""
        return self.randn(x.shape[0], tuple(x.shape[1:]), device=x.device, dtype=x.dtype)

    def rand(self, n: int, *, device: Any = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
        """``(n,)`` uniform draws in ``[0, 1)``."""
        dtype = dtype or torch.get_default_dtype()
        return self._mine(torch.rand(n * self.world, generator=self.generator, dtype=_draw_dtype(dtype)), n, device, dtype)

    def randint(self, low: int, high: int, n: int, *, device: Any = "cpu") -> torch.Tensor:
        """``(n,)`` integers uniform in ``[low, high)`` (int64)."""
        return self._mine(torch.randint(low, high, (n * self.world,), generator=self.generator), n, device)

    def times(self, process: Any, n: int, *, low: float | None = None, high: float | None = None,
              device: Any = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
        """``(n,)`` times uniform in ``[low, high]`` (default the process's ``[t_min, t_max]``),
        as :meth:`~distillery.generative.processes.Process.sample_t` draws them."""
        full = process.sample_t(n * self.world, generator=self.generator, low=low, high=high)
        return self._mine(full, n, device, dtype)

    def prior(self, process: Any, n: int, shape: tuple[int, ...], *, device: Any = "cpu",
              dtype: torch.dtype | None = None) -> torch.Tensor:
        """``(n, *shape)`` draws from ``process``'s prior end."""
        dtype = dtype or torch.get_default_dtype()
        full = process.prior((n * self.world, *shape), generator=self.generator, dtype=_draw_dtype(dtype))
        return self._mine(full, n, device, dtype)


class GlobalDraws:
    """The interface of :class:`BatchDraws` on the global torch RNG and the local batch (what
    a method's helpers draw from when called outside :meth:`GenerativeMethod.drawing`)."""

    def randn(self, n: int, shape: tuple[int, ...] = (), *, device: Any = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.randn((n, *shape), device=device, dtype=dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(x)

    def rand(self, n: int, *, device: Any = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.rand(n, device=device, dtype=dtype)

    def randint(self, low: int, high: int, n: int, *, device: Any = "cpu") -> torch.Tensor:
        return torch.randint(low, high, (n,), device=device)

    def times(self, process: Any, n: int, *, low: float | None = None, high: float | None = None,
              device: Any = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
        t = process.sample_t(n, device=device, low=low, high=high)
        return t.to(dtype) if dtype is not None else t

    def prior(self, process: Any, n: int, shape: tuple[int, ...], *, device: Any = "cpu",
              dtype: torch.dtype | None = None) -> torch.Tensor:
        return process.prior((n, *shape), device=device, dtype=dtype)


GLOBAL_DRAWS = GlobalDraws()


def drawn(loss: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator of a :meth:`GenerativeMethod.loss`: runs it inside
    :meth:`GenerativeMethod.drawing` of its ``(player, step)``, so that what it draws through
    ``self.draw`` is drawn for the global batch and sliced by rank."""
    import functools

    @functools.wraps(loss)
    def wrapper(self: GenerativeMethod, player: str, batch: dict[str, torch.Tensor], step: int) -> Any:
        with self.drawing(player, step):
            return loss(self, player, batch, step)

    return wrapper


class GenerativeMethod(nn.Module):
    """Base class of the generative engine's training procedures. Subclasses set ``players``
    and implement :meth:`loss` and :meth:`sample`.

    ``batch`` given to :meth:`loss` is a dict: ``{"x": (B, *sample_shape) data samples,
    "y": (B,) int labels (when the data has classes)}``; data-free methods (DMD from an
    analytic teacher) may ignore ``x`` and use only its batch size.
    """

    #: player names, in update order within one step
    players: tuple[str, ...] = ("student",)
    #: base seed of the per-update draws (:func:`update_seed`); the run's seed, set when built
    seed: int = 0
    _draws: BatchDraws | None = None
    _update: tuple[str, int, int] | None = None
    _update_used: bool = False

    @property
    def draw(self) -> BatchDraws | GlobalDraws:
        """Where a loss draws its per-sample randomness: the active :class:`BatchDraws` inside
        :meth:`drawing`, else the global RNG (:class:`GlobalDraws`)."""
        return self._draws if self._draws is not None else GLOBAL_DRAWS

    def begin_update(self, player: str, step: int, update: int) -> None:
        """Called by the loop before ``player``'s ``update``-th loss (0-based) at ``step``: the
        next :meth:`drawing` of that ``(player, step)`` draws from the seeded :class:`BatchDraws`
        of this update. A loss called without it (by hand, in tests, by ``validate``) draws
        from the global RNG as before."""
        self._update, self._update_used = (player, int(step), int(update)), False

    @contextlib.contextmanager
    def drawing(self, player: str, step: int) -> Iterator[BatchDraws | GlobalDraws]:
        """Make :attr:`draw` the :class:`BatchDraws` of the update announced by
        :meth:`begin_update` for ``(player, step)`` (seeded by :func:`update_seed` of ``(self.seed,
        step, player, update)``, sliced by this process's rank) for the duration of the block;
        without an announced update, the global RNG. Nested blocks share the outer one's draws;
        each announcement serves one block."""
        from ..engine import distributed as D

        if self._draws is not None:  # nested (a subclass's loss around its base's): one update, one stream
            yield self._draws
            return
        last = self._update
        if last is None or last[:2] != (player, int(step)) or self._update_used:
            yield GLOBAL_DRAWS
            return
        self._update_used = True
        self._draws = BatchDraws(update_seed(self.seed, step, player, last[2]), D.rank(), D.world_size())
        try:
            yield self._draws
        finally:
            self._draws = None

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

    def picture(self, x: torch.Tensor, path: Any, title: str = "") -> Any:
        """Draw the samples ``x`` of :meth:`sample` the way this method's outputs are read
        (e.g. super-resolution as low-res | output | high-res triplets) into the PNG ``path`` and
        return it; ``None`` (the default): ``distillery sample`` draws its generic grid or scatter."""
        return None

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
