"""Teachers of the sequence engine: scoring positions, sync modes (EMA direction), privileged prompts."""

from __future__ import annotations

import pytest
import torch

from distillery.errors import ConfigError
from distillery.sequence.models import TinyGPT
from distillery.sequence.tasks import Example
from distillery.sequence.teachers import (
    SequenceTeacher,
    completion_logits,
    dataset_rollout,
    ema_update_,
    left_pad,
    resolve_prompt_fn,
)


def _lm(seed: int = 0) -> TinyGPT:
    torch.manual_seed(seed)
    return TinyGPT(vocab=11, dim=16, depth=1, heads=2, max_len=24)


def test_ema_moves_teacher_towards_student_not_the_reverse():
    teacher, student = _lm(0), _lm(1)
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    s0 = {k: v.clone() for k, v in student.state_dict().items()}
    ema_update_(teacher, student, 0.9)
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, 0.9 * t0[k] + 0.1 * s0[k])  # teacher <- decay*teacher + (1-decay)*student
        torch.testing.assert_close(student.state_dict()[k], s0[k])  # the student is untouched


def test_sync_modes():
    student = _lm(1)
    ema = SequenceTeacher(None, student, sync="ema", decay=0.5)
    hard = SequenceTeacher(None, student, sync="hard_copy", every=2)
    live = SequenceTeacher(None, student, sync="live")
    frozen = SequenceTeacher(_lm(3), student, sync="frozen")
    assert live.lm is student and ema.lm is not student and not any(p.requires_grad for p in ema.lm.parameters())
    before = student.wte.weight.detach().clone()
    with torch.no_grad():
        student.wte.weight.add_(1.0)
    frozen_w = frozen.lm.wte.weight.clone()
    for t in (ema, hard, frozen):
        t.after_step(1)
    torch.testing.assert_close(ema.lm.wte.weight, before + 0.5)
    torch.testing.assert_close(hard.lm.wte.weight, before)  # step 1: not a multiple of every=2
    hard.after_step(2)
    torch.testing.assert_close(hard.lm.wte.weight, student.wte.weight)
    torch.testing.assert_close(frozen.lm.wte.weight, frozen_w)


def test_score_positions_match_a_full_forward():
    lm = _lm(2)
    prompts, comps = [[1, 5, 6], [1, 7]], [[3, 4, 2], [8, 2]]
    r = dataset_rollout(prompts, comps, pad_id=0)
    logits = SequenceTeacher(lm, lm, sync="frozen").score(r)
    assert logits.shape == (2, 3, 11)
    for b in range(2):  # unpadded reference: logits of token n come from position len(prompt) + n - 1
        seq = torch.tensor([prompts[b] + comps[b]])
        ref = lm(seq).logits[0]
        for n in range(len(comps[b])):
            torch.testing.assert_close(logits[b, n], ref[len(prompts[b]) + n - 1], atol=1e-5, rtol=1e-5)


def test_privileged_prompt_changes_the_context_not_the_scored_tokens():
    lm = _lm(4)
    teacher = SequenceTeacher(lm, lm, sync="frozen")
    r = dataset_rollout([[1, 5]], [[6, 2]], pad_id=0)
    ids, mask = left_pad([[1, 9, 9, 5]], 0)
    got = teacher.score(r, ids, mask)
    ref = lm(torch.tensor([[1, 9, 9, 5, 6, 2]])).logits[0, 3:5]
    torch.testing.assert_close(got[0], ref, atol=1e-5, rtol=1e-5)
    student_logits = completion_logits(lm, *left_pad([[1, 5]], 0), r.completion, r.completion_mask)
    assert not torch.allclose(student_logits, got)


def test_prompt_functions():
    fn = resolve_prompt_fn("reference_answer")
    assert fn(Example("12+3=", "15"), "14", 0.0, "wrong") == "12+3=15="
    assert resolve_prompt_fn("own_attempt")(Example("12+3=", "15"), "14", 0.0, "") == "12+3=14="
    assert resolve_prompt_fn("distillery.sequence.teachers:own_attempt") is fn.__globals__["own_attempt"]
    with pytest.raises(ConfigError, match="neither a registered prompt"):
        resolve_prompt_fn("nope")
    with pytest.raises(ConfigError, match="cannot load"):
        resolve_prompt_fn("distillery.sequence.teachers:missing")
