"""Attention masks of streaming (chunk-wise autoregressive) video models.

A streaming model generates a video chunk by chunk; every token carries the index of the chunk
it belongs to (and, for two-stream models, the index of its stream). A mask is a boolean
``(Lq, Lk)`` matrix, ``True`` where query token ``i`` may attend to key token ``j`` (the
convention of :func:`torch.nn.functional.scaled_dot_product_attention`'s boolean masks).

* :func:`block_causal`: causal across chunks, bidirectional inside a chunk (CausVid, Yin et al.
  2025, arXiv:2412.07772; Self-Forcing, Huang et al. 2025, arXiv:2506.08009; SoulX-FlashTalk's
  intra-chunk bidirectional attention). ``bidirectional`` (the teacher) is all ``True``.
* :func:`sliding_window` restricts keys to the last ``window`` chunks; :func:`with_sinks` keeps
  the first ``sinks`` chunks visible to every later query (attention sinks, Xiao et al. 2024,
  arXiv:2309.17453, as rolling-KV streaming video models use them).
* :func:`evicted`: the causal keys a window has dropped, i.e. what a linear-attention memory
  must summarise (Hybrid Forcing's linear temporal attention).
* :func:`two_stream_block_causal`: asymmetric block-causal alignment of two streams at different
  rates (OmniForcing): a query of stream ``a`` in chunk ``i`` sees stream ``b``'s chunks
  ``<= i + lead[a][b]``.

All functions take ``(L,)`` int64 chunk-index vectors and return ``(Lq, Lk)`` bool tensors.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import ConfigError

ATTENTIONS = ("bidirectional", "block_causal", "frame_causal")
"""How a video model's tokens attend: everything (a bidirectional teacher), causal across chunks
and bidirectional inside (``block_causal``), or causal frame by frame (``frame_causal``: a chunk
of one frame; strictly causal inside a chunk)."""


def chunk_ids(frames: int, tokens_per_frame: int, chunk: int, *, start_frame: int = 0) -> torch.Tensor:
    """``(frames * tokens_per_frame,)`` chunk index of each token of ``frames`` consecutive frames
    starting at ``start_frame`` (frame ``f`` is in chunk ``f // chunk``)."""
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1 frame, got {chunk}.")
    f = torch.arange(start_frame, start_frame + frames)
    return (f // chunk).repeat_interleave(tokens_per_frame)


def frame_ids(frames: int, tokens_per_frame: int, *, start_frame: int = 0) -> torch.Tensor:
    """``(frames * tokens_per_frame,)`` frame index of each token."""
    return torch.arange(start_frame, start_frame + frames).repeat_interleave(tokens_per_frame)


def bidirectional(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """All ``True``: ``(len(q), len(k))``."""
    return torch.ones(len(q), len(k), dtype=torch.bool)


def block_causal(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``mask[i, j] = k[j] <= q[i]``: causal across chunks, bidirectional inside one."""
    return k[None, :] <= q[:, None]


def sliding_window(q: torch.Tensor, k: torch.Tensor, window: int) -> torch.Tensor:
    """Block-causal restricted to the last ``window`` chunks: ``0 <= q[i] - k[j] < window``."""
    if window < 1:
        raise ConfigError(f"window must be >= 1 chunk, got {window}.")
    d = q[:, None] - k[None, :]
    return (d >= 0) & (d < window)


def with_sinks(mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor, sinks: int) -> torch.Tensor:
    """``mask`` with the first ``sinks`` chunks also visible to every query at or after them."""
    if sinks < 0:
        raise ConfigError(f"sinks must be >= 0 chunks, got {sinks}.")
    return mask | ((k[None, :] < sinks) & (k[None, :] <= q[:, None]))


def evicted(q: torch.Tensor, k: torch.Tensor, window: int, sinks: int = 0) -> torch.Tensor:
    """The causal keys outside a ``window`` (and not sinks): ``k[j] <= q[i] - window`` and
    ``k[j] >= sinks``. What a linear-attention memory of evicted tokens attends to."""
    return (k[None, :] <= q[:, None] - window) & (k[None, :] >= sinks)


def streaming_mask(q: torch.Tensor, k: torch.Tensor, attention: str = "block_causal", *,
                   window: int | None = None, sinks: int = 0,
                   q_frames: torch.Tensor | None = None, k_frames: torch.Tensor | None = None) -> torch.Tensor:
    """The mask of a model with ``attention`` (one of :data:`ATTENTIONS`), an optional sliding
    ``window`` (chunks) and ``sinks`` (chunks). ``frame_causal`` needs the frame indices
    ``q_frames``/``k_frames`` (causal frame by frame, inside chunks too)."""
    if attention == "bidirectional":
        return bidirectional(q, k)
    if attention not in ATTENTIONS:
        raise ConfigError(f"attention must be one of {', '.join(ATTENTIONS)}; got {attention!r}.")
    mask = block_causal(q, k) if window is None else with_sinks(sliding_window(q, k, window), q, k, sinks)
    if attention == "frame_causal":
        if q_frames is None or k_frames is None:
            raise ConfigError("frame_causal attention needs the frame index of every token.")
        mask = mask & (k_frames[None, :] <= q_frames[:, None])
    return mask


def two_stream_block_causal(q: torch.Tensor, k: torch.Tensor, q_stream: torch.Tensor, k_stream: torch.Tensor,
                            lead: Mapping[int, Mapping[int, int]] | None = None) -> torch.Tensor:
    """Asymmetric block-causal alignment of streams: ``mask[i, j] = k[j] <= q[i] + lead[a][b]``
    with ``a = q_stream[i]``, ``b = k_stream[j]`` (``lead`` default 0: plain block-causal
    across both streams). A lead of ``+1`` from video to audio lets a video chunk see the audio
    of the next chunk (audio leads video); ``-1`` hides the current chunk of the other stream."""
    offset = torch.zeros(len(q), len(k), dtype=torch.long)
    for a, row in (lead or {}).items():
        for b, d in row.items():
            offset[(q_stream == a)[:, None] & (k_stream == b)[None, :]] = int(d)
    return k[None, :] <= q[:, None] + offset


__all__ = ["ATTENTIONS", "bidirectional", "block_causal", "chunk_ids", "evicted", "frame_ids", "sliding_window",
           "streaming_mask", "two_stream_block_causal", "with_sinks"]
