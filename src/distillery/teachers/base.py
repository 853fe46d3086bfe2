"""The teacher interface: anything that returns named signals for a batch.

A teacher is an ``nn.Module`` with

* ``signals(inputs, batch, names) -> dict[str, Tensor]``: the requested signals (``logits``
  and tap addresses, see :mod:`distillery.taps`) for one batch, computed without gradients;
* ``update(student, step)``: called by the distiller after each optimizer step (EMA teachers
  move toward the student, snapshot teachers refresh);
* an optional ``view``: the batch view it reads its input from. Without one it sees the same
  input tensor as the student.

Teachers that read the student's own weights (self-ensemble, privileged view with shared
weights) receive the student through :meth:`Teacher.bind`; they keep a reference to it
without registering it as a submodule, so the student's parameters are neither frozen nor
saved twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from .. import taps
from ..batch import Batch, BatchView, as_batch_view


class BuildContext(Protocol):
    """What a teacher kind's builder receives besides its config section: the interface the
    teachers need of the engine, implemented by :class:`distillery.engine.build.TeacherContext`
    (declared here so that teachers depend on no engine module)."""

    student: nn.Module
    input_shape: tuple[int, ...]
    num_classes: int
    fit_teacher: Callable[[nn.Module, Any, str], nn.Module] | None
    run: Any
    """The run's parts (config, train_set, terms, precompute) for a run's own teacher, else None."""
    student_view: Any

    def build(self, cfg: Any, where: str = "teacher") -> Teacher: ...

    def member(self, cfg: Any, where: str) -> Teacher: ...

    def view(self, cfg: Any, where: str) -> BatchView | None: ...

    def model(self, cfg: Any, where: str) -> nn.Module: ...

    def trained_model(self, cfg: Any, fit: Any, where: str) -> nn.Module: ...


class Teacher(nn.Module):
    """Base class of teachers."""

    def __init__(self, view: BatchView | str | Callable[[Batch], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.view = as_batch_view(view)
        self._student: list[nn.Module] = []  # a reference, not a submodule

    # -- wiring ---------------------------------------------------------------------------
    def bind(self, student: nn.Module) -> None:
        """Called once by the distiller with the student it teaches."""
        self._student = [student]

    @property
    def student(self) -> nn.Module:
        if not self._student:
            raise RuntimeError(f"{type(self).__name__} is not bound to a student yet (Distiller does this).")
        return self._student[0]

    def tap_model(self) -> nn.Module | None:
        """The module whose paths teacher tap addresses refer to, or ``None`` when the
        teacher cannot be tapped (outputs only); its signals are then checked on the first batch."""
        raise NotImplementedError

    def eval_teacher(self) -> Teacher | None:
        """The teacher to evaluate on held-out data (accuracy, agreement), or ``None`` when
        this teacher only exists for the training set (signals looked up by index)."""
        return self

    def set_total_steps(self, total_steps: int | None) -> None:
        """Told by the trainer how many optimizer steps the run has (for schedules)."""

    # -- work -----------------------------------------------------------------------------
    def signals(self, inputs: torch.Tensor, batch: Batch, names: Sequence[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor, batch: Batch | None = None, names: Sequence[str] = ("logits",)) -> dict[str, torch.Tensor]:
        return self.signals(inputs, batch or {}, names)

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> None:
        """Called after each optimizer step; ``step`` counts steps done so far (>= 1)."""


def tap_addresses(model: nn.Module, names: Sequence[str]) -> list[str]:
    """The names among ``names`` that address modules of ``model`` (the rest are outputs)."""
    return [n for n in names if _has_submodule(model, taps.split_address(n)[0])]


def _has_submodule(model: nn.Module, path: str) -> bool:
    """Whether ``path`` names a submodule (not the root): a walk along the path, not over the
    whole model, since teachers call this every step."""
    if not path:
        return False
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def run_model(
    model: nn.Module, inputs: torch.Tensor, names: Sequence[str], *, stop_after: str | None = None, owner: str = "teacher"
) -> dict[str, torch.Tensor]:
    """Forward ``model`` once and return the requested signals (all it produced)."""
    return taps.run_tapped(model, inputs, tap_addresses(model, names), stop_after=stop_after, owner=owner)


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` for every parameter; returns the model."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class FrozenModelMixin:
    """Keeps a wrapped model in eval mode whatever ``train()`` is called with."""

    def train(self, mode: bool = True):  # type: ignore[override]
        super().train(mode)  # type: ignore[misc]
        for module in self.frozen_modules():
            module.eval()
        return self

    def frozen_modules(self) -> list[nn.Module]:
        return [self.model]  # type: ignore[attr-defined]


class SharedWeightsMixin:
    """For teachers that run a separate ``model`` or, when it is ``None``, the student's own
    (bound) weights; tap addresses refer to that network."""

    model: nn.Module | None

    def _net(self) -> nn.Module:
        return self.model if self.model is not None else self.student  # type: ignore[attr-defined]

    def tap_model(self) -> nn.Module:
        return self._net()


@contextlib.contextmanager
def eval_mode(net: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Temporarily put ``net`` in eval mode (for teachers sharing the student's weights)."""
    was_training = net.training
    if enabled:
        net.eval()
    try:
        yield net
    finally:
        net.train(was_training)
