"""YONOS-SR: scale distillation, a smaller-scale SR teacher supervising the next scale's student.

M. Noroozi, I. Hadji, B. Martinez, A. Bulat, G. Tzimiropoulos, 2024, "You Only Need One Step:
Fast Super-Resolution with Stable Diffusion via Scale Distillation", arXiv:2401.17258. "We start
by training a teacher model on a smaller magnification scale ... We then train a student model
for a higher magnification scale, using the predictions of the teacher as a target during the
training. This process is repeated iteratively until we reach the target scale factor ... the
teacher aids the student diffusion model training by i) providing a target adapted to the
current noise level rather than using the same target coming from ground truth data for all
noise levels and ii) providing an accurate target as the teacher has a simpler task to solve."

Mechanism, as expressed here (HR images ``x0`` ``(B, C, H, H)``; ``c_s = lr_up(x0, s)`` the
condition at magnification ``s``, :func:`~distillery.generative.restoration.lr_condition`):

* the teacher ``T`` is an SR diffusion model at ``teacher_scale`` (e.g. x2, the engine's
  ``sr_denoising`` trained from data, or the previous student of the chain);
* the student ``S`` at ``scale`` (e.g. x4) sees the same noised HR image
  ``x_t = alpha_t x0 + sigma_t eps`` but the *more degraded* condition, and regresses the
  teacher's prediction made from the *less degraded* one, in the student's own prediction
  space: ``L = mean (S(x_t, t, c_scale) - sg(T_pred(x_t, t, c_teacher_scale)))^2``. The target
  depends on ``t`` (the teacher's estimate at that noise level), unlike the data target;
* ``gt_weight`` mixes in the data target, ``(1 - w) T_pred + w target(x0, eps)`` (0: the paper's
  pure teacher target [inferred]; 1: the x4 model trained directly from data, the baseline); the student starts from the teacher's weights
  (``init_from_teacher``, [inferred]); repeated (x2 -> x4 -> x8) by making each student the
  next teacher (:func:`stage_config`);
* then one-step sampling: a single Euler/DDIM step from noise, i.e. the ``x0`` prediction at
  ``t_max``. Left out: the latent space of Stable Diffusion and the decoder fine-tuning on
  top of the frozen one-step U-Net (pixel space here).

:class:`ScaleDistillation` is the generative method ``yonos_sr``. Config:
``configs/yonos_sr_digits.yaml``; reproduction: ``distillery reproduce yonos_sr``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..generative.denoisers import Denoiser
from ..generative.method import METHODS, drawn
from ..generative.objectives.common import (
    check_same_process,
    copy_teacher_weights,
    freeze,
)
from ..generative.objectives.denoising import denoising_target
from ..generative.restoration import SRDenoising, check_scale
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("yonos_sr", "Noroozi et al. 2024, YONOS-SR, arXiv:2401.17258", "yonos_sr_digits.yaml",
           "Scale distillation: a x2 SR diffusion teacher's noise-level targets train the x4 student; one-step sampling")
)


def scale_distillation_target(teacher: Denoiser, x_t: torch.Tensor, t: torch.Tensor, teacher_cond: torch.Tensor,
                              prediction: str) -> torch.Tensor:
    """The teacher's prediction at ``(x_t, t)`` from its (less degraded) condition, converted to
    the student's ``prediction`` kind: ``(B, C, H, H)``, no gradient."""
    with torch.no_grad():
        return teacher.predict(x_t, t, teacher_cond, prediction)


