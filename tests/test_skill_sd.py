"""#52 Skill-SD: the gridworld task, the skill memory and its per-run prompt function, the
ground-truth prompt, and the importance-weighted reverse KL vs its unweighted ablation (k1)."""

from __future__ import annotations

import pytest
import torch

from distillery.errors import ConfigError, DataError
from distillery.recipes.skill_sd import (
    gt_prompt,
    situation_of,
    skill_applicable,
    skill_sd_config,
    summarise_path,
    warmup_config,
)
from distillery.sequence.estimators import iw_reverse_kl_loss
from distillery.sequence.tasks.gridworld import (
    GridworldTask,
    parse_grid,
    run_template,
    shortest_paths,
    simulate,
    split_prompt,
)
from distillery.sequence.skills import SkillMemory
from distillery.sequence.tasks import Example, build_task
from distillery.sequence.teachers import resolve_prompt_fn

GRID = "A.../.#../..#./...G"  # agent (0,0), goal (3,3), walls (1,1), (2,2)


def test_simulate_and_feedback():
    g = parse_grid(GRID)
    assert simulate(g, "RRRDDD") == (1.0, "correct")
    assert simulate(g, "DDDRRR") == (1.0, "correct")
    assert simulate(g, "DR")[0] == 0.0 and "wall" in simulate(g, "DR")[1]
    assert "left the grid" in simulate(g, "U")[1]
    assert "ended at (0, 1)" in simulate(g, "R")[1]
    assert "not a move" in simulate(g, "RX")[1]


def test_shortest_paths_by_hand():
    # from (0,0) to (3,3) avoiding (1,1) and (2,2): all 6-move monotone paths that miss both walls
    want = sorted(p for p in ("RRRDDD", "DDDRRR", "RRDRDD", "DDRDRR", "RRDDRD", "DDRRDR") if simulate(parse_grid(GRID), p)[0] == 1)
    assert shortest_paths(parse_grid(GRID)) == want
    assert want == ["DDDRRR", "DDRDRR", "RRDRDD", "RRRDDD"]
    assert shortest_paths(parse_grid("A#./##./..G")) == []
    assert run_template("DDRRD") == "DRD" and run_template("") == "" and run_template("R") == "R"


def test_task_prompts_answers_and_verify():
    task = build_task({"kind": "distillery.sequence.tasks.gridworld:GridworldTask", "params": {"size": 4, "walls": 3}})
    a = task.sample(20, torch.Generator().manual_seed(0))
    assert a == task.sample(20, torch.Generator().manual_seed(0))
    for ex in a:
        assert ex.prompt.endswith(">") and len(ex.prompt) == 20 and set(ex.prompt) <= set(task.alphabet)
        assert task.verify(ex.prompt, ex.answer) == (1.0, "correct")
        assert ex.answer in shortest_paths(parse_grid(split_prompt(ex.prompt)[0]))
    assert task.answer(GRID + ">") == "DDDRRR"                    # canonical: first in U D L R order
    assert task.answer(GRID + "~RDRD>") == "RRDRDD"               # first shortest path with the template
    assert task.answer(GRID + "=RRRDDD>") == "RRRDDD"
    assert task.verify(GRID + "=RRRDDD>", "DDDRRR")[0] == 1.0     # the suffix never changes the verdict
    mixed = GridworldTask(formats={"gt": 1.0, "skill": 1.0}).sample(30, torch.Generator().manual_seed(1))
    kinds = {split_prompt(ex.prompt)[1] for ex in mixed}
    assert kinds == {"gt", "skill"}
    for ex in mixed:
        grid, kind, payload = split_prompt(ex.prompt)
        assert payload == (ex.answer if kind == "gt" else run_template(ex.answer))
    with pytest.raises(ConfigError, match="formats"):
        GridworldTask(formats={"oracle": 1.0})
    with pytest.raises(ConfigError, match="size"):
        GridworldTask(size=2)
    with pytest.raises(DataError):
        task.verify("A.G>", "R")


