"""SoulX-FlashTalk: self-correcting bidirectional distillation of a chunk-streaming audio-driven student.

L. Shen, Q. Qiao, T. Yu, K. Zhou, T. Yu, Y. Zhan, Z. Wang, M. Tao, S. Yin, S. Liu, 2025,
"SoulX-FlashTalk: Real-Time Infinite Streaming of Audio-Driven Avatars via Self-Correcting
Bidirectional Distillation", arXiv:2512.23379. "Existing approaches often compromise visual
fidelity by enforcing strictly unidirectional attention mechanisms ... we use a Self-correcting
Bidirectional Distillation strategy that retains bidirectional attention within video chunks ...
we incorporate a Multi-step Retrospective Self-Correction Mechanism, enabling the model to
autonomously recover from accumulated errors and preventing collapse."

Mechanism, as expressed here (on the streaming engine's Self-Forcing,
:class:`~distillery.streaming.objectives.self_forcing.SelfForcing`, audio-conditioned as in
:mod:`distillery.recipes.livetalk`, whose teacher it shares):

* **intra-chunk bidirectional attention**: the student's ``video_transformer`` uses
  ``attention: block_causal`` (mask ``M[i, j] = chunk(j) <= chunk(i)``: bidirectional inside a
  chunk, causal across chunks); the strictly causal ablation is ``frame_causal``
  (``M[i, j] = frame(j) <= frame(i)``), at the same chunk size and the same steps per chunk;
* **multi-step retrospective self-correction** [inferred: the paper names the mechanism but
  gives no loss]: every update draws ``r`` uniformly from ``{0, ..., retro_chunks}`` (one ``r``
  for the whole global batch, from the update's shared generator). The student streams
  ``r + C`` chunks (``C`` = the training video's chunks) on its own, chunk by chunk with its KV
  cache, from the real prefix chunk: the first ``r`` chunks are *retrospective* context, its own
  accumulated multi-chunk output, errors included. The DMD loss (and the fake-score network's
  training) is taken on the *last* ``C`` chunks only, the window ``x = video[:, rF:]``, against
  the bidirectional teacher conditioned on the window's audio:
  ``grad_G = E_t [(fake_x0(x_t) - real_x0(x_t)) / w]``. So the student is asked to produce, on
  top of its own erroneous history, chunks the teacher finds realistic: to correct toward the
  teacher instead of compounding. ``r = 0`` is plain Self-Forcing (real prefix, then ``C - 1``
  generated chunks).
  The audio of the ``r + C`` chunks is the batch's audio for the window (aligned with what the
  teacher scores) preceded by the first ``r`` chunks of the same audio for the retrospective
  part (the audio of the real prefix chunk is its own).

Differences from the paper: a 14B DiT with reference-image and audio cross-attention, a
two-stage training and a full inference stack there; here a tiny video transformer whose audio
is added per frame, and one DMD stage from the teacher's weights. Note: the retrospective
rollouts also train the student at absolute frame positions beyond the training length (up to
``(retro_chunks + C) * F``), which plain Self-Forcing never visits; that is part of training on
long own rollouts, and the reproduction's page says so.

Config: ``configs/soulx_flashtalk_sprites.yaml`` (teacher: ``configs/livetalk_teacher_sprites.yaml``);
reproduction: ``distillery reproduce soulx_flashtalk``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..generative.method import METHODS
from ..streaming.objectives.self_forcing import SelfForcing
from ..streaming.rollout import rollout, shared_randint
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("soulx_flashtalk", "Shen et al. 2025, SoulX-FlashTalk, arXiv:2512.23379", "soulx_flashtalk_sprites.yaml",
           "Self-Forcing DMD of a chunk-streaming student with intra-chunk bidirectional attention and multi-step "
           "retrospective self-correction (DMD on windows after the student's own multi-chunk history)")
)


def retrospective_audio(audio: torch.Tensor, frames_before: int, rate: int) -> torch.Tensor:
    """The audio of a retrospective rollout: ``(B, (frames_before + T) * rate, A)``, the first
    ``frames_before`` frames of ``audio`` ``(B, T * rate, A)`` followed by the whole of it (the
    window after the retrospective chunks is aligned with the batch's own audio)."""
    if frames_before < 0 or frames_before * rate > audio.shape[1]:
        raise ConfigError(f"retrospective_audio: frames_before must lie in [0, {audio.shape[1] // rate}], got {frames_before}.")
    return torch.cat([audio[:, :frames_before * rate], audio], 1)


@METHODS.register("soulx_flashtalk")
class SoulXFlashTalk(SelfForcing):
    """Self-Forcing with multi-step retrospective self-correction; players ``fake_score``, ``generator``.

    Args (besides :class:`~distillery.streaming.objectives.self_forcing.SelfForcing`'s):
        retro_chunks: the most retrospective chunks ``R`` before the scored window (0: plain
            Self-Forcing); each update draws ``r`` in ``{0, ..., R}``. Needs ``context: self``,
            ``grad`` ``all`` or ``last`` and a student whose position table holds
            ``(R + C) * F`` frames.
    """

    def __init__(self, student: Any, teacher: Any, *, retro_chunks: int = 0, **sf: Any) -> None:
        super().__init__(student, teacher, **sf)
        if isinstance(retro_chunks, bool) or not isinstance(retro_chunks, int) or retro_chunks < 0:
            raise ConfigError(f"method 'soulx_flashtalk': retro_chunks must be an integer >= 0, got {retro_chunks!r}.")
        net = self.generator.net
        if retro_chunks:
            if self.context != "self":
                raise ConfigError("method 'soulx_flashtalk': retro_chunks > 0 streams on the student's own output; "
                                  f"context must be 'self', got {self.context!r}.")
            if self.grad not in ("all", "last"):
                raise ConfigError(f"method 'soulx_flashtalk': with retro_chunks > 0, grad must be 'all' or 'last' (the "
                                  f"scored window's chunks); got {self.grad!r}.")
            if self.schedule_kind != "uniform":
                raise ConfigError("method 'soulx_flashtalk': retro_chunks > 0 needs schedule 'uniform'.")
            frames = (retro_chunks + self.chunks) * net.chunk
            if frames > net.max_frames:
                raise ConfigError(f"method 'soulx_flashtalk': retro_chunks={retro_chunks} streams {frames} frames, beyond "
                                  f"the student's position table (max_frames={net.max_frames}).")
            if retro_chunks > self.chunks:
                raise ConfigError(f"method 'soulx_flashtalk': retro_chunks must be <= the {self.chunks} chunks of a "
                                  f"training video (their audio is the video's own); got {retro_chunks}.")
        self.retro_chunks = int(retro_chunks)
        self.last_retro = 0

    def generate(self, n: int, cond: Any, device: torch.device, *,
                 real: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """The scored window ``(n, T, C, H, W)``: the last ``C`` chunks of a rollout of ``r + C``
        chunks (``r`` drawn per update), gradient at the window's marked chunks."""
        r = shared_randint(self.draw, self.retro_chunks + 1) if self.retro_chunks else 0
        self.last_retro = r
        if r == 0:
            return super().generate(n, cond, device, real=real)
        net = self.generator.net
        F_ = net.chunk
        long_cond = cond
        if isinstance(cond, dict) and "audio" in cond:
            long_cond = {**cond, "audio": retrospective_audio(cond["audio"], r * F_, net.audio_rate)}
        if isinstance(cond, dict) and "actions" in cond:
            raise ConfigError("method 'soulx_flashtalk': retrospective rollouts are written for audio conditions, not actions.")
        chunks = r + self.chunks
        real_long = None
        if real is not None and self.prefix_chunks:
            pad = real.new_zeros(real.shape[0], r * F_, *real.shape[2:])
            real_long = torch.cat([real, pad], 1)  # only the prefix chunks of it are read (context "self")
        out = rollout(self.generator, n, chunks, [max(self.schedule)] * chunks, cond=long_cond, real=real_long,
                      prefix_chunks=self.prefix_chunks, context="self", context_noise=self.context_noise,
                      grad=self.grad, exit=self.exit, draw=self.draw, device=device)
        return out.video[:, r * F_:], None

    def generator_loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        loss, logs = super().generator_loss(batch, step)
        return loss, {**logs, "retro_chunks": float(self.last_retro)}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update({"method": "soulx_flashtalk", "retro_chunks": self.retro_chunks,
                    "attention": self.generator.net.attention})
        return out


# -- config fragments ---------------------------------------------------------------------------
def soulx_config(*, steps: int = 2, retro_chunks: int = 0, prefix_chunks: int = 1, fake_updates: int = 1,
                 grad: str = "all", **extra: Any) -> dict[str, Any]:
    """The ``method`` section of SoulX-FlashTalk (``retro_chunks=0``: plain Self-Forcing)."""
    return {"method": {"kind": "soulx_flashtalk",
                       "params": {"steps": steps, "retro_chunks": retro_chunks, "prefix_chunks": prefix_chunks,
                                  "fake_updates": fake_updates, "grad": grad, **extra}}}


def student_section(attention: str, teacher_run: str, **net: Any) -> dict[str, Any]:
    """``teacher`` and ``student`` sections: a causal student (``block_causal`` or
    ``frame_causal``) with the teacher's architecture, initialised from its weights."""
    from .livetalk import video_net

    return {"teacher": {"kind": "run", "run": teacher_run},
            "student": {"denoiser": video_net(attention, **net), "prediction": "velocity", "init": "teacher"}}


__all__ = ["SoulXFlashTalk", "retrospective_audio", "soulx_config", "student_section"]
