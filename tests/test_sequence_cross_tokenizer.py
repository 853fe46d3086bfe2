"""A teacher with its own tokenizer in the sequence loop: a digit-level student against a
two-digit-chunk teacher (span-merged groups and ULD)."""

from __future__ import annotations

import itertools
import math
import os

import pytest
import torch

from distillery.errors import ConfigError
from distillery.sequence.config import parse_sequence_config
from distillery.sequence.run import build_sequence, make_trainer
from distillery.sequence.teachers import retokenized_rollout, span_groups
from distillery.sequence.tokenizers import CharTokenizer, ChunkTokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = {"kind": "tiny_gpt", "params": {"dim": 16, "depth": 1, "heads": 2, "max_len": 16}}
TEACHER = {"kind": "tiny_gpt", "params": {"dim": 24, "depth": 1, "heads": 2, "max_len": 16}}


def _raw(alignment="spans", **over):
    raw = {
        "engine": "sequence", "seed": 2,
        "data": {"task": {"name": "addition", "params": {"digits": 2}}, "num_train": 16},
        "tokenizer": {"kind": "char"},
        "student": TINY,
        "teacher": {"model": TEACHER, "tokenizer": {"kind": "chunk", "chunk": 2}},
        "mode": "supervised",
        "divergence": {"kind": "forward_kl", "alignment": alignment},
        "train": {"steps": 8, "batch_size": 16, "max_new_tokens": 4, "progress": False, "tensorboard": False,
                  "grad_clip": None, "optimizer": {"name": "adamw", "lr": 1e-2}},
        "eval": {"num_examples": 4},
    }
    raw.update(over)
    return raw


def _trainer(raw):
    trainer = make_trainer(parse_sequence_config(raw), None)
    trainer._set_up(False)
    return trainer


def test_groups_of_a_digit_and_a_chunk_tokenizer():
    s_tok, t_tok = CharTokenizer("0123456789+="), ChunkTokenizer(2, alphabet="+=")
    s = s_tok.encode("103") + [s_tok.eos_id]
    t = t_tok.encode("103") + [t_tok.eos_id]
    assert [t_tok.token(i) for i in t[:-1]] == ["10", "3"]
    assert span_groups(s, t, s_tok, t_tok) == [((0, 1), (0,)), ((2,), (1,)), ((3,), (2,))]
    s, t = s_tok.encode("1234"), t_tok.encode("1234")  # no EOS: no end group
    assert span_groups(s, t, s_tok, t_tok) == [((0, 1), (0,)), ((2, 3), (1,))]


def test_retokenized_rollout_reads_the_completion_text():
    from distillery.sequence.teachers import dataset_rollout

    s_tok, t_tok = CharTokenizer("0123456789+="), ChunkTokenizer(2, alphabet="+=")
    prompts = ["12+34=", "9+9="]
    comps = [s_tok.encode("46") + [s_tok.eos_id], s_tok.encode("18")]  # the second was cut before its EOS
    r = dataset_rollout([s_tok.encode(p, add_bos=True) for p in prompts], comps, s_tok.pad_id)
    t_r, s_rows, t_rows = retokenized_rollout(r, s_tok, t_tok, prompts)
    assert s_rows == comps
    assert t_rows == [t_tok.encode("46") + [t_tok.eos_id], t_tok.encode("18")]
    assert t_r.completion_mask.tolist() == [[True, True], [True, False]]
    p = t_r.tokens.shape[1] - t_r.completion.shape[1]
    assert t_r.tokens[0, :p][t_r.attention_mask[0, :p].bool()].tolist() == t_tok.encode("12+34=", add_bos=True)


def test_without_an_alignment_the_config_is_refused():
    with pytest.raises(ConfigError, match="no alignment is set.*divergence.alignment"):
        parse_sequence_config(_raw(alignment=None))
    with pytest.raises(ConfigError, match="alignment 'spans'.*forward_kl or reverse_kl"):
        parse_sequence_config(_raw(divergence={"kind": "jsd", "alignment": "spans"}))
    with pytest.raises(ConfigError, match="teacher.tokenizer is the vocabulary of teacher.model"):
        parse_sequence_config(_raw(teacher={"tokenizer": {"kind": "chunk"}}))


def _binary_kl(a: float, b: float) -> float:
    """KL(Bern(a) || Bern(b)), written out."""
    out = 0.0
    if a > 0:
        out += a * math.log(a / b)
    if a < 1:
        out += (1 - a) * math.log((1 - a) / (1 - b))
    return out


