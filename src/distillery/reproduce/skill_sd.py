"""#52 Skill-SD, in miniature: skill-conditioned vs ground-truth-privileged on-policy self-distillation.

Paper: Wang et al. 2026, "Skill-SD: Skill-Conditioned Self-Distillation for Multi-turn LLM
Agents", arXiv:2604.10674 (abstract: Skill-SD improves vanilla OPD by +42.1%/+40.6% on
AppWorld/Sokoban; "naively combining OPSD with RL often leads to training collapse"; the
importance-weighted reverse KL is derived "to stabilize the training").

Miniature (a 4x4 text gridworld with 3 walls, :mod:`distillery.sequence.tasks.gridworld`; a tiny GPT,
dim 48, depth 2; success rate = greedy completions of 200 held-out grids that reach the goal):

  1. base policy, trained once (seed 0): supervised warm-up on a mixture of plain prompts (a
     shortest path drawn at random among all of them: several valid strategies), ground-truth
     prompts (``grid=PATH>``) and skill prompts (``grid~TEMPLATE>``), 300 steps (full: 600), so
     that the same weights can read either privileged context;
  2. from the base, on-policy self-distillation on plain prompts, 60 steps (full: 200), batch 32,
     lr 1e-3, teacher = the student's weights copied every 10 steps:
       * ``opsd_gt``: the teacher reads the ground-truth solution of the example, IW reverse KL;
       * ``skill_sd``: the teacher reads a skill (run template) retrieved from the memory of the
         student's own successful rollouts, IW reverse KL;
       * ``skill_sd_no_iw``: the same, the sampled reverse KL differentiated directly.
  Seeds 0..3 for every arm (``--seeds`` may give more).

Collapse, defined before any run: a run collapses if its final success rate is below the base
policy's success rate (same eval set) by more than 0.05, or if its loss becomes non-finite.

Rules, fixed here before any run:
  1. ``skill_sd``'s final success rate beats ``opsd_gt``'s (mean over seeds higher by more than
     the standard error of the difference, >= 3 seeds);
  2. ``skill_sd`` (with IW) collapses in fewer seeds than ``skill_sd_no_iw``, over >= 4 seeds
     per arm (equal counts, e.g. 0 and 0, do not hold).
"""

from __future__ import annotations

import torch

from ..errors import NonFiniteLossError
from ..recipes.skill_sd import skill_sd_config, warmup_config
from . import Claim, Context, Reproduction, better, mean_std, register
from ._common import Settings

COLLAPSE_DROP = 0.05
SETTINGS = Settings(quick={"warmup_steps": 300, "steps": 60}, full={"warmup_steps": 600, "steps": 200})
ARMS = {"opsd_gt": ("gt", "iw"), "skill_sd": ("skill", "iw"), "skill_sd_no_iw": ("skill", "k1")}


def base_success(base_student: str) -> float:
    """The base policy's greedy success rate on the arms' eval set (plain prompts)."""
    from ..config import parse_config
    from ..sequence.run import build_sequence
    from ..sequence.trainer import evaluate_student

    cfg = parse_config({"seed": 0, **skill_sd_config(base_student, 1)}, "base evaluation")
    built = build_sequence(cfg)
    return evaluate_student(built.student.eval(), built, cfg, torch.device("cpu"))["accuracy"]


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster than contended ones
    try:
        ctx.train("base", {"seed": 0, **warmup_config(s["warmup_steps"])})
        base = str((ctx.out / "base" / "student").resolve())
        start = base_success(base)
        ctx.log(f"  base policy: success {start:.3f}")
        success: dict[str, list[float]] = {a: [] for a in ARMS}
        collapsed: dict[str, list[bool]] = {a: [] for a in ARMS}
        for seed in ctx.seeds:
            for arm, (privileged, estimator) in ARMS.items():
                cfg = skill_sd_config(base, s["steps"], privileged=privileged, estimator=estimator)
                try:
                    acc = ctx.train(f"{arm}/seed{seed}", {"seed": seed, **cfg})["final"]["accuracy"]
                    bad = acc < start - COLLAPSE_DROP
                except NonFiniteLossError as exc:
                    ctx.log(f"  {arm}/seed{seed}: non-finite loss ({exc})")
                    acc, bad = 0.0, True
                success[arm].append(acc)
                collapsed[arm].append(bad)
    finally:
        torch.set_num_threads(threads)
    figures = {f"{a} success": mean_std(v) for a, v in success.items()}
    figures.update({f"{a} collapses": sum(v) for a, v in collapsed.items()})
    figures.update(base_success=start, collapse_drop=COLLAPSE_DROP, **s)
    c1 = better("Skill-SD beats on-policy self-distillation from a ground-truth-privileged teacher (OPSD)",
                success["skill_sd"], success["opsd_gt"], a_name="skill_sd", b_name="opsd_gt",
                metric="final greedy success rate (200 held-out 4x4 grids)")
    c1.held = c1.held and len(ctx.seeds) >= 3
    n_iw, n_no = sum(collapsed["skill_sd"]), sum(collapsed["skill_sd_no_iw"])
    c2 = Claim("With the importance-weighted reverse KL training collapses less often than without it",
               f"collapse = final success below the base's ({start:.3f}) by more than {COLLAPSE_DROP:g}, or a non-finite "
               "loss; skill_sd collapses in fewer seeds than skill_sd_no_iw, over >= 4 seeds per arm",
               n_iw < n_no and len(ctx.seeds) >= 4,
               {"skill_sd collapses": n_iw, "skill_sd_no_iw collapses": n_no, "seeds": len(ctx.seeds)},
               detectable={"note": f"counts of collapsed seeds out of {len(ctx.seeds)}: a difference of one seed decides"})
    for claim in (c1, c2):
        claim.figures.update(figures)
    return [c1, c2]


REPRODUCTION = register(
    Reproduction(
        name="skill_sd",
        paper="Wang et al. 2026, arXiv:2604.10674",
        method="Skill-SD: on-policy self-distillation from the same policy reading self-summarised skills, IW reverse KL",
        family="sequence",
        summary="4x4 text gridworld: Skill-SD vs OPSD(GT) success, and collapses with vs without importance weighting",
        run=run,
        recipe="skill_sd",
        default_seeds=4,
    )
)
