"""Super-resolution (SR) on the generative engine: pairs, conditioned networks, SR methods, measures.

Shared by the SR rows (IMDN, Hui et al. 2019, arXiv:1909.11856; TAD-SR, He et al. 2024,
arXiv:2408.07476; YONOS-SR, Noroozi et al. 2024, arXiv:2401.17258).

**Pairs.** A high-resolution image ``hr`` ``(B, C, H, H)`` is degraded by average pooling over
``scale x scale`` blocks (:func:`degrade`, ``(B, C, H/scale, H/scale)``) and brought back to
``H x H`` by :func:`upsample` (``bicubic``, ``bilinear`` or ``nearest``); that upsampled
low-resolution image is the *condition* every SR network here receives
(:func:`lr_condition`). The degradation is deterministic, so an SR method computes the
condition from the data batch itself (``batch["x"]`` is the HR image) and the engine's
datasets (``digit_images``: 8x8 digits, or 16x16 by upsampling) serve as they are.

**Networks** (registered in :data:`~.denoisers.DENOISERS`, ``net(x_t, t, cond)``, ``cond``
the upsampled LR image ``(B, C, H, H)``; ``cond=None`` means a zero image, the null condition,
which is what the run builder's probe passes):

* ``sr_unet`` (:class:`SRUNet`): the engine's :class:`~.networks.UNet` whose stem reads
  ``[x_t, cond]`` (``2C`` channels): an LR-conditioned denoiser (an SR diffusion model);
* ``imdn`` (:class:`IMDN`): information multi-distillation blocks (IMDB: progressive channel
  split, contrast-aware channel attention) as a one-step SR network of ``cond``;
* ``sr_cnn`` (:class:`PlainSRCNN`): a plain stack of 3x3 convolutions, the IMDN baseline.

The one-step networks ignore ``x_t`` and ``t`` (when ``cond`` is ``None`` they super-resolve
``x_t`` itself) and predict the HR image (use them with ``prediction: x0``).

**Methods** (:data:`~.method.METHODS`): ``sr_denoising`` (:class:`SRDenoising`, the SR
diffusion teacher: denoising regression conditioned on the LR image) and ``sr_regression``
(:class:`SRRegression`, a one-step SR network trained by MSE or L1 against the HR image).
Sampling without ``cond`` super-resolves the first ``n`` test digits of the run's image size
(cycled; :func:`eval_condition`), so the loop's evaluation (digits FD against the test split)
scores SR of the test set, sample ``i`` being the SR of test image ``i mod N``.

**Measures**: :func:`psnr` (per image, data range 2 for images in [-1, 1]),
:func:`high_frequency_energy` (per-pixel spectral energy above half the Nyquist frequency),
and :func:`sr_grid_png` (rows of LR | student(s) | HR, a PNG for a person to look at;
:func:`sr_run_triplets` draws them from a finished SR run's saved evaluation samples).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .denoisers import DENOISERS, Denoiser
from .method import METHODS, GenerativeMethod, drawn, ema_update
from .networks import UNet
from .objectives.common import check_decay, check_positive_int, prior_sample
from .objectives.denoising import denoising_target

__all__ = [
    "IMDB",
    "IMDN",
    "LOSSES",
    "UPSAMPLE_MODES",
    "ContrastChannelAttention",
    "PlainSRCNN",
    "SRDenoising",
    "SRPairs",
    "SRRegression",
    "SRUNet",
    "check_scale",
    "contrast",
    "degrade",
    "digit_sr_pairs",
    "eval_condition",
    "high_frequency_energy",
    "lr_condition",
    "one_step_sr",
    "parameter_count",
    "pixel_loss",
    "psnr",
    "run_samples",
    "sr_grid_png",
    "sr_pairs",
    "sr_run_triplets",
    "sr_scores",
    "upsample",
]

UPSAMPLE_MODES = ("bicubic", "bilinear", "nearest")


# -------------------------------------------------------------------------------- pairs
def check_scale(scale: Any, size: int | None = None, where: str = "sr") -> int:
    """``scale`` as an int >= 2 dividing ``size`` (when given); else a ConfigError naming ``scale``."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 2:
        raise ConfigError(f"{where}: scale must be an integer >= 2 (the magnification), got {scale!r}.")
    if size is not None and size % scale:
        raise ConfigError(f"{where}: scale {scale} does not divide the image size {size}.")
    return scale


