"""A small spatio-temporal video transformer: the bidirectional teacher and the causal,
chunk-wise streaming student, with a KV cache.

:class:`VideoTransformer` splits each frame into ``p x p`` patches (``tokens_per_frame = (H/p)^2``
tokens), adds a learned spatial embedding and a sinusoidal embedding of the frame's absolute
index (a table of ``max_frames`` rows: a rollout longer than the table is refused), and runs
DiT-style blocks (adaLN-Zero modulation per token from the embedding of that frame's noise level,
Peebles & Xie 2023, arXiv:2212.09748) whose attention is masked by :mod:`.masks`:

* ``attention="bidirectional"``: every token sees every token (the many-step teacher);
* ``"block_causal"``: causal across chunks of ``chunk`` frames, bidirectional inside
  (CausVid, Yin et al. 2025, arXiv:2412.07772; Self-Forcing, Huang et al. 2025, arXiv:2506.08009);
* ``"frame_causal"``: causal frame by frame (the strictly causal ablation of SoulX-FlashTalk);
* ``window`` (chunks) and ``sinks`` (chunks): a sliding window with attention sinks, i.e. a
  rolling KV cache of bounded size; ``memory="linear"`` adds a linear-attention memory of the
  tokens the window evicted (Hybrid Forcing), ``phi(q) S / phi(q) z`` with
  ``S = sum phi(k) v^T``, ``z = sum phi(k)``, ``phi = elu + 1`` (Katharopoulos et al. 2020,
  arXiv:2006.16236), added through a per-head gate ``tanh(g)`` that starts at 0 (so the memory
  can be switched on after a dense stage without changing the model).

Three ways to call the same weights:

``forward(x_t, t, cond)``
    ``x_t`` ``(B, T, C, H, W)``; ``t`` ``(B,)`` or ``(B, T)`` (a noise level per frame:
    diffusion forcing); every frame is context for the later chunks (the mask alone makes it
    causal). This is the ``net(x_t, t, cond)`` of the generative engine's
    :class:`~distillery.generative.denoisers.Denoiser`.
``forward(x_t, t, cond, context=x_c, context_t=t_c)``
    teacher forcing: chunk ``i`` of ``x_t`` sees the *context* frames ``x_c`` (clean, or noised
    to ``t_c``) of chunks ``< i`` and itself; the context frames see only each other,
    block-causally. The output is the prediction for ``x_t``.
:meth:`init_cache`, :meth:`denoise_chunk`, :meth:`append_chunk`
    streaming: the cache holds each layer's keys and values of the context chunks generated so
    far; :meth:`denoise_chunk` predicts a noisy chunk from the cache, :meth:`append_chunk` runs
    a finished chunk (at the context noise level) and stores its keys and values, evicting the
    chunks that left the window (into the linear memory when there is one).

The three agree: streaming generation with the cache equals the teacher-forcing forward pass
on the same context (tested to float tolerance, with windows, sinks and the linear memory).

Conditions (``cond``): ``None``, a ``(B,)`` int tensor of class labels, or a dict with any of
``"y"`` ``(B,)`` labels, ``"audio"`` ``(B, T * rate, A)`` (``audio_rate`` samples of
``audio_dim`` channels per frame) and ``"actions"`` ``(B, T)`` ints; audio and actions are
given for the whole horizon (absolute frames) and embedded per frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..generative.denoisers import DENOISERS, TimeEmbedding
from .masks import ATTENTIONS, evicted, streaming_mask

__all__ = ["KVCache", "VideoTransformer", "sinusoidal_table"]

CTX, NOISY = 0, 1  # token roles: context (seen by later chunks) and the chunk being denoised

LAYOUTS = ("divided", "joint")
"""How a block's attention spans space and time: ``divided`` (Bertasius et al. 2021,
arXiv:2102.05095, TimeSformer's divided space-time attention: even blocks attend within a frame,
odd blocks across frames at the same patch position, both under the streaming mask), or
``joint`` (every block attends over all visible tokens)."""


def sinusoidal_table(rows: int, dim: int) -> torch.Tensor:
    """``(rows, dim)`` sinusoidal position features (Vaswani et al. 2017)."""
    pos = torch.arange(rows, dtype=torch.float32)[:, None]
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half, 1))
    table = torch.zeros(rows, dim)
    table[:, 0:2 * half:2] = torch.sin(pos * freq)
    table[:, 1:2 * half:2] = torch.cos(pos * freq)
    return table


def _phi(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1.0


def _per_frame(x: torch.Tensor, frames: int) -> torch.Tensor:
    """``(B, F n, dim)`` viewed as ``(B, F, n, dim)``."""
    b, N, d = x.shape
    return x.reshape(b, frames, N // frames, d)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN per frame: tokens ``(B, F n, dim)``, ``shift``/``scale`` ``(B, F, 1, dim)``."""
    return (_per_frame(x, shift.shape[1]) * (1 + scale) + shift).reshape(x.shape)


