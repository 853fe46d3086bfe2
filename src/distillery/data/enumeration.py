"""Transform enumeration: every input shown under each of M fixed transforms (C10).

Self-supervised label augmentation (SLA, Lee, Hwang & Shin 2020, arXiv:1910.05872) trains on
all M transformed copies of every sample at once and labels copy ``j`` of a sample of class
``i`` with the joint label ``(i, j)``; aggregated inference averages the M copies' outputs.
Test-time augmentation does the same at evaluation. The parts here:

* deterministic transforms, registered as views: ``rotate90`` (``k`` quarter turns of an
  image), ``roll`` (a fixed circular shift) and ``reverse`` (a flip of fixed dims);
* :class:`TransformEnumerator` (view ``enumerate``): ``[B, ...] -> [M*B, ...]``, the M
  transformed copies stacked *transform-major* (rows ``j*B .. j*B+B-1`` are transform ``j``
  of the batch), with :meth:`TransformEnumerator.transform_index` giving each row's ``j``.

Transform 0 should be the identity when a single-pass prediction is read from the copies
(SLA's single inference and its self-distilled head use the rows of transform 0).

Example::

    >>> import torch
    >>> enum = TransformEnumerator.rotations(4)
    >>> x = torch.arange(2 * 1 * 2 * 2, dtype=torch.float32).view(2, 1, 2, 2)
    >>> enum(x).shape, enum.transform_index(2).tolist()
    (torch.Size([8, 1, 2, 2]), [0, 0, 1, 1, 2, 2, 3, 3])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import ConfigError, ShapeError
from ..registry import VIEWS
from .views import Identity, View, _nonneg_int

__all__ = ["Reverse", "Roll", "Rotate90", "TransformEnumerator", "unstack_copies"]


@VIEWS.register("rotate90")
class Rotate90(View):
    """Rotation by ``k`` quarter turns (counter-clockwise) in the last two dims; ``[B, C, H, W]``.

    ``out = torch.rot90(x, k, dims=(-2, -1))``; ``k`` is taken modulo 4. A non-square image
    rotated by an odd ``k`` changes shape (H and W swap), so enumeration needs square images.

    Args:
        k: the number of counter-clockwise quarter turns (any integer, taken modulo 4).
    """

    name = "rotate90"

    def __init__(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int):
            raise ConfigError(f"view 'rotate90': k must be an integer number of quarter turns, got {k!r}.")
        self.k = k % 4

    def _params(self) -> dict[str, Any]:
        return {"k": self.k}

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.ndim != 4:
            raise ShapeError(f"view 'rotate90' accepts [B, C, H, W]; got a tensor of shape {list(x.shape)}.")
        return torch.rot90(x, self.k, dims=(-2, -1)) if self.k else x


@VIEWS.register("roll")
class Roll(View):
    """A fixed circular shift by ``shift`` steps along ``dim`` (default the last); any ``[B, ...]``.

    ``out[..., i] = x[..., (i - shift) mod L]`` (``torch.roll``). The batch dim cannot be rolled.

    Args:
        shift: the shift in steps (negative: the other way).
        dim: the dim to roll, not 0 (the batch).
    """

    name = "roll"

    def __init__(self, shift: int, dim: int = -1) -> None:
        if isinstance(shift, bool) or not isinstance(shift, int):
            raise ConfigError(f"view 'roll': shift must be an integer, got {shift!r}.")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim == 0:
            raise ConfigError(f"view 'roll': dim must be a non-zero integer (dim 0 is the batch), got {dim!r}.")
        self.shift, self.dim = shift, dim

    def _params(self) -> dict[str, Any]:
        return {"shift": self.shift, "dim": self.dim}

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not -x.ndim < self.dim < x.ndim or self.dim % x.ndim == 0:
            raise ShapeError(f"view 'roll': dim {self.dim} is not a non-batch dim of a tensor of shape {list(x.shape)}.")
        return torch.roll(x, self.shift, dims=self.dim) if self.shift else x


@VIEWS.register("reverse")
class Reverse(View):
    """A fixed flip of ``dims`` (default ``[-1]``: the last dim); any ``[B, ...]``.

    Args:
        dims: the dims to flip, none of them 0 (the batch).
    """

    name = "reverse"

    def __init__(self, dims: Sequence[int] = (-1,)) -> None:
        if isinstance(dims, int):
            dims = (dims,)
        if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d == 0 for d in dims):
            raise ConfigError(f"view 'reverse': dims must be non-zero integers (dim 0 is the batch), got {dims!r}.")
        self.dims = tuple(dims)

    def _params(self) -> dict[str, Any]:
        return {"dims": list(self.dims)}

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for d in self.dims:
            if not -x.ndim < d < x.ndim or d % x.ndim == 0:
                raise ShapeError(f"view 'reverse': dim {d} is not a non-batch dim of a tensor of shape {list(x.shape)}.")
        return torch.flip(x, self.dims)


@VIEWS.register("enumerate")
class TransformEnumerator(View):
    """The M transformed copies of a batch, stacked transform-major: ``[B, ...] -> [M*B, ...]``.

    ``out[j*B + b] = transforms[j](x)[b]``. Each transform must keep the sample shape. Use as
    a student view (``data.student_view: [{name: enumerate, transforms: [...]}]``) so that
    the student trains on all copies in one forward, as SLA does.

    Args:
        transforms: M callables on batched tensors, or view specs (``{"name": "rotate90",
            "k": 1}``; an empty list or ``"identity"`` is the identity). Random views are
            allowed but then the copies are not a fixed enumeration.
    """

    name = "enumerate"

    def __init__(self, transforms: Sequence[Any]) -> None:
        from .views import build_view

        if isinstance(transforms, (str, dict)) or not isinstance(transforms, Sequence) or len(transforms) < 1:
            raise ConfigError(f"view 'enumerate': transforms must be a non-empty list of views, got {transforms!r}.")
        built: list[Callable[..., torch.Tensor]] = []
        for i, spec in enumerate(transforms):
            if isinstance(spec, (list, tuple)) and not spec:
                built.append(Identity())
                continue
            try:
                built.append(spec if callable(spec) else build_view(spec))
            except ConfigError as exc:
                raise ConfigError(f"view 'enumerate', transform {i}: {exc}") from None
        self.transforms = built

    @classmethod
    def rotations(cls, m: int = 4) -> TransformEnumerator:
        """Rotations by 0, 90, ..., (m-1)*90 degrees (m <= 4): SLA's rotation set for images."""
        m = _nonneg_int(m, "m", "enumerate", 1)
        if m > 4:
            raise ConfigError(f"view 'enumerate': at most 4 distinct quarter-turn rotations, got m={m}.")
        return cls([Rotate90(k) for k in range(m)])

    @classmethod
    def shifts(cls, shifts: Sequence[int], dim: int = -1) -> TransformEnumerator:
        """Fixed circular shifts (e.g. ``[0, 10, 20, 30]`` of a 1D signal)."""
        return cls([Roll(int(s), dim) for s in shifts])

    @property
    def num_transforms(self) -> int:
        return len(self.transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def _params(self) -> dict[str, Any]:
        return {"transforms": self.transforms}

    def transform_index(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """int64 ``[M*B]``: the transform index ``j`` of each row of :meth:`__call__`'s output."""
        return torch.arange(self.num_transforms, device=device).repeat_interleave(int(batch_size))

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        copies = [t(x, generator) if isinstance(t, View) else t(x) for t in self.transforms]
        for j, c in enumerate(copies):
            if c.shape != x.shape:
                raise ShapeError(
                    f"view 'enumerate': transform {j} ({self.transforms[j]!r}) turned a batch of shape "
                    f"{list(x.shape)} into {list(c.shape)}; enumerated transforms must keep the shape "
                    "(e.g. rotate only square images)."
                )
        return torch.cat(copies, dim=0)

    def enumerate(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(copies [M*B, ...], transform index [M*B])``."""
        return self(x, generator), self.transform_index(x.shape[0], x.device)


def unstack_copies(t: torch.Tensor, num_transforms: int) -> torch.Tensor:
    """``[M*B, ...] -> [M, B, ...]`` (undoes the transform-major stacking of the enumerator)."""
    if t.ndim < 1 or t.shape[0] % num_transforms:
        raise ShapeError(
            f"expected {num_transforms} stacked copies of a batch (a first dim divisible by "
            f"{num_transforms}), got a tensor of shape {list(t.shape)}."
        )
    return t.reshape(num_transforms, t.shape[0] // num_transforms, *t.shape[1:])
