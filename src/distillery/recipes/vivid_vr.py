"""Vivid-VR's concept distillation: a generative teacher synthesises the restoration training pairs.

H. Bai, X. Chen, C. Yang, Z. He, S. Deng, Y. Chen, 2025, "Vivid-VR: Distilling Concepts from
Text-to-Video Diffusion Transformer for Photorealistic Video Restoration", arXiv:2508.14483
(code: github.com/csbhr/Vivid-VR). "We propose a concept distillation training strategy that
utilizes the pretrained T2V model to synthesize training samples with embedded textual
concepts, thereby distilling its conceptual understanding to preserve texture and temporal
quality."

Not really knowledge distillation: what distils is *data*. The teacher's knowledge of a concept
reaches the restoration network only through the training pairs it synthesises (close to
sequence-level KD, Kim & Rush 2016, arXiv:1606.07947, where a student is trained on the
teacher's outputs). As expressed here:

* teacher: a class-conditional diffusion/flow denoiser (the engine's ``denoising`` run with
  label dropout, sampled with classifier-free guidance); a *concept* is a class;
* concept synthesis (:func:`concept_images`): clean images of the concept drawn by the teacher,
  either from noise under the concept (``t_start = 1``,
  :func:`~distillery.generative.synthetic.synthetic_set`) or by re-drawing real images of the
  concept from a partial noise level ``t_start < 1`` under it
  (:func:`~distillery.generative.synthetic.resynthesise`: the paper re-renders real clips
  through the T2V model under their captions; the noise level here is [inferred]);
* pairs: ``(degrade(x), x)`` with a known degradation (:func:`degrade`: Gaussian blur, then
  additive Gaussian noise), the ground truth being the clean image ``x``;
* restoration network (:class:`Restorer`, a small residual CNN ``y + f(y)``) trained by mean
  squared error on real pairs, or on real plus teacher-synthesised pairs (:func:`train_restorer`);
  scored by PSNR (:func:`~distillery.generative.restoration.psnr`) on the concept's real test images.

Left out: the ControlNet around a frozen T2V DiT (the restorer here is a plain network, not a
controlled generator), the control feature projector that filters degradation artefacts from the
input latents, the dual-branch (MLP + cross-attention) ControlNet connector, the captioner
(CogVLM2-Video; the concept is the class label), the 3-D VAE, video and temporal coherence.

PSNR is the shared :func:`distillery.generative.restoration.psnr`; the blur + noise degradation
lives here (the shared module's ``degrade`` is the super-resolution pooling). Config (the teacher): ``configs/vivid_vr_digits.yaml``;
reproduction: ``distillery reproduce vivid_vr``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..generative.restoration import psnr
from ..generative.synthetic import resynthesise, synthetic_set
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("vivid_vr", "Bai et al. 2025, Vivid-VR, arXiv:2508.14483", "vivid_vr_digits.yaml",
           "Concept distillation: a class-conditional generator synthesises concept-specific pairs that train a restoration network")
)


# -- degradation and score -----------------------------------------------------------------------
def gaussian_kernel(sigma: float, size: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The normalised 2-D Gaussian ``(size, size)``: ``k[i, j] ∝ exp(-((i - c)^2 + (j - c)^2) / (2
    sigma^2))``, ``c = (size - 1) / 2``, summing to 1; ``size`` defaults to ``2 ceil(2 sigma) + 1``."""
    if not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and sigma > 0 and math.isfinite(sigma)):
        raise ConfigError(f"blur_sigma must be a positive number, got {sigma!r}.")
    size = int(size or 2 * math.ceil(2 * sigma) + 1)
    if size < 1 or size % 2 == 0:
        raise ConfigError(f"the blur kernel size must be a positive odd integer, got {size}.")
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * float(sigma) ** 2))
    k = g[:, None] * g[None, :]
    return (k / k.sum()).to(dtype)


def blur(x: torch.Tensor, sigma: float, size: int | None = None) -> torch.Tensor:
    """Gaussian blur of ``x`` ``(B, C, H, W)``, channel by channel, with reflected borders."""
    k = gaussian_kernel(sigma, size, x.dtype).to(x.device)
    pad = k.shape[-1] // 2
    c = x.shape[1]
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad < min(x.shape[-2:]) else F.pad(x, (pad,) * 4, mode="replicate")
    return F.conv2d(xp, k[None, None].expand(c, 1, *k.shape), groups=c)


