"""Views: random augmentations of a whole batch tensor.

A view is a callable ``view(x, generator=None) -> Tensor`` on a batch ``x`` (first dim is
the batch). It acts on every sample at once with tensor operations, on whatever device
``x`` lives on, and returns a tensor of the same shape and dtype. Randomness is drawn:

* from ``generator`` when given (on the generator's device, then moved to ``x``'s), so the
  same seed gives the same output whatever the device of ``x``;
* otherwise from torch's global generator for ``x``'s device (whose state a training
  checkpoint saves).

Build views from config with :func:`build_view`::

    view = build_view([{"name": "shift1d", "max_shift": 5}, {"name": "noise", "std": 0.1}])
    x2 = view(x)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from ..config.signatures import check_params
from ..errors import ConfigError
from ..registry import VIEWS

__all__ = [
    "View",
    "Identity",
    "Shift1d",
    "Noise",
    "Scale",
    "Crop2d",
    "Flip2d",
    "PatchMask",
    "Compose",
    "build_view",
]


# --------------------------------------------------------------------------------------
# Random draws on the right device
# --------------------------------------------------------------------------------------


def _device(x: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else x.device


def _rand(shape: Sequence[int], x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform [0, 1) float32 of ``shape`` on ``x``'s device."""
    return torch.rand(tuple(shape), generator=generator, device=_device(x, generator)).to(x.device)


def _randn(shape: Sequence[int], x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator, device=_device(x, generator)).to(x.device)


