"""MiniLLM (Gu et al., 2024, arXiv:2306.08543) vs forward-KL KD as configs of the sequence trainer:
the fragments give valid configs; on the student's own samples the trainer's loss is the per-token
reverse KL written out here (full vocabulary) or, with ``estimator: pg``, a surrogate whose value
is the sampled k1 sum and whose gradient is the REINFORCE gradient with the cost-to-go (MiniLLM's
long-term reward) and a leave-one-out baseline, written out here; the baseline is the forward KL
on the dataset's answers; and the sample diagnostics (precision, distinct completions, entropy)
on models whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch

from distillery.errors import ConfigError
from distillery.recipes.minillm import forward_kl_config, minillm_arms, minillm_config
from distillery.reproduce._common import compose
from distillery.sequence.config import parse_sequence_config
from distillery.sequence.diagnostics import sample_precision_diversity
from distillery.sequence.models import LMOutput, TinyGPT
from distillery.sequence.run import make_trainer
from distillery.sequence.tasks import Example, SortingTask
from distillery.sequence.teachers import completion_logits
from distillery.sequence.tokenizers import CharTokenizer

TINY = {"kind": "tiny_gpt", "params": {"dim": 16, "depth": 1, "heads": 2, "max_len": 16}}


def _base(**over):
    raw = {"engine": "sequence", "seed": 7,
           "data": {"task": {"name": "sorting", "params": {"length": 3}}, "num_train": 32},
           "student": TINY,
           "teacher": {"model": {"kind": "tiny_gpt", "params": {"dim": 16, "depth": 1, "heads": 2, "max_len": 16}}},
           "train": {"steps": 2, "batch_size": 8, "max_new_tokens": 4, "progress": False, "tensorboard": False},
           "eval": {"num_examples": 8}}
    return compose(raw, over)


def test_fragments_make_valid_configs():
    arms = minillm_arms(policy_gradient=True, forward_on_policy=True)
    assert set(arms) == {"reverse_kl", "forward_kl", "reverse_kl_pg", "forward_kl_on_policy"}
    rkl = parse_sequence_config(_base(**arms["reverse_kl"]))
    assert (rkl.mode, rkl.divergence.kind, rkl.divergence.estimator, rkl.train.temperature) == ("on_policy", "reverse_kl", None, 1.0)
    pg = parse_sequence_config(_base(**arms["reverse_kl_pg"]))
    assert (pg.mode, pg.divergence.kind, pg.divergence.estimator, pg.divergence.advantage) == ("on_policy", "reverse_kl", "pg", "per_token")
    fkl = parse_sequence_config(_base(**arms["forward_kl"]))
    assert (fkl.mode, fkl.divergence.kind) == ("supervised", "forward_kl")
    assert parse_sequence_config(_base(**arms["forward_kl_on_policy"])).mode == "on_policy"
    assert set(minillm_arms()) == {"reverse_kl", "forward_kl"}
    assert forward_kl_config(2.0)["divergence"] == {"kind": "forward_kl", "temperature": 2.0}
    with pytest.raises(ConfigError, match="estimator"):
        minillm_config("iw")


def _trainer(frag):
    torch.manual_seed(0)
    tr = make_trainer(parse_sequence_config(_base(**frag)), None)
    tr.world, tr.rank, tr.completions = 1, 0, tr.built.completions
    return tr


def _logits(tr, r, grad=False):
    p = r.tokens.shape[1] - r.completion.shape[1]
    args = (r.tokens[:, :p], r.attention_mask[:, :p], r.completion, r.completion_mask)
    with torch.no_grad():
        t = completion_logits(tr.teacher.lm, *args)
    with torch.set_grad_enabled(grad):
        s = completion_logits(tr.student, *args)
    return s, t


def test_full_vocabulary_reverse_kl_on_the_students_samples():
    tr = _trainer(minillm_config())
    r, extra = tr.batch_for(list(range(8)), 0, on_policy=True)
    s, t = _logits(tr, r)
    ls, lt = s.double().log_softmax(-1), t.double().log_softmax(-1)
    per_token = (ls.exp() * (ls - lt)).sum(-1)  # KL(p_s || p_t) at each position
    expected = per_token[r.completion_mask].sum()
    loss, _ = tr.loss_of(r, extra, on_policy=True)
    torch.testing.assert_close(loss.double(), expected, atol=1e-5, rtol=1e-5)
    # the forward KL of the baseline is the other direction, on the dataset's answers
    tr = _trainer(forward_kl_config())
    r, extra = tr.batch_for(list(range(8)), 0, on_policy=False)
    s, t = _logits(tr, r)
    ls, lt = s.double().log_softmax(-1), t.double().log_softmax(-1)
    expected = (lt.exp() * (lt - ls)).sum(-1)[r.completion_mask].sum()
    loss, _ = tr.loss_of(r, extra, on_policy=False)
    torch.testing.assert_close(loss.double(), expected, atol=1e-5, rtol=1e-5)


def test_policy_gradient_value_and_gradient():
    tr = _trainer(minillm_config("pg"))
    r, extra = tr.batch_for(list(range(8)), 0, on_policy=True)
    mask = r.completion_mask
    # the trainer's loss and its gradient
    tr.student.zero_grad(set_to_none=True)
    loss, _ = tr.loss_of(r, extra, on_policy=True)
    loss.backward()
    got = [p.grad.clone() for p in tr.student.parameters()]
    # written out: c_t = log p_s(y_t) - log p_t(y_t); G_t = sum_{t' >= t} c_t'; leave-one-out mean
    # of G over the other sequences at the same position (where they have a token); surrogate
    # sum_t (G_t - b_t) log p_s(y_t) over counted tokens
    tr.student.zero_grad(set_to_none=True)
    s, t = _logits(tr, r, grad=True)
    lps = s.log_softmax(-1).gather(-1, r.completion[..., None])[..., 0]
    lpt = t.log_softmax(-1).gather(-1, r.completion[..., None])[..., 0]
    m = mask.double()
    c = (lps.detach().double() - lpt.double()) * m
    G = torch.zeros_like(c)
    B, N = c.shape
    for i in range(B):
        for n in range(N):
            G[i, n] = c[i, n:].sum()
    b = torch.zeros_like(G)
    for i in range(B):
        for n in range(N):
            others = [G[j, n] for j in range(B) if j != i and mask[j, n]]
            b[i, n] = sum(others) / len(others) if len(others) >= 1 and (mask[:, n].sum() > 1) else 0.0
    A = ((G - b) * m).float()
    surrogate = (A * torch.where(mask, lps, torch.zeros_like(lps))).sum()
    surrogate.backward()
    want = [p.grad.clone() for p in tr.student.parameters()]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    # its value is the k1 estimate of the sequence-level reverse KL, summed over the batch
    torch.testing.assert_close(loss.detach().double(), c.sum(), atol=1e-5, rtol=1e-5)


class _Constant(TinyGPT):
    """Always the same next-token logits, whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__(vocab=logits.numel(), dim=4, depth=1, heads=1, max_len=16)
        self.table = logits

    def forward(self, input_ids, attention_mask=None, past=None, use_cache=False):
        b, t = input_ids.shape
        return LMOutput(self.table.expand(b, t, -1).clone(), () if use_cache else None, torch.zeros(b, t, 4))


