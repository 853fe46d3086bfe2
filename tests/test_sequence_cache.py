"""The cached LM teacher (distillery.sequence.cache): its per-token encoding, a build read back
aligned with the dataset, its sizes, its error figures against formulas written here, and its
refusals (corrupt shard, other dataset or teacher, out-of-range index, existing directory)."""

import math

import numpy as np
import pytest
import torch

from distillery.cache.store import (
    CacheCorruptError,
    CacheError,
    CacheIndexError,
    CacheMismatchError,
    CacheNotFoundError,
)
from distillery.errors import ConfigError, DataError
from distillery.sequence.cache import (
    LMCache,
    build_lm_cache,
    bytes_per_token,
    dequantise_topk,
    index_dtype,
    quantise_topk,
    topk_cache_error,
    topk_logprobs,
)
from distillery.sequence.divergences import token_divergence, topk_teacher, topk_token_divergence
from distillery.sequence.models import TinyGPT
from distillery.sequence.teachers import completion_logits, dataset_rollout

V = 40


def _teacher(vocab=V, seed=0, sharp=0.3):
    torch.manual_seed(seed)
    lm = TinyGPT(vocab, 16, 1, 2, 32)
    with torch.no_grad():
        lm.wte.weight.normal_(0, sharp)  # a peaked teacher: entropies of about 1-2 nats
    return lm.eval()


