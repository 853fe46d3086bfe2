"""MCM: the Motion Consistency Model (Zhai et al. 2024, "Motion Consistency Model: Accelerating
Video Diffusion with Disentangled Motion-Appearance Distillation", arXiv:2406.06890).

A few-step video student is distilled from a frozen video-diffusion teacher by consistency
distillation (CD; Song et al. 2023, arXiv:2303.01469; the generative engine's
:class:`~distillery.generative.objectives.consistency.ConsistencyDistillation`), but

* the CD loss is applied only to a **motion representation** ``m`` of the consistency outputs,
  so that the student takes its *motion* from the teacher (which was trained on low-quality
  video data) without copying the teacher's low frame quality::

      L_mCD = d( m(f_theta(x_{n+1}, t_{n+1})),  m(f_theta-(x^_n, t_n)) )

  with ``m(v)_k = v_{k+1} - v_k`` (``motion="difference"``: frame differences, ``(B, T-1, ...)``)
  or ``m(v) = v - mean_T v`` (``motion="mean"``: the video minus its temporal mean); the paper
  learns or picks a motion representation among several (high-frequency components, frame
  differences, ...) — which one is the miniature's choice [inferred];
* a **frame-level image discriminator** ``D`` pulls every generated frame towards a separate
  high-quality *image* set (no corresponding videos needed)::

      L_G   = L_mCD + lambda_adv * E_frames softplus(-D(q_s(f_theta(x_{n+1}, t_{n+1})_k), s))
      L_D   = E softplus(-D(q_s(h), s)) + E softplus(D(q_s(sg f_theta(...)_k), s))

  ``h`` a high-quality image, ``k`` a frame of the student's clean estimate, ``q_s`` a light
  re-noising at a random ``s`` in ``[0, gan_t_max]`` (a diffusion-GAN discriminator, Xiao et al.
  2022, arXiv:2112.07804; MCM runs its discriminator on the student's clean estimate [inferred
  for the noise]); non-saturating losses (:mod:`distillery.generative.objectives.gan`).

The paper's third ingredient, mixing ODE trajectories of low-quality real and high-quality
generated videos, is left out here (stated on the method page).

MCM is a bidirectional (non-streaming) video student: :class:`MotionConsistency` is a generative
method on whole videos ``(B, T, C, H, W)`` (to :func:`consistency_function` and the CD loss a
video is just a tensor), run by the streaming engine with ``attention: bidirectional``.

The miniature's data gap (:func:`blurred_sprite_videos`): the teacher and the student's video
data are moving digits **blurred** per frame; the image set (:func:`sharp_sprite_frames`) is
sharp frames of *other* sprite videos (another seed: unpaired).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..generative.method import METHODS, drawn
from ..generative.objectives.consistency import (
    ConsistencyDistillation,
    consistency_distance,
)
from ..generative.objectives.gan import TimeAwareDiscriminator, d_loss, g_loss
from ..registry import DATASETS
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("mcm", "Zhai et al. 2024, Motion Consistency Model, arXiv:2406.06890", "mcm_sprites.yaml",
           "video consistency distillation on a motion representation only, plus a frame discriminator against a "
           "separate high-quality image set")
)

MOTIONS = ("difference", "mean", "none")


# -- data ----------------------------------------------------------------------------------------
def blur_frames(x: torch.Tensor, passes: int = 2) -> torch.Tensor:
    """``x`` ``(..., H, W)`` blurred by ``passes`` separable ``[1, 2, 1] / 4`` passes (edges
    replicated), the low-quality frames of the miniature. ``passes = 0`` returns ``x``."""
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 0:
        raise ConfigError(f"blur: passes must be an integer >= 0, got {passes!r}.")
    if passes == 0:
        return x
    shape = x.shape
    y = x.reshape(-1, 1, *shape[-2:]).float()
    k = torch.tensor([0.25, 0.5, 0.25], dtype=y.dtype)
    for _ in range(passes):
        y = F.conv2d(F.pad(y, (1, 1, 0, 0), mode="replicate"), k.reshape(1, 1, 1, 3))
        y = F.conv2d(F.pad(y, (0, 0, 1, 1), mode="replicate"), k.reshape(1, 1, 3, 1))
    return y.reshape(shape).to(x.dtype)


@DATASETS.register("blurred_sprite_videos")
def blurred_sprite_videos(frames: int = 8, blur: int = 2, size: int = 16, speed: Any = (0.5, 1.5),
                          n_train: int = 2000, n_test: int = 500, seed: int = 0) -> Any:
    """``sprite_videos`` (one digit) with every frame blurred by :func:`blur_frames` (``blur``
    passes): the low-quality video data of the MCM miniature. Ground truth (``pos``, ``vel``)
    is kept (the blur moves no centroid)."""
    from ..streaming.data import VideoDataset, sprite_videos

    if isinstance(blur, bool) or not isinstance(blur, int) or blur < 1:
        raise ConfigError(f"blurred_sprite_videos: blur must be an integer >= 1, got {blur!r}.")
    splits = sprite_videos(frames=frames, size=size, speed=speed, n_train=n_train, n_test=n_test, seed=seed)

    def soften(split: Any) -> Any:
        return VideoDataset(blur_frames(split.x, blur), split.y, **split.extra)

    return dataclasses.replace(splits, train=soften(splits.train), test=soften(splits.test),
                               name="blurred_sprite_videos", info={**splits.info, "blur": blur})


def sharp_sprite_frames(count: int = 2048, size: int = 16, seed: int = 7) -> torch.Tensor:
    """``(count, 1, size, size)`` sharp frames of sprite videos of another seed (the unpaired
    high-quality image set; their digits are the training digits, their videos are not the
    training videos)."""
    from ..streaming.data import sprite_videos

    if isinstance(count, bool) or not isinstance(count, int) or count < 2:
        raise ConfigError(f"mcm: hq_images must be an integer >= 2, got {count!r}.")
    per = 4
    videos = sprite_videos(frames=per, size=size, n_train=-(-count // per), n_test=1, seed=seed).train.x
    return videos.flatten(0, 1)[:count].contiguous()


# -- motion representation -----------------------------------------------------------------------
def motion_representation(video: torch.Tensor, kind: str = "difference") -> torch.Tensor:
    """The motion part of ``video`` ``(B, T, C, H, W)``: ``difference``: ``v[:, 1:] - v[:, :-1]``
    ``(B, T-1, C, H, W)``; ``mean``: ``v - v.mean(1)`` (same shape); ``none``: ``v`` itself
    (plain video CD)."""
    if video.dim() != 5:
        raise ConfigError(f"mcm: motion_representation needs videos (B, T, C, H, W); got {tuple(video.shape)}.")
    if kind == "difference":
        return video[:, 1:] - video[:, :-1]
    if kind == "mean":
        return video - video.mean(1, keepdim=True)
    if kind == "none":
        return video
    raise ConfigError(f"mcm: motion must be one of {', '.join(MOTIONS)}; got {kind!r}.")


# -- the method ----------------------------------------------------------------------------------
@METHODS.register("mcm")
class MotionConsistency(ConsistencyDistillation):
    """Motion consistency distillation with a frame discriminator; players ``student`` and
    ``discriminator`` (see the module docstring).

    Args (besides :class:`ConsistencyDistillation`'s):
        motion: ``"difference"``, ``"mean"`` or ``"none"`` (plain CD on the whole video).
        gan_weight: ``lambda_adv`` (0: no discriminator; the player is then idle).
        gan_t_max: the discriminator's re-noising levels ``s ~ U[0, gan_t_max]``.
        hq_images: size of the high-quality image set (:func:`sharp_sprite_frames`).
        hq_seed: its seed (different from the data's: unpaired).
        disc_hidden: the MLP discriminator's widths.
    """

    players = ("student", "discriminator")

    def __init__(self, student: Any, teacher: Any, *, motion: str = "difference", gan_weight: float = 0.1,
                 gan_t_max: float = 0.3, hq_images: int = 2048, hq_seed: int = 7, disc_hidden: list[int] | None = None,
                 num_scales: int = 18, ema_decay: float = 0.95, solver: str = "heun", distance: str = "l2",
                 sigma_data: float | None = None, coefficients: str = "lcm", init_from_teacher: bool = True) -> None:
        if motion not in MOTIONS:
            raise ConfigError(f"method 'mcm': motion must be one of {', '.join(MOTIONS)}; got {motion!r}.")
        if isinstance(gan_weight, bool) or not isinstance(gan_weight, (int, float)) or gan_weight < 0:
            raise ConfigError(f"method 'mcm': gan_weight must be a number >= 0, got {gan_weight!r}.")
        if isinstance(gan_t_max, bool) or not isinstance(gan_t_max, (int, float)) or not 0 <= gan_t_max < 1:
            raise ConfigError(f"method 'mcm': gan_t_max must lie in [0, 1), got {gan_t_max!r}.")
        shape = tuple(student.sample_shape)
        if len(shape) != 4 or shape[0] < 2:
            raise ConfigError(f"method 'mcm' distils video students (T >= 2, C, H, W); the sample shape is {shape}.")
        super().__init__(student, teacher, num_scales=num_scales, ema_decay=ema_decay, solver=solver,
                         distance=distance, sigma_data=sigma_data, coefficients=coefficients,
                         init_from_teacher=init_from_teacher)
        self.motion, self.gan_weight, self.gan_t_max = motion, float(gan_weight), float(gan_t_max)
        frame = shape[1:]
        hidden = list(disc_hidden or [128, 128])
        self.discriminator = TimeAwareDiscriminator(None, feature_dim=hidden[-1], sample_dim=int(torch.tensor(frame).prod()),
                                                    hidden=hidden, process=student.process)
        self._hq = sharp_sprite_frames(hq_images, size=frame[-1], seed=hq_seed)  # not a buffer: remade, not saved
        if tuple(self._hq.shape[1:]) != frame:
            raise ConfigError(f"method 'mcm': the image set's frames {tuple(self._hq.shape[1:])} differ from the "
                              f"student's frames {frame}.")

    def updates(self, player: str) -> int:
        return 1 if (player == "student" or self.gan_weight > 0) else 0

    def parameters_of(self, player: str) -> list[torch.nn.Parameter]:
        if player == "discriminator":
            return list(self.discriminator.parameters())
        return super().parameters_of(player)

    def frame_logits(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N,)`` discriminator logits of clean frames ``(N, C, H, W)`` re-noised to ``s ~
        U[0, gan_t_max]`` (drawn from the update's draws)."""
        n = frames.shape[0]
        s = self.draw.rand(n, device=frames.device, dtype=frames.dtype) * self.gan_t_max
        x_s = self.student.process.add_noise(frames, self.draw.randn_like(frames), s)
        return self.discriminator(x_s, s)

    def hq_batch(self, n: int, device: Any, dtype: torch.dtype) -> torch.Tensor:
        """``(n, C, H, W)`` high-quality images drawn from the image set."""
        idx = self.draw.randint(0, len(self._hq), n, device="cpu")
        return self._hq[idx].to(device=device, dtype=dtype)

    @drawn
    def loss(self, player: str, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if batch["x"].dim() != 5:
            raise ConfigError(f"method 'mcm' needs videos (B, T, C, H, W); the batch has {tuple(batch['x'].shape)}.")
        if player == "discriminator":
            with torch.no_grad():
                frames = self.student_outputs(batch)[0].flatten(0, 1)
            real = self.hq_batch(frames.shape[0], frames.device, frames.dtype)
            loss = d_loss(self.frame_logits(real), self.frame_logits(frames.detach()))
            return loss, {"loss": float(loss.detach())}
        out, target = self.student_outputs(batch)
        frames = out.flatten(0, 1)
        cd = consistency_distance(motion_representation(out, self.motion), motion_representation(target, self.motion),
                                  self.distance, self.huber_c).mean()
        logs = {"cd": float(cd.detach())}
        loss = cd
        if self.gan_weight > 0:
            for p in self.discriminator.parameters():
                p.requires_grad_(False)
            try:
                adv = g_loss(self.frame_logits(frames))
            finally:
                for p in self.discriminator.parameters():
                    p.requires_grad_(True)
            loss = loss + self.gan_weight * adv
            logs["gan"] = float(adv.detach())
        logs["loss"] = float(loss.detach())
        return loss, logs

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "method": "mcm", "motion": self.motion, "gan_weight": self.gan_weight,
                "gan_t_max": self.gan_t_max, "hq_images": len(self._hq)}


# -- measurements --------------------------------------------------------------------------------
def high_frequency_energy(frames: torch.Tensor) -> float:
    """Mean squared response of the 4-neighbour Laplacian over the interior pixels of ``frames``
    ``(..., H, W)`` (sharpness: larger for sharper frames; a blur lowers it)."""
    x = frames.reshape(-1, *frames.shape[-2:]).double()
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    return float(lap.pow(2).mean())


def centroid_acceleration(video: torch.Tensor) -> float:
    """Mean ``|p_{k+1} - 2 p_k + p_{k-1}|`` (pixels per frame^2, both axes) of the intensity
    centroid ``p_k`` of each frame of ``video`` ``(B, T, 1, H, W)`` (T >= 3): ~0 for the
    constant-velocity motion of the data (apart from wall bounces); jitter or a sprite that
    jumps raises it."""
    from ..streaming.metrics import sprite_positions

    p = sprite_positions(video)
    p = p.reshape(p.shape[0], p.shape[1], -1)
    return float((p[:, 2:] - 2 * p[:, 1:-1] + p[:, :-2]).abs().mean())


def mcm_config(*, motion: str = "difference", gan_weight: float = 0.1, **params: Any) -> dict[str, Any]:
    """The ``method`` fragment of an MCM run (``gan_weight=0, motion="none"``: plain video CD)."""
    return {"method": {"kind": "mcm", "params": {"motion": motion, "gan_weight": gan_weight, **params}}}


__all__ = ["MOTIONS", "MotionConsistency", "blur_frames", "blurred_sprite_videos", "centroid_acceleration",
           "high_frequency_energy", "mcm_config", "motion_representation", "sharp_sprite_frames"]
