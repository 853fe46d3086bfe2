"""Denoisers: a network ``net(x_t, t, cond) -> prediction`` with its process and prediction kind.

:class:`Denoiser` is the one interface every sampler, teacher and objective of the generative
engine uses. It wraps any ``nn.Module`` whose forward takes

* ``x_t``: ``(B, *sample_shape)`` noisy samples (``(B, 2)`` points, ``(B, C, H, W)`` images);
* ``t``: ``(B,)`` float times in [0, 1] (0: data, 1: noise; see :mod:`.processes`);
* ``cond``: ``(B,)`` int class labels or ``None`` (a network that ignores it is unconditional);

and returns a ``(B, *sample_shape)`` prediction of kind ``prediction`` (``eps``, ``x0``, ``v``
or ``velocity``). :meth:`Denoiser.predict` converts it to any other kind, so that methods are
written once (``denoiser.predict(x_t, t, cond, "x0")``) whatever each network predicts.

Networks are registered in :data:`DENOISERS` by name and built by :func:`build_denoiser_net`
from ``{"name": ..., "params": {...}}`` with the sample shape (and class count when
conditional). The small reference networks live here; diffusers models are wrapped in
:mod:`.diffusers_models`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from .processes import PARAMETERISATIONS, Process

#: Registered networks. The image networks (:mod:`.networks`) and the diffusers wrappers
#: (:mod:`.diffusers_models`) register themselves when the registry is first read
#: (:mod:`._networks` imports them; neither imports diffusers at module level).
DENOISERS = Registry("denoiser", loader="distillery.generative._networks")


class Denoiser(nn.Module):
    """``net`` with its ``process`` and ``prediction`` kind.

    ``forward(x_t, t, cond=None)`` returns the network's raw prediction; :meth:`predict` the
    prediction converted to ``target``. ``sample_shape``: the shape of one sample, checked on
    every call (a network whose output shape differs from its input is refused with a message
    naming both shapes). ``num_classes``: for class-conditional networks (``cond`` required, or
    ``None`` for the unconditional/null class when the network was trained with label dropout)."""

    def __init__(self, net: nn.Module, process: Process, prediction: str = "eps",
                 sample_shape: tuple[int, ...] | None = None, num_classes: int | None = None) -> None:
        super().__init__()
        if prediction not in PARAMETERISATIONS:
            raise ConfigError(f"Unknown prediction kind {prediction!r}; choose one of {', '.join(PARAMETERISATIONS)}.")
        self.net = net
        self.process = process
        self.prediction = prediction
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else None
        self.num_classes = num_classes

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        t = _times(t, x_t)
        out = self.net(x_t, t, cond)
        if out.shape != x_t.shape:
            raise ConfigError(
                f"The denoiser {type(self.net).__name__} returned shape {tuple(out.shape)} for an input of shape "
                f"{tuple(x_t.shape)}; a denoiser must return a prediction of the same shape as its input."
            )
        return out

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None, target: str = "x0") -> torch.Tensor:
        """The prediction converted to ``target`` (``eps``, ``x0``, ``v``, ``velocity``, ``score``)."""
        t = _times(t, x_t)
        return self.process.convert(self(x_t, t, cond), x_t, t, self.prediction, target)


def _times(t: torch.Tensor | float, x_t: torch.Tensor) -> torch.Tensor:
    """``t`` as a ``(B,)`` (or, per frame of a video, ``(B, T)``) float tensor on ``x_t``'s device."""
    t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device)
    if t.dim() == 0:
        t = t.expand(x_t.shape[0])
    if t.shape != (x_t.shape[0],) and not (t.dim() == 2 and x_t.dim() > 2 and t.shape == x_t.shape[:2]):
        raise ConfigError(f"Times must have shape (B,) = ({x_t.shape[0]},) for a batch of {x_t.shape[0]} "
                          f"(or (B, T) for videos (B, T, ...)); got {tuple(t.shape)}.")
    return t


