"""A skill memory: skills summarised from the agent's own successful trajectories.

Skill-SD (Wang et al., 2026, "Skill-SD: Skill-Conditioned Self-Distillation for Multi-turn LLM
Agents", arXiv:2604.10674) summarises completed trajectories into short natural-language skills
and shows them to the teacher only (a privileged context). The paper's summariser is an LLM and
its retrieval a UCB bandit; here both are procedural [inferred simplification]:

* ``summarise(example, completion) -> str``: a templated rule extracted from one successful
  trajectory (e.g. the run template ``"DRD"`` of a gridworld path);
* ``situation(example) -> str``: the key a skill is filed under (e.g. the direction of the goal);
* retrieval: among the skills filed under the example's situation, the one seen most often in
  successful trajectories (ties: the one seen first) for which ``applicable(example, skill)``
  holds; ``None`` when there is none.

:meth:`SkillMemory.observe` files a trajectory only when its reward is ``>= success`` (the
paper also keeps mistakes; this memory keeps successes only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["SkillMemory"]


class SkillMemory:
    """``situation -> {skill: count}`` built from successful trajectories; see the module docstring."""

    def __init__(self, summarise: Callable[[Any, str], str | None], situation: Callable[[Any], str],
                 applicable: Callable[[Any, str], bool] | None = None, success: float = 1.0) -> None:
        self.summarise, self.situation, self.applicable, self.success = summarise, situation, applicable, float(success)
        self.counts: dict[str, dict[str, int]] = {}
        self.observed = 0
        self.filed = 0

    def observe(self, example: Any, completion: str, reward: float | None) -> str | None:
        """File the skill of one trajectory if it succeeded; returns the skill filed (or None)."""
        self.observed += 1
        if reward is None or reward < self.success:
            return None
        skill = self.summarise(example, completion)
        if not skill:
            return None
        bucket = self.counts.setdefault(self.situation(example), {})
        bucket[skill] = bucket.get(skill, 0) + 1  # dicts keep insertion order: ties go to the first seen
        self.filed += 1
        return skill

    def retrieve(self, example: Any) -> str | None:
        """The most frequent applicable skill of the example's situation, or None."""
        bucket = self.counts.get(self.situation(example), {})
        for skill, _ in sorted(bucket.items(), key=lambda kv: -kv[1]):  # stable: ties keep first-seen order
            if self.applicable is None or self.applicable(example, skill):
                return skill
        return None

    def __len__(self) -> int:
        return sum(len(b) for b in self.counts.values())