@METHODS.register("yonos_sr")
class ScaleDistillation(SRDenoising):
    """YONOS-SR's scale distillation (Noroozi et al. 2024, arXiv:2401.17258); player ``model``.

    Args:
        student: the SR diffusion model at ``scale`` (``sr_unet``).
        teacher: the frozen SR diffusion model at ``teacher_scale`` (an ``sr_denoising`` run).
        scale, teacher_scale: magnifications, ``teacher_scale < scale``, both dividing the size.
        upsample: how conditions are upsampled.
        gt_weight: weight of the data target mixed into the teacher's (0: teacher only).
        init_from_teacher: copy the teacher's weights into the student first.
        ema_decay, sample_solver: as ``sr_denoising``.
    """

    def __init__(self, student: Denoiser, teacher: Denoiser | None = None, *, scale: int = 4, teacher_scale: int = 2,
                 upsample: str = "bicubic", gt_weight: float = 0.0, init_from_teacher: bool = True,
                 ema_decay: float | None = None, sample_solver: str = "euler") -> None:
        where = "method 'yonos_sr'"
        if teacher is None:
            raise ConfigError(f"{where} needs the smaller-scale SR teacher; add a teacher section (kind: run, an sr_denoising run).")
        super().__init__(student, None, scale=scale, upsample=upsample, ema_decay=None, sample_solver=sample_solver)
        shape = student.sample_shape
        self.teacher_scale = check_scale(teacher_scale, shape[-1] if shape else None, where)
        if not self.teacher_scale < self.scale:
            raise ConfigError(f"{where}: teacher_scale ({teacher_scale}) must be smaller than scale ({scale}): "
                              "the teacher solves the easier, less magnified task.")
        if isinstance(gt_weight, bool) or not isinstance(gt_weight, (int, float)) or not 0.0 <= gt_weight <= 1.0:
            raise ConfigError(f"{where}: gt_weight must lie in [0, 1], got {gt_weight!r}.")
        check_same_process(student, teacher, where)
        if init_from_teacher:
            copy_teacher_weights(student, teacher, where)
        if ema_decay is not None:  # the EMA copy is made after the student took the teacher's weights
            import copy as _copy

            from ..generative.objectives.common import check_decay

            check_decay(ema_decay, "ema_decay", where)
            self.ema = _copy.deepcopy(student).requires_grad_(False)
            self.ema_decay = ema_decay
        self.teacher = freeze(teacher)
        self.gt_weight, self.init_from_teacher = float(gt_weight), bool(init_from_teacher)

    @drawn
    def loss(self, player: str, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        x0 = batch["x"]
        process = self.model.process
        eps = self.draw.randn_like(x0)
        t = self.draw.times(process, x0.shape[0], device=x0.device, dtype=x0.dtype)
        x_t = process.add_noise(x0, eps, t)
        target = denoising_target(process, x0, eps, t, self.model.prediction)
        if self.gt_weight < 1.0:  # gt_weight = 1: the data target alone (the direct baseline), no teacher call
            taught = scale_distillation_target(self.teacher, x_t, t, self.condition(x0, self.teacher_scale), self.model.prediction)
            target = (1.0 - self.gt_weight) * taught + self.gt_weight * target
        loss = (self.model(x_t, t, self.condition(x0)) - target).pow(2).mean()
        return loss, {"loss": float(loss.detach())}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "teacher_scale": self.teacher_scale, "gt_weight": self.gt_weight,
                "init_from_teacher": self.init_from_teacher}


# -- config fragments ----------------------------------------------------------------------------
def stage_config(scale: int, teacher_scale: int, teacher_run: str, *, upsample: str = "bicubic", gt_weight: float = 0.0,
                 init_from_teacher: bool = True) -> dict[str, Any]:
    """``teacher`` and ``method`` sections of one stage of the chain: the student at ``scale``
    distilled from the finished run ``teacher_run`` at ``teacher_scale``."""
    return {"teacher": {"kind": "run", "run": teacher_run},
            "method": {"kind": "yonos_sr", "params": {"scale": int(scale), "teacher_scale": int(teacher_scale),
                                                      "upsample": upsample, "gt_weight": float(gt_weight),
                                                      "init_from_teacher": bool(init_from_teacher)}}}


def direct_config(scale: int, teacher_scale: int, init_run: str, *, upsample: str = "bicubic") -> dict[str, Any]:
    """The baseline trained on the ``scale`` task directly from data, from the same start as the
    stage's student (the ``init_run`` weights): ``yonos_sr`` with ``gt_weight = 1`` (the data target
    only; the teacher is then not called)."""
    return stage_config(scale, teacher_scale, init_run, upsample=upsample, gt_weight=1.0, init_from_teacher=True)


__all__ = ["ScaleDistillation", "direct_config", "scale_distillation_target", "stage_config"]
