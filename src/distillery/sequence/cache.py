"""A cached LM teacher: the teacher's top-k log-probabilities per completion token, on disk.

Offline distillation of language models (DistillKit's "offline top-k logits"; the sparse
teacher of Hinton et al. 2015, arXiv:1503.02531, truncated to its ``k`` largest entries plus a
tail bucket) runs the teacher once over a dataset of ``(prompt_ids, completion_ids)`` pairs
and keeps, for every completion token, what :func:`~.divergences.topk_token_divergence`
needs: the ``k`` most likely next-token ids, their log-probabilities and the probability mass
of the other ``V - k`` tokens (the tail), all at the cache temperature ``T``.

**Per-token format** (``3k + 3`` bytes at ``V <= 65536``; 99 bytes at ``k = 32``, see
:func:`bytes_per_token`)::

    ids       [k]      uint16 (V <= 65536) or int32: the teacher's top-k token ids, most likely first
    codes     [k - 1]  uint8: gaps g_i = log p_0 - log p_i (i = 1..k-1, g_i >= 0), as round(g_i / s)
    scale     []       float16: s = g_{k-1} / 255 (the largest gap over 255 codes)
    log_tail  []       float16: log of the tail mass (-inf when nothing is outside the top k)

The top-1 log-probability itself is *not* stored: the kept probabilities must sum to ``1 -
tail``, so ``log p_0 = log(1 - tail) - log sum_i exp(-g_i)`` (what :func:`dequantise_topk`
computes; :func:`~.divergences.topk_token_divergence` renormalises to ``1 - tail`` anyway).
The gap of token ``i`` is off by at most ``s / 2`` (plus float16 rounding of ``s``, at most
``255 s 2^-11``); gaps are clipped at :data:`MAX_GAP` nats (a probability ``e^-100`` times the
top-1's). Storing int32 ids and float16 values would take ``6k + 2 = 194`` bytes per token at
``k = 32``; per-token uint8 codes with a scale and an offset 100 + 2 (the offset is redundant
with the tail mass). The tail is stored as a log so that a tail of ``1e-9`` is not flushed to
zero by float16 (which would make the cached teacher put probability 0 on tokens the dense
teacher gives mass to).

**KL error** (measured by :func:`topk_cache_error`; ``distillery bench`` row
``topk_cache_bytes_per_token``, a 32,000-token TinyGPT teacher of mean entropy 2.7 nats, 1,024
tokens): the value precision costs ``KL(exact top-k || cached)`` on the ``k + 1`` coarsened
outcomes of 1.7e-6, 6.3e-6 and 1.0e-5 nats per token at ``k`` = 8, 32, 64, and moves a random
student's loss by about 2e-5 nats per token. The truncation to ``k`` tokens, which any top-k
cache pays, costs far more: ``KL(dense || cached)`` with the tail spread uniformly was 1.36,
0.54 and 0.31 nats per token there (tail mass 0.26, 0.12, 0.076), and in a student's loss the
gap is exactly ``T^2 tail KL(p(.|tail) || q(.|tail))`` (the module docstring of
:mod:`distillery.objectives.topk`). The float16 log tail is off by at most ``|log tail|
2^-11`` relative.

**On disk** (written into a staging directory and moved into place only when complete, like
:mod:`distillery.cache.store`, whose helpers and errors it reuses)::

    DIR/
      manifest.json                 written last: format, k, V, T, dtypes, fingerprints, shards
      shards/00000.safetensors      examples [0, S): ids [n, k], codes [n, k-1], scale [n],
      shards/00001.safetensors      log_tail [n] over their n completion tokens, lengths [S] int32
      ...

Shard ``j`` holds examples ``j*S .. (j+1)*S - 1`` (``S`` = ``shard_size``) in dataset order,
their completion tokens concatenated. The manifest records each shard's byte size and sha256
(checked when the cache is opened), the dataset's fingerprint (:func:`dataset_fingerprint`,
the token ids of every pair) and the teacher's
(:func:`~distillery.cache.builder.teacher_fingerprint`).

:class:`LMCache` reads it: :meth:`LMCache.batch` gives, for example indices, the top-k ids,
log-probs and tail mass right-padded to ``(B, N, k)`` exactly like the completions of
:func:`~.teachers.dataset_rollout` for the same examples, so that
``topk_token_divergence(student_completion_logits, *cache.batch(idx)[:3], mask)`` replaces a
dense teacher's forward KL.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from ..objectives._common import check_temperature

__all__ = [
    "FORMAT",
    "MAX_GAP",
    "CachedTopK",
    "LMCache",
    "build_lm_cache",
    "bytes_per_token",
    "dataset_fingerprint",
    "dequantise_topk",
    "index_dtype",
    "quantise_topk",
    "topk_cache_error",
    "topk_logprobs",
]

FORMAT = "distillery-lm-topk-cache"
VERSION = 1
MANIFEST = "manifest.json"
#: Gaps ``log p_0 - log p_i`` are clipped at this many nats before quantisation.
MAX_GAP = 100.0
_CODES = 255
_FIELDS = ("ids", "codes", "scale", "log_tail", "lengths")

Example = tuple[Sequence[int], Sequence[int]]


# --------------------------------------------------------------------------------------
# the per-token encoding
# --------------------------------------------------------------------------------------


def index_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` for ``vocab_size <= 65536`` (ids 0..65535), else ``int32``."""
    return np.dtype(np.uint16) if int(vocab_size) <= 65536 else np.dtype(np.int32)