def degrade(x: torch.Tensor, *, blur_sigma: float = 1.0, noise_std: float = 0.2,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """The training degradation: ``blur(x, blur_sigma) + noise_std * n``, ``n ~ N(0, I)`` from
    ``generator``; ``x`` ``(B, C, H, W)`` -> same (not clipped)."""
    if not (isinstance(noise_std, (int, float)) and not isinstance(noise_std, bool) and noise_std >= 0):
        raise ConfigError(f"noise_std must be a number >= 0, got {noise_std!r}.")
    y = blur(x, blur_sigma)
    if noise_std:
        y = y + float(noise_std) * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return y


# -- the restoration network ---------------------------------------------------------------------
class Restorer(nn.Module):
    """A small residual restoration CNN: ``y + f(y)``, ``f`` = ``depth`` 3x3 convolutions of
    ``width`` channels with ReLU between, the last zero-initialised (the identity at the start).
    ``(B, C, H, W)`` -> same."""

    def __init__(self, channels: int = 1, width: int = 32, depth: int = 4) -> None:
        super().__init__()
        if depth < 2:
            raise ConfigError(f"Restorer: depth must be at least 2, got {depth}.")
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.body = nn.Sequential(*layers)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.body(y)


def train_restorer(clean: torch.Tensor, *, blur_sigma: float = 1.0, noise_std: float = 0.2, steps: int = 400,
                   lr: float = 2e-3, batch_size: int = 64, width: int = 32, depth: int = 4, seed: int = 0) -> Restorer:
    """A :class:`Restorer` trained on pairs ``(degrade(x), x)`` of the clean images ``clean``
    ``(N, C, H, W)``: ``steps`` Adam steps (``lr``, cosine decay) on minibatches of ``batch_size``
    drawn with replacement, each degraded afresh (new noise every step), by mean squared error.
    Seeded by ``seed`` (initialisation, batches, noise)."""
    if clean.dim() != 4 or clean.shape[0] == 0:
        raise ConfigError(f"train_restorer: clean images must be (N, C, H, W) with N > 0, got {tuple(clean.shape)}.")
    torch.manual_seed(int(seed))
    gen = torch.Generator().manual_seed(int(seed))
    net = Restorer(clean.shape[1], width, depth)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(int(steps)):
        x = clean[torch.randint(0, clean.shape[0], (batch_size,), generator=gen)]
        y = degrade(x, blur_sigma=blur_sigma, noise_std=noise_std, generator=gen)
        loss = (net(y) - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


@torch.no_grad()
def restoration_psnr(net: nn.Module, clean: torch.Tensor, degraded: torch.Tensor) -> float:
    """Mean PSNR (dB) of ``net(degraded)`` against ``clean`` over the images."""
    return float(psnr(net(degraded), clean).mean())


# -- concept distillation ------------------------------------------------------------------------
@torch.no_grad()
def concept_images(teacher: Any, concept: int, n: int, *, real: torch.Tensor | None = None, t_start: float = 1.0,
                   steps: int = 25, guidance: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` clean images of class ``concept`` synthesised by the class-conditional ``teacher``
    ``(n, *shape)``: drawn from noise under the concept (``t_start = 1``), or, with ``real``
    images ``(M, *shape)`` and ``t_start < 1``, each of ``n`` draws re-drawing ``real[i % M]``
    from noise level ``t_start`` under the concept (:func:`~distillery.generative.synthetic.resynthesise`)."""
    num_classes = getattr(teacher, "num_classes", None)
    if not num_classes:
        raise ConfigError("vivid_vr: the teacher must be class-conditional (trained with data.conditional: true).")
    if isinstance(concept, bool) or not isinstance(concept, int) or not 0 <= concept < num_classes:
        raise ConfigError(f"vivid_vr: concept must be a class index in [0, {num_classes}), got {concept!r}.")
    if t_start >= teacher.process.t_max or real is None:
        if real is None and t_start < teacher.process.t_max:
            raise ConfigError(f"vivid_vr: t_start={t_start} < 1 re-draws real images; pass real=(M, C, H, W) images of the concept.")
        shape = tuple(teacher.sample_shape)
        from ..generative.samplers import sample

        x0 = teacher.process.prior((n, *shape), generator=generator)
        return sample(teacher, x0, steps=steps, cond=torch.full((n,), concept, dtype=torch.long),
                      guidance=guidance).clamp(-1.0, 1.0)
    src = real[torch.arange(n) % real.shape[0]]
    return resynthesise(teacher, src, torch.full((n,), concept, dtype=torch.long), t_start=t_start, steps=steps,
                        guidance=guidance, generator=generator)


def teacher_config(*, label_dropout: float = 0.1, ema_decay: float = 0.995, channels: tuple[int, int] | list[int] = (16, 32),
                   prediction: str = "velocity") -> dict[str, Any]:
    """``data`` (conditional), ``student`` and ``method`` sections of the class-conditional
    teacher (a ``denoising`` run of the engine's ``unet`` with label dropout for guidance)."""
    return {"data": {"conditional": True},
            "student": {"denoiser": {"name": "unet", "params": {"channels": list(channels)}}, "prediction": prediction},
            "method": {"kind": "denoising", "params": {"ema_decay": ema_decay, "label_dropout": float(label_dropout),
                                                       "sample_solver": "euler"}}}


__all__ = ["Restorer", "blur", "concept_images", "degrade", "gaussian_kernel", "psnr", "restoration_psnr",
           "synthetic_set", "teacher_config", "train_restorer"]
