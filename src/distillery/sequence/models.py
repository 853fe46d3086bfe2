"""Causal language models for the sequence engine: one contract, distillery's tiny GPT, HF models.

The contract every sequence part (sampler, divergences, trainer) uses::

    lm(input_ids, attention_mask=None, past=None, use_cache=False) -> LMOutput(logits, past, hidden)

* ``input_ids``: int64 ``(B, T)``, the new tokens (all of them, or only those after ``past``);
* ``attention_mask``: ``(B, S)`` with ``S = past_length + T`` (the Hugging Face convention: the
  mask covers the cached tokens too) or ``None`` (all ones). ``0`` marks padding. Values above
  ``1`` are *segment ids* of a packed row (:mod:`distillery.sequence.data`): a token attends only
  to earlier tokens of its own segment;
* positions are derived from the mask, never from the column index: the position of a token is
  the number of earlier non-padding tokens of its segment. Left-padded prompts therefore get the
  same positions as unpadded ones, and each packed segment starts again at position 0;
* ``logits``: ``(B, T, V)`` next-token logits; ``hidden``: ``(B, T, H)`` the last layer's hidden
  states *after* the final layer norm, i.e. what the output projection :func:`lm_head_weight`
  multiplies (the inputs of :func:`~distillery.objectives.chunked.chunked_kd_loss`);
* ``past``: the key/value cache to pass back with the next tokens (``None`` unless ``use_cache``).

:class:`TinyGPT` is distillery's own implementation of the GPT-2 architecture (Radford et al.,
2019, "Language Models are Unsupervised Multitask Learners"): learned absolute positions,
pre-LayerNorm blocks, GELU with the tanh approximation, biases everywhere, output projection
tied to the token embedding. :func:`copy_into_gpt2` / :func:`copy_from_gpt2` move its weights
to and from ``transformers.GPT2LMHeadModel`` with identical logits (tested). :func:`as_causal_lm`
adapts any Hugging Face ``PreTrainedModel`` (GPT-2, Llama, a ``peft`` LoRA model around one) to
the contract; :func:`build_lm` builds either kind from a config dict and :func:`save_lm` saves one.

``transformers`` and ``peft`` are imported only inside the functions that need them.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError, ShapeError

__all__ = [
    "CausalLM",
    "LMOutput",
    "TinyGPT",
    "as_causal_lm",
    "build_lm",
    "context_length",
    "copy_from_gpt2",
    "copy_into_gpt2",
    "lm_head_weight",
    "positions_from_mask",
    "save_lm",
    "unwrap_lm",
]

TINY_GPT_CONFIG = "tiny_gpt.json"
TINY_GPT_WEIGHTS = "tiny_gpt.safetensors"


class LMOutput(NamedTuple):
    """``logits (B, T, V)``, ``past`` (opaque key/value cache or ``None``), ``hidden (B, T, H)``."""

    logits: Tensor
    past: Any
    hidden: Tensor


# --------------------------------------------------------------------------------------
# masks and positions
# --------------------------------------------------------------------------------------


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions ``(B, S)`` int64 of a ``(B, S)`` padding/segment mask.

    ``pos[b, t] = #{j <= t : mask[b, j] == mask[b, t]} - 1`` for non-padding tokens (the
    running count within the token's segment; for a 0/1 mask, ``cumsum(mask) - 1``), ``0`` on
    padding.
    """
    mask = attention_mask.long()
    if mask.numel() == 0:
        return mask.clone()
    seg = F.one_hot(mask.clamp(min=0), int(mask.max()) + 1)  # (B, S, K)
    count = seg.cumsum(dim=1).gather(2, mask.clamp(min=0)[..., None])[..., 0] - 1
    return torch.where(mask > 0, count, torch.zeros_like(count))


