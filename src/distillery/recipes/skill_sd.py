"""#52 Skill-SD: skill-conditioned on-policy self-distillation with an importance-weighted reverse KL.

Paper: Hao Wang, Guozhi Wang, Han Xiao et al., 2026, "Skill-SD: Skill-Conditioned
Self-Distillation for Multi-turn LLM Agents", arXiv:2604.10674.

Mechanism, as the sequence engine expresses it:

* the **student** acts on the plain task prompt (``mode: on_policy``: it samples its own
  rollouts, verified by the task);
* the **teacher** is the same policy (``teacher.sync: hard_copy``: the student's weights copied
  every few steps, the paper's dynamic sync) reading a **privileged prompt**: the plain prompt
  plus a *skill* retrieved from a :class:`~distillery.sequence.skills.SkillMemory` filled with
  skills summarised from the student's own successful rollouts (:func:`skill_prompt`, a
  per-run factory so that each run has its own memory). The baseline OPSD(GT) shows the
  ground-truth solution instead (:func:`gt_prompt`);
* the loss is the **importance-weighted token-level reverse KL** (``divergence.estimator: iw``;
  :func:`~distillery.sequence.estimators.iw_reverse_kl_loss`): ``sum_t rho_t * c_t`` with
  ``c_t = log p_s(y_t) - log p_t(y_t)`` held fixed and ``rho_t = p_s(y_t) / p_old(y_t)`` (clipped)
  carrying the gradient, so that ``grad = sum_t c_t grad log p_s(y_t)``. The ablation without
  the weight differentiates ``sum_t c_t`` directly (``estimator: k1``), whose gradient
  ``sum_t grad log p_s(y_t)`` is zero in expectation [inferred reading of "gradient-correct"].

The miniature's skill (:func:`summarise_path`): the run template of a successful gridworld path
(which directions in which order), filed under the goal's direction from the agent; a skill is
retrieved only if some shortest path on the current grid follows it. GRPO (the paper's RL term)
is not part of this miniature.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "gt_prompt",
    "situation_of",
    "skill_applicable",
    "skill_prompt",
    "skill_sd_config",
    "summarise_path",
    "warmup_config",
]

from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("skill_sd", "Wang et al. 2026, Skill-SD, arXiv:2604.10674", "skill_sd_gridworld.yaml",
           "On-policy self-distillation from the same policy reading skills summarised from its own successes, "
           "importance-weighted reverse KL, synced teacher")
)

TASK = "distillery.sequence.tasks.gridworld:GridworldTask"


def _grid(example: Any):
    from ..sequence.tasks.gridworld import parse_grid, split_prompt

    return parse_grid(split_prompt(example.prompt)[0])


def situation_of(example: Any) -> str:
    """The goal's direction from the agent: ``"D"``/``"U"``/``""`` then ``"R"``/``"L"``/``""``
    (``"DR"``: below and to the right)."""
    g = _grid(example)
    dr, dc = g.goal[0] - g.agent[0], g.goal[1] - g.agent[1]
    return ("D" if dr > 0 else "U" if dr < 0 else "") + ("R" if dc > 0 else "L" if dc < 0 else "")


def summarise_path(example: Any, completion: str) -> str | None:
    """The skill of a successful path: its run template (``"DDRRD"`` -> ``"DRD"``)."""
    from ..sequence.tasks.gridworld import run_template

    moves = completion.strip()
    return run_template(moves) if moves else None


def skill_applicable(example: Any, skill: str) -> bool:
    """Whether some shortest path of the example's grid follows the skill's template."""
    from ..sequence.tasks.gridworld import run_template, shortest_paths

    return any(run_template(p) == skill for p in shortest_paths(_grid(example)))


def _plain(example: Any) -> str:
    from ..sequence.tasks.gridworld import split_prompt

    return split_prompt(example.prompt)[0]


def gt_prompt(example: Any, completion: str, reward: float | None, feedback: str | None) -> str:
    """OPSD(GT): the grid, ``=`` and the example's reference solution (``"grid=DDRR>"``)."""
    return _plain(example) + "=" + example.answer + ">"


