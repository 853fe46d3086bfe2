"""LiveTalk: improved Self-Forcing (on-policy) distillation of a multimodal-conditioned causal video student.

E. Chern, Z. Hu, B. Tang, J. Su, S. Chern, Z. Deng, P. Liu, 2025, "LiveTalk: Real-Time Multimodal
Interactive Video Diffusion via Improved On-Policy Distillation", arXiv:2512.23576. "Given the
observation that the leading on-policy distillation approach Self Forcing encounters challenges
(visual artifacts like flickering, black frames, and quality degradation) with multimodal
conditioning, we investigate an improved distillation recipe with emphasis on the quality of
condition inputs as well as the initialization and schedule for the on-policy optimization ...
our distilled model matches the visual quality of the full-step, bidirectional baselines ...
with 20x less inference cost and latency."

Mechanism, as expressed here (on the streaming engine's Self-Forcing,
:class:`~distillery.streaming.objectives.self_forcing.SelfForcing`):

* **multimodal conditions**: the student and the bidirectional teacher are conditioned on an
  audio stream ``(B, T * rate, 1)`` (``sprite_videos(audio=True)``: the audio drives the
  sprite's vertical motion) and on an *image prefix*, the real first chunk of the video
  (``prefix_chunks = 1``: the stream continues it, as LiveTalk's reference image starts the
  avatar video);
* **curated condition quality** (:func:`talking_sprites`): a fraction ``noisy_fraction`` of the
  training videos carry the audio of another video (a desynchronised, "noisy" condition, as
  in-the-wild talking-head data has); curation measures each training video's own audio-motion
  synchronisation error (the :func:`~distillery.streaming.metrics.sync_error` rule per video)
  and keeps only videos with an error ``<= sync_threshold`` pixels per frame;
* **on-policy schedule** (:class:`LiveTalk`, one run, stages by training step ``s``):

  1. ``s < ode_steps``: ODE initialisation, regression of the causal student on the teacher's
     ODE pairs with teacher-forced context (CausVid's init, as the engine's
     :class:`~distillery.streaming.objectives.ode_init.StreamingODEInit`, with the pairs made
     per batch under the batch's conditions: :meth:`LiveTalk.ode_loss`), which LiveTalk stresses
     must converge before the on-policy stage;
  2. ``ode_steps <= s < ode_steps + warmup_steps``: DMD with *teacher forcing* (the cache holds
     the real earlier chunks): a warm-up of the distribution-matching stage on clean context;
  3. afterwards: DMD with *self forcing* (the cache holds the student's own chunks, as at
     inference), i.e. Self-Forcing's on-policy loss

     ``grad_G = E_t [(fake_x0(x_t) - real_x0(x_t)) / w]``, ``x = rollout_G(z | audio, prefix)``,

     with the fake-score network trained on the same rollouts throughout (it tracks the
     student from the start, so it is warm when DMD begins).

[inferred] The paper tunes the DMD learning window and its schedule on a 1.3B model with text,
image and audio encoders; the three-stage switch by step counts and the audio-sync curation
rule are this miniature's rendering of "condition quality, initialisation and schedule".

The teacher-forcing baseline of the reproduction is the same schedule with ``final_context =
"teacher"`` (stages 1-2, then teacher-forced DMD to the end).

Config: ``configs/livetalk_sprites.yaml`` (teacher: ``configs/livetalk_teacher_sprites.yaml``);
reproduction: ``distillery reproduce livetalk``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..errors import ConfigError
from ..generative.method import METHODS
from ..registry import DATASETS
from ..streaming.objectives.self_forcing import SelfForcing
from ..streaming.rollout import step_times
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("livetalk", "Chern et al. 2025, LiveTalk, arXiv:2512.23576", "livetalk_sprites.yaml",
           "Self-Forcing DMD of an audio- and image-prefix-conditioned causal video student, with curated conditions "
           "and an ODE-init -> teacher-forcing DMD -> self-forcing DMD schedule")
)

STAGES = ("ode", "teacher_forcing", "self_forcing")


# -- condition curation -------------------------------------------------------------------------
def per_video_sync_error(video: torch.Tensor, audio: torch.Tensor, *, sprite_size: int = 8,
                         threshold: float = 0.1) -> torch.Tensor:
    """``(B,)`` audio-motion synchronisation error of each video, pixels per frame: the mean over
    transitions ``t = 1..T-1`` of ``|(r_t - r_{t-1}) - (a_t - a_{t-1})|`` with ``r`` the sprite
    row (:func:`~distillery.streaming.metrics.sprite_positions`) and ``a`` the row the audio
    implies (:func:`~distillery.streaming.data.audio_rows`); the per-video form of
    :func:`~distillery.streaming.metrics.sync_error`.

    ``video``: ``(B, T, 1, H, W)`` in [-1, 1]; ``audio``: ``(B, T * rate, 1)``."""
    from ..streaming.data import audio_rows
    from ..streaming.metrics import sprite_positions

    if video.dim() != 5 or audio.dim() not in (2, 3) or audio.shape[0] != video.shape[0]:
        raise ConfigError(f"per_video_sync_error: video (B, T, C, H, W) and audio (B, T * rate, A) needed; got "
                          f"{tuple(video.shape)} and {tuple(audio.shape)}.")
    t = video.shape[1]
    implied = audio_rows(audio.double(), t, float(video.shape[-2] - sprite_size))
    rows = sprite_positions(video, threshold=threshold)[..., 0]
    gap = ((rows[:, 1:] - rows[:, :-1]) - (implied[:, 1:] - implied[:, :-1])).abs()
    return gap.mean(1)


def corrupt_conditions(audio: torch.Tensor, noisy_fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(audio', noisy)``: a copy of ``audio`` ``(N, L, A)`` in which the videos marked ``noisy``
    (``(N,)`` bool, each with probability ``noisy_fraction``) carry the audio of the next noisy
    video (a cyclic shift among them: every noisy video gets another video's audio)."""
    if not 0.0 <= float(noisy_fraction) < 1.0:
        raise ConfigError(f"talking_sprites: noisy_fraction must lie in [0, 1), got {noisy_fraction!r}.")
    noisy = torch.rand(audio.shape[0], generator=generator) < float(noisy_fraction)
    idx = noisy.nonzero().flatten()
    out = audio.clone()
    if len(idx) >= 2:
        out[idx] = audio[idx.roll(1)]
    elif len(idx) == 1:
        noisy[idx] = False  # one noisy video has no other noisy audio to take
    return out, noisy