def test_span_loss_is_the_binary_kl_of_each_pieces_probability():
    trainer = _trainer(_raw())
    built = trainer.built
    assert built.teacher.tokenizer.vocab_size == 3 + 10 + 100 + 2 and built.tokenizer.vocab_size == 15
    idx = list(range(6))
    r, extra = trainer.batch_for(idx, 0, False)
    total, _ = trainer.loss_of(r, extra, False)
    # independently: score each example alone, multiply token probabilities per piece of text
    s_tok, t_tok = built.tokenizer, built.teacher.tokenizer
    want = 0.0
    for i in idx:
        ex = built.train[i]
        s_ids = s_tok.encode(ex.prompt, add_bos=True) + s_tok.encode(ex.answer) + [s_tok.eos_id]
        t_ids = t_tok.encode(ex.prompt, add_bos=True) + t_tok.encode(ex.answer) + [t_tok.eos_id]
        with torch.no_grad():
            s_lp = torch.log_softmax(built.student(torch.tensor([s_ids])).logits[0].double(), -1)
            t_lp = torch.log_softmax(built.teacher.lm(torch.tensor([t_ids])).logits[0].double(), -1)
        ps, pt = len(s_tok.encode(ex.prompt, add_bos=True)), len(t_tok.encode(ex.prompt, add_bos=True))
        # pieces: the chunks of the answer ("142" -> "14", "2"), then the end of text
        pieces, pos = [], 0
        for chunk in [ex.answer[j:j + 2] for j in range(0, len(ex.answer), 2)]:
            pieces.append((list(range(pos, pos + len(chunk))), [len(pieces)]))
            pos += len(chunk)
        pieces.append(([pos], [len(pieces)]))
        for s_pos, t_pos in pieces:
            log_ps = sum(float(s_lp[ps + j - 1, s_ids[ps + j]]) for j in s_pos)
            log_pt = sum(float(t_lp[pt + j - 1, t_ids[pt + j]]) for j in t_pos)
            want += _binary_kl(math.exp(log_pt), math.exp(log_ps))
    assert float(total.detach()) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("alignment", ["spans", "uld"])
def test_loss_finite_decreasing_and_only_the_student_learns(alignment):
    trainer = _trainer(_raw(alignment))
    teacher = trainer.teacher.lm
    with torch.no_grad():  # a confident teacher: ULD cannot move a student whose every rank exceeds a flat teacher's
        teacher.ln_f.weight.mul_(8.0)
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    s_before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    losses = [trainer.train_step(i)["loss"] for i in range(8)]  # full batch: the same examples every step
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.98 * losses[0], losses
    assert sum(b < a for a, b in itertools.pairwise(losses)) >= 6, losses
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, t_before[k]) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(v, s_before[k]) for k, v in trainer.student.state_dict().items())


def test_on_policy_rollouts_are_retokenized_for_the_teacher():
    raw = _raw(mode="on_policy", divergence={"kind": "reverse_kl", "alignment": "spans"})
    raw["train"] = {**raw["train"], "batch_size": 8, "steps": 2}
    trainer = _trainer(raw)
    figures = [trainer.train_step(i) for i in range(2)]
    assert all(math.isfinite(f["loss"]) for f in figures)
    assert all(p.grad is None for p in trainer.teacher.lm.parameters())


def test_teacher_vocabulary_must_cover_its_tokenizer():
    raw = _raw()
    raw["teacher"] = {"model": {"kind": "tiny_gpt", "params": {**TEACHER["params"], "vocab": 20}},
                      "tokenizer": {"kind": "chunk", "chunk": 2}}
    with pytest.raises(ConfigError, match="cannot read its 115-token tokenizer"):
        build_sequence(parse_sequence_config(raw))


def test_a_teacher_run_with_another_tokenizer_reads_retokenized_text(tmp_path):
    from distillery.sequence.run import run_sequence

    teacher_raw = _raw(teacher=None, divergence={"kind": "ce"}, tokenizer={"kind": "char", "extra": "x"})
    teacher_raw["train"] = {**teacher_raw["train"], "steps": 1}
    run_sequence(parse_sequence_config(teacher_raw), tmp_path / "t")
    raw = _raw(teacher={"run": str(tmp_path / "t")})
    trainer = _trainer(raw)
    assert trainer.teacher.tokenizer.vocab_size == 16 and trainer.tok.vocab_size == 15
    assert math.isfinite(trainer.train_step(0)["loss"])
    with pytest.raises(ConfigError, match="same tokenizer"):  # without an alignment: refused, as before
        build_sequence(parse_sequence_config(_raw(alignment=None, teacher={"run": str(tmp_path / "t")})))
    with pytest.raises(ConfigError, match="'chunk' is a teacher's vocabulary only"):
        parse_sequence_config(_raw(tokenizer={"kind": "chunk"}))
