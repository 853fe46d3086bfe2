"""Sequence engine sampler: KV cache == recompute, log-probs == a full forward, top-k/top-p, padding."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from distillery.errors import ConfigError
from distillery.sequence.models import TinyGPT, as_causal_lm, copy_into_gpt2
from distillery.sequence.sampler import filter_logits, generate

V, PAD, EOS = 13, 0, 2


def _tiny(seed=0, dtype=torch.float64, scale=1.0):
    torch.manual_seed(seed)
    lm = TinyGPT(vocab=V, dim=16, depth=2, heads=2, max_len=24).to(dtype).eval()
    with torch.no_grad():  # larger weights: peakier, more varied next-token distributions
        lm.wte.weight.mul_(scale)
    return lm


def _prompts():
    ids = torch.tensor([[0, 0, 0, 5, 6, 7], [0, 3, 4, 8, 9, 10], [4, 5, 6, 7, 8, 9]])
    mask = (torch.arange(6) >= torch.tensor([[3], [1], [0]])).long()
    return ids, mask


def _full_forward_logprobs(lm, out, p):
    logp = lm(out.tokens, out.attention_mask).logits.log_softmax(-1)
    n = out.completion.shape[1]
    return logp[:, p - 1:p - 1 + n].gather(2, out.completion[..., None])[..., 0]


@pytest.mark.parametrize("kind", ["tiny", "hf"])
def test_kv_cache_generation_equals_recomputing_the_prefix(kind):
    tiny = _tiny(scale=20.0, dtype=torch.float64 if kind == "tiny" else torch.float32)
    lm = tiny if kind == "tiny" else copy_into_gpt2(tiny)
    ids, mask = _prompts()
    kw = {"max_new_tokens": 10, "temperature": 0.0, "pad_id": PAD, "return_logits": True}
    cached, plain = generate(lm, ids, mask, use_cache=True, **kw), generate(lm, ids, mask, use_cache=False, **kw)
    assert torch.equal(cached.tokens, plain.tokens)
    assert torch.allclose(cached.logits, plain.logits, atol=1e-5, rtol=0)
    assert len(set(cached.completion.flatten().tolist())) > 2  # not a degenerate constant output
    assert torch.equal(cached.logprobs, torch.zeros_like(cached.logprobs))  # greedy: a point mass


def test_sampler_logprobs_equal_a_full_forward_pass():
    lm = _tiny(scale=8.0)
    ids, mask = _prompts()
    g = torch.Generator().manual_seed(0)
    out = generate(lm, ids, mask, max_new_tokens=12, eos_id=EOS, pad_id=PAD, generator=g)
    ref = _full_forward_logprobs(lm, out, ids.shape[1])
    m = out.completion_mask
    assert torch.allclose(out.logprobs[m], ref[m], atol=1e-10, rtol=0)
    assert torch.equal(out.logprobs[~m], torch.zeros_like(out.logprobs[~m]))
    assert torch.equal(out.attention_mask, torch.cat([mask, m.long()], dim=1))


def test_logprobs_with_temperature_and_filters_match_filtered_full_forward():
    lm = _tiny(scale=8.0)
    ids, mask = _prompts()
    out = generate(lm, ids, mask, max_new_tokens=8, temperature=0.7, top_k=5, top_p=0.9, pad_id=PAD,
                   generator=torch.Generator().manual_seed(1))
    p, n = ids.shape[1], out.completion.shape[1]
    logits = lm(out.tokens, out.attention_mask).logits[:, p - 1:p - 1 + n]
    ref = filter_logits(logits.reshape(-1, V), 0.7, 5, 0.9).reshape(3, n, V).gather(2, out.completion[..., None])[..., 0]
    assert torch.allclose(out.logprobs, ref, atol=1e-10, rtol=0)


def test_filter_logits_hand_computed():
    z = torch.tensor([[3.0, 2.0, 1.0, 0.0]], dtype=torch.float64)
    probs = torch.exp(z) / torch.exp(z).sum()  # 0.644, 0.237, 0.087, 0.032
    # top_p = 0.7: token 0 alone has 0.644 < 0.7, so tokens 0 and 1 are kept
    kept = filter_logits(z, top_p=0.7).exp()
    assert torch.allclose(kept, torch.cat([probs[:, :2] / probs[:, :2].sum(), torch.zeros(1, 2, dtype=z.dtype)], 1))
    # top_k = 3 then temperature 2: softmax of z/2 over the first three
    k3 = torch.exp(z[:, :3] / 2)
    assert torch.allclose(filter_logits(z, temperature=2.0, top_k=3).exp()[:, :3], k3 / k3.sum())
    # top_p small keeps the argmax only
    assert torch.equal(filter_logits(z, top_p=0.01).exp(), torch.tensor([[1.0, 0, 0, 0]], dtype=z.dtype))


@pytest.mark.parametrize("top_k,top_p", [(3, None), (None, 0.6), (4, 0.5)])
def test_top_k_top_p_never_sample_outside_the_kept_set(top_k, top_p):
    lm = _tiny(scale=3.0)
    ids, mask = _prompts()
    ids, mask = ids.repeat(20, 1), mask.repeat(20, 1)
    out = generate(lm, ids, mask, max_new_tokens=6, top_k=top_k, top_p=top_p, pad_id=PAD, return_logits=True,
                   generator=torch.Generator().manual_seed(2))
    probs = out.logits.softmax(-1)  # (B, N, V), temperature 1
    order = probs.argsort(-1, descending=True)
    rank = order.argsort(-1).gather(2, out.completion[..., None])[..., 0]  # 0 = most probable
    if top_k is not None:
        assert int(rank.max()) < top_k
    if top_p is not None:
        # independent rule: the kept set is the shortest prefix (by probability) reaching top_p
        sorted_p = probs.gather(2, order)
        before = sorted_p.cumsum(-1) - sorted_p
        mass_before_token = before.gather(2, rank[..., None])[..., 0]
        assert bool((mass_before_token < top_p).all())
    assert len(set(out.completion.flatten().tolist())) > 1


def test_same_generator_same_tokens():
    lm = _tiny(scale=3.0)
    ids, mask = _prompts()
    a = generate(lm, ids, mask, max_new_tokens=8, pad_id=PAD, generator=torch.Generator().manual_seed(5))
    b = generate(lm, ids, mask, max_new_tokens=8, pad_id=PAD, generator=torch.Generator().manual_seed(5))
    c = generate(lm, ids, mask, max_new_tokens=8, pad_id=PAD, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)


def test_left_padding_gives_the_same_completion_as_the_unpadded_prompt():
    lm = _tiny(scale=20.0)
    ids, mask = _prompts()
    batch = generate(lm, ids, mask, max_new_tokens=8, temperature=0.0, pad_id=PAD)
    for i in range(3):
        alone = ids[i:i + 1, mask[i].bool()]
        single = generate(lm, alone, max_new_tokens=8, temperature=0.0, pad_id=PAD)
        assert torch.equal(single.completion[0], batch.completion[i])
    # sampled, one row: extra left padding consumes the same random numbers
    kw = {"max_new_tokens": 8, "pad_id": PAD}
    padded = generate(lm, ids[:1], mask[:1], generator=torch.Generator().manual_seed(3), **kw)
    unpadded = generate(lm, ids[:1, 3:], generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(padded.completion, unpadded.completion)
    assert torch.allclose(padded.logprobs, unpadded.logprobs, atol=1e-10)


def test_stops_at_eos_per_sequence():
    lm = _tiny(scale=20.0)
    ids, mask = _prompts()
    greedy = generate(lm, ids, mask, max_new_tokens=6, temperature=0.0, pad_id=PAD)
    eos = int(greedy.completion[0, 1])  # the second token of row 0 plays EOS
    out = generate(lm, ids, mask, max_new_tokens=6, temperature=0.0, pad_id=PAD, eos_id=eos)
    for row in range(3):
        comp, m = out.completion[row], out.completion_mask[row]
        hits = (greedy.completion[row] == eos).nonzero()
        end = int(hits[0]) + 1 if len(hits) else 6
        assert m.tolist() == [True] * end + [False] * (out.completion.shape[1] - end)
        assert torch.equal(comp[:end], greedy.completion[row, :end])
        assert bool((comp[end:] == PAD).all())
    # all rows finished -> the loop stops early
    one = generate(lm, ids[:1], mask[:1], max_new_tokens=6, temperature=0.0, pad_id=PAD, eos_id=eos)
    end0 = int((greedy.completion[0] == eos).nonzero()[0]) + 1
    assert one.completion.shape[1] == end0 < 6 and one.tokens.shape[1] == ids.shape[1] + end0


def test_bad_inputs_raise_config_errors():
    lm = _tiny()
    with pytest.raises(ConfigError, match="longer than the model's context"):
        generate(lm, torch.ones(1, 30, dtype=torch.long), max_new_tokens=1, pad_id=PAD)
    with pytest.raises(ConfigError, match="exceed the model's context"):
        generate(lm, torch.ones(1, 20, dtype=torch.long), max_new_tokens=5, pad_id=PAD)
    with pytest.raises(ConfigError, match="left-padded"):
        generate(lm, torch.ones(1, 4, dtype=torch.long), torch.tensor([[1, 1, 0, 0]]), max_new_tokens=2, pad_id=PAD)
    with pytest.raises(ConfigError, match="temperature"):
        generate(lm, torch.ones(1, 4, dtype=torch.long), max_new_tokens=2, temperature=-1.0, pad_id=PAD)
    with pytest.raises(ConfigError, match="top_p"):
        generate(lm, torch.ones(1, 4, dtype=torch.long), max_new_tokens=2, top_p=0.0, pad_id=PAD)
    with pytest.raises(ConfigError, match="eos_id"):
        generate(lm, torch.ones(1, 4, dtype=torch.long), max_new_tokens=2, eos_id=V, pad_id=PAD)
    with pytest.raises(ConfigError, match="context"):
        generate(as_causal_lm(copy_into_gpt2(lm)), torch.ones(1, 30, dtype=torch.long), max_new_tokens=1, pad_id=PAD)
