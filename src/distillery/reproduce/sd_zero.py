"""#32 SD-Zero, in miniature: self-revision distilled on-policy vs rejection-sampling fine-tuning.

Paper: He, Kaur, Bhaskar, Yang, Liu, Ri, Fowl, Panigrahi, Chen & Arora 2026, "Self-Distillation
Zero: Self-Revision Turns Binary Rewards into Dense Supervision", arXiv:2604.12002 (abstract:
SD-Zero "improves performance by at least 10% over the base models and outperforms strong
baselines, including Rejection Fine-Tuning (RFT) ... under the same question set and training
sample budget"; ablations show "token-level self-localization, where the reviser can identify
the key tokens that need to be revised in the generator's response based on reward").

Miniature (2-digit addition, answers reversed, a tiny GPT of dim 64, depth 2, 4 heads; every
figure below is quick / full):

  1. the base, once (seed 0; :func:`~distillery.recipes.sd_zero.train_base`): plain
     fine-tuning on generator examples ``"a+b=" -> sum`` for 250 / 400 steps (batch 64, lr 3e-3),
     then self-revision training from it for 150 / 300 steps on the reviser examples of its own
     sampled responses (2 per question over 4000 questions, ``"a+b=" + response + Y|N -> sum``)
     mixed one to one with generator examples: a generator that is partially right and a reviser;
  2. per seed, from the base, at an equal number of sampled responses ``S = questions * k`` and
     equal optimizer steps (batch 64, lr 1e-3, answers of at most 4 tokens):
       * ``rft``: k = 4 samples (temperature 1) for each of 1600 / 3200 questions, the
         verified-correct ones kept, cross-entropy on them for 100 / 200 steps;
       * ``sd_zero``: 100 / 200 on-policy steps of 64 samples over the same questions (S = 6400 /
         12800), the reviser (the same weights, hard copy every 25 steps) reads prompt + response
         + reward mark; reverse KL over the full vocabulary along the response.

Measured: greedy task accuracy on 300 / 500 held-out questions (the same for every run); the
base's accuracy; self-localisation of each seed's final SD-Zero model: one sampled response
(temperature 1) per held-out question, on the wrong ones the per-token gap ``log p_gen(y_t) -
log p_rev(y_t)`` (the reviser told ``N``), whether its argmax is the first wrong token, and the
chance level ``mean 1 / L`` (``L`` the response's tokens with EOS).

Rules, fixed here before any run (3 seeds):
  1. ``sd_zero``'s accuracy beats ``rft``'s (mean over seeds higher by more than the standard
     error of the difference);
  2. ``sd_zero`` improves on the base by at least 10% (relative): mean accuracy over seeds
     >= min(1.1 x the base's accuracy, 0.99);
  3. self-localisation: for every seed's final model the share of wrong responses whose gap
     peaks at the first wrong token exceeds the chance level, and the mean over seeds of
     (share - chance) is at least 0.15.
"""

from __future__ import annotations

from typing import Any

from ..recipes.sd_zero import (
    rft_config,
    run_rft,
    sd_zero_config,
    self_localisation,
    train_base,
)
from . import Claim, Context, Reproduction, better, mean_std, register, threshold_on_mean
from ._common import Settings

DIGITS = 2
BATCH = 64
RFT_K = 4
LOCALISATION_MARGIN = 0.15
SETTINGS = Settings(
    quick={"generator_steps": 250, "revision_steps": 150, "questions": 1600, "steps": 100, "eval": 300},
    full={"generator_steps": 400, "revision_steps": 300, "questions": 3200, "steps": 200, "eval": 500},
)


def _accuracy(student_dir: str, n_eval: int) -> float:
    import torch

    from ..sequence.config import parse_sequence_config
    from ..sequence.run import build_sequence
    from ..sequence.trainer import evaluate_student

    raw = sd_zero_config(student_dir, digits=DIGITS, num_questions=BATCH)
    raw["eval"] = {"num_examples": n_eval}
    cfg = parse_sequence_config(raw)
    built = build_sequence(cfg)
    return evaluate_student(built.student, built, cfg, torch.device("cpu"))["accuracy"]


