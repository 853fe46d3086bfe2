"""Denoising on videos: the bidirectional teacher, and diffusion/teacher forcing of a causal student.

The regression of :mod:`distillery.generative.objectives.denoising` on videos ``x0``
``(B, T, C, H, W)``, with the noise level drawn

* once per video (``noise="video"``: the bidirectional teacher's training);
* independently per chunk (``noise="chunk"``: diffusion forcing, Chen et al. 2024,
  arXiv:2407.01392; every chunk sees the earlier chunks at their own noise levels through the
  block-causal mask);
* independently per frame (``noise="frame"``);

and optionally with clean context (``context="clean"``: teacher forcing; chunk ``i`` of the noisy
video attends to the clean frames of chunks ``< i``, CausVid's teacher-forcing baseline, Yin et al.
2025, arXiv:2412.07772). Conditions (labels, audio, actions) come from the batch
(:func:`~..rollout.conditions_of`).
"""

from __future__ import annotations

from typing import Any

import torch

from ...engine import distributed as D
from ...errors import ConfigError
from ...generative.method import METHODS, BatchDraws
from ...generative.objectives.denoising import Denoising, denoising_target, sample_times
from ..rollout import conditions_of

NOISE_KINDS = ("video", "chunk", "frame")


@METHODS.register("video_denoising")
class VideoDenoising(Denoising):
    """:class:`~distillery.generative.objectives.denoising.Denoising` for videos; player ``model``.

    Args (besides those of ``Denoising``):
        noise: ``"video"``, ``"chunk"`` or ``"frame"`` (see the module docstring).
        context: ``"none"`` or ``"clean"`` (teacher forcing; a causal network only).
    """

    def __init__(self, student: Any, teacher: Any = None, *, noise: str = "video", context: str = "none", **kwargs: Any) -> None:
        super().__init__(student, teacher, **kwargs)
        net = student.net
        if noise not in NOISE_KINDS:
            raise ConfigError(f"method 'video_denoising': noise must be one of {', '.join(NOISE_KINDS)}; got {noise!r}.")
        if context not in ("none", "clean"):
            raise ConfigError(f"method 'video_denoising': context must be 'none' or 'clean'; got {context!r}.")
        if not hasattr(net, "tokens_per_frame"):
            raise ConfigError(f"method 'video_denoising' trains a video network (video_transformer); got {type(net).__name__}.")
        if context == "clean" and net.attention == "bidirectional":
            raise ConfigError("method 'video_denoising': context 'clean' (teacher forcing) needs a causal network.")
        if self.weighting != "none":
            raise ConfigError("method 'video_denoising': weighting must be 'none' (min_snr is not written for videos).")
        self.noise, self.context = noise, context

    def _video_times(self, b: int, frames: int, step: int, device: Any, dtype: torch.dtype) -> torch.Tensor:
        """``(b, frames)`` noise levels for the global batch's slice (drawn after the base draws)."""
        draw = BatchDraws((self.seed * 1_000_003 + step + 7_919) % (2**63), D.rank(), D.world_size())
        chunk = self.model.net.chunk
        groups = {"video": 1, "chunk": -(-frames // chunk), "frame": frames}[self.noise]
        full = sample_times(self.process, b * draw.world * groups, draw.generator, self.time_sampling,
                            self.logit_mean, self.logit_std).reshape(b * draw.world, groups)
        t = draw.take(full)
        if self.noise == "chunk":
            t = t.repeat_interleave(chunk, 1)[:, :frames]
        elif self.noise == "video":
            t = t.expand(b, frames)
        return t.to(device=device, dtype=dtype)

    def loss(self, player: str, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        x0 = batch["x"]
        if x0.dim() != 5:
            raise ConfigError(f"method 'video_denoising' needs videos (B, T, C, H, W); the batch has {tuple(x0.shape)}.")
        eps, t_video, u = self._noise_draws(x0, step)
        t = t_video if self.noise == "video" else self._video_times(x0.shape[0], x0.shape[1], step, x0.device, x0.dtype)
        cond = conditions_of(batch, self.model.net)
        if isinstance(cond, dict) and "y" in cond and self.label_dropout:
            cond = {**cond, "y": torch.where(u < self.label_dropout, self.model.num_classes, cond["y"])}
        x_t = self.process.add_noise(x0, eps, t)
        if self.context == "clean":
            pred = self.model.net(x_t, t, cond, context=x0)
        else:
            pred = self.model(x_t, t, cond)
        target = denoising_target(self.process, x0, eps, t, self.model.prediction)
        loss = (pred - target).pow(2).mean()
        return loss, {"loss": float(loss.detach())}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update({"noise": self.noise, "context": self.context})
        return out