def bytes_per_token(k: int, vocab_size: int) -> int:
    """Stored bytes per completion token: ``k`` ids (2 or 4 bytes), ``k - 1`` uint8 codes, a
    float16 scale and a float16 log tail mass; ``3k + 3`` for ``vocab_size <= 65536``
    (99 at ``k = 32``, 27 at ``k = 8``, 195 at ``k = 64``). Shard headers and the per-example
    lengths (4 bytes per example) come on top (:attr:`LMCache.bytes_per_token` measures them)."""
    if int(k) < 1:
        raise ConfigError(f"bytes_per_token: k must be a positive integer, got {k!r}.")
    return int(k) * index_dtype(vocab_size).itemsize + (int(k) - 1) + 2 + 2


@torch.no_grad()
def topk_logprobs(teacher_logits: Tensor, k: int, temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """``(ids, logprobs, log_tail)`` of ``teacher_logits [..., V]`` at ``temperature``, in float64.

    ``ids`` int64 ``[..., k]`` (most likely first), ``logprobs = log softmax(z / T)`` at them
    ``[..., k]``, and the log of the mass of the other tokens ``[...]`` (``-inf`` for ``k = V``),
    computed in log space (a tail of ``1e-30`` keeps its value). The same ids and (up to
    float32 rounding) values as :func:`~.divergences.topk_teacher`.
    """
    T = check_temperature("temperature", temperature)
    V = teacher_logits.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= V:
        raise ConfigError(f"k must be an integer in [1, {V}] for a vocabulary of {V}, got {k!r}.")
    log_p = F.log_softmax(teacher_logits.double() / T, dim=-1)
    values, ids = log_p.topk(k, dim=-1)
    if k == V:
        log_tail = torch.full(log_p.shape[:-1], -math.inf, dtype=torch.float64, device=log_p.device)
    else:
        log_tail = torch.logsumexp(log_p.scatter(-1, ids, -math.inf), dim=-1)
    return ids, values, log_tail


def quantise_topk(logprobs: Tensor, log_tail: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode sorted top-k log-probs ``[N, k]`` and log tail masses ``[N]`` (any float dtype).

    Returns ``codes`` uint8 ``[N, k - 1]``, ``scale`` float16 ``[N]`` and ``log_tail`` float16
    ``[N]`` (module docstring). The scale is rounded to float16 *before* the codes are formed,
    so that decoding uses exactly the scale the codes were made with.
    """
    lp = logprobs.detach().double().cpu()
    if lp.ndim != 2 or tuple(log_tail.shape) != (lp.shape[0],):
        raise ConfigError(f"quantise_topk: expected logprobs [N, k] and log_tail [N], got {list(lp.shape)} "
                          f"and {list(log_tail.shape)}.")
    gaps = (lp[:, :1] - lp[:, 1:]).nan_to_num(nan=MAX_GAP).clamp(0.0, MAX_GAP)  # [N, k-1]
    if gaps.shape[1] == 0:
        scale = torch.zeros(lp.shape[0], dtype=torch.float64)
    else:
        scale = gaps.max(dim=1).values / _CODES
    scale16 = scale.to(torch.float16)
    s = scale16.double()[:, None]
    codes = torch.where(s > 0, torch.round(gaps / s.clamp(min=1e-300)), torch.zeros_like(gaps)).clamp(0, _CODES)
    return (codes.to(torch.uint8).numpy(), scale16.numpy(),
            log_tail.detach().double().cpu().clamp(max=0.0).to(torch.float16).numpy())


def dequantise_topk(codes: Any, scale: Any, log_tail: Any) -> tuple[Tensor, Tensor]:
    """Decode :func:`quantise_topk`: ``(logprobs float32 [N, k], tail_mass float32 [N])``.

    ``log p_i = log(1 - tail) - g_i - log sum_j exp(-g_j)`` with ``g_0 = 0``, ``g_i = code_i *
    scale``: the kept probabilities sum to ``1 - tail`` exactly (up to float rounding).
    """
    c = torch.as_tensor(np.asarray(codes)).double()
    s = torch.as_tensor(np.asarray(scale).astype(np.float64))
    lt = torch.as_tensor(np.asarray(log_tail).astype(np.float64))
    rel = -torch.cat([torch.zeros(c.shape[0], 1, dtype=torch.float64), c * s[:, None]], dim=1)  # [N, k]
    log_kept = torch.log(-torch.expm1(lt))  # log(1 - tail); 0 for tail = 0
    logprobs = log_kept[:, None] + rel - torch.logsumexp(rel, dim=1, keepdim=True)
    return logprobs.float(), lt.exp().float()


# --------------------------------------------------------------------------------------
# fingerprints and checks
# --------------------------------------------------------------------------------------


def _check_dataset(dataset: Sequence[Example]) -> list[tuple[list[int], list[int]]]:
    if len(dataset) == 0:
        raise DataError("build_lm_cache: the dataset is empty.")
    out = []
    for i, pair in enumerate(dataset):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise DataError(f"build_lm_cache: example {i} must be a (prompt_ids, completion_ids) pair, got "
                            f"{type(pair).__name__}.")
        prompt, completion = [int(t) for t in pair[0]], [int(t) for t in pair[1]]
        if not prompt:
            raise DataError(f"build_lm_cache: example {i} has an empty prompt (nothing predicts its first "
                            "completion token; add a <bos>).")
        if not completion:
            raise DataError(f"build_lm_cache: example {i} has an empty completion.")
        out.append((prompt, completion))
    return out


def dataset_fingerprint(dataset: Sequence[Example]) -> str:
    """sha256 (16 hex digits) of the token ids of every ``(prompt_ids, completion_ids)`` pair, in order."""
    h = hashlib.sha256()
    for prompt, completion in dataset:
        h.update(json.dumps([[int(t) for t in prompt], [int(t) for t in completion]]).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def _unwrap_teacher(teacher: Any) -> nn.Module:
    from .teachers import SequenceTeacher

    return teacher.lm if isinstance(teacher, SequenceTeacher) else teacher


# --------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------


@torch.no_grad()
def build_lm_cache(teacher: Any, dataset: Sequence[Example], k: int, out: Path | str, *, temperature: float = 1.0,
                   batch_size: int = 16, shard_size: int = 4096, pad_id: int = 0, device: Any = None,
                   overwrite: bool = False) -> LMCache:
    """Run ``teacher`` once over ``dataset`` and store its top-``k`` log-probs per completion token.

    Args:
        teacher: a causal LM under the contract of :mod:`~.models` (a ``TinyGPT``, a Hugging
            Face model) or a :class:`~.teachers.SequenceTeacher` (its ``lm``); run in eval mode
            (its training mode is restored).
        dataset: ``(prompt_ids, completion_ids)`` pairs (e.g. from
            :func:`~.data.tokenize_examples`); prompts and completions non-empty.
        k: the number of kept tokens, ``1 <= k <= V``.
        out: the cache directory; an existing non-empty one is refused unless ``overwrite``
            (the new cache replaces it only once complete; a failed build leaves nothing).
        temperature: the cache temperature ``T`` (students must train at the same one).
        batch_size: examples per teacher forward; shard_size: examples per shard file;
        pad_id: the id padding the batches (never scored); device: where the teacher runs.

    Returns the opened :class:`LMCache`.
    """
    from safetensors.numpy import save_file

    from ..cache.builder import teacher_fingerprint
    from ..cache.store import check_target, commit, sha256_file, staging
    from ..engine.checkpoint import atomic_write_text
    from .models import as_causal_lm
    from .teachers import completion_logits, dataset_rollout

    T = check_temperature("temperature", temperature)
    for name, v in (("batch_size", batch_size), ("shard_size", shard_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"build_lm_cache: {name} must be a positive integer, got {v!r}.")
    lm = _unwrap_teacher(teacher)
    V = int(as_causal_lm(lm).vocab_size)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= V:
        raise ConfigError(f"build_lm_cache: k must be an integer in [1, {V}] (the teacher's vocabulary), got {k!r}.")
    pairs = _check_dataset(dataset)
    if not 0 <= int(pad_id) < V:
        raise ConfigError(f"build_lm_cache: pad_id={pad_id} is outside the teacher's vocabulary [0, {V - 1}].")
    dev = torch.device(device) if device is not None else next(lm.parameters()).device
    id_dtype = index_dtype(V)
    out = check_target(Path(out), overwrite)
    was = lm.training
    lm.eval()
    try:
        with staging(out) as tmp:
            (tmp / "shards").mkdir()
            shards = []
            for j, start in enumerate(range(0, len(pairs), shard_size)):
                chunk = pairs[start:start + shard_size]
                parts: dict[str, list[np.ndarray]] = {f: [] for f in _FIELDS[:-1]}
                for b in range(0, len(chunk), batch_size):
                    group = chunk[b:b + batch_size]
                    r = dataset_rollout([p for p, _ in group], [c for _, c in group], int(pad_id), dev)
                    p = r.tokens.shape[1] - r.completion.shape[1]
                    logits = completion_logits(lm, r.tokens[:, :p], r.attention_mask[:, :p], r.completion,
                                               r.completion_mask)
                    keep = r.completion_mask
                    ids, lp, lt = topk_logprobs(logits[keep], k, T)  # rows in example order, tokens in order
                    codes, scale, log_tail = quantise_topk(lp, lt)
                    parts["ids"].append(ids.cpu().numpy().astype(id_dtype))
                    parts["codes"].append(codes)
                    parts["scale"].append(scale)
                    parts["log_tail"].append(log_tail)
                arrays = {f: np.ascontiguousarray(np.concatenate(v)) for f, v in parts.items()}
                arrays["lengths"] = np.asarray([len(c) for _, c in chunk], dtype=np.int32)
                rel = f"shards/{j:05d}.safetensors"
                save_file(arrays, str(tmp / rel))
                path = tmp / rel
                shards.append({"start": start, "stop": start + len(chunk), "tokens": int(arrays["lengths"].sum()),
                               "path": rel, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
            tokens = sum(s["tokens"] for s in shards)
            manifest = {
                "format": FORMAT, "version": VERSION,
                "num_examples": len(pairs), "num_tokens": tokens, "shard_size": shard_size,
                "k": k, "vocab_size": V, "temperature": T,
                "encoding": {"ids": str(id_dtype), "codes": "uint8", "scale": "float16", "log_tail": "float16",
                             "max_gap": MAX_GAP},
                "payload_bytes_per_token": bytes_per_token(k, V),
                "bytes_per_token": sum(s["bytes"] for s in shards) / tokens,
                "teacher": {"fingerprint": teacher_fingerprint(lm), "class": type(lm).__name__},
                "dataset": {"fingerprint": dataset_fingerprint(pairs), "num_examples": len(pairs)},
                "shards": shards,
            }
            atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            commit(tmp, out)
    finally:
        lm.train(was)
    return LMCache(out, verify="size")


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------


@dataclass
class CachedTopK:
    """One batch of a cached teacher, aligned with :func:`~.teachers.dataset_rollout`'s completions.

    ``ids`` int64 ``(B, N, k)``, ``logprobs`` float32 ``(B, N, k)``, ``tail_mass`` float32
    ``(B, N)``, ``mask`` bool ``(B, N)`` (True on each example's completion tokens; the padded
    rows hold a valid dummy distribution). ``N`` is the longest completion of the batch.
    """

    ids: Tensor
    logprobs: Tensor
    tail_mass: Tensor
    mask: Tensor

    def __iter__(self):
        return iter((self.ids, self.logprobs, self.tail_mass, self.mask))

    def to(self, device: Any) -> CachedTopK:
        return CachedTopK(*(t.to(device) for t in self))


def _hint(path: Path) -> str:
    return (f"Nothing was recomputed; rebuild it with distillery.sequence.cache.build_lm_cache(teacher, dataset, k, "
            f"{str(path)!r}, overwrite=True).")


class LMCache:
    """A cache written by :func:`build_lm_cache`, opened for reading.

    Args:
        path: the cache directory.
        verify: ``"full"`` (default) checks every shard's size and sha256 on open, ``"size"``
            only the sizes.
        dataset: when given, its :func:`dataset_fingerprint` must be the one the cache was
            built from (else :class:`~distillery.cache.store.CacheMismatchError`).
        teacher: when given, its weights' fingerprint must match.

    Errors are the ones of :mod:`distillery.cache.store` (:class:`CacheNotFoundError`,
    :class:`CacheCorruptError`, :class:`CacheMismatchError`, :class:`CacheIndexError`), each
    naming the file or key.
    """

    def __init__(self, path: Path | str, *, verify: str = "full", dataset: Sequence[Example] | None = None,
                 teacher: Any = None) -> None:
        from ..cache.store import CacheCorruptError, CacheMismatchError, CacheNotFoundError, sha256_file

        if verify not in ("full", "size"):
            raise ConfigError(f"LMCache: verify must be 'full' or 'size', got {verify!r}.")
        self.path = Path(path)
        file = self.path / MANIFEST
        if not file.is_file():
            raise CacheNotFoundError(f"No LM teacher cache at {self.path}: {MANIFEST} is missing (not a cache, or a "
                                     f"build that did not finish). Build it with build_lm_cache(teacher, dataset, k, out).")
        try:
            m = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise CacheCorruptError(f"The LM teacher cache {self.path}: its {MANIFEST} is not valid JSON ({exc}). "
                                    f"{_hint(self.path)}") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise CacheCorruptError(f"{file} is not an LM top-k teacher cache manifest (format {FORMAT!r}). "
                                    f"{_hint(self.path)}")
        if m.get("version") != VERSION:
            raise CacheMismatchError(f"The LM teacher cache {self.path} has format version {m.get('version')!r}; this "
                                     f"distillery reads version {VERSION}. {_hint(self.path)}")
        for key in ("num_examples", "num_tokens", "shard_size", "k", "vocab_size", "temperature", "shards", "encoding"):
            if key not in m:
                raise CacheCorruptError(f"The LM teacher cache {self.path}: its {MANIFEST} has no key {key!r}. "
                                        f"{_hint(self.path)}")
        self.manifest = m
        self.k, self.vocab_size, self.temperature = int(m["k"]), int(m["vocab_size"]), float(m["temperature"])
        self.num_examples, self.num_tokens, self.shard_size = int(m["num_examples"]), int(m["num_tokens"]), int(m["shard_size"])
        self.disk_bytes = 0
        expected = 0
        for j, shard in enumerate(m["shards"]):
            if int(shard["start"]) != expected:
                raise CacheCorruptError(f"The LM teacher cache {self.path}: shard {j} starts at example "
                                        f"{shard['start']}, expected {expected}. {_hint(self.path)}")
            expected = int(shard["stop"])
            rel = shard["path"]
            f = self.path / rel
            if not f.is_file():
                raise CacheCorruptError(f"The LM teacher cache {self.path}: the shard file {rel} is missing. "
                                        f"{_hint(self.path)}")
            size = f.stat().st_size
            if size != int(shard["bytes"]):
                raise CacheCorruptError(f"The LM teacher cache {self.path}: the shard file {rel} is {size} bytes but "
                                        f"was written with {shard['bytes']}. {_hint(self.path)}")
            if verify == "full" and sha256_file(f) != shard["sha256"]:
                raise CacheCorruptError(f"The LM teacher cache {self.path}: the shard file {rel} does not have the "
                                        "sha256 recorded at the build (its bytes changed). " + _hint(self.path))
            self.disk_bytes += size
        if expected != self.num_examples:
            raise CacheCorruptError(f"The LM teacher cache {self.path}: its shards cover examples [0, {expected}) but "
                                    f"it should hold {self.num_examples}. {_hint(self.path)}")
        self._loaded: dict[int, dict[str, np.ndarray]] = {}
        if dataset is not None:
            self.check_dataset(dataset)
        if teacher is not None:
            self.check_teacher(teacher)

    # -- checks ----------------------------------------------------------------------------
    def check_dataset(self, dataset: Sequence[Example]) -> None:
        """Raise :class:`CacheMismatchError` unless ``dataset`` is the one the cache was built from."""
        from ..cache.store import CacheMismatchError

        got, want = dataset_fingerprint(dataset), self.manifest.get("dataset", {}).get("fingerprint")
        if got != want:
            raise CacheMismatchError(
                f"The LM teacher cache {self.path} was built for a dataset with fingerprint {want} "
                f"({self.manifest.get('dataset', {}).get('num_examples')} examples), but this dataset has {got} "
                f"({len(dataset)} examples): its batches would not line up with these tokens. {_hint(self.path)}")

    def check_teacher(self, teacher: Any) -> None:
        """Raise :class:`CacheMismatchError` unless ``teacher``'s weights are the ones the cache was built with."""
        from ..cache.builder import teacher_fingerprint
        from ..cache.store import CacheMismatchError

        got, want = teacher_fingerprint(_unwrap_teacher(teacher)), self.manifest.get("teacher", {}).get("fingerprint")
        if got != want:
            raise CacheMismatchError(f"The LM teacher cache {self.path} was built with teacher weights {want}, but "
                                     f"this teacher's are {got}. {_hint(self.path)}")

    # -- sizes -----------------------------------------------------------------------------
    @property
    def bytes_per_token(self) -> float:
        """Bytes of the shard files on disk (headers and per-example lengths included) per
        completion token; :func:`bytes_per_token` is the per-token payload alone."""
        return self.disk_bytes / max(self.num_tokens, 1)

    @property
    def payload_bytes_per_token(self) -> int:
        return bytes_per_token(self.k, self.vocab_size)

    def __len__(self) -> int:
        return self.num_examples

    # -- reading ---------------------------------------------------------------------------
    def _shard(self, j: int) -> dict[str, np.ndarray]:
        if j not in self._loaded:
            from safetensors import SafetensorError
            from safetensors.numpy import load_file

            from ..cache.store import CacheCorruptError

            rel = self.manifest["shards"][j]["path"]
            try:
                arrays = load_file(str(self.path / rel))
            except (SafetensorError, OSError, ValueError) as exc:
                raise CacheCorruptError(f"The LM teacher cache {self.path}: the shard file {rel} is not readable "
                                        f"safetensors ({exc}). {_hint(self.path)}") from None
            missing = [f for f in _FIELDS if f not in arrays]
            n = int(self.manifest["shards"][j]["tokens"])
            if missing or arrays["ids"].shape != (n, self.k) or arrays["codes"].shape != (n, self.k - 1):
                raise CacheCorruptError(f"The LM teacher cache {self.path}: the shard file {rel} lacks {missing} or has "
                                        f"arrays of the wrong shape. {_hint(self.path)}")
            arrays["offsets"] = np.concatenate([[0], np.cumsum(arrays["lengths"].astype(np.int64))])
            self._loaded[j] = arrays
        return self._loaded[j]

    def example(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(ids int64 [n, k], logprobs float32 [n, k], tail_mass float32 [n])`` of example
        ``index``'s ``n`` completion tokens (row ``t``: the distribution of completion token ``t``)."""
        from ..cache.store import CacheIndexError

        i = int(index)
        if not 0 <= i < self.num_examples:
            raise CacheIndexError(f"The LM teacher cache {self.path} holds examples 0..{self.num_examples - 1}; "
                                  f"example {i} was asked for (a different dataset?). {_hint(self.path)}")
        j, local = divmod(i, self.shard_size)
        a = self._shard(j)
        lo, hi = int(a["offsets"][local]), int(a["offsets"][local + 1])
        logprobs, tail = dequantise_topk(a["codes"][lo:hi], a["scale"][lo:hi], a["log_tail"][lo:hi])
        return torch.from_numpy(a["ids"][lo:hi].astype(np.int64)), logprobs, tail

    def batch(self, indices: Sequence[int], device: Any = None) -> CachedTopK:
        """The examples ``indices`` right-padded to their longest completion: a :class:`CachedTopK`
        with the layout of :func:`~.teachers.dataset_rollout` for the same examples."""
        rows = [self.example(i) for i in indices]
        if not rows:
            raise DataError("LMCache.batch: no indices.")
        b, n, k = len(rows), max(r[0].shape[0] for r in rows), self.k
        ids = torch.arange(k, dtype=torch.int64).remainder(self.vocab_size).expand(b, n, k).clone()
        logprobs = torch.full((b, n, k), -math.log(k), dtype=torch.float32)
        tail = torch.zeros(b, n, dtype=torch.float32)
        mask = torch.zeros(b, n, dtype=torch.bool)
        for r, (i_, lp, t) in enumerate(rows):
            m = i_.shape[0]
            ids[r, :m], logprobs[r, :m], tail[r, :m], mask[r, :m] = i_, lp, t, True
        out = CachedTopK(ids, logprobs, tail, mask)
        return out.to(device) if device is not None else out


# --------------------------------------------------------------------------------------
# what the cache costs
# --------------------------------------------------------------------------------------


@torch.no_grad()
def topk_cache_error(teacher_logits: Tensor, student_logits: Tensor | None, k: int, temperature: float = 1.0,
                     *, chunk: int = 256) -> dict[str, float]:
    """Per-token error of the cached teacher against the dense one, means over the ``N`` rows.

    ``teacher_logits`` ``[N, V]`` (and ``student_logits`` ``[N, V]`` or None), processed
    ``chunk`` rows at a time in float64. With ``p`` the dense teacher at ``T``, ``p^k`` its
    exact top-k + tail and ``p^c`` the cached (quantised) one, each spread over the full
    vocabulary by sharing the tail mass uniformly among the ``V - k`` other tokens:

    * ``kl_dense_vs_cached``: ``KL(p || p^c)`` (truncation + quantisation);
    * ``kl_dense_vs_exact_topk``: ``KL(p || p^k)`` (truncation alone);
    * ``kl_quantisation``: ``KL(p^k || p^c)`` on the ``k + 1`` outcomes (kept tokens, tail),
      what the stored precision costs;
    * with a student ``q``: ``student_loss_dense`` (``T^2 KL(p || q)``), ``student_loss_cached``
      and ``student_loss_exact_topk`` (:func:`~.divergences.topk_token_divergence` on the cached
      and the exact top-k), and ``student_loss_abs_diff`` ``mean |dense - cached|``;
    * ``teacher_entropy`` (nats) and ``tail_mass``, for context.
    """
    T = check_temperature("temperature", temperature)
    if teacher_logits.ndim != 2 or (student_logits is not None and student_logits.shape != teacher_logits.shape):
        raise ConfigError(f"topk_cache_error: expected teacher (and student) logits [N, V], got "
                          f"{list(teacher_logits.shape)}" + ("" if student_logits is None else
                                                             f" and {list(student_logits.shape)}") + ".")
    N = teacher_logits.shape[0]
    sums: dict[str, float] = {}
    for lo in range(0, N, chunk):
        part = _error_rows(teacher_logits[lo:lo + chunk], None if student_logits is None else
                           student_logits[lo:lo + chunk], k, T)
        for key, value in part.items():
            sums[key] = sums.get(key, 0.0) + value
    return {key: value / max(N, 1) for key, value in sums.items()}


def _error_rows(teacher_logits: Tensor, student_logits: Tensor | None, k: int, T: float) -> dict[str, float]:
    """Sums over the rows of the figures of :func:`topk_cache_error`."""
    from .divergences import token_divergence, topk_token_divergence

    N, V = teacher_logits.shape
    ids, lp, lt = topk_logprobs(teacher_logits, k, T)
    codes, scale, log_tail16 = quantise_topk(lp, lt)
    lp_c, tail_c = dequantise_topk(codes, scale, log_tail16)
    lp_c, tail_c = lp_c.double().to(teacher_logits.device), tail_c.double().to(teacher_logits.device)
    log_p = F.log_softmax(teacher_logits.double() / T, dim=-1)

    def full(kept: Tensor, tail: Tensor) -> Tensor:  # [N, V] log-probs, the tail shared uniformly
        if k == V:
            return log_p.new_full((N, V), -math.inf).scatter(-1, ids, kept)
        rest = (torch.log(tail) - math.log(V - k))[:, None].expand(N, V)
        return rest.scatter(-1, ids, kept)

    def kl(log_a: Tensor, log_b: Tensor) -> Tensor:
        a = log_a.exp()
        return torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a)).sum(-1)

    out = {
        "kl_dense_vs_cached": float(kl(log_p, full(lp_c, tail_c)).sum()),
        "kl_dense_vs_exact_topk": float(kl(log_p, full(lp, lt.exp())).sum()),
        "kl_quantisation": float(kl(torch.cat([lp, lt[:, None]], 1), torch.cat([lp_c, torch.log(tail_c)[:, None]], 1)).sum()),
        "teacher_entropy": float(torch.where(log_p > -math.inf, -log_p.exp() * log_p, torch.zeros_like(log_p)).sum()),
        "tail_mass": float(lt.exp().sum()),
    }
    if student_logits is not None:
        s = student_logits.double()
        dense = token_divergence(s, teacher_logits.double(), kind="forward_kl", temperature=T, reduction="none")
        cached = topk_token_divergence(s, ids, lp_c, tail_c, temperature=T, reduction="none")
        exact = topk_token_divergence(s, ids, lp, lt.exp(), temperature=T, reduction="none")
        out.update({
            "student_loss_dense": float(dense.sum()), "student_loss_cached": float(cached.sum()),
            "student_loss_exact_topk": float(exact.sum()), "student_loss_abs_diff": float((dense - cached).abs().sum()),
        })
    return out
