"""#30 VPD, in miniature: rationale distillation vs answer-only tuning on digit-grid questions.

Paper: Hu et al. 2024, "Visual Program Distillation: Distilling Tools and Programmatic Reasoning
into Vision-Language Models" (CVPR 2024), arXiv:2312.03052 (abstract: VPD "improves the VLM's
ability to count, understand spatial relations, and reason compositionally"; no figure for a
rationale-vs-answer-only ablation is given there).

Miniature (:mod:`distillery.sequence.tasks.visual_programs`; 4-cell grids of scikit-learn digits, the
questions S (sum), M (largest digit), Ck (how many digits exceed k); the vision tool is a
softmax-regression digit classifier trained once, seed 0, about 96% accurate on the held-out
images the grids use):

  1. data, per seed: 3000 training grids with **two** digits, each kept only if one of 8
     programs drawn by the random sampler, executed on the tool's outputs, gives the label; the
     kept program becomes the rationale (``"add:3>3,_>3,5>8,_>8=8"``);
  2. students: a tiny GPT (dim 64, depth 2, 4 heads) reading the question and the tool's
     outputs (``"S:3_5_="``), tuned with cross-entropy on the completion, batch 64, lr 3e-3
     (AdamW, cosine), 350 steps (full: 800), the same kept grids for both arms:
       * ``answer_only``: completion = the answer;
       * ``vpd``: completion = the rationale + the answer;
  3. test: 200 unfiltered grids with 2, 3 and 4 digits (the same grids for every run); greedy
     decoding; accuracy = the final answer (after the last ``=``) equals the right composition
     of the tool's outputs in the prompt. The label accuracy (against the true digits) is
     reported too.

Seeds 0, 1, 2 (``--seeds`` may give more). Gap(n) = accuracy of ``vpd`` minus ``answer_only`` at
n digits, per seed.

Rules, fixed here before any run:
  1. at the longest composition (4 digits) ``vpd``'s accuracy beats ``answer_only``'s (mean
     over >= 3 seeds higher by more than the standard error of the difference);
  2. the gap grows with the composition's length: mean over seeds of Gap(4) - Gap(2) is
     positive and larger than its standard error (paired by seed), and the mean Gap(4) is
     positive, >= 3 seeds.
"""

from __future__ import annotations

import math
import statistics

from ..recipes.vpd import answer_only_config, evaluate_lengths, vpd_config
from . import Claim, Context, Reproduction, better, detectable_difference, mean_std, register
from ._common import Settings

STUDENT = {"kind": "tiny_gpt", "params": {"dim": 64, "depth": 2, "heads": 4, "max_len": 40}}
LENGTHS = (2, 3, 4)
SETTINGS = Settings(quick={"steps": 350, "num_train": 3000, "test_grids": 200},
                    full={"steps": 800, "num_train": 3000, "test_grids": 500})
ARMS = {"answer_only": answer_only_config, "vpd": vpd_config}


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    acc: dict[str, dict[int, list[float]]] = {a: {n: [] for n in LENGTHS} for a in ARMS}
    label: dict[str, dict[int, list[float]]] = {a: {n: [] for n in LENGTHS} for a in ARMS}
    for seed in ctx.seeds:
        for arm, make in ARMS.items():
            cfg = make(STUDENT, s["steps"], num_train=s["num_train"])
            cfg["eval"] = {"num_examples": 64}
            ctx.train(f"{arm}/seed{seed}", {"seed": seed, **cfg})
            scores = evaluate_lengths(ctx.out / f"{arm}/seed{seed}", LENGTHS, n=s["test_grids"])
            for n in LENGTHS:
                acc[arm][n].append(scores[n]["accuracy"])
                label[arm][n].append(scores[n]["label_accuracy"])
            ctx.log(f"    {arm}/seed{seed}: accuracy " + ", ".join(f"{n} digits {scores[n]['accuracy']:.3f}" for n in LENGTHS))
    longest, shortest = LENGTHS[-1], LENGTHS[0]
    gap = {n: [v - a for v, a in zip(acc["vpd"][n], acc["answer_only"][n])] for n in LENGTHS}
    growth = [g4 - g2 for g4, g2 in zip(gap[longest], gap[shortest])]
    figures = {f"{arm} accuracy, {n} digits": mean_std(acc[arm][n]) for arm in ARMS for n in LENGTHS}
    figures.update({f"{arm} label accuracy, {n} digits": mean_std(label[arm][n]) for arm in ARMS for n in LENGTHS})
    figures.update({f"gap, {n} digits": mean_std(gap[n]) for n in LENGTHS})
    figures.update(s, trained_digits=2, seeds=len(ctx.seeds))
    c1 = better(f"Rationale distillation beats answer-only tuning on the longest compositions ({longest} digits; trained on 2)",
                acc["vpd"][longest], acc["answer_only"][longest], a_name="vpd", b_name="answer_only",
                metric=f"test accuracy on {s['test_grids']} grids of {longest} digits")
    c1.held = c1.held and len(ctx.seeds) >= 3
    g = mean_std(growth)
    se = g["std"] / math.sqrt(g["n"]) if g["n"] > 1 else float("inf")
    mean_gap4 = statistics.fmean(gap[longest])
    c2 = Claim(f"The benefit of rationales grows with the composition's length ({shortest} -> {longest} digits)",
               f"mean over seeds of Gap({longest}) - Gap({shortest}) (Gap = vpd accuracy - answer_only accuracy, paired by "
               f"seed) > 0 and > its standard error, and mean Gap({longest}) > 0, >= 3 seeds",
               g["mean"] > 0 and g["mean"] > se and mean_gap4 > 0 and len(ctx.seeds) >= 3,
               {"gap growth": g, "standard_error": se, f"mean gap {longest}": mean_gap4},
               detectable=detectable_difference(se, se, (g["n"], g["n"])))
    for claim in (c1, c2):
        claim.figures.update(figures)
    return [c1, c2]


REPRODUCTION = register(
    Reproduction(
        name="vpd",
        paper="Hu et al. 2024, arXiv:2312.03052",
        method="VPD: sampled programs executed with a vision tool, label-verified, distilled as rationale + answer",
        family="sequence",
        summary="digit-grid questions, trained on 2 digits: rationale + answer vs answer only, tested on 2, 3 and 4 digits",
        run=run,
        recipe="vpd",
    )
)
