"""Reference models: small MLPs, CNNs, ResNets and ViTs for 1D signals and 2D images.

Each factory takes the per-sample ``input_shape`` and ``num_classes`` (supplied by the
dataset) plus its own keyword arguments, and returns an ``nn.Module`` mapping a batch to
logits ``[B, num_classes]``. Submodules have readable names, listed in each docstring:
these dotted paths are what taps address (``student.layers.1.fc``, ``teacher.pool``).
Every model ends with ``pool`` (where it has one: features ``[B, D]``) and ``head``
(``nn.Linear``); ``head:input`` is always the penultimate feature vector.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import MODELS
from .transformer import Attention, AttentionFactory, FeedForward, PatchEmbed, TransformerBlock

__all__ = ["mlp", "cnn1d", "cnn2d", "resnet", "vit", "MLP", "ConvNet", "ResNet", "ViT", "channels_first", "build_vit_variant",
           # the transformer parts, defined in .transformer and kept importable from here
           "Attention", "FeedForward", "PatchEmbed", "TransformerBlock"]

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


def _activation(name: str, model: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ConfigError(f"{model}: unknown activation {name!r}; choose one of {', '.join(_ACTIVATIONS)}.")
    return _ACTIVATIONS[name]()


def _shape(input_shape: Any, model: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise ConfigError(f"{model}: input_shape must be a sequence of ints, got {input_shape!r}.") from None
    if not shape or any(s <= 0 for s in shape):
        raise ConfigError(f"{model}: input_shape must be non-empty with positive sizes, got {input_shape!r}.")
    return shape


def _ints(value: Any, name: str, model: str, allow_empty: bool = False) -> tuple[int, ...]:
    if isinstance(value, int):
        value = (value,)
    try:
        out = tuple(int(v) for v in value)
    except TypeError:
        raise ConfigError(f"{model}: {name} must be a list of ints, got {value!r}.") from None
    if (not out and not allow_empty) or any(v <= 0 for v in out):
        raise ConfigError(f"{model}: {name} must be {'a' if allow_empty else 'a non-empty'} list of positive ints, got {value!r}.")
    return out


def _num_classes(n: Any, model: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"{model}: num_classes must be a positive int, got {n!r}.")
    return n


class GlobalAvgPool(nn.Module):
    """Mean over every dim after the channel dim: ``[B, C, ...] -> [B, C]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).mean(dim=2)


def _norm(kind: str, channels: int, dims: int, model: str) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(channels) if dims == 1 else nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"{model}: norm must be 'batch', 'group' or 'none', got {kind!r}.")


def _conv(dims: int, cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = True) -> nn.Module:
    conv = nn.Conv1d if dims == 1 else nn.Conv2d
    return conv(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias)


def channels_first(
    x: torch.Tensor,
    dims: int,
    add_channel: bool,
    model: str,
    error: type[Exception] = ConfigError,
    image: str = "[B, C, H, W]",
) -> torch.Tensor:
    """A model's input batch with its channel dim: ``[B, C, L]`` (``dims == 1``) or ``[B, C, H, W]``.

    ``[B, L]`` becomes ``[B, 1, L]`` for a model built for single-channel signals
    (``add_channel``, input_shape ``(L,)``); any other layout raises ``error`` naming ``model``
    and the expected shapes (``image`` describes the accepted 2D layout).
    """
    if dims == 1:
        if add_channel and x.ndim == 2:
            return x.unsqueeze(1)
        if x.ndim == 3:
            return x
        expected = "[B, L] or [B, C, L]"
    elif x.ndim == 4:
        return x
    else:
        expected = image
    raise error(f"{model} expects input {expected}; got a tensor of shape {list(x.shape)}.")


# --------------------------------------------------------------------------------------
# MLP
# --------------------------------------------------------------------------------------


class MLPBlock(nn.Module):
    """``fc -> act (-> drop)``."""

    def __init__(self, cin: int, cout: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(cin, cout)
        self.act = _activation(activation, "mlp")
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.fc(x)))