def attention_allowed(attention_mask: Tensor, query_length: int) -> Tensor:
    """Boolean ``(B, 1, T, S)``: may query ``t`` (the last ``T`` of ``S`` tokens) attend key ``s``.

    Causal, key not padding, key in the query's segment; the diagonal is always allowed so that
    a padding query (whose output nobody reads) never has an empty softmax.
    """
    s = attention_mask.shape[1]
    t = query_length
    mask = attention_mask.long()
    q_index = torch.arange(s - t, s, device=mask.device)[:, None]  # (T, 1)
    k_index = torch.arange(s, device=mask.device)[None, :]  # (1, S)
    causal = k_index <= q_index  # (T, S)
    q_seg = mask[:, s - t:, None]  # (B, T, 1)
    k_seg = mask[:, None, :]  # (B, 1, S)
    allowed = causal & (k_seg == q_seg) & (k_seg > 0)
    allowed = allowed | (k_index == q_index)
    return allowed[:, None]


def _check_ids(input_ids: Tensor, vocab_size: int, who: str) -> None:
    if input_ids.ndim != 2 or input_ids.dtype not in (torch.int64, torch.int32):
        raise ShapeError(f"{who}: input_ids must be an integer tensor (B, T), got {input_ids.dtype} "
                         f"{list(input_ids.shape)}.")
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size):
        raise ShapeError(f"{who}: token ids must be in [0, {vocab_size - 1}], got "
                         f"[{int(input_ids.min())}, {int(input_ids.max())}].")


def _full_mask(attention_mask: Tensor | None, input_ids: Tensor, past_length: int, who: str) -> Tensor:
    b, t = input_ids.shape
    if attention_mask is None:
        return torch.ones(b, past_length + t, dtype=torch.long, device=input_ids.device)
    if attention_mask.shape != (b, past_length + t):
        raise ShapeError(f"{who}: attention_mask must be (B, past_length + T) = ({b}, {past_length + t}), "
                         f"got {list(attention_mask.shape)}.")
    return attention_mask.long()


# --------------------------------------------------------------------------------------
# TinyGPT
# --------------------------------------------------------------------------------------