def _localisation(student_dir: str, n_eval: int, seed: int) -> dict[str, float]:
    from ..sequence.config import parse_sequence_config
    from ..sequence.run import build_sequence

    raw = sd_zero_config(student_dir, digits=DIGITS, num_questions=BATCH)
    raw["eval"] = {"num_examples": n_eval}
    built = build_sequence(parse_sequence_config(raw))
    return self_localisation(built.student, built.tokenizer, built.eval_set, built.verify, max_new_tokens=DIGITS + 2,
                             temperature=1.0, seed=seed)


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    base = train_base(ctx.out / "base", digits=DIGITS, generator_steps=s["generator_steps"],
                      revision_steps=s["revision_steps"], seed=0)
    base_acc = _accuracy(str(base), s["eval"])
    base_loc = _localisation(str(base), s["eval"], seed=0)
    ctx.log(f"  base: accuracy {base_acc:.4f}; localisation share {base_loc['share']:.3f} (chance "
            f"{base_loc['chance']:.3f}), reviser fixes {base_loc.get('revised_right', float('nan')):.3f} of wrong responses")
    samples = s["questions"] * RFT_K
    sd_steps = samples // BATCH
    acc: dict[str, list[float]] = {"rft": [], "sd_zero": []}
    loc: list[dict[str, float]] = []
    rft_stats: list[dict[str, Any]] = []
    for seed in ctx.seeds:
        raw = rft_config(str(base), digits=DIGITS, steps=s["steps"], batch_size=BATCH, num_questions=s["questions"],
                         name="rft")
        raw.update(seed=seed, eval={"num_examples": s["eval"]})
        summary = run_rft(raw, ctx.out / f"rft/seed{seed}", k=RFT_K)
        acc["rft"].append(summary["final"]["accuracy"])
        rft_stats.append(summary["rft"])
        ctx.log(f"  rft/seed{seed}: accuracy {acc['rft'][-1]:.4f}, kept {int(summary['rft']['kept'])} of "
                f"{int(summary['rft']['samples'])} ({summary['wall_s']:.1f}s)")
        raw = sd_zero_config(str(base), digits=DIGITS, steps=sd_steps, batch_size=BATCH, num_questions=s["questions"])
        raw.update(seed=seed, eval={"num_examples": s["eval"]})
        summary = ctx.train(f"sd_zero/seed{seed}", raw)
        acc["sd_zero"].append(summary["final"]["accuracy"])
        loc.append(_localisation(str(ctx.out / f"sd_zero/seed{seed}" / "student"), s["eval"], seed=seed))
        ctx.log(f"  sd_zero/seed{seed}: localisation share {loc[-1]['share']:.3f} (chance {loc[-1]['chance']:.3f})")
    claims = [better("SD-Zero beats rejection-sampling fine-tuning at an equal number of sampled responses",
                     acc["sd_zero"], acc["rft"], a_name="sd_zero", b_name="rft", metric="task accuracy")]
    claims[0].figures.update(base_accuracy=base_acc, samples_per_run=samples, rft_kept=rft_stats)
    sd = mean_std(acc["sd_zero"])
    target = min(1.1 * base_acc, 0.99)
    claims.append(Claim("SD-Zero improves on the base model by at least 10% (relative)",
                        "mean accuracy of sd_zero over >= 3 seeds >= min(1.1 x the base's accuracy, 0.99)",
                        sd["mean"] >= target and sd["n"] >= 3,
                        {"sd_zero": sd, "base_accuracy": base_acc, "target": target,
                         "relative_gain": sd["mean"] / base_acc - 1.0 if base_acc else float("inf")},
                        detectable=threshold_on_mean(acc["sd_zero"], target, what="mean accuracy against 1.1 x the base's")))
    margins = [x["share"] - x["chance"] for x in loc]
    held = len(loc) >= 3 and all(m > 0 for m in margins) and mean_std(margins)["mean"] >= LOCALISATION_MARGIN
    claims.append(Claim(
        "Self-localisation: on wrong responses the generator-reviser log-prob gap peaks at the first wrong token",
        f"every seed's share of wrong responses whose argmax-gap token is the first wrong token exceeds the chance level "
        f"mean(1/L), and the mean over >= 3 seeds of (share - chance) >= {LOCALISATION_MARGIN:g}",
        held, {"share": mean_std([x["share"] for x in loc]), "chance": mean_std([x["chance"] for x in loc]),
               "share_minus_chance": mean_std(margins), "per_seed": loc, "base_model": base_loc},
        detectable=threshold_on_mean(margins, LOCALISATION_MARGIN, what="mean of (share - chance); every seed must also be > 0")))
    return claims


register(Reproduction(
    name="sd_zero",
    paper="He et al. 2026, Self-Distillation Zero (SD-Zero), arXiv:2604.12002",
    method="SD-Zero: one model as generator and reviser, the reviser's token distributions (prompt + response + "
           "binary reward) distilled on-policy into the generator, teacher synced by hard copy",
    family="sequence",
    summary="2-digit addition, tiny GPT: SD-Zero vs RFT at equal samples; self-localisation of the reviser",
    run=run,
    recipe="sd_zero",
    doc=__doc__ or "",
))
