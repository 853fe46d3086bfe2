"""A network for multi-band input built around an optical backbone plus an input adapter for the
extra bands.

DEO (Wolf, Rolih & Čehovin Zajc 2026, "Brewing Stronger Features: Dual-Teacher Distillation for
Multispectral Earth Observation", arXiv:2602.19863) distills an optical foundation model, which knows only the optical
channels, into a multispectral student that reads more channels. :class:`BandAdapter` is such a
student: ``backbone`` is an ordinary network for the optical channels, and ``adapter``, a
convolution from the extra channels to the optical ones, adds what the extra bands contribute
to its input::

    y = backbone(x[:, optical] + adapter(x[:, extra]))

The adapter has no bias and starts at zero, so at initialisation, and whenever the extra bands
are zero (optical-only input), the network computes ``backbone(x[:, optical])`` exactly. With
``extra=[]`` there is no adapter: the model reads the optical channels of a multi-band input
and ignores the rest (the frozen optical teacher).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError, ShapeError
from ...registry import MODELS

__all__ = ["BandAdapter", "band_adapter"]


class BandAdapter(nn.Module):
    """``backbone(x[:, optical] + adapter(x[:, extra]))`` on ``[B, C, H, W]`` (or ``[B, C, L]``).

    Args:
        backbone: a network for ``len(optical)``-channel input.
        optical: channel indices the backbone reads.
        extra: channel indices the adapter reads (may be empty: no adapter).
        kernel_size: the adapter convolution's kernel (odd; ``'same'`` padding).
        dims: 2 for images, 1 for signals.

    Modules: ``backbone.<path>``, ``adapter`` (``Conv2d(len(extra), len(optical), k, bias=False)``,
    zero-initialised). Output: the backbone's.
    """

    def __init__(self, backbone: nn.Module, optical: Sequence[int], extra: Sequence[int] = (), kernel_size: int = 3,
                 dims: int = 2) -> None:
        super().__init__()
        self.optical = [int(c) for c in optical]
        self.extra = [int(c) for c in extra]
        if not self.optical or set(self.optical) & set(self.extra) or len(set(self.optical + self.extra)) != len(self.optical + self.extra):
            raise ConfigError(f"band_adapter: optical {self.optical} and extra {self.extra} must be distinct channels, optical non-empty.")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"band_adapter: kernel_size must be an odd positive int, got {kernel_size}.")
        self.backbone = backbone
        self.adapter: nn.Module | None = None
        if self.extra:
            conv = nn.Conv2d if dims == 2 else nn.Conv1d
            self.adapter = conv(len(self.extra), len(self.optical), kernel_size, padding=kernel_size // 2, bias=False)
            nn.init.zeros_(self.adapter.weight)
        self.register_buffer("_optical_index", torch.tensor(self.optical, dtype=torch.long), persistent=False)
        self.register_buffer("_extra_index", torch.tensor(self.extra, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> Any:
        needed = max(self.optical + self.extra) + 1
        if x.ndim < 3 or x.shape[1] < needed:
            raise ShapeError(f"band_adapter: expected [B, C, ...] with at least {needed} channels, got {list(x.shape)}.")
        inputs = x.index_select(1, self._optical_index)
        if self.adapter is not None:
            inputs = inputs + self.adapter(x.index_select(1, self._extra_index))
        return self.backbone(inputs)


@MODELS.register("band_adapter")
def band_adapter(
    input_shape: Sequence[int],
    num_classes: int,
    optical: Sequence[int],
    extra: Sequence[int] = (),
    backbone: dict | None = None,
    kernel_size: int = 3,
    out_dim: int | None = None,
) -> BandAdapter:
    """An optical backbone plus a zero-initialised input adapter for the extra bands (DEO).

    ``input_shape`` ``(C, H, W)`` (or ``(C, L)``); ``backbone``: ``{name, params}`` of a
    registered model (default ``cnn2d``), built for ``(len(optical), H, W)`` inputs, with
    ``out_dim`` outputs if given (e.g. DINO prototypes) instead of ``num_classes``. Modules:
    ``backbone.*`` and ``adapter``.
    """
    from .. import build_model

    shape = tuple(int(s) for s in input_shape)
    if len(shape) not in (2, 3):
        raise ConfigError(f"band_adapter: input_shape must be (C, H, W) or (C, L), got {shape}.")
    channels = list(optical) + list(extra)
    if any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < shape[0] for c in channels):
        raise ConfigError(f"band_adapter: channel indices must be ints in [0, {shape[0] - 1}], got optical {list(optical)}, extra {list(extra)}.")
    spec = dict(backbone or {"name": "cnn2d" if len(shape) == 3 else "cnn1d"})
    unknown = set(spec) - {"name", "params"}
    if unknown or "name" not in spec:
        raise ConfigError(f"band_adapter: backbone must be {{name, params}}, got keys {sorted(spec)}.")
    if out_dim is not None and (isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1):
        raise ConfigError(f"band_adapter: out_dim must be a positive int, got {out_dim!r}.")
    outputs = int(out_dim) if out_dim is not None else num_classes
    net = build_model(spec["name"], (len(optical), *shape[1:]), outputs, **dict(spec.get("params") or {}))
    return BandAdapter(net, optical, extra, kernel_size, dims=len(shape) - 1)
