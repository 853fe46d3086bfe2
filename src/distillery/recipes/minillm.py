"""MiniLLM: knowledge distillation of language models by the reverse KL, against forward-KL KD.

Y. Gu, L. Dong, F. Wei, M. Huang, 2024, "MiniLLM: Knowledge Distillation of Large Language
Models" (ICLR 2024), arXiv:2306.08543. "We replace the forward Kullback-Leibler divergence (KLD)
objective in the standard KD approaches with reverse KLD, which is more suitable for KD on
generative language models, to prevent the student model from overestimating the low-probability
regions of the teacher distribution. Then, we derive an effective optimization approach to learn
this objective. The student models are named MiniLLM. ... MiniLLM models generate more precise
responses with higher overall quality, lower exposure bias, better calibration, and higher
long-text generation performance."

The objective, for a student ``q_theta`` and a teacher ``p``::

    theta* = argmin KL(q_theta || p) = argmin E_{x, y ~ q_theta(. | x)}[ log q_theta(y | x) / p(y | x) ]

Its gradient (the paper's policy gradient, Eq. 2) is
``-E_{y ~ q}[ sum_t (R_t - 1) grad log q(y_t | y_<t, x) ]`` with the long-term reward
``R_t = sum_{t' >= t} log p(y_t' | .) / q(y_t' | .)``; the paper then splits off the single-step
part ``grad E_{y_t ~ q}[r_t]`` (computed over the full vocabulary: the per-token reverse KL at
every position of the student's own samples), normalises by length and mixes teacher and student
in sampling. The sequence engine has both halves as separate estimators:

* ``divergence: {kind: reverse_kl}`` on ``mode: on_policy``: the per-token reverse KL over the
  full vocabulary on the student's rollouts (MiniLLM's single-step term; no gradient through the
  sampling) -- :func:`minillm_config` with ``estimator=None``;
* ``divergence: {kind: reverse_kl, estimator: pg}``: the REINFORCE surrogate whose factor is the
  cost-to-go ``-R_t`` with a leave-one-out baseline
  (:func:`~distillery.sequence.estimators.reverse_kl_policy_gradient_loss`, ``advantage:
  per_token``) -- ``estimator="pg"``.

Left out [not in the engine]: the teacher-mixed sampling and the pre-training loss of the paper.
The baseline is word-level KD: the forward KL ``KL(p || q)`` per token on the dataset's
completions (:func:`forward_kl_config`); :func:`minillm_arms` states the comparison of
``distillery reproduce minillm``, whose figures (sample precision, distinct completions per
prompt, entropy) come from :func:`distillery.sequence.diagnostics.sample_precision_diversity`.
Config: ``configs/minillm_sorting.yaml`` (teacher: ``configs/sorting_teacher.yaml``).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("minillm", "Gu et al. 2024, MiniLLM, arXiv:2306.08543", "minillm_sorting.yaml",
           "Reverse-KL distillation of a language model on the student's own samples (full-vocabulary or policy "
           "gradient), against forward-KL KD")
)

__all__ = ["RECIPE", "forward_kl_config", "minillm_arms", "minillm_config"]


def minillm_config(estimator: str | None = None, advantage: str = "per_token", temperature: float = 1.0,
                   sample_temperature: float = 1.0) -> dict[str, Any]:
    """The MiniLLM fragment: ``mode: on_policy``, ``divergence.kind: reverse_kl`` at
    ``temperature``; ``estimator`` ``None`` (full-vocabulary per-token reverse KL on the rollouts)
    or ``"pg"`` (the policy gradient with ``advantage`` ``per_token``: the cost-to-go, MiniLLM's
    long-term reward). The student samples at ``sample_temperature`` (1: its own distribution)."""
    if estimator not in (None, "pg"):
        raise ConfigError(f"minillm: estimator must be None (full-vocabulary reverse KL) or 'pg' (policy gradient), got {estimator!r}.")
    div: dict[str, Any] = {"kind": "reverse_kl", "temperature": temperature}
    if estimator is not None:
        div.update(estimator=estimator, advantage=advantage)
    return {"mode": "on_policy", "divergence": div, "train": {"temperature": float(sample_temperature)}}


def forward_kl_config(temperature: float = 1.0, on_policy: bool = False) -> dict[str, Any]:
    """Word-level KD, the baseline: the per-token forward KL ``KL(p_teacher || p_student)`` on the
    dataset's completions (``on_policy=True``: on the student's own samples instead)."""
    return {"mode": "on_policy" if on_policy else "supervised", "divergence": {"kind": "forward_kl", "temperature": temperature}}


def minillm_arms(policy_gradient: bool = False, forward_on_policy: bool = False) -> dict[str, dict[str, Any]]:
    """``{"reverse_kl": ..., "forward_kl": ...}`` plus, when asked, ``"reverse_kl_pg"`` (the policy
    gradient) and ``"forward_kl_on_policy"`` (forward KL on the student's samples: separates the
    divergence's direction from the data the student learns on)."""
    arms = {"reverse_kl": minillm_config(), "forward_kl": forward_kl_config()}
    if policy_gradient:
        arms["reverse_kl_pg"] = minillm_config("pg")
    if forward_on_policy:
        arms["forward_kl_on_policy"] = forward_kl_config(on_policy=True)
    return arms
