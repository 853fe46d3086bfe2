"""MiniLLM, in miniature: reverse-KL vs forward-KL distillation, precision and diversity of the samples.

Paper: Gu et al. 2024, "MiniLLM: Knowledge Distillation of Large Language Models",
arXiv:2306.08543 (abstract: the reverse KL prevents "the student model from overestimating the
low-probability regions of the teacher distribution"; MiniLLM students "generate more precise
responses"). The mode-seeking reading: a reverse-KL student concentrates its mass on the
teacher's modes, so its own samples are more often right and less varied than a forward-KL
(mode-covering) student's.

Miniature (task ``sorting``, six digits, 4000 training prompts, character tokenizer; the teacher
and the settings of ``distillery reproduce gkd``):

  1. teacher: a tiny GPT (dim 64, depth 2), cross-entropy, 600 steps (full: 1500), trained once
     (seed 0);
  2. students: a tiny GPT (dim 32, depth 2), 200 steps (full: 600), batch 64, lr 3e-3, the same
     seeds for every arm:
       * ``reverse_kl``: MiniLLM's single-step term: the per-token reverse KL
         ``KL(p_s || p_t)`` over the full vocabulary on the student's own temperature-1 samples;
       * ``forward_kl``: word-level KD: the per-token forward KL ``KL(p_t || p_s)`` on the
         dataset's answers;
       * context, full runs only: ``reverse_kl_pg`` (the policy gradient with the cost-to-go and
         a leave-one-out baseline) and ``forward_kl_on_policy`` (forward KL on the student's
         own samples: the direction of the KL without the change of data).

Measured on 200 held-out prompts (eval seed 1234), 8 samples each at temperature 1 (sampling
seed 0): precision = the share of samples the verifier accepts; diversity = distinct
completions per prompt (1 to 8) and the mean per-token entropy of the student at the sampled
positions (nats); and greedy accuracy on 500 held-out prompts.

Rules, fixed here before any run (>= 3 seeds):
  1. the mean precision of ``reverse_kl`` is higher than ``forward_kl``'s by more than the
     standard error of the difference AND its mean number of distinct completions per prompt is
     lower by more than the standard error of that difference (both ``better``); the claim holds
     only if both do;
  2. context, judged the same way: ``reverse_kl``'s mean per-token entropy is lower than
     ``forward_kl``'s.
"""

from __future__ import annotations

from typing import Any

import torch

from ..recipes.minillm import minillm_arms
from . import Claim, Context, Reproduction, better, combined, mean_std, register
from ._common import Run, Settings, by_metric, compose, run_grid
from .gkd import ANSWER_TOKENS, STUDENT, TASK, base_config, train_sorting_teacher

PROMPTS = 200
SAMPLES_PER_PROMPT = 8
SETTINGS = Settings(quick={"teacher_steps": 600, "steps": 200}, full={"teacher_steps": 1500, "steps": 600})


def sample_figures(run: Run) -> dict[str, float]:
    """A grid measure: precision, distinct completions per prompt and entropy of the run's
    student's temperature-1 samples, and its greedy accuracy."""
    from ..sequence.diagnostics import sample_precision_diversity
    from ..sequence.generate import load_run_student
    from ..sequence.tasks import build_task

    _, lm, tok = load_run_student(run.dir)
    task = build_task({"kind": TASK["name"], "params": TASK["params"]})
    examples = task.sample(PROMPTS, torch.Generator().manual_seed(1234))
    out = sample_precision_diversity(lm, tok, examples, task.verify, samples_per_prompt=SAMPLES_PER_PROMPT,
                                     max_new_tokens=ANSWER_TOKENS, temperature=1.0, seed=0)
    out["accuracy"] = run.summary["final"]["accuracy"]
    return out


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    teacher_dir, teacher_summary = train_sorting_teacher(ctx, s["teacher_steps"])
    base = compose(base_config(s["steps"], "minillm"), {"student": STUDENT, "teacher": {"run": teacher_dir, "sync": "frozen"}})
    frags = minillm_arms(policy_gradient=not ctx.quick, forward_on_policy=not ctx.quick)
    arms: dict[str, Any] = {name: compose(base, frag) for name, frag in frags.items()}
    per = by_metric(run_grid(ctx, arms, sample_figures))
    for name, m in per.items():
        ctx.log(f"    {name}: precision {mean_std(m['precision'])['mean']:.4f}, distinct {mean_std(m['distinct'])['mean']:.3f}, "
                f"entropy {mean_std(m['entropy'])['mean']:.4f}, greedy accuracy {mean_std(m['accuracy'])['mean']:.4f}")
    where = f"{PROMPTS} held-out prompts x {SAMPLES_PER_PROMPT} samples at temperature 1"
    precision = better("Reverse KL gives higher-precision samples", per["reverse_kl"]["precision"], per["forward_kl"]["precision"],
                       a_name="reverse_kl", b_name="forward_kl", metric=f"precision (verifier-accepted share, {where})")
    diversity = better("Reverse KL gives lower-diversity samples", per["reverse_kl"]["distinct"], per["forward_kl"]["distinct"],
                       a_name="reverse_kl", b_name="forward_kl", higher=False,
                       metric=f"distinct completions per prompt ({where})")
    both = combined("Reverse-KL distillation (MiniLLM) gives higher-precision, lower-diversity samples than forward-KL KD",
                 f"both: [{precision.rule} (precision)] AND [{diversity.rule} (distinct completions per prompt)]",
                 [precision, diversity],
                 {"precision": precision.figures, "distinct": diversity.figures,
                  "precision held": precision.held, "distinct held": diversity.held})
    entropy = better("Reverse-KL distillation gives a lower-entropy student on its own samples",
                     per["reverse_kl"]["entropy"], per["forward_kl"]["entropy"], a_name="reverse_kl", b_name="forward_kl",
                     higher=False, metric=f"mean per-token entropy in nats ({where})")
    claims = [both, entropy]
    for claim in claims:
        for name, m in per.items():
            for key in ("precision", "distinct", "entropy", "accuracy"):
                claim.figures[f"{name} {key}"] = mean_std(m[key])
        claim.figures["teacher accuracy"] = teacher_summary["final"]["accuracy"]
        claim.figures.update(s)
    return claims


REPRODUCTION = register(
    Reproduction(
        name="minillm",
        paper="Gu et al. 2024, arXiv:2306.08543",
        method="MiniLLM: reverse-KL distillation on the student's own samples vs forward-KL KD",
        family="sequence",
        summary="sorting 6 digits, tiny GPT teacher -> smaller student: precision and diversity of temperature-1 samples, reverse vs forward KL",
        run=run,
        recipe="minillm",
    )
)
