"""Sequence engine data: tokenizers, prompt/completion JSONL, collate/packing, procedural tasks."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from distillery.errors import ConfigError, DataError
from distillery.sequence.data import (
    IGNORE_INDEX,
    PromptCompletion,
    collate,
    completion_token_nll,
    read_prompt_completion_jsonl,
    tokenize_examples,
)
from distillery.sequence.models import TinyGPT
from distillery.sequence.tasks import TASKS, AdditionTask, DyckTask, build_task
from distillery.sequence.tokenizers import CharTokenizer, ChunkTokenizer, train_bpe

TEXTS = ["the cat sat on the mat.", "a dog and a cat ran.", "12+34=46", "the mat is red and the dog is old."] * 3


# ------------------------------------------------------------------ tokenizers


def _check_spans(tok, text):
    ids = tok.encode(text, add_bos=True, add_eos=True)
    spans = tok.char_spans(ids)
    assert tok.decode(ids) == text
    assert spans[0] == (0, 0) and spans[-1] == (len(text), len(text))  # specials are empty
    pos = 0
    for i, (s, e) in zip(ids, spans):
        assert s == pos and text[s:e] == ("" if i < 3 else tok.token(i))
        pos = e
    assert pos == len(text)


def test_char_and_chunk_tokenizers_round_trip_with_spans():
    char = CharTokenizer("0123456789+= ")
    assert char.encode("12+3=", add_bos=True) == [1, 4, 5, 13, 6, 14]
    assert char.decode([1, 4, 5, 2], skip_special=False) == "<bos>12<eos>"
    chunk = ChunkTokenizer(2)
    ids = chunk.encode("12345+67=8")
    assert [chunk.token(i) for i in ids] == ["12", "34", "5", "+", "67", "=", "8"]
    assert chunk.vocab_size == 3 + 110 + len("+-=*:()[] ")
    for tok, text in ((char, "123+45= 6"), (chunk, "123+45= 6")):
        _check_spans(tok, text)
    with pytest.raises(DataError, match="'x'"):
        char.encode("1x")


def test_two_bpe_vocabularies_on_the_same_text():
    small, large = train_bpe(TEXTS, 30), train_bpe(TEXTS, 90)
    assert small.vocab_size < large.vocab_size
    text = "the cat and the dog sat."
    a, b = small.encode(text), large.encode(text)
    assert len(b) < len(a)  # more merges, fewer tokens
    assert [small.token(i) for i in a] != [large.token(i) for i in b]
    for tok in (small, large):
        _check_spans(tok, text)
    with pytest.raises(DataError, match="alphabet"):
        small.encode("QZ")


@pytest.mark.parametrize("which", ["char", "chunk", "bpe"])
def test_hf_tokenizer_has_the_same_ids(which, tmp_path):
    from transformers import AutoTokenizer

    tok = {"char": CharTokenizer("0123456789+= "), "chunk": ChunkTokenizer(2), "bpe": train_bpe(TEXTS, 50)}[which]
    text = "the cat sat." if which == "bpe" else "123+45= 6"
    tok.hf_tokenizer().save_pretrained(str(tmp_path))
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    ids = hf(text)["input_ids"]
    assert ids == tok.encode(text) and hf.decode(ids) == text
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id) == (0, 1, 2)


# ------------------------------------------------------------------ JSONL


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_prompt_completion_jsonl(tmp_path):
    p = _write(tmp_path / "ok.jsonl", [json.dumps({"prompt": "1+1=", "completion": "2"}), "",
                                       json.dumps({"q": "2+2=", "a": "4", "prompt": "x", "completion": "y"})])
    assert read_prompt_completion_jsonl(p) == [PromptCompletion("1+1=", "2"), PromptCompletion("x", "y")]
    assert read_prompt_completion_jsonl(p, prompt_key="prompt", completion_key="completion")[1].completion == "y"


@pytest.mark.parametrize("bad,match", [
    ('{"prompt": "1+1=", "completion": ', "line 2: not valid JSON"),
    ('{"prompt": "1+1="}', "line 2: missing field 'completion'"),
    ('{"prompt": "1+1=", "completion": ""}', "line 2: empty completion"),
    ('{"prompt": 3, "completion": "4"}', "line 2: field 'prompt' must be a string"),
    ('["1+1=", "2"]', "line 2: expected a JSON object"),
])
def test_bad_jsonl_lines_name_file_and_line(tmp_path, bad, match):
    p = _write(tmp_path / "bad.jsonl", [json.dumps({"prompt": "a", "completion": "b"}), bad])
    with pytest.raises(DataError, match=match) as err:
        read_prompt_completion_jsonl(p)
    assert "bad.jsonl" in str(err.value)


def test_missing_or_empty_jsonl_file(tmp_path):
    with pytest.raises(DataError, match="no such"):
        read_prompt_completion_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="empty"):
        read_prompt_completion_jsonl(_write(tmp_path / "e.jsonl", [""]))


# ------------------------------------------------------------------ collate


def _examples():
    tok = CharTokenizer("0123456789+=")
    records = [PromptCompletion("12+3=", "15"), PromptCompletion("1+1=", "2"), PromptCompletion("99+99=", "198")]
    return tok, tokenize_examples(records, tok)


def test_collate_labels_only_on_completion_tokens():
    tok, ex = _examples()
    right = collate(ex, pad_id=tok.pad_id)
    # row 1: <bos> 1 + 1 = | 2 <eos> | pad...
    assert right.input_ids[1].tolist()[:7] == tok.encode("1+1=", add_bos=True) + tok.encode("2", add_eos=True)
    assert right.labels[1].tolist() == [IGNORE_INDEX] * 5 + tok.encode("2", add_eos=True) + [IGNORE_INDEX] * 4
    assert right.attention_mask[1].tolist() == [1] * 7 + [0] * 4
    left = collate(ex, pad_id=tok.pad_id, padding_side="left")
    assert left.attention_mask[1].tolist() == [0] * 4 + [1] * 7
    assert left.labels[1, -2:].tolist() == tok.encode("2", add_eos=True)
    assert left.position_ids[1].tolist() == [0] * 4 + list(range(7))
    assert int(right.completion_mask.sum()) == sum(len(c) for _, c in ex)
    with pytest.raises(DataError, match="example 2 has 11 tokens"):
        collate(ex, pad_id=0, max_length=10)
    with pytest.raises(DataError, match="empty completion"):
        collate([([1, 4], [])], pad_id=0)
    with pytest.raises(ConfigError, match="padding_side"):
        collate(ex, pad_id=0, padding_side="middle")


def test_packed_batch_gives_the_same_per_token_loss_as_unpacked():
    tok, ex = _examples()
    torch.manual_seed(0)
    lm = TinyGPT(tok.vocab_size, 16, 2, 2, 32).double().eval()
    plain = collate(ex, pad_id=tok.pad_id)
    packed = collate(ex, pad_id=tok.pad_id, max_length=20, pack=True)
    assert packed.input_ids.shape == (2, 20)  # 9 + 7 tokens in row 0, 11 in row 1
    assert packed.attention_mask[0].tolist() == [1] * 9 + [2] * 7 + [0] * 4
    assert packed.position_ids[0].tolist()[:16] == list(range(9)) + list(range(7))
    nll_plain = completion_token_nll(lm(plain.input_ids, plain.attention_mask).logits, plain.labels)
    nll_packed = completion_token_nll(lm(packed.input_ids, packed.attention_mask).logits, packed.labels)
    a = nll_plain[plain.completion_mask]
    b = torch.cat([nll_packed[0][packed.completion_mask[0]], nll_packed[1][packed.completion_mask[1]]])
    assert a.shape == b.shape == (len(ex[0][1]) + len(ex[1][1]) + len(ex[2][1]),)
    assert torch.allclose(a, b, atol=1e-12)
    # the per-token loss is the cross-entropy written out
    logits = lm(plain.input_ids, plain.attention_mask).logits
    row, t = 0, 6
    expected = -logits[row, t - 1].log_softmax(-1)[plain.labels[row, t]]
    assert torch.isclose(nll_plain[row, t], expected)


# ------------------------------------------------------------------ tasks


CORE_TASKS = ("addition", "sorting", "dyck", "program")  # the methods' own tasks (registered when their
# modules are imported, and some checking only the final answer, as STaR does) are tested in their files


def test_core_tasks_are_registered():
    assert set(CORE_TASKS) <= set(TASKS)


@pytest.mark.parametrize("kind", CORE_TASKS)
def test_verifier_accepts_the_answer_and_rejects_perturbations(kind):
    task = build_task({"kind": kind})
    examples = task.sample(8, torch.Generator().manual_seed(0))
    assert examples == task.sample(8, torch.Generator().manual_seed(0))
    for ex in examples:
        assert set(ex.prompt + ex.answer) <= set(task.alphabet)
        assert task.verify(ex.prompt, ex.answer) == (1.0, "correct")
        assert task.verify(ex.prompt, " " + ex.answer + " ")[0] == 1.0
        for i in range(len(ex.answer)):  # every single-character substitution is rejected
            for c in sorted(set(task.alphabet) - {ex.answer[i], "=", ">", ":", " "})[:3]:
                wrong = ex.answer[:i] + c + ex.answer[i + 1:]
                assert task.verify(ex.prompt, wrong)[0] == 0.0, (ex, wrong)
        assert task.verify(ex.prompt, ex.answer[:-1])[0] == 0.0
        if kind != "dyck":
            assert task.verify(ex.prompt, ex.answer + "1")[0] == 0.0


def test_addition_feedback_names_the_first_wrong_position():
    task = AdditionTask(digits=3)
    assert task.answer("123+989=") == "1112"
    assert task.verify("123+989=", "1102") == (0.0, "wrong at position 3: expected '1', got '0'")
    assert task.verify("123+989=", "111") == (0.0, "too short: position 4 onwards is missing")
    assert AdditionTask(3, reverse=True).answer("123+989=") == "2111"
    with pytest.raises(DataError, match="not a prompt"):
        task.verify("12*3=", "36")


def test_dyck_accepts_any_balancing_completion_and_names_the_error():
    task = DyckTask(kinds=2)
    assert task.answer("([()=") == "])"
    assert task.verify("([()=", "])()")[0] == 1.0
    assert task.verify("([()=", ")]") == (0.0, "wrong at position 1: expected ']', got ')'")
    assert task.verify("([()=", "]") == (0.0, "too short: 1 bracket(s) still open, next expected ')'")


def test_program_and_sorting_answers():
    assert build_task({"kind": "program"}).answer("inc rev:312=") == "324"
    assert build_task({"kind": "program"}).answer("dbl dbl:59=") == "06"
    assert build_task({"kind": "sorting", "params": {"length": 4}}).answer("3141>") == "1134"
    with pytest.raises(ConfigError, match="kind"):
        build_task({"kind": "chess"})
    with pytest.raises(ConfigError, match="digits"):
        build_task({"kind": "addition", "params": {"digits": 0}})
