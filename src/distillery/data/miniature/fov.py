"""Field-of-view masking: keep a random contiguous sector of a 360-degree ring, zero the rest.

GeoDistill (Tong et al. 2025, "GeoDistill: Geometry-Guided Self-Distillation for Weakly
Supervised Cross-View Localization", arXiv:2507.10935): "the teacher model localizes a
panoramic image, while the student model predicts locations from a limited FoV counterpart
created by FoV-based masking". A panorama is a ring of positions along one axis (image
columns, or the tiles of a ring of patches); a field of view of ``w`` degrees at heading ``h``
keeps the ``round(w / 360 * L)`` positions starting at ``h``, circularly, and zeroes the others.

The view acts on any tensor ``[B, ...]`` whose ring occupies positions ``start .. start +
length - 1`` of dimension ``dim`` (default: the whole last dim). Each sample draws its own
heading (uniform over the L positions) and width (uniform in ``[min_degrees, max_degrees]``).
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import ConfigError, ShapeError
from ...registry import VIEWS
from ..views import View, _number, _rand, _randint

__all__ = ["FieldOfView", "fov_mask"]


def fov_mask(heading: torch.Tensor, visible: torch.Tensor, length: int) -> torch.Tensor:
    """bool ``[B, length]``: True where position ``i`` is seen, i.e. ``(i - heading_b) mod L <
    visible_b``. ``heading``, ``visible``: int ``[B]``."""
    i = torch.arange(length, device=heading.device)[None, :]
    return torch.remainder(i - heading[:, None], length) < visible[:, None]


@VIEWS.register("fov_mask")
class FieldOfView(View):
    """A random limited field of view of a panorama (GeoDistill's FoV-based masking).

    Args:
        min_degrees, max_degrees: the width of the field of view, drawn uniformly per sample
            (the paper's code draws 180 to 240 degrees of 360).
        dim: the ring's axis (not 0, the batch).
        start, length: the ring's positions along ``dim`` (negative ``start`` counts from the
            end; ``length=None``: to the end).

    :meth:`sample` returns ``(x_masked, seen)`` with ``seen`` bool ``[B, length]``.
    """

    name = "fov_mask"

    def __init__(self, min_degrees: float = 180.0, max_degrees: float = 240.0, dim: int = -1,
                 start: int = 0, length: int | None = None) -> None:
        self.min_degrees = _number(min_degrees, "min_degrees", self.name, 0.0, 360.0)
        self.max_degrees = _number(max_degrees, "max_degrees", self.name, 0.0, 360.0)
        if self.max_degrees < self.min_degrees:
            raise ConfigError(f"view 'fov_mask': max_degrees ({max_degrees}) must be >= min_degrees ({min_degrees}).")
        for name, v in (("dim", dim), ("start", start)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"view 'fov_mask': {name} must be an integer, got {v!r}.")
        if dim == 0:
            raise ConfigError("view 'fov_mask': dim 0 is the batch; give the ring's axis (e.g. -1 or 1).")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            raise ConfigError(f"view 'fov_mask': length must be a positive integer or null, got {length!r}.")
        self.dim, self.start, self.length = dim, start, length

    def _params(self) -> dict[str, Any]:
        return {"min_degrees": self.min_degrees, "max_degrees": self.max_degrees, "dim": self.dim,
                "start": self.start, "length": self.length}

    def ring(self, x: torch.Tensor) -> tuple[int, int, int]:
        """``(dim, first position, number of positions)`` of the ring in ``x``."""
        if not -x.ndim <= self.dim < x.ndim or self.dim % x.ndim == 0:
            raise ShapeError(f"view 'fov_mask': dim {self.dim} is not a non-batch dim of a tensor of shape {list(x.shape)}.")
        dim = self.dim % x.ndim
        size = x.shape[dim]
        first = self.start + size if self.start < 0 else self.start
        length = self.length if self.length is not None else size - first
        if not 0 <= first < size or length < 1 or first + length > size:
            raise ShapeError(
                f"view 'fov_mask': a ring at positions {self.start}..+{self.length} does not fit dim {self.dim} "
                f"of size {size} (input shape {list(x.shape)})."
            )
        return dim, first, length

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        dim, first, length = self.ring(x)
        b = x.shape[0]
        heading = _randint(0, length - 1, (b,), x, generator)
        width = self.min_degrees + (self.max_degrees - self.min_degrees) * _rand((b,), x, generator)
        visible = torch.round(width / 360.0 * length).long().clamp(0, length)
        seen = fov_mask(heading, visible, length)  # [B, length]
        keep = torch.ones(b, x.shape[dim], dtype=torch.bool, device=x.device)
        keep[:, first:first + length] = seen
        shape = [b] + [1] * (x.ndim - 1)
        shape[dim] = x.shape[dim]
        return x.masked_fill(~keep.view(shape), 0), seen

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sample(x, generator)[0]