def _dataset(n=5, vocab=V, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p = torch.randint(1, vocab, (1 + i % 3,), generator=g).tolist()
        c = torch.randint(1, vocab, (2 + (i * 2) % 5,), generator=g).tolist()
        out.append((p, c))
    return out


def _dense(lm, pairs):
    r = dataset_rollout([p for p, _ in pairs], [c for _, c in pairs], 0)
    p = r.tokens.shape[1] - r.completion.shape[1]
    with torch.no_grad():
        return completion_logits(lm, r.tokens[:, :p], r.attention_mask[:, :p], r.completion, r.completion_mask), r


# -- the encoding --------------------------------------------------------------------------


def test_quantise_roundtrip_error_bound_and_normalisation():
    torch.manual_seed(0)
    logits = torch.randn(300, 50, dtype=torch.float64) * torch.rand(300, 1, dtype=torch.float64) * 8
    logits[0] = 0.0  # uniform: every gap 0, scale 0
    logits[1, :3] = -math.inf  # zero-probability tokens (gap clipped)
    ids, lp, lt = topk_logprobs(logits, 16)
    codes, scale, log_tail = quantise_topk(lp, lt)
    assert codes.dtype == np.uint8 and codes.shape == (300, 15)
    assert scale.dtype == np.float16 and log_tail.dtype == np.float16
    lp_c, tail_c = dequantise_topk(codes, scale, log_tail)
    # the kept mass is 1 - (the stored) tail
    assert torch.allclose(lp_c.double().exp().sum(1) + tail_c.double(), torch.ones(300, dtype=torch.float64), atol=1e-5)
    # each gap log p_0 - log p_i is off by at most s/2 + the float16 rounding of s over 255 codes
    s = torch.from_numpy(scale.astype(np.float64))
    exact_gap = (lp[:, :1] - lp).clamp(max=100.0)
    got_gap = (lp_c[:, :1] - lp_c).double()
    bound = (s / 2 + 255 * s * 2.0**-11)[:, None] + 1e-5
    assert bool(((got_gap - exact_gap).abs() <= bound).all())
    # the log tail keeps tiny tails (a float16 tail mass would flush 1e-9 to 0)
    tiny = torch.tensor([[0.0, -30.0]], dtype=torch.float64)
    _, tail = dequantise_topk(*quantise_topk(torch.tensor([[-1e-9]], dtype=torch.float64), torch.tensor([-20.7])))
    assert float(tail) == pytest.approx(math.exp(-20.7), rel=20.7 * 2.0**-11)  # float16 of the log
    c, sc, lt1 = quantise_topk(tiny, torch.tensor([-math.inf]))  # k = 2, nothing outside
    lp1, t1 = dequantise_topk(c, sc, lt1)
    assert float(t1) == 0.0 and float(lp1.exp().sum()) == pytest.approx(1.0, abs=1e-6)


def test_k1_and_sizes():
    lp = torch.tensor([[-0.1], [-2.0]], dtype=torch.float64)
    lt = torch.log(-torch.expm1(lp[:, 0]))
    codes, scale, log_tail = quantise_topk(lp, lt)
    assert codes.shape == (2, 0)
    lp_c, _ = dequantise_topk(codes, scale, log_tail)
    assert torch.allclose(lp_c.double(), lp, atol=2e-3)
    assert [bytes_per_token(k, 32000) for k in (8, 32, 64)] == [27, 99, 195]
    assert bytes_per_token(32, 70000) == 32 * 4 + 31 + 4
    assert index_dtype(65536) == np.uint16 and index_dtype(65537) == np.int32
    with pytest.raises(ConfigError, match="k must"):
        bytes_per_token(0, 10)


# -- build and read ------------------------------------------------------------------------


def test_build_reads_back_aligned_with_dataset_rollout(tmp_path):
    lm, pairs = _teacher(), _dataset(7)
    cache = build_lm_cache(lm, pairs, 8, tmp_path / "c", batch_size=3, shard_size=2, temperature=1.5)
    assert len(cache) == 7 and cache.k == 8 and cache.temperature == 1.5
    assert len(cache.manifest["shards"]) == 4 and cache.manifest["encoding"]["ids"] == "uint16"
    assert cache.num_tokens == sum(len(c) for _, c in pairs)
    assert cache.payload_bytes_per_token == 3 * 8 + 3
    assert cache.payload_bytes_per_token < cache.bytes_per_token < cache.payload_bytes_per_token + 200
    LMCache(tmp_path / "c", dataset=pairs, teacher=lm)  # full verification, fingerprints match

    idx = [5, 0, 3]
    sub = [pairs[i] for i in idx]
    dense, r = _dense(lm, sub)
    got = cache.batch(idx)
    assert torch.equal(got.mask, r.completion_mask)
    ids, lp, tail = topk_teacher(dense, 8, 1.5)
    m = r.completion_mask
    assert torch.equal(got.ids[m], ids[m])
    assert torch.allclose(got.logprobs[m], lp[m], atol=0.02)
    assert torch.allclose(got.tail_mass[m], tail[m], rtol=2e-3, atol=1e-7)
    # a student's loss on the cache equals the loss on the exact top-k up to the quantisation
    student = torch.randn(dense.shape, requires_grad=True)
    cached = topk_token_divergence(student, got.ids, got.logprobs, got.tail_mass, m, temperature=1.5)
    exact = topk_token_divergence(student, ids, lp, tail, m, temperature=1.5)
    assert float(cached.detach()) == pytest.approx(float(exact.detach()), rel=2e-3)
    cached.backward()
    assert torch.isfinite(student.grad).all() and float(student.grad[~m].abs().sum()) == 0.0
    # ... and stays under the dense forward KL (a lower bound, objectives/topk.py)
    assert float(cached.detach()) <= float(token_divergence(student.detach(), dense, m, temperature=1.5)) + 1e-4


def test_k_equal_vocab_is_the_dense_teacher(tmp_path):
    lm, pairs = _teacher(vocab=12, seed=3, sharp=0.2), _dataset(3, vocab=12)
    cache = build_lm_cache(lm, pairs, 12, tmp_path / "c")
    dense, r = _dense(lm, pairs)
    b = cache.batch(range(3))
    assert float(b.tail_mass.abs().max()) == 0.0
    student = torch.randn(dense.shape)
    assert float(topk_token_divergence(student, b.ids, b.logprobs, b.tail_mass, b.mask)) == pytest.approx(
        float(token_divergence(student, dense, r.completion_mask)), abs=2e-3)


def test_large_vocab_uses_int32_ids(tmp_path):
    lm = TinyGPT(70000, 4, 1, 1, 8).eval()
    with torch.no_grad():
        lm.wte.weight.normal_(0, 1.0)
    pairs = [([1, 2], [3, 65999, 69999]), ([7], [5])]
    cache = build_lm_cache(lm, pairs, 4, tmp_path / "c")
    assert cache.manifest["encoding"]["ids"] == "int32" and cache.payload_bytes_per_token == 4 * 4 + 3 + 4
    dense, r = _dense(lm, pairs)
    assert torch.equal(cache.batch([0, 1]).ids[r.completion_mask], dense.topk(4, -1).indices[r.completion_mask])


# -- refusals ------------------------------------------------------------------------------


def test_refusals(tmp_path):
    lm, pairs = _teacher(), _dataset(4)
    out = tmp_path / "c"
    with pytest.raises(DataError, match="example 1 has an empty completion"):
        build_lm_cache(lm, [pairs[0], ([1], [])], 4, out)
    with pytest.raises(DataError, match="empty prompt"):
        build_lm_cache(lm, [([], [1])], 4, out)
    with pytest.raises(ConfigError, match=r"k must be an integer in \[1, 40\]"):
        build_lm_cache(lm, pairs, 41, out)
    assert not out.exists() and not any(tmp_path.iterdir())  # nothing left behind
    with pytest.raises(CacheNotFoundError, match="manifest.json is missing"):
        LMCache(out)
    build_lm_cache(lm, pairs, 4, out, shard_size=2)
    with pytest.raises(CacheError, match="already exists"):
        build_lm_cache(lm, pairs, 4, out)
    build_lm_cache(lm, pairs[:3], 4, out, shard_size=2, overwrite=True)
    with pytest.raises(CacheMismatchError, match="3 examples.*4 examples"):
        LMCache(out, dataset=pairs)
    with pytest.raises(CacheMismatchError, match="teacher weights"):
        LMCache(out, teacher=_teacher(seed=5))
    with pytest.raises(CacheIndexError, match="example 3 was asked"):
        LMCache(out).batch([0, 3])
    shard = out / "shards" / "00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheCorruptError, match="shards/00001.safetensors does not have the sha256"):
        LMCache(out)
    LMCache(out, verify="size")  # sizes only: opens
    shard.write_bytes(bytes(data[:-5]))
    with pytest.raises(CacheCorruptError, match="00001.safetensors is .* bytes but was written with"):
        LMCache(out, verify="size")


# -- the error figures, against formulas written here --------------------------------------


def test_cache_error_figures_match_formulas():
    torch.manual_seed(0)
    n, v, k, T = 6, 11, 3, 2.0
    t_logits = torch.randn(n, v, dtype=torch.float64) * 3
    s_logits = torch.randn(n, v, dtype=torch.float64)
    e = topk_cache_error(t_logits, s_logits, k, T, chunk=4)  # two chunks
    p = np.exp(t_logits.numpy() / T)
    p /= p.sum(1, keepdims=True)
    q = np.exp(s_logits.numpy() / T)
    q /= q.sum(1, keepdims=True)
    trunc, dense, topk_loss, ent, tails = [], [], [], [], []
    for i in range(n):
        order = np.argsort(-p[i])
        kept, rest = order[:k], order[k:]
        t = p[i, rest].sum()
        tails.append(t)
        # KL(p || p^k), p^k = p on kept, t / (v - k) on each other token
        trunc.append(sum(p[i, j] * math.log(p[i, j] / (t / (v - k))) for j in rest))
        dense.append(T * T * sum(p[i, j] * math.log(p[i, j] / q[i, j]) for j in range(v)))
        qt = q[i, rest].sum()
        coarse = sum(p[i, j] * math.log(p[i, j] / q[i, j]) for j in kept) + t * math.log(t / qt)
        topk_loss.append(T * T * coarse)
        ent.append(-sum(p[i] * np.log(p[i])))
    assert e["kl_dense_vs_exact_topk"] == pytest.approx(np.mean(trunc), rel=1e-9)
    assert e["student_loss_dense"] == pytest.approx(np.mean(dense), rel=1e-9)
    assert e["student_loss_exact_topk"] == pytest.approx(np.mean(topk_loss), rel=1e-9)
    assert e["teacher_entropy"] == pytest.approx(np.mean(ent), rel=1e-9)
    assert e["tail_mass"] == pytest.approx(np.mean(tails), rel=1e-9)
    # quantisation: small, non-negative, and the cached figures close to the exact ones
    assert 0.0 <= e["kl_quantisation"] < 1e-3
    assert e["kl_dense_vs_cached"] == pytest.approx(e["kl_dense_vs_exact_topk"], abs=5e-3)
    assert e["student_loss_cached"] == pytest.approx(e["student_loss_exact_topk"], abs=5e-3)
    assert e["student_loss_abs_diff"] == pytest.approx(
        np.mean(np.abs(np.array(dense) - np.array(topk_loss))), abs=5e-3)
    # k = V: no truncation
    full = topk_cache_error(t_logits, None, v, T)
    assert full["kl_dense_vs_exact_topk"] == 0.0 and full["tail_mass"] == 0.0 and full["kl_dense_vs_cached"] < 1e-4