class GPTAttention(nn.Module):
    """Multi-head causal self-attention with a key/value cache (GPT-2's ``c_attn`` / ``c_proj``)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, allowed: Tensor, past: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        b, t, d = x.shape
        q, k, v = self.c_attn(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads)  # (B, heads, T, S)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        out = scores.softmax(dim=-1) @ v  # (B, heads, T, d/heads)
        return self.c_proj(out.transpose(1, 2).reshape(b, t, d)), (k, v)


class GPTBlock(nn.Module):
    """Pre-LayerNorm block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))`` (GELU, tanh approx)."""

    def __init__(self, dim: int, heads: int, eps: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=eps)
        self.attn = GPTAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim, eps=eps)
        self.c_fc = nn.Linear(dim, 4 * dim)
        self.c_proj = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor, allowed: Tensor, past):
        a, present = self.attn(self.ln_1(x), allowed, past)
        x = x + a
        x = x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))
        return x, present


class TinyGPT(nn.Module):
    """Distillery's causal LM: the GPT-2 architecture (Radford et al., 2019) with a KV cache.

    ``TinyGPT(vocab, dim, depth, heads, max_len)``; follows the contract of the module docstring.
    ``past`` is a tuple over layers of ``(keys, values)``, each ``(B, heads, S, dim / heads)``.

    Example::

        lm = TinyGPT(vocab=16, dim=32, depth=2, heads=4, max_len=64)
        out = lm(torch.randint(16, (2, 5)), use_cache=True)   # out.logits: (2, 5, 16)
        nxt = lm(torch.randint(16, (2, 1)), past=out.past)     # the 6th token, reusing the cache
    """

    def __init__(self, vocab: int, dim: int, depth: int, heads: int, max_len: int, eps: float = 1e-5) -> None:
        super().__init__()
        for name, v in (("vocab", vocab), ("dim", dim), ("depth", depth), ("heads", heads), ("max_len", max_len)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"tiny_gpt: {name} must be a positive integer, got {v!r}.")
        if dim % heads:
            raise ConfigError(f"tiny_gpt: dim ({dim}) must be divisible by heads ({heads}).")
        self.vocab_size, self.dim, self.depth, self.heads, self.max_len, self.eps = vocab, dim, depth, heads, max_len, eps
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(max_len, dim)
        self.h = nn.ModuleList(GPTBlock(dim, heads, eps) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim, eps=eps)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:  # GPT-2's initialisation: N(0, 0.02), zero biases
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)

    def config_dict(self) -> dict[str, Any]:
        return {"vocab": self.vocab_size, "dim": self.dim, "depth": self.depth, "heads": self.heads,
                "max_len": self.max_len, "eps": self.eps}

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, past=None,
                use_cache: bool = False) -> LMOutput:
        _check_ids(input_ids, self.vocab_size, "tiny_gpt")
        past_length = 0 if past is None else past[0][0].shape[2]
        t = input_ids.shape[1]
        if past_length + t > self.max_len:
            raise ConfigError(f"tiny_gpt: sequence of {past_length + t} tokens exceeds the context max_len={self.max_len}.")
        mask = _full_mask(attention_mask, input_ids, past_length, "tiny_gpt")
        pos = positions_from_mask(mask)[:, past_length:]
        x = self.wte(input_ids) + self.wpe(pos)
        allowed = attention_allowed(mask, t)
        presents = []
        for i, block in enumerate(self.h):
            x, present = block(x, allowed, None if past is None else past[i])
            presents.append(present)
        hidden = self.ln_f(x)
        logits = hidden @ self.wte.weight.T  # tied output projection
        return LMOutput(logits, tuple(presents) if use_cache else None, hidden)


# --------------------------------------------------------------------------------------
# Hugging Face adapter
# --------------------------------------------------------------------------------------


class CausalLM(nn.Module):
    """Adapts a Hugging Face causal LM (``GPT2LMHeadModel``, ``LlamaForCausalLM``, a peft model) to
    the contract of the module docstring. ``self.model`` is the wrapped model; ``vocab_size`` and
    ``max_len`` come from its config. Positions are passed explicitly (from the mask) and a
    packed (segment-id) mask becomes a 4-D boolean mask, so both behave as in :class:`TinyGPT`.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        config = model.config
        self.vocab_size = int(config.vocab_size)
        self.max_len = int(getattr(config, "n_positions", None) or config.max_position_embeddings)
        params = inspect.signature(_base_hf(model).forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, past=None,
                use_cache: bool = False) -> LMOutput:
        _check_ids(input_ids, self.vocab_size, "hf causal lm")
        past_length = 0 if past is None else _cache_length(past)
        t = input_ids.shape[1]
        if past_length + t > self.max_len:
            raise ConfigError(f"hf causal lm: sequence of {past_length + t} tokens exceeds the context "
                              f"(max_len={self.max_len}).")
        mask = _full_mask(attention_mask, input_ids, past_length, "hf causal lm")
        pos = positions_from_mask(mask)[:, past_length:]
        hf_mask: Tensor = mask.clamp(max=1)
        if int(mask.max()) > 1:  # packed segments: an explicit (B, 1, T, S) boolean mask
            hf_mask = attention_allowed(mask, t)
        kwargs = {self._cache_kw: past} if past is not None else {}
        out = self.model(input_ids=input_ids, attention_mask=hf_mask, position_ids=pos, use_cache=use_cache,
                         output_hidden_states=True, return_dict=True, **kwargs)
        new_past = out.get("cache", None) if self._cache_kw == "cache" else out.get("past_key_values", None)
        return LMOutput(out.logits, new_past if use_cache else None, out.hidden_states[-1])


def _cache_length(past) -> int:
    """Tokens held by a Hugging Face cache object (or a legacy tuple of per-layer (k, v))."""
    if hasattr(past, "get_seq_length"):
        return int(past.get_seq_length())
    return int(past[0][0].shape[-2])