def _check_mode(mode: Any, where: str = "sr") -> str:
    if mode not in UPSAMPLE_MODES:
        raise ConfigError(f"{where}: upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {mode!r}.")
    return mode


def degrade(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, C, H/scale, W/scale)``: the mean of each ``scale x scale`` block."""
    if hr.dim() != 4:
        raise ConfigError(f"degrade: images must be (B, C, H, W), got shape {tuple(hr.shape)}.")
    check_scale(scale, hr.shape[-1], "degrade")
    check_scale(scale, hr.shape[-2], "degrade")
    return F.avg_pool2d(hr, scale)


def upsample(lr: torch.Tensor, size: int, mode: str = "bicubic", *, clamp: bool = True) -> torch.Tensor:
    """``(B, C, h, w)`` -> ``(B, C, size, size)`` by ``mode`` interpolation (``align_corners=False``);
    ``clamp``: clip to [-1, 1] (bicubic overshoots)."""
    _check_mode(mode, "upsample")
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    out = F.interpolate(lr, size=(size, size), mode=mode, **kwargs)
    return out.clamp(-1.0, 1.0) if clamp else out


def lr_condition(hr: torch.Tensor, scale: int, mode: str = "bicubic") -> torch.Tensor:
    """The SR condition of ``hr`` ``(B, C, H, H)``: :func:`upsample` of :func:`degrade`, ``(B, C, H, H)``."""
    return upsample(degrade(hr, scale), hr.shape[-1], mode)


@dataclass
class SRPairs:
    """``lr`` ``(N, C, H/s, H/s)``, ``lr_up`` ``(N, C, H, H)`` (the condition) and ``hr`` ``(N, C, H, H)``."""

    lr: torch.Tensor
    lr_up: torch.Tensor
    hr: torch.Tensor
    scale: int
    mode: str


def sr_pairs(hr: torch.Tensor, scale: int, mode: str = "bicubic") -> SRPairs:
    """The SR pairs of HR images ``(N, C, H, H)``."""
    hr = hr.float()
    lr = degrade(hr, scale)
    return SRPairs(lr, upsample(lr, hr.shape[-1], mode), hr, scale, _check_mode(mode))


@lru_cache(maxsize=4)
def _digits(split: str, size: int) -> torch.Tensor:
    from .data import digit_images

    splits = digit_images(size=size)
    return getattr(splits, split).x.float().clone()


def digit_sr_pairs(split: str = "test", size: int = 8, scale: int = 2, mode: str = "bicubic") -> SRPairs:
    """SR pairs of the ``digit_images`` split (``train``: 1347 images, ``test``: 450) at ``size`` (8 or 16)."""
    if split not in ("train", "test"):
        raise ConfigError(f"digit_sr_pairs: split must be 'train' or 'test', got {split!r}.")
    return sr_pairs(_digits(split, size), scale, mode)


def eval_condition(n: int, size: int, scale: int, mode: str, *, channels: int = 1) -> torch.Tensor:
    """The conditions of the first ``n`` test digits at ``size`` (cycled when ``n > 450``): ``(n, 1, size, size)``."""
    if channels != 1:
        raise ConfigError("SR sampling without cond uses the digit test images (one channel); pass cond=(n, C, H, H) LR images.")
    hr = _digits("test", size)
    idx = torch.arange(n) % hr.shape[0]
    return lr_condition(hr[idx], scale, mode)


# -------------------------------------------------------------------------------- measures
def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image peak signal-to-noise ratio ``10 log10(data_range^2 / mean (x - ref)^2)``: ``(B,)``
    (dB; ``data_range = 2`` for images in [-1, 1]; a perfect image gives ``inf``)."""
    if x.shape != ref.shape:
        raise ConfigError(f"psnr: shapes differ, {tuple(x.shape)} vs {tuple(ref.shape)}.")
    mse = (x.double() - ref.double()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse)


