"""Matrix-Game 3.0: a self-correcting, action-conditioned streaming world model with a
camera-aware memory, then multi-segment autoregressive DMD.

Skywork AI Matrix-Game team (23 authors), 2026, "Matrix-Game 3.0: Real-Time and Streaming Interactive World
Model with Long-Horizon Memory", arXiv:2604.08995 (abstract: "by modeling prediction residuals and
re-injecting imperfect generated frames during training, the base model learns self-correction;
meanwhile, camera-aware memory retrieval and injection enable the base model to achieve long
horizon spatiotemporal consistency ... a multi-segment autoregressive distillation strategy based
on Distribution Matching Distillation (DMD)").

Mechanism, as expressed here on the streaming engine (videos ``(B, T, C, H, W)`` of
``gridworld_videos``: a camera moved by actions over a procedural world, going out and coming
back, so revisited places have a ground truth):

* **self-correcting base model** (:class:`MatrixGame3Base`, method ``matrix_game3_base``): the
  causal action-conditioned model is trained by teacher-forced denoising (chunk ``c`` of the
  noisy video ``x_t`` attends to the *context* frames of chunks ``< c``), but the context is
  not always the real video: before every update the model itself streams the batch without
  gradient (:func:`~distillery.streaming.rollout.rollout`, ``context="self"``, ``K`` steps per
  chunk, after ``prefix_chunks`` real chunks), and each later chunk of the context is, with
  probability ``p`` (``reinject``) per video and chunk, its own *imperfect generated* chunk
  instead of the real one. The regression target stays the ground truth::

      m_{b,c} ~ Bernoulli(p)  (c >= prefix),   ctx = m * x_gen + (1 - m) * x_real,
      L = E || F_theta(x_t, t | ctx, actions) - target(x_real, eps, t) ||^2

  so the model learns to continue correctly from its own errors (self-correction). ``p = 0`` is
  plain teacher forcing (the baseline).
  [inferred] The paper's "modeling prediction residuals" (a residual target) is not reproduced;
  the imperfect frames here are the model's own current rollouts (refreshed each update).
* **camera-aware memory** (:func:`camera_memory_rollout`): streaming with a bounded context of
  the last ``window`` chunks plus ``memory`` chunks *retrieved* from everything generated so far
  by camera position: the chunk whose camera position (integrated from the actions,
  :func:`camera_track`) is nearest to that of the chunk being generated. The retrieved chunks'
  cached keys and values are injected into the attention like the recent ones (a per-video
  gathered :class:`~distillery.streaming.models.KVCache`). With ``window`` covering every chunk it
  is the engine's full-cache rollout (tested).
  [inferred] The paper retrieves by camera field-of-view overlap with pose encodings; here the
  distance of chunk-mean camera positions, and no extra pose encoding.
* **multi-segment AR DMD**: the engine's Self-Forcing (``self_forcing``: DMD against the
  bidirectional teacher on the student's own multi-chunk rollout) started from the base model
  (:func:`dmd_config`). Quantisation and VAE-decoder pruning are left out.

Config: ``configs/matrix_game3_gridworld.yaml``; reproduction: ``distillery reproduce matrix_game3``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..engine import distributed as D
from ..errors import ConfigError
from ..generative.method import GLOBAL_DRAWS, METHODS, BatchDraws
from ..streaming.data import _MOVES
from ..streaming.models import KVCache
from ..streaming.objectives.video_denoising import VideoDenoising
from ..streaming.rollout import conditions_of, rollout, step_times
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("matrix_game3", "Matrix-Game Team 2026, Matrix-Game 3.0, arXiv:2604.08995", "matrix_game3_gridworld.yaml",
           "action-conditioned causal world model trained to self-correct on re-injected generated frames, "
           "camera-aware memory retrieval, then multi-segment Self-Forcing DMD")
)

__all__ = ["MatrixGame3Base", "base_config", "camera_memory_rollout", "camera_track", "dmd_config",
           "reinjection_mask", "retrieve"]


def reinjection_mask(draw: Any, n: int, chunks: int, chunk: int, p: float, prefix_chunks: int,
                     device: Any = "cpu") -> torch.Tensor:
    """``(n, chunks * chunk)`` bool: frames whose context is the model's own generated frame.
    One Bernoulli(``p``) draw per video and chunk (``n * chunks`` uniforms from ``draw.rand``,
    video-major), never for the ``prefix_chunks`` real chunks."""
    u = draw.rand(n * chunks).reshape(n, chunks).to(device)
    m = u < float(p)
    m[:, :prefix_chunks] = False
    return m.repeat_interleave(chunk, 1)


@METHODS.register("matrix_game3_base")
class MatrixGame3Base(VideoDenoising):
    """Teacher-forced denoising of a causal video model with re-injected generated context
    (see the module docstring); player ``model``.

    Args (besides ``video_denoising``'s; ``context`` is always ``"clean"``: teacher forcing):
        reinject: probability ``p`` per video and chunk that the context chunk is the model's own
            generated chunk (0: plain teacher forcing).
        reinject_steps: denoising steps per chunk of the no-grad rollout that makes them.
        prefix_chunks: real chunks that start that rollout (never replaced).
    """

    def __init__(self, student: Any, teacher: Any = None, *, reinject: float = 0.5, reinject_steps: int = 2,
                 prefix_chunks: int = 1, noise: str = "chunk", **kwargs: Any) -> None:
        if "context" in kwargs:
            raise ConfigError("method 'matrix_game3_base': context is always 'clean' (teacher forcing); remove it.")
        super().__init__(student, teacher, noise=noise, context="clean", **kwargs)
        if not hasattr(student.net, "denoise_chunk") or student.net.attention == "bidirectional":
            raise ConfigError("method 'matrix_game3_base': the model must be a causal video_transformer "
                              "(attention block_causal).")
        if isinstance(reinject, bool) or not isinstance(reinject, (int, float)) or not 0.0 <= float(reinject) <= 1.0:
            raise ConfigError(f"method 'matrix_game3_base': reinject must lie in [0, 1], got {reinject!r}.")
        if isinstance(reinject_steps, bool) or not isinstance(reinject_steps, int) or not 1 <= reinject_steps <= 16:
            raise ConfigError(f"method 'matrix_game3_base': reinject_steps must be an integer in [1, 16], got {reinject_steps!r}.")
        chunks = student.sample_shape[0] // student.net.chunk
        if isinstance(prefix_chunks, bool) or not isinstance(prefix_chunks, int) or not 0 <= prefix_chunks < chunks:
            raise ConfigError(f"method 'matrix_game3_base': prefix_chunks must be an integer in [0, {chunks}), "
                              f"got {prefix_chunks!r}.")
        self.reinject, self.reinject_steps, self.prefix_chunks = float(reinject), int(reinject_steps), int(prefix_chunks)
        self.last_reinjected = 0.0

    def context_for(self, x0: torch.Tensor, cond: Any, step: int) -> torch.Tensor:
        """The context video ``(B, T, C, H, W)`` of an update: the real frames with each later
        chunk replaced, with probability ``reinject``, by the model's own no-grad rollout."""
        if self.reinject <= 0:
            return x0
        net = self.model.net
        n, frames = x0.shape[:2]
        chunks = frames // net.chunk
        draw = BatchDraws((self.seed * 1_000_003 + step + 104_729) % (2**63), D.rank(), D.world_size())
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                own = rollout(self.model, n, chunks, [self.reinject_steps] * chunks, cond=cond, real=x0,
                              prefix_chunks=self.prefix_chunks, context="self", draw=draw, device=x0.device).video
        finally:
            self.model.train(was)
        m = reinjection_mask(draw, n, chunks, net.chunk, self.reinject, self.prefix_chunks, x0.device)
        self.last_reinjected = float(m.float().mean())
        return torch.where(m[:, :, None, None, None], own.to(x0.dtype), x0)

    def loss(self, player: str, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        x0 = batch["x"]
        if x0.dim() != 5:
            raise ConfigError(f"method 'matrix_game3_base' needs videos (B, T, C, H, W); the batch has {tuple(x0.shape)}.")
        eps, t_video, _ = self._noise_draws(x0, step)
        t = t_video if self.noise == "video" else self._video_times(x0.shape[0], x0.shape[1], step, x0.device, x0.dtype)
        cond = conditions_of(batch, self.model.net)
        ctx = self.context_for(x0, cond, step)
        x_t = self.process.add_noise(x0, eps, t)
        pred = self.model.net(x_t, t, cond, context=ctx)
        from ..generative.objectives.denoising import denoising_target

        target = denoising_target(self.process, x0, eps, t, self.model.prediction)
        loss = (pred - target).pow(2).mean()
        return loss, {"loss": float(loss.detach()), "reinjected": self.last_reinjected}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update({"method": "matrix_game3_base", "reinject": self.reinject, "reinject_steps": self.reinject_steps,
                    "prefix_chunks": self.prefix_chunks})
        return out


# -- camera-aware memory ---------------------------------------------------------------------------
def camera_track(actions: torch.Tensor) -> torch.Tensor:
    """``(B, T, 2)`` camera displacement (rows, cols, in action moves) from the first frame,
    integrated from ``gridworld_videos`` actions ``(B, T)`` (:data:`~distillery.streaming.data.ACTIONS`;
    ``actions[:, t]`` moves the camera before frame ``t``)."""
    if actions.dim() != 2:
        raise ConfigError(f"camera_track: actions must be (B, T); got shape {tuple(actions.shape)}.")
    a = actions.long()
    if int(a.min()) < 0 or int(a.max()) >= len(_MOVES):
        raise ConfigError(f"camera_track: actions must lie in [0, {len(_MOVES) - 1}].")
    return _MOVES.to(a.device)[a].cumsum(1)


def retrieve(track: torch.Tensor, chunk: int, current: int, candidates: int, memory: int) -> torch.Tensor:
    """``(B, memory)`` long: for each video, the ``memory`` chunks among ``0 .. candidates - 1``
    whose mean camera position is nearest (Euclidean) to that of chunk ``current``; ties go to
    the most recent. ``track``: ``(B, T, 2)`` (:func:`camera_track`)."""
    if not 1 <= memory <= candidates:
        raise ConfigError(f"retrieve: memory must be in [1, {candidates}] (the candidate chunks); got {memory}.")
    b = track.shape[0]
    centre = track.float().reshape(b, -1, chunk, 2).mean(2)  # (B, chunks, 2)
    d = (centre[:, :candidates] - centre[:, current:current + 1]).norm(dim=-1)  # (B, candidates)
    d = d - 1e-6 * torch.arange(candidates, device=d.device, dtype=d.dtype)  # prefer recent on ties
    return d.topk(memory, dim=1, largest=False).indices.sort(1).values


def _gather(store: list[list[tuple[torch.Tensor, torch.Tensor]]], picks: torch.Tensor, depth: int,
            tokens: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, the keys/values ``(B, heads, S * tokens, hd)`` of chunks ``picks`` ``(B, S)``."""
    ks, vs = [], []
    for layer in range(depth):
        k_all = torch.stack([store[c][layer][0] for c in range(len(store))], 1)  # (B, C, heads, tokens, hd)
        v_all = torch.stack([store[c][layer][1] for c in range(len(store))], 1)
        idx = picks[:, :, None, None, None].expand(-1, -1, *k_all.shape[2:])
        k = k_all.gather(1, idx).permute(0, 2, 1, 3, 4).flatten(2, 3)
        v = v_all.gather(1, idx).permute(0, 2, 1, 3, 4).flatten(2, 3)
        ks.append(k)
        vs.append(v)
    return ks, vs


@torch.no_grad()
def camera_memory_rollout(student: Any, n: int, chunks: int, schedule: list[int], *, cond: dict[str, Any],
                          real: torch.Tensor, prefix_chunks: int = 1, window: int = 1, memory: int = 1,
                          device: Any = "cpu") -> torch.Tensor:
    """Stream ``chunks`` chunks attending to the last ``window`` chunks plus ``memory`` chunks
    retrieved by camera position (see the module docstring); returns ``(n, T, C, H, W)``.

    ``student``: a Denoiser around a block-causal :class:`~distillery.streaming.models.VideoTransformer`
    without a window of its own; ``cond``: with ``actions`` ``(n, >= T)``; ``real``: videos whose
    first ``prefix_chunks`` chunks start the stream. Each chunk's context keys/values are those
    computed when it was appended (attending to its own bounded context)."""
    net = getattr(student, "net", student)
    if not hasattr(net, "denoise_chunk") or net.attention != "block_causal" or net.window is not None:
        raise ConfigError("camera_memory_rollout: the student must be a block_causal video_transformer without a window "
                          "(the memory bounds the context itself).")
    if window < 1 or memory < 0:
        raise ConfigError(f"camera_memory_rollout: window must be >= 1 and memory >= 0; got {window}, {memory}.")
    if not isinstance(cond, dict) or "actions" not in cond:
        raise ConfigError("camera_memory_rollout: cond must carry the actions (B, T) that place the camera.")
    if len(schedule) != chunks or not 1 <= prefix_chunks < chunks:
        raise ConfigError(f"camera_memory_rollout: need len(schedule) == chunks ({chunks}) and 1 <= prefix_chunks < chunks.")
    F_, process, prediction = net.chunk, student.process, student.prediction
    frames, tokens = chunks * F_, F_ * net.tokens_per_frame
    track = camera_track(cond["actions"][:, :frames])
    dtype = next(net.parameters()).dtype
    store: list[list[tuple[torch.Tensor, torch.Tensor]]] = []  # per chunk, per layer (k, v)
    out: list[torch.Tensor] = []
    for i in range(chunks):
        recent = list(range(max(0, i - window), i))
        older = max(0, i - window)
        picks = [torch.tensor(recent, device=device, dtype=torch.long).expand(n, -1)]
        if memory and older:
            picks.insert(0, retrieve(track, F_, i, older, min(memory, older)).to(device))
        picks_t = torch.cat(picks, 1) if i else torch.zeros(n, 0, dtype=torch.long, device=device)
        cache = KVCache(net.depth)
        if picks_t.shape[1]:
            cache.k, cache.v = _gather(store, picks_t, net.depth, tokens)
            slots = picks_t.shape[1]
            # every context slot is earlier than chunk i: block-causal ids i - slots .. i - 1 (mask only)
            cache.chunks = torch.arange(i - slots, i).repeat_interleave(tokens)
            cache.frames = (cache.chunks * F_).clone()
        cache.next_chunk = i
        if i < prefix_chunks:
            chunk = real[:, i * F_:(i + 1) * F_].to(device=device, dtype=dtype)
        else:
            K = schedule[i]
            times = step_times(process, K, device=device, dtype=dtype)
            x = GLOBAL_DRAWS.prior(process, n, (F_, net.channels, net.size, net.size), device=device, dtype=dtype)
            noise = [torch.randn_like(x) for _ in range(K - 1)]  # the engine rollout's draw order
            for s in range(K):
                t = times[s].expand(n)
                chunk = process.convert(net.denoise_chunk(x, t, cache, i, cond), x, t, prediction, "x0")
                if s + 1 < K:
                    x = process.add_noise(chunk, noise[s], times[s + 1].expand(n))
        out.append(chunk)
        if i + 1 < chunks:
            before = len(cache)
            net.append_chunk(chunk, cache, i, cond)
            store.append([(cache.k[layer][:, :, before:], cache.v[layer][:, :, before:]) for layer in range(net.depth)])
    return torch.cat(out, 1)


# -- config fragments --------------------------------------------------------------------------------
def base_config(*, reinject: float = 0.5, reinject_steps: int = 2, prefix_chunks: int = 1, noise: str = "chunk",
                **extra: Any) -> dict[str, Any]:
    """The ``method`` section of the self-correcting base model (``reinject = 0``: plain teacher
    forcing, the baseline)."""
    params = {"reinject": float(reinject), "reinject_steps": int(reinject_steps), "prefix_chunks": int(prefix_chunks),
              "noise": noise, **extra}
    return {"method": {"kind": "matrix_game3_base", "params": params}}


def dmd_config(*, steps: int = 2, prefix_chunks: int = 1, fake_updates: int = 2, **extra: Any) -> dict[str, Any]:
    """The ``method`` section of the multi-segment AR DMD stage: Self-Forcing on the student's own
    multi-chunk rollout against the bidirectional teacher."""
    params = {"steps": int(steps), "context": "self", "prefix_chunks": int(prefix_chunks), "grad": "all",
              "exit": "random", "fake_updates": int(fake_updates), **extra}
    return {"method": {"kind": "self_forcing", "params": params}}