def _base_hf(model: nn.Module) -> nn.Module:
    """The ``PreTrainedModel`` inside a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _is_hf(model: nn.Module) -> bool:
    return hasattr(model, "config") and hasattr(model, "save_pretrained")


def as_causal_lm(model: nn.Module) -> nn.Module:
    """The model under the sequence-engine contract: a :class:`TinyGPT` or :class:`CausalLM` as is,
    a Hugging Face / peft model wrapped in :class:`CausalLM`."""
    if isinstance(model, (TinyGPT, CausalLM)):
        return model
    if isinstance(_base_hf(model), TinyGPT):  # a peft model around a TinyGPT
        return _PeftTiny(model)
    if _is_hf(model):
        return CausalLM(model)
    raise ConfigError(f"as_causal_lm: expected a TinyGPT or a Hugging Face PreTrainedModel, got {type(model).__name__}.")


class _PeftTiny(nn.Module):
    """A peft LoRA model around a :class:`TinyGPT`, called with the contract's arguments."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        base = _base_hf(model)
        self.vocab_size, self.max_len = base.vocab_size, base.max_len

    def forward(self, input_ids, attention_mask=None, past=None, use_cache=False) -> LMOutput:
        return _base_hf(self.model)(input_ids, attention_mask, past, use_cache)


def unwrap_lm(lm: nn.Module) -> nn.Module:
    """The model inside an adapter (:class:`CausalLM`), or ``lm`` itself."""
    return lm.model if isinstance(lm, (CausalLM, _PeftTiny)) else lm


def context_length(lm: nn.Module) -> int:
    """The longest sequence (prompt + completion) the LM accepts."""
    lm = as_causal_lm(lm)
    return int(lm.max_len)


def lm_head_weight(model: nn.Module) -> tuple[Tensor, Tensor | None]:
    """``(weight (V, H), bias (V,) or None)`` of the output projection, for ``chunked_kd_loss``
    (``logits = hidden @ weight.T + bias`` with ``hidden`` the contract's ``hidden``)."""
    base = _base_hf(unwrap_lm(model))
    if isinstance(base, TinyGPT):
        return base.wte.weight, None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is None:
        raise ConfigError(f"lm_head_weight: {type(base).__name__} has no output embeddings.")
    return head.weight, getattr(head, "bias", None)


# --------------------------------------------------------------------------------------
# GPT-2 weight copies
# --------------------------------------------------------------------------------------


def _gpt2_config(tiny: TinyGPT):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=tiny.vocab_size, n_positions=tiny.max_len, n_embd=tiny.dim, n_layer=tiny.depth,
                      n_head=tiny.heads, activation_function="gelu_new", layer_norm_epsilon=tiny.eps,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
                      bos_token_id=None, eos_token_id=None)


def _pairs(depth: int) -> list[tuple[str, str, bool]]:
    """(TinyGPT name, GPT2LMHeadModel name, transpose): GPT-2's Conv1D stores (in, out)."""
    out = [("wte.weight", "transformer.wte.weight", False), ("wpe.weight", "transformer.wpe.weight", False),
           ("ln_f.weight", "transformer.ln_f.weight", False), ("ln_f.bias", "transformer.ln_f.bias", False)]
    for i in range(depth):
        for ours, theirs, linear in (("ln_1", "ln_1", False), ("ln_2", "ln_2", False), ("attn.c_attn", "attn.c_attn", True),
                                     ("attn.c_proj", "attn.c_proj", True), ("c_fc", "mlp.c_fc", True),
                                     ("c_proj", "mlp.c_proj", True)):
            out.append((f"h.{i}.{ours}.weight", f"transformer.h.{i}.{theirs}.weight", linear))
            out.append((f"h.{i}.{ours}.bias", f"transformer.h.{i}.{theirs}.bias", False))
    return out