def test_sample_diagnostics_of_a_sure_model():
    task = SortingTask(length=3)
    tok = CharTokenizer(task.alphabet)
    logits = torch.full((tok.vocab_size,), -50.0)
    logits[tok.encode("1")[0]] = 50.0
    examples = [Example("111>", "111"), Example("311>", "113"), Example("121>", "112")]
    out = sample_precision_diversity(_Constant(logits), tok, examples, task.verify, samples_per_prompt=5, max_new_tokens=3, seed=3)
    assert out["precision"] == pytest.approx(1 / 3)  # "111" is right for the first prompt only
    assert out["distinct"] == 1.0
    assert out["entropy"] == pytest.approx(0.0, abs=1e-6)


def test_sample_diagnostics_of_a_uniform_model():
    task = SortingTask(length=3)
    tok = CharTokenizer(task.alphabet)
    lm = _Constant(torch.zeros(tok.vocab_size))
    examples = [Example("321>", "123")] * 4
    out = sample_precision_diversity(lm, tok, examples, task.verify, samples_per_prompt=16, max_new_tokens=3, seed=0)
    assert out["entropy"] == pytest.approx(math.log(tok.vocab_size), rel=1e-5)  # uniform at every sampled position
    assert out["distinct"] > 12  # 16 draws among ~V^3 completions rarely repeat
    assert out["precision"] < 0.05
    again = sample_precision_diversity(lm, tok, examples, task.verify, samples_per_prompt=16, max_new_tokens=3, seed=0)
    assert again == out  # seeded
    with pytest.raises(ConfigError):
        sample_precision_diversity(lm, tok, examples, task.verify, samples_per_prompt=0, max_new_tokens=3)
