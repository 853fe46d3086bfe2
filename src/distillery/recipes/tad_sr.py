"""TAD-SR: one-step diffusion super-resolution by time-aware distillation.

X. He, H. Tang, Z. Tu, J. Zhang, K. Cheng, H. Chen, Y. Guo, M. Zhu, N. Wang, X. Gao, J. Hu,
2024, "One Step Diffusion-based Super-Resolution with Time-Aware Distillation",
arXiv:2408.07476 (code: github.com/LearningHx/TAD-SR). "We introduce a novel score distillation
strategy to align the data distribution between the outputs of the student and teacher models
after minor noise perturbation. This distillation strategy enables the student network to
concentrate more on the high-frequency details. Furthermore ... we integrate a latent
adversarial loss and devise a time-aware discriminator that leverages diffusion priors."

Mechanism, as expressed here (images ``(B, C, H, H)``, condition ``c = lr_up(hr)``, the
SR diffusion teacher ``f_T(x_t, t, c)`` predicting ``x0``, a one-step student ``G(c)``):

* **pixel term**: ``L_pix = mean (G(c) - hr)^2`` (the paper regresses the teacher's output
  and the ground truth; here the ground truth [inferred: cheaper, no teacher sampling]);
* **score distillation on slightly noised outputs** (small ``t`` in ``[sd_t_min, sd_t_max]``,
  one noise ``eps`` for both): ``x_hat_t = alpha_t x_hat + sigma_t eps``,
  ``x_ref_t = alpha_t hr + sigma_t eps`` and the per-pixel direction
  ``g = (x_hat - f_T(x_hat_t)) - (hr - f_T(x_ref_t))``: the SDS direction of the student's
  output minus the same at the reference, which removes SDS's bias (at ``x_hat = hr`` the
  direction is 0) [inferred: the paper's reference is the teacher's multi-step output; here
  the HR image]. ``L_SD = 1/2 mean (x_hat - sg(x_hat - g))^2`` has gradient ``g / N`` in
  ``x_hat`` (``N`` elements). At small ``t`` the teacher's denoiser keeps the low frequencies
  (``f_T(x_t) - f_T(x'_t) ~ J (x - x')`` with ``J`` close to a low-pass projection), so ``g`` is
  mostly the high-frequency part of the error: the "high-frequency focus";
  ``reference="none"`` gives plain SDS, ``g = x_hat - f_T(x_hat_t)``;
* **time-aware discriminator** (:class:`~distillery.generative.objectives.gan.TimeAwareDiscriminator`):
  logits of the noised pair ``[x_t, c]`` at a random ``t <= d_time_max`` with ``t`` embedded,
  its backbone a trainable copy of the teacher's encoder (``disc_backbone="teacher"``: the
  "diffusion prior"; ``"mlp"``: the engine's MLP); non-saturating ``d_loss`` / ``g_loss``
  (R1 optional). The paper's discriminator works in the latent space of the teacher's
  autoencoder; here pixels (8x8) [differs].

Student loss: ``mse_weight L_pix + sd_weight L_SD + adv_weight L_G``. Arms of the
reproduction: ``sd_weight = adv_weight = 0`` (MSE only), ``adv_weight = 0`` (+ score
distillation), all three (TAD-SR). The student is any one-step SR network (``imdn``, the
library's :class:`~distillery.generative.restoration.IMDN`, by default).

:class:`TADSR` is the generative method ``tad_sr``. Config: ``configs/tad_sr_digits.yaml``
(teacher: ``configs/tad_sr_digits_teacher.yaml``); reproduction: ``distillery reproduce tad_sr``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..generative.denoisers import Denoiser
from ..generative.method import METHODS, drawn
from ..generative.objectives.common import check_same_process, freeze
from ..generative.objectives.gan import (
    GAN_KINDS,
    TimeAwareDiscriminator,
    d_loss,
    g_loss,
    r1_penalty,
)
from ..generative.processes import check_interval
from ..generative.restoration import _SRMethod, one_step_sr
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("tad_sr", "He et al. 2024, TAD-SR, arXiv:2408.07476", "tad_sr_digits.yaml",
           "One-step SR student: pixel loss + score distillation on slightly noised outputs + time-aware discriminator")
)

REFERENCES = ("hr", "none")
BACKBONES = ("teacher", "mlp")


def score_distillation_direction(teacher: nn.Module, x_hat: torch.Tensor, ref: torch.Tensor | None, eps: torch.Tensor,
                                 t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """``g = (x_hat - f_T(x_hat_t)) - (ref - f_T(ref_t))`` (``ref=None``: without the second
    term, plain SDS), with ``x_t = process.add_noise(x, eps, t)`` for both and ``f_T`` the
    teacher's ``x0`` prediction given ``cond``. ``(B, C, H, H)``; no gradient."""
    process = teacher.process
    with torch.no_grad():
        x_hat = x_hat.detach()
        g = x_hat - teacher.predict(process.add_noise(x_hat, eps, t), t, cond, "x0")
        if ref is not None:
            g = g - (ref - teacher.predict(process.add_noise(ref, eps, t), t, cond, "x0"))
    return g