def _randint(low: int, high: int, shape: Sequence[int], x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Integers in ``[low, high]`` (inclusive) of ``shape`` on ``x``'s device."""
    return torch.randint(low, high + 1, tuple(shape), generator=generator, device=_device(x, generator)).to(x.device)


def _nonneg_int(value: Any, name: str, view: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"view {view!r}: {name} must be an integer >= {minimum}, got {value!r}.")
    return value


def _number(value: Any, name: str, view: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"view {view!r}: {name} must be a number, got {value!r}.")
    value = float(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ConfigError(f"view {view!r}: {name} must be in {bounds}, got {value}.")
    return value


def _check_ndim(x: torch.Tensor, allowed: Iterable[int], view: str, shapes: str) -> None:
    if x.ndim not in tuple(allowed):
        raise ValueError(f"view {view!r} accepts {shapes}; got a tensor of shape {list(x.shape)}")


class View:
    """Base class: a batched random transform ``view(x, generator=None)``."""

    name = "view"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"


@VIEWS.register("identity")
class Identity(View):
    """No change; accepts any shape."""

    name = "identity"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x


@VIEWS.register("shift1d")
class Shift1d(View):
    """Circular shift of each sample by a random integer in [-max_shift, max_shift] along the last dim.

    Accepts ``[B, L]`` or ``[B, C, L]`` (all channels of a sample shift together); the
    output is ``torch.roll(x[b], s_b, dims=-1)`` for each sample ``b``.

    Args:
        max_shift: the largest shift in steps, either way (0: no change).
    """

    name = "shift1d"

    def __init__(self, max_shift: int) -> None:
        self.max_shift = _nonneg_int(max_shift, "max_shift", self.name)

    def _params(self) -> dict[str, Any]:
        return {"max_shift": self.max_shift}

    def sample_shifts(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The per-sample shifts ``[B]`` that ``__call__`` would draw with this generator state."""
        return _randint(-self.max_shift, self.max_shift, (x.shape[0],), x, generator)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_ndim(x, (2, 3), self.name, "[B, L] or [B, C, L]")
        if self.max_shift == 0:
            return x
        length = x.shape[-1]
        shifts = self.sample_shifts(x, generator)
        # roll by s: out[i] = x[(i - s) mod L]
        idx = (torch.arange(length, device=x.device)[None, :] - shifts[:, None]) % length  # [B, L]
        if x.ndim == 3:
            idx = idx[:, None, :].expand(-1, x.shape[1], -1)
        return torch.gather(x, -1, idx)


@VIEWS.register("noise")
class Noise(View):
    """Adds i.i.d. Gaussian noise with standard deviation ``std``; accepts any shape ``[B, ...]``.

    Args:
        std: the standard deviation of the noise, >= 0 (0: no change).
    """

    name = "noise"

    def __init__(self, std: float) -> None:
        self.std = _number(std, "std", self.name, low=0.0)

    def _params(self) -> dict[str, Any]:
        return {"std": self.std}

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.std == 0:
            return x
        return x + (self.std * _randn(x.shape, x, generator)).to(x.dtype)


@VIEWS.register("scale")
class Scale(View):
    """Multiplies each sample by one factor drawn uniformly from [low, high]; any shape ``[B, ...]``.

    Args:
        low: the smallest factor.
        high: the largest factor, >= ``low``.
    """

    name = "scale"

    def __init__(self, low: float, high: float) -> None:
        self.low = _number(low, "low", self.name)
        self.high = _number(high, "high", self.name)
        if self.high < self.low:
            raise ConfigError(f"view 'scale': high ({high}) must be >= low ({low}).")

    def _params(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high}

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        u = _rand((x.shape[0],), x, generator)
        factor = (self.low + (self.high - self.low) * u).to(x.dtype)
        return x * factor.view(-1, *([1] * (x.ndim - 1)))


@VIEWS.register("crop2d")
class Crop2d(View):
    """Random crop of the original size after zero-padding each side by ``padding``; ``[B, C, H, W]``.

    Each sample gets its own offsets, i.e. a translation by ``(dy, dx)`` in
    ``[-padding, padding]`` with zeros shifted in.

    Args:
        padding: the zero border added on each side, in pixels: the largest translation.
    """

    name = "crop2d"

    def __init__(self, padding: int) -> None:
        self.padding = _nonneg_int(padding, "padding", self.name)

    def _params(self) -> dict[str, Any]:
        return {"padding": self.padding}

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_ndim(x, (4,), self.name, "[B, C, H, W]")
        p = self.padding
        if p == 0:
            return x
        b, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        offsets = _randint(0, 2 * p, (2, b), x, generator)  # [2, B]: top, left
        rows = offsets[0][:, None] + torch.arange(h, device=x.device)[None, :]  # [B, H]
        cols = offsets[1][:, None] + torch.arange(w, device=x.device)[None, :]  # [B, W]
        bi = torch.arange(b, device=x.device)[:, None, None]
        out = padded[bi, :, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
        return out.permute(0, 3, 1, 2).contiguous()


@VIEWS.register("flip2d")
class Flip2d(View):
    """Horizontal flip (last dim) of each sample with probability ``p``; ``[B, C, H, W]``.

    Args:
        p: the probability that a sample is flipped, in [0, 1].
    """

    name = "flip2d"

    def __init__(self, p: float = 0.5) -> None:
        self.p = _number(p, "p", self.name, 0.0, 1.0)

    def _params(self) -> dict[str, Any]:
        return {"p": self.p}

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_ndim(x, (4,), self.name, "[B, C, H, W]")
        flip = _rand((x.shape[0],), x, generator) < self.p
        return torch.where(flip[:, None, None, None], x.flip(-1), x)


@VIEWS.register("patch_mask")
class PatchMask(View):
    """Sets ``round(ratio * num_patches)`` random patches of each sample to zero.

    Accepts ``[B, L]`` and ``[B, C, L]`` (patches of ``patch_size`` steps along ``L``) and
    ``[B, C, H, W]`` (``patch_size`` an int or ``(ph, pw)``; patches numbered row-major, as
    a ViT numbers its tokens). A length not divisible by the patch size leaves a shorter last
    patch, masked as a whole. ``round`` is Python's (halves go to the even number).
    :meth:`sample` also returns the mask, bool ``[B, num_patches]`` with True = masked.

    Args:
        patch_size: the patch length (signals), or side or ``[height, width]`` (images).
        ratio: the share of each sample's patches set to zero, in [0, 1].
    """

    name = "patch_mask"

    def __init__(self, patch_size: int | Sequence[int], ratio: float) -> None:
        if isinstance(patch_size, (list, tuple)):
            if len(patch_size) != 2:
                raise ConfigError(f"view 'patch_mask': patch_size must be an int or a pair, got {patch_size!r}.")
            ps = tuple(_nonneg_int(p, "patch_size", self.name, 1) for p in patch_size)
        else:
            ps = _nonneg_int(patch_size, "patch_size", self.name, 1)
        self.patch_size: int | tuple[int, ...] = ps
        self.ratio = _number(ratio, "ratio", self.name, 0.0, 1.0)

    def _params(self) -> dict[str, Any]:
        return {"patch_size": self.patch_size, "ratio": self.ratio}

    def grid(self, x: torch.Tensor) -> tuple[int, ...]:
        """Number of patches along each patched dim: ``(n,)`` for 1D, ``(nh, nw)`` for 2D."""
        _check_ndim(x, (2, 3, 4), self.name, "[B, L], [B, C, L] or [B, C, H, W]")
        if x.ndim == 4:
            ph, pw = self.patch_size if isinstance(self.patch_size, tuple) else (self.patch_size,) * 2
            return (-(-x.shape[2] // ph), -(-x.shape[3] // pw))
        if isinstance(self.patch_size, tuple):
            raise ValueError(f"view 'patch_mask': a 1D input needs an int patch_size, got {self.patch_size}")
        return (-(-x.shape[-1] // self.patch_size),)

    def num_masked(self, num_patches: int) -> int:
        return int(round(self.ratio * num_patches))

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_masked, mask)`` with ``mask`` bool ``[B, num_patches]``, True = patch zeroed."""
        grid = self.grid(x)
        b = x.shape[0]
        n = 1
        for g in grid:
            n *= g
        k = self.num_masked(n)
        order = _rand((b, n), x, generator).argsort(dim=1)
        mask = torch.zeros(b, n, dtype=torch.bool, device=x.device)
        mask.scatter_(1, order[:, :k], True)
        if x.ndim == 4:
            ph, pw = self.patch_size if isinstance(self.patch_size, tuple) else (self.patch_size,) * 2
            pix = mask.view(b, grid[0], grid[1]).repeat_interleave(ph, 1).repeat_interleave(pw, 2)
            pix = pix[:, None, : x.shape[2], : x.shape[3]]
        else:
            pix = mask.repeat_interleave(self.patch_size, 1)[:, : x.shape[-1]]
            if x.ndim == 3:
                pix = pix[:, None, :]
        return x.masked_fill(pix, 0), mask

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sample(x, generator)[0]


class Compose(View):
    """Applies views in order (each drawing from the same generator); shapes as its views accept."""

    name = "compose"

    def __init__(self, views: Iterable[Callable[..., torch.Tensor]]) -> None:
        self.views = list(views)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for v in self.views:
            x = v(x, generator)
        return x

    def __len__(self) -> int:
        return len(self.views)

    def __repr__(self) -> str:
        return f"Compose([{', '.join(repr(v) for v in self.views)}])"


def _one_view(spec: Any, where: str) -> Callable[..., torch.Tensor]:
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, View) or (callable(spec) and not isinstance(spec, Mapping)):
        return spec
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: a view is a dict with a 'name' key, got {spec!r}.")
    if "name" not in spec:
        raise ConfigError(f"{where}: a view needs a 'name' key (one of {', '.join(VIEWS.names())}); got {dict(spec)!r}.")
    params = {k: v for k, v in spec.items() if k != "name"}
    cls = VIEWS.get(spec["name"])
    check_params(cls, params, f"view {spec['name']!r}")
    return cls(**params)


def build_view(spec: Any) -> Callable[..., torch.Tensor]:
    """Build a view from config.

    ``spec`` is ``None`` (identity), a list of ``{"name": ..., **params}`` dicts applied in
    order, a single such dict, or a view name. Unknown names or parameters raise
    :class:`~distillery.errors.ConfigError`.
    """
    if spec is None:
        return Identity()
    if isinstance(spec, (Mapping, str, View)):
        return _one_view(spec, "view")
    if not isinstance(spec, (list, tuple)):
        raise ConfigError(f"A view spec is a list of {{'name': ..., ...}} dicts or null, got {spec!r}.")
    views = [_one_view(s, f"view {i}") for i, s in enumerate(spec)]
    if not views:
        return Identity()
    if len(views) == 1:
        return views[0]
    return Compose(views)
