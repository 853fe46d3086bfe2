"""OmniForcing in miniature: one causal model generates a video stream and a faster audio stream
jointly, chunk by chunk, and is distilled by Joint Self-Forcing on its own audio-video rollouts.

Paper: Su et al. 2026, "OmniForcing: Unleashing Real-time Joint Audio-Visual Generation",
arXiv:2603.11647 (a dual-stream bidirectional AV diffusion teacher distilled into a streaming
AR generator with asymmetric block-causal alignment, audio sink tokens and Joint Self-Forcing;
each modality has a rolling KV cache).

What is implemented here (the simplest faithful form on the engine's parts):

* **one joint token stream.** The ``rate`` audio samples of frame ``t`` travel inside frame
  ``t``'s tokens: :func:`pack_av` writes them as an extra image channel cut into ``rate``
  horizontal bands (band ``r`` holds sample ``r``), so with ``patch = H / rate`` every row of
  patch tokens carries one audio sample. The joint tensor is ``(B, T, C + 1, H, W)`` and an
  unchanged :class:`~distillery.streaming.models.VideoTransformer` (``in_channels = C + 1``)
  denoises both modalities in the same tokens, masks and KV cache; :func:`unpack_av` reads the
  audio back as the band means. [inferred: the paper keeps separate audio tokens; packing them
  into the frame tokens is this miniature's choice, it gives both streams one cache exactly.]
* **asymmetric alignment**: with packed tokens, audio and video of a chunk are generated
  together (lead 0). The asymmetric mask itself is :func:`joint_av_mask`, a wrapper of
  :func:`~distillery.streaming.masks.two_stream_block_causal` with sinks, for two-token-stream
  models; the packed model does not use a non-zero lead.
* **sink tokens / global prefix**: the first (real) chunk is kept by the model's ``sinks``
  when a ``window`` is used (rolling KV cache with attention sinks).
* **Joint Self-Forcing**: the engine's ``self_forcing`` (DMD on the student's own rollout,
  Huang et al. 2025, arXiv:2506.08009) applied to the joint AV tensor: the teacher is a
  bidirectional model of the joint tensor, the rollout is of video and audio together.
  :func:`method` with ``ode_steps > 0`` puts CausVid's online ODE-pair regression first (the
  staged schedule of the ``livetalk`` method, reused).

The baseline of the reproduction (separate streams) is an audio-only causal model (the same
transformer on the audio channel alone) followed by an audio-conditioned causal video model
(``VideoTransformer(audio_dim=1, audio_rate=4)``) fed the generated audio.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..registry import DATASETS
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("omniforcing", "Su et al. 2026, OmniForcing, arXiv:2603.11647", "omniforcing_sprites.yaml",
           "Joint Self-Forcing of one causal model over a video stream and a 4x faster audio stream "
           "(audio packed in the frame tokens: one KV cache, one mask)")
)

AUDIO_RATE = 4
STREAMS = ("joint", "audio", "video")


def pack_av(video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """Pack ``video`` ``(B, T, C, H, W)`` (``C`` may be 0) and ``audio`` ``(B, T * rate, 1)`` or
    ``(B, T * rate)`` into ``(B, T, C + 1, H, W)``: channel ``C`` of frame ``t`` holds sample
    ``t * rate + r`` on rows ``[r * H / rate, (r + 1) * H / rate)``."""
    if video.dim() != 5:
        raise ConfigError(f"pack_av: video must be (B, T, C, H, W); got shape {tuple(video.shape)}.")
    b, t, _, h, w = video.shape
    a = audio[..., 0] if audio.dim() == 3 else audio
    if a.dim() != 2 or a.shape[0] != b or a.shape[1] % t or a.shape[1] < t:
        raise ConfigError(f"pack_av: audio must be (B, T * rate[, 1]) with B, T = {b}, {t}; got shape {tuple(audio.shape)}.")
    rate = a.shape[1] // t
    if h % rate:
        raise ConfigError(f"pack_av: the image height {h} is not divisible by the audio rate {rate}.")
    bands = a.reshape(b, t, rate, 1, 1).expand(b, t, rate, h // rate, w).reshape(b, t, 1, h, w)
    return torch.cat([video, bands.to(video.dtype)], 2)


def unpack_av(x: torch.Tensor, rate: int = AUDIO_RATE) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`pack_av`: ``(video (B, T, C, H, W), audio (B, T * rate, 1))``, the
    audio sample being the mean of its band (so a generated band is read as its average)."""
    if x.dim() != 5 or x.shape[2] < 1:
        raise ConfigError(f"unpack_av: expected a packed tensor (B, T, C + 1, H, W); got shape {tuple(x.shape)}.")
    b, t, _, h, w = x.shape
    if rate < 1 or h % rate:
        raise ConfigError(f"unpack_av: rate must be >= 1 and divide the height {h}; got {rate}.")
    a = x[:, :, -1].reshape(b, t, rate, h // rate, w).mean((-1, -2))
    return x[:, :, :-1], a.reshape(b, t * rate, 1)


def joint_av_mask(q_chunks: torch.Tensor, k_chunks: torch.Tensor, q_stream: torch.Tensor, k_stream: torch.Tensor,
                  *, audio_lead: int = 0, sinks: int = 0) -> torch.Tensor:
    """The asymmetric block-causal mask of a two-token-stream AV model (stream 0 video, 1 audio):
    a video query of chunk ``i`` sees audio of chunks ``<= i + audio_lead`` (audio leads),
    everything else is block-causal; the first ``sinks`` chunks (the global prefix) stay visible
    to every later query. ``(Lq, Lk)`` bool."""
    from ..streaming.masks import two_stream_block_causal

    if audio_lead < 0:
        raise ConfigError(f"joint_av_mask: audio_lead must be >= 0 chunks, got {audio_lead}.")
    if sinks < 0:
        raise ConfigError(f"joint_av_mask: sinks must be >= 0 chunks, got {sinks}.")
    mask = two_stream_block_causal(q_chunks, k_chunks, q_stream, k_stream, {0: {1: audio_lead}})
    return mask | ((k_chunks[None, :] < sinks) & (k_chunks[None, :] <= q_chunks[:, None]))


@DATASETS.register("omni_sprites")
def omni_sprites(stream: str = "joint", frames: int = 8, size: int = 16, audio_rate: int = AUDIO_RATE,
                 n_train: int = 2000, n_test: int = 200, seed: int = 0) -> Any:
    """``sprite_videos(audio=True)`` as the tensor a model generates: ``stream="joint"`` packs
    video and audio (:func:`pack_av`, ``C + 1`` channels), ``"audio"`` the audio alone (1
    channel), ``"video"`` is the plain dataset (audio kept as the condition)."""
    import dataclasses

    from ..streaming.data import VideoDataset, sprite_videos

    if stream not in STREAMS:
        raise ConfigError(f"omni_sprites: stream must be one of {', '.join(STREAMS)}; got {stream!r}.")
    splits = sprite_videos(frames=frames, size=size, audio=True, audio_rate=audio_rate, n_train=n_train,
                           n_test=n_test, seed=seed)
    if stream == "video":
        return splits

    def convert(ds: Any) -> Any:
        tensors = dict(ds.tensors)
        x, y = tensors.pop("x"), tensors.pop("y")
        v = x if stream == "joint" else x[:, :, :0]
        return VideoDataset(pack_av(v, tensors["audio"]), y, **tensors)

    train = convert(splits.train)
    return dataclasses.replace(splits, train=train, test=convert(splits.test), name="omni_sprites",
                               input_shape=tuple(int(s) for s in train.x.shape[1:]),
                               info={**splits.info, "dataset": "omni_sprites", "stream": stream})


# -- config fragments ---------------------------------------------------------------------------
def net(attention: str, stream: str = "joint", *, dim: int = 32, depth: int = 2, heads: int = 4, chunk: int = 2,
        max_frames: int = 64, window: int | None = None, sinks: int = 0) -> dict[str, Any]:
    """The ``video_transformer`` section of a ``stream`` model (``joint``, ``audio`` or
    ``video`` conditioned on audio); patch ``16 / AUDIO_RATE = 4`` (one audio sample per patch row)."""
    if stream not in STREAMS:
        raise ConfigError(f"omniforcing: stream must be one of {', '.join(STREAMS)}; got {stream!r}.")
    params: dict[str, Any] = {"chunk": chunk, "attention": attention, "dim": dim, "depth": depth, "heads": heads,
                              "patch": 4, "max_frames": max_frames}
    if stream == "video":
        params.update(audio_dim=1, audio_rate=AUDIO_RATE)
    if window is not None:
        params.update(window=window, sinks=sinks)
    return {"name": "video_transformer", "params": params}


def data(stream: str, *, frames: int = 8, n_train: int = 2000, n_test: int = 200, batch_size: int = 16) -> dict[str, Any]:
    """The ``data`` section: :func:`omni_sprites` of ``stream``."""
    return {"dataset": "omni_sprites", "params": {"stream": stream, "frames": frames, "n_train": n_train,
                                                  "n_test": n_test},
            "batch_size": batch_size}


def method(*, steps: int = 2, prefix_chunks: int = 1, fake_updates: int = 1, ode_steps: int = 0,
           pair_steps: int = 4) -> dict[str, Any]:
    """The ``method`` section: Joint Self-Forcing = ``self_forcing`` on the joint tensor. With
    ``ode_steps > 0`` the first ``ode_steps`` training steps are CausVid's ODE-pair regression
    with pairs made online under the batch's conditions, then self-forcing DMD (the staged
    schedule of the ``livetalk`` method, reused as is)."""
    params: dict[str, Any] = {"steps": steps, "prefix_chunks": prefix_chunks, "grad": "all", "exit": "random",
                              "fake_updates": fake_updates}
    if ode_steps < 0:
        raise ConfigError(f"omniforcing: ode_steps must be >= 0, got {ode_steps}.")
    if ode_steps:
        return {"method": {"kind": "livetalk", "params": {**params, "ode_steps": ode_steps, "warmup_steps": 0,
                                                          "final_context": "self", "pair_steps": pair_steps}}}
    return {"method": {"kind": "self_forcing", "params": {**params, "context": "self"}}}


__all__ = ["AUDIO_RATE", "RECIPE", "STREAMS", "data", "joint_av_mask", "method", "net", "omni_sprites", "pack_av",
           "unpack_av"]