def test_skill_memory_files_successes_and_retrieves_the_most_frequent_applicable():
    ex = Example(GRID + ">", "RRRDDD")
    assert situation_of(ex) == "DR"
    mem = SkillMemory(summarise_path, situation_of, skill_applicable)
    assert mem.retrieve(ex) is None
    assert mem.observe(ex, "DR", 0.0) is None and len(mem) == 0  # failures are not filed
    for path in ("RRRDDD", "DDDRRR", "DDDRRR", "RRDRDD"):
        mem.observe(ex, path, 1.0)
    assert mem.counts == {"DR": {"RD": 1, "DR": 2, "RDRD": 1}}
    assert mem.retrieve(ex) == "DR"
    mem.observe(ex, "RRRDDD", 1.0)                                  # RD: 2, DR: 2 -> the first seen wins
    assert mem.retrieve(ex) == "RD"
    other = Example("A.../##../..#./...G>", "RRRDDD")               # wall (1,0): DR no longer fits
    assert not skill_applicable(other, "DR") and mem.retrieve(other) == "RD"
    assert mem.retrieve(Example("G.../.#../..#./...A>", "")) is None  # situation UL: nothing filed


def test_skill_prompt_is_per_run_and_retrieves_before_filing():
    f, g = resolve_prompt_fn("distillery.recipes.skill_sd:skill_prompt"), resolve_prompt_fn("distillery.recipes.skill_sd:skill_prompt")
    assert f is not g and f.memory is not g.memory
    ex = Example(GRID + ">", "RRRDDD")
    assert f(ex, "DDDRRR", 1.0, "correct") == GRID + ">"             # empty memory: the plain prompt
    assert f(ex, "DR", 0.0, "wall") == GRID + "~DR>"                 # the skill filed by the first rollout
    assert g(ex, "RRRDDD", 1.0, "correct") == GRID + ">"             # another run's memory is empty
    assert gt_prompt(ex, "DD", 0.0, None) == GRID + "=RRRDDD>"
    assert resolve_prompt_fn("distillery.recipes.skill_sd:gt_prompt") is gt_prompt


def test_iw_gradient_is_the_reverse_kl_policy_gradient_and_k1_is_not():
    """On-policy (p_b = p_s in value): grad of sum rho_t c_t = sum c_t grad log p_s(y_t);
    grad of the directly differentiated sum c_t = sum grad log p_s(y_t)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    t_logits = torch.randn(2, 3, 5, dtype=torch.float64, generator=g)
    y = torch.randint(5, (2, 3), generator=g)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    logp_s = torch.log_softmax(logits, -1).gather(-1, y[..., None])[..., 0]
    logp_t = torch.log_softmax(t_logits, -1).gather(-1, y[..., None])[..., 0]
    iw = iw_reverse_kl_loss(logp_s, logp_t, logp_s.detach(), mask, clip=(0.8, 1.2), reduction="sum")
    (g_iw,) = torch.autograd.grad(iw, logits, retain_graph=True)
    k1 = torch.where(mask, logp_s - logp_t, torch.zeros_like(logp_s)).sum()
    (g_k1,) = torch.autograd.grad(k1, logits)
    # by hand: d log softmax(z)_y / dz = onehot(y) - softmax(z)
    p = torch.softmax(logits.detach(), -1)
    score = torch.nn.functional.one_hot(y, 5).double() - p
    c = (logp_s - logp_t).detach() * mask
    assert torch.allclose(g_iw, c[..., None] * score)
    assert torch.allclose(g_k1, mask[..., None] * score)
    assert torch.allclose(iw, k1)                                    # same value, different gradients


def test_configs_parse_and_a_k1_step_runs(tmp_path):
    from distillery.config import parse_config
    from distillery.sequence.run import run_sequence

    warm = warmup_config(2, num_train=64)
    warm["eval"] = {"num_examples": 8}
    run_sequence(parse_config({"seed": 0, **warm}), tmp_path / "base")
    for privileged, estimator in (("skill", "k1"), ("gt", "iw")):
        cfg = skill_sd_config(str(tmp_path / "base" / "student"), 2, privileged=privileged, estimator=estimator)
        cfg["data"]["num_train"], cfg["eval"] = 64, {"num_examples": 8}
        summary = run_sequence(parse_config({"seed": 1, **cfg}), tmp_path / f"{privileged}_{estimator}")
        assert summary["steps"] == 2
    with pytest.raises(ConfigError, match="privileged"):
        skill_sd_config("x", 1, privileged="oracle")