def high_frequency_energy(x: torch.Tensor, cutoff: float = 0.5) -> torch.Tensor:
    """Per-image energy above ``cutoff`` times the Nyquist frequency: ``(B,)``.

    With the 2-D DFT ``X(k)`` of each ``(H, W)`` channel and frequencies ``f = k / H`` in cycles
    per pixel (Nyquist 0.5), ``E = 1/(C H W) * sum_c 1/(H W) sum_{max(|f_y|,|f_x|) > 0.5 cutoff} |X(k)|^2``:
    by Parseval the part of the mean squared pixel value carried by the high band (a ±1
    checkerboard: 1; a constant image: 0)."""
    if x.dim() != 4:
        raise ConfigError(f"high_frequency_energy: images must be (B, C, H, W), got shape {tuple(x.shape)}.")
    if not 0.0 <= cutoff < 1.0:
        raise ConfigError(f"high_frequency_energy: cutoff must lie in [0, 1), got {cutoff!r}.")
    _b, c, h, w = x.shape
    spec = torch.fft.fft2(x.double()).abs().pow(2)  # (B, C, H, W)
    fy = torch.fft.fftfreq(h, dtype=torch.float64).abs()[:, None]
    fx = torch.fft.fftfreq(w, dtype=torch.float64).abs()[None, :]
    band = (torch.maximum(fy.expand(h, w), fx.expand(h, w)) > 0.5 * cutoff).to(spec.dtype)
    return (spec * band).sum(dim=(1, 2, 3)) / (c * (h * w) ** 2)


def sr_grid_png(columns: Mapping[str, torch.Tensor], path: str | Path, *, rows: int = 8, title: str | None = None) -> Path:
    """Write a PNG with ``rows`` examples, one column per entry of ``columns`` (e.g. ``{"LR": lr,
    "student": sr, "HR": hr}``, each ``(N, C, h, w)`` in [-1, 1]; low-resolution images are shown
    with nearest-neighbour pixels). Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(columns)
    rows = min(rows, *(len(v) for v in columns.values()))
    fig, axes = plt.subplots(rows, len(names), figsize=(1.2 * len(names), 1.2 * rows), squeeze=False)
    for j, name in enumerate(names):
        imgs = columns[name].detach().float().cpu().clamp(-1, 1)
        for i in range(rows):
            ax = axes[i][j]
            ax.imshow(imgs[i, 0].numpy(), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------- networks
def _cond_image(cond: torch.Tensor | None, x: torch.Tensor, where: str) -> torch.Tensor:
    """``cond`` checked to be an image like ``x``; ``None`` -> zeros (the null condition)."""
    if cond is None:
        return torch.zeros_like(x)
    if not torch.is_floating_point(cond) or cond.shape != x.shape:
        raise ConfigError(f"{where}: cond must be the upsampled low-resolution image, a float tensor of shape "
                          f"{tuple(x.shape)}; got {tuple(cond.shape)} ({cond.dtype}). Class labels are not an SR condition.")
    return cond.to(x.dtype)


def _no_classes(num_classes: int | None, where: str) -> None:
    if num_classes:
        raise ConfigError(f"{where}: an SR network is conditioned on the low-resolution image, not on classes; "
                          "set data.conditional: false.")


@DENOISERS.register("sr_unet")
class SRUNet(nn.Module):
    """An LR-conditioned denoiser: the engine's :class:`~.networks.UNet` (``channels``,
    ``blocks``, ``time_dim``) with a stem reading ``[x_t, cond]`` (``2C`` channels). ``(B, C, H, H)``
    ``x_t``, ``(B,)`` ``t``, ``(B, C, H, H)`` ``cond`` -> ``(B, C, H, H)``. :meth:`features`: the
    U-Net's pooled bottleneck ``(B, channels[1])`` (what a time-aware discriminator reads)."""

    shape_kind = "image"

    def __init__(self, in_channels: int = 1, image_size: int = 8, channels: tuple[int, int] | list[int] = (16, 32),
                 blocks: int = 1, time_dim: int | None = None, num_classes: int | None = None) -> None:
        super().__init__()
        _no_classes(num_classes, "sr_unet")
        self.unet = UNet(in_channels, image_size, channels, blocks, time_dim)
        c0 = int(next(iter(channels)))
        self.unet.stem = nn.Conv2d(2 * in_channels, c0, 3, padding=1)
        self.in_channels, self.image_size, self.feature_dim = in_channels, image_size, self.unet.feature_dim

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(torch.cat([x_t, _cond_image(cond, x_t, "sr_unet")], dim=1), t)

    def features(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet.features(torch.cat([x_t, _cond_image(cond, x_t, "sr_unet")], dim=1), t)


def contrast(x: torch.Tensor) -> torch.Tensor:
    """Per-channel contrast of ``(B, C, H, W)``: spatial standard deviation (population) plus
    spatial mean, ``(B, C, 1, 1)`` (IMDN's contrast-aware pooling)."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
    return std + mean


class ContrastChannelAttention(nn.Module):
    """Contrast-aware channel attention (CCA, Hui et al. 2019, arXiv:1909.11856):
    ``x * sigmoid(W2 relu(W1 contrast(x)))``, ``W1``: 1x1 to ``channels / reduction``; ``(B, C, H, W)`` -> same."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.squeeze = nn.Conv2d(channels, hidden, 1)
        self.excite = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.excite(F.relu(self.squeeze(contrast(x)))))