class MLP(nn.Module):
    """Flatten, then ``layers.i`` (``fc``, ``act``, ``drop``), then ``head``."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int], dropout: float, activation: str) -> None:
        super().__init__()
        self.input_shape = input_shape
        d = math.prod(input_shape)
        self.layers = nn.ModuleList()
        for h in hidden:
            self.layers.append(MLPBlock(d, h, activation, dropout))
            d = h
        self.head = nn.Linear(d, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


@MODELS.register("mlp")
def mlp(
    input_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int] = (256, 256),
    dropout: float = 0.0,
    activation: str = "relu",
) -> MLP:
    """Multilayer perceptron on flattened inputs of any shape.

    Modules: ``layers.0.fc``, ``layers.0.act``, ``layers.0.drop``, ``layers.1.fc``, ...,
    ``head`` (``nn.Linear``; ``head:input`` is the last hidden layer). ``hidden=()`` gives
    a linear model. ``activation``: relu, gelu, silu, tanh, elu, leaky_relu, sigmoid, identity.

    Args:
        input_shape: the per-sample shape, flattened.
        num_classes: the number of logits.
        hidden: the widths of the hidden layers, in order ([]: a linear model).
        dropout: the dropout probability after each hidden activation, in [0, 1).
        activation: relu, gelu, silu, tanh, elu, leaky_relu, sigmoid or identity.
    """
    shape = _shape(input_shape, "mlp")
    hidden = _ints(hidden, "hidden", "mlp", allow_empty=True)
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"mlp: dropout must be in [0, 1), got {dropout}.")
    _activation(activation, "mlp")
    return MLP(shape, _num_classes(num_classes, "mlp"), hidden, float(dropout), activation)


# --------------------------------------------------------------------------------------
# Plain CNNs
# --------------------------------------------------------------------------------------


class ConvBlock(nn.Module):
    """``conv -> norm -> act``."""

    def __init__(self, dims: int, cin: int, cout: int, kernel: int, stride: int, norm: str, activation: str, model: str) -> None:
        super().__init__()
        self.conv = _conv(dims, cin, cout, kernel, stride, bias=norm == "none")
        self.norm = _norm(norm, cout, dims, model)
        self.act = _activation(activation, model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ConvNet(nn.Module):
    """``blocks.i`` (``conv``, ``norm``, ``act``), ``pool`` (global average, ``[B, C]``), ``drop``, ``head``."""

    def __init__(
        self,
        dims: int,
        input_shape: tuple[int, ...],
        num_classes: int,
        channels: tuple[int, ...],
        kernel_size: int,
        strides: tuple[int, ...],
        norm: str,
        activation: str,
        dropout: float,
        model: str,
    ) -> None:
        super().__init__()
        self.dims = dims
        self.model_name = model
        self.input_shape = input_shape
        self.add_channel = dims == 1 and len(input_shape) == 1
        cin = 1 if self.add_channel else input_shape[0]
        self.blocks = nn.ModuleList()
        for cout, stride in zip(channels, strides):
            self.blocks.append(ConvBlock(dims, cin, cout, kernel_size, stride, norm, activation, model))
            cin = cout
        self.pool = GlobalAvgPool()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = channels_first(x, self.dims, self.add_channel, self.model_name,
                           image="[B, C, H, W] (flat [B, H*W] inputs are not accepted; reshape them or use mlp)")
        for block in self.blocks:
            x = block(x)
        return self.head(self.drop(self.pool(x)))


def _strides(strides: Any, n: int, model: str) -> tuple[int, ...]:
    if strides is None:
        return tuple(1 if i == 0 else 2 for i in range(n))
    out = _ints(strides, "strides", model)
    if len(out) != n:
        raise ConfigError(f"{model}: strides has {len(out)} entries but channels has {n}.")
    return out


# Automatic depth of the 2D reference CNNs. Their defaults were tuned on 8x8 digits. An image
# larger than _KEPT_SIDE on its longer side gets one more stride-2 stage per doubling of that
# side beyond _TUNED_SIDE, so that its last feature map is as small as an 8x8 image's (2x2
# with the default widths) and the receptive field grows with the image. Images up to
# _KEPT_SIDE (16x16 canvases, 8x8 digits) keep the network they always had.
_TUNED_SIDE = 8
_KEPT_SIDE = 16


def _extra_stages(value: Any, spatial: Sequence[int], model: str) -> int:
    """``value`` checked, or for ``None``: 0 when the longest side of ``spatial`` is at most
    :data:`_KEPT_SIDE`, else its number of doublings beyond :data:`_TUNED_SIDE` (2 for 17 to
    32 pixels, 3 for 33 to 64, ...)."""
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{model}: extra_stages must be a non-negative int or null (automatic), got {value!r}.")
        return value
    longest = max(spatial)
    if longest <= _KEPT_SIDE:
        return 0
    extra, side = 0, _TUNED_SIDE
    while side < longest:
        extra, side = extra + 1, side * 2
    return extra


def _conv_common(model: str, kernel_size: Any, dropout: Any, norm: str, activation: str) -> int:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
        raise ConfigError(f"{model}: kernel_size must be a positive int, got {kernel_size!r}.")
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"{model}: dropout must be in [0, 1), got {dropout}.")
    _activation(activation, model)
    _norm(norm, 8, 1, model)
    return kernel_size


@MODELS.register("cnn1d")
def cnn1d(
    input_shape: Sequence[int],
    num_classes: int,
    channels: Sequence[int] = (32, 64, 64),
    kernel_size: int = 5,
    strides: Sequence[int] | None = None,
    norm: str = "batch",
    activation: str = "relu",
    dropout: float = 0.0,
) -> ConvNet:
    """1D CNN for signals: input_shape (L,) (batches [B, L]) or (C, L) (batches [B, C, L]).

    Modules: ``blocks.0.conv``, ``blocks.0.norm``, ``blocks.0.act``, ``blocks.1.conv``, ...,
    ``pool`` (global average, ``[B, C]``), ``drop``, ``head``. ``strides`` defaults to 1 for
    the first block and 2 after; ``norm``: batch, group or none.

    Args:
        input_shape: (L,) or (C, L).
        num_classes: the number of logits.
        channels: the output channels of the conv blocks, one block per entry.
        kernel_size: the conv kernel length (padding ``kernel_size // 2``).
        strides: one stride per block (null: 1 for the first block, 2 after).
        norm: batch, group or none, after each conv.
        activation: relu, gelu, silu, tanh, elu, leaky_relu, sigmoid or identity.
        dropout: the dropout probability before the head, in [0, 1).
    """
    shape = _shape(input_shape, "cnn1d")
    if len(shape) not in (1, 2):
        raise ConfigError(f"cnn1d: input_shape must be (L,) or (C, L), got {shape}; use cnn2d for images.")
    chans = _ints(channels, "channels", "cnn1d")
    k = _conv_common("cnn1d", kernel_size, dropout, norm, activation)
    return ConvNet(1, shape, _num_classes(num_classes, "cnn1d"), chans, k, _strides(strides, len(chans), "cnn1d"), norm, activation, float(dropout), "cnn1d")


@MODELS.register("cnn2d")
def cnn2d(
    input_shape: Sequence[int],
    num_classes: int,
    channels: Sequence[int] = (32, 64, 64),
    kernel_size: int = 3,
    strides: Sequence[int] | None = None,
    norm: str = "batch",
    activation: str = "relu",
    dropout: float = 0.0,
    extra_stages: int | None = None,
) -> ConvNet:
    """2D CNN for images: input_shape (C, H, W), batches [B, C, H, W] (flat [B, H*W] is rejected).

    Modules: ``blocks.0.conv``, ``blocks.0.norm``, ``blocks.0.act``, ``blocks.1.conv``, ...,
    ``pool`` (global average, ``[B, C]``), ``drop``, ``head``. ``strides`` defaults to 1 for
    the first block and 2 after; ``norm``: batch, group or none.

    The depth follows the input size. The defaults were tuned on 8x8 digits; with
    ``strides`` and ``extra_stages`` left at null, an image larger than 16 pixels on its
    longer side gets one stride-2 block per doubling of that side beyond 8, as wide as the
    last of ``channels`` (``blocks.3``, ...), so that its last feature map is as small as
    an 8x8 digit's and the receptive field covers the image. Images up to 16x16 keep the
    network they always had. With the default channels (32, 64, 64), by the longer side:

    ============  =================  ===================  ================  ==========
    side          blocks             last feature map     receptive field   parameters
    ============  =================  ===================  ================  ==========
    up to 8       3 (strides 1 2 2)  2x2 (8x8)            9 pixels          56.6k
    9 to 16       3 (strides 1 2 2)  3x3 to 4x4 (16x16)   9 pixels          56.6k
    17 to 32      5 (1 2 2 2 2)      2x2 (28x28, 32x32)   33 pixels         130.5k
    33 to 64      6                  2x2 (64x64)          65 pixels         167.5k
    65 to 128     7                  2x2                  129 pixels        204.5k
    ============  =================  ===================  ================  ==========

    (parameters for one input channel and 10 classes). For 9 to 16 pixels ``extra_stages: 1``
    gives the 2x2 map too; ``extra_stages: 0`` keeps three blocks at any size (and loads
    weights saved for images over 16 pixels before the automatic blocks existed), and
    explicit ``strides`` turn the automatic blocks off.

    Args:
        input_shape: (C, H, W).
        num_classes: the number of logits.
        channels: the output channels of the conv blocks, one block per entry.
        kernel_size: the conv kernel size (padding ``kernel_size // 2``).
        strides: one stride per block of ``channels`` (null: 1 for the first, 2 after).
        norm: batch, group or none, after each conv.
        activation: relu, gelu, silu, tanh, elu, leaky_relu, sigmoid or identity.
        dropout: the dropout probability before the head, in [0, 1).
        extra_stages: stride-2 blocks appended after ``channels``, each as wide as the last
            (null: none up to 16 pixels, else one per doubling of the longer side beyond 8;
            none when ``strides`` is given).
    """
    shape = _shape(input_shape, "cnn2d")
    if len(shape) != 3:
        raise ConfigError(
            f"cnn2d: input_shape must be (C, H, W), got {shape}; flat images are not accepted "
            "(store them as [N, C, H, W], or use mlp or cnn1d)."
        )
    chans = _ints(channels, "channels", "cnn2d")
    k = _conv_common("cnn2d", kernel_size, dropout, norm, activation)
    steps = _strides(strides, len(chans), "cnn2d")
    extra = _extra_stages(extra_stages, shape[1:], "cnn2d") if strides is None or extra_stages is not None else 0
    chans, steps = chans + (chans[-1],) * extra, steps + (2,) * extra
    return ConvNet(2, shape, _num_classes(num_classes, "cnn2d"), chans, k, steps, norm, activation, float(dropout), "cnn2d")


# --------------------------------------------------------------------------------------
# ResNet
# --------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """``conv1 -> bn1 -> act1 -> conv2 -> bn2``, plus ``shortcut``, then ``act2`` (the block output)."""

    def __init__(self, dims: int, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        bn = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.conv1 = conv(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = bn(cout)
        self.act1 = nn.ReLU()
        self.conv2 = conv(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = bn(cout)
        if stride != 1 or cin != cout:
            self.shortcut: nn.Module = nn.Sequential(conv(cin, cout, 1, stride=stride, bias=False), bn(cout))
        else:
            self.shortcut = nn.Identity()
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class Stem(nn.Module):
    """``conv -> norm -> act``."""

    def __init__(self, dims: int, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _conv(dims, cin, cout, 3, bias=False)
        self.norm = nn.BatchNorm1d(cout) if dims == 1 else nn.BatchNorm2d(cout)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ResNet(nn.Module):
    """``stem``, ``stages.s.b`` (:class:`BasicBlock`), ``pool``, ``head``."""

    def __init__(self, dims: int, input_shape: tuple[int, ...], num_classes: int, widths: tuple[int, ...], blocks_per_stage: int) -> None:
        super().__init__()
        self.dims = dims
        self.input_shape = input_shape
        self.add_channel = dims == 1 and len(input_shape) == 1
        cin = 1 if self.add_channel else input_shape[0]
        self.stem = Stem(dims, cin, widths[0])
        c = widths[0]
        self.stages = nn.ModuleList()
        for s, w in enumerate(widths):
            stage = nn.Sequential()
            for b in range(blocks_per_stage):
                stage.append(BasicBlock(dims, c, w, stride=2 if (s > 0 and b == 0) else 1))
                c = w
            self.stages.append(stage)
        self.pool = GlobalAvgPool()
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(channels_first(x, self.dims, self.add_channel, "resnet"))
        for stage in self.stages:
            x = stage(x)
        return self.head(self.pool(x))


@MODELS.register("resnet")
def resnet(
    input_shape: Sequence[int],
    num_classes: int,
    widths: Sequence[int] = (16, 32, 64),
    blocks_per_stage: int = 1,
    extra_stages: int | None = None,
) -> ResNet:
    """Small ResNet (post-activation basic blocks), 1D for (L,)/(C, L) inputs, 2D for (C, H, W).

    Modules: ``stem`` (``stem.conv``, ``stem.norm``, ``stem.act``), ``stages.0.0.conv1``,
    ``stages.0.0.bn1``, ``stages.0.0.act1``, ``stages.0.0.conv2``, ``stages.0.0.bn2``,
    ``stages.0.0.shortcut``, ``stages.0.0.act2`` (block output), ..., ``stages.S.B``,
    ``pool`` (global average, ``[B, C]``), ``head``. Stages after the first halve the
    resolution; stage ``s`` has ``widths[s]`` channels.

    For images the depth follows the input size as in :func:`cnn2d`: with ``extra_stages``
    null, an image larger than 16 pixels on its longer side gets one more stage per doubling
    of that side beyond 8, as wide as the last of ``widths``. With the default widths (16,
    32, 64): three stages up to 16x16 (8x8 digits end at 2x2, 16x16 at 4x4; 77.8k parameters
    for one channel and 10 classes), five from 17 to 32 (28x28 and 32x32 end at 2x2; 234k),
    six from 33 to 64. 1D inputs get no extra stage unless ``extra_stages`` asks for them.
    ``extra_stages: 0`` keeps the stages of ``widths`` at any size (and loads weights saved
    for images over 16 pixels before the automatic stages existed).

    Args:
        input_shape: (L,), (C, L) or (C, H, W).
        num_classes: the number of logits.
        widths: the channels of each stage; every stage after the first halves the resolution.
        blocks_per_stage: the basic blocks per stage.
        extra_stages: stages appended after ``widths``, each as wide as the last (null: for
            images larger than 16 pixels one per doubling of the longer side beyond 8, else none).
    """
    shape = _shape(input_shape, "resnet")
    if len(shape) not in (1, 2, 3):
        raise ConfigError(f"resnet: input_shape must be (L,), (C, L) or (C, H, W), got {shape}.")
    ws = _ints(widths, "widths", "resnet")
    if isinstance(blocks_per_stage, bool) or not isinstance(blocks_per_stage, int) or blocks_per_stage < 1:
        raise ConfigError(f"resnet: blocks_per_stage must be a positive int, got {blocks_per_stage!r}.")
    dims = 2 if len(shape) == 3 else 1
    extra = _extra_stages(extra_stages, shape[1:], "resnet") if dims == 2 or extra_stages is not None else 0
    ws = ws + (ws[-1],) * extra
    return ResNet(dims, shape, _num_classes(num_classes, "resnet"), ws, blocks_per_stage)


# --------------------------------------------------------------------------------------
# ViT
# --------------------------------------------------------------------------------------


class ViT(nn.Module):
    """``patch_embed``, class token + positions, ``blocks.i``, ``norm``, ``head`` on the class token.

    The blocks are :class:`~distillery.models.transformer.TransformerBlock` s whose attention
    is built by ``attention`` (default: softmax :class:`~distillery.models.transformer.Attention`).
    Besides ``forward`` (logits ``[B, num_classes]``) and :meth:`tokens`, the steps are exposed
    for models that encode a subset of the patches (MAE, token masking): :meth:`patch_tokens`,
    :meth:`encode_patches`, :meth:`encode`.
    """

    def __init__(
        self,
        dims: int,
        input_shape: tuple[int, ...],
        num_classes: int,
        patch: tuple[int, ...],
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        dropout: float,
        attention: AttentionFactory = Attention,
    ) -> None:
        super().__init__()
        self.dims = dims
        self.input_shape = input_shape
        self.add_channel = dims == 1 and len(input_shape) == 1
        cin = 1 if self.add_channel else input_shape[0]
        spatial = input_shape[-1:] if dims == 1 else input_shape[1:]
        self.grid = tuple(s // p for s, p in zip(spatial, patch))
        self.num_patches = math.prod(self.grid)
        self.patch_embed = PatchEmbed(dims, cin, dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio, dropout, attention) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised tokens ``[B, 1 + num_patches, dim]`` (class token first) of an input batch."""
        t = self.patch_embed(channels_first(x, self.dims, self.add_channel, "vit"))
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
        return self.encode(t)

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Position-embedded patch tokens ``[B, num_patches, dim]`` of a channels-first batch
        (``[B, C, L]`` or ``[B, C, H, W]``, see :func:`channels_first`)."""
        return self.patch_embed(x) + self.pos_embed[:, 1:]

    def encode_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Prepend the (position-embedded) class token to ``patches`` ``[B, M, dim]`` (rows of
        :meth:`patch_tokens`, any ``M`` of them) and :meth:`encode`: ``[B, 1 + M, dim]``."""
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(patches.shape[0], -1, -1)
        return self.encode(torch.cat([cls, patches], dim=1))

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """``blocks`` then ``norm`` on a token sequence ``[B, T, dim]`` -> ``[B, T, dim]``."""
        for block in self.blocks:
            seq = block(seq)
        return self.norm(seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens(x)[:, 0])


@MODELS.register("vit")
def vit(
    input_shape: Sequence[int],
    num_classes: int,
    patch_size: int | Sequence[int],
    dim: int = 64,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: float = 2.0,
    dropout: float = 0.0,
) -> ViT:
    """Tiny vision transformer with a class token, for 1D sequences (patches along L) and images.

    Input (L,) / (C, L) with an int ``patch_size`` dividing L, or (C, H, W) with an int or
    (ph, pw) dividing H and W. Modules: ``patch_embed`` (tokens ``[B, N, dim]``),
    ``blocks.0.norm1``, ``blocks.0.attn`` (``.qkv``, ``.softmax`` with attention
    probabilities ``[B, heads, N+1, N+1]``, ``.proj``), ``blocks.0.norm2``, ``blocks.0.mlp``
    (``.fc1``, ``.act``, ``.fc2``), ..., ``norm`` (all tokens), ``head`` (on the class token).
    The sequence length grows with the input: (H / ph) * (W / pw) + 1 tokens, so pick the
    patch for the image size (4 for 8x8 to 16x16 images, 4 or 7 for 28x28, 4 or 8 for 32x32).

    Args:
        input_shape: (L,), (C, L) or (C, H, W).
        num_classes: the number of logits.
        patch_size: the patch length (1D), or side or (height, width) (images); must divide
            the input's spatial size.
        dim: the token width.
        depth: the number of transformer blocks.
        heads: the attention heads per block; must divide ``dim``.
        mlp_ratio: the feed-forward hidden width as a multiple of ``dim``.
        dropout: the dropout probability in the blocks, in [0, 1).
    """
    shape = _shape(input_shape, "vit")
    if len(shape) not in (1, 2, 3):
        raise ConfigError(f"vit: input_shape must be (L,), (C, L) or (C, H, W), got {shape}.")
    dims = 2 if len(shape) == 3 else 1
    spatial = shape[-1:] if dims == 1 else shape[1:]
    patch = _ints(patch_size, "patch_size", "vit")
    if dims == 2 and len(patch) == 1:
        patch = patch * 2
    if len(patch) != dims:
        raise ConfigError(f"vit: patch_size {patch_size!r} does not fit a {dims}D input of shape {shape}.")
    if any(s % p for s, p in zip(spatial, patch)):
        raise ConfigError(f"vit: patch_size {patch_size!r} must divide the input's spatial size {spatial}.")
    for name, v in (("dim", dim), ("depth", depth), ("heads", heads)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"vit: {name} must be a positive int, got {v!r}.")
    if dim % heads:
        raise ConfigError(f"vit: dim ({dim}) must be divisible by heads ({heads}).")
    if float(mlp_ratio) <= 0:
        raise ConfigError(f"vit: mlp_ratio must be > 0, got {mlp_ratio}.")
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"vit: dropout must be in [0, 1), got {dropout}.")
    return ViT(dims, shape, _num_classes(num_classes, "vit"), patch, dim, depth, heads, float(mlp_ratio), float(dropout))


def build_vit_variant(
    cls: type[ViT],
    input_shape: Sequence[int],
    num_classes: int,
    patch_size: int | Sequence[int],
    dim: int,
    depth: int,
    heads: int,
    mlp_ratio: float,
    dropout: float,
    **extra: Any,
) -> ViT:
    """A ``cls`` (a :class:`ViT` subclass taking ``extra`` keywords) with ``vit``'s parameters.

    The parameters are validated by building the reference ``vit`` first, which is then
    discarded. Its initialisation also advances the global random stream: the seeded initial
    weights of ``linear_vit`` and ``token_masking_vit`` (and the figures reproduced with them)
    depend on it, so this order must stay.
    """
    ref = vit(input_shape, num_classes, patch_size, dim, depth, heads, mlp_ratio, dropout)
    patch = tuple(int(k) for k in ref.patch_embed.proj.kernel_size)
    return cls(ref.dims, ref.input_shape, num_classes, patch, dim, depth, heads, float(mlp_ratio), float(dropout), **extra)