def _gate(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return (_per_frame(x, gate.shape[1]) * gate).reshape(x.shape)


@dataclass
class KVCache:
    """Keys and values of the context tokens, per layer, for streaming generation.

    ``k[l]``, ``v[l]``: ``(B, heads, L, head_dim)``; ``chunks``, ``frames``: ``(L,)`` chunk and
    frame index of each cached token; ``S[l]`` ``(B, heads, head_dim, head_dim)`` and ``z[l]``
    ``(B, heads, head_dim)``: the linear memory of evicted tokens (``None`` until a token is
    evicted, or when the model has no memory). ``next_chunk``: the chunk the stream is at."""

    depth: int
    k: list[torch.Tensor | None] = field(default_factory=list)
    v: list[torch.Tensor | None] = field(default_factory=list)
    S: list[torch.Tensor | None] = field(default_factory=list)
    z: list[torch.Tensor | None] = field(default_factory=list)
    chunks: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    frames: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    next_chunk: int = 0

    def __post_init__(self) -> None:
        for name in ("k", "v", "S", "z"):
            if not getattr(self, name):
                setattr(self, name, [None] * self.depth)

    def __len__(self) -> int:
        return int(self.chunks.numel())

    def detach_(self) -> KVCache:
        """Cut the graph through every cached tensor (gradient truncation at the cache)."""
        for name in ("k", "v", "S", "z"):
            setattr(self, name, [None if t is None else t.detach() for t in getattr(self, name)])
        return self

    def nbytes(self) -> int:
        """Bytes held by the cached tensors."""
        return sum(t.numel() * t.element_size() for name in ("k", "v", "S", "z") for t in getattr(self, name) if t is not None)


class _Block(nn.Module):
    """adaLN-Zero transformer block with masked attention over ``[cached keys, current keys]``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, memory: bool) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = max(1, round(dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)
        self.memory_gate = nn.Parameter(torch.zeros(heads)) if memory else None

    def split(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, d = h.shape
        qkv = self.qkv(h).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]  # (B, heads, N, head_dim)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, mask: torch.Tensor, mem_mask: torch.Tensor | None,
                past: tuple[torch.Tensor, torch.Tensor] | None, state: tuple[torch.Tensor, torch.Tensor] | None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` ``(B, N, dim)`` with ``N = F n`` (``n`` tokens per frame, frame-major), ``emb``
        ``(B, F, dim)`` per frame; ``mask`` ``(N, Lp + N)`` over ``[past keys, current keys]``;
        ``mem_mask`` ``(N, Lp + N)``: keys the linear memory attends to explicitly (the no-cache
        path); ``state``: ``(S, z)`` of evicted tokens (the cache path). Returns the output and
        this layer's current keys and values."""
        s1, c1, g1, s2, c2, g2 = self.ada(F.silu(emb)).unsqueeze(2).chunk(6, dim=-1)  # (B, F, 1, dim) each
        h = _modulate(self.norm1(x), s1, c1)
        q, k, v = self.split(h)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask.to(q.device))
        if self.memory_gate is not None:
            lin = self._linear_memory(q, keys, values, mem_mask, state)
            out = out + torch.tanh(self.memory_gate)[None, :, None, None] * lin
        b, _, n, _ = q.shape
        x = x + _gate(self.proj(out.transpose(1, 2).reshape(b, n, -1)), g1)
        x = x + _gate(self.mlp(_modulate(self.norm2(x), s2, c2)), g2)
        return x, k, v

    @staticmethod
    def _linear_memory(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mem_mask: torch.Tensor | None,
                       state: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        pq = _phi(q)
        num = torch.zeros_like(q)
        den = torch.zeros(q.shape[:-1], dtype=q.dtype, device=q.device)
        if mem_mask is not None and bool(mem_mask.any()):
            a = (pq @ _phi(keys).transpose(-2, -1)) * mem_mask.to(q.device, q.dtype)
            num, den = num + a @ values, den + a.sum(-1)
        if state is not None:
            S, z = state
            num, den = num + pq @ S, den + (pq * z[:, :, None, :]).sum(-1)
        return torch.where(den[..., None] > 0, num / den.clamp_min(1e-12)[..., None], torch.zeros_like(num))


@DENOISERS.register("video_transformer")
class VideoTransformer(nn.Module):
    """Video denoiser over ``(B, T, C, H, W)``; see the module docstring.

    Args:
        frames: frames per training video ``T`` (the data's; the position table holds
            ``max_frames`` >= it).
        in_channels, image_size: ``C`` and ``H = W``.
        patch: patch side ``p`` (divides ``image_size``).
        dim, depth, heads, mlp_ratio: transformer width, blocks, heads, MLP ratio.
        chunk: frames per chunk (divides ``frames``).
        attention: one of :data:`~.masks.ATTENTIONS`.
        window, sinks: sliding window and sinks, in chunks (``window=None``: unbounded).
        memory: ``"none"`` or ``"linear"`` (a linear-attention memory of evicted tokens; needs
            a ``window``).
        max_frames: rows of the frame position table (longest rollout).
        num_classes: class-conditional when given.
        audio_dim, audio_rate: an audio condition of ``audio_rate`` samples of ``audio_dim``
            channels per frame (0: none).
        num_actions: an action condition with this many actions (0: none).
    """

    shape_kind = "video"

    def __init__(self, frames: int, in_channels: int = 1, image_size: int = 16, *, patch: int = 4, dim: int = 64,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0, chunk: int = 4,
                 attention: str = "block_causal", layout: str = "divided", window: int | None = None, sinks: int = 0,
                 memory: str = "none",
                 max_frames: int = 256, num_classes: int | None = None, audio_dim: int = 0, audio_rate: int = 1,
                 num_actions: int = 0) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ConfigError(f"video_transformer: attention must be one of {', '.join(ATTENTIONS)}; got {attention!r}.")
        if image_size % patch:
            raise ConfigError(f"video_transformer: patch {patch} does not divide the image size {image_size}.")
        if chunk < 1 or frames % chunk:
            raise ConfigError(f"video_transformer: chunk {chunk} does not divide the {frames} frames of a video; "
                              f"choose a chunk size that divides it.")
        if dim % heads:
            raise ConfigError(f"video_transformer: dim {dim} is not divisible by heads {heads}.")
        if memory not in ("none", "linear"):
            raise ConfigError(f"video_transformer: memory must be 'none' or 'linear', got {memory!r}.")
        if layout not in LAYOUTS:
            raise ConfigError(f"video_transformer: layout must be one of {', '.join(LAYOUTS)}; got {layout!r}.")
        if memory == "linear" and layout != "joint":
            raise ConfigError("video_transformer: memory 'linear' is written for layout 'joint' (one memory over all "
                              "evicted tokens); set layout: joint.")
        if memory == "linear" and window is None:
            raise ConfigError("video_transformer: memory 'linear' summarises tokens evicted from a window; set window.")
        if max_frames < frames:
            raise ConfigError(f"video_transformer: max_frames {max_frames} is shorter than a training video ({frames}).")
        self.frames, self.channels, self.size, self.patch = frames, in_channels, image_size, patch
        self.chunk, self.attention, self.window, self.sinks = chunk, attention, window, sinks
        self.layout = layout
        self.memory, self.max_frames = memory, max_frames
        self.dim, self.depth, self.feature_dim = dim, depth, dim
        self.grid = image_size // patch
        self.tokens_per_frame = self.grid * self.grid
        self.num_classes, self.audio_dim, self.audio_rate, self.num_actions = num_classes, audio_dim, audio_rate, num_actions
        self.embed = nn.Linear(in_channels * patch * patch, dim)
        self.spatial = nn.Parameter(torch.randn(self.tokens_per_frame, dim) * 0.02)
        self.register_buffer("frame_table", sinusoidal_table(max_frames, dim), persistent=False)
        self.time = TimeEmbedding(dim)
        self.label = nn.Embedding(num_classes + 1, dim) if num_classes else None
        self.audio = nn.Linear(audio_dim * audio_rate, dim) if audio_dim else None
        self.action = nn.Embedding(num_actions, dim) if num_actions else None
        self.blocks = nn.ModuleList(_Block(dim, heads, mlp_ratio, memory == "linear") for _ in range(depth))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, in_channels * patch * patch)
        for layer in (self.final_ada, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # -- tokens ---------------------------------------------------------------------------
    def _check(self, x: torch.Tensor, start: int) -> None:
        if x.dim() != 5 or tuple(x.shape[2:]) != (self.channels, self.size, self.size):
            raise ConfigError(f"video_transformer: expected videos (B, T, {self.channels}, {self.size}, {self.size}); "
                              f"got {tuple(x.shape)}.")
        if start + x.shape[1] > self.max_frames:
            raise ConfigError(f"video_transformer: a rollout to frame {start + x.shape[1]} exceeds the position table "
                              f"(max_frames={self.max_frames}); build the model with a larger max_frames.")

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        b, f, c, h, w = x.shape
        p, g = self.patch, self.grid
        x = x.reshape(b, f, c, g, p, g, p).permute(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(b, f * g * g, c * p * p)

    def _unpatchify(self, tokens: torch.Tensor, frames: int) -> torch.Tensor:
        b = tokens.shape[0]
        p, g, c = self.patch, self.grid, self.channels
        x = tokens.reshape(b, frames, g, g, c, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, frames, c, g * p, g * p)

    def _frame_cond(self, cond: Any, b: int, start: int, frames: int, device: torch.device) -> torch.Tensor:
        """``(B, frames, dim)``: the per-frame embedding of the conditions (labels, audio, actions)."""
        out = torch.zeros(b, frames, self.dim, device=device)
        parts = cond if isinstance(cond, dict) else {"y": cond}
        if self.label is not None:
            y = parts.get("y")
            y = torch.full((b,), self.num_classes, device=device, dtype=torch.long) if y is None else y.to(device).long()
            out = out + self.label(y)[:, None, :]
        stop = start + frames
        if self.audio is not None:
            audio = parts.get("audio")
            if audio is None:
                raise ConfigError("video_transformer: this model is audio-conditioned; pass cond={'audio': (B, T*rate, A)}.")
            if audio.dim() != 3 or audio.shape[2] != self.audio_dim or audio.shape[1] < stop * self.audio_rate:
                raise ConfigError(f"video_transformer: the audio stream has shape {tuple(audio.shape)}; frames up to {stop} "
                                  f"need (B, >= {stop * self.audio_rate}, {self.audio_dim}) ({self.audio_rate} samples per frame).")
            a = audio[:, start * self.audio_rate:stop * self.audio_rate].reshape(b, frames, self.audio_rate * self.audio_dim)
            out = out + self.audio(a.to(out.dtype))
        if self.action is not None:
            actions = parts.get("actions")
            if actions is None:
                raise ConfigError("video_transformer: this model is action-conditioned; pass cond={'actions': (B, T)}.")
            if actions.dim() != 2 or actions.shape[1] < stop:
                raise ConfigError(f"video_transformer: the action stream has shape {tuple(actions.shape)}; frames up to "
                                  f"{stop} need (B, >= {stop}).")
            out = out + self.action(actions[:, start:stop].to(device).long())
        return out

    def _tokens(self, x: torch.Tensor, t: torch.Tensor, cond: Any, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states ``(B, F*n, dim)`` and their modulation embedding ``(B, F*n, dim)``."""
        self._check(x, start)
        b, f = x.shape[:2]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(b) if t.dim() == 0 else t
        t = t[:, None].expand(b, f) if t.dim() == 1 else t
        if t.shape != (b, f):
            raise ConfigError(f"video_transformer: times must be (B,) or (B, T) = ({b}, {f}); got {tuple(t.shape)}.")
        n = self.tokens_per_frame
        temb = self.time(t.reshape(-1)).reshape(b, f, self.dim)
        emb = temb + self._frame_cond(cond, b, start, f, x.device).to(temb.dtype)  # (B, F, dim)
        frame_pos = self.frame_table[start:start + f].to(x.dtype)  # (F, dim)
        h = self.embed(self._patchify(x)).reshape(b, f, n, self.dim)
        h = h + self.spatial[None, None] + (frame_pos[None] + emb)[:, :, None]
        return h.reshape(b, f * n, self.dim), emb

    def _ids(self, frames: int, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.arange(start, start + frames).repeat_interleave(self.tokens_per_frame)
        return f // self.chunk, f

    # -- masks ----------------------------------------------------------------------------
    def _masks(self, qc: torch.Tensor, qf: torch.Tensor, qr: torch.Tensor, kc: torch.Tensor, kf: torch.Tensor,
               kr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The attention mask and the linear memory's mask for queries/keys with chunk ``c``,
        frame ``f`` and role ``r`` (:data:`CTX` or :data:`NOISY`) vectors."""
        mask = streaming_mask(qc, kc, self.attention, window=self.window, sinks=self.sinks, q_frames=qf, k_frames=kf)
        if self.attention == "bidirectional":
            return mask, None
        q_noisy, k_noisy = (qr == NOISY)[:, None], (kr == NOISY)[None, :]
        same = qc[:, None] == kc[None, :]
        earlier = kc[None, :] < qc[:, None]
        # context queries see context keys (block-causal); a noisy chunk sees earlier context and itself
        mask = mask & ((~q_noisy & ~k_noisy) | (q_noisy & ~k_noisy & earlier) | (q_noisy & k_noisy & same))
        mem = None
        if self.memory == "linear":
            mem = evicted(qc, kc, self.window, self.sinks) & ~k_noisy
        return mask, mem

    def _run(self, h: torch.Tensor, emb: torch.Tensor, ids: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
             cache: KVCache | None = None) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        qc, qf, qr = ids
        if cache is not None and len(cache):
            kc, kf = torch.cat([cache.chunks, qc]), torch.cat([cache.frames, qf])
            kr = torch.cat([torch.full_like(cache.chunks, CTX), qr])
        else:
            kc, kf, kr = qc, qf, qr
        mask, mem = self._masks(qc, qf, qr, kc, kf, kr)
        if mem is not None and cache is not None:
            mem = None  # with a cache, evicted tokens live in the state, not among the keys
        masks = [mask] * 2
        if self.layout == "divided":  # tokens arrive frame by frame: position within the frame = index mod n
            n = self.tokens_per_frame
            qs = torch.arange(len(qc)) % n
            ks = torch.arange(len(kc)) % n
            masks = [mask & (qf[:, None] == kf[None, :]), mask & (qs[:, None] == ks[None, :])]
        kv = []
        for layer, block in enumerate(self.blocks):
            mask = masks[layer % 2]
            past = None
            state = None
            if cache is not None and len(cache):
                past = (cache.k[layer], cache.v[layer])
            if cache is not None and cache.S[layer] is not None:
                state = (cache.S[layer], cache.z[layer])
            h, k, v = block(h, emb, mask, mem, past, state)
            kv.append((k, v))
        return h, kv

    def _head(self, h: torch.Tensor, emb: torch.Tensor, frames: int) -> torch.Tensor:
        shift, scale = self.final_ada(F.silu(emb)).unsqueeze(2).chunk(2, dim=-1)
        return self._unpatchify(self.out(_modulate(self.norm(h), shift, scale)), frames)

    # -- the three ways in ----------------------------------------------------------------
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None, *, context: torch.Tensor | None = None,
                context_t: torch.Tensor | float = 0.0, start_frame: int = 0) -> torch.Tensor:
        """The prediction for ``x_t`` ``(B, T, C, H, W)`` at times ``t`` ``(B,)`` / ``(B, T)``;
        with ``context`` ``(B, T, C, H, W)`` (at ``context_t``): teacher forcing (see the
        module docstring)."""
        f = x_t.shape[1]
        h, emb = self._tokens(x_t, t, cond, start_frame)
        c, fr = self._ids(f, start_frame)
        if context is None:
            h, _ = self._run(h, emb, (c, fr, torch.full_like(c, CTX)))
            return self._head(h, emb, f)
        if context.shape != x_t.shape:
            raise ConfigError(f"video_transformer: context {tuple(context.shape)} must have the shape of x_t {tuple(x_t.shape)}.")
        hc, embc = self._tokens(context, context_t, cond, start_frame)
        n = h.shape[1]
        ids = (torch.cat([c, c]), torch.cat([fr, fr]), torch.cat([torch.full_like(c, CTX), torch.full_like(c, NOISY)]))
        out, _ = self._run(torch.cat([hc, h], 1), torch.cat([embc, emb], 1), ids)
        return self._head(out[:, -n:], emb, f)

    def features(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """``(B, dim)``: mean of the last block's token states (a GAN head's input)."""
        h, emb = self._tokens(x_t, t, cond, 0)
        c, fr = self._ids(x_t.shape[1], 0)
        h, _ = self._run(h, emb, (c, fr, torch.full_like(c, CTX)))
        return self.norm(h).mean(1)

    def init_cache(self) -> KVCache:
        """An empty cache for a new stream."""
        if self.attention == "bidirectional":
            raise ConfigError("video_transformer: a bidirectional model cannot stream; use attention 'block_causal'.")
        return KVCache(self.depth)

    def _evict(self, cache: KVCache, chunk_index: int) -> None:
        """Drop cached chunks outside the window of ``chunk_index`` (not sinks), folding them
        into the linear memory when the model has one."""
        if self.window is None or not len(cache):
            return
        gone = (cache.chunks <= chunk_index - self.window) & (cache.chunks >= self.sinks)
        if not bool(gone.any()):
            return
        keep = ~gone
        for layer in range(self.depth):
            k, v = cache.k[layer], cache.v[layer]
            if self.memory == "linear":
                pk = _phi(k[:, :, gone])
                S = pk.transpose(-2, -1) @ v[:, :, gone]
                z = pk.sum(2)
                cache.S[layer] = S if cache.S[layer] is None else cache.S[layer] + S
                cache.z[layer] = z if cache.z[layer] is None else cache.z[layer] + z
            cache.k[layer], cache.v[layer] = k[:, :, keep], v[:, :, keep]
        cache.chunks, cache.frames = cache.chunks[keep], cache.frames[keep]

    def denoise_chunk(self, x_t: torch.Tensor, t: torch.Tensor, cache: KVCache, chunk_index: int,
                      cond: Any = None) -> torch.Tensor:
        """The prediction for the noisy chunk ``x_t`` ``(B, chunk, C, H, W)`` number
        ``chunk_index`` at ``t`` ``(B,)``, attending to the cache and itself."""
        if x_t.shape[1] != self.chunk:
            raise ConfigError(f"video_transformer: a chunk has {self.chunk} frames; got {x_t.shape[1]}.")
        start = chunk_index * self.chunk
        self._evict(cache, chunk_index)
        h, emb = self._tokens(x_t, t, cond, start)
        c, fr = self._ids(self.chunk, start)
        h, _ = self._run(h, emb, (c, fr, torch.full_like(c, NOISY)), cache)
        return self._head(h, emb, self.chunk)

    def append_chunk(self, x: torch.Tensor, cache: KVCache, chunk_index: int, cond: Any = None,
                     t: torch.Tensor | float = 0.0) -> KVCache:
        """Run the finished chunk ``x`` ``(B, chunk, C, H, W)`` at the context noise level ``t``
        and add its keys and values to ``cache`` (in place; returned)."""
        if x.shape[1] != self.chunk:
            raise ConfigError(f"video_transformer: a chunk has {self.chunk} frames; got {x.shape[1]}.")
        if chunk_index != cache.next_chunk:
            raise ConfigError(f"video_transformer: the cache is at chunk {cache.next_chunk}; cannot append chunk {chunk_index}.")
        start = chunk_index * self.chunk
        self._evict(cache, chunk_index)
        h, emb = self._tokens(x, t, cond, start)
        c, fr = self._ids(self.chunk, start)
        _, kv = self._run(h, emb, (c, fr, torch.full_like(c, CTX)), cache)
        for layer, (k, v) in enumerate(kv):
            cache.k[layer] = k if cache.k[layer] is None else torch.cat([cache.k[layer], k], 2)
            cache.v[layer] = v if cache.v[layer] is None else torch.cat([cache.v[layer], v], 2)
        cache.chunks, cache.frames = torch.cat([cache.chunks, c]), torch.cat([cache.frames, fr])
        cache.next_chunk = chunk_index + 1
        return cache
