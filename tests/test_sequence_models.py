"""Sequence engine models: TinyGPT == HF GPT-2 with copied weights, KV cache, packing, build/save."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from distillery.errors import ConfigError
from distillery.sequence.models import (
    CausalLM,
    TinyGPT,
    as_causal_lm,
    build_lm,
    copy_from_gpt2,
    copy_into_gpt2,
    lm_head_weight,
    positions_from_mask,
    save_lm,
)

pytest.importorskip("transformers")


def _tiny(dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    args = {"vocab": 23, "dim": 16, "depth": 2, "heads": 4, "max_len": 32} | kw
    return TinyGPT(**args).to(dtype).eval()


def _left_padded(b=3, t=9, vocab=23, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(vocab, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    for i in range(b):
        mask[i, : 2 * i] = 0
    return ids, mask


def test_positions_from_mask_counts_within_segments():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 2, 2, 0], [1, 0, 1, 1, 0]])
    expected = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 0, 1, 0], [0, 0, 1, 2, 0]])
    assert torch.equal(positions_from_mask(mask), expected)


def test_tiny_gpt_equals_hf_gpt2_with_copied_weights():
    tiny = _tiny()
    with torch.no_grad():  # non-trivial LayerNorm parameters and biases
        for p in tiny.parameters():
            p.add_(0.1 * torch.randn_like(p))
    hf = copy_into_gpt2(tiny)
    ids, mask = _left_padded()
    ours, theirs = tiny(ids, mask), as_causal_lm(hf)(ids, mask)
    real = mask.bool()
    assert torch.allclose(ours.logits[real], theirs.logits[real], atol=1e-10, rtol=0)
    assert torch.allclose(ours.hidden[real], theirs.hidden[real], atol=1e-10, rtol=0)
    back = copy_from_gpt2(hf)
    assert torch.allclose(back(ids, mask).logits, ours.logits, atol=1e-12, rtol=0)


def test_gelu_is_the_tanh_approximation():
    # one layer, the residual MLP branch only: compare to the formula written out
    tiny = _tiny(depth=1)
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    block = tiny.h[0]
    allowed = torch.ones(2, 1, 3, 3, dtype=torch.bool).tril()
    out, _ = block(x, allowed, None)
    attn, _ = block.attn(block.ln_1(x), allowed, None)
    h = x + attn
    u = block.c_fc(block.ln_2(h))
    gelu = 0.5 * u * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (u + 0.044715 * u**3)))
    assert torch.allclose(out, h + block.c_proj(gelu), atol=1e-12)


@pytest.mark.parametrize("kind", ["tiny", "hf"])
def test_kv_cache_forward_equals_full_forward(kind):
    tiny = _tiny()
    lm = tiny if kind == "tiny" else as_causal_lm(copy_into_gpt2(tiny))
    ids, mask = _left_padded()
    full = lm(ids, mask)
    first = lm(ids[:, :5], mask[:, :5], use_cache=True)
    second = lm(ids[:, 5:7], mask[:, :7], past=first.past, use_cache=True)
    third = lm(ids[:, 7:], mask, past=second.past)
    stepped = torch.cat([first.logits, second.logits, third.logits], dim=1)
    real = mask.bool()
    assert torch.allclose(stepped[real], full.logits[real], atol=1e-10, rtol=0)


@pytest.mark.parametrize("kind", ["tiny", "hf"])
def test_packed_segments_equal_separate_sequences(kind):
    tiny = _tiny()
    lm = tiny if kind == "tiny" else as_causal_lm(copy_into_gpt2(tiny))
    ids = torch.randint(23, (1, 10), generator=torch.Generator().manual_seed(3))
    seg = torch.tensor([[1, 1, 1, 2, 2, 2, 2, 3, 3, 0]])
    packed = lm(ids, seg).logits
    for lo, hi in ((0, 3), (3, 7), (7, 9)):
        alone = lm(ids[:, lo:hi]).logits
        assert torch.allclose(packed[:, lo:hi], alone, atol=1e-10, rtol=0)


def test_lm_head_weight_reproduces_logits():
    tiny = _tiny()
    ids, mask = _left_padded()
    out = tiny(ids, mask)
    w, b = lm_head_weight(tiny)
    assert b is None and torch.allclose(out.hidden @ w.T, out.logits, atol=1e-12)
    llama = build_lm({"kind": "hf", "config": "llama", "seed": 0, "params": {
        "vocab_size": 23, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 32}})
    lm = as_causal_lm(llama)
    assert isinstance(lm, CausalLM) and lm.max_len == 32
    out = lm(ids, mask)
    w, b = lm_head_weight(lm)
    logits = out.hidden @ w.T + (0 if b is None else b)
    assert out.logits.shape == (3, 9, 23) and torch.allclose(logits, out.logits, atol=1e-5)


def test_build_lm_errors_name_the_bad_key(tmp_path):
    with pytest.raises(ConfigError, match="kind"):
        build_lm({"kind": "rnn"})
    with pytest.raises(ConfigError, match="wrong_key"):
        build_lm({"kind": "hf", "config": "gpt2", "params": {"wrong_key": 1}})
    with pytest.raises(ConfigError, match="layers"):
        build_lm({"kind": "tiny_gpt", "params": {"vocab": 5, "dim": 8, "depth": 1, "heads": 2, "max_len": 8,
                                                 "layers": 2}})
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="nowhere"):
        build_lm({"kind": "hf", "path": str(missing)})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty"):
        build_lm({"kind": "hf", "path": str(tmp_path / "empty")})
    with pytest.raises(ConfigError, match="lora"):
        build_lm({"kind": "tiny_gpt", "params": {"vocab": 5, "dim": 8, "depth": 1, "heads": 2, "max_len": 8},
                  "lora": {"rank": 2}})


def test_saved_hf_student_loads_back_and_generates_the_same_tokens(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillery.sequence.sampler import generate
    from distillery.sequence.tokenizers import CharTokenizer

    tok = CharTokenizer("0123456789+=")
    model = build_lm({"kind": "hf", "config": "gpt2", "seed": 0, "params": {
        "vocab_size": tok.vocab_size, "n_positions": 32, "n_embd": 16, "n_layer": 2, "n_head": 2}})
    prompt = torch.tensor([tok.encode("12+34=", add_bos=True)])
    ours = generate(model, prompt, max_new_tokens=6, temperature=0.0, pad_id=tok.pad_id).completion
    save_lm(model, tok, tmp_path / "student")
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "student")).eval()
    hf_tok = AutoTokenizer.from_pretrained(str(tmp_path / "student"))
    assert hf_tok("12+34=")["input_ids"] == tok.encode("12+34=")
    theirs = loaded.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False,
                             pad_token_id=tok.pad_id)[:, prompt.shape[1]:]
    assert torch.equal(ours, theirs)
    again = build_lm({"kind": "hf", "path": str(tmp_path / "student")})
    assert torch.equal(generate(again, prompt, max_new_tokens=6, temperature=0.0, pad_id=0).completion, ours)


def test_lora_adapter_saves_and_loads_back_with_the_same_logits(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = build_lm({"kind": "hf", "config": "gpt2", "seed": 0, "params": {
        "vocab_size": 20, "n_positions": 16, "n_embd": 16, "n_layer": 1, "n_head": 2}})
    base.save_pretrained(str(tmp_path / "base"))
    student = build_lm({"kind": "hf", "path": str(tmp_path / "base"), "lora": {"r": 2, "alpha": 4}})
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # lora_B starts at zero: make the adapter change the logits
        for n, p in student.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)
    ids = torch.randint(20, (2, 7), generator=torch.Generator().manual_seed(0))
    expected = as_causal_lm(student)(ids).logits
    assert not torch.allclose(expected, as_causal_lm(base)(ids).logits, atol=1e-4)
    save_lm(student, None, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tmp_path / "base")),
                                         str(tmp_path / "adapter")).eval()
    assert torch.allclose(as_causal_lm(reloaded)(ids).logits, expected, atol=1e-6)


def test_tiny_gpt_save_and_build_from_path(tmp_path):
    tiny = _tiny(dtype=torch.float32)
    save_lm(tiny, None, tmp_path / "tiny")
    again = build_lm({"kind": "tiny_gpt", "path": str(tmp_path / "tiny")}).eval()
    ids, mask = _left_padded()
    assert torch.equal(again(ids, mask).logits, tiny(ids, mask).logits)


def test_import_distillery_does_not_load_transformers():
    code = ("import sys, distillery, distillery.sequence.models, distillery.sequence.sampler, "
            "distillery.sequence.data, distillery.sequence.tasks, distillery.sequence.tokenizers; "
            "bad = [m for m in ('transformers', 'peft', 'tokenizers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lora_on_tiny_gpt_changes_the_logits_through_the_adapter(tmp_path):
    spec = {"kind": "tiny_gpt", "seed": 0, "params": {"vocab": 11, "dim": 16, "depth": 1, "heads": 2, "max_len": 16}}
    plain = build_lm(spec).eval()
    student = build_lm(spec | {"lora": {"r": 2, "target_modules": ["c_attn"]}}).eval()
    ids = torch.randint(11, (2, 5), generator=torch.Generator().manual_seed(0))
    lm = as_causal_lm(student)
    assert torch.allclose(lm(ids).logits, plain(ids).logits, atol=1e-6)  # lora_B = 0 at the start
    with torch.no_grad():
        for n, p in student.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)
    assert not torch.allclose(lm(ids).logits, plain(ids).logits, atol=1e-4)
    save_lm(student, None, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