def score_distillation_loss(x_hat: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``1/2 mean (x_hat - sg(x_hat - g))^2``: value ``1/2 mean g^2``, gradient ``g / N`` in ``x_hat``."""
    return 0.5 * (x_hat - (x_hat - direction).detach()).pow(2).mean()


class PairFeatures(nn.Module):
    """A discriminator backbone on ``[x_t, cond]`` pairs ``(B, 2C, H, H)``: ``net.features(x_t, t,
    cond)`` of a (trainable) copy of an SR denoiser network, ``(B, feature_dim)``."""

    def __init__(self, net: nn.Module, channels: int) -> None:
        super().__init__()
        if not callable(getattr(net, "features", None)):
            raise ConfigError(f"tad_sr: disc_backbone 'teacher' needs a teacher network with features(); "
                              f"{type(net).__name__} has none (use disc_backbone: mlp).")
        unet = getattr(net, "unet", None)
        if isinstance(unet, nn.Module):  # an sr_unet: features() reads the encoder only; drop the decoder half
            for name in ("upsample", "up0", "out_norm", "out"):
                setattr(unet, name, nn.Identity())
        self.net, self.channels = net, channels
        self.feature_dim = int(net.feature_dim)

    def forward(self, pair: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = self.channels
        return self.net.features(pair[:, :c], t, pair[:, c:])


def _nonneg(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ConfigError(f"method 'tad_sr': {key} must be a number >= 0, got {value!r}.")
    return float(value)


@METHODS.register("tad_sr")
class TADSR(_SRMethod):
    """TAD-SR (He et al. 2024, arXiv:2408.07476): a one-step SR student distilled from an SR
    diffusion teacher. Players: ``discriminator`` (when ``adv_weight > 0``) then ``student``.

    Args:
        student: the one-step SR network (a :class:`Denoiser` predicting ``x0``; ``imdn``).
        teacher: the frozen SR diffusion teacher (an ``sr_denoising`` run), needed when
            ``sd_weight > 0`` or the discriminator's backbone is the teacher's.
        scale, upsample: the SR task (``scale`` must divide the image size).
        mse_weight, sd_weight, adv_weight: the weights of the three student terms.
        sd_t_min, sd_t_max: the small-time interval of score distillation.
        reference: ``"hr"`` (bias-corrected direction) or ``"none"`` (plain SDS).
        d_time_max: the discriminator sees pairs noised to ``t`` in ``[t_min, d_time_max]``.
        disc_backbone: ``"teacher"`` (a trainable copy of the teacher's network features) or ``"mlp"``.
        kind, r1_gamma: GAN loss (``nonsaturating`` or ``hinge``) and R1 weight.
        feature_dim, hidden: the MLP backbone's sizes (``disc_backbone="mlp"``).
    """

    def __init__(self, student: Denoiser, teacher: Denoiser | None = None, *, scale: int = 2, upsample: str = "bicubic",
                 mse_weight: float = 1.0, sd_weight: float = 1.0, adv_weight: float = 0.05, sd_t_min: float = 0.02,
                 sd_t_max: float = 0.3, reference: str = "hr", d_time_max: float = 0.5, disc_backbone: str = "teacher",
                 kind: str = "nonsaturating", r1_gamma: float = 0.0, feature_dim: int = 128,
                 hidden: tuple[int, ...] | list[int] = (256, 256)) -> None:
        super().__init__()
        where = "method 'tad_sr'"
        self._sr_setup(student, scale, upsample, where)
        self.mse_weight, self.sd_weight = _nonneg(mse_weight, "mse_weight"), _nonneg(sd_weight, "sd_weight")
        self.adv_weight, self.r1_gamma = _nonneg(adv_weight, "adv_weight"), _nonneg(r1_gamma, "r1_gamma")
        if self.mse_weight + self.sd_weight + self.adv_weight == 0:
            raise ConfigError(f"{where}: mse_weight, sd_weight and adv_weight are all 0; the student would not train.")
        if reference not in REFERENCES:
            raise ConfigError(f"{where}: reference must be one of {', '.join(REFERENCES)}, got {reference!r}.")
        if disc_backbone not in BACKBONES:
            raise ConfigError(f"{where}: disc_backbone must be one of {', '.join(BACKBONES)}, got {disc_backbone!r}.")
        if kind not in GAN_KINDS:
            raise ConfigError(f"{where}: kind must be one of {', '.join(GAN_KINDS)}, got {kind!r}.")
        process = student.process
        check_interval(process.t_min, float(sd_t_min))
        check_interval(float(sd_t_min), float(sd_t_max))
        check_interval(process.t_min, float(d_time_max))
        if not sd_t_max <= process.t_max:
            raise ConfigError(f"{where}: sd_t_max {sd_t_max} exceeds the process's t_max {process.t_max}.")
        needs_teacher = self.sd_weight > 0 or (self.adv_weight > 0 and disc_backbone == "teacher")
        if needs_teacher and teacher is None:
            raise ConfigError(f"{where}: sd_weight > 0 (or disc_backbone 'teacher') needs the SR diffusion teacher; "
                              "add a teacher section (kind: run, an sr_denoising run).")
        if teacher is not None:
            check_same_process(student, teacher, where)
        self.student = student
        self.teacher = freeze(teacher) if teacher is not None else None
        self.sd_t_min, self.sd_t_max, self.d_time_max = float(sd_t_min), float(sd_t_max), float(d_time_max)
        self.reference, self.disc_backbone, self.kind = reference, disc_backbone, kind
        self.players = ("discriminator", "student") if self.adv_weight > 0 else ("student",)
        self.discriminator: nn.Module | None = None
        if self.adv_weight > 0:
            dtype = next(student.parameters()).dtype
            if disc_backbone == "teacher":
                net = copy.deepcopy(getattr(teacher, "net", teacher)).requires_grad_(True).train()
                backbone = PairFeatures(net, self.channels)
                self.discriminator = TimeAwareDiscriminator(backbone, backbone.feature_dim).to(dtype)
            else:
                dim = 2 * self.channels * self.image_size**2
                self.discriminator = TimeAwareDiscriminator(None, feature_dim, sample_dim=dim, hidden=hidden).to(dtype)

    # -- pieces ------------------------------------------------------------------------------
    def _noised_pair(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        process = self.student.process
        t = self.draw.times(process, x.shape[0], high=self.d_time_max, device=x.device, dtype=x.dtype)
        return torch.cat([process.add_noise(x, self.draw.randn_like(x), t), cond], dim=1), t

    @drawn
    def loss(self, player: str, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        hr = batch["x"]
        cond = self.condition(hr)
        if player == "discriminator":
            assert self.discriminator is not None
            with torch.no_grad():
                fake = one_step_sr(self.student, cond, draw=self.draw)
            real_pair, t_r = self._noised_pair(hr.to(fake.dtype), cond)
            if self.r1_gamma > 0:
                real_pair = real_pair.detach().requires_grad_(True)
            real_logits = self.discriminator(real_pair, t_r)
            fake_pair, t_f = self._noised_pair(fake, cond)
            fake_logits = self.discriminator(fake_pair, t_f)
            loss = d_loss(real_logits, fake_logits, self.kind)
            logs = {"d_loss": float(loss.detach()), "real_logit": float(real_logits.mean().detach()),
                    "fake_logit": float(fake_logits.mean().detach())}
            if self.r1_gamma > 0:
                r1 = r1_penalty(real_logits, real_pair)
                loss = loss + 0.5 * self.r1_gamma * r1
                logs["r1"] = float(r1.detach())
            return loss, logs
        x_hat = one_step_sr(self.student, cond, draw=self.draw)
        pix = (x_hat - hr).pow(2).mean()
        loss, logs = self.mse_weight * pix, {"mse": float(pix.detach())}
        if self.sd_weight > 0:
            assert self.teacher is not None
            t = self.draw.times(self.student.process, hr.shape[0], low=self.sd_t_min, high=self.sd_t_max,
                                device=hr.device, dtype=hr.dtype)
            g = score_distillation_direction(self.teacher, x_hat, hr if self.reference == "hr" else None,
                                             self.draw.randn_like(hr), t, cond)
            sd = score_distillation_loss(x_hat, g)
            loss = loss + self.sd_weight * sd
            logs["sd"] = float(sd.detach())
        if self.adv_weight > 0:
            assert self.discriminator is not None
            pair, t = self._noised_pair(x_hat, cond)
            adv = g_loss(self.discriminator(pair, t), self.kind)
            loss = loss + self.adv_weight * adv
            logs["g_loss"] = float(adv.detach())
        logs["loss"] = float(loss.detach())
        return loss, logs

    @torch.no_grad()
    def sample(self, n: int, steps: int, *, cond: torch.Tensor | None = None,
               generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        if steps != 1:
            raise ConfigError(f"method 'tad_sr' trains a one-step SR student; eval.steps must be [1], got {steps}.")
        dtype = next(self.student.parameters()).dtype
        return one_step_sr(self.student, self._sample_condition(n, cond, device, dtype), generator=generator)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "nfe": 1, "mse_weight": self.mse_weight, "sd_weight": self.sd_weight,
                "adv_weight": self.adv_weight, "sd_t": [self.sd_t_min, self.sd_t_max], "reference": self.reference,
                "disc_backbone": self.disc_backbone}


# -- config fragments ----------------------------------------------------------------------------
def sr_teacher_config(scale: int = 2, upsample: str = "bicubic", ema_decay: float | None = 0.995,
                      sample_solver: str = "euler") -> dict[str, Any]:
    """The ``method`` section of the SR diffusion teacher (``sr_denoising``)."""
    params: dict[str, Any] = {"scale": int(scale), "upsample": upsample, "sample_solver": sample_solver}
    if ema_decay is not None:
        params["ema_decay"] = float(ema_decay)
    return {"method": {"kind": "sr_denoising", "params": params}}


def tad_sr_config(arm: str = "tad", *, scale: int = 2, upsample: str = "bicubic", sd_weight: float = 1.0,
                  adv_weight: float = 0.05, sd_t: tuple[float, float] = (0.02, 0.3), d_time_max: float = 0.5,
                  disc_backbone: str = "teacher") -> dict[str, Any]:
    """The ``method`` section of one arm: ``mse`` (pixel loss only), ``sd`` (+ score
    distillation) or ``tad`` (+ time-aware discriminator)."""
    arms = {"mse": (0.0, 0.0), "sd": (sd_weight, 0.0), "tad": (sd_weight, adv_weight)}
    if arm not in arms:
        raise ConfigError(f"tad_sr_config: arm must be one of {', '.join(arms)}, got {arm!r}.")
    sd, adv = arms[arm]
    return {"method": {"kind": "tad_sr", "params": {
        "scale": int(scale), "upsample": upsample, "mse_weight": 1.0, "sd_weight": float(sd), "adv_weight": float(adv),
        "sd_t_min": float(sd_t[0]), "sd_t_max": float(sd_t[1]), "d_time_max": float(d_time_max),
        "disc_backbone": disc_backbone}}}


__all__ = [
    "BACKBONES",
    "REFERENCES",
    "TADSR",
    "PairFeatures",
    "score_distillation_direction",
    "score_distillation_loss",
    "sr_teacher_config",
    "tad_sr_config",
]