@DATASETS.register("talking_sprites")
def talking_sprites(frames: int = 8, size: int = 16, source: str = "digits", speed: Any = (0.5, 1.5),
                    bounce: bool = True, audio_rate: int = 4, n_train: int = 2000, n_test: int = 500,
                    noisy_fraction: float = 0.0, curate: bool = False, sync_threshold: float = 0.1, seed: int = 0,
                    audio: bool = True) -> Any:
    """``sprite_videos(audio=True)`` with noisy training conditions and their curation (LiveTalk).

    A fraction ``noisy_fraction`` of the *training* videos get another training video's audio
    (:func:`corrupt_conditions`); with ``curate``, only training videos whose own audio-motion
    sync error (:func:`per_video_sync_error`) is ``<= sync_threshold`` pixels per frame are kept.
    The test split is the clean one of ``sprite_videos``. ``info`` records the counts
    (``noisy``, ``kept``, ``noisy_kept``). The other arguments are
    :func:`~distillery.streaming.data.sprite_videos`' (one sprite; ``audio`` is always true)."""
    from ..streaming.data import VideoDataset, sprite_videos

    if not isinstance(curate, bool):
        raise ConfigError(f"talking_sprites: curate must be true or false, got {curate!r}.")
    if not float(sync_threshold) > 0:
        raise ConfigError(f"talking_sprites: sync_threshold must be > 0 pixels per frame, got {sync_threshold!r}.")
    if audio is not True:
        raise ConfigError("talking_sprites: audio is always on (the audio is the condition being curated).")
    splits = sprite_videos(frames=frames, size=size, source=source, speed=speed, bounce=bounce, audio=True,
                           audio_rate=audio_rate, n_train=n_train, n_test=n_test, seed=seed)
    tensors = dict(splits.train.tensors)
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + 17)
    tensors["audio"], noisy = corrupt_conditions(tensors["audio"], noisy_fraction, gen)
    keep = torch.ones(len(noisy), dtype=torch.bool)
    if curate:
        keep = per_video_sync_error(tensors["x"], tensors["audio"]) <= float(sync_threshold)
        if not bool(keep.any()):
            raise ConfigError(f"talking_sprites: no training video passes sync_threshold={sync_threshold}; raise it.")
    x, y = tensors.pop("x")[keep], tensors.pop("y")[keep]
    train = VideoDataset(x, y, **{k: v[keep] for k, v in tensors.items()})
    info = {**splits.info, "dataset": "talking_sprites", "noisy_fraction": float(noisy_fraction), "curate": curate,
            "sync_threshold": float(sync_threshold), "noisy": int(noisy.sum()), "kept": int(keep.sum()),
            "noisy_kept": int((noisy & keep).sum()), "n_train": int(keep.sum())}
    return dataclasses.replace(splits, train=train, name="talking_sprites", info=info)


