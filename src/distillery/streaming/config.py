"""The config of a streaming run (``engine: streaming``): a generative config on videos.

Everything but ``eval`` is the generative engine's (:mod:`distillery.generative.config`): data
(a video dataset: ``sprite_videos``, ``gridworld_videos``), process, teacher, student (a
``video_transformer``), method (``video_denoising``, ``streaming_ode_init``, ``self_forcing`` or
a recipe's), train. ``eval`` streams ``num_videos`` test videos for ``chunks`` chunks (default:
the training length; longer shows drift), starting from ``prefix_chunks`` real chunks, at each
step count of ``steps`` (per chunk), scored by the streaming metrics against the procedural
ground truth, with a film strip and a GIF of the first videos (``media``).

Example (``configs/self_forcing_sprites.yaml``)::

    engine: streaming
    data: {dataset: sprite_videos, params: {frames: 16}, batch_size: 16}
    process: {kind: flow}
    teacher: {kind: run, run: runs/video_teacher_sprites}
    student: {denoiser: {name: video_transformer, params: {chunk: 4}}, prediction: x0, init: teacher}
    method: {kind: self_forcing, params: {steps: 2, prefix_chunks: 1}}
    train: {steps: 300, optimizer: {name: adam, lr: 1.0e-4}}
    eval: {steps: [1, 2], num_videos: 64, chunks: 8, metrics: [position_error, flicker]}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from ..config.base import PosInt, Strict
from ..generative.config import GenerativeConfig

STREAM_METRICS = ("position_error", "flicker", "drift", "sync_error", "revisit_consistency", "timing")


class StreamingEvalCfg(Strict):
    """Streaming evaluation: ``num_videos`` rollouts of ``chunks`` chunks from ``prefix_chunks``
    real chunks, at ``steps`` denoising steps per chunk; ``metrics`` from
    :data:`STREAM_METRICS` (``timing``: frames per second of one stream and the latency of
    its first chunk); ``media``: write a film strip PNG and a GIF per step count."""

    steps: list[PosInt] = [1, 2]
    num_videos: PosInt = 64
    chunks: PosInt | None = None
    prefix_chunks: int = 1
    metrics: list[Literal["position_error", "flicker", "drift", "sync_error", "revisit_consistency", "timing"]] = [
        "position_error", "flicker"]
    media: bool = True
    seed: int = 1234

    @model_validator(mode="after")
    def _prefix(self) -> StreamingEvalCfg:
        if self.prefix_chunks < 0:
            raise ValueError(f"prefix_chunks must be >= 0, got {self.prefix_chunks}")
        if self.chunks is not None and self.prefix_chunks >= self.chunks:
            raise ValueError(f"prefix_chunks ({self.prefix_chunks}) must be fewer than the rollout's chunks ({self.chunks})")
        return self


class StreamingConfig(GenerativeConfig):
    """A whole streaming run (``engine: streaming``)."""

    engine: Literal["streaming"]  # type: ignore[assignment]
    eval: StreamingEvalCfg = StreamingEvalCfg()  # type: ignore[assignment]


def parse_streaming_config(raw: dict[str, Any], source: str = "config") -> StreamingConfig:
    """Validate a raw dict; a failure is a ConfigError naming every bad key. Importing this
    module registers the streaming datasets, networks and methods."""
    from ..config.messages import validate_config
    from . import register

    register()
    return validate_config(StreamingConfig, raw, source)


__all__ = ["STREAM_METRICS", "StreamingConfig", "StreamingEvalCfg", "parse_streaming_config"]
