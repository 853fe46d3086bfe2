"""Adapters: small trainable maps from a student signal to the teacher signal's shape.

FitNets (Romero et al., 2015, arXiv:1412.6550) introduced the "regressor" that maps a thin
student's hint layer onto the teacher's. distillery builds one per objective term from the
shapes seen in the first batch (see :meth:`distillery.Distiller.prepare`) and trains it with
the student.

Kinds, for a student signal of shape ``[B, ..., Ds]`` or ``[B, Cs, *spatial]``:

* ``linear``: ``nn.Linear(Ds, Dt)`` on the last dim; all other dims must match.
* ``mlp``: ``Linear(Ds, H) -> GELU -> Linear(H, Dt)`` on the last dim, ``H = max(Ds, Dt)``.
* ``conv1x1``: a 1x1 convolution on dim 1 (channels) of ``[B, C, L]`` or ``[B, C, H, W]``
  maps; spatial sizes must match.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, ShapeError

ADAPTER_KINDS = ("linear", "mlp", "conv1x1")


def make_adapter(
    kind: str, student_shape: torch.Size | tuple, teacher_shape: torch.Size | tuple, *, where: str = ""
) -> nn.Module:
    """Build an adapter mapping tensors of ``student_shape`` to ``teacher_shape``.

    Both shapes include the batch dim. Raises :class:`ShapeError` when the kind cannot map
    one onto the other, naming both shapes.
    """
    s, t = tuple(student_shape), tuple(teacher_shape)
    label = f" for {where}" if where else ""
    if kind in ("linear", "mlp"):
        if len(s) < 2 or s[:-1] != t[:-1]:
            raise ShapeError(
                f"A {kind} adapter{label} maps the last dim only, so all other dims must agree, "
                f"but the student signal has shape {list(s)} and the teacher signal {list(t)}. "
                "For convolutional maps [B, C, H, W] use adapter 'conv1x1'; otherwise tap layers "
                "whose shapes agree except in the feature dim."
            )
        if kind == "linear":
            return nn.Linear(s[-1], t[-1])
        hidden = max(s[-1], t[-1])
        return nn.Sequential(nn.Linear(s[-1], hidden), nn.GELU(), nn.Linear(hidden, t[-1]))
    if kind == "conv1x1":
        if len(s) not in (3, 4) or len(t) != len(s) or s[0] != t[0] or s[2:] != t[2:]:
            raise ShapeError(
                f"A conv1x1 adapter{label} maps channels (dim 1) of [B, C, L] or [B, C, H, W] "
                f"maps with equal spatial sizes, but the student signal has shape {list(s)} and "
                f"the teacher signal {list(t)}. Tap layers with the same spatial resolution, or "
                "pool one of them."
            )
        conv = nn.Conv1d if len(s) == 3 else nn.Conv2d
        return conv(s[1], t[1], kernel_size=1)
    raise ConfigError(f"Unknown adapter kind {kind!r}{label}; choose one of {', '.join(ADAPTER_KINDS)}.")