def skill_prompt():
    """A fresh Skill-SD prompt function with its own :class:`SkillMemory` (called once per run:
    ``per_run``). For each rollout it first retrieves a skill for the example (``"grid~DR>"``;
    the plain prompt when the memory has none), then files the rollout if it succeeded."""
    from ..sequence.skills import SkillMemory

    memory = SkillMemory(summarise_path, situation_of, skill_applicable)

    def prompt(example: Any, completion: str, reward: float | None, feedback: str | None) -> str:
        skill = memory.retrieve(example)
        memory.observe(example, completion, reward)
        return _plain(example) + ("~" + skill if skill else "") + ">"

    prompt.memory = memory  # type: ignore[attr-defined]
    return prompt


skill_prompt.per_run = True  # type: ignore[attr-defined]


# -- config fragments -------------------------------------------------------------------------
def _task(formats: dict[str, float] | None, size: int, walls: int) -> dict[str, Any]:
    params: dict[str, Any] = {"size": size, "walls": walls}
    if formats is not None:
        params["formats"] = formats
    return {"task": {"name": TASK, "params": params}}


def warmup_config(steps: int, *, size: int = 4, walls: int = 3, num_train: int = 3000, dim: int = 48,
                  lr: float = 3e-3) -> dict[str, Any]:
    """The base policy's supervised warm-up on a mixture of plain, ground-truth and skill
    prompts (so that the same weights can read either privileged context as a teacher)."""
    return {
        "engine": "sequence",
        "data": {**_task({"plain": 0.5, "gt": 0.25, "skill": 0.25}, size, walls), "num_train": num_train},
        "tokenizer": {"kind": "char"},
        "student": {"kind": "tiny_gpt", "params": {"dim": dim, "depth": 2, "heads": 4, "max_len": 48}},
        "mode": "supervised",
        "divergence": {"kind": "ce"},
        "train": {"steps": steps, "batch_size": 64, "max_new_tokens": 8, "optimizer": {"name": "adamw", "lr": lr},
                  "progress": False, "tensorboard": False},
        "eval": {"num_examples": 200},
    }


def skill_sd_config(base_student: str, steps: int, *, privileged: str = "skill", estimator: str = "iw",
                    size: int = 4, walls: int = 3, sync_every: int = 10, lr: float = 1e-3, batch_size: int = 32,
                    clip: float = 0.2) -> dict[str, Any]:
    """An on-policy self-distillation run from ``base_student`` (a tiny_gpt directory).
    ``privileged``: ``"skill"`` (Skill-SD) or ``"gt"`` (OPSD with the ground truth);
    ``estimator``: ``"iw"`` (importance-weighted reverse KL) or ``"k1"`` (no weight)."""
    from ..errors import ConfigError

    prompts = {"skill": "distillery.recipes.skill_sd:skill_prompt", "gt": "distillery.recipes.skill_sd:gt_prompt"}
    if privileged not in prompts:
        raise ConfigError(f"skill_sd_config: privileged must be 'skill' or 'gt', got {privileged!r}.")
    if estimator not in ("iw", "k1"):
        raise ConfigError(f"skill_sd_config: estimator must be 'iw' or 'k1', got {estimator!r}.")
    return {
        "engine": "sequence",
        "data": {**_task(None, size, walls), "num_train": 2000},
        "tokenizer": {"kind": "char"},
        "student": {"kind": "tiny_gpt", "path": base_student},
        "teacher": {"sync": "hard_copy", "every": sync_every, "privileged": {"prompt": prompts[privileged]}},
        "mode": "on_policy",
        "divergence": {"kind": "reverse_kl", "estimator": estimator, "clip": clip},
        "train": {"steps": steps, "batch_size": batch_size, "max_new_tokens": 8, "temperature": 1.0,
                  "optimizer": {"name": "adamw", "lr": lr}, "progress": False, "tensorboard": False},
        "eval": {"num_examples": 200},
    }
