"""VC-STaR (#39): the comparison task with rationales, contrastive pairs, the curator, the two
filters, and one generate-filter-SFT round through the sequence engine."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from distillery.errors import ConfigError, DataError
from distillery.recipes.vc_star import (
    base_config,
    sample_completions,
    sft_config,
    star_round,
    write_eval_file,
    write_jsonl,
)
from distillery.sequence.tasks.contrast import (
    TASK_NAME,
    ComparisonTask,
    Sample,
    curate_pairs,
    filter_precision,
    pair_filter,
    star_filter,
)
from distillery.sequence.tasks import Example, build_task


def test_reference_rationale_stops_at_the_first_differing_digit():
    task = ComparisonTask(4)
    assert task.answer("4721?4781:") == "44 77 28 <"
    assert task.answer("0999?1000:") == "01 <"
    assert task.answer("5553?5551:") == "55 55 55 31 >"
    assert ComparisonTask(4, rationale=False).answer("4721?4781:") == "<"
    assert task.truth("9000?0999:") == ">"


def test_verifier_reads_the_final_answer_only():
    task = ComparisonTask(4)
    assert task.verify("4721?4781:", "44 77 28 <") == (1.0, "correct")
    assert task.verify("4721?4781:", "13 <")[0] == 1.0  # wrong rationale, right answer: STaR keeps it
    assert not task.faithful("4721?4781:", "13 <")
    assert task.faithful("4721?4781:", " 44 77 28 < ")
    assert task.verify("4721?4781:", "44 77 28 >")[0] == 0.0
    assert "no answer" in task.verify("4721?4781:", "44 77")[1]
    assert task.verify("4721?4781:", "")[0] == 0.0


def test_bad_prompts_and_params_are_named():
    task = ComparisonTask(4)
    with pytest.raises(DataError, match="itself"):
        task.answer("1234?1234:")
    with pytest.raises(DataError, match="not a prompt"):
        task.answer("123?4567:")
    with pytest.raises(ConfigError, match="digits"):
        ComparisonTask(0)
    with pytest.raises(ConfigError, match="rationale"):
        ComparisonTask(4, rationale="yes")


def test_contrastive_pairs_differ_in_one_digit_and_in_the_answer():
    task = ComparisonTask(5)
    pairs = task.sample_pairs(200, torch.Generator().manual_seed(3))
    assert pairs == task.sample_pairs(200, torch.Generator().manual_seed(3))
    firsts = set()
    for hi, lo in pairs:
        diff = [i for i, (x, y) in enumerate(zip(hi.prompt, lo.prompt)) if x != y]
        assert len(diff) == 1
        assert hi.answer.endswith("<") and lo.answer.endswith(">")
        assert hi.answer[:-5] == lo.answer[:-5]  # the same digit pairs before the deciding one
        firsts.add(len(hi.answer.split()) - 2)  # index of the first differing digit
    assert firsts == set(range(5))  # every position decides sometimes
    singles = task.sample(300, torch.Generator().manual_seed(0))
    assert 0.35 < sum(ex.answer.endswith("<") for ex in singles) / 300 < 0.65


def test_the_task_is_found_by_module_and_class_and_its_alphabet_is_sorted():
    task = build_task({"kind": TASK_NAME, "params": {"digits": 3}})
    assert isinstance(task, ComparisonTask) and task.digits == 3
    assert list(task.alphabet) == sorted(task.alphabet)
    examples = task.sample(50, torch.Generator().manual_seed(0))
    assert set("".join(ex.prompt + ex.answer for ex in examples)) <= set(task.alphabet)


def test_curator_pairs_hamming_one_prompts_with_different_answers():
    pool = [Example("12?19:", "<"), Example("55?50:", ">"), Example("12?10:", ">"), Example("55?59:", "<"),
            Example("12?13:", "<"), Example("77?78:", "<")]
    pairs = curate_pairs(pool, label=lambda ex: ex.answer)
    # 12?19 pairs with 12?10 (first partner in pool order with another answer); 55?50 with 55?59;
    # 12?13 has the same answer as 12?19 and its only other neighbour is taken; 77?78 has none
    assert pairs == [(0, 2), (1, 3)]
    assert curate_pairs(pool, label=lambda ex: "same") == []


def _s(reward: float, good: bool = True) -> Sample:
    return Sample("4721?4781:", "44 77 28 <" if good else "12 <", reward)


def test_filters_against_hand_counts():
    pairs = [(_s(1), _s(1)), (_s(1, False), _s(0)), (_s(0), _s(1)), (_s(0), _s(0))]
    flat = [s for p in pairs for s in p]
    assert star_filter(flat) == [flat[0], flat[1], flat[2], flat[5]]
    assert pair_filter(pairs) == [flat[0], flat[1]]
    task = ComparisonTask(4)
    assert filter_precision(star_filter(flat), task.faithful) == pytest.approx(3 / 4)
    assert filter_precision(pair_filter(pairs), task.faithful) == 1.0
    assert filter_precision([], task.faithful) != filter_precision([], task.faithful)  # nan


def test_a_guesser_passes_the_answer_filter_half_the_time_and_the_pair_filter_never():
    task = ComparisonTask(4)
    pairs = task.sample_pairs(100, torch.Generator().manual_seed(1))
    always_less = [Sample(ex.prompt, "00 <", task.verify(ex.prompt, "00 <")[0]) for p in pairs for ex in p]
    out = star_round(None, pairs, task, temperature=1.0, seed=0, samples=always_less)
    assert len(out["star"]) == 100 and out["vc_star"] == []


def test_sft_runs_build_the_base_models_vocabulary(tmp_path):
    from distillery.sequence.config import parse_sequence_config
    from distillery.sequence.run import _examples, build_tokenizer
    from distillery.sequence.tokenizers import CharTokenizer

    task = ComparisonTask(4)
    ev = task.sample(100, torch.Generator().manual_seed(1234))
    eval_path = write_eval_file(tmp_path / "eval.jsonl", ev, task)
    kept = [Sample("4721?4781:", "44 77 28 <", 1.0), Sample("4721?4711:", " 44 77 21 > ", 1.0)]
    data = write_jsonl(tmp_path / "kept.jsonl", kept)
    assert json.loads(data.read_text().splitlines()[1]) == {"prompt": "4721?4711:", "completion": "44 77 21 >"}
    cfg = parse_sequence_config(sft_config(tmp_path / "base", data, eval_path, digits=4, eval_examples=100))
    train, eval_set, _, alphabet = _examples(cfg)
    assert build_tokenizer(cfg, train, eval_set, alphabet).id_to_token == CharTokenizer(task.alphabet).id_to_token
    with pytest.raises(ValueError, match="never use"):
        write_eval_file(tmp_path / "bad.jsonl", [Example("1111?1112:", "11 11 11 12 <")], task)


def test_shipped_config_is_the_base_config():
    from distillery.config.bundled import path_of

    raw = yaml.safe_load(path_of("vc_star_comparison").read_text())
    want = base_config(256, 500, digits=4)
    assert raw["data"] == want["data"] and raw["student"] == want["student"] and raw["divergence"] == {"kind": "ce"}


def test_one_generate_filter_sft_round(tmp_path):
    from distillery.reproduce import Context

    ctx = Context(seeds=[0], quick=True, out=tmp_path, log=lambda m: None)
    small = {"kind": "tiny_gpt", "params": {"dim": 16, "depth": 1, "heads": 2, "max_len": 40}}
    ctx.train("base", {**base_config(16, 2, digits=4, batch_size=8, model=small, eval_examples=8), "seed": 0})
    task = ComparisonTask(4)
    pairs = task.sample_pairs(8, torch.Generator().manual_seed(0))
    texts = sample_completions(tmp_path / "base", [ex.prompt for p in pairs for ex in p], temperature=1.0, seed=5,
                               max_new_tokens=15)
    assert texts == sample_completions(tmp_path / "base", [ex.prompt for p in pairs for ex in p], temperature=1.0, seed=5,
                                       max_new_tokens=15)
    out = star_round(tmp_path / "base", pairs, task, temperature=1.0, seed=5)
    assert [s.completion for s in out["samples"]] == texts
    # whatever was sampled, fine-tune on references (the round's SFT step, whatever a filter kept)
    data = write_jsonl(tmp_path / "kept.jsonl", [ex for p in pairs for ex in p])
    eval_path = write_eval_file(tmp_path / "eval.jsonl", task.sample(100, torch.Generator().manual_seed(1)), task)
    summary = ctx.train("sft", {**sft_config(tmp_path / "base", data, eval_path, 2, digits=4, batch_size=8, eval_examples=8),
                                "seed": 0})
    assert summary["steps"] == 2 and (tmp_path / "sft" / "student.safetensors").is_file()