class TimeEmbedding(nn.Module):
    """Sinusoidal features of ``t`` in [0, 1] (scaled by 1000, as DDPM's integer steps), then an
    MLP: ``(B,)`` -> ``(B, dim)``."""

    def __init__(self, dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        self.dim, self.scale = dim, scale
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
        args = (t.float() * self.scale)[:, None] * freqs[None]
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
        if emb.shape[-1] < self.dim:
            emb = torch.nn.functional.pad(emb, (0, self.dim - emb.shape[-1]))
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


@DENOISERS.register("mlp2d")
class MLPDenoiser(nn.Module):
    """An MLP denoiser for flat samples ``(B, dim)`` (2-D points): ``[x, emb(t), emb(class)]`` ->
    ``hidden`` SiLU layers -> ``(B, dim)``. ``num_classes``: class-conditional with one extra
    "null" class (index ``num_classes``) used when ``cond`` is ``None`` (for guidance)."""

    def __init__(self, dim: int = 2, hidden: tuple[int, ...] | list[int] = (128, 128, 128), time_dim: int = 32,
                 num_classes: int | None = None) -> None:
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.time = TimeEmbedding(time_dim)
        self.label = nn.Embedding(num_classes + 1, time_dim) if num_classes else None
        layers: list[nn.Module] = []
        width = dim + time_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.SiLU()]
            width = h
        layers.append(nn.Linear(width, dim))
        self.body = nn.Sequential(*layers)

    def _embed(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        emb = self.time(t)
        if self.label is not None:
            labels = cond if cond is not None else torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.label(labels)
        return torch.cat([x, emb], dim=-1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(self._embed(x, t, cond))

    def features(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Penultimate activations ``(B, hidden[-1])`` (after the last SiLU; ``(B, dim + time_dim)``,
        the embedded input, when ``hidden`` is empty): what a GAN head or discriminator reads."""
        return self.body[:-1](self._embed(x, t, cond))


def build_denoiser_net(spec: dict[str, Any], sample_shape: tuple[int, ...], num_classes: int | None = None) -> nn.Module:
    """A registered network from ``{"name": ..., "params": {...}}`` for samples of ``sample_shape``.

    Each registered class receives its shape through its own keywords: flat networks take
    ``dim`` (the product of ``sample_shape``), image networks ``in_channels`` and
    ``image_size``; see :func:`shape_keywords`."""
    name = spec.get("name")
    cls = DENOISERS.get(name)
    params = dict(spec.get("params", {}))
    params.update(shape_keywords(cls, sample_shape, num_classes))
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"denoiser {name!r}: {exc}") from None


def shape_keywords(cls: Any, sample_shape: tuple[int, ...], num_classes: int | None) -> dict[str, Any]:
    """The keywords a registered network takes for the sample shape: ``dim`` for flat networks,
    ``in_channels`` / ``image_size`` for image networks, ``frames`` too for video networks
    (``shape_kind`` class attribute: ``"flat"`` default, ``"image"`` or ``"video"``), and
    ``num_classes`` when given."""
    out: dict[str, Any] = {}
    if getattr(cls, "shape_kind", "flat") == "video":
        if len(sample_shape) != 4 or sample_shape[2] != sample_shape[3]:
            raise ConfigError(f"denoiser {cls.__name__} needs videos of square frames (T, C, H, H); the data has samples of shape {sample_shape}.")
        out["frames"], out["in_channels"], out["image_size"] = sample_shape[0], sample_shape[1], sample_shape[2]
    elif getattr(cls, "shape_kind", "flat") == "image":
        if len(sample_shape) != 3 or sample_shape[1] != sample_shape[2]:
            raise ConfigError(f"denoiser {cls.__name__} needs square images (C, H, H); the data has samples of shape {sample_shape}.")
        out["in_channels"], out["image_size"] = sample_shape[0], sample_shape[1]
    else:
        out["dim"] = int(math.prod(sample_shape))
    if num_classes:
        out["num_classes"] = num_classes
    return out