# -- the method ---------------------------------------------------------------------------------
@METHODS.register("livetalk")
class LiveTalk(SelfForcing):
    """Self-Forcing with LiveTalk's staged schedule; players ``fake_score`` and ``generator``.

    Args (besides :class:`~distillery.streaming.objectives.self_forcing.SelfForcing`'s; its
    ``context`` is the last stage's and must not be given):
        ode_steps: training steps of ODE-pair regression first (0: none).
        warmup_steps: training steps of teacher-forcing DMD after it.
        final_context: ``"self"`` (LiveTalk) or ``"teacher"`` (the teacher-forcing baseline).
        pair_steps, pair_solver: the teacher's ODE solver steps per interval between the
            student's times, and the solver (:func:`~distillery.generative.samplers.ode_pairs`).

    The ODE stage is CausVid's regression (:class:`~distillery.streaming.objectives.ode_init.StreamingODEInit`'s
    loss) with the pairs made *online*, per batch, under the batch's own (curated) conditions:
    ``x_T ~ prior``; the teacher's ODE path ``x_{t_0} = x_T, x_{t_1}, ..., x_{t_{K-1}}, x_0``
    under ``cond``; each chunk ``c`` of the student's input is the path's state at an
    independent step ``k_c``; the context is the teacher's ``x_0`` (teacher forcing)::

        L_ode = mean || G_x0(x_{t_k}^{(c)}, t_k | x_0^{(< c)}, cond) - x_0 ||^2

    (the engine's ``streaming_ode_init`` makes its pairs once, unconditionally; an
    audio-conditioned teacher needs the conditions, hence online pairs here).
    """

    def __init__(self, student: Any, teacher: Any, *, ode_steps: int = 0, warmup_steps: int = 0,
                 final_context: str = "self", pair_steps: int = 4, pair_solver: str = "euler", **sf: Any) -> None:
        if "context" in sf:
            raise ConfigError("method 'livetalk': the context follows the schedule (teacher forcing during warmup_steps, "
                              "then final_context); do not give context.")
        for key, value, low in (("ode_steps", ode_steps, 0), ("warmup_steps", warmup_steps, 0),
                                ("pair_steps", pair_steps, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"method 'livetalk': {key} must be an integer >= {low}, got {value!r}.")
        if final_context not in ("self", "teacher"):
            raise ConfigError(f"method 'livetalk': final_context must be 'self' or 'teacher', got {final_context!r}.")
        super().__init__(student, teacher, context=final_context, **sf)
        if ode_steps and self.schedule_kind != "uniform":
            raise ConfigError("method 'livetalk': the ODE stage regresses a uniform step schedule; use schedule 'uniform'.")
        self.ode_steps, self.warmup_steps, self.final_context = int(ode_steps), int(warmup_steps), final_context
        self.pair_steps, self.pair_solver = int(pair_steps), pair_solver

    def stage(self, step: int) -> str:
        """The stage of training step ``step`` (0-based): one of :data:`STAGES`."""
        if step < self.ode_steps:
            return "ode"
        if step < self.ode_steps + self.warmup_steps or self.final_context == "teacher":
            return "teacher_forcing"
        return "self_forcing"

    def ode_times(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``(K + 1,)``: the student's step times ``t_0 > ... > t_{K-1}`` and the data end."""
        process, K = self.teacher.process, max(self.schedule)  # uniform: the steps of every generated chunk
        return torch.cat([step_times(process, K, dtype=torch.float64),
                          torch.tensor([float(process.timesteps(1)[-1])], dtype=torch.float64)]).to(dtype)

    def ode_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The ODE stage's regression (see the class docstring), drawn through ``self.draw``."""
        from ..generative.samplers import ode_pairs

        n, device, cond = self._batch(batch)
        net, process = self.generator.net, self.generator.process
        dtype = next(net.parameters()).dtype
        shape = tuple(self.generator.sample_shape)
        grid = self.ode_times().to(device)
        x_T = self.draw.prior(self.teacher.process, n, shape, device=device, dtype=dtype)
        traj = ode_pairs(self.teacher, x_T, steps=self.pair_steps, solver=self.pair_solver, times=grid,
                         cond=cond)["trajectory"]  # (K + 1, n, T, C, H, W)
        T, K = shape[0], max(self.schedule)
        k = self.draw.randint(0, K, n * self.chunks, device=device).reshape(n, self.chunks)
        k_frames = k.repeat_interleave(net.chunk, 1)  # (n, T): chunk c at its step k_c
        x_in = traj[k_frames, torch.arange(n, device=device)[:, None], torch.arange(T, device=device)[None, :]]
        t_in = grid.to(dtype)[k_frames]
        x0 = traj[-1]
        pred = net(x_in, t_in, cond, context=x0)
        x0_hat = process.convert(pred, x_in, t_in, self.generator.prediction, "x0")
        loss = (x0_hat - x0).pow(2).mean()
        return loss, {"regression": float(loss.detach())}

    def loss(self, player: str, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        stage = self.stage(step)
        self.context = "self" if stage == "self_forcing" else "teacher"
        if stage == "ode" and player == "generator":
            with self.drawing(player, step):
                loss, logs = self.ode_loss(batch)
            return loss, {**logs, "stage": 0.0}
        loss, logs = super().loss(player, batch, step)
        return loss, {**logs, "stage": float(STAGES.index(stage))}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update({"method": "livetalk", "ode_steps": self.ode_steps, "warmup_steps": self.warmup_steps,
                    "final_context": self.final_context, "context": self.final_context})
        return out


# -- config fragments ---------------------------------------------------------------------------
AUDIO_RATE = 4


def video_net(attention: str, *, dim: int = 32, depth: int = 2, heads: int = 4, chunk: int = 2,
              max_frames: int = 64) -> dict[str, Any]:
    """The ``video_transformer`` denoiser section of the audio-conditioned teacher and students."""
    return {"name": "video_transformer", "params": {"chunk": chunk, "attention": attention, "dim": dim, "depth": depth,
                                                    "heads": heads, "patch": 4, "audio_dim": 1, "audio_rate": AUDIO_RATE,
                                                    "max_frames": max_frames}}


def teacher_config(*, steps: int, frames: int = 8, n_train: int = 2000, n_test: int = 200, batch_size: int = 32,
                   sample_steps: int = 16, num_videos: int = 64, net: dict[str, Any] | None = None,
                   lr: float = 1e-3) -> dict[str, Any]:
    """The bidirectional audio-conditioned flow teacher (``video_denoising``, velocity
    prediction) on ``sprite_videos(audio=True)``; evaluated at ``sample_steps`` steps."""
    return {"engine": "streaming", "seed": 0,
            "data": {"dataset": "sprite_videos", "params": {"frames": frames, "audio": True, "audio_rate": AUDIO_RATE,
                                                            "n_train": n_train, "n_test": n_test},
                     "batch_size": batch_size},
            "process": {"kind": "flow"},
            "student": {"denoiser": net or video_net("bidirectional"), "prediction": "velocity"},
            "method": {"kind": "video_denoising", "params": {"ema_decay": 0.99}},
            "train": {"steps": steps, "optimizer": {"name": "adam", "lr": lr}, "log_every": max(1, steps // 10),
                      "checkpoint_every": 10**9, "keep_checkpoints": 1, "progress": False, "tensorboard": False},
            "eval": {"steps": [sample_steps], "num_videos": num_videos, "metrics": ["flicker"]}}


def talking_data(*, frames: int = 8, n_train: int = 2000, n_test: int = 200, noisy_fraction: float = 0.3,
                 curate: bool = True, sync_threshold: float = 0.1, batch_size: int = 16) -> dict[str, Any]:
    """The ``data`` section of the students: :func:`talking_sprites` with noisy, curated conditions."""
    return {"dataset": "talking_sprites", "params": {"frames": frames, "audio_rate": AUDIO_RATE, "n_train": n_train,
                                                     "n_test": n_test, "noisy_fraction": noisy_fraction,
                                                     "curate": curate, "sync_threshold": sync_threshold},
            "batch_size": batch_size}


def livetalk_config(*, steps: int = 2, ode_steps: int = 0, warmup_steps: int = 0, final_context: str = "self",
                    prefix_chunks: int = 1, pair_steps: int = 4, fake_updates: int = 1,
                    **extra: Any) -> dict[str, Any]:
    """The ``method`` section of LiveTalk (``final_context="teacher"``: the teacher-forcing baseline)."""
    params = {"steps": steps, "ode_steps": ode_steps, "warmup_steps": warmup_steps, "final_context": final_context,
              "prefix_chunks": prefix_chunks, "fake_updates": fake_updates, **extra}
    if ode_steps:
        params["pair_steps"] = pair_steps
    return {"method": {"kind": "livetalk", "params": params}}


__all__ = [
    "AUDIO_RATE",
    "STAGES",
    "LiveTalk",
    "corrupt_conditions",
    "livetalk_config",
    "per_video_sync_error",
    "talking_data",
    "talking_sprites",
    "teacher_config",
    "video_net",
]
