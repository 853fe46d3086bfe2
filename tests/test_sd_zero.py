"""SD-Zero (#32): the revision task, the reviser prompt, the on-policy self-distillation loss
against a formula written here, RFT's kept set and the self-localisation measure."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from distillery.errors import ConfigError, DataError
from distillery.recipes import sd_zero
from distillery.sequence.config import parse_sequence_config
from distillery.sequence.models import TinyGPT, save_lm
from distillery.sequence.tasks.revision import (
    REVISER_PROMPT,
    TASK_KIND,
    RevisionAdditionTask,
    corrupt_answer,
    reviser_prompt,
)
from distillery.sequence.tasks import AdditionTask, Example, build_task
from distillery.sequence.tokenizers import CharTokenizer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# -- the task ------------------------------------------------------------------------------
def test_revise_zero_samples_plain_addition_with_the_revision_alphabet():
    plain = AdditionTask(2, reverse=True).sample(50, torch.Generator().manual_seed(3))
    task = RevisionAdditionTask(2, reverse=True, revise=0.0)
    assert task.sample(50, torch.Generator().manual_seed(3)) == plain
    assert task.alphabet == "0123456789+=NY"
    assert CharTokenizer(task.alphabet).encode("12+3=", add_bos=True) == [1, 4, 5, 13, 6, 14]  # digits keep addition's ids


def test_reviser_examples_carry_the_reward_mark_and_the_true_sum():
    task = RevisionAdditionTask(2, reverse=True, revise=1.0, correct_share=0.5)
    exs = task.sample(400, torch.Generator().manual_seed(0))
    marks = {"Y": 0, "N": 0}
    for ex in exs:
        question, attempt, mark = task.split(ex.prompt)
        a, b = map(int, question[:-1].split("+"))
        assert ex.answer == str(a + b)[::-1] == task.answer(ex.prompt)
        assert (attempt == ex.answer) == (mark == "Y")
        if mark == "N":
            assert sum(x != y for x, y in zip(attempt, ex.answer)) == 1 and len(attempt) == len(ex.answer)
        marks[mark] += 1
    assert 150 < marks["Y"] < 250  # correct_share 0.5 of 400
    assert task.verify("12+34=64N", "64") == (1.0, "correct")
    assert task.answer("12+34=") == "64" and task.answer("12+34=N") == "64"  # an empty attempt
    with pytest.raises(DataError):
        task.answer("12-34=")


@pytest.mark.parametrize("bad", [{"revise": 1.5}, {"correct_share": -0.1}, {"flips": 0}, {"revise": True}])
def test_bad_task_params_are_config_errors(bad):
    with pytest.raises(ConfigError):
        RevisionAdditionTask(2, **bad)


def test_corrupt_answer_changes_exactly_flips_digits():
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        out = corrupt_answer("40731", 2, g)
        assert len(out) == 5 and sum(a != b for a, b in zip(out, "40731")) == 2
    assert corrupt_answer("7", 3, g) != "7"


def test_build_task_imports_module_class_kinds():
    task = build_task({"kind": TASK_KIND, "params": {"digits": 2, "revise": 0.25}})
    assert isinstance(task, RevisionAdditionTask) and task.revise == 0.25
    with pytest.raises(ConfigError, match="cannot load"):
        build_task({"kind": "distillery.sequence.tasks.revision:Nope"})
    with pytest.raises(ConfigError, match="not a subclass"):
        build_task({"kind": "distillery.sequence.tasks.revision:reviser_prompt"})
    with pytest.raises(ConfigError, match="kind must be one of"):
        build_task({"kind": "no_such_task"})


# -- the reviser prompt -----------------------------------------------------------------------
def test_reviser_prompt_shows_response_and_reward_not_the_answer():
    ex = Example("12+34=", "64")
    assert reviser_prompt(ex, " 65 ", 0.0, "wrong at position 2") == "12+34=65N"
    assert reviser_prompt(ex, "64", 1.0, "correct") == "12+34=64Y"
    with pytest.raises(ConfigError, match="on_policy"):
        reviser_prompt(ex, "64", None, None)


# -- the SD-Zero loss against a formula written here ------------------------------------------
@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    torch.manual_seed(0)
    tok = CharTokenizer(RevisionAdditionTask.alphabet)
    lm = TinyGPT(vocab=tok.vocab_size, dim=16, depth=1, heads=2, max_len=24)
    return save_lm(lm, None, tmp_path_factory.mktemp("base") / "student")


def _seq_logprobs(lm, text_ids: list[int], completion: list[int]) -> torch.Tensor:
    """log-softmax over the vocabulary at each completion position, by one unpadded forward."""
    ids = torch.tensor([text_ids + completion])
    logits = lm(ids).logits[0]
    p = len(text_ids)
    return torch.log_softmax(logits[p - 1:p - 1 + len(completion)].double(), -1)


def test_sd_zero_loss_is_the_reverse_kl_to_the_reviser_on_the_generators_tokens(base_dir):
    from distillery.sequence.run import build_sequence
    from distillery.sequence.trainer import SequenceTrainer

    raw = sd_zero.sd_zero_config(str(base_dir), digits=2, steps=3, batch_size=6, num_questions=16)
    cfg = parse_sequence_config(raw)
    built = build_sequence(cfg)
    assert built.teacher.sync == "hard_copy" and built.teacher.prompt_fn is reviser_prompt
    trainer = SequenceTrainer(cfg, built, None)
    trainer.world, trainer.rank = 1, 0
    r, extra = trainer.batch_for(list(range(6)), 0, True)
    total, figures = trainer.loss_of(r, extra, True)
    tok, lm = built.tokenizer, built.student
    expected = 0.0
    with torch.no_grad():
        for i, ex in enumerate(extra["examples"]):
            body = [t for t, m in zip(r.completion[i].tolist(), r.completion_mask[i].tolist()) if m]
            reward = built.verify(ex.prompt, tok.decode(body))[0]
            assert reward == extra["rewards"][i]
            mark = "Y" if reward >= 1 else "N"
            s = _seq_logprobs(lm, tok.encode(ex.prompt, add_bos=True), body)
            t = _seq_logprobs(lm, tok.encode(ex.prompt + tok.decode(body) + mark, add_bos=True), body)
            expected += float((s.exp() * (s - t)).sum())
    assert math.isclose(float(total.detach()), expected, rel_tol=1e-4, abs_tol=1e-5)
    assert figures["reward"] == sum(extra["rewards"]) / 6


def test_the_reviser_is_the_generators_weights_copied_every_n_steps(base_dir):
    from distillery.sequence.run import build_sequence

    raw = sd_zero.sd_zero_config(str(base_dir), digits=2, steps=3, batch_size=4, num_questions=16, every=2)
    teacher = build_sequence(parse_sequence_config(raw)).teacher
    student = teacher.student
    assert teacher.lm is not student and torch.equal(teacher.lm.wte.weight, student.wte.weight)
    with torch.no_grad():
        student.wte.weight.add_(1.0)  # an optimizer step
    teacher.after_step(1)
    assert not torch.equal(teacher.lm.wte.weight, student.wte.weight)  # one step: not synced yet
    teacher.after_step(2)
    assert torch.equal(teacher.lm.wte.weight, student.wte.weight)  # step 2: hard copy
    live = build_sequence(parse_sequence_config(sd_zero.sd_zero_config(str(base_dir), digits=2, sync="live"))).teacher
    assert live.lm is live.student
    with pytest.raises(ConfigError, match="sync"):
        sd_zero.sd_zero_config(str(base_dir), sync="frozen")


# -- RFT ------------------------------------------------------------------------------------
def test_rejection_sample_keeps_exactly_the_verified_responses(base_dir):
    from distillery.sequence.models import build_lm

    tok = CharTokenizer(RevisionAdditionTask.alphabet)
    lm = build_lm({"kind": "tiny_gpt", "path": str(base_dir)})
    exs = [Example(f"{i}+{i}=", str(2 * i)[::-1]) for i in range(5)]
    prompts = [tok.encode(e.prompt, add_bos=True) for e in exs]
    first = {}

    def verify(prompt, text):  # accepts a response whose first character is odd; remembers what it saw
        first.setdefault(prompt, []).append(text)
        return (1.0 if text[:1] in "13579" and text else 0.0), ""

    index, kept, stats = sd_zero.rejection_sample(lm, tok, prompts, exs, verify, k=4, temperature=1.0,
                                                  max_new_tokens=3, seed=0, batch_size=7)
    assert stats["samples"] == 20 and sum(len(v) for v in first.values()) == 20
    assert stats["kept"] == len(kept) == len(index) == sum(t[:1] in "13579" and t != "" for v in first.values() for t in v)
    for i, body in zip(index, kept):
        assert tok.decode(body)[:1] in "13579"
        assert len(body) <= 3 and (body[-1] == tok.eos_id or len(body) == 3)
    assert stats["questions_solved"] == len(set(index))


def test_run_rft_fine_tunes_on_the_kept_set(base_dir, tmp_path, monkeypatch):
    raw = sd_zero.rft_config(str(base_dir), digits=2, steps=2, batch_size=8, num_questions=10)
    raw["eval"] = {"num_examples": 4}
    tok = CharTokenizer(RevisionAdditionTask.alphabet)

    def fake(lm, tok_, prompts, examples, verify, **kw):  # questions 1 and 3, the right answer, once each
        bodies = [tok.encode(examples[i].answer) + [tok.eos_id] for i in (1, 3)]
        return [1, 3], bodies, {"samples": 40.0, "kept": 2.0, "questions_solved": 2.0}

    monkeypatch.setattr(sd_zero, "rejection_sample", fake)
    summary = sd_zero.run_rft(raw, tmp_path / "rft", k=4)
    assert summary["rft"]["kept"] == 2 and summary["steps"] == 2
    lines = (tmp_path / "rft" / "train.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert yaml.safe_load((tmp_path / "rft" / "config.yaml").read_text())["train"]["batch_size"] == 2
    monkeypatch.setattr(sd_zero, "rejection_sample", lambda *a, **k: ([], [], {"samples": 40.0, "kept": 0.0,
                                                                                "questions_solved": 0.0}))
    with pytest.raises(ConfigError, match="none of the 40"):
        sd_zero.run_rft(raw, tmp_path / "rft2", k=4)


# -- self-localisation ----------------------------------------------------------------------
@pytest.mark.parametrize("completion, reference, expected", [
    ([5, 6, 2], [5, 6, 2], None), ([5, 7, 2], [5, 6, 2], 1), ([4, 6, 2], [5, 6, 2], 0),
    ([5, 2], [5, 6, 2], 1), ([5, 6, 7, 2], [5, 6, 2], 2), ([5, 6], [5, 6, 2], 2)])
def test_first_wrong_position(completion, reference, expected):
    assert sd_zero.first_wrong_position(completion, reference) == expected


def test_localisation_share_by_hand():
    gaps = [torch.tensor([0.1, 2.0, -1.0]), torch.tensor([3.0, 0.0]), torch.tensor([0.0, 0.5, 0.2, 0.1])]
    out = sd_zero.localisation_share(gaps, [1, 1, 1])
    assert out["share"] == pytest.approx(2 / 3) and out["n"] == 3
    assert out["chance"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 4) / 3)
    assert out["gap_at_first_wrong"] == pytest.approx((2.0 + 0.0 + 0.5) / 3)
    assert out["gap_elsewhere"] == pytest.approx((0.1 - 1.0 + 3.0 + 0.0 + 0.2 + 0.1) / 6)


def test_token_gaps_match_two_unpadded_forwards(base_dir):
    from distillery.sequence.models import build_lm

    tok = CharTokenizer(RevisionAdditionTask.alphabet)
    lm = build_lm({"kind": "tiny_gpt", "path": str(base_dir)}).double()
    exs = [Example("12+34=", "64"), Example("9+9=", "81")]
    bodies = [tok.encode("65") + [tok.eos_id], tok.encode("811") + [tok.eos_id]]
    gaps = sd_zero.token_gaps(lm, tok, exs, bodies, [0.0, 0.0])
    for ex, body, g in zip(exs, bodies, gaps):
        with torch.no_grad():
            s = _seq_logprobs(lm, tok.encode(ex.prompt, add_bos=True), body)
            t = _seq_logprobs(lm, tok.encode(ex.prompt + tok.decode(body) + "N", add_bos=True), body)
        idx = torch.tensor(body)
        ref = s.gather(1, idx[:, None])[:, 0] - t.gather(1, idx[:, None])[:, 0]
        assert g.shape == (len(body),)
        torch.testing.assert_close(g.double(), ref, rtol=1e-6, atol=1e-8)


# -- configs -------------------------------------------------------------------------------
def test_shipped_configs_parse_and_match_the_recipe():
    base = parse_sequence_config(yaml.safe_load((CONFIGS / "sd_zero_base.yaml").read_text()))
    run = parse_sequence_config(yaml.safe_load((CONFIGS / "sd_zero_addition.yaml").read_text()))
    assert base.data.task.name == run.data.task.name == TASK_KIND
    assert run.teacher.privileged.prompt == REVISER_PROMPT and run.teacher.sync == "hard_copy"
    assert run.student.path == "runs/sd_zero_base/student" and run.mode == "on_policy"
    parse_sequence_config(sd_zero.base_config(digits=2))
    assert sd_zero.RECIPE.config_path().is_file()
