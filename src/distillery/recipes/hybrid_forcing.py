"""Hybrid Forcing: sliding-window attention plus a linear-attention memory of the evicted
tokens, distilled in two decoupled stages (dense first, then window + memory).

R. Li, T. Yang, F. Ai, T. Wu, S. Wen, B. Peng, L. Zhang, 2026, "Long-Horizon Streaming Video
Generation via Hybrid Attention with Decoupled Distillation", arXiv:2604.10103. "We introduce
lightweight linear temporal attention to preserve long-range dependencies beyond the sliding
window ... a compact key-value state to incrementally absorb evicted tokens ... A few-step
initial distillation is performed under dense attention, then the distillation of our proposed
linear temporal and block-sparse attention is activated for streaming modeling."

Mechanism, as expressed here (on the streaming engine's parts):

* **hybrid attention** (:class:`~distillery.streaming.models.VideoTransformer` with
  ``window=W``, ``sinks``, ``memory="linear"``): a query of chunk ``i`` attends by softmax to the
  keys of chunks ``i-W+1 .. i`` (and the sinks) and, through a per-head gate ``tanh(g_h)``, to a
  linear-attention summary of every earlier (evicted) key::

      o = softmax-attn(q, K_win, V_win) + tanh(g) * phi(q)^T S / phi(q)^T z,
      S = sum_{j evicted} phi(k_j) v_j^T,   z = sum_{j evicted} phi(k_j),   phi = elu + 1

  (Katharopoulos et al. 2020, arXiv:2006.16236). When streaming, ``(S, z)`` is the compact state
  the KV cache folds evicted chunks into, so the cache has a bounded size
  (``O(W)`` keys + ``d x d`` per head) whatever the rollout length;
* **decoupled distillation** (:class:`HybridForcing`): a dense causal model is made first
  (here the teacher: block-causal, unbounded attention, trained by teacher-forced denoising with
  the engine's ``video_denoising``); the hybrid student starts from its weights, switches the
  window and the memory on, and is distilled to match the dense model's predictions under
  teacher forcing (the clean real context of earlier chunks, a random noise level)::

      L = E || f_hybrid(x_t, t | x0_<c) - f_dense(x_t, t | x0_<c) ||^2

  Every network of the pipeline carries the memory gates (``memory="linear"``); they start at
  ``g = 0``, so the dense model is exactly dense attention and switching the memory on does not
  change the model; ``memory=False`` keeps the gates at 0 (frozen: the window-only ablation,
  identical to ``memory="none"``). With teacher forcing the evicted context chunks reach the
  memory through the explicit masked form of the linear attention, which the streaming cache's
  state form equals.

[inferred] The paper's first stage is a *few-step* distillation under dense attention and its
second a few-step distillation (DMD-style) of the hybrid model; here the dense stage is the
many-step causal model itself and the second stage matches its predictions (output distillation
at random noise levels), and the student streams with a few steps per chunk. The paper's
**block-sparse attention** inside the window is left out (at 4 tokens per frame there is nothing
to sparsify); ``gate_init`` (the gates' value when stage two starts) and ``data_weight`` (a
denoising term on the data) are additions of this miniature, default 0.

The miniature's data, :func:`blink_sprites` (registered as a dataset), needs memory beyond the
window: a static digit is shown for ``show`` frames, hidden for ``hide`` frames (longer than the
window) and shown again; the student must recall its identity and position.
:func:`recall_metrics` scores that (position error and digit identity after reappearance), and
:func:`stream_cost` measures the cache size and the time per frame deep into a stream.

Config: ``configs/hybrid_forcing_blink.yaml``; reproduction: ``distillery reproduce hybrid_forcing``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from ..errors import ConfigError
from ..generative.method import METHODS
from ..registry import DATASETS
from ..generative.objectives.denoising import denoising_target
from ..streaming.objectives.video_denoising import VideoDenoising
from ..streaming.rollout import conditions_of
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("hybrid_forcing", "Li et al. 2026, Hybrid Forcing, arXiv:2604.10103", "hybrid_forcing_blink.yaml",
           "sliding-window attention plus a linear-attention memory of evicted tokens, distilled in two decoupled "
           "stages (dense, then window + memory)")
)

STAGES = ("dense", "hybrid")


# -- data ----------------------------------------------------------------------------------------
def blink_window(frames: int, show: int, hide: int) -> tuple[int, int]:
    """``(start, stop)`` of the hidden frames ``[show, show + hide)``; checks that the sprite
    reappears (``show + hide < frames``)."""
    for key, value, low in (("frames", frames, 2), ("show", show, 1), ("hide", hide, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"blink_sprites: {key} must be an integer >= {low}, got {value!r}.")
    if show + hide >= frames:
        raise ConfigError(f"blink_sprites: show + hide ({show} + {hide}) must be < frames ({frames}) so that the "
                          "sprite reappears.")
    return show, show + hide


@DATASETS.register("blink_sprites")
def blink_sprites(frames: int = 12, show: int = 2, hide: int = 6, size: int = 16, source: str = "digits",
                  n_train: int = 2000, n_test: int = 500, seed: int = 0) -> Any:
    """A static sprite that is shown, hidden, and shown again: ``sprite_videos`` with speed 0,
    frames ``[show, show + hide)`` black (-1). ``pos`` keeps the sprite's (constant) centre on
    every frame, ``y`` its digit; the splits' ``info`` holds ``show``/``hide``. Recalling the
    sprite after ``hide`` frames needs a memory longer than ``hide`` frames."""
    from ..streaming.data import VideoDataset, sprite_videos

    lo, hi = blink_window(frames, show, hide)
    splits = sprite_videos(frames=frames, size=size, source=source, speed=(0.0, 0.0), n_train=n_train,
                           n_test=n_test, seed=seed)
    def hide_frames(split: Any) -> Any:
        x = split.x.clone()
        x[:, lo:hi] = -1.0
        return VideoDataset(x, split.y, **split.extra)

    return dataclasses.replace(splits, train=hide_frames(splits.train), test=hide_frames(splits.test),
                               name="blink_sprites", info={**splits.info, "show": show, "hide": hide})


# -- the method ----------------------------------------------------------------------------------
@METHODS.register("hybrid_forcing")
class HybridForcing(VideoDenoising):
    """One stage of Hybrid Forcing's decoupled distillation: the student matches the dense
    teacher's prediction under teacher forcing; player ``model``.

    Per step: real videos ``x0`` ``(B, T, C, H, W)``, a noise level per video (or per chunk,
    ``noise``), ``x_t``; both networks predict ``x_t`` with the clean ``x0`` as the context of
    earlier chunks (teacher forcing), and::

        L = mean || f_student(x_t, t | x0_<c) - f_teacher(x_t, t | x0_<c) ||^2
            + data_weight * mean || f_student(x_t, t | x0_<c) - target(x0, eps, t) ||^2

    With a window, the evicted context reaches the student only through its linear memory.

    Args (besides :class:`~distillery.streaming.objectives.video_denoising.VideoDenoising`'s;
    ``context`` is always ``"clean"``):
        stage: ``"dense"`` (the student's window covers the whole training video: nothing is
            evicted) or ``"hybrid"`` (a window shorter than the video).
        memory: train the memory gates (``True``) or keep them at 0 (``False``: window only,
            identical to ``memory="none"``). Stage ``dense`` keeps them at 0.
        gate_init: the gates' value ``g`` when this stage starts (``hybrid`` with memory only).
        data_weight: weight of the plain denoising term on the data (0: distillation only).
    """

    def __init__(self, student: Any, teacher: Any, *, stage: str = "hybrid", memory: bool = True,
                 gate_init: float = 0.0, data_weight: float = 0.0, **params: Any) -> None:
        net = getattr(student, "net", None)
        if teacher is None:
            raise ConfigError("method 'hybrid_forcing' distils a dense causal teacher; give a teacher "
                              "(e.g. {kind: run, run: runs/hybrid_forcing_blink_teacher}).")
        if stage not in STAGES:
            raise ConfigError(f"method 'hybrid_forcing': stage must be 'dense' or 'hybrid'; got {stage!r}.")
        if not isinstance(memory, bool):
            raise ConfigError(f"method 'hybrid_forcing': memory must be true or false; got {memory!r}.")
        if getattr(net, "memory", None) != "linear" or net.attention == "bidirectional":
            raise ConfigError("method 'hybrid_forcing': the student must be a causal video_transformer with memory "
                              "'linear' (the gates start at 0; memory: false keeps them there).")
        if "context" in params:
            raise ConfigError("method 'hybrid_forcing': context is always 'clean' (teacher forcing); remove it.")
        if not float(data_weight) >= 0.0:
            raise ConfigError(f"method 'hybrid_forcing': data_weight must be >= 0, got {data_weight!r}.")
        chunks = net.frames // net.chunk
        if stage == "dense" and net.window < chunks:
            raise ConfigError(f"method 'hybrid_forcing': stage 'dense' needs a window >= the {chunks} chunks of a "
                              f"training video (nothing evicted); got window {net.window}.")
        if stage == "hybrid" and net.window >= chunks:
            raise ConfigError(f"method 'hybrid_forcing': stage 'hybrid' needs a window shorter than the {chunks} "
                              f"chunks of a training video; got window {net.window}.")
        if gate_init != 0.0 and not (stage == "hybrid" and memory):
            raise ConfigError("method 'hybrid_forcing': gate_init applies to stage 'hybrid' with memory only.")
        tnet = getattr(getattr(teacher, "denoiser", teacher), "net", None)
        if not hasattr(tnet, "denoise_chunk") or tnet.attention == "bidirectional" or tnet.window is not None and \
                tnet.window < chunks:
            raise ConfigError("method 'hybrid_forcing': the teacher must be a dense causal video_transformer "
                              "(block-causal, no window shorter than the video) that takes teacher-forced context.")
        self.stage, self.memory = stage, bool(memory and stage == "hybrid")
        self.gate_init, self.data_weight = float(gate_init), float(data_weight)
        for block in net.blocks:
            gate = block.memory_gate
            with torch.no_grad():
                if not self.memory:
                    gate.zero_()
                elif self.gate_init:
                    gate.fill_(self.gate_init)
            gate.requires_grad_(self.memory)
        super().__init__(student, None, context="clean", **params)
        self.teacher = teacher
        self.teacher.requires_grad_(False).eval()

    def loss(self, player: str, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        x0 = batch["x"]
        if x0.dim() != 5:
            raise ConfigError(f"method 'hybrid_forcing' needs videos (B, T, C, H, W); the batch has {tuple(x0.shape)}.")
        eps, t_video, _ = self._noise_draws(x0, step)
        t = t_video if self.noise == "video" else self._video_times(x0.shape[0], x0.shape[1], step, x0.device, x0.dtype)
        cond = conditions_of(batch, self.model.net)
        x_t = self.process.add_noise(x0, eps, t)
        pred = self.model.net(x_t, t, cond, context=x0)
        with torch.no_grad():
            ref = self.teacher.net(x_t, t, cond, context=x0)
        distill = (pred - ref).pow(2).mean()
        loss = distill
        logs = {"distill": float(distill.detach())}
        if self.data_weight:
            data = (pred - denoising_target(self.process, x0, eps, t, self.model.prediction)).pow(2).mean()
            loss = loss + self.data_weight * data
            logs["data"] = float(data.detach())
        gates = [float(torch.tanh(b.memory_gate.detach()).abs().mean()) for b in self.model.net.blocks]
        logs["gate"] = sum(gates) / len(gates)
        return loss, logs

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update({"method": "hybrid_forcing", "stage": self.stage, "memory": self.memory,
                    "gate_init": self.gate_init, "data_weight": self.data_weight})
        return out


# -- measurements --------------------------------------------------------------------------------
def _crop(frame: torch.Tensor, centre: torch.Tensor, side: int = 8) -> torch.Tensor:
    """``side x side`` crop of ``frame`` ``(H, W)`` around ``centre`` (row, col), clamped inside."""
    h, w = frame.shape
    top = int(round(float(centre[0]) - (side - 1) / 2))
    left = int(round(float(centre[1]) - (side - 1) / 2))
    top, left = min(max(top, 0), h - side), min(max(left, 0), w - side)
    return frame[top:top + side, left:left + side]


def recall_metrics(video: torch.Tensor, pos: torch.Tensor, labels: torch.Tensor, start: int) -> dict[str, float]:
    """How well a rollout recalls the sprite after it reappears at frame ``start``.

    ``video`` ``(B, T, 1, H, W)`` in [-1, 1]; ``pos`` ``(B, T, 1, 2)`` or ``(B, T, 2)`` true
    centres; ``labels`` ``(B,)`` digits. Returns ``recall_position_error`` (pixels, mean over the
    frames ``>= start``), ``recall_accuracy`` (the digits classifier of
    :func:`~distillery.generative.metrics.digit_feature_net` on the 8x8 crop around the generated
    sprite's own centroid in the mean reappeared frame, against ``labels``)."""
    from ..generative.metrics import digit_feature_net
    from ..streaming.metrics import position_error, sprite_positions

    if video.dim() != 5 or video.shape[2] != 1:
        raise ConfigError(f"recall_metrics: video must be (B, T, 1, H, W); got {tuple(video.shape)}.")
    if not 0 <= start < video.shape[1]:
        raise ConfigError(f"recall_metrics: start must be a frame index in [0, {video.shape[1]}); got {start}.")
    net, _ = digit_feature_net()  # outside no_grad: it may be trained on first use
    with torch.no_grad():
        return _recall(video[:, start:].float(), pos[:, start:video.shape[1]], labels, net, position_error,
                       sprite_positions)


def _recall(seen: torch.Tensor, pos: torch.Tensor, labels: torch.Tensor, net: Any, position_error: Any,
            sprite_positions: Any) -> dict[str, float]:
    err = position_error(seen, pos)
    mean = seen.mean(1)  # (B, 1, H, W)
    centres = sprite_positions(mean[:, None])[:, 0]  # (B, 2)
    crops = torch.stack([_crop(mean[b, 0], centres[b]) for b in range(len(mean))])[:, None]
    acc = (net.logits(crops).argmax(-1) == labels.to(crops.device)).float().mean()
    return {"recall_position_error": float(err), "recall_accuracy": float(acc)}


def hidden_leak(video: torch.Tensor, lo: int, hi: int) -> float:
    """Mean intensity ``(x + 1) / 2`` of the frames ``[lo, hi)`` that should be black."""
    return float(((video[:, lo:hi].float() + 1) / 2).clamp(0, 1).mean())


@torch.no_grad()
def stream_cost(net: Any, at_frame: int = 64, *, n: int = 1, repeats: int = 5) -> dict[str, float]:
    """The streaming cost of ``net`` (a causal :class:`~distillery.streaming.models.VideoTransformer`)
    at frame ``at_frame``: stream random chunks (one denoising pass and one context pass each;
    the cost does not depend on the weights' values) up to the chunk holding ``at_frame``, then
    time that chunk's denoising pass plus its context pass (median of ``repeats``, on a copy of
    the cache) per frame. Returns ``cache_bytes`` (:meth:`KVCache.nbytes` before that chunk)
    and ``seconds_per_frame``."""
    import copy

    chunk = net.chunk
    index = at_frame // chunk
    if (index + 1) * chunk > net.max_frames:
        raise ConfigError(f"stream_cost: frame {at_frame} is beyond the network's max_frames ({net.max_frames}).")
    gen = torch.Generator().manual_seed(0)
    shape = (n, chunk, net.channels, net.size, net.size)
    cache = net.init_cache()
    t = torch.full((n,), 0.5)
    for i in range(index):
        x = torch.randn(shape, generator=gen)
        net.denoise_chunk(x, t, cache, i)
        net.append_chunk(x, cache, i)
    nbytes = cache.nbytes()
    x = torch.randn(shape, generator=gen)
    times = []
    for _ in range(repeats):
        c = copy.deepcopy(cache)
        start = time.perf_counter()
        net.denoise_chunk(x, t, c, index)
        net.append_chunk(x, c, index)
        times.append(time.perf_counter() - start)
    times.sort()
    return {"cache_bytes": float(nbytes), "seconds_per_frame": times[len(times) // 2] / chunk}


# -- config fragments ----------------------------------------------------------------------------
def net_params(*, window: int, chunk: int = 2, dim: int = 64, depth: int = 2, heads: int = 4, patch: int = 8,
               attention: str = "block_causal", max_frames: int = 128) -> dict[str, Any]:
    """The ``video_transformer`` params shared by every stage (``memory: linear`` always, so that
    weights move between stages; joint space-time attention, which the linear memory is written for)."""
    return {"chunk": chunk, "dim": dim, "depth": depth, "heads": heads, "patch": patch, "attention": attention,
            "layout": "joint", "window": int(window), "sinks": 0, "memory": "linear", "max_frames": max_frames}


def stage_config(stage: str, *, memory: bool = True, gate_init: float = 0.0, data_weight: float = 0.0,
                 **extra: Any) -> dict[str, Any]:
    """The ``method`` section of one Hybrid Forcing stage (``noise`` etc. in ``extra``)."""
    params = {"stage": stage, "memory": bool(memory), **extra}
    if stage == "hybrid" and memory and gate_init:
        params["gate_init"] = float(gate_init)
    if data_weight:
        params["data_weight"] = float(data_weight)
    return {"method": {"kind": "hybrid_forcing", "params": params}}


__all__ = ["HybridForcing", "blink_sprites", "blink_window", "hidden_leak", "net_params", "recall_metrics",
           "stage_config", "stream_cost"]