class IMDB(nn.Module):
    """Information multi-distillation block (Hui et al. 2019): three 3x3 convolutions, after
    each the output is split into ``d = round(rate * channels)`` *distilled* channels (kept) and
    ``channels - d`` *coarse* ones (refined by the next convolution); a fourth 3x3 convolution
    turns the last coarse part into ``d`` channels; the four distilled parts are concatenated
    (``4 d``), weighted by :class:`ContrastChannelAttention`, fused by a 1x1 convolution back to
    ``channels`` and added to the input. LeakyReLU(0.05) after each 3x3 convolution.
    ``(B, channels, H, W)`` -> same."""

    def __init__(self, channels: int, rate: float = 0.25, reduction: int = 4) -> None:
        super().__init__()
        d = max(1, round(rate * channels))
        if d >= channels:
            raise ConfigError(f"imdn: rate {rate} leaves no coarse channels of {channels}.")
        self.d, self.r = d, channels - d
        self.c1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.c2 = nn.Conv2d(self.r, channels, 3, padding=1)
        self.c3 = nn.Conv2d(self.r, channels, 3, padding=1)
        self.c4 = nn.Conv2d(self.r, d, 3, padding=1)
        self.cca = ContrastChannelAttention(4 * d, reduction)
        self.fuse = nn.Conv2d(4 * d, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = lambda h: F.leaky_relu(h, 0.05)
        kept = []
        h = x
        for conv in (self.c1, self.c2, self.c3):
            d_part, h = torch.split(act(conv(h)), (self.d, self.r), dim=1)
            kept.append(d_part)
        kept.append(act(self.c4(h)))
        return x + self.fuse(self.cca(torch.cat(kept, dim=1)))


def _sr_input(x_t: torch.Tensor, cond: torch.Tensor | None, where: str) -> torch.Tensor:
    return x_t if cond is None else _cond_image(cond, x_t, where)


@DENOISERS.register("imdn")
class IMDN(nn.Module):
    """Information multi-distillation network (Hui, Gao, Yang & Wang 2019, "Lightweight Image
    Super-Resolution with Information Multi-distillation Network", arXiv:1909.11856), for an input
    already upsampled to the output size: a 3x3 stem to ``channels``, ``blocks`` :class:`IMDB` s,
    their outputs concatenated and fused (1x1, LeakyReLU, 3x3), a long skip from the stem, a 3x3
    convolution to ``C`` (zero-initialised) added to the input (global residual). The paper's
    pixel-shuffle upsampler and adaptive cropping are left out (the library conditions on the
    upsampled LR image). ``forward(x_t, t, cond)`` super-resolves ``cond`` (``x_t`` when ``cond``
    is ``None``); ``t`` is ignored. ``(B, C, H, H)`` -> ``(B, C, H, H)``."""

    shape_kind = "image"

    def __init__(self, in_channels: int = 1, image_size: int = 8, channels: int = 32, blocks: int = 3, rate: float = 0.25,
                 reduction: int = 4, num_classes: int | None = None) -> None:
        super().__init__()
        _no_classes(num_classes, "imdn")
        check_positive_int(channels, "channels", "imdn", 2)
        check_positive_int(blocks, "blocks", "imdn")
        self.in_channels, self.image_size = in_channels, image_size
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.blocks = nn.ModuleList(IMDB(channels, rate, reduction) for _ in range(blocks))
        self.fuse = nn.Conv2d(blocks * channels, channels, 1)
        self.body_out = nn.Conv2d(channels, channels, 3, padding=1)
        self.out = nn.Conv2d(channels, in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | None = None, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = _sr_input(x_t, cond, "imdn")
        s = self.stem(x)
        h, outs = s, []
        for block in self.blocks:
            h = block(h)
            outs.append(h)
        h = self.body_out(F.leaky_relu(self.fuse(torch.cat(outs, dim=1)), 0.05)) + s
        return x + self.out(h)


@DENOISERS.register("sr_cnn")
class PlainSRCNN(nn.Module):
    """A plain SR network (VDSR-like, Kim et al. 2016, arXiv:1511.04587): ``depth`` 3x3
    convolutions of width ``channels`` with ReLU between them, the last (zero-initialised) to
    ``C``, added to the input. Same call convention as :class:`IMDN`."""

    shape_kind = "image"

    def __init__(self, in_channels: int = 1, image_size: int = 8, channels: int = 48, depth: int = 6,
                 num_classes: int | None = None) -> None:
        super().__init__()
        _no_classes(num_classes, "sr_cnn")
        check_positive_int(channels, "channels", "sr_cnn")
        check_positive_int(depth, "depth", "sr_cnn", 2)
        self.in_channels, self.image_size = in_channels, image_size
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
        out = nn.Conv2d(channels, in_channels, 3, padding=1)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.body = nn.Sequential(*layers, out)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | None = None, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = _sr_input(x_t, cond, "sr_cnn")
        return x + self.body(x)


# -------------------------------------------------------------------------------- methods
def one_step_sr(student: Denoiser, lr_up: torch.Tensor, *, generator: torch.Generator | None = None,
                draw: Any = None) -> torch.Tensor:
    """The one-step SR output ``(B, C, H, H)``: the student's ``x0`` prediction at ``t_max`` from a
    prior draw ``x_T`` (ignored by the one-step networks) given the condition ``lr_up``."""
    n = lr_up.shape[0]
    x_T = prior_sample(student, n, generator=generator, device=lr_up.device, where="one-step SR", draw=draw)
    t = torch.full((n,), student.process.t_max, dtype=x_T.dtype, device=x_T.device)
    return student.predict(x_T, t, lr_up.to(x_T.dtype), "x0")


class _SRMethod(GenerativeMethod):
    """What the SR methods share: the scale, the upsampling mode and the evaluation condition."""

    def _sr_setup(self, student: Denoiser, scale: int, upsample_mode: str, where: str) -> None:
        shape = student.sample_shape
        if shape is None or len(shape) != 3:
            raise ConfigError(f"{where}: SR needs image data (C, H, H); the student has sample shape {shape}.")
        _no_classes(student.num_classes, where)
        self.scale = check_scale(scale, shape[-1], where)
        self.upsample_mode = _check_mode(upsample_mode, where)
        self.image_size, self.channels = shape[-1], shape[0]

    def condition(self, hr: torch.Tensor, scale: int | None = None) -> torch.Tensor:
        """The condition of HR images at ``scale`` (default the method's)."""
        return lr_condition(hr, self.scale if scale is None else scale, self.upsample_mode)

    def _sample_condition(self, n: int, cond: torch.Tensor | None, device: Any, dtype: torch.dtype) -> torch.Tensor:
        if cond is None:
            cond = eval_condition(n, self.image_size, self.scale, self.upsample_mode, channels=self.channels)
        elif not torch.is_floating_point(cond) or cond.shape[0] != n:
            raise ConfigError(f"SR sampling: cond must be ({n}, C, H, H) upsampled LR images, got {tuple(cond.shape)}.")
        return cond.to(device=device, dtype=dtype)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "scale": self.scale, "upsample": self.upsample_mode}

    def picture(self, x: torch.Tensor, path: Any, title: str = "") -> Path:
        """SR triplets LR | SR | HR of the first 8 samples (sample ``i`` super-resolves test digit ``i``)."""
        hr = _digits("test", x.shape[-1])
        n = min(8, x.shape[0])
        return sr_grid_png({"LR": degrade(hr[:n], self.scale), "SR": x[:n], "HR": hr[:n]}, path, rows=n, title=title or None)


@METHODS.register("sr_denoising")
class SRDenoising(_SRMethod):
    """An SR diffusion model trained from data: denoising regression conditioned on the
    upsampled LR image, ``loss = mean_b mean_i (net(x_t, t, lr_up(x0)) - target)^2`` with the
    engine's targets (:func:`~.objectives.denoising.denoising_target`), ``t`` uniform. Player
    ``model``; ``ema_decay``: an EMA copy samples and is exported. Sampling: ``steps`` steps of
    ``sample_solver`` from the prior, conditioned on the LR images (``cond``; default the test
    digits, :func:`eval_condition`)."""

    players = ("model",)

    def __init__(self, student: Denoiser, teacher: Any = None, *, scale: int = 2, upsample: str = "bicubic",
                 ema_decay: float | None = None, sample_solver: str = "euler") -> None:
        super().__init__()
        where = "method 'sr_denoising'"
        if teacher is not None:
            raise ConfigError(f"{where} trains an SR model from data and takes no teacher; remove the teacher section.")
        self._sr_setup(student, scale, upsample, where)
        if ema_decay is not None:
            check_decay(ema_decay, "ema_decay", where)
        if sample_solver not in ("euler", "ddim", "heun"):
            raise ConfigError(f"{where}: sample_solver must be euler, ddim or heun, got {sample_solver!r}.")
        self.model = student
        self.ema = copy.deepcopy(student).requires_grad_(False) if ema_decay is not None else None
        self.ema_decay, self.sample_solver = ema_decay, sample_solver

    @drawn
    def loss(self, player: str, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        x0 = batch["x"]
        process = self.model.process
        eps = self.draw.randn_like(x0)
        t = self.draw.times(process, x0.shape[0], device=x0.device, dtype=x0.dtype)
        pred = self.model(process.add_noise(x0, eps, t), t, self.condition(x0))
        loss = (pred - denoising_target(process, x0, eps, t, self.model.prediction)).pow(2).mean()
        return loss, {"loss": float(loss.detach())}

    def after_step(self, step: int) -> None:
        if self.ema is not None:
            ema_update(self.ema, self.model, float(self.ema_decay))

    def sampler_net(self) -> Denoiser:
        return self.ema if self.ema is not None else self.model

    @torch.no_grad()
    def sample(self, n: int, steps: int, *, cond: torch.Tensor | None = None,
               generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        from .samplers import sample

        net = self.sampler_net()
        x = prior_sample(net, n, generator=generator, device="cpu").to(device)
        return sample(net, x, steps=steps, solver=self.sample_solver, cond=self._sample_condition(n, cond, device, x.dtype))

    def exported(self) -> dict[str, nn.Module]:
        return {"model": self.sampler_net()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "prediction": self.model.prediction, "ema_decay": self.ema_decay}


LOSSES = ("mse", "l1")


def pixel_loss(x: torch.Tensor, ref: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """``mean (x - ref)^2`` (``mse``) or ``mean |x - ref|`` (``l1``) over every element."""
    if kind not in LOSSES:
        raise ConfigError(f"SR loss: unknown kind {kind!r}; choose one of {', '.join(LOSSES)}.")
    return (x - ref).pow(2).mean() if kind == "mse" else (x - ref).abs().mean()


@METHODS.register("sr_regression")
class SRRegression(_SRMethod):
    """A one-step SR network trained by a pixel loss against the HR image: ``loss = pixel_loss(
    G(lr_up), hr)`` (``mse`` or ``l1``), ``G`` = :func:`one_step_sr` of the student (IMDN,
    the plain CNN, or a denoiser used at ``t_max``). Player ``student``; sampling is one step
    (``steps`` must be 1)."""

    players = ("student",)

    def __init__(self, student: Denoiser, teacher: Any = None, *, scale: int = 2, upsample: str = "bicubic",
                 loss: str = "mse") -> None:
        super().__init__()
        where = "method 'sr_regression'"
        self._sr_setup(student, scale, upsample, where)
        if loss not in LOSSES:
            raise ConfigError(f"{where}: loss must be one of {', '.join(LOSSES)}, got {loss!r}.")
        self.student, self.loss_kind = student, loss

    @drawn
    def loss(self, player: str, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        hr = batch["x"]
        out = one_step_sr(self.student, self.condition(hr), draw=self.draw)
        loss = pixel_loss(out, hr, self.loss_kind)
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def sample(self, n: int, steps: int, *, cond: torch.Tensor | None = None,
               generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        if steps != 1:
            raise ConfigError(f"method 'sr_regression' is a one-step SR network; eval.steps must be [1], got {steps}.")
        dtype = next(self.student.parameters()).dtype
        return one_step_sr(self.student, self._sample_condition(n, cond, device, dtype), generator=generator)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "loss": self.loss_kind, "nfe": 1}


def parameter_count(module: nn.Module) -> int:
    """Number of parameters (all, trainable or not)."""
    return sum(p.numel() for p in module.parameters())


def run_samples(run_dir: str | Path, steps: int = 1) -> torch.Tensor:
    """The last evaluation samples a finished run saved at ``steps`` sampling steps
    (``samples/step<k>_nfe<steps>.safetensors``, largest ``k``): ``(N, C, H, H)``."""
    from safetensors.torch import load_file

    files = sorted(Path(run_dir, "samples").glob(f"step*_nfe{int(steps)}.safetensors"),
                   key=lambda p: int(p.name.split("_")[0][4:]))
    if not files:
        raise ConfigError(f"run_samples: {run_dir} has no samples at {steps} step(s) (eval.steps must include {steps}).")
    return load_file(str(files[-1]))["samples"]


def sr_scores(samples: torch.Tensor, hr: torch.Tensor) -> dict[str, float]:
    """``{"psnr": mean dB, "hf_energy": mean}`` of SR ``samples`` ``(N, C, H, H)`` (sample ``i`` the SR of
    ``hr[i mod len(hr)]``), clipped to [-1, 1]; ``hf_energy_hr`` is the reference's."""
    x = samples.float().clamp(-1.0, 1.0)
    ref = hr[torch.arange(x.shape[0]) % hr.shape[0]].float()
    return {"psnr": float(psnr(x, ref).mean()), "hf_energy": float(high_frequency_energy(x).mean()),
            "hf_energy_hr": float(high_frequency_energy(ref).mean())}


def sr_run_triplets(run_dir: str | Path, steps: int = 1, path: str | Path | None = None, *, rows: int = 8) -> Path:
    """Write the SR triplets (LR | SR | HR) of a finished SR run's last evaluation at ``steps``
    (its method's ``scale`` and ``upsample`` read from ``config.yaml``; the samples super-resolve
    the test digits in order) to ``path`` (default ``<run>/sr_triplets_nfe<steps>.png``)."""
    import yaml

    run_dir = Path(run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    params = (cfg.get("method") or {}).get("params") or {}
    if "scale" not in params:
        raise ConfigError(f"sr_run_triplets: {run_dir} is not an SR run (its method has no scale parameter).")
    samples = run_samples(run_dir, steps)
    hr = _digits("test", samples.shape[-1])
    n = min(rows, samples.shape[0])
    lr = degrade(hr[:n], int(params["scale"]))
    out = Path(path) if path is not None else run_dir / f"sr_triplets_nfe{int(steps)}.png"
    return sr_grid_png({"LR": lr, f"SR ({steps} step{'s' if steps > 1 else ''})": samples[:n], "HR": hr[:n]}, out, rows=n)