@torch.no_grad()
def copy_into_gpt2(tiny: TinyGPT):
    """A ``transformers.GPT2LMHeadModel`` (eval mode, same dtype) with ``tiny``'s weights."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel(_gpt2_config(tiny)).to(dtype=tiny.wte.weight.dtype).eval()
    ours, theirs = tiny.state_dict(), model.state_dict()
    for a, b, transpose in _pairs(tiny.depth):
        theirs[b].copy_(ours[a].T if transpose else ours[a])
    model.load_state_dict(theirs, strict=False)  # lm_head.weight is tied to wte
    return model


@torch.no_grad()
def copy_from_gpt2(model) -> TinyGPT:
    """A :class:`TinyGPT` with the weights of a ``GPT2LMHeadModel`` (tied embeddings, gelu_new)."""
    c = model.config
    if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh") or not c.tie_word_embeddings:
        raise ConfigError("copy_from_gpt2: needs activation_function 'gelu_new' and tied word embeddings, got "
                          f"{c.activation_function!r}, tie_word_embeddings={c.tie_word_embeddings}.")
    tiny = TinyGPT(c.vocab_size, c.n_embd, c.n_layer, c.n_head, c.n_positions, eps=c.layer_norm_epsilon)
    tiny = tiny.to(dtype=model.transformer.wte.weight.dtype)
    ours, theirs = tiny.state_dict(), model.state_dict()
    for a, b, transpose in _pairs(tiny.depth):
        ours[a].copy_(theirs[b].T if transpose else theirs[b])
    return tiny.eval()


# --------------------------------------------------------------------------------------
# building and saving
# --------------------------------------------------------------------------------------

_HF_CONFIGS = {"gpt2": ("GPT2Config", "GPT2LMHeadModel"), "llama": ("LlamaConfig", "LlamaForCausalLM")}
_SPEC_KEYS = {"kind", "params", "config", "path", "lora", "seed"}


def build_lm(spec: dict[str, Any]) -> nn.Module:
    """A model from a config dict (the raw model; :func:`as_causal_lm` adapts it).

    * ``{"kind": "tiny_gpt", "params": {vocab, dim, depth, heads, max_len}}`` or
      ``{"kind": "tiny_gpt", "path": DIR}`` (saved by :func:`save_lm`);
    * ``{"kind": "hf", "config": "gpt2" | "llama", "params": {...}}``: random weights from a
      ``GPT2Config`` / ``LlamaConfig`` with these fields (nothing is downloaded);
    * ``{"kind": "hf", "path": DIR}``: ``AutoModelForCausalLM.from_pretrained(DIR)`` of a local dir;
    * optional ``"lora": {"r", "alpha", "target_modules"}``: wrap in a ``peft`` LoRA model
      (Hu et al., 2021, arXiv:2106.09685), only the adapters trainable;
    * optional ``"seed"``: seeds the random initialisation.
    """
    if not isinstance(spec, dict):
        raise ConfigError(f"build_lm: the model spec must be a mapping, got {type(spec).__name__}.")
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise ConfigError(f"build_lm: unknown model key(s) {sorted(unknown)}; allowed: {sorted(_SPEC_KEYS)}.")
    kind = spec.get("kind")
    if "seed" in spec:
        torch.manual_seed(int(spec["seed"]))
    if kind == "tiny_gpt":
        model = _load_tiny(spec["path"]) if "path" in spec else _build_tiny(_params(spec, "tiny_gpt"))
    elif kind == "hf":
        model = _build_hf(spec)
    else:
        raise ConfigError(f"build_lm: model kind must be 'tiny_gpt' or 'hf', got {kind!r}.")
    if spec.get("lora") is not None:
        model = _add_lora(model, spec["lora"])
    return model


def _params(spec: dict, who: str) -> dict:
    params = spec.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"build_lm ({who}): params must be a mapping, got {type(params).__name__}.")
    return dict(params)


def _build_tiny(params: dict) -> TinyGPT:
    allowed = ("vocab", "dim", "depth", "heads", "max_len", "eps")
    bad, missing = sorted(set(params) - set(allowed)), [k for k in allowed[:5] if k not in params]
    if bad or missing:
        raise ConfigError(f"build_lm (tiny_gpt): params need {list(allowed[:5])} (optional eps); "
                          f"unknown {bad}, missing {missing}.")
    return TinyGPT(**params)


def _build_hf(spec: dict) -> nn.Module:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    if "path" in spec:
        path = Path(spec["path"])
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ConfigError(f"build_lm: model path {str(path)!r} is not a directory with a config.json "
                              "(a save_pretrained checkpoint).")
        try:
            return transformers.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"build_lm: cannot load a causal LM from {str(path)!r}: {exc}") from exc
    name = spec.get("config")
    if name not in _HF_CONFIGS:
        raise ConfigError(f"build_lm: hf config must be one of {sorted(_HF_CONFIGS)} or a 'path', got {name!r}.")
    config_cls, model_cls = (getattr(transformers, n) for n in _HF_CONFIGS[name])
    params = _params(spec, f"hf {name}")
    defaults = config_cls()
    known = set(defaults.to_dict()) | set(getattr(defaults, "attribute_map", {}))
    bad = sorted(set(params) - known)
    if bad:
        raise ConfigError(f"build_lm: unknown {config_cls.__name__} field(s) {bad} in params.")
    return model_cls(config_cls(**params)).eval()


def _add_lora(model: nn.Module, lora: dict) -> nn.Module:
    import peft

    if not isinstance(lora, dict):
        raise ConfigError(f"build_lm: lora must be a mapping {{r, alpha, target_modules}}, got {lora!r}.")
    bad = sorted(set(lora) - {"r", "alpha", "target_modules", "dropout"})
    if bad:
        raise ConfigError(f"build_lm: unknown lora key(s) {bad}; allowed: r, alpha, target_modules, dropout.")
    r = lora.get("r", 8)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ConfigError(f"build_lm: lora.r must be a positive integer, got {r!r}.")
    targets = lora.get("target_modules")
    if targets is None:
        targets = ["c_attn"] if isinstance(model, TinyGPT) or getattr(model.config, "model_type", "") == "gpt2" \
            else ["q_proj", "v_proj"]
    config = peft.LoraConfig(r=r, lora_alpha=float(lora.get("alpha", 2 * r)), target_modules=list(targets),
                             lora_dropout=float(lora.get("dropout", 0.0)),
                             fan_in_fan_out=getattr(getattr(model, "config", None), "model_type", "") == "gpt2")
    try:
        return peft.get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError(f"build_lm: lora.target_modules {list(targets)} do not match the model: {exc}") from exc


def _load_tiny(path) -> TinyGPT:
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / TINY_GPT_CONFIG).is_file() or not (path / TINY_GPT_WEIGHTS).is_file():
        raise ConfigError(f"build_lm: {str(path)!r} holds no {TINY_GPT_CONFIG} + {TINY_GPT_WEIGHTS} (save_lm of a TinyGPT).")
    tiny = TinyGPT(**json.loads((path / TINY_GPT_CONFIG).read_text()))
    try:
        tiny.load_state_dict(load_file(str(path / TINY_GPT_WEIGHTS)))
    except RuntimeError as exc:
        raise CheckpointError(f"build_lm: weights in {str(path)!r} do not match its config: {exc}") from exc
    return tiny


def save_lm(model: nn.Module, tokenizer, directory) -> Path:
    """Save a model (and its tokenizer) to ``directory``; returns the directory.

    Hugging Face models: ``save_pretrained`` (loads back with ``from_pretrained``); a peft LoRA
    model: its adapter only (``adapter_config.json`` + weights, loads with
    ``PeftModel.from_pretrained(base, dir)``); a :class:`TinyGPT`: ``tiny_gpt.json`` and
    ``tiny_gpt.safetensors`` (``build_lm({"kind": "tiny_gpt", "path": dir})``). The tokenizer:
    its ``save_pretrained`` or, for distillery's tokenizers, that of ``hf_tokenizer()``;
    ``None`` saves no tokenizer.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = unwrap_lm(model)
    if isinstance(model, TinyGPT):
        (directory / TINY_GPT_CONFIG).write_text(json.dumps(model.config_dict()))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / TINY_GPT_WEIGHTS))
    elif hasattr(model, "save_pretrained"):
        model.save_pretrained(str(directory))
    else:
        raise ConfigError(f"save_lm: cannot save a {type(model).__name__}.")
    if tokenizer is not None:
        hf = tokenizer.hf_tokenizer() if hasattr(tokenizer, "hf_tokenizer") else tokenizer
        hf.save_pretrained(str(directory))
    return directory
