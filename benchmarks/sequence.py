"""Bench rows of the sequence engine (issue 12, section 5), on distillery's TinyGPT with random
weights (the figures depend on the sizes, not on what the weights learned).

* ``kv_cache_sampling``: :func:`distillery.sequence.sampler.generate` of 256 new tokens for a
  batch of 4 prompts (16 tokens each) with the KV cache (the prompt once, then one token per
  step) against recomputing the whole prefix at every step (``use_cache=False``), TinyGPT dim
  128, depth 4, 4 heads, vocabulary 1024, temperature 1 with the same seed on both sides, no
  EOS (every run makes exactly 256 tokens). Ratio: cache time / no-cache time (goal <= 1/3,
  i.e. a speed-up of at least 3x); tokens per second of both in the detail. Runs alternate,
  medians after a warm-up.
* ``topk_cache_bytes_per_token``: the stored bytes per completion token of the cached LM
  teacher (:mod:`distillery.sequence.cache`) at ``k = 32`` over 100 (goal <= 1). The detail
  gives the bytes on disk of the cache actually built (shard headers and per-example lengths
  included, which shrink with the dataset), and what this precision costs against the dense
  teacher (:func:`~distillery.sequence.cache.topk_cache_error`): ``KL(exact top-k || cached)``
  on the ``k + 1`` outcomes (the quantisation), ``KL(dense || cached)`` with the tail spread
  uniformly (truncation + quantisation) and the gap of a random student's loss
  (``topk_token_divergence`` on the cache against the dense forward KL). The teacher:
  TinyGPT, vocabulary 32,000 (uint16 ids), dim 64, depth 2, the gain of its final LayerNorm set
  to 30 so that its next-token distributions are about as peaked as a trained LM's (mean
  entropy about 2.4 nats, top-1 probability about 0.5; both in the detail; at GPT-2's init a
  random TinyGPT is almost uniform, which would make any top-k cache look exact); the student:
  TinyGPT dim 32, depth 1, GPT-2's init. 1,024 completion tokens (256 with ``--quick``). Outside
  ``--quick`` also ``k = 8`` and ``64``. DistillKit (arcee-ai) reports about 114-300 bytes per
  token for its offline top-k logits; int32 ids and float16 values alone take ``6k = 192``.
* ``onpolicy_step_breakdown`` (a report, no goal): the shares of one on-policy step written by
  hand from the sequence modules: sampling 32 tokens from the student (``generate``, KV cache,
  temperature 1), teacher scoring (one forward of the teacher over prompt + rollout,
  ``completion_logits``, no gradient) and the student update (forward, per-token reverse KL
  ``token_divergence(kind="reverse_kl")`` on the completion mask, backward, AdamW step).
  Teacher TinyGPT dim 128 depth 4, student dim 64 depth 2, vocabulary 1024, batch 8, prompts
  of 16 tokens. Ratio: the sampling share.

The two timed rows run with one intra-op thread on CPU (on a shared 2-core machine, thread
hand-offs cost more than the tiny matrix products they split; both sides of each row run
alike). Run ``python benchmarks/sequence.py [--quick]`` to print the rows as JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._timing import one_thread, sync, timed  # noqa: E402
from distillery.sequence.models import TinyGPT  # noqa: E402

DISTILLKIT_BYTES = (114, 300)


def tiny_gpt(vocab: int, dim: int, depth: int, max_len: int, *, seed: int = 0, ln_gain: float | None = None,
             device: str = "cpu") -> TinyGPT:
    """A TinyGPT with GPT-2's random init (``dim // 32`` heads); ``ln_gain`` sets the final
    LayerNorm's gain (scales every logit: a sharper teacher)."""
    torch.manual_seed(seed)
    lm = TinyGPT(vocab, dim, depth, max(1, dim // 32), max_len)
    if ln_gain is not None:
        with torch.no_grad():
            lm.ln_f.weight.fill_(ln_gain)
    return lm.to(device).eval()


# --------------------------------------------------------------------------------------
# kv_cache_sampling
# --------------------------------------------------------------------------------------


def kv_cache_sampling(device: str = "cpu", *, new_tokens: int = 256, batch: int = 4, dim: int = 128, depth: int = 4,
                      vocab: int = 1024, prompt_len: int = 16, repeats: int = 3) -> dict[str, Any]:
    from distillery.sequence.sampler import generate

    lm = tiny_gpt(vocab, dim, depth, prompt_len + new_tokens, device=device)
    prompts = torch.randint(vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(1)).to(device)

    def run(use_cache: bool):
        g = torch.Generator(device=device).manual_seed(7)
        return generate(lm, prompts, max_new_tokens=new_tokens, temperature=1.0, pad_id=0, generator=g,
                        use_cache=use_cache)

    check = min(8, new_tokens)  # warm-up: greedy tokens with and without the cache must agree
    warm = generate(lm, prompts, max_new_tokens=check, pad_id=0, temperature=0.0), \
        generate(lm, prompts, max_new_tokens=check, pad_id=0, temperature=0.0, use_cache=False)
    same_greedy = bool(torch.equal(warm[0].completion, warm[1].completion))
    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(repeats):
        for use_cache in ((True, False) if r % 2 == 0 else (False, True)):
            times[use_cache].append(timed(lambda: run(use_cache), device))
    cache_s, full_s = statistics.median(times[True]), statistics.median(times[False])
    made = batch * new_tokens
    return {
        "name": "kv_cache_sampling", "ratio": cache_s / full_s, "goal": round(1 / 3, 4),
        "unit": f"time to sample {new_tokens} tokens x batch {batch} with the KV cache / recomputing the prefix "
                f"(TinyGPT dim {dim}, depth {depth})",
        "detail": {"device": device, "cache_s": cache_s, "no_cache_s": full_s, "cache_tokens_per_s": made / cache_s,
                   "no_cache_tokens_per_s": made / full_s, "speedup": full_s / cache_s, "new_tokens": new_tokens,
                   "batch": batch, "prompt_len": prompt_len, "vocab": vocab, "dim": dim, "depth": depth,
                   "repeats": repeats, "threads": torch.get_num_threads(), "same_greedy_tokens": same_greedy},
    }


# --------------------------------------------------------------------------------------
# topk_cache_bytes_per_token
# --------------------------------------------------------------------------------------


def topk_cache_bytes_per_token(device: str = "cpu", *, ks: tuple[int, ...] = (32,), vocab: int = 32000,
                               examples: int = 16, prompt_len: int = 8, completion_len: int = 64,
                               ln_gain: float = 30.0) -> dict[str, Any]:
    from distillery.sequence.cache import build_lm_cache, topk_cache_error
    from distillery.sequence.teachers import completion_logits, dataset_rollout

    teacher = tiny_gpt(vocab, 64, 2, prompt_len + completion_len, ln_gain=ln_gain, device=device)
    student = tiny_gpt(vocab, 32, 1, prompt_len + completion_len, seed=1, device=device)
    g = torch.Generator().manual_seed(2)
    pairs = [(torch.randint(1, vocab, (prompt_len,), generator=g).tolist(),
              torch.randint(1, vocab, (completion_len,), generator=g).tolist()) for _ in range(examples)]
    t_rows, s_rows = [], []
    with torch.no_grad():
        for b in range(0, examples, 8):
            group = pairs[b:b + 8]
            r = dataset_rollout([p for p, _ in group], [c for _, c in group], 0, device)
            p = r.tokens.shape[1] - r.completion.shape[1]
            args = (r.tokens[:, :p], r.attention_mask[:, :p], r.completion, r.completion_mask)
            t_rows.append(completion_logits(teacher, *args)[r.completion_mask])
            s_rows.append(completion_logits(student, *args)[r.completion_mask])
    t_logits, s_logits = torch.cat(t_rows), torch.cat(s_rows)
    top1 = float(t_logits.double().softmax(-1).max(-1).values.mean())
    by_k: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in ks:
            t0 = time.perf_counter()
            cache = build_lm_cache(teacher, pairs, k, Path(tmp) / f"k{k}", batch_size=8, device=device)
            build_s = time.perf_counter() - t0
            err = topk_cache_error(t_logits, s_logits, k)
            by_k[str(k)] = {"bytes_per_token": cache.payload_bytes_per_token, "on_disk_bytes_per_token": cache.bytes_per_token,
                            "index_dtype": cache.manifest["encoding"]["ids"], "build_s": build_s, **err}
    main = by_k["32"] if "32" in by_k else next(iter(by_k.values()))
    k_main = 32 if "32" in by_k else int(next(iter(by_k)))
    return {
        "name": "topk_cache_bytes_per_token", "ratio": main["bytes_per_token"] / 100, "goal": 1.0,
        "unit": f"stored bytes per completion token of the cached LM teacher at k = {k_main} (vocabulary {vocab}) / 100",
        "detail": {"device": device, "k": k_main, "vocab": vocab, "tokens": examples * completion_len,
                   "examples": examples, "teacher_ln_gain": ln_gain, "teacher_top1": top1, "by_k": by_k, **main,
                   "distillkit_bytes_per_token": list(DISTILLKIT_BYTES), "int32_ids_fp16_values_bytes": 6 * k_main},
    }


# --------------------------------------------------------------------------------------
# onpolicy_step_breakdown
# --------------------------------------------------------------------------------------


def onpolicy_step_breakdown(device: str = "cpu", *, steps: int = 10, warmup: int = 2, batch: int = 8,
                            prompt_len: int = 16, new_tokens: int = 32, vocab: int = 1024) -> dict[str, Any]:
    from distillery.sequence.divergences import token_divergence
    from distillery.sequence.sampler import generate
    from distillery.sequence.teachers import completion_logits

    max_len = prompt_len + new_tokens
    teacher = tiny_gpt(vocab, 128, 4, max_len, device=device).requires_grad_(False)
    student = tiny_gpt(vocab, 64, 2, max_len, seed=1, device=device)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    prompts = torch.randint(vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(3)).to(device)
    pmask = torch.ones_like(prompts)
    g = torch.Generator(device=device).manual_seed(4)
    parts: dict[str, list[float]] = {"sampling": [], "teacher_scoring": [], "student_update": []}
    losses = []
    for step in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        student.eval()
        r = generate(student, prompts, pmask, max_new_tokens=new_tokens, temperature=1.0, pad_id=0, generator=g)
        student.train()
        sync(device)
        t1 = time.perf_counter()
        with torch.no_grad():
            t_logits = completion_logits(teacher, prompts, pmask, r.completion, r.completion_mask)
        sync(device)
        t2 = time.perf_counter()
        s_logits = completion_logits(student, prompts, pmask, r.completion, r.completion_mask)
        loss = token_divergence(s_logits, t_logits, r.completion_mask, "reverse_kl")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        t3 = time.perf_counter()
        t = {"sampling": t1 - t0, "teacher_scoring": t2 - t1, "student_update": t3 - t2}
        losses.append(float(loss.detach()))
        if step >= warmup:
            for key, value in t.items():
                parts[key].append(value)
    med = {key: statistics.median(v) for key, v in parts.items()}
    total = sum(med.values())
    shares = {key: v / total for key, v in med.items()}
    return {
        "name": "onpolicy_step_breakdown", "ratio": shares["sampling"], "goal": None,
        "unit": f"share of one on-policy step spent sampling {new_tokens} tokens (batch {batch}; teacher dim 128 depth 4, "
                "student dim 64 depth 2)",
        "detail": {"device": device, "ms": {key: 1e3 * v for key, v in med.items()}, "shares": shares,
                   "step_ms": 1e3 * total, "steps": steps, "batch": batch, "prompt_len": prompt_len,
                   "new_tokens": new_tokens, "vocab": vocab, "loss_first_last": [losses[0], losses[-1]]},
    }


# --------------------------------------------------------------------------------------
# the suite's entry points
# --------------------------------------------------------------------------------------


def kv_cache_row(quick: bool = False, device: str = "cpu") -> dict[str, Any]:
    with one_thread(device):
        return kv_cache_sampling(device, repeats=1 if quick else 3)


def topk_cache_row(quick: bool = False, device: str = "cpu") -> dict[str, Any]:
    if quick:
        return topk_cache_bytes_per_token(device, ks=(32,), examples=8, completion_len=32)
    return topk_cache_bytes_per_token(device, ks=(8, 32, 64), examples=16, completion_len=64)


def onpolicy_row(quick: bool = False, device: str = "cpu") -> dict[str, Any]:
    with one_thread(device):
        return onpolicy_step_breakdown(device, steps=5 if quick else 20)


def benchmark(quick: bool = False, device: str = "cpu") -> list[dict[str, Any]]:
    return [kv_cache_row(quick, device), topk_cache_row(quick, device), onpolicy_row(quick, device)]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(json.dumps(benchmark(args.quick, args.device), indent=1, default=str))
