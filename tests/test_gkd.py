"""GKD (Agarwal et al., 2024, arXiv:2306.13649) vs supervised KD vs sequence KD as configs of the
sequence trainer: the fragments give valid configs, lmbda sets the share of on-policy steps, the
on-policy batch is the student's own sample scored by the generalized JSD written out here, and
the diagnostics of the reproduction (error rate by answer position, its slope) on hand cases."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from distillery.errors import ConfigError
from distillery.recipes.gkd import (
    gkd_arms,
    gkd_config,
    sequence_kd_config,
    supervised_kd_config,
)
from distillery.reproduce._common import compose
from distillery.sequence.config import parse_sequence_config
from distillery.sequence.diagnostics import (
    answer_position_errors,
    least_squares_slope,
    position_error_rates,
)
from distillery.sequence.models import TinyGPT
from distillery.sequence.run import make_trainer
from distillery.sequence.tasks import Example
from distillery.sequence.tokenizers import CharTokenizer
from distillery.sequence.trainer import SequenceTrainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = {"kind": "tiny_gpt", "params": {"dim": 16, "depth": 1, "heads": 2, "max_len": 16}}


def _base(**over):
    raw = {"engine": "sequence", "seed": 5,
           "data": {"task": {"name": "sorting", "params": {"length": 3}}, "num_train": 32},
           "student": TINY,
           "teacher": {"model": {"kind": "tiny_gpt", "params": {"dim": 16, "depth": 1, "heads": 2, "max_len": 16}}},
           "train": {"steps": 2, "batch_size": 8, "max_new_tokens": 4, "progress": False, "tensorboard": False},
           "eval": {"num_examples": 8}}
    return compose(raw, over)


def test_fragments_make_valid_configs():
    arms = gkd_arms("jsd", 0.3)
    assert set(arms) == {"on_policy", "supervised_kd", "sequence_kd"}
    on = parse_sequence_config(_base(**arms["on_policy"]))
    assert (on.mode, on.lmbda, on.divergence.kind, on.divergence.beta, on.train.temperature) == ("gkd", 1.0, "jsd", 0.3, 1.0)
    sup = parse_sequence_config(_base(**arms["supervised_kd"]))
    assert (sup.mode, sup.divergence.kind, sup.divergence.beta) == ("supervised", "jsd", 0.3)
    seq = parse_sequence_config(_base(**arms["sequence_kd"]))
    assert (seq.mode, seq.divergence.kind) == ("sequence_kd", "ce")
    assert gkd_config(0.5, "reverse_kl")["divergence"] == {"kind": "reverse_kl", "temperature": 1.0}
    assert supervised_kd_config("forward_kl")["mode"] == "supervised"
    assert sequence_kd_config() == {"mode": "sequence_kd", "divergence": {"kind": "ce"}}
    with pytest.raises(ConfigError, match="lmbda"):
        gkd_config(1.5)
    with pytest.raises(ConfigError, match="ce"):
        gkd_config(1.0, "ce")


def test_shipped_configs_parse_and_name_their_teacher():
    for name in ("gkd_sorting", "minillm_sorting", "sorting_teacher"):
        raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        cfg = parse_sequence_config(raw, name)
        if cfg.teacher is not None:
            assert (CONFIGS / f"{Path(cfg.teacher.run).name}.yaml").is_file()
    cfg = parse_sequence_config(yaml.safe_load((CONFIGS / "gkd_sorting.yaml").read_text()))
    assert (cfg.mode, cfg.lmbda, cfg.divergence.kind) == ("gkd", 1.0, "jsd")


def _coins(lmbda: float, seed: int = 0, n: int = 400) -> list[bool]:
    cfg = parse_sequence_config(_base(**gkd_config(lmbda), seed=seed))
    holder = SimpleNamespace(cfg=cfg)
    return [SequenceTrainer.is_on_policy(holder, step) for step in range(n)]


def test_lmbda_is_the_share_of_on_policy_steps():
    assert not any(_coins(0.0))  # lmbda 0: supervised KD only
    assert all(_coins(1.0))  # lmbda 1: pure on-policy
    half = _coins(0.5)
    assert 0.42 <= sum(half) / len(half) <= 0.58  # 400 fair coins: 4 standard deviations
    assert half == _coins(0.5)  # seeded by (seed, step): the same on every rank and after a resume
    assert sum(_coins(0.2)) / 400 == pytest.approx(0.2, abs=0.08)
    sup = parse_sequence_config(_base(**supervised_kd_config()))
    assert not SequenceTrainer.is_on_policy(SimpleNamespace(cfg=sup), 0)


def _jsd_written_out(s_logits, t_logits, mask, beta):
    """sum over counted tokens of beta KL(p_t || m) + (1 - beta) KL(p_s || m), m = beta p_t + (1 - beta) p_s."""
    ps, pt = s_logits.double().softmax(-1), t_logits.double().softmax(-1)
    m = beta * pt + (1 - beta) * ps
    kl_t = (pt * (pt.log() - m.log())).sum(-1)
    kl_s = (ps * (ps.log() - m.log())).sum(-1)
    return ((beta * kl_t + (1 - beta) * kl_s) * mask.double()).sum()


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_on_policy_step_is_the_generalized_jsd_on_the_students_own_samples(beta):
    torch.manual_seed(0)
    cfg = parse_sequence_config(_base(**gkd_config(1.0, "jsd", beta)))
    tr = make_trainer(cfg, None)
    tr.world, tr.rank, tr.completions = 1, 0, tr.built.completions
    assert tr.is_on_policy(0)
    r, extra = tr.batch_for(list(range(8)), 0, on_policy=True)
    # the batch is the student's own temperature-1 sample: its log-probs are the student's
    from distillery.sequence.teachers import completion_logits

    prompt = r.tokens[:, :r.tokens.shape[1] - r.completion.shape[1]], r.attention_mask[:, :r.tokens.shape[1] - r.completion.shape[1]]
    with torch.no_grad():
        s = completion_logits(tr.student, *prompt, r.completion, r.completion_mask)
        t = completion_logits(tr.teacher.lm, *prompt, r.completion, r.completion_mask)
    lp = s.log_softmax(-1).gather(-1, r.completion[..., None])[..., 0]
    torch.testing.assert_close(r.logprobs[r.completion_mask], lp[r.completion_mask], atol=1e-5, rtol=1e-5)
    assert set(extra) >= {"texts", "rewards", "feedback"}
    loss, figures = tr.loss_of(r, extra, on_policy=True)
    torch.testing.assert_close(loss.double(), _jsd_written_out(s, t, r.completion_mask, beta), atol=1e-5, rtol=1e-5)
    assert "reward" in figures


def test_supervised_kd_scores_the_dataset_answers_and_sequence_kd_the_teachers():
    torch.manual_seed(0)
    cfg = parse_sequence_config(_base(**supervised_kd_config("jsd", 0.5)))
    tr = make_trainer(cfg, None)
    tr.world, tr.rank, tr.completions = 1, 0, tr.built.completions
    r, _ = tr.batch_for([0, 1, 2], 0, on_policy=False)
    tok = tr.tok
    for row, m, ex in zip(r.completion.tolist(), r.completion_mask.tolist(), tr.built.train[:3]):
        kept = [t for t, k in zip(row, m) if k]
        assert kept == tok.encode(ex.answer) + [tok.eos_id]
    # sequence KD: cross-entropy on the teacher's greedy completions
    cfg = parse_sequence_config(_base(**sequence_kd_config()))
    tr = make_trainer(cfg, None)
    tr.world, tr.rank = 1, 0
    tr.completions = tr.teacher_completions()
    from distillery.sequence.teachers import left_pad, rollout

    ids, mask = left_pad(tr.built.prompts[:4], tok.pad_id)
    greedy = rollout(tr.teacher.lm, ids, mask, max_new_tokens=4, temperature=0.0, eos_id=tok.eos_id, pad_id=tok.pad_id)
    for i, (row, m) in enumerate(zip(greedy.completion.tolist(), greedy.completion_mask.tolist())):
        assert tr.completions[i] == [t for t, k in zip(row, m) if k]
    r, extra = tr.batch_for([0, 1, 2, 3], 0, on_policy=False)
    loss, _ = tr.loss_of(r, extra, on_policy=False)
    from distillery.sequence.teachers import completion_logits

    p = r.tokens.shape[1] - r.completion.shape[1]
    with torch.no_grad():
        s = completion_logits(tr.student, r.tokens[:, :p], r.attention_mask[:, :p], r.completion, r.completion_mask)
    nll = -s.log_softmax(-1).gather(-1, r.completion[..., None])[..., 0]
    torch.testing.assert_close(loss.detach(), nll[r.completion_mask].sum(), atol=1e-5, rtol=1e-5)


def test_answer_position_errors_by_hand():
    answers = ["123", "456", "78"]
    got = ["123", "406", " 7"]  # second wrong at position 2; third: position 2 missing (whitespace stripped)
    assert answer_position_errors(answers, got) == [0.0, 2 / 3, 0.0]
    # a dropped character shifts everything after it: every later position counts as wrong
    assert answer_position_errors(["12345"], ["1245"]) == [0.0, 0.0, 1.0, 1.0, 1.0]
    with pytest.raises(ConfigError):
        answer_position_errors(["1"], [])


def test_least_squares_slope_closed_forms():
    assert least_squares_slope([0.0, 0.1, 0.2, 0.3]) == pytest.approx(0.1)
    assert least_squares_slope([5.0, 5.0, 5.0]) == 0.0
    # y = (0, 1, 0, 1) over x = 1..4: slope = sum (x - 2.5)(y - 0.5) / sum (x - 2.5)^2 = 1 / 5
    assert least_squares_slope([0, 1, 0, 1]) == pytest.approx(0.2)
    assert least_squares_slope([1.0, 3.0], positions=[0.0, 4.0]) == pytest.approx(0.5)
    with pytest.raises(ConfigError):
        least_squares_slope([1.0])


class _Constant(TinyGPT):
    """Always the same next-token logits (a table over the vocabulary), whatever the input."""

    def __init__(self, logits: torch.Tensor, max_len: int = 16) -> None:
        super().__init__(vocab=logits.numel(), dim=4, depth=1, heads=1, max_len=max_len)
        self.table = logits

    def forward(self, input_ids, attention_mask=None, past=None, use_cache=False):
        from distillery.sequence.models import LMOutput

        b, t = input_ids.shape
        return LMOutput(self.table.expand(b, t, -1).clone(), () if use_cache else None, torch.zeros(b, t, 4))


def test_position_error_rates_of_a_model_that_always_says_one():
    tok = CharTokenizer("0123456789>")
    logits = torch.full((tok.vocab_size,), -30.0)
    logits[tok.encode("1")[0]] = 30.0
    lm = _Constant(logits)
    examples = [Example("312>", "123"), Example("111>", "111"), Example("910>", "019")]
    rates = position_error_rates(lm, tok, examples, max_new_tokens=3)
    assert rates == pytest.approx([1 / 3, 1 / 3, 2 / 3])  # "111" against 123, 111, 019
    assert math.isfinite(least_squares_slope(rates))
